//! Several I/O threads (`--io-threads`): connections are spread over them, every kind of
//! completion (response, stream chunk, body-pipe resume) reaches the thread that owns its
//! connection, and SIGTERM drains them all.

mod support;

use std::fs;
use std::time::Duration;

use base64::Engine;
use support::{Server, request_bytes};

/// Nanoseconds each `portico-io-N` thread of `pid` has run (`/proc/PID/task/TID/schedstat`).
fn io_thread_cpu_ns(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).expect("reading /proc/PID/task") {
        let dir = task.expect("task entry").path();
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default().trim().to_owned();
        if comm.starts_with("portico-io") {
            let stat = fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
            let ns = stat.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
            out.push((comm, ns));
        }
    }
    out.sort();
    out
}

#[test]
fn connections_spread_over_io_threads_and_every_completion_finds_its_thread() {
    let server = Server::builder()
        .plugins(&["hello", "echo", "stream"])
        .docroot_file("f.txt", "static file\n")
        .args(["--io-threads", "3", "--threads", "4"])
        .start();
    // The listening socket accepts (into its backlog) before the loops are up: wait for them.
    let before = support::poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        Some(io_thread_cpu_ns(server.pid())).filter(|t| t.len() == 3)
    })
    .unwrap_or_else(|| panic!("expected three portico-io threads, found {:?}", io_thread_cpu_ns(server.pid())));
    let addr = server.addr();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let clients: Vec<_> = (0..12)
        .map(|c| {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut conn = support::Conn::open(addr);
                conn.set_read_timeout(Duration::from_secs(20));
                for round in 0..15 {
                    conn.send(&request_bytes("GET", "/hello.py", false));
                    let r = conn.read_response();
                    assert_eq!((r.status, r.text().as_str()), (200, "Hello, world!\n"), "client {c} round {round}");
                    conn.send(&request_bytes("GET", "/f.txt", false));
                    assert_eq!(conn.read_response().text(), "static file\n", "client {c} round {round}");
                    conn.send(&request_bytes("GET", "/stream.py?n=4&size=70000", false));
                    let r = conn.read_response();
                    assert_eq!(r.body.len(), 4 * 70_000, "client {c} round {round}: {}", r.summary());
                    if round % 5 == 0 {
                        // Larger than the 64 KiB read before dispatch: the body pipe pauses
                        // the socket and its resume notices must reach this thread.
                        let mut req =
                            format!("POST /echo.py HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len())
                                .into_bytes();
                        req.extend_from_slice(&body);
                        conn.send(&req);
                        let r = conn.read_response();
                        assert_eq!(r.status, 200, "client {c} round {round}: {}", r.summary());
                        let echoed = base64::engine::general_purpose::STANDARD
                            .decode(r.json()["body_b64"].as_str().expect("body_b64"))
                            .expect("base64");
                        assert!(echoed == body, "client {c} round {round}: echoed body differs");
                    }
                }
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        if c.join().is_err() {
            panic!("client {i} failed{}", server.context());
        }
    }
    let after = io_thread_cpu_ns(server.pid());
    let worked: Vec<_> =
        before.iter().zip(&after).map(|((name, a), (_, b))| (name.clone(), b.saturating_sub(*a) / 1_000_000)).collect();
    eprintln!("I/O thread CPU time during the run (ms): {worked:?}");
    // An idle loop only wakes for its 250 ms timer tick (microseconds each); a thread that
    // served connections ran for milliseconds.
    // Twelve connections over three threads: each holds about four.
    let busy = worked.iter().filter(|(_, ms)| *ms >= 2).count();
    assert_eq!(busy, 3, "connections were not spread over the I/O threads: {worked:?}{}", server.context());

    server.term();
    let status = server.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("no exit{}", server.context()));
    assert_eq!(status.code(), Some(0), "{}", server.context());
}

#[test]
fn io_threads_must_be_at_least_one() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["--io-threads", "0"])
        .output()
        .expect("running portico");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--io-threads"), "{stderr}");
}
