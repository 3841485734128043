//! Hot reload on SIGHUP: changed plugin files are swapped in without dropping a request,
//! in-flight requests finish on the version they started on, bad files are refused and the
//! old version keeps serving, new files become routable and removed ones 404, and a plugin
//! built against an incompatible `portico-api` is refused.

mod support;

use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use support::{Conn, RELOAD_TIMEOUT, Server, fixture_v2, plugin, request_bytes};

const V1: &str = "fixture v1\n";
const V2: &str = "fixture v2\n";

fn fixture_server() -> Server {
    Server::builder().plugins(&["hello", "fixture"]).start()
}

#[track_caller]
fn assert_version(server: &Server, body: &str) {
    let r = server.get("/fixture.py/version");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{}{}", r.summary(), server.context());
    assert_eq!(r.text(), body, "{}", server.context());
}

/// What the load thread of [`reloads_under_load_drop_no_request`] saw.
#[derive(Default)]
struct LoadStats {
    v1: AtomicUsize,
    v2: AtomicUsize,
    reconnects: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

impl LoadStats {
    fn error(&self, msg: String) {
        self.errors.lock().unwrap_or_else(|p| p.into_inner()).push(msg);
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn error_count(&self) -> usize {
        self.errors.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Sets the flag when dropped, so the load thread stops even if the test panics.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Requests `/fixture.py/version` over keep-alive until `stop`, reconnecting when the server
/// closes an idle connection between two requests. Anything but a 200 with v1 or v2 is an error.
fn load_loop(addr: std::net::SocketAddr, stop: &AtomicBool, stats: &LoadStats) {
    let request = request_bytes("GET", "/fixture.py/version", false);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut conn: Option<Conn> = None;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && stats.error_count() < 20 {
        let fresh = conn.is_none();
        if fresh {
            match Conn::try_open(addr) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    stats.error(format!("connect: {e}"));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        if let Err(e) = c.try_send(&request) {
            if fresh || !support::is_closed_error(&e) {
                stats.error(format!("send (fresh connection: {fresh}): {e}"));
            }
            stats.reconnects.fetch_add(1, Ordering::Relaxed);
            conn = None;
            continue;
        }
        match c.try_read_response(false) {
            Ok(r) => {
                if r.status == 200 && r.body == V1.as_bytes() {
                    stats.v1.fetch_add(1, Ordering::SeqCst);
                } else if r.status == 200 && r.body == V2.as_bytes() {
                    stats.v2.fetch_add(1, Ordering::SeqCst);
                } else {
                    stats.error(format!("bad response: {}", r.summary()));
                }
                if !r.complete || r.has_token("Connection", "close") {
                    conn = None;
                }
            }
            // The server closed a reused connection before answering: the request was never
            // taken, retry on a new one (the usual keep-alive race).
            Err(e) if !fresh && support::is_closed_before_response(&e) => {
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
            Err(e) => {
                stats.error(format!("read (fresh connection: {fresh}): {e}"));
                conn = None;
            }
        }
    }
}

#[test]
fn reloads_under_load_drop_no_request() {
    let v1 = plugin("fixture");
    let v2 = fixture_v2();
    let server = fixture_server();
    assert_version(&server, V1);

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(LoadStats::default());
    let _stop_guard = StopOnDrop(Arc::clone(&stop));
    let loader = {
        let (addr, stop, stats) = (server.addr(), Arc::clone(&stop), Arc::clone(&stats));
        thread::spawn(move || load_loop(addr, &stop, &stats))
    };
    let seen = |body: &str| if body == V1 { stats.v1.load(Ordering::SeqCst) } else { stats.v2.load(Ordering::SeqCst) };
    support::poll_until(Duration::from_secs(10), Duration::from_millis(10), || (seen(V1) > 0).then_some(()))
        .unwrap_or_else(|| panic!("the load thread got no v1 answer in 10 s{}", server.context()));

    for i in 0..20 {
        let (src, body) = if i % 2 == 0 { (&v2, V2) } else { (&v1, V1) };
        let before = seen(body);
        let mark = server.log_mark();
        server.install_plugin("fixture.so", src);
        server.hup();
        server.wait_for_body("/fixture.py/version", body, RELOAD_TIMEOUT);
        server.wait_for_line(mark, &["reloaded plugin fixture"], Duration::from_secs(5));
        // The keep-alive loop must get the new version too (requests, not connections, pick
        // the version).
        support::poll_until(RELOAD_TIMEOUT, Duration::from_millis(5), || (seen(body) > before).then_some(()))
            .unwrap_or_else(|| {
                panic!("reload #{i}: the keep-alive load thread never saw {body:?}{}", server.context())
            });
        assert_eq!(stats.error_count(), 0, "reload #{i}: errors so far: {:?}", stats.errors());
    }
    stop.store(true, Ordering::SeqCst);
    loader.join().expect("load thread panicked");
    let errors = stats.errors();
    let (n1, n2) = (stats.v1.load(Ordering::SeqCst), stats.v2.load(Ordering::SeqCst));
    eprintln!("load thread: {n1} x v1, {n2} x v2, {} reconnects", stats.reconnects.load(Ordering::Relaxed));
    assert!(
        errors.is_empty(),
        "{} failed requests during reloads (v1 {n1}, v2 {n2}):\n{}{}",
        errors.len(),
        errors.join("\n"),
        server.context()
    );
    assert!(n1 > 0 && n2 > 0, "the load thread saw v1 {n1} times and v2 {n2} times");
    server.assert_alive();
}

#[test]
fn in_flight_stream_finishes_on_the_version_it_started_on() {
    let v2 = fixture_v2();
    let server = fixture_server();
    assert_version(&server, V1);

    // 10 chunks 300 ms apart (longer than 5 x 200 ms, so the reload surely lands mid-stream).
    let (first_tx, first_rx) = mpsc::channel::<()>();
    let addr = server.addr();
    let reader = thread::spawn(move || -> Result<Vec<(Instant, Vec<u8>)>, String> {
        let mut conn = Conn::try_open(addr)?;
        conn.try_send(&request_bytes("GET", "/fixture.py/slow-stream?n=10&ms=300", true)).map_err(|e| e.to_string())?;
        let head = conn.read_head().map_err(|e| format!("head: {e}"))?;
        if head.status_line != "HTTP/1.1 200 OK" {
            return Err(format!("status line {:?}", head.status_line));
        }
        let mut chunks = Vec::new();
        loop {
            match conn.read_chunk() {
                Ok(Some(data)) => {
                    chunks.push((Instant::now(), data));
                    let _ = first_tx.send(());
                }
                Ok(None) => return Ok(chunks),
                Err(e) => {
                    let got: Vec<u8> = chunks.iter().flat_map(|(_, d)| d.clone()).collect();
                    return Err(format!("after {:?}: {e}", String::from_utf8_lossy(&got)));
                }
            }
        }
    });
    first_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("no first chunk of the slow stream within 10 s{}", server.context()));

    server.install_plugin("fixture.so", &v2);
    server.hup();
    server.wait_for_body("/fixture.py/version", V2, RELOAD_TIMEOUT);
    let reloaded_at = Instant::now();

    let chunks = reader
        .join()
        .expect("reader thread panicked")
        .unwrap_or_else(|e| panic!("the in-flight stream failed: {e}{}", server.context()));
    let body: Vec<u8> = chunks.iter().flat_map(|(_, d)| d.clone()).collect();
    let want: String = (0..10).map(|i| format!("1:{i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&body), want, "the stream must finish entirely on v1");
    let last = chunks.last().map(|(t, _)| *t).expect("at least one chunk");
    assert!(
        last > reloaded_at,
        "the reload only completed after the stream had ended, so this proves nothing; it took too long"
    );
    assert_version(&server, V2);
}

#[test]
fn truncated_plugin_file_is_refused_and_the_old_version_keeps_serving() {
    let v2 = fixture_v2();
    let server = fixture_server();
    assert_version(&server, V1);
    let real = fs::read(plugin("fixture")).expect("reading the fixture plugin");
    // The first half of the *loadable* bytes: half of the whole file would still hold every
    // loadable segment of a debug build (the rest is debug info) and load fine.
    let cut = support::elf_loadable_end(&real) / 2;
    let mark = server.log_mark();
    server.install_plugin_bytes("fixture.so", &real[..cut]);
    server.hup();
    server.wait_for_line(mark, &["failed to load plugin", "fixture"], RELOAD_TIMEOUT);
    server.assert_alive();
    assert_version(&server, V1);
    let r = server.get("/hello.py");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");

    // A good file after a failure is picked up again.
    let mark = server.log_mark();
    server.install_plugin("fixture.so", &v2);
    server.hup();
    server.wait_for_body("/fixture.py/version", V2, RELOAD_TIMEOUT);
    server.wait_for_line(mark, &["reloaded plugin fixture"], Duration::from_secs(5));
}

#[test]
fn non_elf_plugin_file_is_logged_and_not_routable() {
    let server = fixture_server();
    let mark = server.log_mark();
    server.install_plugin_bytes("junk.so", b"this is a text file, not a shared object\n");
    server.hup();
    server.wait_for_line(mark, &["failed to load plugin", "junk"], RELOAD_TIMEOUT);
    server.assert_alive();
    let r = server.get("/junk.py");
    assert_eq!(r.status_line, "HTTP/1.1 404 Not Found", "{}", r.summary());
    let r = server.get("/hello.py");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert_version(&server, V1);
}

#[test]
fn bad_plugin_file_at_startup_does_not_stop_the_server() {
    let junk = support::TempDir::new("portico-junk");
    let junk_file = junk.path().join("junk.so");
    fs::write(&junk_file, "not an ELF file\n").expect("writing junk.so");
    let server = Server::builder().plugins(&["hello"]).plugin_file("junk.so", &junk_file).start();
    server.wait_for_line(0, &["failed to load plugin", "junk"], Duration::from_secs(5));
    let r = server.get("/hello.py");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{}", r.summary());
    let r = server.get("/junk.py");
    assert_eq!(r.status_line, "HTTP/1.1 404 Not Found", "{}", r.summary());
}

#[test]
fn adding_a_plugin_file_makes_it_routable_and_removing_it_404s() {
    let server = Server::builder().plugins(&["hello"]).start();
    let r = server.get("/echo.py/x");
    assert_eq!(r.status_line, "HTTP/1.1 404 Not Found", "echo is not installed yet: {}", r.summary());

    server.install_plugin("echo.so", &plugin("echo"));
    server.hup();
    server.wait_for_status("/echo.py/x", 200, RELOAD_TIMEOUT);
    let doc = server.get("/echo.py/x").json();
    assert_eq!(doc["path_info"], "/x", "{doc}");

    server.remove_plugin("echo.so");
    server.hup();
    server.wait_for_status("/echo.py/x", 404, RELOAD_TIMEOUT);
    let r = server.get("/hello.py");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{}", r.summary());
}

#[test]
fn sighup_without_changes_keeps_serving_the_same_version() {
    let server = fixture_server();
    for i in 0..5 {
        server.hup();
        let r = server.get("/hello.py");
        assert_eq!(r.status_line, "HTTP/1.1 200 OK", "after SIGHUP #{i}: {}", r.summary());
        assert_version(&server, V1);
    }
    assert!(!server.has_log_line(0, &["failed to load plugin"]), "{}", server.context());
    server.assert_alive();
}

#[test]
fn abi_mismatch_plugin_is_refused_at_startup() {
    // A plugin built against portico-api 0.1 (before this host's 0.2) and one built against
    // a later 0.3: each refused with one line naming the plugin and both versions.
    let (old, next) = (support::abi_old(), support::abi_next());
    let server =
        Server::builder().plugins(&["hello"]).plugin_file("abi_old.so", &old).plugin_file("abi_next.so", &next).start();
    let line = server.wait_for_line(0, &["refused", "incompatible portico-api", "abi_old"], Duration::from_secs(5));
    assert!(line.contains("0.1.0") && line.contains(support::API_VERSION), "both versions named: {line}");
    let line = server.wait_for_line(0, &["refused", "incompatible portico-api", "abi_next"], Duration::from_secs(5));
    assert!(line.contains("0.3.0") && line.contains(support::API_VERSION), "both versions named: {line}");
    for path in ["/abi_old.py", "/abi_next.py"] {
        let r = server.get(path);
        assert_eq!(r.status_line, "HTTP/1.1 404 Not Found", "a refused plugin must not be routable: {}", r.summary());
    }
    let r = server.get("/hello.py");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{}", r.summary());
    assert_eq!(r.text(), "Hello, world!\n");
}

#[test]
fn abi_mismatch_plugin_is_refused_on_reload() {
    let old = support::abi_old();
    let server = Server::builder().plugins(&["hello"]).start();
    let mark = server.log_mark();
    server.install_plugin("abi_old.so", &old);
    server.hup();
    server.wait_for_line(mark, &["refused", "incompatible portico-api", "abi_old"], RELOAD_TIMEOUT);
    server.assert_alive();
    let r = server.get("/abi_old.py");
    assert_eq!(r.status_line, "HTTP/1.1 404 Not Found", "{}", r.summary());
    let r = server.get("/hello.py");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{}", r.summary());
}

/// Reads `VmRSS` and `RssAnon` (KiB) of a process from /proc.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/PID/status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// Libraries are never unloaded (ARCHITECTURE.md, "Reload"): this measures what each reload
/// keeps, and bounds it so a regression (say, copying plugin data per reload) shows.
#[test]
fn reload_memory_cost_is_measured_and_bounded() {
    let v1 = plugin("fixture");
    let v2 = fixture_v2();
    let server = fixture_server();
    assert_version(&server, V1);
    // Warm up: one round trip of each version so first-use allocations are not counted.
    for (src, body) in [(&v2, V2), (&v1, V1)] {
        server.install_plugin("fixture.so", src);
        server.hup();
        server.wait_for_body("/fixture.py/version", body, RELOAD_TIMEOUT);
    }
    let (rss0, anon0) = rss_kib(server.pid());
    const RELOADS: u64 = 20;
    for i in 0..RELOADS {
        let (src, body) = if i % 2 == 0 { (&v2, V2) } else { (&v1, V1) };
        server.install_plugin("fixture.so", src);
        server.hup();
        server.wait_for_body("/fixture.py/version", body, RELOAD_TIMEOUT);
    }
    let (rss1, anon1) = rss_kib(server.pid());
    let per_rss = rss1.saturating_sub(rss0) / RELOADS;
    let per_anon = anon1.saturating_sub(anon0) / RELOADS;
    eprintln!(
        "reload memory: VmRSS {rss0} -> {rss1} KiB (+{per_rss} KiB/reload), RssAnon {anon0} -> {anon1} KiB \
         (+{per_anon} KiB/reload) over {RELOADS} reloads of a {} KiB debug plugin",
        std::fs::metadata(&v1).map(|m| m.len() / 1024).unwrap_or(0)
    );
    assert!(per_anon < 1024, "each reload keeps {per_anon} KiB of anonymous memory (expected well under 1 MiB)");
    assert!(per_rss < 8 * 1024, "each reload keeps {per_rss} KiB of RSS (expected a few MiB at most)");
}

/// A plugin's `init` runs once at load (configuration comes later: an empty table for now);
/// an `init` that fails keeps that plugin out and the server up.
#[test]
fn plugin_init_runs_at_load_and_a_failing_init_refuses_the_plugin() {
    let server = Server::builder().plugins(&["fixture", "hello"]).start();
    server.wait_for_log("fixture: init with 0 bytes of configuration", Duration::from_secs(5));
    assert_eq!(server.get("/fixture.py/version").status, 200);

    let server = Server::builder().plugins(&["fixture", "hello"]).env("FIXTURE_INIT_FAIL", "1").start();
    server.wait_for_log("init failed: FIXTURE_INIT_FAIL is set", Duration::from_secs(5));
    assert_eq!(server.get("/fixture.py/version").status, 404);
    assert_eq!(server.get("/hello.py").status, 200);
}

/// A SIGHUP `stat`s only the plugin files inotify watches name (`plugin/scan.rs`). The
/// changes below raise no event in the plugins directory, and must still be reloaded: a
/// symbolic link's target replaced elsewhere, a hard-linked file rewritten through its other
/// name (seen by the file's own watch), and the directory swapped behind its path. The
/// servers log their scans, so a reload that found the change without the watch (a full
/// scan) fails the test: what is tested is the watched path's fallbacks.
#[test]
fn changes_that_raise_no_event_in_the_plugins_directory_are_reloaded() {
    let v2 = fixture_v2();
    let v2_bytes = fs::read(&v2).expect("reading fixture v2");
    let debug = ["--log-level", "info,portico::plugin::scan=debug"];
    #[track_caller]
    fn reload_to_v2(server: &Server, how: &str) {
        let mark = server.log_mark();
        server.hup();
        server.wait_for_body("/fixture.py/version", V2, RELOAD_TIMEOUT);
        let line = server.wait_for_line(mark, &["plugins scan:"], Duration::from_secs(5));
        assert!(
            line.contains("watched"),
            "{how}: the reload's scan was not a watched one (is the test directory on a local filesystem?){}",
            server.context()
        );
    }

    {
        // A symbolic link through a link outside (`current`) that is re-pointed from `r1/` to
        // `r2/`: no inode the server watches changes, only the link's `stat` tells.
        let server = Server::builder()
            .plugins(&["hello"])
            .args(debug)
            .before_start(|dir| {
                fs::create_dir_all(dir.join("r1")).expect("creating r1/");
                support::install_file(&plugin("fixture"), &dir.join("r1/fixture.so"));
                std::os::unix::fs::symlink("r1", dir.join("current")).expect("linking current -> r1");
                std::os::unix::fs::symlink(dir.join("current/fixture.so"), dir.join("plugins/fixture.so"))
                    .expect("linking plugins/fixture.so");
            })
            .start();
        assert_version(&server, V1);
        let root = server.root_dir();
        fs::create_dir_all(root.join("r2")).expect("creating r2/");
        support::install_file(&v2, &root.join("r2/fixture.so"));
        std::os::unix::fs::symlink("r2", root.join("current.new")).expect("linking current.new -> r2");
        fs::rename(root.join("current.new"), root.join("current")).expect("re-pointing current at r2");
        reload_to_v2(&server, "symbolic link");
    }
    {
        // A hard link made outside after start-up, through which the file is rewritten in
        // place.
        let server = Server::builder().plugins(&["hello", "fixture"]).args(debug).start();
        assert_version(&server, V1);
        let root = server.root_dir();
        fs::create_dir_all(root.join("outside")).expect("creating outside/");
        fs::hard_link(root.join("plugins/fixture.so"), root.join("outside/fixture.so"))
            .expect("linking outside/fixture.so");
        fs::write(root.join("outside/fixture.so"), &v2_bytes).expect("rewriting outside/fixture.so");
        reload_to_v2(&server, "hard link");
    }
    {
        // `plugins` is a symbolic link to `v1/`, re-pointed at `v2/` (nothing changes in `v1/`).
        let server = Server::builder()
            .plugins(&["hello", "fixture"])
            .args(debug)
            .before_start(|dir| {
                fs::rename(dir.join("plugins"), dir.join("v1")).expect("moving plugins/ to v1/");
                std::os::unix::fs::symlink("v1", dir.join("plugins")).expect("linking plugins -> v1");
            })
            .start();
        assert_version(&server, V1);
        let root = server.root_dir();
        fs::create_dir_all(root.join("v2")).expect("creating v2/");
        support::install_file(&plugin("hello"), &root.join("v2/hello.so"));
        support::install_file(&v2, &root.join("v2/fixture.so"));
        std::os::unix::fs::symlink("v2", root.join("plugins.new")).expect("linking plugins.new -> v2");
        fs::rename(root.join("plugins.new"), root.join("plugins")).expect("re-pointing plugins at v2");
        let mark = server.log_mark();
        server.hup();
        server.wait_for_body("/fixture.py/version", V2, RELOAD_TIMEOUT);
        assert!(server.has_log_line(mark, &["plugins scan:", "a full scan"]), "{}", server.context());
        assert_eq!(server.get("/hello.py").status, 200, "{}", server.context());
    }
}

/// A plugin whose `init` never returns, printing to stdout all the while, is timed out by
/// its test load (`--worker-ready-timeout`) like one that hangs quietly, and refused; the
/// old version serves on.
#[test]
fn a_test_load_that_prints_without_end_is_timed_out() {
    let (_dir, path) = support::config_file("[plugin.fixture]\n");
    let server = Server::builder()
        .plugins(&["hello", "fixture"])
        .args(["--config".as_ref(), path.as_os_str()])
        .args(["--worker-ready-timeout", "2"])
        .start();
    assert_version(&server, V1);
    fs::write(&path, "[plugin.fixture]\nchatter = true\n").expect("writing the configuration");
    let mark = server.log_mark();
    server.hup();
    server.wait_for_line(mark, &["reload refused", "did not finish loading within 2.0 s"], Duration::from_secs(10));
    assert_version(&server, V1);
}
