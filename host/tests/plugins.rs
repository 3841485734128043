//! Plugins: routing (`/NAME.py`, `/NAME.py/rest`), the environ a plugin sees (through the
//! echo plugin), request bodies, streamed responses, and the example plugins' answers.

mod support;

use std::thread;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use serde_json::{Value, json};
use support::{Server, dechunk, parse_response, raw_until_close, request_bytes, show, split_head};

fn b64(doc: &Value) -> Vec<u8> {
    let text = doc["body_b64"].as_str().unwrap_or_else(|| panic!("no body_b64 in {doc}"));
    base64::engine::general_purpose::STANDARD.decode(text).unwrap_or_else(|e| panic!("bad base64 {text:?}: {e}"))
}

/// The echo document's `headers`, keeping only the names in `names`, as `[name, value]`s.
fn headers_named(doc: &Value, names: &[&str]) -> Vec<Value> {
    doc["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("no headers array in {doc}"))
        .iter()
        .filter(|pair| pair[0].as_str().is_some_and(|n| names.contains(&n)))
        .cloned()
        .collect()
}

#[test]
fn hello_answers_hello_world() {
    let server = Server::builder().plugins(&["hello"]).start();
    let r = server.get("/hello.py");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{}", r.summary());
    assert_eq!(r.text(), "Hello, world!\n");
    assert_eq!(r.header("Content-Length"), Some("14"), "{}", r.summary());
    assert!(r.header("Content-Type").is_some_and(|v| v.starts_with("text/plain")), "{}", r.summary());
}

#[test]
fn ctime_answers_the_current_time_as_an_imf_fixdate() {
    let server = Server::builder().plugins(&["ctime"]).start();
    let before = SystemTime::now();
    let r = server.get("/ctime.py");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{}", r.summary());
    assert!(r.header("Content-Type").is_some_and(|v| v.starts_with("text/plain")), "{}", r.summary());
    let text = r.text();
    let date = text.trim_end_matches('\n');
    let parsed = httpdate::parse_http_date(date).unwrap_or_else(|e| panic!("{date:?} is not an HTTP date: {e}"));
    assert_eq!(httpdate::fmt_http_date(parsed), date, "not in IMF-fixdate form");
    let skew = match parsed.duration_since(before) {
        Ok(ahead) => ahead,
        Err(behind) => behind.duration(),
    };
    assert!(skew < Duration::from_secs(5), "ctime said {date}, {skew:?} away from now");
}

#[test]
fn echo_reports_the_parsed_environ() {
    let server = Server::builder().plugins(&["echo"]).start();
    let mut conn = server.connect();
    conn.send(
        b"GET /echo.py/a%20b?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: 1\r\nUser-Agent: portico-tests\r\nX-A: 2\r\n\
          Connection: close\r\n\r\n",
    );
    let r = conn.read_response();
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{}", r.summary());
    assert!(r.header("Content-Type").is_some_and(|v| v.starts_with("application/json")), "{}", r.summary());
    let doc = r.json();
    assert_eq!(doc["method"], "GET", "{doc}");
    assert_eq!(doc["script_name"], "/echo.py", "{doc}");
    assert_eq!(doc["path_info"], "/a b", "{doc}");
    assert_eq!(doc["query_string"], "x=1", "{doc}");
    assert_eq!(doc["protocol"], "HTTP/1.1", "{doc}");
    assert_eq!(doc["remote_addr"], "127.0.0.1", "{doc}");
    assert_eq!(doc["remote_port"], conn.local_addr().port(), "{doc}");
    assert_eq!(doc["server_port"], server.addr().port(), "{doc}");
    assert_eq!(doc["url_scheme"], "http", "{doc}");
    assert_eq!(doc["content_length"], Value::Null, "{doc}");
    assert_eq!(doc["body_b64"], "", "{doc}");
    assert_eq!(
        headers_named(&doc, &["host", "x-a", "user-agent"]),
        vec![
            json!(["host", "127.0.0.1"]),
            json!(["x-a", "1"]),
            json!(["user-agent", "portico-tests"]),
            json!(["x-a", "2"])
        ],
        "headers in order with repeats: {doc}"
    );
}

#[test]
fn echo_script_name_path_info_and_query_string_split() {
    let server = Server::builder().plugins(&["echo"]).start();
    let cases = [
        ("/echo.py", "", ""),
        ("/echo.py/", "/", ""),
        ("/echo.py?", "", ""),
        ("/echo.py/a%2Fb", "/a/b", ""),
        ("/echo.py/x/y?a=%20b+c&d", "/x/y", "a=%20b+c&d"),
        // PATH_INFO is decoded bytes; echo shows each byte as one char (ISO-8859-1).
        ("/echo.py/caf%C3%A9", "/caf\u{c3}\u{a9}", ""),
    ];
    for (target, path_info, query) in cases {
        let r = server.get(target);
        assert_eq!(r.status_line, "HTTP/1.1 200 OK", "GET {target}: {}", r.summary());
        let doc = r.json();
        assert_eq!(doc["script_name"], "/echo.py", "GET {target}: {doc}");
        assert_eq!(doc["path_info"], path_info, "GET {target}: {doc}");
        assert_eq!(doc["query_string"], query, "GET {target}: {doc}");
    }
}

#[test]
fn echo_reads_a_content_length_body() {
    let server = Server::builder().plugins(&["echo"]).start();
    let body: Vec<u8> = (0..4).flat_map(|_| 0..=255u8).collect();
    let mut request = format!(
        "POST /echo.py/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let r = server.request(&request);
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{}", r.summary());
    let doc = r.json();
    assert_eq!(doc["method"], "POST", "{doc}");
    assert_eq!(doc["content_length"], body.len(), "{doc}");
    assert_eq!(doc["content_type"], "application/octet-stream", "{doc}");
    assert!(b64(&doc) == body, "body_b64 does not decode to the {} bytes sent: {doc}", body.len());
}

#[test]
fn echo_reads_a_chunked_body() {
    let server = Server::builder().plugins(&["echo"]).start();
    let request =
        b"POST /echo.py HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
        6\r\nhello \r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n1\r\n!\r\n0\r\n\r\n";
    let r = server.request(request);
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{}", r.summary());
    let doc = r.json();
    assert_eq!(doc["content_length"], Value::Null, "a chunked body has no CONTENT_LENGTH: {doc}");
    assert_eq!(String::from_utf8_lossy(&b64(&doc)), "hello abcdefghijklmnopqrstuvwxyz!", "{doc}");
}

#[test]
fn chunked_body_with_extensions_and_trailers() {
    let server = Server::builder().plugins(&["echo"]).start();
    // RFC 9112 §7.1.1: unknown chunk extensions are ignored; §7.1.2: trailers are not headers.
    let request =
        b"POST /echo.py HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
        5;name=value\r\nfirst\r\n6\r\nsecond\r\n0\r\nX-Trailer: t\r\n\r\n";
    let r = server.request(request);
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{}", r.summary());
    let doc = r.json();
    assert_eq!(String::from_utf8_lossy(&b64(&doc)), "firstsecond", "{doc}");
    assert!(headers_named(&doc, &["x-trailer"]).is_empty(), "trailer fields are not request headers: {doc}");
}

#[test]
fn fixture_reads_a_one_mebibyte_body() {
    let server = Server::builder().plugins(&["fixture"]).args(["--max-body", "67108864"]).start();
    let body = vec![b'z'; 1 << 20];
    let mut request = format!(
        "POST /fixture.py/body-len HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let r = server.request(&request);
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{}", r.summary());
    assert_eq!(r.text(), "1048576\n");
}

#[test]
fn fixture_big_response_has_its_exact_length() {
    let server = Server::builder().plugins(&["fixture"]).start();
    let r = server.get("/fixture.py/big?bytes=3000000");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{}", show(&r.raw[..r.raw.len().min(300)]));
    assert_eq!(r.header("Content-Length"), Some("3000000"));
    assert!(r.complete && r.body.len() == 3_000_000, "got {} bytes", r.body.len());
    assert!(r.body.iter().all(|&b| b == b'x'), "body should be all 'x'");
}

#[test]
fn unknown_plugin_is_404() {
    let server = Server::start();
    for path in ["/nope.py", "/nope.py/deeper?x=1", "/hello.py.py"] {
        let r = server.get(path);
        assert_eq!(r.status_line, "HTTP/1.1 404 Not Found", "GET {path}: {}", r.summary());
    }
}

#[test]
fn lib_prefixed_plugin_file_is_routable_by_name() {
    let server = Server::builder().plugins(&["hello"]).plugin_file("libstream.so", support::plugin("stream")).start();
    let r = server.get("/stream.py?n=2");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "plugins/libstream.so should serve /stream.py: {}", r.summary());
    assert_eq!(r.text(), "chunk 0\nchunk 1\n");
}

#[test]
fn stream_is_chunked_on_http11() {
    let server = Server::builder().plugins(&["stream"]).start();
    let reply = raw_until_close(server.addr(), &request_bytes("GET", "/stream.py?n=5", true), Duration::from_secs(10));
    assert!(reply.closed, "Connection: close was not honoured: {}", show(&reply.bytes));
    let (head, body) = split_head(&reply.bytes);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\ntransfer-encoding: chunked"), "no Transfer-Encoding: chunked in {head:?}");
    assert!(!lower.contains("\r\ncontent-length:"), "a chunked response must not carry Content-Length: {head:?}");
    assert!(body.ends_with(b"0\r\n\r\n"), "no last chunk: {}", show(body));
    let decoded = dechunk(body).unwrap_or_else(|| panic!("malformed chunked body {}", show(body)));
    assert_eq!(String::from_utf8_lossy(&decoded), "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n");
    let r = parse_response(&reply.bytes, false);
    assert!(r.chunked && r.complete);
}

#[test]
fn stream_on_http10_is_close_delimited() {
    let server = Server::builder().plugins(&["stream"]).start();
    let reply = raw_until_close(server.addr(), b"GET /stream.py?n=5 HTTP/1.0\r\n\r\n", Duration::from_secs(10));
    assert!(reply.closed, "an HTTP/1.0 streamed body must end at close: {}", show(&reply.bytes));
    let (head, body) = split_head(&reply.bytes);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") || head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding"), "no chunked coding on HTTP/1.0: {head:?}");
    assert_eq!(String::from_utf8_lossy(body), "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n");
}

#[test]
fn head_on_a_plugin_sends_no_body() {
    let server = Server::builder().plugins(&["hello"]).start();
    let reply = raw_until_close(server.addr(), &request_bytes("HEAD", "/hello.py", true), Duration::from_secs(5));
    let (head, rest) = split_head(&reply.bytes);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(rest.is_empty(), "HEAD response carried a body: {}", show(&reply.bytes));
}

#[test]
fn wsgi_errors_reach_the_server_log() {
    let server = Server::builder().plugins(&["fixture"]).start();
    let r = server.get("/fixture.py/log");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{}", r.summary());
    assert_eq!(r.text(), "logged\n");
    server.wait_for_log("fixture says hello to the error log", Duration::from_secs(5));
}

#[test]
fn a_plugin_message_cannot_forge_a_log_line() {
    let server = Server::builder().plugins(&["fixture"]).start();
    let forged = "x%0A2026-11-29T00:00:00Z%20ERROR%20portico:%20FAKE%0D%1B[31m";
    assert_eq!(server.get(&format!("/fixture.py/log?msg={forged}")).status, 200);
    let line = server.wait_for_log("2026-11-29T00:00:00Z ERROR portico: FAKE", Duration::from_secs(5));
    assert!(line.contains("x\\n2026-11-29T00:00:00Z ERROR portico: FAKE\\r\\x1B[31m"), "{line:?}");
    let text = server.stderr_text();
    assert!(
        !text.lines().any(|l| l.starts_with("2026-11-29T00:00:00Z ERROR portico: FAKE")),
        "a forged line reached the log:\n{text}"
    );
}

#[test]
fn plugin_requests_run_concurrently_on_the_workers() {
    let server = Server::builder().plugins(&["fixture"]).args(["--threads", "4"]).start();
    let addr = server.addr();
    let started = Instant::now();
    let handles: Vec<_> =
        (0..4).map(|_| thread::spawn(move || support::try_get(addr, "/fixture.py/slow?ms=1000"))).collect();
    for h in handles {
        let r = h.join().expect("client thread").unwrap_or_else(|e| panic!("{e}{}", server.context()));
        assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{}", r.summary());
        assert_eq!(r.text(), "slow done\n");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(3000),
        "4 requests sleeping 1 s each took {elapsed:?} with --threads 4: they did not run in parallel"
    );
}
