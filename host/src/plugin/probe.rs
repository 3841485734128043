//! Test-loading a plugin in a child process (`portico check --load-one NAME FILE`, its
//! `[plugin.NAME]` settings on stdin), so a plugin that crashes or hangs while loading takes
//! only the child down: used by `portico check`, by the master before each generation, and by
//! the single-process server (`--workers 0`) before it loads a changed plugin.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::loader;

/// What a plugin that loaded reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Its version.
    pub version: String,
    /// Whether it is middleware (else an application).
    pub middleware: bool,
}

/// The binary this process runs, to exec again: `/proc/self/exe` where there is one, which
/// stays this very binary after the file at its path is replaced (a binary upgrade installs
/// the new one there: only SIGUSR2 should start it), else the path it was started from.
///
/// # Errors
/// Neither is known.
pub fn running_binary() -> std::io::Result<std::path::PathBuf> {
    let proc = Path::new("/proc/self/exe");
    if proc.exists() { Ok(proc.to_owned()) } else { std::env::current_exe() }
}

/// Why a test load failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The loader refused the file in the child (its [`loader::LoadError`], as text): loading
    /// it here would fail the same way, safely.
    #[error("{0}")]
    Refused(String),
    /// The child crashed or hung, or could not be run: loading it here could take the process
    /// down.
    #[error("{0}")]
    Died(String),
}

/// Loads plugin `name` from `path` with `settings` in a child process and waits at most
/// `timeout` for it.
///
/// # Errors
/// [`ProbeError::Refused`] with the loader's error; [`ProbeError::Died`] with the signal or
/// status the child died of and its last lines of stderr, or the timeout.
/// Loads one plugin in a child process; `(version, is_middleware)` or why it failed.
pub fn load_in_child(name: &str, path: &Path, settings: &str, timeout: Duration) -> Result<Loaded, ProbeError> {
    let exe = running_binary().map_err(|e| ProbeError::Died(format!("cannot find the portico executable: {e}")))?;
    let mut child = Command::new(exe)
        .args(["check", "--load-one", name])
        .arg(path)
        // Where the plugin's table is relative to, as the real load will see it.
        .arg(loader::facts().config_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ProbeError::Died(format!("cannot start the checking process: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(settings.as_bytes());
    }
    // Drain both pipes while waiting, so a chatty init cannot fill a pipe and stall.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            let _ = tx.send(text);
        });
        rx
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProbeError::Died(format!(
                    "did not finish loading within {:.1} s (hangs in init?)",
                    timeout.as_secs_f64()
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProbeError::Died(format!("waiting for the checking process: {e}")));
            }
        }
    };
    // The pipes close when the child is gone, unless a grandchild it started keeps them:
    // then what was written is given up after a second (the reading thread ends with it).
    let out = stdout.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    let err = stderr.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    if status.success() {
        let mut words = out.split_whitespace();
        let version = words.next().unwrap_or("?").to_owned();
        return Ok(Loaded { version, middleware: words.next() == Some("middleware") });
    }
    let reason = out.trim();
    if !reason.is_empty() {
        return Err(ProbeError::Refused(reason.to_owned()));
    }
    let tail: Vec<&str> = err.lines().rev().take(3).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
    Err(ProbeError::Died(match status.code() {
        Some(code) => format!("the checking process exited with status {code}: {tail}"),
        None => format!("crashed while loading ({status}): {tail}"),
    }))
}

/// The child's side (`portico check --load-one NAME FILE [CONFIG_DIR]`): load `NAME FILE` with the
/// settings on stdin into a private cache directory; print `VERSION application|middleware` (exit 0) or the reason (exit 1).
pub fn load_one(args: &[OsString]) -> i32 {
    let (Some(name), Some(path)) = (args.first().and_then(|n| n.to_str()), args.get(1)) else {
        println!("usage: portico check --load-one NAME FILE");
        return 1;
    };
    // A test load that hangs must not outlive the process waiting for it.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    if let Some(dir) = args.get(2) {
        loader::set_facts(loader::Facts { config_dir: dir.into(), ..loader::facts() });
    }
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
