//! Request body framing (RFC 9112 §6.3): [`Decoder`] turns the bytes after a request head into
//! the body's content, by `Content-Length` or the chunked coding, and says where the body
//! ends (so the next pipelined request can start there).

use super::chunked::{ChunkedDecoder, ChunkedError};
use super::request::Framing;

/// Decodes one request body as its bytes arrive.
#[derive(Debug, Clone)]
pub enum Decoder {
    /// `Content-Length`: this many bytes still to come (RFC 9112 §6.3 rule 5).
    Length(u64),
    /// The chunked transfer coding (RFC 9112 §6.3 rule 4, §7.1).
    Chunked(ChunkedDecoder),
}

impl Decoder {
    /// The decoder for a request's framing; `None` when it has no body. `max_trailer`: the
    /// most bytes a chunked body's trailer section may take.
    pub fn new(framing: Framing, max_trailer: usize) -> Option<Decoder> {
        match framing {
            Framing::None => None,
            Framing::Length(n) => Some(Decoder::Length(n)),
            Framing::Chunked => Some(Decoder::Chunked(ChunkedDecoder::new(max_trailer))),
        }
    }

    /// Decodes what it can of `input`, appending the body's content to `out`. Returns the
    /// bytes of `input` used (all of them unless the body ended inside it) and whether the
    /// body is now complete.
    ///
    /// # Errors
    /// A malformed chunked body ([`ChunkedError`]); the connection must then close.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool), ChunkedError> {
        match self {
            Decoder::Length(remaining) => {
                let take = input.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                out.extend_from_slice(&input[..take]);
                *remaining -= take as u64;
                Ok((take, *remaining == 0))
            }
            Decoder::Chunked(dec) => {
                let used = dec.decode(input, out)?;
                Ok((used, dec.is_done()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_body_stops_at_its_length() {
        let mut d = Decoder::new(Framing::Length(5), 1024).unwrap();
        let mut out = Vec::new();
        assert_eq!(d.decode(b"hel", &mut out), Ok((3, false)));
        assert_eq!(d.decode(b"loGET /", &mut out), Ok((2, true)));
        assert_eq!(out, b"hello");
        assert!(Decoder::new(Framing::None, 1024).is_none());
    }

    #[test]
    fn a_chunked_body_ends_after_its_trailer() {
        let mut d = Decoder::new(Framing::Chunked, 1024).unwrap();
        let mut out = Vec::new();
        assert_eq!(d.decode(b"3\r\nabc\r\n0\r\n\r\nnext", &mut out), Ok((13, true)));
        assert_eq!(out, b"abc");
        let mut d = Decoder::new(Framing::Chunked, 1024).unwrap();
        assert_eq!(d.decode(b"zz\r\n", &mut out), Err(ChunkedError::Size));
    }
}
