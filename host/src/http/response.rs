//! Response heads (RFC 9112 §4): validating what an application hands `start_response`, and
//! writing the status line, fields, `Date` and framing fields.

use std::cell::RefCell;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Fields an application may not set: hop-by-hop fields belong to the connection, and so to
/// the server (PEP 3333 §"Other HTTP Features"; RFC 9110 §7.6.1). `Content-Length` is allowed.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` is a hop-by-hop field.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

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

/// Checks a response field: the name is a token (RFC 9110 §5.1), the value has no CR, LF, NUL
/// or other control byte but HTAB (RFC 9110 §5.5), and the field is not hop-by-hop.
///
/// # Errors
/// A short reason for the log.
pub fn validate_field(name: &str, value: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
        return Err("field name is not a token");
    }
    if value.iter().any(|&c| (c < 0x20 && c != b'\t') || c == 0x7f) {
        return Err("field value contains CR, LF, NUL or another control byte");
    }
    if is_hop_by_hop(name) {
        return Err("hop-by-hop field set by the application");
    }
    Ok(())
}

/// Appends `Date: <IMF-fixdate>\r\n` (RFC 9110 §6.6.1), formatted at most once a second per
/// thread.
pub fn write_date(out: &mut Vec<u8>) {
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

/// Starts a head the server writes itself: status line with the registered reason phrase,
/// `Date`, `Server`.
pub fn start_head(out: &mut Vec<u8>, version: &str, code: u16) {
    let _ = write!(out, "{version} {code} {}\r\n", portico_api::status::reason(code));
    write_date(out);
    out.extend_from_slice(b"Server: portico\r\n");
}

/// Ends every head: the `Connection` field, then the empty line. `close` → `Connection: close`
/// (RFC 9112 §9.6); an HTTP/1.0 connection kept open says `Connection: keep-alive`, since
/// HTTP/1.0 closes by default (RFC 9112 §9.3); HTTP/1.1 keep-alive needs nothing.
pub fn finish_head(out: &mut Vec<u8>, version: &str, close: bool) {
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if version == "HTTP/1.0" {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A complete response from the server itself (an error page, a redirect, `OPTIONS *`):
/// [`start_head`], the extra `fields`, `Content-Type` (unless empty), `Content-Length`,
/// [`finish_head`], and the body unless `head_only`.
pub fn simple(
    version: &str,
    code: u16,
    fields: &[(&str, &[u8])],
    content_type: &str,
    body: &[u8],
    close: bool,
    head_only: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(192 + body.len());
    start_head(&mut out, version, code);
    for (name, value) in fields {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !content_type.is_empty() {
        let _ = write!(out, "Content-Type: {content_type}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n", body.len());
    finish_head(&mut out, version, close);
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// The plain-text body of an error the server answers itself.
pub fn error_body(code: u16) -> Vec<u8> {
    format!("{code} {}\n", portico_api::status::reason(code)).into_bytes()
}

/// Whether a response with this status to this method carries no body (RFC 9110 §6.4.1:
/// HEAD, 1xx, 204 and 304).
pub fn bodiless(code: u16, head_request: bool) -> bool {
    head_request || code == 204 || code == 304 || code < 200
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
