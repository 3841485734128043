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
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(5), "the 408 came after {took:?}");
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
    // And it did go through --body-temp-dir: a "directory" that is a file refuses the 3 MiB
    // body (500) while a body that fits the 64 KiB buffer never needs it.
    let not_a_dir = tmp.path().join("file");
    support::install_bytes(b"", &not_a_dir);
    let server =
        Server::builder().plugins(&["fixture"]).args(["--body-temp-dir".as_ref(), not_a_dir.as_os_str()]).start();
    let post = |len: usize| {
        let mut req = format!(
            "POST /fixture.py/body-len HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        req.extend(std::iter::repeat_n(b'b', len));
        let mut sock = TcpStream::connect(server.addr()).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let _ = sock.write_all(&req); // the server may answer and close before the end
        let mut got = Vec::new();
        let _ = sock.read_to_end(&mut got);
        got
    };
    let small = post(10_000);
    assert!(small.starts_with(b"HTTP/1.1 200 OK\r\n"), "{}", show(&small));
    let large = post(3 << 20);
    assert!(large.starts_with(b"HTTP/1.1 500 "), "{}", show(&large));
}

fn status(server: &Server) -> serde_json::Value {
    let r = server.get("/_portico/status?format=json");
    assert_eq!(r.status, 200, "{}", r.summary());
    r.json()
}

fn app<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["apps"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == name))
        .unwrap_or_else(|| panic!("no application {name}: {status:#}"))
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Waits (at most 5 s) until application `name` has `running` calls running and `waiting`
/// waiting.
fn wait_for(server: &Server, name: &str, running: u64, waiting: u64) {
    let seen = support::poll_until(Duration::from_secs(5), Duration::from_millis(10), || {
        let s = status(server);
        let a = app(&s, name);
        (u(&a["running"]) == running && u(&a["waiting"]) == waiting).then_some(())
    });
    assert!(seen.is_some(), "{name} never had {running} running and {waiting} waiting: {:#}", status(server));
}

#[test]
fn a_looping_application_gets_504_at_its_deadline_and_the_pool_keeps_its_size() {
    let server =
        Server::builder().plugins(&["fixture", "hello"]).args(["--threads", "2", "--app-timeout", "1"]).start();
    let started = Instant::now();
    let r = server.get("/fixture.py/spin?ms=4000");
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.summary());
    assert!(took >= Duration::from_millis(950) && took < Duration::from_millis(1600), "the 504 came after {took:?}");
    server.wait_for_log("ran past its 1 s deadline", Duration::from_secs(5));
    let s = status(&server);
    assert_eq!((u(&s["workers"]["threads"]), u(&s["workers"]["abandoned"])), (2, 1), "{s:#}");
    assert_eq!(u(&app(&s, "/fixture.py")["timeouts"]), 1, "{s:#}");
    // Two workers still serve: two slow calls of two applications run side by side.
    let addr = server.addr();
    let slow = std::thread::spawn(move || support::get(addr, "/fixture.py/slow?ms=700"));
    wait_for(&server, "/fixture.py", 1, 0); // one worker holds the slow call
    let t = Instant::now();
    assert_eq!(server.get("/hello.py").status, 200);
    assert!(t.elapsed() < Duration::from_millis(500), "hello waited {:?}", t.elapsed());
    assert_eq!(slow.join().expect("slow call").status, 200);
    // The stuck thread finishes its loop at last and exits; nothing stays abandoned.
    let reaped = support::poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        (u(&status(&server)["workers"]["abandoned"]) == 0).then_some(())
    });
    assert!(reaped.is_some(), "{:#}", status(&server));
}

#[test]
fn one_application_cannot_occupy_every_worker() {
    // Four workers, two applications: each may run three calls at once (--threads minus one).
    let server = Server::builder().plugins(&["fixture", "hello"]).args(["--threads", "4"]).start();
    let addr = server.addr();
    let slow: Vec<_> =
        (0..6).map(|_| std::thread::spawn(move || support::get(addr, "/fixture.py/slow?ms=1500"))).collect();
    let seen = support::poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let s = status(&server);
        let f = app(&s, "/fixture.py");
        (u(&f["running"]) == 3 && u(&f["waiting"]) == 3).then_some(())
    });
    assert!(seen.is_some(), "never saw 3 running and 3 waiting: {:#}", status(&server));
    assert!(slowest_hello(&server, 5) < Duration::from_millis(500), "the fourth worker stays free for hello");
    for t in slow {
        assert_eq!(t.join().expect("slow call").status, 200, "waiting calls run in turn");
    }
}

#[test]
fn a_full_queue_is_503_with_retry_after() {
    let dir = support::TempDir::new("portico-starvation");
    let config = dir.path().join("portico.toml");
    support::install_bytes(b"[[mount]]\nprefix = \"/f\"\napp = \"fixture\"\nmax_concurrency = 1\nqueue = 1\n", &config);
    let server = Server::builder().plugins(&["fixture"]).args(["--config".as_ref(), config.as_os_str()]).start();
    let addr = server.addr();
    let running = std::thread::spawn(move || support::get(addr, "/f/slow?ms=1500"));
    wait_for(&server, "/f", 1, 0);
    let waiting = std::thread::spawn(move || support::get(addr, "/f/slow?ms=10"));
    wait_for(&server, "/f", 1, 1);
    let refused = server.get("/f/version");
    assert_eq!(refused.status, 503, "{}", refused.summary());
    assert_eq!(refused.header("Retry-After"), Some("1"));
    assert_eq!(running.join().expect("running").status, 200);
    assert_eq!(waiting.join().expect("waiting").status, 200, "the queued call ran once the slot was free");
    let s = status(&server);
    assert_eq!((u(&app(&s, "/f")["refused"]), u(&app(&s, "/f")["admitted"])), (1, 2), "{s:#}");
}

#[test]
fn an_application_that_strands_every_worker_is_stopped_until_a_new_copy_is_loaded() {
    // Two workers: the second stuck thread stops the application (503), the other keeps
    // serving; a reload that loads a new copy of the plugin lifts the stop.
    let server =
        Server::builder().plugins(&["fixture", "hello"]).args(["--threads", "2", "--app-timeout", "0.5"]).start();
    for _ in 0..2 {
        assert_eq!(server.get("/fixture.py/spin?ms=2500").status, 504);
    }
    server.wait_for_log("answers 503 until a reload", Duration::from_secs(5));
    let r = server.get("/fixture.py/version");
    assert_eq!((r.status, r.header("Retry-After")), (503, Some("1")), "{}", r.summary());
    assert_eq!(server.get("/hello.py").status, 200, "other applications serve on");
    assert!(app(&status(&server), "/fixture.py")["stopped"].as_bool().unwrap_or(false));
    let reloads = u(&status(&server)["reloads"]["count"]);
    server.hup();
    let reloaded = support::poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        (u(&status(&server)["reloads"]["count"]) > reloads).then_some(())
    });
    assert!(reloaded.is_some(), "the SIGHUP was never handled: {:#}", status(&server));
    assert_eq!(server.get("/fixture.py/version").status, 503, "a reload that changes nothing keeps it stopped");
    server.install_plugin("fixture.so", &support::plugin("fixture"));
    let mark = server.log_mark();
    server.hup();
    server.wait_for_line(mark, &["reloaded plugin fixture"], Duration::from_secs(10));
    assert_eq!(server.get("/fixture.py/version").text(), "fixture v1\n", "a new copy serves");
}

/// Opens `n` connections to a stream that sends its first chunk at once and then one every
/// 10 s, and reads each up to that first chunk (so each is waiting when this returns).
fn waiting_streams(server: &Server, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut sock = TcpStream::connect(server.addr()).expect("connect");
            sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            sock.write_all(b"GET /stream.py?n=100000&delay_ms=10000 HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(8).any(|w| w == b"chunk 0\n") {
                let n = sock.read(&mut buf).unwrap_or_else(|e| panic!("stream #{i}: {e}; got {}", show(&got)));
                assert!(n > 0, "stream #{i} closed: {}", show(&got));
                got.extend_from_slice(&buf[..n]);
            }
            sock
        })
        .collect()
}

#[test]
fn waiting_streams_hold_no_worker() {
    let server = Server::builder().plugins(&["hello", "stream"]).args(["--threads", "4"]).start();
    for n in [8, 40] {
        let socks = waiting_streams(&server, n);
        let slowest = slowest_hello(&server, 20);
        assert!(slowest < Duration::from_millis(500), "{n} waiting streams held /hello.py up for {slowest:?}");
        let seen = support::poll_until(Duration::from_secs(3), Duration::from_millis(50), || {
            let s = status(&server);
            (u(&s["connections"]["paused"]) == n as u64 && u(&s["workers"]["busy"]) == 0).then_some(())
        });
        assert!(seen.is_some(), "{n} streams should wait with no worker busy: {:#}", status(&server));
        // A client that goes away drops its waiting stream at once (no wait for the next chunk).
        drop(socks);
        let gone = support::poll_until(Duration::from_secs(3), Duration::from_millis(50), || {
            (u(&status(&server)["connections"]["paused"]) == 0).then_some(())
        });
        assert!(gone.is_some(), "closed clients' streams are dropped: {:#}", status(&server));
    }
}

#[test]
fn a_push_stream_resumes_when_its_timer_wakes_it() {
    // One worker: while the stream waits between its chunks, that worker serves others.
    let server = Server::builder().plugins(&["stream", "hello"]).args(["--threads", "1"]).start();
    let addr = server.addr();
    let started = Instant::now();
    let stream = std::thread::spawn(move || support::get(addr, "/stream.py?n=4&delay_ms=300"));
    while started.elapsed() < Duration::from_millis(600) {
        let t = Instant::now();
        assert_eq!(server.get("/hello.py").status, 200);
        assert!(t.elapsed() < Duration::from_millis(200), "hello waited {:?} behind a waiting stream", t.elapsed());
    }
    let r = stream.join().expect("stream");
    assert_eq!((r.status, r.text()), (200, "chunk 0\nchunk 1\nchunk 2\nchunk 3\n".to_owned()), "{}", r.summary());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1800),
        "three 300 ms waits took {took:?}"
    );
}

#[test]
fn a_client_that_leaves_the_queue_takes_its_call_with_it() {
    let dir = support::TempDir::new("portico-starvation");
    let config = dir.path().join("portico.toml");
    support::install_bytes(
        b"[[mount]]\nprefix = \"/f\"\napp = \"fixture\"\nmax_concurrency = 1\nqueue = 10\n",
        &config,
    );
    let server = Server::builder().plugins(&["fixture"]).args(["--config".as_ref(), config.as_os_str()]).start();
    let addr = server.addr();
    let running = std::thread::spawn(move || support::get(addr, "/f/slow?ms=3000"));
    wait_for(&server, "/f", 1, 0);
    let waiting: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /f/version HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
            s
        })
        .collect();
    let queued = support::poll_until(Duration::from_secs(2), Duration::from_millis(20), || {
        (u(&app(&status(&server), "/f")["waiting"]) == 5).then_some(())
    });
    assert!(queued.is_some(), "five calls should wait: {:#}", status(&server));
    // They close while the first call still runs: their calls leave the queue at once (their
    // heads and bodies are freed), long before a slot would have come.
    drop(waiting);
    let left = support::poll_until(Duration::from_secs(2), Duration::from_millis(20), || {
        (u(&app(&status(&server), "/f")["waiting"]) == 0).then_some(())
    });
    assert!(left.is_some(), "closed clients' calls stay queued: {:#}", status(&server));
    assert_eq!(running.join().expect("running").status, 200);
    // None of them ran afterwards: the plugin answered the one running call only.
    let s = status(&server);
    let fixture = s["plugins"].as_array().and_then(|p| p.iter().find(|p| p["name"] == "fixture")).cloned();
    let fixture = fixture.unwrap_or_else(|| panic!("no fixture plugin: {s:#}"));
    assert_eq!(u(&fixture["requests"]), 1, "{fixture:#}");
}

#[test]
fn a_stream_pull_past_its_deadline_closes_the_connection_and_the_pool_keeps_its_size() {
    // The deadline covers each pull of a streamed body, not the stream's whole life: chunks
    // 300 ms apart stream past a 1 s deadline; one pull of 3 s is cut off.
    let server =
        Server::builder().plugins(&["fixture", "hello"]).args(["--threads", "2", "--app-timeout", "1"]).start();
    let r = server.get("/fixture.py/slow-stream?n=5&ms=300");
    assert_eq!((r.status, r.text().lines().count()), (200, 5), "a 1.5 s stream of short pulls: {}", r.summary());
    let started = Instant::now();
    let mut sock = TcpStream::connect(server.addr()).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    sock.write_all(b"GET /fixture.py/slow-stream?n=3&ms=3000 HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut got = Vec::new();
    let _ = sock.read_to_end(&mut got);
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(!text.ends_with("0\r\n\r\n"), "the body must be cut short, not ended: {text}");
    assert!(took >= Duration::from_millis(950) && took < Duration::from_millis(2500), "closed after {took:?}");
    server.wait_for_log("next chunk took more than 1 s", Duration::from_secs(5));
    assert_eq!(u(&status(&server)["workers"]["threads"]), 2, "the stuck thread was replaced");
    assert_eq!(server.get("/hello.py").status, 200);
}

/// How many times the thread named `comm` (as /proc shows it: 15 bytes at most) of process
/// `pid` has slept and woken (`voluntary_ctxt_switches`).
fn wakeups(pid: u32, comm: &str) -> u64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task") {
        let dir = task.expect("a task").path();
        if std::fs::read_to_string(dir.join("comm")).unwrap_or_default().trim() == comm {
            let status = std::fs::read_to_string(dir.join("status")).expect("its status");
            let n = status.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"));
            return n.expect("a voluntary_ctxt_switches line").trim().parse().expect("a count");
        }
    }
    panic!("no thread {comm} in process {pid}");
}

#[test]
fn an_idle_server_sleeps_and_a_call_after_its_sleep_is_still_cut_off_at_its_deadline() {
    let server = Server::builder()
        .plugins(&["fixture", "hello"])
        .args(["--threads", "2", "--app-timeout", "0.3", "--io-threads", "1"])
        .start();
    assert_eq!(server.get("/hello.py").status, 200);
    // Nothing runs for over a second (50 ticks): the watchdog dozes, waking once a second;
    // the event loop, with no connection left, waits for events without its 250 ms tick.
    std::thread::sleep(Duration::from_millis(1500));
    let (watchdog, event_loop) = ("portico-watchdo", "portico-io-0");
    let before = (wakeups(server.pid(), watchdog), wakeups(server.pid(), event_loop));
    std::thread::sleep(Duration::from_secs(2));
    let woke = wakeups(server.pid(), watchdog) - before.0;
    assert!(woke <= 6, "an idle watchdog woke {woke} times in 2 s (a 20 ms tick is 100)");
    let woke = wakeups(server.pid(), event_loop) - before.1;
    assert!(woke <= 2, "an event loop without connections woke {woke} times in 2 s (a 250 ms tick is 8)");
    // A call that begins wakes it: cut off at its 0.3 s deadline, not at the end of a doze.
    let started = Instant::now();
    let r = server.get("/fixture.py/spin?ms=3000");
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.summary());
    // (Unpoked, it would come when the doze ends: anywhere up to 1 s after the call began.)
    assert!(took < Duration::from_millis(550), "the 504 came after {took:?}");
}
