//! What an operator meets first (issue 15): start-up errors in one plain line with the path
//! tried and no backtrace, the forms `--bind` takes, `--threads 0` refused, `portico check`
//! failing on a table for a plugin that is not there and giving one error per mistake, its own
//! `--help`, and an error log without colour codes when it is not a terminal.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Server, TempDir};

fn portico() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portico"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PORTICO_") || key == "NO_COLOR" {
            cmd.env_remove(key);
        }
    }
    cmd
}

#[test]
fn a_start_up_error_is_one_plain_line_with_the_absolute_path_and_no_backtrace() {
    let dir = TempDir::new("portico-operator");
    std::fs::write(dir.path().join("README.md"), "not a directory").unwrap();
    for (docroot, why) in [("missing", "No such file"), ("README.md", "is not a directory")] {
        for workers in ["0", "2"] {
            let out = portico()
                .current_dir(dir.path())
                .args(["--docroot", docroot, "--bind", "127.0.0.1:0", "--workers", workers])
                .env("RUST_BACKTRACE", "1")
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            let tried = dir.path().join(docroot);
            assert_eq!(out.status.code(), Some(1), "{docroot}, workers {workers}: {err}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
            assert!(err.starts_with("portico: error: docroot ") && err.contains(&*tried.to_string_lossy()), "{err}");
            assert!(err.contains(why), "{err}");
            assert!(!err.contains("backtrace") && !err.contains("Caused by"), "{err}");
        }
    }
    let out = portico().args(["--threads", "0"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("at least 1"), "{err}");
}

/// Starts portico with `bind` and no colour settings, returns it with the address it printed.
fn start_with_bind(bind: &str) -> (std::process::Child, String, BufReader<std::process::ChildStderr>) {
    let docroot = support::workspace_root().join("html");
    let mut child = portico()
        .args(["--bind", bind, "--workers", "0", "--access-log", "off", "--plugins", "/nonexistent-plugins"])
        .arg("--docroot")
        .arg(&docroot)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "portico exited before listening");
        assert!(!line.contains('\x1b'), "an error log that is not a terminal has no escape codes: {line:?}");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.trim().to_owned();
        }
    };
    (child, addr, stderr)
}

fn get(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn bind_takes_a_host_name_and_a_bare_port() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for (bind, expect) in
        [(format!("localhost:{port}"), format!("127.0.0.1:{port}")), (format!(":{port}"), format!("0.0.0.0:{port}"))]
    {
        let (mut child, addr, _stderr) = start_with_bind(&bind);
        assert_eq!(addr, expect, "--bind {bind}");
        assert!(get(&format!("127.0.0.1:{port}")).starts_with("HTTP/1.1 200"), "--bind {bind} serves");
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = portico().args(["--bind", "no such host:80", "--print-config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOST:PORT"), "the forms are named");
}

fn check(dir: &TempDir, config: &str, plugins: &[&str]) -> (i32, String) {
    let path = dir.path().join("portico.toml");
    std::fs::write(&path, config).unwrap();
    let plugins_dir = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins_dir).unwrap();
    for p in plugins {
        support::install_file(&support::plugin(p), &plugins_dir.join(format!("{p}.so")));
    }
    let out = portico()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .arg("--plugins")
        .arg(&plugins_dir)
        .arg("--docroot")
        .arg(support::workspace_root().join("html"))
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn check_fails_on_a_table_for_a_missing_plugin_and_gives_one_error_per_mistake() {
    let dir = TempDir::new("portico-check-typo");
    let (code, out) =
        check(&dir, "[plugin.hello]\n\n[plugin.ip_filtr]\nallow = [\"10.0.0.0/8\"]\n", &["hello", "ip_filter"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error:") && out.contains("portico.toml:3:") && out.contains("no plugin ip_filtr"), "{out}");
    let dir = TempDir::new("portico-check-cidr");
    // The bad value is on line 4, three lines below the table's header.
    let config = "[plugin.ip_filter]\n# who may call /api\ndeny = []\nallow = [\"127.0.0.1/33\"]\n\n[[mount]]\nprefix = \"/api\"\napp = \"hello\"\nmiddleware = [\"ip_filter\"]\n";
    let (code, out) = check(&dir, config, &["hello", "ip_filter"]);
    assert_eq!(code, 1, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one mistake, one error: {out}");
    assert!(errors[0].contains("portico.toml:4:1: plugin ip_filter refused [plugin.ip_filter] in its init"), "{out}");
    assert!(errors[0].contains("127.0.0.1/33"), "{out}");
    // Starting the server says the same in one line, exit status 2, with or without a master.
    for workers in ["0", "1"] {
        let out = portico()
            .args(["--workers", workers, "--bind", "127.0.0.1:0", "--config"])
            .arg(dir.path().join("portico.toml"))
            .arg("--plugins")
            .arg(dir.path().join("plugins"))
            .arg("--docroot")
            .arg(support::workspace_root().join("html"))
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let error = support::single_error_line(&out, 2, &format!("--workers {workers}"));
        assert!(error.contains("portico.toml:4:1: plugin ip_filter refused"), "--workers {workers}: {error}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("is loaded"), "--workers {workers}: {stderr}");
    }
    let out = portico().args(["check", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && help.contains("Usage: portico check"), "{help}");
    let out = portico().arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("portico check"), "--help names the subcommand");
}

#[test]
fn the_status_page_lists_plugin_files_that_do_not_serve_and_why() {
    let junk = TempDir::new("portico-junk-status");
    let junk_file = junk.path().join("junk.so");
    std::fs::write(&junk_file, "not an ELF file\n").unwrap();
    // Alone: refused at start, and still listed after a SIGHUP that does not retry it.
    let server = support::Server::builder().plugins(&["hello"]).plugin_file("junk.so", &junk_file).start();
    let listed = |server: &support::Server| {
        let status = server.get("/_portico/status?format=json").json();
        let lines: Vec<String> = status["refused_plugins"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        lines.iter().any(|l| l.contains("junk.so") && l.contains("not a loadable shared library"))
    };
    assert!(listed(&server), "{}", server.get("/_portico/status?format=json").text());
    let mark = server.log_mark();
    server.hup();
    server.wait_for_line(mark, &["reload"], Duration::from_secs(10));
    assert!(listed(&server), "still refused after a reload that did not retry it");
    let html = server.get("/_portico/status").text();
    assert!(html.contains("Plugins not serving") && html.contains("junk.so"), "the HTML page too");
    drop(server);
    // Under a master: its record says what the generation's test load refused.
    let server = support::Server::builder()
        .plugins(&["hello"])
        .plugin_file("junk.so", &junk_file)
        .args(["--workers", "2"])
        .start();
    let status = server.get("/_portico/status?format=json").json();
    let refused = status["processes"]["master"]["refused"].to_string();
    assert!(refused.contains("junk"), "{status}");
}

/// At start and on SIGHUP (one that also meets a refused file) a `[plugin.NAME]` table
/// without its plugin file is a warning at the table's line.
#[test]
fn a_table_for_a_missing_plugin_is_a_warning_at_start_and_on_reload() {
    let dir = TempDir::new("portico-unused-table");
    let config = dir.path().join("portico.toml");
    std::fs::write(&config, "[plugin.hello]\n\n[plugin.ip_filtr]\nallow = []\n").unwrap();
    let server = Server::builder().plugins(&["hello"]).args(["--config".as_ref(), config.as_os_str()]).start();
    server.wait_for_line(0, &["portico.toml:3:1", "no plugin ip_filtr"], Duration::from_secs(5));
    server.install_plugin_bytes("broken.so", b"not a library");
    let mark = server.log_mark();
    server.hup();
    server.wait_for_line(mark, &["broken.so", "not a loadable shared library"], Duration::from_secs(10));
    server.wait_for_line(mark, &["portico.toml:3:1", "no plugin ip_filtr"], Duration::from_secs(10));
    assert!(!server.stderr_text().contains("no plugin hello"), "{}", server.stderr_text());
}
