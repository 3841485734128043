//! Test-loading plugins in child processes (`portico check --load-many`: a JSON list of
//! plugins and their `[plugin.NAME]` settings on stdin, a JSON line back for each), so a
//! plugin that crashes or hangs while loading takes only the child down: used by `portico
//! check` (a batch of one per plugin), by the master before each generation (a batch per
//! core), and by the single-process server (`--workers 0`) before it loads a changed plugin.

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
    /// The name it exports (its root module's, `export_app!(name: …)`).
    pub module_name: String,
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

/// Loads plugin `name` from `path` with `settings` in a child process (a batch of one) and
/// waits at most `timeout` for it.
///
/// # Errors
/// [`ProbeError::Refused`] with the loader's error; [`ProbeError::Died`] with the signal or
/// status the child died of and its last lines of stderr, or the timeout.
pub fn load_in_child(name: &str, path: &Path, settings: &str, timeout: Duration) -> Result<Loaded, ProbeError> {
    let item = Item { name: name.to_owned(), path: path.to_owned(), settings: settings.to_owned(), in_place: false };
    let (mut reports, died) = run_batch(std::slice::from_ref(&item), timeout);
    match reports.remove(name) {
        Some(report) => report.verdict(),
        None => Err(ProbeError::Died(died.unwrap_or_else(|| "the checking process reported nothing".into()))),
    }
}

/// A checking process (`portico check --load-many`) started ahead of need and waiting for its
/// list on stdin: a test load through it skips the process start, most of a one-plugin
/// reload among a thousand (measured with `scripts/bench-plugins`: 14.9 ms with a process
/// started per test load).
pub struct Spare {
    child: Option<std::process::Child>,
}

impl Spare {
    /// Starts one.
    ///
    /// # Errors
    /// Why the process could not be started.
    pub fn start() -> Result<Spare, String> {
        Ok(Spare { child: Some(spawn_child(&["--load-many"])?) })
    }

    /// Loads plugin `name` from `path` with `settings` in this process (used up by it), at
    /// most `timeout`. A spare that is gone already (something signalled the server's whole
    /// process group while it waited), or that dies without a word on the plugin, does not
    /// blame the plugin: it is tested again in a new process.
    ///
    /// # Errors
    /// As [`load_in_child`].
    pub fn load(mut self, name: &str, path: &Path, settings: &str, timeout: Duration) -> Result<Loaded, ProbeError> {
        // (A spare found dead gives no report below, and is replaced like one that died.)
        let Some(child) = self.child.take() else { return load_in_child(name, path, settings, timeout) };
        // The caller's private test copy: loaded where it is.
        let item = Item { name: name.to_owned(), path: path.to_owned(), settings: settings.to_owned(), in_place: true };
        let input = serde_json::to_vec(std::slice::from_ref(&item)).unwrap_or_default();
        // Its report is all that is wanted: its exit is not waited for.
        let reported = |line: &str| serde_json::from_str::<Report>(line).is_ok_and(|r| r.name == name);
        let (out, died) = match wait_child_until(child, &input, timeout, reported) {
            Ok(out) => (out, None),
            Err(ChildFailed { why, out }) => (out, Some(why)),
        };
        match out.lines().find_map(|l| serde_json::from_str::<Report>(l).ok().filter(|r| r.name == name)) {
            Some(report) => report.verdict(),
            // Died: whether of the plugin or of a signal meant for the server, a new process
            // tells (a plugin that crashes crashes it too).
            None => {
                tracing::debug!(plugin = name, "the spare checking process died ({died:?}); testing in a new one");
                load_in_child(name, path, settings, timeout)
            }
        }
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
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
    /// The file is a private copy nothing rewrites (a generation's snapshot, a reload's test
    /// copy): the child loads it where it is instead of copying it again (760 KB a plugin).
    #[serde(default)]
    pub in_place: bool,
}

/// What the child reports for one plugin of a batch (a JSON line each).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Report {
    name: String,
    version: Option<String>,
    middleware: bool,
    #[serde(default)]
    module_name: String,
    error: Option<String>,
}

impl Report {
    /// Loaded (its version and kind), or refused by the loader (why).
    fn verdict(self) -> Result<Loaded, ProbeError> {
        match (self.version, self.error) {
            (Some(version), _) => Ok(Loaded { version, middleware: self.middleware, module_name: self.module_name }),
            (None, error) => Err(ProbeError::Refused(error.unwrap_or_else(|| "refused".into()))),
        }
    }
}

/// Test-loads `items` in `available_parallelism` child processes (`portico check --load-many`,
/// a share each, one after another inside a child), waiting at most `timeout` for each child:
/// a generation of a thousand plugins costs one process start per core instead of a thousand. A child
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
    let (mut reports, _) = run_batch(chunk, timeout);
    chunk
        .iter()
        .map(|item| match reports.remove(&item.name) {
            Some(report) => report.verdict(),
            None => load_in_child(&item.name, &item.path, &item.settings, timeout),
        })
        .collect()
}

/// Runs one `--load-many` child over `items`: the reports it printed, by name, and why it
/// did not exit 0 in time, if it did not (a crash, a hang, a failed start).
fn run_batch(items: &[Item], timeout: Duration) -> (std::collections::HashMap<String, Report>, Option<String>) {
    let input = serde_json::to_vec(items).unwrap_or_default();
    let (out, died) = match run_child(&["--load-many"], &input, timeout) {
        Ok(out) => (out, None),
        Err(ChildFailed { why, out }) => (out, Some(why)),
    };
    let reports =
        out.lines().filter_map(|l| serde_json::from_str::<Report>(l).ok()).map(|r| (r.name.clone(), r)).collect();
    (reports, died)
}

/// The child's side of [`load_many_in_child`] (`portico check --load-many [CONFIG_DIR]`):
/// loads each plugin of the JSON list on stdin into a private cache directory, printing one
/// JSON line per plugin as soon as it is done (so a crash later still reports it).
pub fn load_many(args: &[OsString]) -> i32 {
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    // Signals sent to the server's whole process group (`systemctl kill -s HUP`, a terminal's
    // ^C) are not for a checking process: a spare may wait for hours, and its death signal
    // ends it with the server.
    for signal in [
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGUSR1,
        signal_hook::consts::SIGUSR2,
    ] {
        let _ = signal_hook::flag::register(signal, std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)));
    }
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
        let line = report_line(item, &cache, i as u64 + 1);
        if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
    0
}

/// Loads `item` (a private copy in `cache`, load generation `generation`) and gives its
/// report as one JSON line (no newline).
fn report_line(item: &Item, cache: &Path, generation: u64) -> String {
    let loaded = if item.in_place {
        loader::load_in_place(&item.name, &item.path, generation, &item.settings)
    } else {
        loader::load(&item.name, &item.path, cache, generation, &item.settings)
    };
    let report = match loaded {
        Ok(p) => Report {
            name: item.name.clone(),
            middleware: p.is_middleware(),
            module_name: p.module_name.clone(),
            version: Some(p.version.clone()),
            error: None,
        },
        Err(e) => Report {
            name: item.name.clone(),
            version: None,
            middleware: false,
            module_name: String::new(),
            error: Some(e.to_string()),
        },
    };
    serde_json::to_string(&report).unwrap_or_default()
}

/// A child that did not exit 0 in time: why, and what it wrote before.
struct ChildFailed {
    why: String,
    out: String,
}

/// Runs `portico check ARGS CONFIG_DIR` with `input` on stdin, at most `timeout`: the stdout
/// of a child that exited 0, or why it did not (with what it wrote before).
fn run_child(args: &[&str], input: &[u8], timeout: Duration) -> Result<String, ChildFailed> {
    let child = spawn_child(args).map_err(|why| ChildFailed { why, out: String::new() })?;
    wait_child_until(child, input, timeout, |_| false)
}

/// Starts `portico check ARGS CONFIG_DIR` with its three standard streams piped.
fn spawn_child(args: &[&str]) -> Result<std::process::Child, String> {
    let exe = running_binary().map_err(|e| format!("cannot find the portico executable: {e}"))?;
    Command::new(exe)
        .arg("check")
        .args(args)
        .arg(loader::facts().config_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the checking process: {e}"))
}

/// Feeds `input` to a child [`spawn_child`] started and waits at most `timeout` for it: its
/// report lines if it exited 0, or why it did not (with the report lines it wrote before). A
/// report line for which `enough` is true ends the wait at once, with the lines so far: the
/// child is then killed (nothing more is wanted of it) and reaped by a thread, off the
/// caller's path.
fn wait_child_until(
    mut child: std::process::Child,
    input: &[u8],
    timeout: Duration,
    enough: impl Fn(&str) -> bool,
) -> Result<String, ChildFailed> {
    if let Some(mut stdin) = child.stdin.take() {
        if input.len() <= SMALL_INPUT {
            // Fits in the pipe's buffer: written without blocking.
            let _ = stdin.write_all(input);
        } else {
            // Written from a thread: a large list must not fill the pipe while the child writes.
            let input = input.to_vec();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }
    }
    // Drain both pipes while waiting, so a chatty init cannot fill a pipe and stall: stdout
    // line by line (each a report), stderr whole.
    let (line_tx, lines) = crossbeam_channel::unbounded::<String>();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            // To the end, whatever it holds: a pipe closed early would fail the child's
            // next write (and a plugin's `println!` in `init` would panic).
            let mut stdout = std::io::BufReader::new(stdout);
            let mut line = Vec::new();
            let mut listening = true;
            while matches!(std::io::BufRead::read_until(&mut stdout, b'\n', &mut line), Ok(n) if n > 0) {
                // Only report lines (JSON objects) are kept: a plugin printing in a loop
                // until the timeout costs no memory.
                if listening && line.first() == Some(&b'{') {
                    let text = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_owned();
                    listening = line_tx.send(text).is_ok();
                }
                line.clear();
            }
        });
    }
    let (err_tx, stderr) = crossbeam_channel::bounded(1);
    let err_pipe = child.stderr.take();
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut p) = err_pipe {
            let _ = p.read_to_string(&mut text);
        }
        let _ = err_tx.send(text);
    });
    let started = Instant::now();
    let mut out = String::new();
    // Its stdout closes when it exits: wait on that (woken at once), looking at the child
    // now and then (it may exit while a process it started keeps the pipe open).
    let mut closed = false;
    let status = loop {
        if !closed {
            match lines.recv_timeout(Duration::from_millis(20)) {
                Ok(line) => {
                    let done = enough(&line);
                    out.push_str(&line);
                    out.push('\n');
                    if done {
                        // Nothing more is wanted of it: its exit (the plugin's exit-time
                        // code, which may hang) is not waited for.
                        let _ = child.kill();
                        std::thread::spawn(move || {
                            let _ = child.wait();
                        });
                        return Ok(out);
                    }
                    // On to the deadline's check: a child that prints without end is
                    // still timed out.
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => closed = true,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            }
        }
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("did not finish loading within {:.1} s (hangs in init?)", timeout.as_secs_f64()));
            }
            Ok(None) if closed => std::thread::sleep(Duration::from_millis(1)),
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("waiting for the checking process: {e}"));
            }
        }
    };
    // The pipes close when the child is gone, unless a grandchild it started keeps them:
    // then what was written is given up after a second (the reading thread ends with it).
    let until = Instant::now() + Duration::from_secs(1);
    while !closed {
        match lines.recv_deadline(until) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
            }
            Err(_) => closed = true,
        }
    }
    let err = stderr.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    match status {
        Ok(status) if status.success() => Ok(out),
        Ok(status) => {
            let tail: Vec<&str> = err.lines().rev().take(3).collect();
            let tail = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
            let why = match status.code() {
                Some(code) => format!("the checking process exited with status {code}: {tail}"),
                None => format!("crashed while loading ({status}): {tail}"),
            };
            Err(ChildFailed { why, out })
        }
        Err(why) => Err(ChildFailed { why, out }),
    }
}

/// Input up to this many bytes is written to a child's stdin directly: a new pipe holds at
/// least one page (pipe(7), even past `pipe-user-pages-soft`); more is written from a thread.
const SMALL_INPUT: usize = 4096;
