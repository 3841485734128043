//! Test-loading plugins in child processes (`portico check --load-one NAME FILE`, its
//! `[plugin.NAME]` settings on stdin; `portico check --load-many`, a JSON list on stdin), so a
//! plugin that crashes or hangs while loading takes only the child down: used by `portico
//! check`, by the master before each generation (a batch per core), and by the
//! single-process server (`--workers 0`) before it loads a changed plugin.

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
    let path = path.to_string_lossy();
    match run_child(&["--load-one", name, &path], settings.as_bytes(), timeout) {
        Ok((_, out, _)) => {
            let mut words = out.split_whitespace();
            let version = words.next().unwrap_or("?").to_owned();
            Ok(Loaded { version, middleware: words.next() == Some("middleware") })
        }
        Err(ChildFailed { out, .. }) if !out.trim().is_empty() => Err(ProbeError::Refused(out.trim().to_owned())),
        Err(ChildFailed { why, .. }) => Err(ProbeError::Died(why)),
    }
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

/// One plugin of a batch test load: its route name, file and `[plugin.NAME]` settings.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Item {
    /// The route name.
    pub name: String,
    /// The file to load.
    pub path: std::path::PathBuf,
    /// Its table as TOML text.
    pub settings: String,
}

/// What the child reports for one plugin of a batch (a JSON line each).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Report {
    name: String,
    version: Option<String>,
    middleware: bool,
    error: Option<String>,
}

/// Test-loads `items` in `available_parallelism` child processes (`portico check --load-many`,
/// a share each, one after another inside a child), waiting at most `timeout` for each child:
/// a generation of a thousand plugins costs two process starts instead of a thousand. A child
/// that crashes or hangs reports the plugins it finished; each one it did not is then tested
/// alone ([`load_in_child`]), so the one at fault is named and the others are not blamed.
/// Results are in the order of `items`.
pub fn load_many_in_child(items: &[Item], timeout: Duration) -> Vec<Result<Loaded, ProbeError>> {
    let children = std::thread::available_parallelism().map_or(1, |n| n.get()).min(items.len()).max(1);
    let share = items.len().div_ceil(children).max(1);
    std::thread::scope(|scope| {
        let jobs: Vec<_> = items.chunks(share).map(|chunk| scope.spawn(move || load_share(chunk, timeout))).collect();
        jobs.into_iter()
            .zip(items.chunks(share))
            .flat_map(|(job, chunk)| {
                job.join().unwrap_or_else(|_| {
                    chunk.iter().map(|_| Err(ProbeError::Died("the probing thread panicked".into()))).collect()
                })
            })
            .collect()
    })
}

fn load_share(chunk: &[Item], timeout: Duration) -> Vec<Result<Loaded, ProbeError>> {
    let input = serde_json::to_vec(chunk).unwrap_or_default();
    let reports: std::collections::HashMap<String, Report> = match run_child(&["--load-many"], &input, timeout) {
        Ok((_, out, _)) | Err(ChildFailed { out, .. }) => {
            out.lines().filter_map(|l| serde_json::from_str::<Report>(l).ok()).map(|r| (r.name.clone(), r)).collect()
        }
    };
    chunk
        .iter()
        .map(|item| match reports.get(&item.name) {
            Some(Report { version: Some(version), middleware, .. }) => {
                Ok(Loaded { version: version.clone(), middleware: *middleware })
            }
            Some(Report { error: Some(e), .. }) => Err(ProbeError::Refused(e.clone())),
            _ => load_in_child(&item.name, &item.path, &item.settings, timeout),
        })
        .collect()
}

/// The child's side of [`load_many_in_child`] (`portico check --load-many [CONFIG_DIR]`):
/// loads each plugin of the JSON list on stdin into a private cache directory, printing one
/// JSON line per plugin as soon as it is done (so a crash later still reports it).
pub fn load_many(args: &[OsString]) -> i32 {
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    if let Some(dir) = args.first() {
        loader::set_facts(loader::Facts { config_dir: dir.into(), ..loader::facts() });
    }
    let mut text = String::new();
    let _ = std::io::stdin().read_to_string(&mut text);
    let Ok(items) = serde_json::from_str::<Vec<Item>>(&text) else {
        println!("usage: portico check --load-many [CONFIG_DIR] < a JSON list of {{name, path, settings}}");
        return 1;
    };
    let cache = std::env::temp_dir().join(format!("portico-check-{}", std::process::id()));
    let mut stdout = std::io::stdout().lock();
    for (i, item) in items.iter().enumerate() {
        let report = match loader::load(&item.name, &item.path, &cache, i as u64 + 1, &item.settings) {
            Ok(p) => {
                Report { name: item.name.clone(), middleware: p.is_middleware(), version: Some(p.version), error: None }
            }
            Err(e) => Report { name: item.name.clone(), version: None, middleware: false, error: Some(e.to_string()) },
        };
        let line = serde_json::to_string(&report).unwrap_or_default();
        if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
    0
}

/// A child that did not exit 0 in time: its status (`None` when it was killed at the
/// timeout) and what it wrote.
struct ChildFailed {
    why: String,
    out: String,
}

/// Runs `portico check ARGS CONFIG_DIR` with `input` on stdin, at most `timeout`: (status,
/// stdout, stderr) of a child that exited, or why it did not.
fn run_child(
    args: &[&str],
    input: &[u8],
    timeout: Duration,
) -> Result<(std::process::ExitStatus, String, String), ChildFailed> {
    let failed = |why: String| ChildFailed { why, out: String::new() };
    let exe = running_binary().map_err(|e| failed(format!("cannot find the portico executable: {e}")))?;
    let mut child = Command::new(exe)
        .arg("check")
        .args(args)
        .arg(loader::facts().config_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot start the checking process: {e}")))?;
    let stdin = child.stdin.take();
    let input = input.to_vec();
    // Written from a thread: a large list must not fill the pipe while the child writes.
    std::thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(&input);
        }
    });
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
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("did not finish loading within {:.1} s (hangs in init?)", timeout.as_secs_f64()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("waiting for the checking process: {e}"));
            }
        }
    };
    // The pipes close when the child is gone, unless a grandchild it started keeps them:
    // then what was written is given up after a second (the reading thread ends with it).
    let out = stdout.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    let err = stderr.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    match status {
        Ok(status) if status.success() => Ok((status, out, err)),
        Ok(status) => {
            let tail: Vec<&str> = err.lines().rev().take(3).collect();
            let tail = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
            let why = match status.code() {
                Some(code) => format!("the checking process exited with status {code}: {tail}"),
                None => format!("crashed while loading ({status}): {tail}"),
            };
            // A refusal (exit 1 with the reason on stdout) is told apart by the caller.
            Err(ChildFailed { why, out })
        }
        Err(why) => Err(ChildFailed { why, out }),
    }
}
