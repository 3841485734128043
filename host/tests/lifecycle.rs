//! Process lifecycle: startup logs, listening on several addresses, the access log, command-line
//! errors, and graceful shutdown on SIGTERM.

mod support;

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Peer, Server, WORKSPACE_VERSION, request_bytes};

#[track_caller]
fn assert_refused(addr: std::net::SocketAddr) {
    if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        panic!("{addr} still accepts connections after the server exited ({stream:?})");
    }
}

/// Sends a slow request on its own connection and makes sure the server has taken it up: a
/// request sent afterwards on another connection has been answered.
fn start_slow_request(server: &Server, ms: u64) -> (support::Conn, Instant) {
    let mut conn = server.connect();
    conn.send(&request_bytes("GET", &format!("/fixture.py/slow?ms={ms}"), true));
    let sent = Instant::now();
    let r = server.get("/hello.py");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{}", r.summary());
    (conn, sent)
}

#[test]
fn sigterm_lets_the_in_flight_request_finish_and_exits_zero() {
    let server = Server::builder().plugins(&["hello", "fixture"]).args(["--graceful-timeout", "10"]).start();
    let addr = server.addr();
    let (mut conn, sent) = start_slow_request(&server, 1500);
    server.term();
    conn.set_read_timeout(Duration::from_secs(10));
    let r = conn
        .try_read_response(false)
        .unwrap_or_else(|e| panic!("the in-flight request did not complete after SIGTERM: {e}{}", server.context()));
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{}", r.summary());
    assert!(r.complete, "{}", r.summary());
    assert_eq!(r.text(), "slow done\n");
    assert!(
        sent.elapsed() >= Duration::from_millis(1400),
        "answered after {:?}, before the plugin's 1.5 s",
        sent.elapsed()
    );
    let status = server
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after the last request finished{}", server.context()));
    assert_eq!(status.code(), Some(0), "exit status {status}{}", server.context());
    assert_refused(addr);
}

#[test]
fn sigterm_closes_idle_keep_alive_connections_and_exits_promptly() {
    let server = Server::builder().plugins(&["hello"]).args(["--graceful-timeout", "30"]).start();
    let addr = server.addr();
    let mut idle = server.connect();
    idle.send(&request_bytes("GET", "/hello.py", false));
    assert_eq!(idle.read_response().status, 200);
    let started = Instant::now();
    server.term();
    let status = server
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("an idle keep-alive connection held up shutdown for 5 s{}", server.context()));
    assert_eq!(status.code(), Some(0), "exit status {status}{}", server.context());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(idle.wait_closed(Duration::from_secs(2)), Peer::Closed);
    assert_refused(addr);
}

#[test]
fn graceful_timeout_bounds_the_shutdown() {
    let server = Server::builder().plugins(&["hello", "fixture"]).args(["--graceful-timeout", "1"]).start();
    let (_conn, _sent) = start_slow_request(&server, 20_000);
    let started = Instant::now();
    server.term();
    let status = server.wait_exit(Duration::from_secs(8)).unwrap_or_else(|| {
        panic!(
            "--graceful-timeout 1 but still running 8 s after SIGTERM (a 20 s request in flight){}",
            server.context()
        )
    });
    assert!(started.elapsed() < Duration::from_secs(8), "exited ({status}) after {:?}", started.elapsed());
}

#[test]
fn a_response_cut_off_by_the_graceful_timeout_is_access_logged_with_what_was_sent() {
    let dir = support::TempDir::new("portico-cut-off");
    let log = dir.path().join("access.log");
    let server = Server::builder()
        .plugins(&["hello", "fixture"])
        .args([std::ffi::OsString::from("--access-log"), log.clone().into_os_string()])
        .args(["--graceful-timeout", "1"])
        .start();
    // An idle keep-alive connection is not a request in flight.
    let mut idle = server.connect();
    idle.send(&request_bytes("GET", "/hello.py", false));
    assert_eq!(idle.read_response().status, 200);
    // 100 chunks 100 ms apart: 10 s, cut off after 1 s.
    let mut conn = server.connect();
    conn.send(&request_bytes("GET", "/fixture.py/slow-stream?n=100&ms=100", false));
    let head = conn.read_head().unwrap_or_else(|e| panic!("{e}{}", server.context()));
    assert_eq!(head.status, 200);
    let first = conn.read_chunk().unwrap_or_else(|e| panic!("{e}{}", server.context())).expect("a first chunk");
    server.term();
    server.wait_exit(Duration::from_secs(8)).unwrap_or_else(|| panic!("no exit after SIGTERM{}", server.context()));
    let stderr = server.stderr_text();
    let drain = stderr.lines().find(|l| l.contains("shutting down")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(drain.contains("in_flight=1") && drain.contains("open=2"), "{drain}");
    let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("reading {}: {e}", log.display()));
    let line = text
        .lines()
        .find(|l| l.contains("\"GET /fixture.py/slow-stream?n=100&ms=100 HTTP/1.1\""))
        .unwrap_or_else(|| panic!("the cut-off response was not logged: {text:?}{}", server.context()));
    let fields: Vec<&str> = line.rsplit('"').next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(fields.first(), Some(&"200"), "{line}");
    let bytes: u64 = fields.get(1).and_then(|b| b.parse().ok()).unwrap_or_else(|| panic!("no byte count: {line}"));
    // At least the chunk read above, far fewer than all 100 (each "1:N\n", 4 to 5 bytes).
    assert!(bytes >= first.len() as u64 && bytes < 200, "{bytes} bytes logged: {line}");
}

#[test]
fn the_health_check_says_ok_while_serving_and_503_while_draining() {
    let server = Server::builder().plugins(&["hello", "fixture"]).args(["--graceful-timeout", "10"]).start();
    let r = server.get("/_portico/health");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"), "{}", r.summary());
    assert_eq!(r.header("Cache-Control"), Some("no-store"), "{}", r.summary());
    assert_eq!(server.get("/_portico/health?probe=1").status, 200, "the query is not part of the path");
    let mut post = server.connect();
    post.send(&request_bytes("POST", "/_portico/health", false));
    assert_eq!(post.read_response().status, 405);
    // A keep-alive connection that asks again once the drain has begun: 503, then closed.
    let mut probe = server.connect();
    probe.send(&request_bytes("GET", "/_portico/health", false));
    assert_eq!(probe.read_response().status, 200);
    let (_slow, _sent) = start_slow_request(&server, 3000);
    server.term();
    server.wait_for_log("shutting down", Duration::from_secs(5));
    probe.send(&request_bytes("GET", "/_portico/health", false));
    let r = probe.read_response();
    assert_eq!((r.status, r.text().as_str()), (503, "draining\n"), "{}", r.summary());
    assert_eq!(probe.wait_closed(Duration::from_secs(2)), Peer::Closed);

    // `--health-path off`: no such page (the docroot answers 404).
    let off = Server::builder().plugins(&["hello"]).args(["--health-path", "off"]).start();
    assert_eq!(off.get("/_portico/health").status, 404);
    let moved = Server::builder().plugins(&["hello"]).args(["--health-path", "/healthz"]).start();
    assert_eq!(moved.get("/healthz").text(), "ok\n");
}

#[test]
fn startup_logs_every_loaded_plugin_with_its_version() {
    let server = Server::start();
    for (name, version) in [
        ("hello", WORKSPACE_VERSION),
        ("ctime", WORKSPACE_VERSION),
        ("echo", WORKSPACE_VERSION),
        ("stream", WORKSPACE_VERSION),
        ("fixture", "1"),
    ] {
        server.wait_for_line(0, &[&format!("loaded plugin {name} {version}")], Duration::from_secs(5));
    }
}

#[test]
fn several_binds_all_serve() {
    let server = Server::builder().plugins(&["hello"]).binds(2).start();
    let addrs = server.addrs().to_vec();
    assert_eq!(addrs.len(), 2, "{}", server.context());
    assert_ne!(addrs[0], addrs[1]);
    for addr in addrs {
        let r = support::try_get(addr, "/hello.py").unwrap_or_else(|e| panic!("{e}{}", server.context()));
        assert_eq!(r.status_line, "HTTP/1.1 200 OK", "on {addr}: {}", r.summary());
    }
}

/// Checks one access-log line: `127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "GET /x HTTP/1.1" 200 14 1234`.
#[track_caller]
fn assert_clf(line: &str, request: &str, status: u16) {
    assert!(line.starts_with("127.0.0.1 - - ["), "not Common Log Format: {line:?}");
    let close = line.find("] \"").unwrap_or_else(|| panic!("no `] \"` in {line:?}"));
    let date = &line["127.0.0.1 - - [".len()..close];
    assert_eq!(date.len(), "10/Oct/2000:13:55:36 +0000".len(), "CLF date {date:?} in {line:?}");
    assert!(
        date.as_bytes()[2] == b'/' && date.as_bytes()[6] == b'/' && date.as_bytes()[11] == b':',
        "CLF date {date:?}"
    );
    let quoted = format!("\"{request}\" {status} ");
    assert!(line.contains(&quoted), "{line:?} should contain {quoted:?}");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let n = fields.len();
    assert!(n >= 3, "{line:?}");
    assert!(fields[n - 2] == "-" || fields[n - 2].parse::<u64>().is_ok(), "bytes field in {line:?}");
    assert!(fields[n - 1].parse::<u64>().is_ok(), "the last field should be the duration in µs: {line:?}");
}

#[test]
fn access_log_goes_to_stdout_in_common_log_format() {
    let server = Server::builder()
        .plugins(&["hello"])
        .docroot_file("index.html", "<html></html>\n")
        .args(["--access-log", "-"])
        .start();
    assert_eq!(server.get("/hello.py").status, 200);
    assert_eq!(server.get("/missing.txt").status, 404);
    // Stop the server so any buffered log lines are flushed.
    server.term();
    server.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("no exit after SIGTERM{}", server.context()));
    let line = server.wait_for_stdout_line(&["\"GET /hello.py HTTP/1.1\""], Duration::from_secs(5));
    assert_clf(&line, "GET /hello.py HTTP/1.1", 200);
    assert!(line.contains("\" 200 14 "), "body size 14 for /hello.py: {line:?}");
    let line = server.wait_for_stdout_line(&["\"GET /missing.txt HTTP/1.1\""], Duration::from_secs(5));
    assert_clf(&line, "GET /missing.txt HTTP/1.1", 404);
}

#[test]
fn access_log_to_a_file_and_off() {
    let dir = support::TempDir::new("portico-access-log");
    let log = dir.path().join("access.log");
    let server = Server::builder()
        .plugins(&["hello"])
        .args([std::ffi::OsString::from("--access-log"), log.clone().into_os_string()])
        .start();
    assert_eq!(server.get("/hello.py").status, 200);
    server.term();
    server.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("no exit after SIGTERM{}", server.context()));
    let text =
        std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("reading {}: {e}{}", log.display(), server.context()));
    let line = text
        .lines()
        .find(|l| l.contains("\"GET /hello.py HTTP/1.1\""))
        .unwrap_or_else(|| panic!("no access-log line in {}: {text:?}", log.display()));
    assert_clf(line, "GET /hello.py HTTP/1.1", 200);
    assert!(!server.stdout_text().contains("/hello.py"), "logged to stdout as well: {}", server.stdout_text());

    // The harness default is `--access-log off`: nothing on stdout.
    let quiet = Server::builder().plugins(&["hello"]).start();
    assert_eq!(quiet.get("/hello.py").status, 200);
    quiet.term();
    quiet.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("no exit after SIGTERM{}", quiet.context()));
    assert!(!quiet.stdout_text().contains("/hello.py"), "--access-log off still logged: {}", quiet.stdout_text());
}

#[test]
fn invalid_arguments_fail_fast() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["--bind", "127.0.0.1:0", "--threads", "abc"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning portico");
    let status =
        support::poll_until(Duration::from_secs(10), Duration::from_millis(20), || child.try_wait().ok().flatten());
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("`portico --threads abc` was still running after 10 s");
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped stderr"), &mut stderr)
        .expect("reading stderr");
    assert!(!status.success(), "`portico --threads abc` exited with {status}; stderr: {stderr}");
    assert!(stderr.contains("--threads"), "the error should name the bad option: {stderr}");
}

/// SIGUSR1 reopens the access log (logrotate without copytruncate), and no signal the server
/// does not use ends it: before, `kill -USR1` killed it (exit 138) with no drain and no line.
#[test]
fn sigusr1_reopens_a_moved_access_log_and_unused_signals_are_ignored() {
    for workers in ["0", "2"] {
        let dir = support::TempDir::new("portico-logrotate");
        let log = dir.path().join("access.log");
        let server = Server::builder()
            .plugins(&["hello"])
            .args(["--access-log".to_owned(), log.display().to_string(), "--workers".to_owned(), workers.to_owned()])
            .start();
        assert_eq!(server.get("/hello.py?before").status, 200);
        let lines = |path: &std::path::Path, needle: &str| {
            support::poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
                std::fs::read_to_string(path).ok().filter(|t| t.contains(needle))
            })
        };
        assert!(lines(&log, "GET /hello.py?before").is_some(), "workers {workers}: the first line is written");
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&log, &rotated).unwrap();
        let mark = server.log_mark();
        server.signal(libc::SIGUSR1);
        server.wait_for_line(mark, &["SIGUSR1", "reopen"], Duration::from_secs(5));
        if workers != "0" {
            // The workers reopen on their own signal, which the master sends after its line.
            std::thread::sleep(Duration::from_millis(300));
        }
        assert_eq!(server.get("/hello.py?after").status, 200);
        assert!(lines(&log, "GET /hello.py?after").is_some(), "workers {workers}: a new access.log after SIGUSR1");
        assert!(!std::fs::read_to_string(&rotated).unwrap().contains("?after"), "nothing more in the rotated file");
        for sig in [libc::SIGALRM, libc::SIGVTALRM, libc::SIGPROF, libc::SIGIO, libc::SIGWINCH, libc::SIGPIPE] {
            server.signal(sig);
        }
        if workers == "0" {
            // The binary upgrade needs a master; alone, SIGUSR2 is said to be ignored.
            let mark = server.log_mark();
            server.signal(libc::SIGUSR2);
            server.wait_for_line(mark, &["SIGUSR2", "ignored"], Duration::from_secs(5));
        }
        std::thread::sleep(Duration::from_millis(300));
        server.assert_alive();
        assert_eq!(server.get("/hello.py").status, 200, "workers {workers}: still serving");
    }
}

/// `--access-log-format combined|json` and `--log-format json` (issue 15, finding 11 and the
/// logs part): every line of each parses, with the fields an operator filters on.
#[test]
fn access_log_formats_and_a_json_error_log() {
    let read_line = |path: &std::path::Path, needle: &str| {
        support::poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
            std::fs::read_to_string(path).ok()?.lines().find(|l| l.contains(needle)).map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no access line with {needle:?} in {}", path.display()))
    };
    let request = b"GET /hello.py?x=1 HTTP/1.1\r\nHost: x\r\nReferer: http://ref.example/\r\nUser-Agent: agent \"1.0\"\r\nConnection: close\r\n\r\n";
    let dir = support::TempDir::new("portico-access-formats");

    let combined = dir.path().join("combined.log");
    let server = Server::builder()
        .plugins(&["hello"])
        .args([
            "--access-log".to_owned(),
            combined.display().to_string(),
            "--access-log-format".to_owned(),
            "combined".to_owned(),
        ])
        .start();
    assert_eq!(server.request(request).status, 200);
    let line = read_line(&combined, "/hello.py?x=1");
    assert!(
        line.contains("\"GET /hello.py?x=1 HTTP/1.1\" 200 14 \"http://ref.example/\" \"agent \\\"1.0\\\"\""),
        "{line}"
    );
    drop(server);

    let json = dir.path().join("json.log");
    let server = Server::builder()
        .plugins(&["hello"])
        .args(["--access-log", &json.display().to_string(), "--access-log-format", "json", "--log-format", "json"])
        .start();
    assert_eq!(server.request(request).status, 200);
    let line = read_line(&json, "/hello.py?x=1");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(
        (v["method"].as_str(), v["target"].as_str(), v["status"].as_u64()),
        (Some("GET"), Some("/hello.py?x=1"), Some(200))
    );
    assert_eq!((v["user_agent"].as_str(), v["referer"].as_str()), (Some("agent \"1.0\""), Some("http://ref.example/")));
    assert!(v["time"].as_str().is_some_and(|t| t.ends_with('Z')) && v["duration_us"].is_u64(), "{line}");
    for line in server.stderr_text().lines().filter(|l| !l.trim().is_empty()) {
        let e: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("an error log line is not JSON ({e}): {line}"));
        assert!(e["level"].is_string() && e["timestamp"].is_string() && e["message"].is_string(), "{line}");
    }
}
