//! The request head: request line and field lines (RFC 9112 §3, §5), and message framing
//! (RFC 9112 §6.3). Parsing is httparse's; this module adds what httparse leaves to its
//! caller: line-ending strictness, limits, Host, Content-Length / Transfer-Encoding
//! framing, `Connection` and `Expect`.

use std::ops::Range;

use super::error::RequestError;
use super::target::{self, TargetForm};

/// Limits applied while parsing a head; see [`super::limits`] for defaults.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Longest request line, bytes, CRLF excluded (414 beyond).
    pub request_line: usize,
    /// Largest header section, bytes (431 beyond).
    pub head_bytes: usize,
    /// Most field lines (431 beyond).
    pub fields: usize,
    /// Largest body, bytes (413 beyond, when `Content-Length` shows it).
    pub body: u64,
}

impl Default for HeadLimits {
    fn default() -> Self {
        use super::limits::*;
        HeadLimits { request_line: MAX_REQUEST_LINE, head_bytes: MAX_HEAD_BYTES, fields: MAX_FIELDS, body: MAX_BODY }
    }
}

/// HTTP-version of the request line (RFC 9112 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `HTTP/1.0`
    Http10,
    /// `HTTP/1.1`
    Http11,
}

impl Version {
    /// The protocol string, as `SERVER_PROTOCOL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// How the request body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (§6.3 (6): neither `Content-Length` nor `Transfer-Encoding`).
    None,
    /// `Content-Length` bytes (§6.3 (5)).
    Length(u64),
    /// The chunked transfer coding (§6.3 (4), §7.1).
    Chunked,
}

/// A parsed request head. All ranges index [`RequestHead::buf`], an owned copy of the head
/// bytes, so the head can move to a worker thread and be lent to a plugin without copying
/// each field.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// The head bytes: request line, field lines and the final CRLF.
    pub buf: Vec<u8>,
    /// The method token.
    pub method: Range<usize>,
    /// The request target as received.
    pub target: Range<usize>,
    /// The target's form (RFC 9112 §3.2).
    pub form: TargetForm,
    /// The HTTP version.
    pub version: Version,
    /// Field lines in order: (name, value) with the value trimmed of SP/HTAB.
    pub fields: Vec<(Range<usize>, Range<usize>)>,
    /// Body framing.
    pub framing: Framing,
    /// Whether the connection may stay open after this exchange (RFC 9112 §9.3).
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request (RFC 9110 §10.1.1).
    pub expect_continue: bool,
    /// The `Host` field value, if any.
    pub host: Option<Range<usize>>,
    /// The `Content-Type` field value, if any.
    pub content_type: Option<Range<usize>>,
}

impl RequestHead {
    /// The bytes of `range` in the head.
    pub fn slice(&self, range: &Range<usize>) -> &[u8] {
        &self.buf[range.clone()]
    }

    /// The method as text (a token, so ASCII).
    pub fn method(&self) -> &str {
        std::str::from_utf8(self.slice(&self.method)).unwrap_or("")
    }

    /// Whether this is a `HEAD` request (no response body, RFC 9110 §9.3.2).
    pub fn is_head(&self) -> bool {
        self.slice(&self.method) == b"HEAD"
    }

    /// The request target bytes.
    pub fn target(&self) -> &[u8] {
        self.slice(&self.target)
    }
}

/// Result of [`parse`] on a buffer that may hold only part of a head.
#[derive(Debug)]
pub enum Parsed {
    /// A complete head, and the number of bytes of the buffer it used.
    Complete(Box<RequestHead>, usize),
    /// More bytes are needed.
    Partial,
}

fn is_token_list_member(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Checks, from byte `from` on, that every LF is preceded by CR and every CR is followed by
/// LF (RFC 9112 §2.2: a bare CR must be rejected or replaced; a bare LF inside a CRLF head is
/// the smuggling shape llhttp and Gunicorn reject, so Portico rejects it too). A CR as the
/// last byte is left for the next call.
fn check_line_endings(head: &[u8], from: usize) -> Result<(), RequestError> {
    for (i, &b) in head.iter().enumerate().skip(from) {
        match b {
            b'\n' if i == 0 || head[i - 1] != b'\r' => {
                return Err(RequestError::BadRequest("bare LF in header section"));
            }
            b'\r' if i + 1 < head.len() && head[i + 1] != b'\n' => {
                return Err(RequestError::BadRequest("bare CR in header section"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether the request line is an HTTP version other than 1.0/1.1 (`HTTP/2.0`, the HTTP/2
/// preface `PRI * HTTP/2.0`, `HTTP/3.0`): those get 505 rather than 400.
fn is_other_http_version(line: &[u8]) -> bool {
    let Some(pos) = line.iter().rposition(|&b| b == b' ') else { return false };
    let v = &line[pos + 1..];
    v.len() == 8 && v.starts_with(b"HTTP/") && v[5].is_ascii_digit() && v[6] == b'.' && v[7].is_ascii_digit()
}

/// Host = uri-host [ ":" port ] (RFC 9110 §7.2, RFC 3986 §3.2.2): a lenient character check
/// that still refuses whitespace, `/`, `@`-less userinfo tricks and control bytes.
fn valid_host(value: &[u8]) -> bool {
    value.iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b))
}

/// Most empty lines (CRLF) skipped before a request line (RFC 9112 §2.2 asks for at least
/// one); more is a 400.
const MAX_LEADING_EMPTY_LINES: usize = 16;

/// How far a partial head has been scanned, kept across reads so that each byte is examined
/// once however the head is split into packets (a slow client sending one byte at a time
/// must not make the event loop rescan its whole buffer per byte).
#[derive(Debug, Default, Clone, Copy)]
pub struct HeadScan {
    /// Bytes (after leading empty lines) already checked.
    checked: usize,
    /// End of the request line, once seen.
    line_end: Option<usize>,
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// Parses a request head from the start of `buf`.
///
/// Leading empty lines (CRLF) before the request line are skipped (RFC 9112 §2.2).
///
/// # Errors
/// A [`RequestError`] for the status to answer; the connection must then be closed.
pub fn parse(buf: &[u8], limits: &HeadLimits) -> Result<Parsed, RequestError> {
    parse_resume(buf, &mut HeadScan::default(), limits)
}

/// [`parse`] for a buffer that grows between calls: `scan` remembers what earlier calls on
/// the same buffer checked. Reset it (to its default) once a head has been taken out.
///
/// # Errors
/// As [`parse`].
pub fn parse_resume(buf: &[u8], scan: &mut HeadScan, limits: &HeadLimits) -> Result<Parsed, RequestError> {
    let mut skip = 0;
    while buf[skip..].starts_with(b"\r\n") {
        skip += 2;
        if skip > 2 * MAX_LEADING_EMPTY_LINES {
            return Err(RequestError::BadRequest("too many empty lines before the request line"));
        }
    }
    let data = &buf[skip..];
    let from = scan.checked.min(data.len());
    // Only the head is examined: bytes after its end belong to the body or the next request.
    let head_end = find(data, from.saturating_sub(3), b"\r\n\r\n").map(|p| p + 4);
    let region = &data[..head_end.unwrap_or(data.len())];
    check_line_endings(region, from.saturating_sub(1))?;
    // The request line limit applies before the head is complete (RFC 9112 §3: 414).
    if scan.line_end.is_none() {
        scan.line_end = find(region, from.saturating_sub(1), b"\r\n");
    }
    match scan.line_end {
        Some(end) if end > limits.request_line => return Err(RequestError::UriTooLong { limit: limits.request_line }),
        None if region.len() > limits.request_line => {
            return Err(RequestError::UriTooLong { limit: limits.request_line });
        }
        _ => {}
    }
    let Some(end) = head_end else {
        if data.len() > limits.head_bytes {
            return Err(RequestError::HeaderFieldsTooLarge {
                limit_bytes: limits.head_bytes,
                limit_fields: limits.fields,
            });
        }
        scan.checked = data.len();
        return Ok(Parsed::Partial);
    };
    if end > limits.head_bytes {
        return Err(RequestError::HeaderFieldsTooLarge { limit_bytes: limits.head_bytes, limit_fields: limits.fields });
    }
    let head = &data[..end];

    let mut headers = vec![httparse::EMPTY_HEADER; limits.fields];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == end => {}
        Ok(_) => return Err(RequestError::BadRequest("malformed header section")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(RequestError::HeaderFieldsTooLarge {
                limit_bytes: limits.head_bytes,
                limit_fields: limits.fields,
            });
        }
        Err(httparse::Error::Version) => {
            let line_end = head.windows(2).position(|w| w == b"\r\n").unwrap_or(head.len());
            return Err(if is_other_http_version(&head[..line_end]) {
                RequestError::VersionNotSupported
            } else {
                RequestError::BadRequest("malformed request line")
            });
        }
        Err(httparse::Error::Token) => return Err(RequestError::BadRequest("malformed method or request target")),
        Err(httparse::Error::HeaderName) => return Err(RequestError::BadRequest("malformed field name")),
        Err(httparse::Error::HeaderValue) => return Err(RequestError::BadRequest("malformed field value")),
        Err(_) => return Err(RequestError::BadRequest("malformed request line")),
    }

    let base = head.as_ptr() as usize;
    let range_of = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let method = range_of(req.method.unwrap_or_default().as_bytes());
    let target_bytes = req.path.unwrap_or_default().as_bytes();
    let target = range_of(target_bytes);
    let version = if req.version == Some(0) { Version::Http10 } else { Version::Http11 };
    let is_options = req.method == Some("OPTIONS");
    let is_connect = req.method == Some("CONNECT");
    let form = target::classify(target_bytes, is_options, is_connect)?;

    let mut fields = Vec::with_capacity(req.headers.len());
    let mut content_length: Option<u64> = None;
    let mut saw_cl = false;
    let mut te_final_chunked = false;
    let mut te_seen = false;
    let mut te_other = false;
    let mut te_chunked_count = 0;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut expect_continue = false;
    let mut host = None;
    let mut host_count = 0;
    let mut content_type = None;

    for h in req.headers.iter() {
        let name = range_of(h.name.as_bytes());
        let value = range_of(h.value.trim_ascii());
        let v = h.value.trim_ascii();
        let n = h.name;
        if n.eq_ignore_ascii_case("content-length") {
            // RFC 9110 §8.6: 1*DIGIT; a list of identical values may be taken as one.
            for part in v.split(|&b| b == b',') {
                let part = part.trim_ascii();
                if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                    return Err(RequestError::BadRequest("invalid Content-Length"));
                }
                let len: u64 = std::str::from_utf8(part)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(RequestError::BadRequest("invalid Content-Length"))?;
                if content_length.is_some_and(|prev| prev != len) {
                    return Err(RequestError::BadRequest("conflicting Content-Length values"));
                }
                content_length = Some(len);
            }
            saw_cl = true;
        } else if n.eq_ignore_ascii_case("transfer-encoding") {
            te_seen = true;
            // Codings accumulate across field lines in order (RFC 9110 §5.3).
            for coding in v.split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                // Parameters (`;q=`) are not allowed on chunked; any other coding is unknown.
                if coding.eq_ignore_ascii_case(b"chunked") {
                    te_chunked_count += 1;
                    te_final_chunked = true;
                } else {
                    if !coding.iter().all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
                        return Err(RequestError::BadRequest("invalid transfer coding"));
                    }
                    te_other = true;
                    te_final_chunked = false;
                }
            }
        } else if n.eq_ignore_ascii_case("connection") {
            conn_close |= is_token_list_member(v, "close");
            conn_keep_alive |= is_token_list_member(v, "keep-alive");
        } else if n.eq_ignore_ascii_case("host") {
            host_count += 1;
            if !valid_host(v) {
                return Err(RequestError::BadRequest("invalid Host"));
            }
            host = Some(value.clone());
        } else if n.eq_ignore_ascii_case("expect") {
            // RFC 9110 §10.1.1: an HTTP/1.0 server ignores 100-continue.
            if v.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = version == Version::Http11;
            } else {
                return Err(RequestError::ExpectationFailed);
            }
        } else if n.eq_ignore_ascii_case("content-type") && content_type.is_none() {
            content_type = Some(value.clone());
        }
        fields.push((name, value));
    }

    // RFC 9112 §3.2: exactly one Host in HTTP/1.1; never more than one.
    if host_count > 1 {
        return Err(RequestError::BadRequest("more than one Host field"));
    }
    if version == Version::Http11 && host_count == 0 {
        return Err(RequestError::BadRequest("missing Host field"));
    }

    // RFC 9112 §6.3, in its order (steps 1–2 are about responses).
    let framing = if te_seen {
        // (3) Both Transfer-Encoding and Content-Length: we reject rather than frame by TE
        // and close (the request may be a smuggling attempt).
        if saw_cl {
            return Err(RequestError::BadRequest("both Transfer-Encoding and Content-Length"));
        }
        // §6.1: Transfer-Encoding was added in HTTP/1.1; an HTTP/1.0 request with it is faulty.
        if version == Version::Http10 {
            return Err(RequestError::BadRequest("Transfer-Encoding in an HTTP/1.0 request"));
        }
        // (4) The final coding must be chunked, else 400 and close.
        if !te_final_chunked || te_chunked_count != 1 {
            return Err(RequestError::BadRequest("Transfer-Encoding does not end in a single chunked"));
        }
        // A coding before chunked that we do not implement (gzip, ...): 501 (RFC 9112 §6.1).
        if te_other {
            return Err(RequestError::UnknownTransferCoding);
        }
        Framing::Chunked
    } else if let Some(len) = content_length {
        // (5) A valid Content-Length.
        if len > limits.body {
            return Err(RequestError::ContentTooLarge { limit: limits.body });
        }
        if len == 0 { Framing::None } else { Framing::Length(len) }
    } else {
        // (6) A request with neither has no body.
        Framing::None
    };

    let keep_alive = match version {
        Version::Http11 => !conn_close,
        Version::Http10 => conn_keep_alive && !conn_close,
    };

    let offset = |r: Range<usize>| r.start..r.end;
    Ok(Parsed::Complete(
        Box::new(RequestHead {
            buf: head.to_vec(),
            method: offset(method),
            target: offset(target),
            form,
            version,
            fields,
            framing,
            keep_alive,
            expect_continue,
            host,
            content_type,
        }),
        skip + end,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(s: &str) -> RequestHead {
        match parse(s.as_bytes(), &HeadLimits::default()) {
            Ok(Parsed::Complete(h, n)) => {
                assert_eq!(n, s.len());
                *h
            }
            other => panic!("expected a complete head for {s:?}, got {other:?}"),
        }
    }

    fn parse_err(s: &str) -> u16 {
        match parse(s.as_bytes(), &HeadLimits::default()) {
            Err(e) => e.status(),
            other => panic!("expected an error for {s:?}, got {other:?}"),
        }
    }

    #[test]
    fn simple_get() {
        let h = parse_ok("GET /a?b HTTP/1.1\r\nHost: x\r\nX-A:  1 \r\n\r\n");
        assert_eq!(h.method(), "GET");
        assert_eq!(h.target(), b"/a?b");
        assert_eq!(h.framing, Framing::None);
        assert!(h.keep_alive);
        assert_eq!(h.slice(&h.fields[1].1), b"1");
    }

    #[test]
    fn partial_head_waits() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n", &HeadLimits::default()), Ok(Parsed::Partial)));
    }

    #[test]
    fn framing_rules_of_rfc9112_6_3() {
        assert_eq!(
            parse_err("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(parse_err("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n"), 400);
        assert_eq!(parse_err("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n"), 400);
        assert_eq!(parse_err("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), 400);
        assert_eq!(parse_err("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), 501);
        assert_eq!(parse_err("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
        let h = parse_ok("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(5));
        let h = parse_ok("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
    }

    #[test]
    fn host_rules_of_rfc9112_3_2() {
        assert_eq!(parse_err("GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(parse_err("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
        parse_ok("GET / HTTP/1.0\r\n\r\n");
    }

    #[test]
    fn versions_and_line_endings() {
        assert_eq!(parse_err("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 505);
        assert_eq!(parse_err("GET / HTTP/1.1\nHost: x\r\n\r\n"), 400);
        assert_eq!(parse_err("GET / HTTP/1.1\r\nHost: x\rY: z\r\n\r\n"), 400);
        assert_eq!(parse_err("GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n"), 400);
        assert_eq!(parse_err("GET / HTTP/1.1\r\nHost : x\r\n\r\n"), 400);
    }

    #[test]
    fn resumed_parsing_equals_whole_parsing() {
        let req = b"GET /a HTTP/1.1\r\nHost: x\r\nX-Long: abcdefghij\r\n\r\n";
        let mut scan = HeadScan::default();
        for n in 1..req.len() {
            assert!(matches!(parse_resume(&req[..n], &mut scan, &HeadLimits::default()), Ok(Parsed::Partial)));
        }
        let Ok(Parsed::Complete(h, used)) = parse_resume(req, &mut scan, &HeadLimits::default()) else {
            panic!("not complete")
        };
        assert_eq!((used, h.fields.len()), (req.len(), 2));
        // A bare LF arriving byte by byte is still caught.
        let bad = b"GET / HTTP/1.1\r\nHost: x\nY: z\r\n\r\n";
        let mut scan = HeadScan::default();
        let first_err = (1..=bad.len()).find_map(|n| parse_resume(&bad[..n], &mut scan, &HeadLimits::default()).err());
        assert_eq!(first_err.map(|e| e.status()), Some(400));
    }

    #[test]
    fn body_bytes_after_the_head_are_not_examined() {
        let mut req = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n".to_vec();
        req.extend_from_slice(b"\n\r\0\n");
        let Ok(Parsed::Complete(h, used)) = parse(&req, &HeadLimits::default()) else { panic!("refused") };
        assert_eq!((used, h.framing), (req.len() - 4, Framing::Length(4)));
    }

    #[test]
    fn leading_empty_lines_are_bounded() {
        parse_ok("\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(parse_err(&"\r\n".repeat(1000)), 400);
    }

    #[test]
    fn limits() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
        assert_eq!(parse_err(&long), 414);
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(parse_err(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")), 431);
        assert_eq!(parse_err("GET / HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\n\r\n"), 417);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn token() -> impl Strategy<Value = String> {
            "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"
        }

        proptest! {
            /// A well-formed head parses back to what was written, and every proper prefix of
            /// it is `Partial` (parsing does not depend on how the bytes arrive).
            #[test]
            fn serialized_head_round_trips(
                method in "[A-Z]{1,10}",
                path in "(/[a-z0-9._~%-]{0,8}){1,4}",
                query in proptest::option::of("[a-z0-9=&]{0,16}"),
                fields in proptest::collection::vec((token(), "[ -~]{0,20}"), 0..12),
                len in proptest::option::of(0u64..100_000),
            ) {
                let fields: Vec<(String, String)> = fields
                    .into_iter()
                    .filter(|(n, _)| !["host", "content-length", "transfer-encoding", "expect", "connection"]
                        .contains(&n.to_ascii_lowercase().as_str()))
                    .map(|(n, v)| (n, v.trim_matches(|c| c == ' ').to_owned()))
                    .collect();
                let target = match &query { Some(q) => format!("{path}?{q}"), None => path.clone() };
                let mut head = format!("{method} {target} HTTP/1.1\r\nHost: example\r\n");
                for (n, v) in &fields {
                    head.push_str(&format!("{n}: {v}\r\n"));
                }
                if let Some(len) = len {
                    head.push_str(&format!("Content-Length: {len}\r\n"));
                }
                head.push_str("\r\n");
                let bytes = head.as_bytes();
                for cut in [1, bytes.len() / 2, bytes.len() - 1] {
                    prop_assert!(matches!(parse(&bytes[..cut], &HeadLimits::default()), Ok(Parsed::Partial)));
                }
                let Ok(Parsed::Complete(h, used)) = parse(bytes, &HeadLimits::default()) else {
                    return Err(TestCaseError::fail(format!("not parsed: {head:?}")));
                };
                prop_assert_eq!(used, bytes.len());
                prop_assert_eq!(h.method(), method.as_str());
                prop_assert_eq!(h.target(), target.as_bytes());
                prop_assert_eq!(h.fields.len(), fields.len() + 1 + usize::from(len.is_some()));
                for ((n, v), (rn, rv)) in fields.iter().zip(h.fields.iter().skip(1)) {
                    prop_assert_eq!(h.slice(rn), n.as_bytes());
                    prop_assert_eq!(h.slice(rv), v.as_bytes());
                }
                let expected = match len { Some(0) | None => Framing::None, Some(n) => Framing::Length(n) };
                prop_assert_eq!(h.framing, expected);
            }
        }
    }

    #[test]
    fn connection_semantics() {
        assert!(!parse_ok("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(parse_ok("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!parse_ok("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").keep_alive);
    }
}
