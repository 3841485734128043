//! Plugin faults, through the fixture plugin: panics, invalid statuses and fields, a missing
//! or doubled `start_response`, bodies that disagree with their `Content-Length`, a stream
//! that panics after the head was sent. Each must be contained to its own response (a 500, or
//! a closed connection once the head is out), be logged with the plugin's name, and leave the
//! server serving.

mod support;

use std::time::Duration;

use support::{Server, raw_until_close, request_bytes, show, split_head};

fn fixture_server() -> Server {
    Server::builder().plugins(&["hello", "fixture"]).start()
}

/// `GET /hello.py` on a new connection answers 200.
#[track_caller]
fn assert_still_serving(server: &Server) {
    let r = server.get("/hello.py");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "after the fault: {}{}", r.summary(), server.context());
    assert_eq!(r.text(), "Hello, world!\n");
}

/// A log line after `mark` names the fixture plugin (other than the startup `loaded plugin`).
#[track_caller]
fn assert_fault_logged(server: &Server, mark: usize) {
    server.wait_for_line_where(mark, "naming `fixture` (the faulty plugin)", Duration::from_secs(5), |line| {
        line.contains("fixture") && !line.contains("loaded plugin")
    });
}

/// Requests `/fixture.py{path}` (keep-alive), expects exactly a 500, a log line naming the
/// fixture, and a working server afterwards. Returns the response.
#[track_caller]
fn check_500(path: &str) -> (Server, support::Response) {
    let server = fixture_server();
    let mark = server.log_mark();
    let mut conn = server.connect();
    let target = format!("/fixture.py{path}");
    conn.send(&request_bytes("GET", &target, false));
    let r = conn
        .try_read_response(false)
        .unwrap_or_else(|e| panic!("GET {target}: no complete response: {e}{}", server.context()));
    assert_eq!(
        r.status_line,
        "HTTP/1.1 500 Internal Server Error",
        "GET {target}: {}{}",
        r.summary(),
        server.context()
    );
    assert!(r.complete, "GET {target}: the 500 was cut short: {}", r.summary());
    assert_fault_logged(&server, mark);
    assert_still_serving(&server);
    (server, r)
}

#[test]
fn plugin_panic_is_a_500_and_logged_with_its_message() {
    let (server, r) = check_500("/panic");
    assert!(!r.text().contains("fixture asked to panic"), "the panic message is for the log, not the client");
    server.wait_for_log("fixture asked to panic", Duration::from_secs(5));
    server.assert_alive();
}

#[test]
fn invalid_status_line_is_a_500() {
    let (_server, r) = check_500("/bad-status");
    assert!(!r.text().contains("unreachable"), "the plugin's body must not be sent: {}", r.summary());
}

#[test]
fn crlf_in_a_header_value_is_a_500_without_response_splitting() {
    let (_server, r) = check_500("/bad-header");
    assert!(r.header("Set-Cookie").is_none(), "response splitting: {}", r.summary());
    assert!(r.header("X-Split").is_none(), "the invalid field was sent: {}", r.summary());
    assert!(!String::from_utf8_lossy(&r.raw).contains("evil=1"), "{}", r.summary());
}

#[test]
fn hop_by_hop_header_from_a_plugin_is_a_500() {
    let (_server, r) = check_500("/hop-by-hop");
    assert!(!r.text().contains("unreachable"), "the plugin's body must not be sent: {}", r.summary());
}

#[test]
fn missing_start_response_is_a_500() {
    let (_server, r) = check_500("/no-start");
    assert!(!r.text().contains("no start_response"), "the plugin's body must not be sent: {}", r.summary());
}

#[test]
fn double_start_response_is_a_500() {
    let (_server, r) = check_500("/double-start");
    assert!(!r.text().contains("twice"), "the plugin's body must not be sent: {}", r.summary());
}

#[test]
fn body_longer_than_content_length_is_cut_and_the_connection_closed() {
    let server = fixture_server();
    let mark = server.log_mark();
    let reply =
        raw_until_close(server.addr(), &request_bytes("GET", "/fixture.py/long-body", false), Duration::from_secs(5));
    assert!(
        reply.closed,
        "the connection should close after the declared 5 bytes: {}{}",
        show(&reply.bytes),
        server.context()
    );
    let (head, body) = split_head(&reply.bytes);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.to_ascii_lowercase().contains("\r\ncontent-length: 5"), "{head}");
    assert_eq!(String::from_utf8_lossy(body), "01234", "exactly the 5 declared bytes, nothing more");
    assert_fault_logged(&server, mark);
    assert_still_serving(&server);
}

#[test]
fn body_shorter_than_content_length_never_hangs_the_client() {
    let server = fixture_server();
    let reply =
        raw_until_close(server.addr(), &request_bytes("GET", "/fixture.py/short-body", false), Duration::from_secs(5));
    let r = support::parse_response(&reply.bytes, false);
    match r.status {
        // Caught before the head went out: a clean 500.
        500 => assert!(r.complete, "{}", r.summary()),
        // Head already sent with Content-Length: 100: only closing tells the client.
        200 => {
            assert!(
                reply.closed,
                "200 with Content-Length: 100 and 10 bytes: the server must close, not leave the client waiting: {}{}",
                show(&reply.bytes),
                server.context()
            );
            assert!(!r.complete, "{}", r.summary());
        }
        _ => panic!("unexpected response {}{}", r.summary(), server.context()),
    }
    assert_still_serving(&server);
}

#[test]
fn stream_panic_after_the_head_truncates_the_chunked_body() {
    let server = fixture_server();
    let mark = server.log_mark();
    let reply = raw_until_close(
        server.addr(),
        &request_bytes("GET", "/fixture.py/stream-panic", false),
        Duration::from_secs(5),
    );
    assert!(
        reply.closed,
        "the connection should be closed after the stream panicked: {}{}",
        show(&reply.bytes),
        server.context()
    );
    let (head, body) = split_head(&reply.bytes);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "the head was already sent: {head}");
    assert!(head.to_ascii_lowercase().contains("\r\ntransfer-encoding: chunked"), "{head}");
    assert!(
        !body.ends_with(b"0\r\n\r\n"),
        "the body must look truncated (no last chunk), not complete: {}",
        show(body)
    );
    assert!(support::dechunk(body).is_none(), "a complete chunked body was sent: {}", show(body));
    let text = String::from_utf8_lossy(body);
    assert!(text.matches("chunk\n").count() <= 2, "{text:?}");
    server.wait_for_line(mark, &["fixture stream panic"], Duration::from_secs(5));
    assert_fault_logged(&server, mark);
    assert_still_serving(&server);
}

#[test]
fn many_panics_in_a_row_leave_the_server_serving() {
    let server = fixture_server();
    for i in 0..50 {
        let r = server.get("/fixture.py/panic");
        assert_eq!(r.status_line, "HTTP/1.1 500 Internal Server Error", "panic #{i}: {}", r.summary());
    }
    assert_still_serving(&server);
    server.assert_alive();
}

/// PEP 3333: the iterable's `close()` runs when the response ends, also when the client went
/// away mid-body. Dropping the stream is Portico's `close()`.
#[test]
fn stream_close_hook_runs_when_the_client_disconnects() {
    use std::io::{Read, Write};
    let server = Server::builder().plugins(&["fixture"]).start();
    let mut sock = std::net::TcpStream::connect(server.addr()).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    sock.write_all(b"GET /fixture.py/close-probe?n=100000&ms=5 HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut buf = [0u8; 512];
    let n = sock.read(&mut buf).expect("the head and first chunks");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"), "got {:?}", String::from_utf8_lossy(&buf[..n]));
    drop(sock);
    let line = server.wait_for_log("fixture: stream closed after", Duration::from_secs(10));
    assert!(!line.contains("after 100000 chunks"), "the stream ran to its end instead of being closed: {line}");
    // And a stream that ends normally is closed too.
    let r = server.get("/fixture.py/close-probe?n=3");
    assert_eq!(r.status, 200);
    server.wait_for_log("fixture: stream closed after 3 chunks", Duration::from_secs(5));
}
