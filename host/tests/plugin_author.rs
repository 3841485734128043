//! What a plugin author runs: `portico new` makes a crate that builds, passes its own unit
//! tests, and — through `portico install` into a running server's plugins directory, with
//! SIGHUP by pid file — is served; a library that does not load is not installed.
//!
//! The new crates build with cargo in `target/plugin-author/` (kept between runs, so only the
//! first run compiles their dependencies), pinned to the workspace's `Cargo.lock`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::{Server, TempDir, poll_until};

fn portico(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portico"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PORTICO_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(dir).args(args).output().expect("running portico")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `cargo ARGS` in the crate at `dir`, with the shared target directory; panics with cargo's
/// output when it fails.
fn cargo(dir: &Path, args: &[&str]) {
    let target = support::workspace_root().join("target").join("plugin-author");
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(dir)
        .args(args)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .output()
        .expect("running cargo");
    assert!(out.status.success(), "cargo {args:?} in {}:\n{}", dir.display(), text(&out));
}

/// `portico new NAME [extra]` in `dir`, then the crate's unit tests and a release build; the
/// built library.
fn new_and_build(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = portico(dir, &[&["new", name], extra].concat());
    assert!(out.status.success(), "{}", text(&out));
    let krate = dir.join(name);
    for file in ["Cargo.toml", "src/lib.rs", "README.md", ".gitignore"] {
        assert!(krate.join(file).is_file(), "portico new wrote no {file}: {}", text(&out));
    }
    let manifest = std::fs::read_to_string(krate.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("strip = \"debuginfo\"") && manifest.contains("panic = \"unwind\""), "{manifest}");
    // The workspace's versions: already downloaded, and what the server was tested with.
    std::fs::copy(support::workspace_root().join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();
    cargo(&krate, &["test", "--release", "--quiet"]);
    let started = Instant::now();
    cargo(&krate, &["build", "--release", "--quiet"]);
    eprintln!("{name}: release build in {:.1} s (dependencies built)", started.elapsed().as_secs_f64());
    let lib = support::workspace_root().join("target/plugin-author/release").join(format!(
        "lib{}{}",
        name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    ));
    assert!(lib.is_file(), "no {}", lib.display());
    lib
}

#[test]
fn new_then_build_then_install_serves_the_plugin() {
    let dir = TempDir::new("portico-new");
    let app = new_and_build(dir.path(), "greet-app", &[]);
    let middleware = new_and_build(dir.path(), "stamp", &["--middleware"]);
    // A second `new` over an existing crate writes nothing.
    let again = portico(dir.path(), &["new", "stamp"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("exists already"), "{}", text(&again));
    let bad = portico(dir.path(), &["new", "../escape"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));

    let pid_file = dir.path().join("portico.pid");
    let config = dir.path().join("portico.toml");
    std::fs::write(&config, "[[mount]]\nprefix = \"/api\"\napp = \"hello\"\nmiddleware = [\"stamp\"]\n").unwrap();
    let server = Server::builder().plugins(&["hello"]).args(["--pid-file".as_ref(), pid_file.as_os_str()]).start();
    assert_eq!(server.get("/greet-app.py/more").status, 404);
    let plugins = server.plugins_dir();
    let plugins_arg = plugins.to_str().unwrap();
    let pid_arg = pid_file.to_str().unwrap();

    let out = portico(dir.path(), &["install", app.to_str().unwrap(), "--plugins", plugins_arg, "--pid-file", pid_arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("installed greet-app 0.1.0 (application)"), "{}", text(&out));
    assert!(plugins.join("greet-app.so").is_file(), "installed under the name it exports");
    let served = poll_until(support::RELOAD_TIMEOUT, Duration::from_millis(50), || {
        let r = server.get("/greet-app.py/more");
        (r.status == 200).then_some(r)
    })
    .unwrap_or_else(|| panic!("greet-app not served after install{}", server.context()));
    assert_eq!(served.text(), "Hello from greet-app: GET /more\n");
    let leftovers: Vec<_> = std::fs::read_dir(&plugins)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".install-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // The middleware, checked against the configuration's mounts once installed.
    let out = portico(dir.path(), &["install", middleware.to_str().unwrap(), "--plugins", plugins_arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("(middleware)") && text(&out).contains("send the server SIGHUP"), "{}", text(&out));
    let check = portico(dir.path(), &["check", "--config", config.to_str().unwrap(), "--plugins", plugins_arg]);
    assert!(text(&check).contains("ok: mount /api → hello (middleware: stamp)"), "{}", text(&check));

    // A pid file that names no portico: nothing is signalled.
    for (contents, why) in [("-1\n", "holds no pid"), (&format!("{}\n", std::process::id()), "not portico")] {
        let bad_pid = dir.path().join("bad.pid");
        std::fs::write(&bad_pid, contents).unwrap();
        let out = portico(
            dir.path(),
            &["install", app.to_str().unwrap(), "--plugins", plugins_arg, "--pid-file", bad_pid.to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains(why), "{}", text(&out));
    }

    // Not a plugin: refused, nothing installed, the server untouched.
    let junk = dir.path().join("libjunk.so");
    std::fs::write(&junk, b"not a library").unwrap();
    let out =
        portico(dir.path(), &["install", junk.to_str().unwrap(), "--plugins", plugins_arg, "--pid-file", pid_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("was not installed"), "{}", text(&out));
    assert!(!plugins.join("junk.so").exists());
    assert_eq!(server.get("/greet-app.py/").status, 200);
}

/// `portico install --config`: the plugins directory is the configuration's, and the plugin is
/// test-loaded with its `[plugin.NAME]` table, a refusal placed at the table's line.
#[test]
fn install_reads_the_configuration_and_its_plugin_table() {
    let dir = TempDir::new("portico-install-config");
    let config = dir.path().join("portico.toml");
    let library = support::plugin("ip_filter");
    let install = || portico(dir.path(), &["install", library.to_str().unwrap(), "--config", config.to_str().unwrap()]);
    std::fs::write(
        &config,
        "[server]\nplugins = \"served\"\n\n[plugin.ip_filter]\n# who may pass\nallow = [\"10.0.0.0/33\"]\n",
    )
    .unwrap();
    let out = install();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("portico.toml:6:1: plugin ip_filter refused [plugin.ip_filter] in its init"),
        "{}",
        text(&out)
    );
    assert!(!dir.path().join("served/ip_filter.so").exists(), "nothing installed");
    std::fs::write(&config, "[server]\nplugins = \"served\"\n\n[plugin.ip_filter]\nallow = [\"10.0.0.0/8\"]\n")
        .unwrap();
    let out = install();
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.path().join("served/ip_filter.so").is_file(), "into the configuration's plugins directory");
}
