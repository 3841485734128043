//! The size and time limits of `host/src/http/limits.rs`, each over a real socket: the
//! oversize or slow input is sent, and the status and the close are asserted (RFC 9110 §15
//! for the statuses; RFC 9112 §9.6 for closing after them).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{Peer, Server, raw_until_close, show};

fn hello_server(args: &[&str]) -> Server {
    Server::builder().plugins(&["hello", "echo", "fixture"]).args(args.iter().copied()).start()
}

/// Sends `request`, expects `status_line` as the answer and the connection closed after it.
fn assert_refused_and_closed(server: &Server, request: &[u8], status_line: &str) {
    let reply = raw_until_close(server.addr(), request, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&reply.bytes);
    assert!(
        text.starts_with(&format!("{status_line}\r\n")),
        "expected {status_line:?} for {} bytes of request, got {}{}",
        request.len(),
        show(&reply.bytes),
        server.context()
    );
    assert!(
        text.contains("\r\nConnection: close\r\n"),
        "no `Connection: close` on {status_line}: {}",
        show(&reply.bytes)
    );
    assert!(reply.closed, "the connection stayed open after {status_line}{}", server.context());
    // The server is fine afterwards.
    assert_eq!(server.get("/hello.py").status, 200);
}

/// Sends `request` (which asks for `Connection: close`) and expects a 200.
fn assert_served(server: &Server, request: &str) {
    let reply = raw_until_close(server.addr(), request.as_bytes(), Duration::from_secs(10));
    assert!(reply.bytes.starts_with(b"HTTP/1.1 200 OK\r\n"), "got {}{}", show(&reply.bytes), server.context());
}

#[test]
fn request_line_over_8_kib_is_414() {
    let server = hello_server(&[]);
    let target = format!("/hello.py?{}", "q".repeat(9 * 1024));
    let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_refused_and_closed(&server, req.as_bytes(), "HTTP/1.1 414 URI Too Long");
    // Just under the limit is served.
    let target = format!("/hello.py?{}", "q".repeat(8 * 1024 - 40));
    assert_served(&server, &format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
}

#[test]
fn header_section_over_64_kib_is_431() {
    let server = hello_server(&[]);
    let big: String = (0..70).map(|i| format!("X-Filler-{i}: {}\r\n", "v".repeat(1000))).collect();
    let req = format!("GET /hello.py HTTP/1.1\r\nHost: x\r\n{big}\r\n");
    assert_refused_and_closed(&server, req.as_bytes(), "HTTP/1.1 431 Request Header Fields Too Large");
}

#[test]
fn more_than_100_fields_is_431() {
    let server = hello_server(&[]);
    let many: String = (0..101).map(|i| format!("X-F{i}: v\r\n")).collect();
    let req = format!("GET /hello.py HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert_refused_and_closed(&server, req.as_bytes(), "HTTP/1.1 431 Request Header Fields Too Large");
    // Exactly 100 (98 + Host + Connection) is fine.
    let ok: String = (0..98).map(|i| format!("X-F{i}: v\r\n")).collect();
    assert_served(&server, &format!("GET /hello.py HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{ok}\r\n"));
}

#[test]
fn declared_body_over_the_limit_is_413_before_reading_it() {
    let server = hello_server(&["--max-body", "100000"]);
    // Only the head is sent: the 413 must come without the body.
    let req = b"POST /echo.py HTTP/1.1\r\nHost: x\r\nContent-Length: 100001\r\n\r\n";
    assert_refused_and_closed(&server, req, "HTTP/1.1 413 Content Too Large");
}

#[test]
fn chunked_body_crossing_the_limit_is_413_and_the_client_sees_it() {
    let server = hello_server(&["--max-body", "100000"]);
    let mut sock = TcpStream::connect(server.addr()).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    sock.write_all(b"POST /fixture.py/body-len HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .expect("head");
    // 200 KB in 10 KB chunks: the limit is crossed on the way. The client keeps sending
    // after the server has answered: the lingering close must keep the 413 from being
    // destroyed by a reset.
    let chunk = format!("2710\r\n{}\r\n", "z".repeat(10_000));
    for _ in 0..20 {
        if sock.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let _ = sock.write_all(b"0\r\n\r\n");
    let mut got = Vec::new();
    let _ = sock.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    // The body goes to the fixture in pieces (it is larger than the 64 KiB buffer), so the
    // application may have started: then its read fails and it answers 400; before that the
    // server answers 413 itself. Either way nothing is accepted and the connection closes.
    assert!(
        text.starts_with("HTTP/1.1 413 Content Too Large\r\n") || text.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "got {}{}",
        show(&got),
        server.context()
    );
    assert!(!text.contains("200000"), "the over-limit body was accepted whole: {}", show(&got));
}

#[test]
fn small_chunked_body_over_the_limit_is_413_from_the_server() {
    let server = hello_server(&["--max-body", "1000"]);
    let body = format!("7D0\r\n{}\r\n0\r\n\r\n", "y".repeat(2000));
    let req = format!("POST /echo.py HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
    assert_refused_and_closed(&server, req.as_bytes(), "HTTP/1.1 413 Content Too Large");
}

#[test]
fn a_4_mib_chunk_extension_is_400_not_read_for_free() {
    // Node's CVE-2024-22019: extensions after one chunk size were read without limit.
    let server = hello_server(&[]);
    let mut req = b"POST /echo.py HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
    req.extend(std::iter::repeat_n(b'x', 4 << 20));
    req.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
    assert_refused_and_closed(&server, &req, "HTTP/1.1 400 Bad Request");
    // Leading zeros cannot pad a size line either.
    let req = format!(
        "POST /echo.py HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{}1\r\na\r\n0\r\n\r\n",
        "0".repeat(64)
    );
    assert_refused_and_closed(&server, req.as_bytes(), "HTTP/1.1 400 Bad Request");
}

#[test]
fn chunked_framing_counts_toward_the_body_limit() {
    // 600 one-byte chunks: 600 bytes of content, 3,600 bytes on the wire.
    let server = hello_server(&["--max-body", "2000"]);
    let body: String = "1\r\nq\r\n".repeat(600) + "0\r\n\r\n";
    let req = format!("POST /echo.py HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
    assert_refused_and_closed(&server, req.as_bytes(), "HTTP/1.1 413 Content Too Large");
    let body: String = "1\r\nq\r\n".repeat(200) + "0\r\n\r\n";
    let req =
        format!("POST /echo.py HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}");
    assert_served(&server, &req);
}

#[test]
fn stalled_request_head_is_408_then_closed() {
    let server = hello_server(&["--header-timeout", "1"]);
    let mut conn = server.connect();
    conn.send(b"GET /hello.py HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    let started = Instant::now();
    match conn.wait_closed(Duration::from_secs(6)) {
        Peer::Data(bytes) => {
            assert!(bytes.starts_with(b"HTTP/1.1 408 Request Timeout\r\n"), "got {}", show(&bytes));
            assert_eq!(conn.wait_closed(Duration::from_secs(5)), Peer::Closed, "408 but still open");
        }
        other => panic!("expected a 408 for a stalled head, got {other:?}{}", server.context()),
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "408 after only {waited:?} with --header-timeout 1");
}

#[test]
fn idle_connection_without_any_request_is_closed_silently_after_the_header_timeout() {
    let server = hello_server(&["--header-timeout", "1"]);
    let mut conn = server.connect();
    assert_eq!(conn.wait_closed(Duration::from_secs(6)), Peer::Closed, "nothing sent, so nothing to answer");
}

#[test]
fn stalled_request_body_is_408_then_closed() {
    let server = hello_server(&["--body-timeout", "1"]);
    let mut conn = server.connect();
    // 10 of 100 declared bytes, then silence: the body is small, so the server is still
    // reading it and answers 408 itself.
    conn.send(b"POST /echo.py HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789");
    match conn.wait_closed(Duration::from_secs(6)) {
        Peer::Data(bytes) => {
            assert!(bytes.starts_with(b"HTTP/1.1 408 Request Timeout\r\n"), "got {}", show(&bytes));
            assert_eq!(conn.wait_closed(Duration::from_secs(5)), Peer::Closed, "408 but still open");
        }
        other => panic!("expected a 408 for a stalled body, got {other:?}{}", server.context()),
    }
}

#[test]
fn client_that_stops_reading_is_closed_after_the_send_timeout() {
    let server = hello_server(&["--send-timeout", "1"]);
    let mut sock = TcpStream::connect(server.addr()).expect("connect");
    // 64 MiB: far more than the socket buffers hold, so the server's writes stall.
    sock.write_all(b"GET /fixture.py/big?bytes=67108864 HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    server.wait_for_log("stopped reading", Duration::from_secs(15));
    // Now read: the stream ends (closed) well before 64 MiB.
    sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    assert!(total < 64 << 20, "the whole 64 MiB arrived: the connection was not closed");
    assert_eq!(server.get("/hello.py").status, 200);
}

#[test]
fn connection_cap_holds_new_clients_in_the_backlog_until_one_closes() {
    let server = hello_server(&["--max-connections", "4"]);
    let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(server.addr()).expect("connect")).collect();
    // A fifth connection is accepted by the kernel (backlog) but not served while 4 are open.
    let mut fifth = TcpStream::connect(server.addr()).expect("the kernel's backlog takes it");
    fifth.set_read_timeout(Some(Duration::from_millis(700))).expect("timeout");
    fifth.write_all(b"GET /hello.py HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
    let mut buf = [0u8; 256];
    match fifth.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
        other => panic!("the fifth connection was served past --max-connections 4: {other:?}"),
    }
    drop(held);
    fifth.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut got = Vec::new();
    let _ = fifth.read_to_end(&mut got);
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"), "once a slot freed, expected 200, got {}", show(&got));
    server.assert_alive();
}

/// `--backlog` is the listening socket's queue: with the server at its connection cap,
/// the kernel completes that many handshakes more (Linux queues backlog + 1) and drops the
/// rest's SYNs, whose `connect` then waits for a retry a second later. std's own `bind`
/// would queue 128.
#[test]
fn backlog_sets_how_many_connections_the_kernel_queues_past_the_cap() {
    let server = hello_server(&["--max-connections", "1", "--backlog", "4"]);
    let held = TcpStream::connect(server.addr()).expect("connect");
    held.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    (&held).write_all(b"GET /hello.py HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut buf = [0u8; 256];
    let n = (&held).read(&mut buf).expect("the first connection is served");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"), "got {}", show(&buf[..n]));
    let mut queued = Vec::new();
    for _ in 0..20 {
        match TcpStream::connect_timeout(&server.addr(), Duration::from_millis(300)) {
            Ok(s) => queued.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut || e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("connect: {e}"),
        }
    }
    assert!(
        (4..=5).contains(&queued.len()),
        "{} connections were queued past the cap with --backlog 4 (20 tried)",
        queued.len()
    );
    drop(held);
    server.assert_alive();
}

#[test]
fn a_flood_of_empty_lines_is_refused() {
    let server = hello_server(&[]);
    assert_refused_and_closed(&server, "\r\n".repeat(5000).as_bytes(), "HTTP/1.1 400 Bad Request");
}

#[test]
fn a_head_sent_one_byte_at_a_time_is_served() {
    let server = hello_server(&[]);
    let mut sock = TcpStream::connect(server.addr()).expect("connect");
    sock.set_nodelay(true).expect("nodelay");
    for b in b"GET /hello.py HTTP/1.1\r\nHost: x\r\nX-Pad: 0123456789\r\nConnection: close\r\n\r\n" {
        sock.write_all(&[*b]).expect("send a byte");
    }
    sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut got = Vec::new();
    let _ = sock.read_to_end(&mut got);
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"), "got {}", show(&got));
}

/// The body timeout is about the client: while the server holds back reading (the
/// application reads slowly and the buffer is full) it must not fire.
#[test]
fn a_slow_reading_application_does_not_trip_the_body_timeout() {
    let server = hello_server(&["--body-timeout", "1"]);
    let body = vec![b'b'; 2 << 20];
    let mut sock = TcpStream::connect(server.addr()).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    // 2 MiB read 16 KiB every 25 ms: about 3 s, so the pipe stays full for longer than the
    // 1 s body timeout.
    let head = format!(
        "POST /fixture.py/slow-read?ms=25 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).expect("head");
    sock.write_all(&body).expect("body");
    let mut got = Vec::new();
    let _ = sock.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "got {}{}", show(&got), server.context());
    assert!(text.ends_with(&format!("\r\n\r\n{}\n", body.len())), "got {}", show(&got));
}

/// A client that sent `Expect: 100-continue` waits for the 100: on a mount that streams its
/// bodies (the 100 goes out on the application's first read), the body timeout must not run
/// before the application asks for the body.
#[test]
fn the_body_timeout_waits_for_the_100_continue() {
    let dir = support::TempDir::new("portico-limits");
    let config = dir.path().join("portico.toml");
    support::install_bytes(
        b"[[mount]]\nprefix = \"/fixture.py\"\napp = \"fixture\"\nrequest_buffering = false\n",
        &config,
    );
    let server = Server::builder()
        .plugins(&["fixture"])
        .args(["--body-timeout".as_ref(), "1".as_ref(), "--config".as_ref(), config.as_os_str()])
        .start();
    let mut sock = TcpStream::connect(server.addr()).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    sock.write_all(
        b"POST /fixture.py/slow-read?wait_ms=2000 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .expect("head");
    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut got = vec![0u8; interim.len()];
    sock.read_exact(&mut got).expect("the 100 once the application reads");
    assert_eq!(&got, interim);
    sock.write_all(b"hello").expect("body");
    let mut rest = Vec::new();
    let _ = sock.read_to_end(&mut rest);
    assert!(rest.starts_with(b"HTTP/1.1 200 OK\r\n"), "got {}{}", show(&rest), server.context());
    assert!(rest.ends_with(b"\r\n\r\n5\n"), "got {}", show(&rest));
}

/// A refusal sent while the client is still uploading must reach it (lingering close, not a
/// reset that destroys the response).
#[test]
fn a_refusal_reaches_a_client_still_uploading() {
    let server = Server::builder().plugins(&["hello"]).docroot_file("index.html", "<html></html>\n").start();
    let mut sock = TcpStream::connect(server.addr()).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    sock.write_all(b"POST /index.html HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n").expect("head");
    // The 405 is on its way; keep uploading as a client that did not look would.
    let chunk = vec![b'u'; 64 * 1024];
    for _ in 0..16 {
        if sock.write_all(&chunk).is_err() {
            break;
        }
    }
    let mut got = Vec::new();
    let _ = sock.read_to_end(&mut got);
    assert!(got.starts_with(b"HTTP/1.1 405 Method Not Allowed\r\n"), "got {}", show(&got));
}

/// HEAD (RFC 9110 §9.3.2) may carry the Content-Length GET would have with no body: no
/// mismatch, and the connection stays usable.
#[test]
fn head_with_a_declared_length_and_no_body_keeps_the_connection() {
    let server = hello_server(&[]);
    let mut conn = server.connect();
    conn.send(b"HEAD /fixture.py/declared?len=1000 HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = conn.try_read_response(true).expect("HEAD response");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.header("Content-Length"), Some("1000"));
    assert!(!r.has_token("Connection", "close"), "HEAD with a declared length closed: {}", r.summary());
    conn.send(b"GET /hello.py HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(conn.read_response().status, 200);
    assert!(!server.stderr_text().contains("shorter than its Content-Length"), "{}", server.context());
}
