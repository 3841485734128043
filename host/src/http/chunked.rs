//! The chunked transfer coding decoder (RFC 9112 §7.1), as an explicit state machine named
//! after the grammar:
//!
//! ```text
//! chunked-body   = *chunk last-chunk trailer-section CRLF
//! chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! chunk-size     = 1*HEXDIG
//! last-chunk     = 1*("0") [ chunk-ext ] CRLF
//! chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
//! chunk-ext-val  = token / quoted-string
//! trailer-section = *( field-line CRLF )
//! ```
//!
//! Strict: whitespace after a size or an extension must lead to `;` or `=`; CR must be followed
//! by LF; a size has at most 16 hex digits, leading zeros included (so it cannot overflow 64
//! bits, and zeros cannot pad a line); a chunk-size line, extensions included, is at most
//! [`MAX_CHUNK_LINE`] bytes (Node's CVE-2024-22019: unbounded extensions were read for free).
//! Extensions are parsed and ignored; trailer fields are validated and dropped (they never
//! reach the environ's headers). The framing bytes themselves count toward the body limit:
//! the connection counts every byte the decoder consumes, not only the content.

use thiserror::Error;

/// A malformed chunked body: the server answers 400 (or, once the response has started,
/// closes the connection).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChunkedError {
    /// A chunk-size that is not hex, is empty or overflows 64 bits.
    #[error("invalid chunk size")]
    Size,
    /// A malformed chunk extension.
    #[error("invalid chunk extension")]
    Extension,
    /// A line that does not end in CRLF where the grammar requires it.
    #[error("missing CRLF in chunked body")]
    LineEnding,
    /// A malformed trailer field line.
    #[error("invalid trailer field")]
    Trailer,
    /// The trailer section is longer than the limit.
    #[error("trailer section too large")]
    TrailerTooLarge,
    /// A chunk-size line (size and extensions) longer than [`MAX_CHUNK_LINE`].
    #[error("chunk-size line longer than {MAX_CHUNK_LINE} bytes")]
    LineTooLong,
}

/// Longest chunk-size line, in bytes: the size, its extensions and the CRLF. 4 KiB; past it
/// the body is malformed (400 and close).
pub const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Most hex digits in a chunk size, leading zeros included: 16 (64 bits).
const MAX_SIZE_DIGITS: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading chunk-size hex digits.
    Size,
    /// BWS after chunk-size: must lead to `;`.
    SizeBws,
    /// BWS after `;`, before chunk-ext-name.
    ExtBws,
    /// Reading chunk-ext-name.
    ExtName,
    /// BWS after a name: must lead to `=` or `;`.
    ExtNameBws,
    /// BWS after `=`, before the value.
    ExtValueBws,
    /// Reading a token value.
    ExtToken,
    /// Inside a quoted-string value.
    ExtQuoted,
    /// After `\` inside a quoted-string.
    ExtQuotedPair,
    /// After a value: BWS, then `;` or CR.
    ExtAfterValue,
    /// Saw CR ending the chunk-size line.
    SizeLf,
    /// Reading chunk-data.
    Data,
    /// Expecting the CR after chunk-data.
    DataCr,
    /// Expecting the LF after chunk-data.
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer field name.
    TrailerName,
    /// Inside a trailer field value.
    TrailerValue,
    /// Saw CR ending a trailer line.
    TrailerLf,
    /// Saw CR of the final empty line.
    EndLf,
    /// The body is complete.
    Done,
}

/// Decoder state for one chunked body. Feed it bytes as they arrive.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    size_digits: u32,
    last_chunk: bool,
    /// Bytes of the current chunk-size line so far.
    line_bytes: usize,
    trailer_bytes: usize,
    max_trailer: usize,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl ChunkedDecoder {
    /// A decoder that allows at most `max_trailer` bytes of trailer section.
    pub fn new(max_trailer: usize) -> Self {
        ChunkedDecoder {
            state: State::Size,
            size: 0,
            size_digits: 0,
            last_chunk: false,
            line_bytes: 0,
            trailer_bytes: 0,
            max_trailer,
        }
    }

    /// Whether the whole body, trailer section included, has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes as much of `input` as possible, appending chunk-data to `out`.
    ///
    /// Returns the number of bytes of `input` consumed: all of it unless the body ended
    /// inside it (then the rest belongs to the next request).
    ///
    /// # Errors
    /// A [`ChunkedError`] on malformed input; the decoder must not be used afterwards.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkedError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => return Ok(i),
                State::Data => {
                    let take = (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[i..i + take]);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                        if self.size_digits >= MAX_SIZE_DIGITS {
                            return Err(ChunkedError::Size);
                        }
                        self.size = (self.size << 4) | digit;
                        self.size_digits += 1;
                    }
                    _ if self.size_digits == 0 => return Err(ChunkedError::Size),
                    b'\r' => self.state = State::SizeLf,
                    b' ' | b'\t' => self.state = State::SizeBws,
                    b';' => self.state = State::ExtBws,
                    _ => return Err(ChunkedError::Size),
                },
                State::SizeBws => match b {
                    b' ' | b'\t' => {}
                    b';' => self.state = State::ExtBws,
                    _ => return Err(ChunkedError::Extension),
                },
                State::ExtBws => match b {
                    b' ' | b'\t' => {}
                    _ if is_tchar(b) => self.state = State::ExtName,
                    _ => return Err(ChunkedError::Extension),
                },
                State::ExtName => match b {
                    _ if is_tchar(b) => {}
                    b' ' | b'\t' => self.state = State::ExtNameBws,
                    b'=' => self.state = State::ExtValueBws,
                    b';' => self.state = State::ExtBws,
                    b'\r' => self.state = State::SizeLf,
                    _ => return Err(ChunkedError::Extension),
                },
                State::ExtNameBws => match b {
                    b' ' | b'\t' => {}
                    b'=' => self.state = State::ExtValueBws,
                    b';' => self.state = State::ExtBws,
                    _ => return Err(ChunkedError::Extension),
                },
                State::ExtValueBws => match b {
                    b' ' | b'\t' => {}
                    b'"' => self.state = State::ExtQuoted,
                    _ if is_tchar(b) => self.state = State::ExtToken,
                    _ => return Err(ChunkedError::Extension),
                },
                State::ExtToken => match b {
                    _ if is_tchar(b) => {}
                    b' ' | b'\t' => self.state = State::ExtAfterValue,
                    b';' => self.state = State::ExtBws,
                    b'\r' => self.state = State::SizeLf,
                    _ => return Err(ChunkedError::Extension),
                },
                // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text (RFC 9110 §5.6.4)
                State::ExtQuoted => match b {
                    b'"' => self.state = State::ExtAfterValue,
                    b'\\' => self.state = State::ExtQuotedPair,
                    b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => {}
                    _ => return Err(ChunkedError::Extension),
                },
                State::ExtQuotedPair => match b {
                    b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => self.state = State::ExtQuoted,
                    _ => return Err(ChunkedError::Extension),
                },
                State::ExtAfterValue => match b {
                    b' ' | b'\t' => {}
                    b';' => self.state = State::ExtBws,
                    b'\r' => self.state = State::SizeLf,
                    _ => return Err(ChunkedError::Extension),
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::LineEnding);
                    }
                    self.line_bytes = 0;
                    if self.size == 0 {
                        self.last_chunk = true;
                        self.state = State::TrailerStart;
                    } else {
                        self.state = State::Data;
                    }
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkedError::LineEnding);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::LineEnding);
                    }
                    self.size = 0;
                    self.size_digits = 0;
                    self.state = State::Size;
                }
                State::TrailerStart => match b {
                    b'\r' => self.state = State::EndLf,
                    _ if is_tchar(b) => self.state = State::TrailerName,
                    _ => return Err(ChunkedError::Trailer),
                },
                State::TrailerName => match b {
                    _ if is_tchar(b) => {}
                    b':' => self.state = State::TrailerValue,
                    _ => return Err(ChunkedError::Trailer),
                },
                State::TrailerValue => match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => {}
                    _ => return Err(ChunkedError::Trailer),
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::LineEnding);
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::LineEnding);
                    }
                    self.state = State::Done;
                    return Ok(i + 1);
                }
            }
            if matches!(
                self.state,
                State::Size
                    | State::SizeBws
                    | State::ExtBws
                    | State::ExtName
                    | State::ExtNameBws
                    | State::ExtValueBws
                    | State::ExtToken
                    | State::ExtQuoted
                    | State::ExtQuotedPair
                    | State::ExtAfterValue
                    | State::SizeLf
            ) {
                self.line_bytes += 1;
                if self.line_bytes > MAX_CHUNK_LINE {
                    return Err(ChunkedError::LineTooLong);
                }
            }
            if self.last_chunk {
                self.trailer_bytes += 1;
                if self.trailer_bytes > self.max_trailer {
                    return Err(ChunkedError::TrailerTooLarge);
                }
            }
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize), ChunkedError> {
        let mut d = ChunkedDecoder::new(1024);
        let mut out = Vec::new();
        let n = d.decode(input, &mut out)?;
        assert!(d.is_done(), "not done after {input:?}");
        Ok((out, n))
    }

    #[test]
    fn basic() {
        assert_eq!(decode_all(b"5\r\nhello\r\n0\r\n\r\nNEXT").unwrap(), (b"hello".to_vec(), 15));
        assert_eq!(decode_all(b"5;a=b;c=\"d\\\"e\" ; f\r\nhello\r\n000\r\nX-T: 1\r\n\r\n").unwrap().0, b"hello");
    }

    #[test]
    fn strictness() {
        let bad: &[&[u8]] = &[
            b"0 \r\n\r\n",
            b"2;\r\nab\r\n0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"1;a=\"\r\"\r\nx\r\n0\r\n\r\n",
            b"fffffffffffffffff\r\n",
            b"0\r\nX T: 1\r\n\r\n",
        ];
        for input in bad {
            let mut d = ChunkedDecoder::new(1024);
            assert!(d.decode(input, &mut Vec::new()).is_err(), "accepted {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn chunk_lines_and_leading_zeros_are_bounded() {
        let mut long_ext = b"1;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'x', MAX_CHUNK_LINE));
        long_ext.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
        assert_eq!(ChunkedDecoder::new(1024).decode(&long_ext, &mut Vec::new()), Err(ChunkedError::LineTooLong));
        // The same extension fed a byte at a time: the count survives across calls.
        let mut d = ChunkedDecoder::new(1024);
        let r = long_ext.iter().try_for_each(|b| d.decode(std::slice::from_ref(b), &mut Vec::new()).map(|_| ()));
        assert_eq!(r, Err(ChunkedError::LineTooLong));
        // Just under the limit, and again on every line: fine.
        let mut ok = Vec::new();
        for _ in 0..3 {
            ok.extend_from_slice(b"1;");
            ok.extend(std::iter::repeat_n(b'x', MAX_CHUNK_LINE - 5));
            ok.extend_from_slice(b"\r\na\r\n");
        }
        ok.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(decode_all(&ok).unwrap().0, b"aaa");
        // Sixteen digits with leading zeros is a size; seventeen is not.
        assert_eq!(decode_all(b"0000000000000001\r\nz\r\n0\r\n\r\n").unwrap().0, b"z");
        let mut d = ChunkedDecoder::new(1024);
        assert_eq!(d.decode(b"00000000000000001\r\nz\r\n", &mut Vec::new()), Err(ChunkedError::Size));
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
                                          split in 0usize..4000) {
            // Encoded by the response side's encoder: the two halves must agree.
            let mut wire = Vec::new();
            let mut enc = crate::http::encode::Encoder::new(crate::http::response::Framing::Chunked);
            for c in &chunks {
                enc.encode(c, &mut wire);
            }
            enc.finish(&mut wire);
            // Feed in two pieces split anywhere: the decoder must not depend on read boundaries.
            let split = split.min(wire.len());
            let mut d = ChunkedDecoder::new(1024);
            let mut out = Vec::new();
            let a = d.decode(&wire[..split], &mut out).unwrap();
            prop_assert_eq!(a, split);
            let b = d.decode(&wire[split..], &mut out).unwrap();
            prop_assert_eq!(a + b, wire.len());
            prop_assert!(d.is_done());
            prop_assert_eq!(out, chunks.concat());
        }
    }
}
