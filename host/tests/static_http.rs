//! Static files as HTTP resources: the response fields and validators (`ETag`, `Last-Modified`),
//! conditional requests (RFC 9110 §13), ranges (§14), precompressed siblings, directories
//! (redirect, index, listing), methods, `--cache-control`, the open-file cache
//! (`--file-cache-valid-ms`) and large files (memory, stalled readers, `--send-timeout`).
//!
//! Files whose dates the tests compare get a fixed mtime in the past with a sub-second part
//! ([`FIXED_SECS`] + 0.5 s), so `Last-Modified` is a strong validator (RFC 9110 §8.8.2.2) and
//! comparisons must be made at one-second granularity.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{
    IO_TIMEOUT, Response, Server, ServerBuilder, install_bytes, poll_until, raw_until_close, read_head, read_response,
    show, split_head,
};

const INDEX: &str = "<!doctype html>\n<html><body>static_http index</body></html>\n";
const NOT_FOUND_PAGE: &str = "<!doctype html>\n<html><body>static_http 404 page</body></html>\n";
const NOTES: &str = "plain notes, a file without precompressed siblings\n";
const JSON: &str = "{\"static_http\": true}\n";
const DIR_INDEX: &str = "<html><body>the index of /dir/</body></html>\n";
const SUB_INDEX: &str = "<html><body>the index of /dir/sub/</body></html>\n";
const SPACE_INDEX: &str = "<html><body>the index of /with space/</body></html>\n";
const APP_JS: &str = "console.log('identity variant of app.js');\n";
/// Precompressed siblings: distinct bytes and lengths; they need not be real compressed data.
const APP_JS_GZ: &[u8] = b"\x1f\x8bGZ: gzip variant of app.js (not real gzip data)\n";
const APP_JS_BR: &[u8] = b"BRv1: brotli variant of app.js, longer than the two others (not real brotli data)\n";
const ONLY_CSS: &str = "body { color: #123456; } /* identity variant of only.css */\n";
const ONLY_CSS_GZ: &[u8] = b"\x1f\x8bGZ: gzip variant of only.css\n";
/// Length of `data.bin`.
const LEN: usize = 4096;
/// The whole seconds of the fixed mtime (Sun, 13 Sep 2020 12:26:40 GMT); the files get
/// `FIXED_SECS + 0.5 s`.
const FIXED_SECS: u64 = 1_600_000_000;
const FIXED_NANOS: u32 = 500_000_000;

/// `data.bin`: 4 KiB of binary bytes, every offset distinguishable from its neighbours.
fn data() -> Vec<u8> {
    (0..LEN as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ (i as u8)).collect()
}

fn fixed_mtime() -> SystemTime {
    UNIX_EPOCH + Duration::new(FIXED_SECS, FIXED_NANOS)
}

/// `Last-Modified` of the files with the fixed mtime.
fn fixed_lm() -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(FIXED_SECS))
}

/// An HTTP-date `delta` seconds from the fixed mtime's second.
fn lm_plus(delta: i64) -> String {
    let secs = FIXED_SECS.checked_add_signed(delta).expect("a date after 1970");
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Sets the mtime of `path` (a regular file), keeping its contents.
fn set_mtime(path: &Path, t: SystemTime) {
    let file =
        fs::OpenOptions::new().write(true).open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    file.set_modified(t).unwrap_or_else(|e| panic!("setting the mtime of {}: {e}", path.display()));
}

/// Gives every regular file under `dir` the fixed mtime.
fn fix_mtimes(dir: &Path) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        let meta = fs::symlink_metadata(&path).expect("symlink_metadata");
        if meta.is_dir() {
            fix_mtimes(&path);
        } else if meta.is_file() {
            set_mtime(&path, fixed_mtime());
        }
    }
}

/// The test site: known files with the fixed mtime, no plugins.
fn site() -> ServerBuilder {
    Server::builder()
        .plugins(&[])
        .docroot_file("index.html", INDEX)
        .docroot_file("404.html", NOT_FOUND_PAGE)
        .docroot_file("notes.txt", NOTES)
        .docroot_file("data.bin", data())
        .docroot_file("data.json", JSON)
        .docroot_file("empty.txt", "")
        .docroot_file("app.js", APP_JS)
        .docroot_file("app.js.gz", APP_JS_GZ)
        .docroot_file("app.js.br", APP_JS_BR)
        .docroot_file("only.css", ONLY_CSS)
        .docroot_file("only.css.gz", ONLY_CSS_GZ)
        .docroot_file("dir/index.html", DIR_INDEX)
        .docroot_file("dir/sub/index.html", SUB_INDEX)
        .docroot_file("with space/index.html", SPACE_INDEX)
        .docroot_file("noindex/a.txt", "a file in a directory without index.html\n")
        .before_start(|root| fix_mtimes(&root.join("docroot")))
}

// ---------------------------------------------------------------------------------------------
// Requests and responses
// ---------------------------------------------------------------------------------------------

/// `METHOD path HTTP/1.1`, `Host`, the given fields, and `Connection: close` when `close`.
fn request_with(method: &str, path: &str, fields: &[(&str, &str)], close: bool) -> Vec<u8> {
    let mut s = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in fields {
        s.push_str(&format!("{name}: {value}\r\n"));
    }
    if close {
        s.push_str("Connection: close\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// A response and every byte that followed its head on the wire (the connection was closed
/// by the server after it, so this is exactly what was sent as the body, framing aside).
struct Reply {
    r: Response,
    after_head: Vec<u8>,
    what: String,
}

impl Reply {
    fn status(&self) -> u16 {
        self.r.status
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.r.header(name)
    }

    /// The response for failure messages: the request, the head, and the start of the body.
    fn summary(&self) -> String {
        brief(&self.what, &self.r.raw)
    }
}

/// `what: <head> + <first 100 body bytes> (N body bytes)`, for failure messages.
fn brief(what: &str, raw: &[u8]) -> String {
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").map_or(raw.len(), |i| i + 4);
    let body = &raw[at..];
    format!("{what}: {} + {} ({} body bytes)", show(&raw[..at]), show(&body[..body.len().min(100)]), body.len())
}

/// Sends one request with `Connection: close` on a new connection, reads until the server
/// closes, and parses the response.
fn fetch(server: &Server, method: &str, path: &str, fields: &[(&str, &str)]) -> Reply {
    let what = format!("{method} {path} {fields:?}");
    let request = request_with(method, path, fields, true);
    let reply = raw_until_close(server.addr(), &request, IO_TIMEOUT);
    assert!(
        reply.closed,
        "{what} with Connection: close: the server did not close within {IO_TIMEOUT:?}; got {}{}",
        show(&reply.bytes),
        server.context()
    );
    let r = read_response(&mut io::Cursor::new(&reply.bytes), method == "HEAD")
        .unwrap_or_else(|e| panic!("{what}: cannot parse the response: {e}{}", server.context()));
    let (_, rest) = split_head(&reply.bytes);
    Reply { r, after_head: rest.to_vec(), what }
}

fn get(server: &Server, path: &str, fields: &[(&str, &str)]) -> Reply {
    fetch(server, "GET", path, fields)
}

/// Asserts a 200 whose wire body is exactly `body`, with a matching `Content-Length`.
#[track_caller]
fn assert_whole(x: &Reply, body: &[u8]) {
    assert_eq!(x.status(), 200, "want 200 with the whole file: {}", x.summary());
    assert!(
        x.after_head == body,
        "want the whole file ({} bytes), got {} bytes: {}",
        body.len(),
        x.after_head.len(),
        x.summary()
    );
    assert_eq!(x.header("Content-Length"), Some(body.len().to_string().as_str()), "{}", x.summary());
    assert_eq!(x.header("Content-Range"), None, "a 200 has no Content-Range: {}", x.summary());
}

/// Asserts a 206 for one range `first..=last` of `whole`.
#[track_caller]
fn assert_partial(x: &Reply, whole: &[u8], first: usize, last: usize) {
    assert_eq!(x.status(), 206, "want 206 for bytes {first}-{last}: {}", x.summary());
    let want_range = format!("bytes {first}-{last}/{}", whole.len());
    assert_eq!(x.header("Content-Range"), Some(want_range.as_str()), "{}", x.summary());
    let n = last - first + 1;
    assert_eq!(x.header("Content-Length"), Some(n.to_string().as_str()), "{}", x.summary());
    assert!(x.after_head == whole[first..=last], "the body is not bytes {first}-{last} of the file: {}", x.summary());
}

/// Asserts no body bytes followed the head (304, HEAD).
#[track_caller]
fn assert_no_body(x: &Reply) {
    assert!(x.after_head.is_empty(), "{} bytes after the head: {}", x.after_head.len(), x.summary());
}

/// The ETag of a response, checked to be a strong, well-formed entity-tag (RFC 9110 §8.8.3).
#[track_caller]
fn strong_etag(x: &Reply) -> String {
    let tag = x.header("ETag").unwrap_or_else(|| panic!("no ETag: {}", x.summary())).to_owned();
    assert!(!tag.starts_with("W/"), "the ETag {tag:?} is weak; want a strong one: {}", x.summary());
    let opaque = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"'));
    let opaque = opaque.unwrap_or_else(|| panic!("the ETag {tag:?} is not a quoted string: {}", x.summary()));
    assert!(
        !opaque.is_empty() && opaque.bytes().all(|b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80),
        "the ETag {tag:?} has characters outside etagc: {}",
        x.summary()
    );
    tag
}

fn weak(tag: &str) -> String {
    format!("W/{tag}")
}

/// Sends `method path` (keep-alive) and then `GET /notes.txt` on the same connection; returns
/// the first response after checking that the second one parses as the notes file, which
/// proves the first was framed exactly (no stray body bytes after a HEAD or a 304).
fn then_notes(server: &Server, method: &str, path: &str, fields: &[(&str, &str)]) -> Response {
    let mut conn = server.connect();
    conn.send(&request_with(method, path, fields, false));
    let first = conn
        .try_read_response(method == "HEAD")
        .unwrap_or_else(|e| conn.fail(&format!("reading the response to {method} {path} {fields:?}: {e}")));
    conn.send(&request_with("GET", "/notes.txt", &[], true));
    let next = conn.try_read_response(false).unwrap_or_else(|e| {
        conn.fail(&format!(
            "the request after {method} {path} {fields:?} on the same connection got no parsable response \
             (stray body bytes?): {e}; first response: {}",
            brief("first", &first.raw)
        ))
    });
    assert_eq!(
        (next.status, next.text().as_str()),
        (200, NOTES),
        "GET /notes.txt after {method} {path} {fields:?} on the same connection: {}",
        brief("next", &next.raw)
    );
    first
}

fn content_length(x: &Reply) -> u64 {
    let cl = x.header("Content-Length").unwrap_or_else(|| panic!("no Content-Length: {}", x.summary()));
    cl.parse().unwrap_or_else(|_| panic!("bad Content-Length {cl:?}: {}", x.summary()))
}

// ---------------------------------------------------------------------------------------------
// The 200 response: fields and validators
// ---------------------------------------------------------------------------------------------

#[test]
fn file_response_has_length_type_validators_and_accept_ranges() {
    let server = site().start();
    let x = get(&server, "/data.bin", &[]);
    assert_whole(&x, &data());
    assert_eq!(x.header("Content-Type"), Some("application/octet-stream"), "{}", x.summary());
    assert_eq!(x.header("Accept-Ranges"), Some("bytes"), "{}", x.summary());
    assert_eq!(x.header("Cache-Control"), None, "no Cache-Control without --cache-control: {}", x.summary());
    assert_eq!(x.header("Content-Encoding"), None, "{}", x.summary());

    let lm = x.header("Last-Modified").unwrap_or_else(|| panic!("no Last-Modified: {}", x.summary()));
    let parsed = httpdate::parse_http_date(lm).unwrap_or_else(|e| panic!("Last-Modified {lm:?}: {e}"));
    assert_eq!(lm, httpdate::fmt_http_date(parsed), "Last-Modified {lm:?} is not an IMF-fixdate");
    let mtime = fs::metadata(server.docroot().join("data.bin")).and_then(|m| m.modified()).expect("mtime");
    let mtime_secs = mtime.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    assert_eq!(
        parsed.duration_since(UNIX_EPOCH).expect("after 1970").as_secs(),
        mtime_secs,
        "Last-Modified {lm:?} is not the file's mtime (second {mtime_secs})"
    );
    assert_eq!(lm, fixed_lm());

    let tag = strong_etag(&x);
    let again = get(&server, "/data.bin", &[]);
    assert_eq!(strong_etag(&again), tag, "the ETag changed between two requests for an unchanged file");
    assert_eq!(again.header("Last-Modified"), Some(lm), "{}", again.summary());

    // Different files (same mtime) have different ETags.
    let notes = get(&server, "/notes.txt", &[]);
    assert_ne!(strong_etag(&notes), tag, "two different files with the same mtime share an ETag");

    // An empty file is a 200 with Content-Length 0.
    let empty = get(&server, "/empty.txt", &[]);
    assert_whole(&empty, b"");
    strong_etag(&empty);
}

#[test]
fn text_javascript_and_json_types_carry_utf8_charset() {
    let server = site().start();
    for (path, want) in [
        ("/notes.txt", "text/plain; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/only.css", "text/css; charset=utf-8"),
        ("/data.json", "application/json; charset=utf-8"),
        ("/data.bin", "application/octet-stream"),
    ] {
        let x = get(&server, path, &[]);
        assert_eq!(x.status(), 200, "{}", x.summary());
        let ct = x.header("Content-Type").unwrap_or_else(|| panic!("no Content-Type: {}", x.summary()));
        assert_eq!(ct.to_ascii_lowercase(), want, "{}", x.summary());
    }
    let x = get(&server, "/app.js", &[]);
    let ct =
        x.header("Content-Type").unwrap_or_else(|| panic!("no Content-Type: {}", x.summary())).to_ascii_lowercase();
    assert!(ct.contains("javascript") && ct.ends_with("; charset=utf-8"), "Content-Type {ct:?}: {}", x.summary());
}

/// The ETag must change when a file is rewritten with different bytes of the same length
/// within the same second: only the mtime's nanoseconds differ (Last-Modified cannot tell).
#[test]
fn etag_changes_on_a_same_size_rewrite_within_the_same_second() {
    let server = site().args(["--file-cache-valid-ms", "0"]).start();
    let path = server.docroot().join("same.txt");
    let first = "A".repeat(40) + "\n";
    let second = "B".repeat(40) + "\n";
    let secs = FIXED_SECS + 1000;
    fs::write(&path, &first).expect("writing same.txt");
    set_mtime(&path, UNIX_EPOCH + Duration::new(secs, 100_000_000));
    let got = fs::metadata(&path).and_then(|m| m.modified()).expect("mtime");
    assert_eq!(
        got.duration_since(UNIX_EPOCH).expect("after 1970").subsec_nanos(),
        100_000_000,
        "the file system under {} does not keep nanosecond mtimes; this test needs it",
        path.display()
    );

    let x1 = get(&server, "/same.txt", &[]);
    assert_whole(&x1, first.as_bytes());
    let tag1 = strong_etag(&x1);

    // In place (same inode), same length, same second, other nanoseconds.
    fs::write(&path, &second).expect("rewriting same.txt");
    set_mtime(&path, UNIX_EPOCH + Duration::new(secs, 600_000_000));
    let x2 = get(&server, "/same.txt", &[]);
    assert_whole(&x2, second.as_bytes());
    let tag2 = strong_etag(&x2);
    assert_ne!(tag2, tag1, "same size, same second, other bytes: the ETag must change");
    assert_eq!(x2.header("Last-Modified"), x1.header("Last-Modified"), "same second: same Last-Modified");

    // The old tag no longer matches; the new one does.
    let x = get(&server, "/same.txt", &[("If-None-Match", &tag1)]);
    assert_whole(&x, second.as_bytes());
    let x = get(&server, "/same.txt", &[("If-None-Match", &tag2)]);
    assert_eq!(x.status(), 304, "{}", x.summary());
    let x = get(&server, "/same.txt", &[("Range", "bytes=0-3"), ("If-Range", &tag1)]);
    assert_whole(&x, second.as_bytes());

    // Replaced by rename (a new inode), same length, same second, other nanoseconds again.
    let third = "C".repeat(40) + "\n";
    install_bytes(third.as_bytes(), &path);
    set_mtime(&path, UNIX_EPOCH + Duration::new(secs, 900_000_000));
    let x3 = get(&server, "/same.txt", &[]);
    assert_whole(&x3, third.as_bytes());
    let tag3 = strong_etag(&x3);
    assert!(tag3 != tag1 && tag3 != tag2, "ETags {tag1} {tag2} {tag3} must all differ");
}

#[test]
fn file_cache_valid_ms_zero_sees_every_change() {
    let server = site().args(["--file-cache-valid-ms", "0"]).start();
    let path = server.docroot().join("notes.txt");
    let x = get(&server, "/notes.txt", &[]);
    assert_whole(&x, NOTES.as_bytes());

    let in_place = "rewritten in place, with a different length\n";
    fs::write(&path, in_place).expect("rewriting notes.txt");
    assert_whole(&get(&server, "/notes.txt", &[]), in_place.as_bytes());

    let renamed = "replaced by rename\n";
    install_bytes(renamed.as_bytes(), &path);
    assert_whole(&get(&server, "/notes.txt", &[]), renamed.as_bytes());

    fs::remove_file(&path).expect("removing notes.txt");
    let x = get(&server, "/notes.txt", &[]);
    assert_eq!(x.status(), 404, "a deleted file: {}", x.summary());
    assert_eq!(x.after_head, NOT_FOUND_PAGE.as_bytes(), "{}", x.summary());

    let back = "created again\n";
    fs::write(&path, back).expect("recreating notes.txt");
    assert_whole(&get(&server, "/notes.txt", &[]), back.as_bytes());
}

#[test]
fn file_cache_valid_ms_300_sees_a_rewrite_within_1500_ms() {
    let server = site().args(["--file-cache-valid-ms", "300"]).start();
    let path = server.docroot().join("notes.txt");
    for round in 0..3 {
        let x = get(&server, "/notes.txt", &[]);
        assert_eq!(x.status(), 200, "{}", x.summary()); // looked up: now in the cache
        let new = format!("rewrite #{round} while cached{}\n", ".".repeat(round * 7));
        if round == 1 {
            install_bytes(new.as_bytes(), &path);
        } else {
            fs::write(&path, &new).expect("rewriting notes.txt");
        }
        let took = server.wait_for_body("/notes.txt", &new, Duration::from_millis(1500));
        eprintln!("--file-cache-valid-ms 300: rewrite #{round} seen after {took:?}");
    }
}

#[test]
fn head_has_the_fields_of_get_and_no_body() {
    let server = site().start();
    let cases: [(&str, &[(&str, &str)]); 6] = [
        ("/data.bin", &[]),
        ("/notes.txt", &[]),
        ("/dir/", &[]),
        ("/app.js", &[("Accept-Encoding", "gzip")]),
        ("/app.js", &[]),
        ("/no-such-file.txt", &[]),
    ];
    for (path, fields) in cases {
        let g = get(&server, path, fields);
        let h = fetch(&server, "HEAD", path, fields);
        assert_no_body(&h);
        assert_eq!(h.r.status_line, g.r.status_line, "HEAD vs GET: {} / {}", h.summary(), g.summary());
        for name in
            ["Content-Length", "Content-Type", "ETag", "Last-Modified", "Accept-Ranges", "Content-Encoding", "Vary"]
        {
            assert_eq!(h.header(name), g.header(name), "{name} of HEAD vs GET: {} / {}", h.summary(), g.summary());
        }
        assert_eq!(content_length(&h), g.after_head.len() as u64, "HEAD's Content-Length: {}", h.summary());
        let r = then_notes(&server, "HEAD", path, fields);
        assert_eq!(r.status, g.status(), "keep-alive HEAD {path}: {}", brief("HEAD", &r.raw));
    }
}

#[test]
fn methods_other_than_get_and_head_are_405_with_allow() {
    let server = site().start();
    for path in ["/notes.txt", "/dir/", "/"] {
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            let x = fetch(&server, method, path, &[]);
            assert_eq!(x.status(), 405, "{}", x.summary());
            let allow = x.header("Allow").unwrap_or_else(|| panic!("405 without Allow: {}", x.summary()));
            let methods: BTreeSet<String> = allow.split(',').map(|m| m.trim().to_owned()).collect();
            assert_eq!(methods, BTreeSet::from(["GET".to_owned(), "HEAD".to_owned()]), "Allow: {}", x.summary());
        }
    }
    // With a request body.
    let reply = raw_until_close(
        server.addr(),
        b"POST /notes.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello",
        IO_TIMEOUT,
    );
    assert!(reply.bytes.starts_with(b"HTTP/1.1 405 "), "POST with a body: {}", show(&reply.bytes));
    assert_eq!(get(&server, "/notes.txt", &[]).status(), 200);
}

// ---------------------------------------------------------------------------------------------
// Cache-Control
// ---------------------------------------------------------------------------------------------

#[test]
fn cache_control_is_sent_on_200_206_and_304_when_configured() {
    const VALUE: &str = "public, max-age=600";
    let server = site().args(["--cache-control", VALUE]).start();
    let x = get(&server, "/data.bin", &[]);
    assert_eq!((x.status(), x.header("Cache-Control")), (200, Some(VALUE)), "{}", x.summary());
    let tag = strong_etag(&x);
    let x = get(&server, "/data.bin", &[("Range", "bytes=0-9")]);
    assert_eq!((x.status(), x.header("Cache-Control")), (206, Some(VALUE)), "{}", x.summary());
    let x = get(&server, "/data.bin", &[("If-None-Match", &tag)]);
    assert_eq!((x.status(), x.header("Cache-Control")), (304, Some(VALUE)), "{}", x.summary());
    let x = get(&server, "/data.bin", &[("If-Modified-Since", &fixed_lm())]);
    assert_eq!((x.status(), x.header("Cache-Control")), (304, Some(VALUE)), "{}", x.summary());
    let x = fetch(&server, "HEAD", "/data.bin", &[]);
    assert_eq!((x.status(), x.header("Cache-Control")), (200, Some(VALUE)), "{}", x.summary());
    let x = get(&server, "/app.js", &[("Accept-Encoding", "br")]);
    assert_eq!((x.status(), x.header("Cache-Control")), (200, Some(VALUE)), "{}", x.summary());
    // Interpretation: a 404 is not a file response, and caching it would hide a file added later.
    let x = get(&server, "/no-such-file.txt", &[]);
    assert_eq!((x.status(), x.header("Cache-Control")), (404, None), "{}", x.summary());
}

#[test]
fn options_also_read_portico_environment_variables() {
    let server = site()
        .docroot_file("list/entry.txt", "an entry\n")
        .env("PORTICO_CACHE_CONTROL", "no-cache")
        .env("PORTICO_DIR_LISTING", "true")
        .env("PORTICO_FILE_CACHE_VALID_MS", "0")
        .start();
    let x = get(&server, "/notes.txt", &[]);
    assert_eq!(x.header("Cache-Control"), Some("no-cache"), "PORTICO_CACHE_CONTROL: {}", x.summary());
    let x = get(&server, "/list/", &[]);
    assert_eq!(x.status(), 200, "PORTICO_DIR_LISTING=true: {}", x.summary());
    assert!(x.r.text().contains("entry.txt"), "PORTICO_DIR_LISTING=true: {}", x.summary());
    let new = "rewritten under PORTICO_FILE_CACHE_VALID_MS=0\n";
    fs::write(server.docroot().join("notes.txt"), new).expect("rewriting notes.txt");
    assert_whole(&get(&server, "/notes.txt", &[]), new.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Conditional requests (RFC 9110 §13)
// ---------------------------------------------------------------------------------------------

#[test]
fn if_match_uses_strong_comparison() {
    let server = site().start();
    let tag = strong_etag(&get(&server, "/data.bin", &[]));
    let list = format!("\"nope\", {tag}");
    let weak_tag = weak(&tag);
    for (value, want) in [
        ("\"nope\"", 412),
        ("\"nope\", \"other\"", 412),
        (weak_tag.as_str(), 412),
        ("*", 200),
        (tag.as_str(), 200),
        (list.as_str(), 200),
    ] {
        let x = get(&server, "/data.bin", &[("If-Match", value)]);
        assert_eq!(x.status(), want, "If-Match: {value}: {}", x.summary());
        if want == 200 {
            assert_whole(&x, &data());
        }
    }
    let x = fetch(&server, "HEAD", "/data.bin", &[("If-Match", "\"nope\"")]);
    assert_eq!(x.status(), 412, "{}", x.summary());
}

#[test]
fn if_unmodified_since() {
    let server = site().start();
    let tag = strong_etag(&get(&server, "/data.bin", &[]));
    let (earlier, same, later) = (lm_plus(-1), fixed_lm(), lm_plus(3600));
    let cases: [(Vec<(&str, &str)>, u16); 6] = [
        (vec![("If-Unmodified-Since", &earlier)], 412),
        // Equal at one-second granularity although the mtime is 0.5 s later.
        (vec![("If-Unmodified-Since", &same)], 200),
        (vec![("If-Unmodified-Since", &later)], 200),
        // A matching If-Match makes If-Unmodified-Since ignored...
        (vec![("If-Match", &tag), ("If-Unmodified-Since", &earlier)], 200),
        // ...and a failing one decides.
        (vec![("If-Match", "\"nope\""), ("If-Unmodified-Since", &later)], 412),
        // RFC 9110 §13.1.4: an invalid date is ignored.
        (vec![("If-Unmodified-Since", "not a date")], 200),
    ];
    for (fields, want) in cases {
        let x = get(&server, "/data.bin", &fields);
        assert_eq!(x.status(), want, "{}", x.summary());
    }
}

#[test]
fn if_none_match_gives_304_with_weak_comparison() {
    let server = site().start();
    let tag = strong_etag(&get(&server, "/data.bin", &[]));
    let weak_tag = weak(&tag);
    let list = format!("\"a\", {tag}");
    let list_weak = format!("\"a\",{weak_tag} , \"b\"");
    for value in [tag.as_str(), weak_tag.as_str(), list.as_str(), list_weak.as_str(), "*"] {
        for method in ["GET", "HEAD"] {
            let x = fetch(&server, method, "/data.bin", &[("If-None-Match", value)]);
            assert_eq!(x.status(), 304, "If-None-Match: {value}: {}", x.summary());
            assert_no_body(&x);
        }
    }
    for value in ["\"a\"", "\"a\", \"b\"", "W/\"a\""] {
        let x = get(&server, "/data.bin", &[("If-None-Match", value)]);
        assert_whole(&x, &data());
    }
}

#[test]
fn not_modified_carries_the_validators_and_no_body() {
    let server = site().start();
    let ok = get(&server, "/data.bin", &[]);
    let tag = strong_etag(&ok);
    let lm = fixed_lm();
    for fields in [vec![("If-None-Match", tag.as_str())], vec![("If-Modified-Since", lm.as_str())]] {
        let x = get(&server, "/data.bin", &fields);
        assert_eq!(x.status(), 304, "{}", x.summary());
        assert_no_body(&x);
        assert_eq!(x.header("ETag"), Some(tag.as_str()), "304 ETag: {}", x.summary());
        assert_eq!(x.header("Last-Modified"), ok.header("Last-Modified"), "304 Last-Modified: {}", x.summary());
        if let Some(cl) = x.header("Content-Length") {
            assert_eq!(
                Some(cl),
                ok.header("Content-Length"),
                "a 304's Content-Length must be the 200's: {}",
                x.summary()
            );
        }
        assert_eq!(x.header("Vary"), None, "data.bin has no precompressed siblings: {}", x.summary());
        assert_eq!(x.header("Cache-Control"), None, "{}", x.summary());
        let r = then_notes(&server, "GET", "/data.bin", &fields);
        assert_eq!(r.status, 304, "{}", brief("keep-alive", &r.raw));
    }
}

#[test]
fn if_modified_since() {
    let server = site().start();
    let tag = strong_etag(&get(&server, "/data.bin", &[]));
    let (earlier, same, later) = (lm_plus(-1), fixed_lm(), lm_plus(3600));
    let cases: [(Vec<(&str, &str)>, u16); 9] = [
        // Equal at one-second granularity although the mtime is 0.5 s later.
        (vec![("If-Modified-Since", &same)], 304),
        (vec![("If-Modified-Since", &later)], 304),
        (vec![("If-Modified-Since", &earlier)], 200),
        (vec![("If-Modified-Since", "yesterday")], 200),
        (vec![("If-Modified-Since", "Sun, 99 Sep 2020 12:26:40 GMT")], 200),
        (vec![("If-Modified-Since", "")], 200),
        // If-None-Match present: If-Modified-Since is ignored either way.
        (vec![("If-None-Match", "\"other\""), ("If-Modified-Since", &later)], 200),
        (vec![("If-None-Match", &tag), ("If-Modified-Since", &earlier)], 304),
        (vec![("If-None-Match", "*"), ("If-Modified-Since", &earlier)], 304),
    ];
    for (fields, want) in cases {
        let x = get(&server, "/data.bin", &fields);
        assert_eq!(x.status(), want, "{}", x.summary());
        if want == 200 {
            assert_whole(&x, &data());
        } else {
            assert_no_body(&x);
        }
    }
    let x = fetch(&server, "HEAD", "/data.bin", &[("If-Modified-Since", &same)]);
    assert_eq!(x.status(), 304, "{}", x.summary());
}

/// RFC 9110 §5.6.7: a recipient MUST accept all three HTTP-date formats (beyond the brief,
/// which names IMF-fixdate only).
#[test]
fn if_modified_since_accepts_the_obsolete_date_formats() {
    let server = site().start();
    assert_eq!(fixed_lm(), "Sun, 13 Sep 2020 12:26:40 GMT");
    for date in ["Sunday, 13-Sep-20 12:26:40 GMT", "Sun Sep 13 12:26:40 2020"] {
        let x = get(&server, "/data.bin", &[("If-Modified-Since", date)]);
        assert_eq!(x.status(), 304, "If-Modified-Since: {date}: {}", x.summary());
    }
}

/// RFC 9110 §13.2.2: If-Match, then If-Unmodified-Since, then If-None-Match, then
/// If-Modified-Since, and only then Range.
#[test]
fn preconditions_are_evaluated_in_order_and_before_range() {
    let server = site().start();
    let tag = strong_etag(&get(&server, "/data.bin", &[]));
    let later = lm_plus(3600);
    let cases: [(Vec<(&str, &str)>, u16); 7] = [
        (vec![("If-Match", "\"nope\""), ("If-None-Match", &tag)], 412),
        (vec![("If-Match", &tag), ("If-None-Match", &tag)], 304),
        (vec![("If-Unmodified-Since", "Sat, 01 Jan 2000 00:00:00 GMT"), ("If-None-Match", &tag)], 412),
        (vec![("If-None-Match", &tag), ("Range", "bytes=0-9")], 304),
        (vec![("If-Modified-Since", &later), ("Range", "bytes=0-9")], 304),
        (vec![("If-Match", "\"nope\""), ("Range", "bytes=0-9")], 412),
        (vec![("If-Match", &tag), ("Range", "bytes=0-9")], 206),
    ];
    for (fields, want) in cases {
        let x = get(&server, "/data.bin", &fields);
        assert_eq!(x.status(), want, "{}", x.summary());
    }
}

#[test]
fn if_range_with_etags_and_dates() {
    let server = site().start();
    let whole = data();
    let tag = strong_etag(&get(&server, "/data.bin", &[]));
    let weak_tag = weak(&tag);
    let range = ("Range", "bytes=0-9");
    let x = get(&server, "/data.bin", &[range, ("If-Range", &tag)]);
    assert_partial(&x, &whole, 0, 9);
    let x = get(&server, "/data.bin", &[range, ("If-Range", &fixed_lm())]);
    assert_partial(&x, &whole, 0, 9);
    for other in ["\"nope\"".to_owned(), weak_tag, lm_plus(-1), lm_plus(86_400)] {
        let x = get(&server, "/data.bin", &[range, ("If-Range", &other)]);
        assert_whole(&x, &whole);
    }
    // Without Range, If-Range is ignored.
    let x = get(&server, "/data.bin", &[("If-Range", "\"nope\"")]);
    assert_whole(&x, &whole);
}

// ---------------------------------------------------------------------------------------------
// Ranges (RFC 9110 §14)
// ---------------------------------------------------------------------------------------------

#[test]
fn single_byte_ranges() {
    let server = site().start();
    let whole = data();
    let last = LEN - 1;
    let cases = [
        ("bytes=0-9".to_owned(), 0, 9),
        ("bytes=-500".to_owned(), LEN - 500, last),
        ("bytes=100-".to_owned(), 100, last),
        (format!("bytes={last}-{last}"), last, last),
        ("bytes=1000-1999".to_owned(), 1000, 1999),
        // Past the end: clamped.
        ("bytes=0-999999".to_owned(), 0, last),
        (format!("bytes=4000-{}", LEN + 100), 4000, last),
        // A suffix longer than the file: all of it.
        (format!("bytes=-{}", LEN * 2), 0, last),
    ];
    for (value, first, last) in cases {
        let x = get(&server, "/data.bin", &[("Range", &value)]);
        assert_partial(&x, &whole, first, last);
        assert_eq!(x.header("Content-Type"), Some("application/octet-stream"), "{}", x.summary());
        strong_etag(&x);
    }
}

#[test]
fn unsatisfiable_range_is_416_with_the_length() {
    let server = site().start();
    let want = format!("bytes */{LEN}");
    for value in [format!("bytes={LEN}-"), format!("bytes={}-{}", LEN + 10, LEN + 20), format!("bytes={}-", LEN * 10)] {
        let x = get(&server, "/data.bin", &[("Range", &value)]);
        assert_eq!(x.status(), 416, "Range: {value}: {}", x.summary());
        assert_eq!(x.header("Content-Range"), Some(want.as_str()), "Range: {value}: {}", x.summary());
        if let Some(cl) = x.header("Content-Length") {
            assert_eq!(cl, x.after_head.len().to_string(), "416 framing: {}", x.summary());
        }
    }
}

/// RFC 9110 §14.1.1: a suffix-range of length 0 is not satisfiable (beyond the brief's list).
#[test]
fn zero_length_suffix_range_is_416() {
    let server = site().start();
    let x = get(&server, "/data.bin", &[("Range", "bytes=-0")]);
    assert_eq!(x.status(), 416, "{}", x.summary());
    assert_eq!(x.header("Content-Range"), Some(format!("bytes */{LEN}").as_str()), "{}", x.summary());
}

#[test]
fn malformed_ranges_are_ignored() {
    let server = site().start();
    for value in ["bytes=abc", "items=0-5", "bytes=5-1", "bytes=", "bytes=-", "bytes=0-5,x", "bytes 0-5"] {
        let x = get(&server, "/data.bin", &[("Range", value)]);
        assert_whole(&x, &data());
    }
}

#[test]
fn head_ignores_range() {
    let server = site().start();
    let x = fetch(&server, "HEAD", "/data.bin", &[("Range", "bytes=0-9")]);
    assert_eq!(x.status(), 200, "{}", x.summary());
    assert_eq!(x.header("Content-Length"), Some(LEN.to_string().as_str()), "{}", x.summary());
    assert_eq!(x.header("Content-Range"), None, "{}", x.summary());
    assert_no_body(&x);
}

struct Part {
    content_type: Option<String>,
    content_range: String,
    first: usize,
    last: usize,
    total: usize,
    bytes: Vec<u8>,
}

/// The boundary of `multipart/byteranges; boundary=B` (quoted or not).
fn boundary_of(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    if !params.next()?.trim().eq_ignore_ascii_case("multipart/byteranges") {
        return None;
    }
    params.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim().eq_ignore_ascii_case("boundary").then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// `bytes a-b/len` → (a, b, len).
fn parse_content_range(value: &str) -> Option<(usize, usize, usize)> {
    let rest = value.strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, total.parse().ok()?))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses a multipart/byteranges body (RFC 9110 §14.6, RFC 2046 §5.1.1) strictly: the body
/// starts with the first delimiter (a leading CRLF is allowed), each part's data is exactly
/// its Content-Range's length, and the body ends with the close delimiter and CRLF.
fn parse_multipart(body: &[u8], boundary: &str) -> Result<Vec<Part>, String> {
    let delim = format!("--{boundary}");
    let mut pos = if body.starts_with(b"\r\n") { 2 } else { 0 };
    if !body[pos..].starts_with(delim.as_bytes()) {
        return Err(format!("the body does not start with {delim:?}"));
    }
    pos += delim.len();
    let mut parts = Vec::new();
    loop {
        if body[pos..].starts_with(b"--") {
            pos += 2;
            return if &body[pos..] == b"\r\n" {
                Ok(parts)
            } else {
                Err(format!("after the close delimiter: {} (want exactly CRLF)", show(&body[pos..])))
            };
        }
        if !body[pos..].starts_with(b"\r\n") {
            return Err(format!("no CRLF after a delimiter at {pos}"));
        }
        pos += 2;
        let end = find(&body[pos..], b"\r\n\r\n").ok_or_else(|| format!("part headers without an end at {pos}"))?;
        let headers = String::from_utf8_lossy(&body[pos..pos + end]).into_owned();
        pos += end + 4;
        let mut content_type = None;
        let mut content_range = None;
        for line in headers.split("\r\n") {
            let (name, value) = line.split_once(':').ok_or_else(|| format!("bad part header line {line:?}"))?;
            if name.trim().eq_ignore_ascii_case("content-type") {
                content_type = Some(value.trim().to_owned());
            } else if name.trim().eq_ignore_ascii_case("content-range") {
                content_range = Some(value.trim().to_owned());
            }
        }
        let content_range = content_range.ok_or_else(|| format!("a part without Content-Range: {headers:?}"))?;
        let (first, last, total) =
            parse_content_range(&content_range).ok_or_else(|| format!("bad part Content-Range {content_range:?}"))?;
        if last < first {
            return Err(format!("part Content-Range {content_range:?} is backwards"));
        }
        let n = last - first + 1;
        let bytes = body.get(pos..pos + n).ok_or_else(|| format!("part {content_range:?} cut short"))?.to_vec();
        pos += n;
        let next = format!("\r\n{delim}");
        if !body[pos..].starts_with(next.as_bytes()) {
            return Err(format!("part {content_range:?} not followed by CRLF and the delimiter"));
        }
        pos += next.len();
        parts.push(Part { content_type, content_range, first, last, total, bytes });
    }
}

/// Checks a multipart/byteranges 206 for `want` ranges (inclusive) of `whole`.
#[track_caller]
fn assert_multipart(x: &Reply, whole: &[u8], file_type: &str, want: &[(usize, usize)]) {
    assert_eq!(x.status(), 206, "{}", x.summary());
    assert_eq!(x.header("Content-Range"), None, "a multipart 206 has no top-level Content-Range: {}", x.summary());
    let ct = x.header("Content-Type").unwrap_or_else(|| panic!("no Content-Type: {}", x.summary()));
    let boundary =
        boundary_of(ct).unwrap_or_else(|| panic!("not multipart/byteranges with a boundary: {}", x.summary()));
    assert_eq!(content_length(x), x.after_head.len() as u64, "Content-Length vs the body: {}", x.summary());
    let close = format!("--{boundary}--\r\n");
    assert!(x.after_head.ends_with(close.as_bytes()), "the body does not end with {close:?}: {}", x.summary());
    let parts = parse_multipart(&x.after_head, &boundary).unwrap_or_else(|e| panic!("{e}: {}", x.summary()));
    let got: Vec<(usize, usize)> = parts.iter().map(|p| (p.first, p.last)).collect();
    assert_eq!(got, want, "the parts' ranges: {}", x.summary());
    for p in &parts {
        assert_eq!(p.total, whole.len(), "part {:?}: {}", p.content_range, x.summary());
        assert_eq!(
            p.content_type.as_deref(),
            Some(file_type),
            "part {:?} Content-Type: {}",
            p.content_range,
            x.summary()
        );
        assert!(p.bytes == whole[p.first..=p.last], "part {:?}: wrong bytes: {}", p.content_range, x.summary());
    }
}

#[test]
fn several_ranges_are_multipart_byteranges() {
    let server = site().start();
    let whole = data();
    let file_type = get(&server, "/data.bin", &[]).header("Content-Type").expect("Content-Type").to_owned();
    let x = get(&server, "/data.bin", &[("Range", "bytes=0-4,10-14,-5")]);
    assert_multipart(&x, &whole, &file_type, &[(0, 4), (10, 14), (LEN - 5, LEN - 1)]);

    // A text file: the parts carry its Content-Type with the charset.
    let notes_type = get(&server, "/notes.txt", &[]).header("Content-Type").expect("Content-Type").to_owned();
    let x = get(&server, "/notes.txt", &[("Range", "bytes=0-0,2-3")]);
    assert_multipart(&x, NOTES.as_bytes(), &notes_type, &[(0, 0), (2, 3)]);

    // Exactly 16 ranges are still served.
    let sixteen: Vec<(usize, usize)> = (0..16).map(|i| (i * 10, i * 10 + 1)).collect();
    let value = format!("bytes={}", sixteen.iter().map(|(a, b)| format!("{a}-{b}")).collect::<Vec<_>>().join(","));
    let x = get(&server, "/data.bin", &[("Range", &value)]);
    assert_multipart(&x, &whole, &file_type, &sixteen);
}

#[test]
fn overlapping_or_too_many_ranges_get_the_whole_file() {
    let server = site().start();
    let whole = data();
    let seventeen = (0..17).map(|i| format!("{}-{}", i * 10, i * 10 + 1)).collect::<Vec<_>>().join(",");
    for value in ["bytes=0-10,5-15".to_owned(), "bytes=100-200,0-150".to_owned(), format!("bytes={seventeen}")] {
        let x = get(&server, "/data.bin", &[("Range", &value)]);
        assert_whole(&x, &whole);
    }
}

// ---------------------------------------------------------------------------------------------
// Directories
// ---------------------------------------------------------------------------------------------

#[test]
fn directory_without_slash_redirects_to_the_slash() {
    let server = site().start();
    for (path, location) in
        [("/dir", "/dir/"), ("/dir/sub", "/dir/sub/"), ("/noindex", "/noindex/"), ("/with%20space", "/with%20space/")]
    {
        let x = get(&server, path, &[]);
        assert_eq!(x.status(), 301, "{}", x.summary());
        assert_eq!(x.header("Location"), Some(location), "{}", x.summary());
    }
}

#[test]
fn directory_redirect_keeps_the_query() {
    let server = site().start();
    for (path, location) in [("/dir?x=1", "/dir/?x=1"), ("/dir/sub?a=b&c=%2F", "/dir/sub/?a=b&c=%2F")] {
        let x = get(&server, path, &[]);
        assert_eq!(x.status(), 301, "{}", x.summary());
        assert_eq!(x.header("Location"), Some(location), "{}", x.summary());
    }
}

#[test]
fn mtimes_an_http_date_cannot_show_are_clamped_and_the_server_lives_on() {
    let server = site().start();
    let old = server.docroot().join("old.txt");
    fs::write(&old, "from before 1970\n").expect("writing old.txt");
    set_mtime(&old, UNIX_EPOCH - Duration::from_secs(86_400));
    let x = get(&server, "/old.txt", &[]);
    assert_whole(&x, b"from before 1970\n");
    assert_eq!(x.header("Last-Modified"), Some("Thu, 01 Jan 1970 00:00:00 GMT"), "{}", x.summary());
    strong_etag(&x);
    // As far in the future as this file system stores (ext4 stops in 2446; past year 9999 is
    // clamped, which conditional.rs's unit test covers).
    let far = server.docroot().join("far.txt");
    fs::write(&far, "from the far future\n").expect("writing far.txt");
    set_mtime(&far, UNIX_EPOCH + Duration::from_secs(300_000_000_000));
    let x = get(&server, "/far.txt", &[]);
    assert_whole(&x, b"from the far future\n");
    let lm = x.header("Last-Modified").unwrap_or_else(|| panic!("no Last-Modified: {}", x.summary()));
    assert!(httpdate::parse_http_date(lm).is_ok(), "Last-Modified {lm:?} is not an HTTP date");
    assert_whole(&get(&server, "/notes.txt", &[]), NOTES.as_bytes());
    server.assert_alive();
}

#[test]
fn a_file_asked_for_with_a_trailing_slash_is_404() {
    let server = site().start();
    // `/notes.txt/` is not the file: relative links on it would resolve under `/notes.txt/`
    // (nginx answers 404 too, from open(2)'s ENOTDIR).
    let x = get(&server, "/notes.txt/", &[]);
    assert_eq!(x.status(), 404, "{}", x.summary());
    assert_whole(&get(&server, "/notes.txt", &[]), NOTES.as_bytes());
}

#[test]
fn directory_with_index_html_serves_it() {
    let server = site().start();
    for (path, body) in [
        ("/", INDEX),
        ("/dir/", DIR_INDEX),
        ("/dir/sub/", SUB_INDEX),
        ("/with%20space/", SPACE_INDEX),
        ("/dir/?q=1", DIR_INDEX),
    ] {
        let x = get(&server, path, &[]);
        assert_whole(&x, body.as_bytes());
        let ct = x.header("Content-Type").unwrap_or_default().to_ascii_lowercase();
        assert!(ct.starts_with("text/html"), "{}", x.summary());
        strong_etag(&x);
    }
}

#[test]
fn directory_without_index_html_is_404_without_dir_listing() {
    let server = site().start();
    let x = get(&server, "/noindex/", &[]);
    assert_eq!(x.status(), 404, "{}", x.summary());
    assert_eq!(x.after_head, NOT_FOUND_PAGE.as_bytes(), "the body must be the docroot's 404.html: {}", x.summary());
}

#[test]
fn every_404_body_is_the_404_page() {
    let server = site().start();
    for path in ["/missing.txt", "/dir/missing.html", "/missing/dir/", "/noindex/", "/app.js.zst"] {
        let x = get(&server, path, &[]);
        assert_eq!(x.status(), 404, "{}", x.summary());
        assert_eq!(x.after_head, NOT_FOUND_PAGE.as_bytes(), "the body must be the docroot's 404.html: {}", x.summary());
        let ct = x.header("Content-Type").unwrap_or_default().to_ascii_lowercase();
        assert!(ct.starts_with("text/html"), "{}", x.summary());
        let h = fetch(&server, "HEAD", path, &[]);
        assert_eq!(h.status(), 404, "{}", h.summary());
        assert_no_body(&h);
    }
}

/// `href` values in an HTML page (double-, single- or un-quoted), as written.
fn hrefs(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase(); // same byte offsets: only ASCII letters change
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(off) = lower[at..].find("href=") {
        let start = at + off + "href=".len();
        let (value_start, end) = match html.as_bytes().get(start) {
            Some(&q @ (b'"' | b'\'')) => {
                let end = html[start + 1..].find(q as char).map_or(html.len(), |e| start + 1 + e);
                (start + 1, end)
            }
            _ => {
                let end =
                    html[start..].find(|c: char| c.is_ascii_whitespace() || c == '>').map_or(html.len(), |e| start + e);
                (start, end)
            }
        };
        out.push(html[value_start..end].to_owned());
        at = end;
    }
    out
}

fn html_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&#x22;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[test]
fn dir_listing_lists_escaped_entries_without_dotfiles() {
    let entries: [(&str, &str); 6] = [
        ("a.txt", "entry a\n"),
        ("b c.txt", "entry with a space\n"),
        ("<tag>&.txt", "entry with markup characters\n"),
        ("q\"uote'.txt", "entry with quotes\n"),
        ("ünï.txt", "entry with non-ASCII letters\n"),
        ("sub/inner.txt", "a file in a subdirectory\n"),
    ];
    let mut builder = site().args(["--dir-listing"]);
    for (name, body) in entries {
        builder = builder.docroot_file(&format!("list/{name}"), body);
    }
    let server =
        builder.docroot_file("list/.dotfile", "hidden\n").docroot_file("list/.dotdir/x.txt", "hidden\n").start();

    let x = get(&server, "/list", &[]);
    assert_eq!((x.status(), x.header("Location")), (301, Some("/list/")), "{}", x.summary());
    let x = get(&server, "/list/", &[]);
    assert_eq!(x.status(), 200, "{}", x.summary());
    let ct = x.header("Content-Type").unwrap_or_default().to_ascii_lowercase();
    assert!(ct.starts_with("text/html"), "{}", x.summary());
    let html = x.r.text();
    assert!(!html.contains(".dotfile") && !html.contains(".dotdir"), "dotfiles listed: {}", x.summary());
    assert!(!html.contains("<tag>"), "a name was not HTML-escaped: {}", x.summary());
    assert!(
        html.contains("&lt;tag&gt;&amp;.txt"),
        "the escaped name `&lt;tag&gt;&amp;.txt` is missing: {}",
        x.summary()
    );

    let mut listed = BTreeSet::new();
    for raw in hrefs(&html) {
        assert!(
            !raw.contains([' ', '<', '>', '"']) && raw.is_ascii(),
            "href {raw:?} is not percent-encoded: {}",
            x.summary()
        );
        let href = html_unescape(&raw);
        let href = href.split(['?', '#']).next().unwrap_or_default();
        if href.is_empty() || href.contains("://") {
            continue;
        }
        let path = if href.starts_with('/') { href.to_owned() } else { format!("/list/{href}") };
        let Some(rel) = path.strip_prefix("/list/") else { continue }; // a link up or elsewhere
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(rel).collect();
        let decoded = String::from_utf8_lossy(&bytes).into_owned();
        if decoded.is_empty() || decoded.starts_with("..") || decoded == "." || decoded == "./" {
            continue;
        }
        assert!(!decoded.starts_with('.'), "a dotfile is linked: {raw:?}: {}", x.summary());
        listed.insert(decoded.trim_end_matches('/').to_owned());
        // Every link works.
        let y = get(&server, &path, &[]);
        assert_eq!(y.status(), 200, "following {raw:?} from the listing: {}", y.summary());
    }
    for (name, body) in entries {
        let shown = name.split('/').next().expect("a first segment");
        assert!(listed.contains(shown), "no link to {shown:?} in the listing; links: {listed:?}: {}", x.summary());
        let href = format!("/list/{}", percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC))
            .replace("%2F", "/");
        assert_whole(&get(&server, &href, &[]), body.as_bytes());
    }

    // A directory with index.html still serves it; a subdirectory without one is listed.
    assert_whole(&get(&server, "/dir/", &[]), DIR_INDEX.as_bytes());
    let x = get(&server, "/list/sub/", &[]);
    assert_eq!(x.status(), 200, "{}", x.summary());
    assert!(x.r.text().contains("inner.txt"), "{}", x.summary());
}

/// Beyond the brief, which says nothing of file names that are not UTF-8: the listing must
/// still work, and an entry for such a name must either be left out or link to that file
/// (percent-encoding its bytes), never to another name (a lossy U+FFFD, say).
#[test]
fn dir_listing_with_a_name_that_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let server = site()
        .args(["--dir-listing"])
        .docroot_file("list/fine.txt", "a UTF-8 name\n")
        .before_start(|root| {
            let name = std::ffi::OsStr::from_bytes(b"bad-\xff-name.txt");
            fs::write(root.join("docroot/list").join(name), "not UTF-8\n").expect("writing a non-UTF-8 name");
        })
        .start();
    let x = get(&server, "/list/", &[]);
    assert_eq!(x.status(), 200, "{}", x.summary());
    let html = x.r.text();
    assert!(html.contains("fine.txt"), "{}", x.summary());
    for raw in hrefs(&html).into_iter().filter(|h| h.contains("bad-")) {
        let href = html_unescape(&raw);
        let path = if href.starts_with('/') { href } else { format!("/list/{href}") };
        let y = get(&server, &path, &[]);
        assert!(
            y.status() == 200 && y.after_head == b"not UTF-8\n",
            "the listing links the non-UTF-8 name as {raw:?}, which does not serve that file: {}",
            y.summary()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Precompressed siblings
// ---------------------------------------------------------------------------------------------

/// Which variant of a file a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Identity,
    Gzip,
    Br,
}

/// Checks that `x` is the `variant` of `/app.js` (or `/only.css`): body, Content-Encoding,
/// Vary, Content-Type of the plain file, Content-Length of the variant.
#[track_caller]
fn assert_variant(x: &Reply, variant: Variant, identity: &Reply, bodies: [&[u8]; 3]) {
    let (body, ce) = match variant {
        Variant::Identity => (bodies[0], None),
        Variant::Gzip => (bodies[1], Some("gzip")),
        Variant::Br => (bodies[2], Some("br")),
    };
    assert_whole(x, body);
    assert_eq!(x.header("Content-Encoding"), ce, "want the {variant:?} variant: {}", x.summary());
    assert!(x.r.has_token("Vary", "Accept-Encoding"), "no Vary: Accept-Encoding: {}", x.summary());
    assert_eq!(x.header("Content-Type"), identity.header("Content-Type"), "the plain file's type: {}", x.summary());
    strong_etag(x);
}

#[test]
fn gzip_sibling_is_served_with_its_own_etag() {
    let server = site().start();
    let bodies: [&[u8]; 3] = [APP_JS.as_bytes(), APP_JS_GZ, APP_JS_BR];
    assert!(
        bodies[0].len() != bodies[1].len() && bodies[1].len() != bodies[2].len() && bodies[0].len() != bodies[2].len()
    );
    let identity = get(&server, "/app.js", &[]);
    assert_variant(&identity, Variant::Identity, &identity, bodies);
    let ct = identity.header("Content-Type").unwrap_or_default();
    assert!(ct.contains("javascript"), "{}", identity.summary());
    let gz = get(&server, "/app.js", &[("Accept-Encoding", "gzip")]);
    assert_variant(&gz, Variant::Gzip, &identity, bodies);
    let br = get(&server, "/app.js", &[("Accept-Encoding", "br")]);
    assert_variant(&br, Variant::Br, &identity, bodies);
    let tags = [strong_etag(&identity), strong_etag(&gz), strong_etag(&br)];
    assert!(
        tags[0] != tags[1] && tags[1] != tags[2] && tags[0] != tags[2],
        "each variant needs its own ETag: {tags:?}"
    );
    assert_eq!(strong_etag(&get(&server, "/app.js", &[("Accept-Encoding", "gzip")])), tags[1], "stable gzip ETag");
}

#[test]
fn accept_encoding_negotiation() {
    let server = site().start();
    let app: [&[u8]; 3] = [APP_JS.as_bytes(), APP_JS_GZ, APP_JS_BR];
    let css: [&[u8]; 3] = [ONLY_CSS.as_bytes(), ONLY_CSS_GZ, b""];
    let app_identity = get(&server, "/app.js", &[]);
    let css_identity = get(&server, "/only.css", &[]);
    use Variant::{Br, Gzip, Identity};
    let cases: [(&str, Option<&str>, Variant); 15] = [
        ("/app.js", Some("gzip"), Gzip),
        ("/app.js", Some("gzip, br"), Br),
        ("/app.js", Some("br, gzip"), Br),
        ("/app.js", Some("br;q=0.5, gzip;q=0.9"), Gzip),
        ("/app.js", Some("br;q=0.5, gzip"), Gzip),
        ("/app.js", Some("br;q=0, gzip;q=0"), Identity),
        ("/app.js", Some("*"), Br),
        ("/app.js", Some("identity"), Identity),
        ("/app.js", Some("deflate"), Identity),
        ("/app.js", None, Identity),
        ("/only.css", Some("gzip, br"), Gzip),
        ("/only.css", Some("br"), Identity),
        ("/only.css", Some("*"), Gzip),
        ("/only.css", Some("identity"), Identity),
        ("/only.css", None, Identity),
    ];
    for (path, ae, want) in cases {
        let fields: Vec<(&str, &str)> = ae.map(|v| ("Accept-Encoding", v)).into_iter().collect();
        let x = get(&server, path, &fields);
        let (identity, bodies) = if path == "/app.js" { (&app_identity, app) } else { (&css_identity, css) };
        assert_variant(&x, want, identity, bodies);
    }
}

/// RFC 9110 §8.4.1 (codings are case-insensitive) and §12.5.3 (`*` matches the codings not
/// listed): beyond the brief's list.
#[test]
fn accept_encoding_rfc_details() {
    let server = site().start();
    let app: [&[u8]; 3] = [APP_JS.as_bytes(), APP_JS_GZ, APP_JS_BR];
    let identity = get(&server, "/app.js", &[]);
    for (ae, want) in [("GZip", Variant::Gzip), ("br;q=0, *", Variant::Gzip), ("gzip;q=0.8, br;q=0.7", Variant::Gzip)] {
        let x = get(&server, "/app.js", &[("Accept-Encoding", ae)]);
        assert_variant(&x, want, &identity, app);
    }
}

#[test]
fn range_of_a_precompressed_variant() {
    let server = site().start();
    let x = get(&server, "/app.js", &[("Range", "bytes=0-3"), ("Accept-Encoding", "br")]);
    assert_partial(&x, APP_JS_BR, 0, 3);
    assert_eq!(x.header("Content-Encoding"), Some("br"), "{}", x.summary());
    let x = get(&server, "/app.js", &[("Range", "bytes=-4"), ("Accept-Encoding", "gzip")]);
    assert_partial(&x, APP_JS_GZ, APP_JS_GZ.len() - 4, APP_JS_GZ.len() - 1);
    assert_eq!(x.header("Content-Encoding"), Some("gzip"), "{}", x.summary());
}

#[test]
fn precompressed_head_and_not_modified() {
    let server = site().start();
    let gz = get(&server, "/app.js", &[("Accept-Encoding", "gzip")]);
    let gz_tag = strong_etag(&gz);
    let identity_tag = strong_etag(&get(&server, "/app.js", &[]));

    let h = fetch(&server, "HEAD", "/app.js", &[("Accept-Encoding", "gzip")]);
    assert_eq!(h.status(), 200, "{}", h.summary());
    assert_no_body(&h);
    assert_eq!(h.header("Content-Encoding"), Some("gzip"), "{}", h.summary());
    assert_eq!(h.header("Content-Length"), Some(APP_JS_GZ.len().to_string().as_str()), "{}", h.summary());
    assert_eq!(h.header("ETag"), Some(gz_tag.as_str()), "{}", h.summary());

    let x = get(&server, "/app.js", &[("Accept-Encoding", "gzip"), ("If-None-Match", &gz_tag)]);
    assert_eq!(x.status(), 304, "{}", x.summary());
    assert_no_body(&x);
    assert_eq!(x.header("ETag"), Some(gz_tag.as_str()), "{}", x.summary());
    assert!(x.r.has_token("Vary", "Accept-Encoding"), "a 304 for a file with siblings needs Vary: {}", x.summary());

    // The identity ETag does not validate the gzip variant.
    let x = get(&server, "/app.js", &[("Accept-Encoding", "gzip"), ("If-None-Match", &identity_tag)]);
    assert_whole(&x, APP_JS_GZ);
    assert_eq!(x.header("Content-Encoding"), Some("gzip"), "{}", x.summary());
}

#[test]
fn file_without_siblings_has_no_vary() {
    let server = site().start();
    for ae in [None, Some("gzip, br"), Some("*")] {
        let fields: Vec<(&str, &str)> = ae.map(|v| ("Accept-Encoding", v)).into_iter().collect();
        let x = get(&server, "/notes.txt", &fields);
        assert_whole(&x, NOTES.as_bytes());
        assert_eq!(x.header("Vary"), None, "{}", x.summary());
        assert_eq!(x.header("Content-Encoding"), None, "{}", x.summary());
    }
}

#[test]
fn compressed_file_requested_by_name_is_served_as_is() {
    let server = site().start();
    for (path, body) in [("/app.js.gz", APP_JS_GZ), ("/app.js.br", APP_JS_BR), ("/only.css.gz", ONLY_CSS_GZ)] {
        for ae in [None, Some("gzip, br")] {
            let fields: Vec<(&str, &str)> = ae.map(|v| ("Accept-Encoding", v)).into_iter().collect();
            let x = get(&server, path, &fields);
            assert_whole(&x, body);
            assert_eq!(x.header("Content-Encoding"), None, "{}", x.summary());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Large files
// ---------------------------------------------------------------------------------------------

fn vm_rss_kib(pid: u32) -> u64 {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

fn sparse_file(path: &Path, len: u64) {
    let file = fs::File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    file.set_len(len).unwrap_or_else(|e| panic!("set_len on {}: {e}", path.display()));
}

/// Reads one GET of `path` to the end of a `Connection: close` response; returns
/// (Content-Length, body bytes received, the first 64 body bytes).
fn download(addr: std::net::SocketAddr, path: &str) -> Result<(u64, u64, Vec<u8>), String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    (&stream).write_all(&request_with("GET", path, &[], true)).map_err(|e| format!("send: {e}"))?;
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    let head = read_head(&mut reader, &mut Vec::new()).map_err(|e| format!("head: {e}"))?;
    if head.status != 200 {
        return Err(format!("status {}", head.status_line));
    }
    let cl = head
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .ok_or("no Content-Length")?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    let mut first = Vec::new();
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if first.len() < 64 {
                    first.extend_from_slice(&buf[..n.min(64 - first.len())]);
                }
                got += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("after {got} body bytes: {e}")),
        }
    }
    Ok((cl, got, first))
}

#[test]
fn a_sparse_gigabyte_to_20_clients_in_bounded_memory() {
    const GIB: u64 = 1 << 30;
    const CLIENTS: usize = 20;
    let server = site()
        .before_start(|root| {
            sparse_file(&root.join("docroot/huge.bin"), GIB);
            sparse_file(&root.join("docroot/warm.bin"), 4 << 20);
        })
        .start();
    // Warm up: a small file, a multi-megabyte one, a HEAD and a range of the huge one.
    assert_whole(&get(&server, "/notes.txt", &[]), NOTES.as_bytes());
    let (cl, got, _) = download(server.addr(), "/warm.bin").unwrap_or_else(|e| panic!("warm.bin: {e}"));
    assert_eq!((cl, got), (4 << 20, 4 << 20));
    let h = fetch(&server, "HEAD", "/huge.bin", &[]);
    assert_eq!(content_length(&h), GIB, "{}", h.summary());
    let pid = server.pid();
    let before = vm_rss_kib(pid);

    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (addr, done) = (server.addr(), Arc::clone(&done));
            thread::spawn(move || {
                let result = download(addr, "/huge.bin");
                done.fetch_add(1, Ordering::SeqCst);
                result
            })
        })
        .collect();
    let (mut peak, mut samples) = (before, 0u32);
    while done.load(Ordering::SeqCst) < CLIENTS {
        if started.elapsed() > Duration::from_secs(300) {
            panic!("20 GiB not transferred within 300 s{}", server.context());
        }
        peak = peak.max(vm_rss_kib(pid));
        samples += 1;
        thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    let after = vm_rss_kib(pid);
    for (i, c) in clients.into_iter().enumerate() {
        let (cl, got, first) =
            c.join().expect("client thread").unwrap_or_else(|e| panic!("client #{i}: {e}{}", server.context()));
        assert_eq!(cl, GIB, "client #{i}: Content-Length");
        assert_eq!(got, GIB, "client #{i}: body bytes received");
        assert!(first.iter().all(|&b| b == 0), "client #{i}: a sparse file reads as zeros");
    }
    let growth = peak.saturating_sub(before);
    eprintln!(
        "1 GiB x {CLIENTS} clients in {took:?} ({:.0} MiB/s); VmRSS before {before} KiB, peak {peak} KiB \
         (+{growth} KiB) over {samples} samples, after {after} KiB",
        (CLIENTS as f64 * 1024.0) / took.as_secs_f64()
    );
    assert!(samples >= 3, "too few RSS samples ({samples}) to say anything");
    assert!(growth < 8 * 1024, "RSS grew by {growth} KiB (> 8 MiB) while serving 20 x 1 GiB{}", server.context());
}

/// Whether the server still holds an open, writable connection from `client_port` to its
/// `server_port`: a line in /proc/net/tcp in state ESTABLISHED owned by a file descriptor
/// (inode not 0). Closing or shutting down the socket ends either.
fn server_side_open(server_port: u16, client_port: u16) -> bool {
    let table = fs::read_to_string("/proc/net/tcp").expect("reading /proc/net/tcp");
    let port = |field: &str| field.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() > 9 && port(f[1]) == Some(server_port) && port(f[2]) == Some(client_port) && f[3] == "01" && f[9] != "0"
    })
}

#[test]
fn a_stalled_reader_delays_nobody_and_is_closed_by_the_send_timeout() {
    const BIG: u64 = 64 << 20;
    let server = site()
        .before_start(|root| sparse_file(&root.join("docroot/big.bin"), BIG))
        .args(["--send-timeout", "2"])
        .start();
    let mut stalled = server.connect();
    stalled.send(&request_with("GET", "/big.bin", &[], false));
    let sent = Instant::now();
    let head =
        stalled.read_head().unwrap_or_else(|e| panic!("the stalled client's response head: {e}{}", server.context()));
    assert_eq!(head.status, 200, "{}", head.status_line);
    let (server_port, client_port) = (server.addr().port(), stalled.local_addr().port());
    assert!(
        server_side_open(server_port, client_port),
        "the server's side of the stalled connection is not in /proc/net/tcp"
    );

    for attempt in 0..5 {
        let started = Instant::now();
        let x = get(&server, "/", &[]);
        let took = started.elapsed();
        assert_whole(&x, INDEX.as_bytes());
        assert!(
            took < Duration::from_secs(1),
            "attempt {attempt}: GET / took {took:?} beside a stalled reader{}",
            server.context()
        );
    }

    let closed_after = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        (!server_side_open(server_port, client_port)).then(|| sent.elapsed())
    })
    .unwrap_or_else(|| {
        panic!("the server kept the stalled connection for 10 s with --send-timeout 2{}", server.context())
    });
    eprintln!("stalled reader: closed by the server {closed_after:?} after its request");
    assert!(closed_after >= Duration::from_millis(1900), "closed after {closed_after:?}: before the 2 s send timeout");
    assert!(closed_after <= Duration::from_secs(5), "closed after {closed_after:?}: want within ~5 s of the request");

    // Reading now gets what was in flight, then the end: never the whole body.
    let mut got = 0u64;
    let ended = loop {
        match stalled.read_some(256 * 1024) {
            Ok(b) if b.is_empty() => break "EOF",
            Ok(b) => got += b.len() as u64,
            Err(e) if support::is_closed_error(&e) => break "reset",
            Err(e) => panic!("reading the stalled connection after {got} bytes: {e}{}", server.context()),
        }
    };
    eprintln!("stalled reader: read {got} body bytes, then {ended}");
    assert!(got < BIG, "the stalled client got the whole body ({got} bytes) although it was closed");
    assert_whole(&get(&server, "/notes.txt", &[]), NOTES.as_bytes());
}
