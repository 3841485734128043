//! A response on its way out: [`Response`] (a typed head and body pieces: what static files,
//! the server's own pages and applications produce) and [`Prepared`] (the same, encoded: the
//! head as bytes followed by the body pieces, ready for a connection's write queue).
//!
//! Every response is encoded by [`Response::prepare`], so the rules live here once: a `HEAD`
//! answer has the head `GET` would have and no body (RFC 9110 §9.3.2); a small in-memory body
//! is copied behind the head so both leave in one write.

use std::fs::File;
use std::ops::Range;
use std::sync::Arc;

use abi_stable::std_types::RVec;

use super::request::Version;
use super::response::{Framing, ResponseHead};

/// A body smaller than this many bytes, held in memory, is copied behind the head (one piece,
/// one write) instead of queued on its own. 16 KiB.
pub const COALESCE: usize = 16 * 1024;

/// A piece of a response body.
#[derive(Debug)]
pub enum Piece {
    /// Bytes made for this response (a page, multipart delimiters, framed chunks).
    Owned(Vec<u8>),
    /// A range of shared bytes (a cached static file).
    Shared(Arc<[u8]>, Range<usize>),
    /// Bytes from an application's allocator, freed through its own vtable wherever dropped.
    Plugin(RVec<u8>),
    /// Static bytes inside a plugin library (libraries are never unloaded).
    Static(&'static [u8]),
    /// `len` bytes of an open file from byte `offset` (sent with `sendfile(2)`).
    File {
        /// The file (shared with the open-file cache; read with explicit offsets).
        file: Arc<File>,
        /// First byte to send.
        offset: u64,
        /// Bytes to send.
        len: u64,
    },
}

impl Piece {
    /// The in-memory bytes, or `None` for a file piece.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Piece::Owned(v) => Some(v),
            Piece::Shared(b, r) => Some(&b[r.clone()]),
            Piece::Plugin(v) => Some(v.as_slice()),
            Piece::Static(s) => Some(s),
            Piece::File { .. } => None,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Piece::File { len, .. } => *len,
            other => other.bytes().map_or(0, |b| b.len() as u64),
        }
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A response before encoding: the head and the body pieces. For a `HEAD` request the body
/// may be given anyway (it is dropped when prepared).
#[derive(Debug)]
pub struct Response {
    /// Status, fields, framing.
    pub head: ResponseHead,
    /// The body, in order.
    pub body: Vec<Piece>,
}

impl Response {
    /// A page the server makes: `code`, `Content-Type: content_type`, `body` with its length.
    pub fn page(code: u16, content_type: &str, body: Vec<u8>) -> Response {
        let head =
            ResponseHead::new(code).field("Content-Type", content_type).framing(Framing::Length(body.len() as u64));
        Response { head, body: vec![Piece::Owned(body)] }
    }

    /// An error the server answers itself: `code` and a one-line plain-text body
    /// (`404 Not Found`).
    pub fn error(code: u16) -> Response {
        let body = format!("{code} {}\n", portico_api::status::reason(code)).into_bytes();
        Response::page(code, "text/plain; charset=utf-8", body)
    }

    /// `503 Service Unavailable` with `Retry-After: 1`: an application too busy to take the
    /// call (its gate's queue is full, or it is stopped).
    pub fn busy() -> Response {
        Response::error(503).field("Retry-After", "1")
    }

    /// Adds a field to the head (builder style).
    pub fn field(mut self, name: &str, value: impl AsRef<[u8]>) -> Response {
        self.head.fields.push(name, value.as_ref());
        self
    }

    /// Encodes the head for `version` (`close`: the connection closes after it) and queues
    /// the body behind it — none for a `HEAD` request (`head_request`).
    pub fn prepare(self, version: Version, close: bool, head_request: bool) -> Prepared {
        let Response { head, mut body } = self;
        if head_request {
            body.clear();
        }
        body.retain(|p| !p.is_empty());
        let body_len = body.iter().map(Piece::len).sum();
        // One small in-memory body rides in the head's buffer. Cached static bytes stay shared.
        let copied = match body.as_slice() {
            [only] if coalesces(only) && only.len() <= COALESCE as u64 => only.bytes(),
            _ => None,
        };
        // One allocation for the head and what rides in it.
        let mut bytes = Vec::with_capacity(head.encoded_len_hint() + copied.map_or(0, <[u8]>::len));
        head.encode(version, close, &mut bytes);
        if let Some(copied) = copied {
            bytes.extend_from_slice(copied);
            body.clear();
        }
        let close = close || head.framing == Framing::CloseDelimited;
        Prepared { status: head.code, head: bytes, body, body_len, close }
    }
}

/// Whether a piece is copied behind the head when it is the whole (small) body.
fn coalesces(p: &Piece) -> bool {
    matches!(p, Piece::Owned(_) | Piece::Plugin(_) | Piece::Static(_))
}

/// An encoded response: what a connection's write queue takes.
#[derive(Debug)]
pub struct Prepared {
    /// Status code, for the access log.
    pub status: u16,
    /// The head's bytes, possibly followed by its small body.
    pub head: Vec<u8>,
    /// The body pieces after them.
    pub body: Vec<Piece>,
    /// Payload bytes these pieces carry (0 for a `HEAD` answer), for the access log; a
    /// streamed body adds its chunks later.
    pub body_len: u64,
    /// The head says `Connection: close`: the connection closes once it is written.
    pub close: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(p: &Prepared) -> Vec<u8> {
        let mut out = p.head.clone();
        p.body.iter().for_each(|p| out.extend_from_slice(p.bytes().unwrap()));
        out
    }

    #[test]
    fn an_error_page_is_one_piece_with_its_length() {
        let p = Response::error(404).prepare(Version::Http11, true, false);
        assert_eq!((p.status, p.body.len(), p.body_len, p.close), (404, 0, 14, true));
        let text = String::from_utf8(wire(&p)).unwrap();
        assert!(text.contains("Content-Length: 14\r\nConnection: close\r\n\r\n404 Not Found\n"), "{text}");
    }

    #[test]
    fn head_requests_get_the_head_only() {
        let p = Response::error(405).field("Allow", "GET, HEAD").prepare(Version::Http11, false, true);
        assert_eq!((p.body.len(), p.body_len), (0, 0));
        let text = String::from_utf8(wire(&p)).unwrap();
        assert!(text.contains("Allow: GET, HEAD\r\n") && text.contains("Content-Length: 23\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    #[test]
    fn large_and_shared_bodies_stay_separate() {
        let big = vec![b'x'; COALESCE + 1];
        let p = Response::page(200, "text/plain", big).prepare(Version::Http11, false, false);
        assert_eq!(p.body.len(), 1);
        let shared: Arc<[u8]> = Arc::from(&b"abcdef"[..]);
        let head = ResponseHead::new(200).framing(Framing::Length(3));
        let p = Response { head, body: vec![Piece::Shared(shared, 1..4)] }.prepare(Version::Http11, false, false);
        assert_eq!((p.body.len(), p.body_len), (1, 3));
        assert!(wire(&p).ends_with(b"\r\n\r\nbcd"));
    }
}
