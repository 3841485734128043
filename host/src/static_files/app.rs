//! The docroot as a PEP 3333 application, for mounts that put middleware in front of static
//! files (`[[mount]] static = true`).
//!
//! Without a mount, static files are answered on the event loop ([`super::StaticFiles`]).
//! Behind middleware they must run where applications run — on a worker, called through the
//! pipeline — so this adapter asks the same [`StaticFiles`] for the [`Response`] and hands it
//! to `start_response` and the body the way a plugin would: the status and the
//! representation's fields (validators, ranges, `Content-Encoding`, `Vary`, `Content-Length`
//! …; `Date`, `Server` and `Connection` stay the host's), and the body as bytes (up to
//! [`INLINE_BODY`]), as a file body sent with `sendfile(2)` (one range of one file: the common
//! case, zero-copy behind middleware too), or as a stream that reads the file in
//! [`CHUNK`]-byte pieces (a `multipart/byteranges` answer). Conditional
//! requests, ranges and precompressed siblings behave exactly as without the mount.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::sabi_types::RMut;
use abi_stable::std_types::{ROption, RResult, RSlice, RStr, RString, RVec};
use portico_api::abi::{Body, BodyStream, BodyStream_TO, Chunk, Chunk_NE, Field, FileBody, StartResponse_TO, Waker};

use super::StaticFiles;
use crate::http::outgoing::{Piece, Response};
use crate::http::request::RequestHead;
use crate::http::response::Framing;

/// Bodies up to this many bytes are handed over in one piece; larger ones stream. 256 KiB.
pub const INLINE_BODY: u64 = 256 * 1024;
/// Bytes read from the file per streamed chunk. 64 KiB.
pub const CHUNK: usize = 64 * 1024;

/// Serves `decoded` (the request's full decoded path) through `start_response`; `allowed` as
/// for [`StaticFiles::serve`].
pub fn call(
    statics: &Mutex<StaticFiles>,
    head: &RequestHead,
    decoded: &[u8],
    allowed: &dyn Fn(&Path) -> bool,
    mut start_response: StartResponse_TO<'_, RMut<'_, ()>>,
) -> Body {
    let Response { head: answer, body } =
        statics.lock().unwrap_or_else(|e| e.into_inner()).serve(head, decoded, allowed);
    let status = format!("{} {}", answer.code, portico_api::status::reason(answer.code));
    let length = match answer.framing {
        Framing::Length(n) => Some(n.to_string()),
        _ => None,
    };
    let fields: Vec<Field<'_>> = answer
        .fields
        .iter()
        .chain(length.as_deref().map(|n| ("Content-Length", n.as_bytes())))
        .map(|(n, v)| Field { name: RSlice::from_slice(n.as_bytes()), value: RSlice::from_slice(v) })
        .collect();
    if let RResult::RErr(e) =
        start_response.start_response(RStr::from_str(&status), RSlice::from_slice(&fields), ROption::RNone)
    {
        tracing::error!("static files behind middleware: start_response refused: {e}");
        return Body::Empty;
    }
    let total: u64 = body.iter().map(Piece::len).sum();
    // A HEAD answer has the head GET would have and no body (RFC 9110 §9.3.2), here too: the
    // middleware sees what a client would.
    if total == 0 || head.is_head() {
        return Body::Empty;
    }
    if total <= INLINE_BODY {
        let mut bytes = Vec::with_capacity(total as usize);
        for p in &body {
            if read_piece(p, &mut bytes).is_err() {
                // The file shrank under us: the length is promised, so a short body makes the
                // worker close the connection, as on the event loop.
                break;
            }
        }
        return Body::Bytes(RVec::from(bytes));
    }
    if let [Piece::File { file, offset, len }] = body.as_slice() {
        // A descriptor of its own: the body owns it, the cache keeps its `File`.
        match file.try_clone() {
            Ok(own) => return Body::File(FileBody::new(own, *offset, *len)),
            Err(e) => tracing::warn!("static files behind middleware: dup of an open file failed ({e}); streaming it"),
        }
    }
    Body::Stream(BodyStream_TO::from_value(FileStream { pieces: body.into_iter().collect(), pos: 0 }, TD_Opaque))
}

fn read_piece(p: &Piece, out: &mut Vec<u8>) -> std::io::Result<()> {
    match p {
        Piece::File { file, offset, len } => {
            let start = out.len();
            out.resize(start + *len as usize, 0);
            file.read_exact_at(&mut out[start..], *offset)?;
        }
        other => out.extend_from_slice(other.bytes().unwrap_or_default()),
    }
    Ok(())
}

/// A large static body, read piece by piece as the worker pulls it.
struct FileStream {
    pieces: std::collections::VecDeque<Piece>,
    /// Bytes of the front piece already sent.
    pos: u64,
}

impl BodyStream for FileStream {
    fn poll_chunk(&mut self, _waker: &Waker) -> RResult<Chunk_NE, RString> {
        let data = |bytes: Vec<u8>| RResult::ROk(Chunk_NE::new(Chunk::Data(RVec::from(bytes))));
        let Some(front) = self.pieces.front() else { return RResult::ROk(Chunk_NE::new(Chunk::End)) };
        let chunk = match front {
            Piece::File { file, offset, len } => {
                let n = (len - self.pos).min(CHUNK as u64) as usize;
                match read_file(file, offset + self.pos, n) {
                    Ok(buf) => {
                        self.pos += n as u64;
                        if self.pos < *len {
                            return data(buf);
                        }
                        buf
                    }
                    Err(e) => return RResult::RErr(RString::from(format!("reading a static file: {e}"))),
                }
            }
            other => other.bytes().unwrap_or_default().to_vec(),
        };
        self.pieces.pop_front();
        self.pos = 0;
        data(chunk)
    }
}

fn read_file(file: &Arc<File>, offset: u64, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}
