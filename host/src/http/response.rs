//! Response heads (RFC 9112 §4, §6): [`ResponseHead`] — status, fields, framing — and the
//! one function that writes a head as bytes ([`ResponseHead::encode`]); the interim
//! `100 Continue` ([`encode_continue`]); and the checks on what an application hands
//! `start_response` ([`validate_status`], [`validate_field`]).
//!
//! Nothing else in the host writes status lines or field lines: static files, the server's
//! own answers and plugin responses all build a `ResponseHead`, and the framing field
//! (`Content-Length` or `Transfer-Encoding: chunked`) follows from its [`Framing`], so a
//! head can never say one framing while the body is sent with another.

use std::cell::RefCell;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use super::request::Version;

/// Whether `name` is a hop-by-hop field, which an application may not set (the rule lives in
/// the API crate, shared with plugins: [`portico_api::is_hop_by_hop`]).
pub use portico_api::is_hop_by_hop;

/// Checks a status from `start_response`: three digits 200–599, a space, and a reason phrase
/// of HTAB / SP / VCHAR / obs-text (RFC 9112 §4). Returns the code.
///
/// # Errors
/// A short reason for the log. 1xx statuses are refused: interim responses are the server's.
pub fn validate_status(status: &str) -> Result<u16, &'static str> {
    let b = status.as_bytes();
    if b.len() < 4 || !b[..3].iter().all(u8::is_ascii_digit) || b[3] != b' ' {
        return Err("status must be three digits, a space and a reason phrase");
    }
    let code = (b[0] - b'0') as u16 * 100 + (b[1] - b'0') as u16 * 10 + (b[2] - b'0') as u16;
    if !(200..=599).contains(&code) {
        return Err("status code must be 200..=599");
    }
    if !b[4..].iter().all(|&c| c == b'\t' || c == b' ' || (0x21..=0x7e).contains(&c) || c >= 0x80) {
        return Err("reason phrase contains a control character");
    }
    Ok(code)
}

/// Whether `name` is a token (RFC 9110 §5.1, §5.6.2).
fn is_token(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `value` is a valid field value: no CR, LF, NUL or other control byte but HTAB
/// (RFC 9110 §5.5).
fn is_field_value(value: &[u8]) -> bool {
    !value.iter().any(|&c| (c < 0x20 && c != b'\t') || c == 0x7f)
}

/// Checks a response field: the name is a token (RFC 9110 §5.1), the value has no CR, LF, NUL
/// or other control byte but HTAB (RFC 9110 §5.5), and the field is not hop-by-hop.
///
/// # Errors
/// A short reason for the log.
pub fn validate_field(name: &str, value: &[u8]) -> Result<(), &'static str> {
    if !is_token(name.as_bytes()) {
        return Err("field name is not a token");
    }
    if !is_field_value(value) {
        return Err("field value contains CR, LF, NUL or another control byte");
    }
    if is_hop_by_hop(name) {
        return Err("hop-by-hop field set by the application");
    }
    Ok(())
}

/// Response field lines, kept encoded (`Name: value\r\n` each) so a head is written with one
/// copy. Every line is a token name and a valid value: [`Fields::push`] is the only way in,
/// and it checks both (a server bug in debug builds; a dropped field, logged, in release), so
/// [`Fields::iter`] reads the lines back exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    buf: Vec<u8>,
}

impl Fields {
    /// No fields.
    pub const fn new() -> Fields {
        Fields { buf: Vec::new() }
    }

    /// No fields, with room for `bytes` of them (one allocation for a head's usual fields).
    pub fn with_capacity(bytes: usize) -> Fields {
        Fields { buf: Vec::with_capacity(bytes) }
    }

    /// Appends `name: value`. The caller has validated application fields
    /// ([`validate_field`]); the server's own are valid by construction.
    pub fn push(&mut self, name: &str, value: &[u8]) {
        if !is_token(name.as_bytes()) || !is_field_value(value) {
            debug_assert!(false, "invalid response field {name:?}");
            tracing::error!("dropped an invalid response field {name:?} (a bug in the server)");
            return;
        }
        self.buf.reserve(name.len() + value.len() + 4);
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value);
        self.buf.extend_from_slice(b"\r\n");
    }

    /// Appends every line of `other`, in order.
    pub fn append(&mut self, other: &Fields) {
        self.buf.extend_from_slice(&other.buf);
    }

    /// The lines as `(name, value)`, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()).filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':')?;
            let name = std::str::from_utf8(&line[..colon]).ok()?;
            Some((name, line[colon + 1..].strip_prefix(b" ").unwrap_or(&line[colon + 1..])))
        })
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Their encoded length in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
}

/// How a response body is delimited on the wire (RFC 9112 §6.1–§6.3), and so which framing
/// field the head carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No framing field: a response that never has content (1xx, 204, 304: RFC 9110 §8.6,
    /// §15.4.5), or a `HEAD` answer whose length is not known.
    None,
    /// `Content-Length: n` (RFC 9110 §8.6). A `HEAD` answer carries the length `GET` would
    /// have (§9.3.2) and no body.
    Length(u64),
    /// `Transfer-Encoding: chunked` (RFC 9112 §7.1); HTTP/1.1 only.
    Chunked,
    /// Neither field: the body ends when the connection closes (RFC 9112 §6.3 rule 8), the
    /// only way to stream a body of unknown length to an HTTP/1.0 client.
    CloseDelimited,
}

/// A response head: status, fields and framing. Written by [`ResponseHead::encode`], which
/// adds `Date` and `Server` (unless the application set its own), the framing field and
/// `Connection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code, 100–599.
    pub code: u16,
    /// The reason phrase; `None` means the registered one for `code` (RFC 9110 §15).
    pub reason: Option<String>,
    /// Field lines, in the order they are written (hop-by-hop and framing fields excluded).
    pub fields: Fields,
    /// How the body is delimited.
    pub framing: Framing,
    /// The application set `Date` itself (the server then adds none).
    pub own_date: bool,
    /// The application set `Server` itself.
    pub own_server: bool,
}

impl ResponseHead {
    /// A head with the registered reason phrase, no fields and no body ([`Framing::None`]).
    pub fn new(code: u16) -> ResponseHead {
        ResponseHead {
            code,
            reason: None,
            fields: Fields::new(),
            framing: Framing::None,
            own_date: false,
            own_server: false,
        }
    }

    /// Adds a field (builder style); see [`Fields::push`].
    pub fn field(mut self, name: &str, value: impl AsRef<[u8]>) -> ResponseHead {
        self.fields.push(name, value.as_ref());
        self
    }

    /// Sets the framing (builder style).
    pub fn framing(mut self, framing: Framing) -> ResponseHead {
        self.framing = framing;
        self
    }

    /// Bytes [`ResponseHead::encode`] writes, or a little more: the fields, and 160 for the
    /// status line, `Date`, `Server`, the framing and `Connection` fields.
    pub fn encoded_len_hint(&self) -> usize {
        160 + self.fields.buf.len()
    }

    /// Writes the head to `out`: status line, `Date`, `Server`, the fields, the framing field,
    /// `Connection` and the empty line. `close`: the connection closes after this response
    /// (`Connection: close`, RFC 9112 §9.6); an HTTP/1.0 connection kept open says
    /// `Connection: keep-alive`, since HTTP/1.0 closes by default (RFC 9112 §9.3).
    /// [`Framing::CloseDelimited`] always closes.
    pub fn encode(&self, version: Version, close: bool, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len_hint());
        out.extend_from_slice(version.as_str().as_bytes());
        let _ = write!(out, " {} ", self.code);
        let reason = self.reason.as_deref().unwrap_or_else(|| portico_api::status::reason(self.code));
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        if !self.own_date {
            write_date(out);
        }
        if !self.own_server {
            out.extend_from_slice(b"Server: portico\r\n");
        }
        out.extend_from_slice(&self.fields.buf);
        match self.framing {
            Framing::None | Framing::CloseDelimited => {}
            Framing::Length(n) => {
                let _ = write!(out, "Content-Length: {n}\r\n");
            }
            Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        }
        if close || self.framing == Framing::CloseDelimited {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if version == Version::Http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The interim response that tells a client sending `Expect: 100-continue` to send its body
/// (RFC 9110 §10.1.1, §15.2.1). Only HTTP/1.1 clients expect it.
pub fn encode_continue(out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
}

/// Appends `Date: <IMF-fixdate>\r\n` (RFC 9110 §6.6.1), formatted at most once a second per
/// thread.
fn write_date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_empty() {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(c.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

/// Whether a response with this status to this request carries no body (RFC 9110 §6.4.1:
/// HEAD, 1xx, 204 and 304).
pub fn bodiless(code: u16, head_request: bool) -> bool {
    head_request || code == 204 || code == 304 || code < 200
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(head: &ResponseHead, version: Version, close: bool) -> String {
        let mut out = Vec::new();
        head.encode(version, close, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn statuses() {
        assert_eq!(validate_status("200 OK"), Ok(200));
        assert_eq!(validate_status("404 "), Ok(404));
        assert!(validate_status("twohundred OK").is_err());
        assert!(validate_status("200").is_err());
        assert!(validate_status("100 Continue").is_err());
        assert!(validate_status("200 OK\r\nX: y").is_err());
    }

    #[test]
    fn fields() {
        assert!(validate_field("Content-Type", b"text/plain").is_ok());
        assert!(validate_field("X-Split", b"a\r\nSet-Cookie: x").is_err());
        assert!(validate_field("Bad Name", b"x").is_err());
        assert!(validate_field("Connection", b"close").is_err());
        assert!(validate_field("X-Nul", b"a\0b").is_err());
    }

    #[test]
    fn fields_read_back_as_pushed() {
        let mut f = Fields::new();
        f.push("Content-Type", b"text/plain");
        f.push("X-Empty", b"");
        f.push("X-Colon", b"a: b\tc");
        let got: Vec<(&str, &[u8])> = f.iter().collect();
        assert_eq!(got, [("Content-Type", &b"text/plain"[..]), ("X-Empty", b""), ("X-Colon", b"a: b\tc")]);
    }

    #[test]
    fn one_writer_for_every_head() {
        let head = ResponseHead::new(404).field("Content-Type", "text/plain").framing(Framing::Length(14));
        let t = text(&head, Version::Http11, false);
        assert!(t.starts_with("HTTP/1.1 404 Not Found\r\nDate: "), "{t}");
        assert!(t.ends_with("Server: portico\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\n"), "{t}");

        let t = text(&ResponseHead::new(200).framing(Framing::Chunked), Version::Http11, true);
        assert!(t.ends_with("Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"), "{t}");

        let t = text(&ResponseHead::new(200).framing(Framing::Length(0)), Version::Http10, false);
        assert!(t.starts_with("HTTP/1.0 200 OK\r\n") && t.ends_with("Connection: keep-alive\r\n\r\n"), "{t}");

        let t = text(&ResponseHead::new(200).framing(Framing::CloseDelimited), Version::Http10, false);
        assert!(t.ends_with("Server: portico\r\nConnection: close\r\n\r\n"), "close-delimited closes: {t}");

        let t = text(&ResponseHead::new(304), Version::Http11, false);
        assert!(!t.contains("Content-Length") && !t.contains("Connection"), "{t}");

        let mut app = ResponseHead::new(201).field("Date", "x").field("Server", "app");
        app.reason = Some("Made".into());
        app.own_date = true;
        app.own_server = true;
        let t = text(&app, Version::Http11, false);
        assert_eq!(t, "HTTP/1.1 201 Made\r\nDate: x\r\nServer: app\r\n\r\n");
    }
}
