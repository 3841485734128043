//! Response body framing for a streamed body (RFC 9112 §6, §7.1): [`Encoder`] frames each
//! chunk an application yields as the head's [`Framing`] says, and ends the body.

use std::io::Write;

use super::response::Framing;

/// The last-chunk and an empty trailer section (RFC 9112 §7.1).
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Frames one streamed response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoder {
    framing: Framing,
    sent: u64,
}

/// What [`Encoder::encode`] did with a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    /// Content bytes written (without framing).
    pub payload: u64,
    /// The body is complete: `Content-Length` bytes have been written.
    pub complete: bool,
    /// The chunk went past the declared `Content-Length` and was cut: close after it.
    pub cut: bool,
}

/// How a body ended, from [`Encoder::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Properly delimited (the last-chunk written, or every `Content-Length` byte sent): the
    /// connection may stay open.
    Clean,
    /// The end is the connection closing (close-delimited).
    Close,
    /// Fewer bytes than the `Content-Length` promised: the connection must close so the
    /// client sees a truncated body.
    Short {
        /// Content bytes sent.
        sent: u64,
        /// Content bytes promised.
        promised: u64,
    },
}

impl Encoder {
    /// An encoder for a body framed as `framing` ([`Framing::Length`], [`Framing::Chunked`] or
    /// [`Framing::CloseDelimited`]; [`Framing::None`] writes nothing).
    pub fn new(framing: Framing) -> Encoder {
        Encoder { framing, sent: 0 }
    }

    /// Appends `chunk`, framed, to `out`. An empty chunk writes nothing (a zero-size chunk
    /// would end a chunked body).
    pub fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Encoded {
        let mut cut = false;
        let payload = match self.framing {
            Framing::None => 0,
            _ if chunk.is_empty() => 0,
            Framing::Chunked => {
                let _ = write!(out, "{:X}\r\n", chunk.len());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
                chunk.len() as u64
            }
            Framing::CloseDelimited => {
                out.extend_from_slice(chunk);
                chunk.len() as u64
            }
            Framing::Length(len) => {
                let room = len - self.sent;
                let take = (chunk.len() as u64).min(room);
                out.extend_from_slice(&chunk[..take as usize]);
                cut = take < chunk.len() as u64;
                take
            }
        };
        self.sent += payload;
        let complete = matches!(self.framing, Framing::Length(len) if self.sent == len);
        Encoded { payload, complete, cut }
    }

    /// The application's body ended: writes what ends it (the last-chunk) and says whether the
    /// connection can stay open.
    pub fn finish(&self, out: &mut Vec<u8>) -> Ending {
        match self.framing {
            Framing::Chunked => {
                out.extend_from_slice(LAST_CHUNK);
                Ending::Clean
            }
            Framing::CloseDelimited => Ending::Close,
            Framing::Length(len) if self.sent < len => Ending::Short { sent: self.sent, promised: len },
            Framing::Length(_) | Framing::None => Ending::Clean,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_frames_each_chunk_and_ends_with_the_last_chunk() {
        let mut e = Encoder::new(Framing::Chunked);
        let mut out = Vec::new();
        assert_eq!(e.encode(b"hello, world", &mut out), Encoded { payload: 12, complete: false, cut: false });
        assert_eq!(e.encode(b"", &mut out).payload, 0);
        assert_eq!(e.finish(&mut out), Ending::Clean);
        assert_eq!(out, b"C\r\nhello, world\r\n0\r\n\r\n");
    }

    #[test]
    fn length_cuts_past_the_promise_and_reports_short_bodies() {
        let mut e = Encoder::new(Framing::Length(5));
        let mut out = Vec::new();
        assert_eq!(e.encode(b"abc", &mut out), Encoded { payload: 3, complete: false, cut: false });
        assert_eq!(e.finish(&mut Vec::new()), Ending::Short { sent: 3, promised: 5 });
        assert_eq!(e.encode(b"defg", &mut out), Encoded { payload: 2, complete: true, cut: true });
        assert_eq!(out, b"abcde");
        assert_eq!(e.finish(&mut out), Ending::Clean);
    }

    #[test]
    fn close_delimited_ends_by_closing() {
        let mut e = Encoder::new(Framing::CloseDelimited);
        let mut out = Vec::new();
        e.encode(b"raw", &mut out);
        assert_eq!(e.finish(&mut out), Ending::Close);
        assert_eq!(out, b"raw");
    }
}
