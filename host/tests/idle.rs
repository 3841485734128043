//! Slow and idle clients never hold a worker: with four workers, hundreds of idle keep-alive
//! connections and half-sent request heads must not keep a new client waiting.

mod support;

use std::time::{Duration, Instant};

use support::{Peer, Server, request_bytes};

const IDLE: usize = 200;
const HALF_HEADS: usize = 200;

#[test]
fn idle_and_slow_clients_do_not_starve_the_workers() {
    let server = Server::builder()
        .plugins(&["hello"])
        .docroot_file("index.html", "<html><body>index</body></html>\n")
        .args(["--threads", "4", "--max-connections", "1000"])
        .start();

    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let mut conn = server.connect();
        conn.send(&request_bytes("GET", "/hello.py", false));
        let r = conn
            .try_read_response(false)
            .unwrap_or_else(|e| panic!("idle connection #{i}, first request: {e}{}", server.context()));
        assert_eq!(r.status_line, "HTTP/1.1 200 OK", "idle connection #{i}: {}", r.summary());
        idle.push(conn);
    }
    let mut half = Vec::with_capacity(HALF_HEADS);
    for _ in 0..HALF_HEADS {
        let mut conn = server.connect();
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n");
        half.push(conn);
    }

    // Slowloris: keep trickling one header byte into every half-sent head while a normal
    // client makes 50 requests; every one must be answered promptly.
    let mut latencies = Vec::with_capacity(50);
    for attempt in 0..50 {
        if attempt % 10 == 0 {
            for conn in half.iter_mut() {
                let _ = conn.try_send(b"X");
            }
        }
        let started = Instant::now();
        let r = server.get("/hello.py");
        let took = started.elapsed();
        assert_eq!(r.status_line, "HTTP/1.1 200 OK", "new client #{attempt}: {}", r.summary());
        assert_eq!(r.text(), "Hello, world!\n");
        latencies.push(took);
    }
    latencies.sort();
    let (p50, worst) = (latencies[latencies.len() / 2], latencies[latencies.len() - 1]);
    eprintln!("normal client behind {IDLE} idle + {HALF_HEADS} slowloris connections: p50 {p50:?}, max {worst:?}");
    assert!(
        worst < Duration::from_secs(2),
        "a normal client waited {worst:?} behind {IDLE} idle and {HALF_HEADS} slow connections{}",
        server.context()
    );
    for conn in half.iter_mut() {
        let _ = conn.try_send(b": y\r\n");
    }
    server.assert_alive();

    // The idle connections are either still usable or were closed cleanly (an idle timeout),
    // never left hanging or answered with garbage.
    let mut failures = Vec::new();
    for (i, conn) in idle.iter_mut().enumerate() {
        conn.set_read_timeout(Duration::from_secs(3));
        if let Err(e) = conn.try_send(&request_bytes("GET", "/hello.py", false)) {
            if !support::is_closed_error(&e) {
                failures.push(format!("idle #{i}: send: {e}"));
            }
            continue;
        }
        match conn.try_read_response(false) {
            Ok(r) if r.status == 200 && r.body == b"Hello, world!\n" => {}
            Ok(r) => failures.push(format!("idle #{i}: {}", r.summary())),
            Err(e) if support::is_closed_error(&e) => {}
            Err(e) => failures.push(format!("idle #{i}: {e}")),
        }
        if failures.len() >= 3 {
            break;
        }
    }
    for (i, conn) in half.iter_mut().enumerate() {
        if failures.len() >= 3 {
            break;
        }
        match conn.wait_closed(Duration::from_millis(1)) {
            Peer::Closed => continue, // dropped by a header timeout: fine
            Peer::Data(bytes) if bytes.starts_with(b"HTTP/1.1 408 ") => continue,
            Peer::Data(bytes) => {
                failures.push(format!("half-sent #{i}: unexpected bytes {}", support::show(&bytes)));
                continue;
            }
            Peer::Open => {}
        }
        conn.set_read_timeout(Duration::from_secs(3));
        if conn.try_send(b"\r\n").is_err() {
            continue;
        }
        match conn.try_read_response(false) {
            Ok(r) if r.status == 200 => {}
            Ok(r) if r.status == 408 => {}
            Ok(r) => failures.push(format!("half-sent #{i} completed: {}", r.summary())),
            Err(e) if support::is_closed_error(&e) => {}
            Err(e) => failures.push(format!("half-sent #{i} completed: {e}")),
        }
    }
    assert!(failures.is_empty(), "connections after the load:\n{}{}", failures.join("\n"), server.context());
    server.assert_alive();
    drop(idle);
    drop(half);
    let r = server.get("/hello.py");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
}

/// A client that stops reading a large response holds no worker: the streamed body is pulled
/// only while the connection's queue is below the high-water mark, and a large buffered body
/// is handed to the I/O thread. With a single worker, a second client is still served.
#[test]
fn a_client_that_stops_reading_holds_no_worker() {
    let server = Server::builder().plugins(&["hello", "stream", "fixture"]).args(["--threads", "1"]).start();
    let mut stalled = Vec::new();
    for path in ["/stream.py?n=100000&size=65536", "/fixture.py/big?bytes=67108864"] {
        let mut conn = server.connect();
        conn.send(&request_bytes("GET", path, false));
        stalled.push(conn); // never read
    }
    for attempt in 0..5 {
        let started = Instant::now();
        let r = server.get("/hello.py");
        let took = started.elapsed();
        assert_eq!(r.status, 200, "attempt {attempt}: {}", r.summary());
        assert!(
            took < Duration::from_secs(2),
            "with one worker, /hello.py waited {took:?} behind clients that stopped reading{}",
            server.context()
        );
    }
    drop(stalled);
    server.assert_alive();
}
