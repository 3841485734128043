//! `portico check [--config FILE] [flags]`: the dry run an operator runs before `kill -HUP`.
//!
//! It reads the configuration exactly as the server would (flags, `PORTICO_*`, the file),
//! checks the docroot, then test-loads every plugin of the plugins directory with its
//! `[plugin.NAME]` settings — each **in a child process** (`portico check --load-one NAME
//! FILE`, settings on stdin), so a plugin that crashes or hangs while loading cannot take the
//! checker down — and finally checks the mounts against what loaded. One line per finding on
//! stdout; exit status 0 when everything would load, 1 otherwise, 2 for a configuration file
//! that does not parse.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::plugin::{loader, registry};
use crate::routing::mount::Mounts;
use crate::settings::file as config_file;

/// How long one plugin may take to load in its child process.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `portico check ARGS...` (`args` without the `check` word); the process exit status.
pub fn run(args: Vec<OsString>) -> i32 {
    if args.first().is_some_and(|a| a == "--load-one") {
        return load_one(&args[1..]);
    }
    let mut argv = vec![OsString::from("portico")];
    argv.extend(args);
    let (args, config) = match config_file::parse_args(argv) {
        Ok(parsed) => parsed,
        Err(e) => {
            println!("error: {e}");
            return 2;
        }
    };
    let mut ok = true;
    match &config {
        Some(c) => println!("ok: configuration {}", c.path.display()),
        None => println!("ok: no configuration file (built-in defaults, flags and PORTICO_* variables)"),
    }
    match std::fs::metadata(&args.docroot) {
        Ok(m) if m.is_dir() => println!("ok: docroot {}", args.docroot.display()),
        _ => {
            println!("error: docroot {} is not a directory", args.docroot.display());
            ok = false;
        }
    }
    let mut kinds: HashMap<String, bool> = HashMap::new();
    let files = registry::plugin_files(&args.plugins);
    if files.is_empty() {
        println!("warning: no plugins in {}", args.plugins.display());
    }
    let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    for (name, path) in files {
        let settings = config.as_ref().map(|c| c.plugin_config(&name)).unwrap_or_default();
        match load_in_child(&name, &path, &settings) {
            Ok((version, middleware)) => {
                let kind = if middleware { "middleware" } else { "application" };
                println!("ok: plugin {name} {version} ({kind}) from {}", path.display());
                kinds.insert(name, middleware);
            }
            Err(why) => {
                println!("error: plugin {name} from {}: {why}", path.display());
                ok = false;
            }
        }
    }
    if let Some(c) = &config {
        for unused in c.file.plugin.keys().filter(|n| !names.contains(n)) {
            println!(
                "warning: [plugin.{unused}] has settings but there is no plugin {unused} in {}",
                args.plugins.display()
            );
        }
        match Mounts::validate_with(c, |n| kinds.get(n).copied()) {
            Ok(()) => {
                for m in Mounts::from_config(c).list() {
                    println!("ok: mount {} → {} (middleware: {})", m.prefix, m.app, m.middleware.join(", "));
                }
            }
            Err(e) => {
                println!("error: {e}");
                ok = false;
            }
        }
    }
    if ok {
        println!("portico check: all good");
        0
    } else {
        println!("portico check: problems found (the running server, if any, is unaffected)");
        1
    }
}

/// Loads one plugin in a child process; `(version, is_middleware)` or why it failed.
fn load_in_child(name: &str, path: &Path, settings: &str) -> Result<(String, bool), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the portico executable: {e}"))?;
    let mut child = Command::new(exe)
        .args(["check", "--load-one", name])
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the checking process: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(settings.as_bytes());
    }
    // Drain both pipes while waiting, so a chatty init cannot fill a pipe and stall.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > LOAD_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("did not finish loading within {} s", LOAD_TIMEOUT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("waiting for the checking process: {e}"));
            }
        }
    };
    // A grandchild that kept the pipes open would block these reads: bounded by the pipes
    // closing, which a killed child guarantees; a detached grandchild is the plugin's bug.
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    if status.success() {
        let mut words = out.split_whitespace();
        let version = words.next().unwrap_or("?").to_owned();
        return Ok((version, words.next() == Some("middleware")));
    }
    let reason = out.trim();
    if !reason.is_empty() {
        return Err(reason.to_owned());
    }
    let tail: Vec<&str> = err.lines().rev().take(3).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
    Err(match status.code() {
        Some(code) => format!("the checking process exited with status {code}: {tail}"),
        None => format!("crashed while loading ({status}): {tail}"),
    })
}

/// The child's side: load `NAME FILE` with the settings on stdin into a private cache
/// directory; print `VERSION application|middleware` (exit 0) or the reason (exit 1).
fn load_one(args: &[OsString]) -> i32 {
    let (Some(name), Some(path)) = (args.first().and_then(|n| n.to_str()), args.get(1)) else {
        println!("usage: portico check --load-one NAME FILE");
        return 1;
    };
    let mut settings = String::new();
    let _ = std::io::stdin().read_to_string(&mut settings);
    let cache = std::env::temp_dir().join(format!("portico-check-{}", std::process::id()));
    let result = loader::load(name, Path::new(path), &cache, 1, &settings);
    let _ = std::fs::remove_dir_all(&cache);
    match result {
        Ok(p) => {
            println!("{} {}", p.version, if p.is_middleware() { "middleware" } else { "application" });
            0
        }
        Err(e) => {
            println!("{e}");
            1
        }
    }
}
