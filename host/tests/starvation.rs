//! No client and no plugin can starve the others: each attack of issue 10, over real sockets,
//! against a server with four workers, while a normal client measures `/hello.py`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{Server, show};

/// Fetches `/hello.py` `n` times and returns the slowest answer.
fn slowest_hello(server: &Server, n: usize) -> Duration {
    (0..n)
        .map(|i| {
            let started = Instant::now();
            let r = server.get("/hello.py");
            assert_eq!(r.status_line, "HTTP/1.1 200 OK", "request #{i}: {}{}", r.summary(), server.context());
            started.elapsed()
        })
        .max()
        .unwrap_or_default()
}

/// Opens `n` uploads to `path` that send their head and `first` body bytes, then stall.
fn stalled_uploads(server: &Server, n: usize, path: &str, expect_continue: bool, first: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut sock = TcpStream::connect(server.addr()).expect("connect");
            let expect = if expect_continue { "Expect: 100-continue\r\n" } else { "" };
            let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n{expect}\r\n");
            sock.write_all(head.as_bytes()).expect("head");
            sock.write_all(&vec![b'u'; first]).expect("first body bytes");
            sock
        })
        .collect()
}

#[test]
fn slow_uploads_hold_no_worker() {
    let server = Server::builder().plugins(&["hello", "echo"]).args(["--threads", "4"]).start();
    assert!(slowest_hello(&server, 3) < Duration::from_secs(2));
    for attackers in [4, 40] {
        // Half wait after a 100-continue, half stall after 64 KiB of body (the shapes that
        // pinned every worker before request buffering).
        let mut socks = stalled_uploads(&server, attackers / 2, "/echo.py", true, 0);
        socks.extend(stalled_uploads(&server, attackers / 2, "/echo.py", false, 64 * 1024));
        // Trickle a byte into each now and then while a normal client is served.
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        while started.elapsed() < Duration::from_secs(3) {
            for s in socks.iter_mut() {
                let _ = s.write_all(b"t");
            }
            slowest = slowest.max(slowest_hello(&server, 5));
        }
        assert!(
            slowest < Duration::from_secs(1),
            "{attackers} slow uploads held /hello.py up for {slowest:?}{}",
            server.context()
        );
    }
}

#[test]
fn a_trickled_body_ends_in_408_at_the_minimum_rate() {
    // 1 byte every 200 ms is well inside the 2 s between reads, but 5 bytes a second is far
    // below 100: the body must be complete within 2 s plus 1 s per 100 bytes.
    let server = Server::builder().plugins(&["echo"]).args(["--body-timeout", "2", "--body-min-rate", "100"]).start();
    let mut sock = TcpStream::connect(server.addr()).expect("connect");
    sock.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    sock.write_all(b"POST /echo.py HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n").expect("head");
    let started = Instant::now();
    let mut got = Vec::new();
    while started.elapsed() < Duration::from_secs(10) {
        if sock.write_all(b"z").is_err() {
            break;
        }
        let mut buf = [0u8; 4096];
        match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if got.ends_with(b"\n") && !got.is_empty() {
            break;
        }
    }
    let took = started.elapsed();
    assert!(got.starts_with(b"HTTP/1.1 408 Request Timeout\r\n"), "got {}{}", show(&got), server.context());
    assert!(took < Duration::from_secs(5), "the 408 came after {took:?}");
}

#[test]
fn a_large_upload_is_spooled_to_disk_and_read_whole() {
    // 3 MiB over a 64 KiB memory buffer: the application gets every byte (their order is
    // the spool's unit test).
    let tmp = support::TempDir::new("portico-spool");
    let server =
        Server::builder().plugins(&["fixture"]).args(["--body-temp-dir".as_ref(), tmp.path().as_os_str()]).start();
    let body: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let head = format!(
        "POST /fixture.py/body-len HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut sock = TcpStream::connect(server.addr()).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    sock.write_all(head.as_bytes()).expect("head");
    sock.write_all(&body).expect("body");
    let mut got = Vec::new();
    let _ = sock.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{}", show(&got));
    assert!(text.ends_with(&format!("\r\n\r\n{}\n", body.len())), "{}", show(&got));
    // The temporary file was unlinked at once: nothing is left in the directory.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("temp dir").flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
}
