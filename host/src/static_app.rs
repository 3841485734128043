//! The docroot as a PEP 3333 application, for mounts that put middleware in front of static
//! files (`[[mount]] static = true`).
//!
//! Without a mount, static files are answered on the I/O thread ([`crate::static_files`]).
//! Behind middleware they must run where applications run — on a worker, called through the
//! pipeline — so this adapter asks the same [`StaticFiles`] for the response and hands it to
//! `start_response` and the body the way a plugin would: the status and the representation's
//! fields (validators, ranges, `Content-Encoding`, `Vary` …; `Date`, `Server` and
//! `Connection` stay the host's), and the body as bytes (up to [`INLINE_BODY`]) or as a
//! stream that reads the file in [`CHUNK`]-byte pieces. Conditional requests, ranges and
//! precompressed siblings behave exactly as without the mount.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::sabi_types::RMut;
use abi_stable::std_types::{ROption, RResult, RSlice, RStr, RString, RVec};
use portico_api::abi::{Body, BodyStream, BodyStream_TO, Field, StartResponse_TO};

use crate::http::request::RequestHead;
use crate::static_files::{Part, StaticFiles};

/// Bodies up to this many bytes are handed over in one piece; larger ones stream. 256 KiB.
pub const INLINE_BODY: u64 = 256 * 1024;
/// Bytes read from the file per streamed chunk. 64 KiB.
pub const CHUNK: usize = 64 * 1024;

/// Serves `decoded` (the request's full decoded path) through `start_response`.
pub fn call(
    statics: &Mutex<StaticFiles>,
    head: &RequestHead,
    decoded: &[u8],
    mut start_response: StartResponse_TO<'_, RMut<'_, ()>>,
) -> Body {
    let r = statics.lock().unwrap_or_else(|e| e.into_inner()).serve(head, decoded, false);
    let (status, fields, inline) = split_head(&r.head);
    let field_refs: Vec<Field<'_>> = fields
        .iter()
        .map(|(n, v)| Field { name: RSlice::from_slice(n.as_bytes()), value: RSlice::from_slice(v) })
        .collect();
    if let RResult::RErr(e) =
        start_response.start_response(RStr::from_str(&status), RSlice::from_slice(&field_refs), ROption::RNone)
    {
        tracing::error!("static files behind middleware: start_response refused: {e}");
        return Body::Empty;
    }
    let mut parts: Vec<Part> = r.body;
    if !inline.is_empty() {
        parts.insert(0, Part::Owned(inline.to_vec()));
    }
    let total: u64 = parts.iter().map(part_len).sum();
    if total == 0 {
        return Body::Empty;
    }
    if total <= INLINE_BODY {
        let mut bytes = Vec::with_capacity(total as usize);
        for p in &parts {
            if read_part(p, &mut bytes).is_err() {
                // The file shrank under us: the length is promised, so a short body makes the
                // worker close the connection, as on the I/O thread.
                break;
            }
        }
        return Body::Bytes(RVec::from(bytes));
    }
    Body::Stream(BodyStream_TO::from_value(FileStream { parts: parts.into_iter().collect(), pos: 0 }, TD_Opaque))
}

/// Response fields as owned `(name, value)` pairs.
type Fields = Vec<(String, Vec<u8>)>;

/// `(status "200 OK", fields without Date/Server/Connection, body bytes after the head)`.
fn split_head(head: &[u8]) -> (String, Fields, &[u8]) {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").map_or(head.len(), |i| i + 4);
    let text = String::from_utf8_lossy(&head[..end]);
    let mut lines = text.split("\r\n");
    let status = lines.next().and_then(|l| l.split_once(' ')).map_or("500 Internal Server Error", |(_, s)| s);
    let mut fields = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(": ") else { continue };
        if ["date", "server", "connection"].contains(&name.to_ascii_lowercase().as_str()) {
            continue;
        }
        fields.push((name.to_owned(), value.as_bytes().to_vec()));
    }
    (status.to_owned(), fields, &head[end.min(head.len())..])
}

fn part_len(p: &Part) -> u64 {
    match p {
        Part::Shared(_, r) => r.len() as u64,
        Part::Owned(v) => v.len() as u64,
        Part::File { len, .. } => *len,
    }
}

fn read_part(p: &Part, out: &mut Vec<u8>) -> std::io::Result<()> {
    match p {
        Part::Shared(b, r) => out.extend_from_slice(&b[r.clone()]),
        Part::Owned(v) => out.extend_from_slice(v),
        Part::File { file, offset, len } => {
            let start = out.len();
            out.resize(start + *len as usize, 0);
            file.read_exact_at(&mut out[start..], *offset)?;
        }
    }
    Ok(())
}

/// A large static body, read piece by piece as the worker pulls it.
struct FileStream {
    parts: std::collections::VecDeque<Part>,
    /// Bytes of the front part already sent.
    pos: u64,
}

impl BodyStream for FileStream {
    fn next_chunk(&mut self) -> RResult<ROption<RVec<u8>>, RString> {
        let Some(front) = self.parts.front() else { return RResult::ROk(ROption::RNone) };
        let chunk = match front {
            Part::Shared(b, r) => b[r.clone()].to_vec(),
            Part::Owned(v) => v.clone(),
            Part::File { file, offset, len } => {
                let n = (len - self.pos).min(CHUNK as u64) as usize;
                match read_file(file, offset + self.pos, n) {
                    Ok(buf) => {
                        self.pos += n as u64;
                        if self.pos < *len {
                            return RResult::ROk(ROption::RSome(RVec::from(buf)));
                        }
                        buf
                    }
                    Err(e) => return RResult::RErr(RString::from(format!("reading a static file: {e}"))),
                }
            }
        };
        self.parts.pop_front();
        self.pos = 0;
        RResult::ROk(ROption::RSome(RVec::from(chunk)))
    }
}

fn read_file(file: &Arc<File>, offset: u64, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_becomes_a_status_and_the_applications_fields() {
        let head = b"HTTP/1.1 206 Partial Content\r\nDate: x\r\nServer: portico\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/9\r\nConnection: close\r\n\r\nab";
        let (status, fields, body) = split_head(head);
        assert_eq!(status, "206 Partial Content");
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Content-Type", "Content-Range"]);
        assert_eq!(body, b"ab");
    }
}
