//! The configuration file: precedence (flag > environment > file > default), `--print-config`,
//! mounts (SCRIPT_NAME / PATH_INFO, longest prefix, `/NAME.py` hidden for mounted plugins),
//! per-plugin settings handed to `init`, errors with line and column, and SIGHUP reloading
//! the file atomically (a bad file keeps the old configuration serving).

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{Server, TempDir};

fn write_config(dir: &TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("portico.toml");
    support::install_bytes(text.as_bytes(), &path);
    path
}

fn print_config(config: &Path, flags: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portico"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PORTICO_") {
            cmd.env_remove(key);
        }
    }
    cmd.arg("--config").arg(config).args(flags).arg("--print-config").envs(env.iter().copied());
    let out = cmd.output().expect("running portico --print-config");
    assert!(out.status.success(), "portico --print-config failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn line<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap_or_else(|| panic!("no {key} in:\n{text}"))
}

#[test]
fn flag_beats_environment_beats_file_beats_default() {
    let dir = TempDir::new("portico-config");
    let config = write_config(
        &dir,
        "[server]\nkeep_alive_timeout = 7\nheader_timeout = 12\nbody_timeout = 13\ndocroot = \"site\"\ndir_listing = true\n",
    );
    let text = print_config(
        &config,
        &["--keep-alive-timeout", "9"],
        &[("PORTICO_KEEP_ALIVE_TIMEOUT", "8"), ("PORTICO_HEADER_TIMEOUT", "21")],
    );
    assert_eq!(line(&text, "keep_alive_timeout"), "keep_alive_timeout = 9", "flag wins:\n{text}");
    assert_eq!(line(&text, "header_timeout"), "header_timeout = 21", "environment beats file:\n{text}");
    assert_eq!(line(&text, "body_timeout"), "body_timeout = 13", "file beats default:\n{text}");
    assert_eq!(line(&text, "send_timeout"), "send_timeout = 30", "default:\n{text}");
    assert_eq!(line(&text, "dir_listing"), "dir_listing = true", "{text}");
    let docroot = dir.path().join("site");
    assert_eq!(
        line(&text, "docroot"),
        format!("docroot = {:?}", docroot.to_string_lossy()),
        "relative paths are relative to the file:\n{text}"
    );
}

#[test]
fn an_invalid_file_at_start_names_line_and_column_and_exits_2() {
    let dir = TempDir::new("portico-config");
    for (text, needle) in [
        ("[server]\nkeep_alive_timeout = \"soon\"\n", ":2:22"),
        ("[server]\nno_such_setting = 1\n", "no_such_setting"),
        ("[[mount]]\nprefix = \"api/\"\napp = \"hello\"\n", ":2:10"),
        ("[[mount]]\nprefix = \"/api\"\napp = \"hello\"\nmiddleware = [\"no/such\"]\n", ":4:15"),
        ("[server]\nbind = [\"nonsense\"]\n", "--bind"),
        ("[[mount]]\nprefix = \"/x\"\n", "needs app"),
        ("[[mount]]\nprefix = \"/x\"\napp = \"hello\"\nstatic = true\n", "either app or static"),
        ("[server]\nthreads = 0\n", "threads"),
    ] {
        let config = write_config(&dir, text);
        let out = Command::new(env!("CARGO_BIN_EXE_portico"))
            .arg("--config")
            .arg(&config)
            .arg("--print-config")
            .output()
            .expect("running portico");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {stderr}");
        assert!(stderr.contains(needle), "{text:?}: the error should mention {needle:?}: {stderr}");
    }
}

fn echo_mounted(dir: &TempDir, extra: &str) -> Server {
    let config = write_config(
        dir,
        &format!(
            "[[mount]]\nprefix = \"/api\"\napp = \"echo\"\n\n[[mount]]\nprefix = \"/api/v2\"\napp = \"fixture\"\n\n\
             [plugin.fixture]\ngreeting = \"hi\"\n{extra}"
        ),
    );
    Server::builder().plugins(&["echo", "fixture", "hello"]).args(["--config".as_ref(), config.as_os_str()]).start()
}

#[test]
fn mounts_set_script_name_and_path_info_and_hide_name_py() {
    let dir = TempDir::new("portico-config");
    let server = echo_mounted(&dir, "");
    let r = server.get("/api/a%20b/c?q=1");
    assert_eq!(r.status, 200, "{}", r.summary());
    let j = r.json();
    assert_eq!(j["script_name"], "/api", "{j}");
    assert_eq!(j["path_info"], "/a b/c", "{j}");
    assert_eq!(j["query_string"], "q=1", "{j}");
    let j = server.get("/api").json();
    assert_eq!((j["script_name"].as_str(), j["path_info"].as_str()), (Some("/api"), Some("")), "{j}");
    // Longest prefix wins.
    let r = server.get("/api/v2/version");
    assert_eq!(r.text(), "fixture v1\n", "{}", r.summary());
    // Segment boundary: /apix is not under /api.
    assert_eq!(server.get("/apix").status, 404);
    // A mounted plugin is reachable only through its mount; others keep /NAME.py.
    assert_eq!(server.get("/echo.py/x").status, 404, "/echo.py must not bypass the mount");
    assert_eq!(server.get("/hello.py").text(), "Hello, world!\n");
    // The [plugin.fixture] table reached the fixture's init (it logs the byte count): its own
    // line, `greeting = "hi"` (16 bytes), after 9 empty ones (it is line 10 of the file).
    server.wait_for_log("fixture: init with 25 bytes of configuration", Duration::from_secs(5));
}

#[test]
fn a_root_mount_has_an_empty_script_name() {
    let dir = TempDir::new("portico-config");
    let config = write_config(&dir, "[[mount]]\nprefix = \"/\"\napp = \"echo\"\n");
    let server = Server::builder().plugins(&["echo"]).args(["--config".as_ref(), config.as_os_str()]).start();
    let j = server.get("/x/y").json();
    assert_eq!((j["script_name"].as_str(), j["path_info"].as_str()), (Some(""), Some("/x/y")), "{j}");
}

#[test]
fn sighup_reloads_the_file_and_a_bad_file_keeps_the_old_one_serving() {
    let dir = TempDir::new("portico-config");
    let server = echo_mounted(&dir, "");
    let config = dir.path().join("portico.toml");
    assert_eq!(server.get("/api/x").status, 200);

    // Not TOML: nothing changes, the error says where.
    let mark = server.log_mark();
    support::install_bytes(b"[[mount]]\nprefix = \"/new\"\napp = \"echo\"\nbroken = [\n", &config);
    server.hup();
    server.wait_for_line(mark, &["configuration not reloaded", "line 4"], Duration::from_secs(5));
    assert_eq!(server.get("/api/x").status, 200, "the old mount keeps serving");
    assert_eq!(server.get("/new/x").status, 404);

    // Valid TOML naming a plugin that is not there: refused with line and column.
    let mark = server.log_mark();
    support::install_bytes(b"[[mount]]\nprefix = \"/new\"\napp = \"nosuch\"\n", &config);
    server.hup();
    server.wait_for_line(mark, &["reload refused", "portico.toml:3:7", "nosuch"], Duration::from_secs(5));
    assert_eq!(server.get("/api/x").status, 200, "the old mount keeps serving");

    // A good file: the new mount serves, the old prefix is gone.
    let mark = server.log_mark();
    support::install_bytes(b"[[mount]]\nprefix = \"/new\"\napp = \"echo\"\n", &config);
    server.hup();
    server.wait_for_line(mark, &["configuration", "reloaded"], Duration::from_secs(5));
    assert_eq!(server.get("/new/x").json()["script_name"], "/new");
    assert_eq!(server.get("/api/x").status, 404);
    assert!(fs::metadata(&config).is_ok());
}

#[test]
fn a_changed_plugin_table_loads_a_fresh_copy_with_the_new_settings() {
    let dir = TempDir::new("portico-config");
    let server = echo_mounted(&dir, "");
    server.wait_for_log("fixture: init with 25 bytes of configuration", Duration::from_secs(5));
    let config = dir.path().join("portico.toml");
    let text = fs::read_to_string(&config).expect("reading the config");
    let mark = server.log_mark();
    support::install_bytes(text.replace("greeting = \"hi\"", "greeting = \"hello!\"").as_bytes(), &config);
    server.hup();
    server.wait_for_line(mark, &["fixture: init with 29 bytes of configuration"], Duration::from_secs(5));
    server.wait_for_line(mark, &["reloaded plugin", "fixture"], Duration::from_secs(5));
    assert_eq!(server.get("/api/v2/version").text(), "fixture v1\n");
}

#[test]
fn a_plugin_refusing_its_new_settings_refuses_the_whole_reload() {
    let dir = TempDir::new("portico-config");
    let config = write_config(
        &dir,
        "[[mount]]\nprefix = \"/api\"\napp = \"dispatch\"\nmiddleware = [\"ip_filter\"]\n\n\
         [plugin.ip_filter]\nallow = [\"127.0.0.0/8\"]\n",
    );
    let server = Server::builder()
        .plugins(&["dispatch", "ip_filter", "hello"])
        .args(["--config".as_ref(), config.as_os_str()])
        .start();
    assert_eq!(server.get("/api/dog").text(), "This is dog!\n");
    // New mounts (hello behind ip_filter at /h) and a bad CIDR: nothing of it may apply — not
    // the new mount with the old filter, not the old mount with a new set.
    let mark = server.log_mark();
    support::install_bytes(
        b"[[mount]]\nprefix = \"/api\"\napp = \"dispatch\"\nmiddleware = [\"ip_filter\"]\n\n\
          [[mount]]\nprefix = \"/h\"\napp = \"hello\"\nmiddleware = [\"ip_filter\"]\n\n\
          [plugin.ip_filter]\nallow = [\"10.0.0.0/33\"]\n",
        &config,
    );
    server.hup();
    server.wait_for_line(mark, &["reload refused", "10.0.0.0/33"], Duration::from_secs(5));
    assert_eq!(server.get("/api/dog").text(), "This is dog!\n", "the old pipeline keeps serving");
    assert_eq!(server.get("/h").status, 404, "the new mount did not apply");
    assert_eq!(server.get("/hello.py").text(), "Hello, world!\n", "hello is still unmounted");
}

#[test]
fn an_unknown_log_level_is_refused_in_one_line_and_gunicorns_words_are_understood() {
    // Before, `--log-level verbose` (or `warning`) was taken for a tracing target and every
    // line, "listening" included, was silenced.
    for bad in ["verbose", "portico=loud"] {
        let out = Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(["--log-level", bad, "--bind", "127.0.0.1:0", "--workers", "0"])
            .output()
            .expect("running portico");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("error, warn, info, debug, trace, off"), "{bad}: the valid levels are named: {err}");
    }
    let dir = TempDir::new("portico-log-level");
    let config = write_config(&dir, "");
    let text = print_config(&config, &["--log-level", "warning"], &[]);
    assert_eq!(line(&text, "log_level"), "log_level = \"warn\"");
    let text = print_config(&config, &["--log-level", "portico=critical,info"], &[]);
    assert_eq!(line(&text, "log_level"), "log_level = \"portico=error,info\"");
}

#[test]
fn portico_check_into_a_closed_pipe_ends_quietly() {
    let dir = TempDir::new("portico-check-pipe");
    let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .arg("check")
        .arg("--plugins")
        .arg(dir.path())
        .arg("--docroot")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running portico check");
    drop(child.stdout.take()); // `| head -0`: the reader is gone before the first line
    let out = child.wait_with_output().expect("waiting for portico check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}
