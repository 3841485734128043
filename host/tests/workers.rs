//! The process model (`--workers N`): a master that never loads a plugin, worker processes that
//! may crash alone, reload by generation, Unix sockets and inherited (systemd-style) sockets,
//! SIGTTIN/SIGTTOU, recycling. Every test starts the real binary and talks over real sockets;
//! the rest of the suite pins `--workers 0` (see support::ServerBuilder::start).

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{Server, poll_until, request_bytes};

/// One process-model test at a time: each runs several processes and a timed drain, and on
/// two shared cores ten of them at once starve a client long enough to hit the end of an idle
/// connection's grace (a race no server can close; see ARCHITECTURE.md, "Generations").
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The pids of `parent`'s child processes (from /proc).
fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid ...; comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// Resident memory of a process in KiB (VmRSS).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn wait_workers(server: &Server, n: usize) -> Vec<u32> {
    poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let c = children(server.pid());
        (c.len() == n).then_some(c)
    })
    .unwrap_or_else(|| panic!("expected {n} worker processes, have {:?}{}", children(server.pid()), server.context()))
}

/// The pid of the worker that answered on `conn` (the fixture's `/pid`).
fn served_by(conn: &mut support::Conn) -> u32 {
    conn.send(&request_bytes("GET", "/fixture.py/pid", false));
    let r = conn.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    r.text().trim().parse().expect("a pid")
}

fn workers(n: usize) -> support::ServerBuilder {
    Server::builder().plugins(&["hello", "fixture", "echo"]).args(["--workers", &n.to_string()])
}

#[test]
fn a_crash_in_a_request_takes_only_its_worker_and_is_replaced() {
    let _serial = serial();
    for (path, signal) in [("/fixture.py/segfault", "SIGSEGV"), ("/fixture.py/abort", "SIGABRT")] {
        let server = workers(2).start();
        let before = wait_workers(&server, 2);
        // Keep-alive connections spread over both workers (the kernel decides which accepts).
        let mut conns: Vec<(support::Conn, u32)> = Vec::new();
        let found_both = poll_until(Duration::from_secs(10), Duration::ZERO, || {
            let mut c = server.connect();
            let pid = served_by(&mut c);
            conns.push((c, pid));
            (conns.iter().any(|(_, p)| *p == before[0]) && conns.iter().any(|(_, p)| *p == before[1])).then_some(())
        });
        assert!(
            found_both.is_some(),
            "connections never reached both workers: {:?}",
            conns.iter().map(|c| c.1).collect::<Vec<_>>()
        );
        let mark = server.log_mark();
        let mut crasher = server.connect();
        let victim = served_by(&mut crasher);
        crasher.send(&request_bytes("GET", path, false));
        crasher.set_read_timeout(Duration::from_secs(5));
        assert!(crasher.try_read_response(false).is_err(), "{path} answered");
        let crashed = Instant::now();
        server.wait_for_line(
            mark,
            &[&format!("worker {victim}"), &format!("killed by {signal}")],
            Duration::from_secs(5),
        );
        let r = server.get("/hello.py");
        assert_eq!(r.status, 200, "{}", r.summary());
        assert!(
            crashed.elapsed() < Duration::from_secs(1),
            "/hello.py answered {:?} after the crash",
            crashed.elapsed()
        );
        let after = wait_workers(&server, 2);
        assert!(!after.contains(&victim), "{victim} still listed: {after:?}");
        // The other worker's keep-alive connections are untouched.
        let mut others = 0;
        for (c, pid) in conns.iter_mut().filter(|(_, p)| *p != victim) {
            assert_eq!(served_by(c), *pid, "a connection of the surviving worker moved");
            others += 1;
        }
        assert!(others > 0);
        server.assert_alive();
    }
}

#[test]
fn a_generation_whose_init_crashes_or_hangs_is_discarded_and_the_old_one_serves() {
    let _serial = serial();
    let (_dir, path) = support::config_file("[plugin.fixture]\nlevel = 1\n");
    let server = workers(1).args(["--config".as_ref(), path.as_os_str()]).args(["--worker-ready-timeout", "2"]).start();
    let first = wait_workers(&server, 1);
    for bad in ["crash = true", "hang = true", "chatter = true"] {
        std::fs::write(&path, format!("[plugin.fixture]\n{bad}\n")).unwrap();
        let mark = server.log_mark();
        server.hup();
        server.wait_for_line(
            mark,
            &["generation", "refused", "the current one keeps serving", "fixture"],
            Duration::from_secs(10),
        );
        let r = server.get("/fixture.py/pid");
        assert_eq!(r.text().trim(), first[0].to_string(), "the old worker no longer serves");
        assert_eq!(children(server.pid()), first);
    }
    // A good change goes through: a new worker serves.
    std::fs::write(&path, "[plugin.fixture]\nlevel = 2\n").unwrap();
    let mark = server.log_mark();
    server.hup();
    server.wait_for_line(mark, &["generation", "serves"], Duration::from_secs(10));
    let now = wait_workers(&server, 1);
    assert_ne!(now, first);
    assert_eq!(server.get("/fixture.py/pid").text().trim(), now[0].to_string());
}

/// Keep-alive clients in a loop; a response with `Connection: close` makes the client
/// reconnect (allowed); anything else that is not a complete response is a failure.
fn load(
    addr: std::net::SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicU64>, Vec<std::thread::JoinHandle<Vec<String>>>) {
    let done = Arc::new(AtomicU64::new(0));
    let handles = (0..clients)
        .map(|i| {
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let mut conn = support::Conn::open(addr);
                while !stop.load(Ordering::Relaxed) {
                    let path = if i % 2 == 0 { "/hello.py" } else { "/fixture.py/pid" };
                    if let Err(e) = conn.try_send(&request_bytes("GET", path, false)) {
                        failures.push(format!("send: {e}"));
                        conn = support::Conn::open(addr);
                        continue;
                    }
                    match conn.try_read_response(false) {
                        Ok(r) if r.status == 200 && r.complete => {
                            done.fetch_add(1, Ordering::Relaxed);
                            if r.has_token("Connection", "close") {
                                conn = support::Conn::open(addr);
                            }
                        }
                        Ok(r) => failures.push(r.summary()),
                        Err(e) => {
                            failures.push(format!("read: {e}"));
                            conn = support::Conn::open(addr);
                        }
                    }
                }
                failures
            })
        })
        .collect();
    (done, handles)
}

#[test]
fn twenty_generation_reloads_under_keep_alive_load_fail_no_request() {
    let _serial = serial();
    let server = workers(2).start();
    wait_workers(&server, 2);
    let stop = Arc::new(AtomicBool::new(false));
    let (done, handles) = load(server.addr(), 4, Arc::clone(&stop));
    for i in 0..20 {
        let mark = server.log_mark();
        server.hup();
        server.wait_for_line(mark, &[&format!("generation {} serves", i + 2)], Duration::from_secs(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let n = done.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {n} requests failed: {:?}{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        server.context()
    );
    assert!(n > 100, "only {n} requests in 20 reloads");
    wait_workers(&server, 2);
}

#[test]
fn memory_of_the_tree_is_returned_with_old_generations() {
    let _serial = serial();
    let server = workers(1).start();
    let total = |s: &Server| rss_kib(s.pid()) + children(s.pid()).iter().map(|&p| rss_kib(p)).sum::<u64>();
    let reload = |s: &Server, n: u64| {
        let mark = s.log_mark();
        s.hup();
        s.wait_for_line(mark, &[&format!("generation {n} serves")], Duration::from_secs(20));
        // The old worker has exited.
        wait_workers(s, 1);
    };
    reload(&server, 2);
    assert_eq!(server.get("/hello.py").status, 200);
    let before = total(&server);
    for n in 3..=102 {
        reload(&server, n);
    }
    assert_eq!(server.get("/hello.py").status, 200);
    let after = total(&server);
    eprintln!("RSS of the tree: {before} KiB before, {after} KiB after 100 reloads");
    assert!(after <= before + before / 10, "RSS of the tree grew from {before} KiB to {after} KiB over 100 reloads");
}

#[test]
fn a_unix_socket_is_served_with_an_empty_remote_addr() {
    let _serial = serial();
    let dir = support::TempDir::new("portico-unix");
    let path = dir.path().join("portico.sock");
    // A leftover socket file that nothing answers on is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let bind = format!("unix:{}", path.display());
    let (_config_dir, config) =
        support::config_file("[[mount]]\nprefix = \"/api\"\napp = \"hello\"\nmiddleware = [\"ip_filter\"]\n");
    let server = Server::builder()
        .plugins(&["hello", "echo", "ip_filter"])
        .args(["--workers", "1", "--bind", "127.0.0.1:0", "--bind", &bind, "--unix-socket-mode", "0600", "--config"])
        .args([config.as_os_str()])
        .start();
    wait_workers(&server, 1);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let ask = |req: &[u8]| {
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(req).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        String::from_utf8_lossy(&out).into_owned()
    };
    let echo = ask(b"GET /echo.py HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(echo.starts_with("HTTP/1.1 200"), "{echo}");
    let json: serde_json::Value = serde_json::from_str(echo.split_once("\r\n\r\n").map_or("", |(_, b)| b)).unwrap();
    assert_eq!(json["remote_addr"], "", "REMOTE_ADDR on a Unix socket: {echo}");
    // ip_filter refuses a client without an address unless its table says allow_unix = true.
    let filtered = ask(b"GET /api/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(filtered.starts_with("HTTP/1.1 403"), "{filtered}");
    assert_eq!(server.get("/api/").status, 200, "a loopback TCP client passes");
    let status = ask(b"GET /_portico/status?format=json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 200"), "a Unix socket client is local for the status page: {status}");
    // A second server cannot take the socket while the first answers on it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["--workers", "0", "--bind", &bind, "--docroot"])
        .arg(server.docroot())
        .args(["--plugins"])
        .arg(server.plugins_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another server answers on it"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
}

#[test]
fn sockets_passed_in_listen_fds_are_served() {
    let _serial = serial();
    use command_fds::{CommandFdExt, FdMapping};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = support::TempDir::new("portico-sd");
    for d in ["docroot", "plugins"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    support::install_file(&support::plugin("hello"), &dir.path().join("plugins/hello.so"));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portico"));
    cmd.args(["--workers", "2", "--bind", "127.0.0.1:1", "--access-log", "off", "--docroot"])
        .arg(dir.path().join("docroot"))
        .arg("--plugins")
        .arg(dir.path().join("plugins"))
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http")
        .env_remove("LISTEN_PID")
        .stderr(std::process::Stdio::null());
    cmd.fd_mappings(vec![FdMapping { parent_fd: listener.into(), child_fd: 3 }]).unwrap();
    let mut child = cmd.spawn().unwrap();
    let r = poll_until(Duration::from_secs(10), Duration::from_millis(50), || support::try_get(addr, "/hello.py").ok());
    let _ = child.kill();
    let _ = child.wait();
    let r = r.expect("the inherited socket was never served");
    assert_eq!(r.text(), "Hello, world!\n");
}

#[test]
fn ttin_and_ttou_add_and_remove_a_worker() {
    let _serial = serial();
    let server = workers(2).start();
    wait_workers(&server, 2);
    server.signal(libc::SIGTTIN);
    wait_workers(&server, 3);
    // One at a time: two signals sent back to back may arrive as one.
    server.signal(libc::SIGTTOU);
    wait_workers(&server, 2);
    server.signal(libc::SIGTTOU);
    wait_workers(&server, 1);
    assert_eq!(server.get("/hello.py").status, 200);
}

#[test]
fn max_requests_replaces_a_worker_without_failing_a_request() {
    let _serial = serial();
    let server = workers(1).args(["--max-requests", "20"]).start();
    let first = wait_workers(&server, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let (done, handles) = load(server.addr(), 2, Arc::clone(&stop));
    server.wait_for_log("served", Duration::from_secs(10));
    let replaced = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let now = children(server.pid());
        (now.len() == 1 && now != first).then_some(now)
    });
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert!(replaced.is_some(), "the worker was not replaced{}", server.context());
    assert!(failures.is_empty(), "{failures:?}{}", server.context());
    assert!(done.load(Ordering::Relaxed) > 20);
}

#[test]
fn sigterm_drains_every_worker_and_the_pid_file_names_the_master() {
    let _serial = serial();
    let dir = support::TempDir::new("portico-pid");
    let pid_file = dir.path().join("portico.pid");
    let server =
        workers(2).args(["--pid-file".as_ref(), pid_file.as_os_str()]).args(["--graceful-timeout", "10"]).start();
    wait_workers(&server, 2);
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), server.pid().to_string());
    let mut slow = server.connect();
    slow.send(&request_bytes("GET", "/fixture.py/slow?ms=800", false));
    std::thread::sleep(Duration::from_millis(200));
    server.term();
    slow.set_read_timeout(Duration::from_secs(10));
    let r = slow.try_read_response(false).expect("the in-flight request was cut off");
    assert_eq!(r.text(), "slow done\n");
    assert!(r.has_token("Connection", "close"), "{}", r.summary());
    let status = server.wait_exit(Duration::from_secs(10)).expect("the master did not exit");
    assert!(status.success(), "{status}");
    assert!(!pid_file.exists(), "the pid file outlived the master");
}

#[test]
fn single_process_reload_refuses_a_plugin_whose_init_crashes() {
    let _serial = serial();
    let (_dir, path) = support::config_file("[plugin.fixture]\n");
    let server = Server::builder().plugins(&["hello", "fixture"]).args(["--config".as_ref(), path.as_os_str()]).start();
    std::fs::write(&path, "[plugin.fixture]\ncrash = true\n").unwrap();
    let mark = server.log_mark();
    server.hup();
    server.wait_for_line(
        mark,
        &["reload refused", "fixture", "test load in a child process failed"],
        Duration::from_secs(10),
    );
    server.assert_alive();
    assert_eq!(server.get("/fixture.py/version").status, 200);
}

#[test]
fn the_status_page_adds_up_every_worker_and_shows_the_tree() {
    let _serial = serial();
    let server = workers(2).start();
    let pids = wait_workers(&server, 2);
    // Enough connections that both workers serve some (each connection: one request).
    let mut served = std::collections::BTreeSet::new();
    let mut n = 0;
    while served.len() < 2 && n < 200 {
        let mut c = server.connect();
        served.insert(served_by(&mut c));
        n += 1;
    }
    assert_eq!(served.len(), 2, "{n} connections all went to one worker");
    let status = server.get("/_portico/status?format=json").json();
    let fixture = status["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "fixture").unwrap().clone();
    assert_eq!(fixture["requests"], n, "the plugin's requests across both workers: {fixture}");
    let tree = &status["processes"];
    let listed: Vec<u64> = tree["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_u64().unwrap()).collect();
    assert_eq!(listed.len(), 2, "{tree}");
    assert!(pids.iter().all(|p| listed.contains(&u64::from(*p))), "{pids:?} vs {listed:?}");
    assert_eq!(tree["master"]["pid"], server.pid());
    assert_eq!(tree["master"]["workers_died"], 0);
    // A crash shows in the record, and the counters of the dead worker are kept (from its last
    // report, at most a second old: wait for one).
    std::thread::sleep(Duration::from_millis(1200));
    let mut c = server.connect();
    c.send(&request_bytes("GET", "/fixture.py/abort", false));
    c.set_read_timeout(Duration::from_secs(5));
    assert!(c.try_read_response(false).is_err());
    wait_workers(&server, 2);
    let status = server.get("/_portico/status?format=json").json();
    let tree = &status["processes"];
    assert_eq!(tree["master"]["workers_died"], 1, "{tree}");
    assert!(tree["master"]["deaths"][0]["cause"].as_str().unwrap().contains("SIGABRT"), "{tree}");
    let fixture = status["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "fixture").unwrap().clone();
    assert!(fixture["requests"].as_u64().unwrap() >= n, "totals went down after a worker died: {fixture}");
    let html = server.get("/_portico/status").text();
    assert!(html.contains("<h2>Processes</h2>") && html.contains("killed by SIGABRT"), "{html}");
    let metrics = server.get("/_portico/metrics").text();
    assert!(metrics.contains("portico_worker_process_deaths_total 1\n"), "{metrics}");
    assert!(metrics.contains("portico_worker_processes 2\n"), "{metrics}");
}

#[test]
fn sigusr2_upgrades_the_binary_in_place_under_load() {
    use command_fds::{CommandFdExt, FdMapping};
    use std::os::unix::fs::MetadataExt;
    let _serial = serial();
    let dir = support::TempDir::new("portico-upgrade");
    for d in ["bin", "docroot", "plugins"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    for p in ["hello", "fixture"] {
        support::install_file(&support::plugin(p), &dir.path().join(format!("plugins/{p}.so")));
    }
    let exe = dir.path().join("bin/portico");
    let first_build = std::fs::read(env!("CARGO_BIN_EXE_portico")).unwrap();
    std::fs::write(&exe, &first_build).unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pid_file = dir.path().join("portico.pid");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(["--workers", "2", "--access-log", "off", "--docroot"])
        .arg(dir.path().join("docroot"))
        .arg("--plugins")
        .arg(dir.path().join("plugins"))
        .arg("--pid-file")
        .arg(&pid_file)
        .env("LISTEN_FDS", "1")
        .env_remove("LISTEN_PID")
        .stderr(std::process::Stdio::null());
    cmd.fd_mappings(vec![FdMapping { parent_fd: listener.into(), child_fd: 3 }]).unwrap();
    let mut old = cmd.spawn().unwrap();
    let read_pid = |p: &std::path::Path| std::fs::read_to_string(p).ok().and_then(|t| t.trim().parse::<u32>().ok());
    poll_until(Duration::from_secs(10), Duration::from_millis(20), || support::try_get(addr, "/hello.py").ok())
        .expect("the first master never served");
    assert_eq!(read_pid(&pid_file), Some(old.id()));
    let stop = Arc::new(AtomicBool::new(false));
    let (done, handles) = load(addr, 4, Arc::clone(&stop));
    // The second build, installed as an operator would: a new file renamed over the old.
    let mut second_build = first_build;
    second_build.extend_from_slice(b"portico second build");
    let staged = dir.path().join("bin/portico.new");
    std::fs::write(&staged, &second_build).unwrap();
    std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, &exe).unwrap();
    let new_inode = std::fs::metadata(&exe).unwrap().ino();
    kill(old.id(), libc::SIGUSR2);
    let new_pid = poll_until(Duration::from_secs(15), Duration::from_millis(20), || {
        read_pid(&pid_file).filter(|&p| p != old.id())
    })
    .expect("the pid file never named a new master");
    let oldbin = dir.path().join("portico.pid.oldbin");
    let status = poll_until(Duration::from_secs(15), Duration::from_millis(20), || old.try_wait().ok().flatten())
        .expect("the old master did not exit after the new one served");
    assert!(status.success(), "old master: {status}");
    assert!(!oldbin.exists(), "{} outlived the old master", oldbin.display());
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let exe_of_new = std::fs::metadata(format!("/proc/{new_pid}/exe")).unwrap().ino();
    assert_eq!(exe_of_new, new_inode, "the new master does not run the second build");
    assert_eq!(children(new_pid).len(), 2, "the new master's workers");
    let served = done.load(Ordering::Relaxed);
    kill(new_pid, libc::SIGTERM);
    poll_until(Duration::from_secs(15), Duration::from_millis(20), || {
        (!std::path::Path::new(&format!("/proc/{new_pid}")).exists()).then_some(())
    });
    assert!(
        failures.is_empty(),
        "{} of {served} requests failed across the upgrade: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(served > 50, "only {served} requests");
}

/// `kill(pid, sig)` to a master this test started.
fn kill(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a master this test started
    // and is still waiting for.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

#[test]
fn a_worker_over_its_memory_ceiling_or_holding_abandoned_calls_is_replaced() {
    let _serial = serial();
    // 1 MiB: every worker is over it, so each is replaced about a second after it starts.
    let server = workers(1).args(["--max-worker-memory", "1"]).start();
    let first = wait_workers(&server, 1);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", first[0])).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    assert_eq!(core.split_whitespace().nth(4), Some("0"), "workers run without core dumps: {core}");
    server.wait_for_log("over --max-worker-memory 1 MiB", Duration::from_secs(10));
    poll_until(Duration::from_secs(10), Duration::from_millis(20), || (children(server.pid()) != first).then_some(()))
        .expect("the worker over its memory ceiling was not replaced");
    assert_eq!(server.get("/hello.py").status, 200);
    drop(server);

    let server = workers(1).args(["--app-timeout", "0.2", "--max-abandoned", "1"]).start();
    let first = wait_workers(&server, 1);
    let r = server.get("/fixture.py/slow?ms=5000");
    assert_eq!(r.status, 504, "{}", r.summary());
    server.wait_for_log("abandoned past their deadline still running", Duration::from_secs(10));
    poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let now = children(server.pid());
        (now.len() == 1 && now != first).then_some(())
    })
    .expect("the worker holding an abandoned call was not replaced");
    assert_eq!(server.get("/hello.py").status, 200);
}

#[test]
fn sigterm_is_heard_while_a_single_process_reload_waits_on_a_hanging_init() {
    let _serial = serial();
    let (_dir, path) = support::config_file("[plugin.fixture]\n");
    let server = Server::builder().plugins(&["hello", "fixture"]).args(["--config".as_ref(), path.as_os_str()]).start();
    std::fs::write(&path, "[plugin.fixture]\nhang = true\n").unwrap();
    let mark = server.log_mark();
    server.hup();
    server.wait_for_line(mark, &["SIGHUP: rescanning"], Duration::from_secs(10));
    // The test load in its child hangs for --worker-ready-timeout (30 s) from here.
    let probe = poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let c = children(server.pid());
        (!c.is_empty()).then_some(c)
    })
    .expect("no test-load child");
    let asked = Instant::now();
    server.term();
    let status = server.wait_exit(Duration::from_secs(10)).expect("SIGTERM was not heard during the reload");
    assert!(status.success(), "{status}");
    assert!(asked.elapsed() < Duration::from_secs(5), "exited {:?} after SIGTERM", asked.elapsed());
    for pid in probe {
        let gone = poll_until(Duration::from_secs(3), Duration::from_millis(20), || {
            (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        });
        assert!(gone.is_some(), "the hanging test load {pid} outlived the server");
    }
}

#[test]
fn sigquit_stops_the_master_and_every_worker_at_once() {
    let _serial = serial();
    let server = workers(2).args(["--graceful-timeout", "30"]).start();
    let pids = wait_workers(&server, 2);
    let mut slow = server.connect();
    slow.send(&request_bytes("GET", "/fixture.py/slow?ms=20000", false));
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    server.signal(libc::SIGQUIT);
    server.wait_exit(Duration::from_secs(5)).expect("the master did not stop at once");
    assert!(asked.elapsed() < Duration::from_secs(4), "{:?}", asked.elapsed());
    for pid in pids {
        let gone = poll_until(Duration::from_secs(3), Duration::from_millis(20), || {
            (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        });
        assert!(gone.is_some(), "worker {pid} outlived SIGQUIT");
    }
}

#[test]
fn a_worker_restarted_after_a_crash_runs_what_its_generation_ran() {
    let _serial = serial();
    let (_dir, path) = support::config_file("[plugin.fixture]\nlevel = 1\n");
    let server = workers(1).args(["--config".as_ref(), path.as_os_str()]).start();
    let first = wait_workers(&server, 1);
    // The file changes (to settings whose init crashes) and the plugin file too; no SIGHUP.
    std::fs::write(&path, "[plugin.fixture]\ncrash = true\n").unwrap();
    server.install_plugin("fixture.so", &support::fixture_v2());
    let mut c = server.connect();
    c.send(&request_bytes("GET", "/fixture.py/abort", false));
    c.set_read_timeout(Duration::from_secs(5));
    assert!(c.try_read_response(false).is_err());
    let now = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let c = children(server.pid());
        (c.len() == 1 && c != first).then_some(c)
    })
    .expect("no replacement");
    let r = server.get("/fixture.py/version");
    assert_eq!(r.text(), "fixture v1\n", "the replacement loaded what the generation was started with");
    assert_eq!(children(server.pid()), now, "the replacement crashed: it read the changed file");
}

#[test]
fn sigterm_lets_an_old_generation_finish_its_requests() {
    let _serial = serial();
    let server = workers(1).args(["--graceful-timeout", "10"]).start();
    wait_workers(&server, 1);
    let mut slow = server.connect();
    slow.send(&request_bytes("GET", "/fixture.py/slow?ms=2000", false));
    std::thread::sleep(Duration::from_millis(200));
    let mark = server.log_mark();
    server.hup();
    server.wait_for_line(mark, &["generation 2 serves"], Duration::from_secs(10));
    // The old worker drains its slow request; a SIGTERM now must not cut it off.
    server.term();
    slow.set_read_timeout(Duration::from_secs(10));
    let r = slow.try_read_response(false).expect("the old generation's request was cut off by SIGTERM");
    assert_eq!(r.text(), "slow done\n");
    let status = server.wait_exit(Duration::from_secs(10)).expect("the master did not exit");
    assert!(status.success(), "{status}");
}

#[test]
fn a_crash_loop_backs_off_and_shows_on_the_status_page() {
    let _serial = serial();
    let server = workers(1).start();
    let mut pids = wait_workers(&server, 1);
    for _ in 0..3 {
        let mut c = server.connect();
        c.send(&request_bytes("GET", "/fixture.py/abort", false));
        c.set_read_timeout(Duration::from_secs(5));
        assert!(c.try_read_response(false).is_err());
        pids = poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
            let now = children(server.pid());
            (now.len() == 1 && now != pids).then_some(now)
        })
        .expect("no replacement");
    }
    server.wait_for_log("3 quick deaths in a row: next worker in 0.2 s", Duration::from_secs(5));
    let status = server.get("/_portico/status?format=json").json();
    let master = &status["processes"]["master"];
    assert_eq!(master["crash_streak"], 3, "{master}");
    assert_eq!(master["next_respawn_delay"], 0.2, "{master}");
    assert_eq!(master["workers_died"], 3, "{master}");
    let html = server.get("/_portico/status").text();
    assert!(html.contains("crash loop: 3 quick deaths"), "{html}");
}

#[test]
fn ctrl_c_to_the_whole_process_group_drains_the_workers() {
    let _serial = serial();
    let server = workers(2).args(["--graceful-timeout", "10"]).start();
    let pids = wait_workers(&server, 2);
    let mut slow = server.connect();
    let worker = served_by(&mut slow);
    slow.send(&request_bytes("GET", "/fixture.py/slow?ms=1500", false));
    std::thread::sleep(Duration::from_millis(200));
    // What a terminal's Ctrl-C does: SIGINT to every process of the group; the master then
    // sends each worker its own SIGTERM.
    for pid in &pids {
        kill(*pid, libc::SIGINT);
    }
    server.signal(libc::SIGINT);
    slow.set_read_timeout(Duration::from_secs(10));
    let r = slow.try_read_response(false).unwrap_or_else(|e| panic!("worker {worker}'s request was cut off: {e}"));
    assert_eq!(r.text(), "slow done\n");
    let status = server.wait_exit(Duration::from_secs(10)).expect("the master did not exit");
    assert!(status.success(), "{status}");
}
