//! The master process (`--workers N`, N ≥ 1): binds the listeners (or takes systemd's), starts
//! N worker processes of this binary ([`spawn`]) and keeps them running. It never loads a
//! plugin and never accepts a connection: what crashes is a worker, and the master replaces it.
//!
//! | module | owns |
//! |---|---|
//! | this one | the master's loop: signals, worker exits (pidfds), control messages, timers |
//! | [`spawn`] | starting one worker: descriptors, environment, pidfd |
//! | `workers` | starting, stopping and hearing from one worker; its exit and replacement |
//! | `reload` | a generation's start, SIGHUP's preparation, promotion, discarding |
//! | [`generation`] | a generation's snapshot of the plugins, each test-loaded in a child |
//! | `upgrade` | SIGUSR2: starting the new binary as a new master, handing over |
//! | [`tree`] | what the master records (workers, deaths, generations) and the status page's view of the tree |
//!
//! Descriptors: the master holds every listening socket for its whole life (close-on-exec);
//! each worker gets dups of them at 3, 4, … plus its control socket, and accepts from the
//! shared sockets (whichever worker's event loop wakes first). Nothing queued on a listener is
//! lost when a worker exits: the socket lives on in the master and the other workers.
//!
//! A generation's life (SIGHUP): the configuration is re-read, a snapshot of the plugins made
//! and checked in children (on a helper thread; the loop goes on), then the new workers start.
//! When every one of them said "ready", the old workers get SIGTERM: they stop accepting,
//! finish what they hold with `Connection: close`, close idle keep-alive connections after a
//! one-second grace, and exit within `--graceful-timeout` (SIGKILL 5 s after). A new
//! generation that fails (a worker exits before ready, or `--worker-ready-timeout` passes) is
//! killed and the old one keeps serving.
//!
//! Signals: SIGHUP reload; SIGTERM/SIGINT drain every worker, then exit 0; SIGQUIT stops
//! every worker at once and exits; SIGTTIN/SIGTTOU add/remove a worker; SIGUSR2 upgrades the
//! binary in place (nginx's way: the pid file names the old master `FILE.oldbin` meanwhile).
//!
//! Files: the master keeps its snapshots and its workers' private plugin copies under
//! `CACHE/master-PID/` (removed at exit; those of masters no longer running are removed at
//! start), so an old and a new master never share one during a binary upgrade.

pub mod generation;
mod reload;
pub mod spawn;
pub mod tree;
mod upgrade;
mod workers;

use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Poll, Token, Waker};
use signal_hook::consts::{
    SIGALRM, SIGHUP, SIGINT, SIGIO, SIGPROF, SIGQUIT, SIGTERM, SIGTTIN, SIGTTOU, SIGUSR1, SIGUSR2, SIGVTALRM,
};
use slab::Slab;

use crate::control::{ToWorker, WorkerReport};
use crate::listeners::{self, Listener};
use crate::settings::Args;
use crate::settings::file::Loaded;
use generation::{Findings, Snapshot};
use tree::Record;

const WAKER: Token = Token(usize::MAX);
/// How often timers are checked at least.
const TICK: Duration = Duration::from_millis(250);
/// How often each worker is asked for its counters (the workers table, and which
/// applications a worker that dies was running).
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// A worker that dies sooner than this after its start counts toward a crash loop.
const QUICK_DEATH: Duration = Duration::from_secs(10);
/// Longest wait before respawning in a crash loop (it doubles from 100 ms).
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long past `--graceful-timeout` a stopping worker gets before SIGKILL.
const KILL_MARGIN: Duration = Duration::from_secs(5);

/// A prepared generation (or why not), and the configuration it was prepared with.
type Prepared = (Result<(Snapshot, Findings), generation::PrepareError>, Option<Loaded>);

/// What other threads tell the loop.
enum Msg {
    Signal(i32),
    Prepared(Box<Prepared>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    Stopping,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Stopping => "stopping",
        }
    }
}

struct Worker {
    pid: u32,
    child: Child,
    pidfd: std::os::fd::OwnedFd,
    control: mio::net::UnixStream,
    inbuf: Vec<u8>,
    generation: u64,
    started: Instant,
    started_at: SystemTime,
    state: State,
    report: Option<WorkerReport>,
    cache: PathBuf,
    /// SIGKILL if still running then.
    kill_at: Option<Instant>,
    /// Asked to be replaced (why); a replacement is starting.
    retiring: Option<String>,
    /// The worker this one replaces once it is ready.
    replaces: Option<usize>,
}

/// A generation of workers.
struct Generation {
    snapshot: Snapshot,
    /// When a starting generation is given up.
    ready_by: Instant,
}

struct Master {
    args: Args,
    argv: Vec<OsString>,
    /// The binary's path: what SIGUSR2 starts (the file an operator replaced).
    exe: PathBuf,
    /// What workers are started from: this very binary (`/proc/self/exe`), not whatever the
    /// path holds now.
    worker_exe: PathBuf,
    listeners: Vec<Listener>,
    poll: Poll,
    rx: Receiver<Msg>,
    tx: Sender<Msg>,
    waker: Arc<Waker>,
    workers: Slab<Worker>,
    current: Option<Generation>,
    pending: Option<Generation>,
    config: Option<Loaded>,
    /// This master's directory: `CACHE/master-PID`.
    home: PathBuf,
    /// Its generations' snapshots: `HOME/generations`.
    root: PathBuf,
    next_generation: u64,
    target: usize,
    respawn_at: Vec<Instant>,
    crash_streak: u32,
    preparing: bool,
    reload_again: bool,
    announced: bool,
    stopping: Option<Instant>,
    next_report: Instant,
    /// When the charts get their next sample of the totals.
    next_history: Instant,
    record: Record,
    trees: tree::Asks,
    /// A binary upgrade in progress (SIGUSR2).
    upgrade: Option<upgrade::Upgrade>,
    /// A new master took over: its pid file and Unix socket files are not ours to remove.
    upgraded: bool,
    /// This master was started by SIGUSR2: it tells the old one when it serves.
    upgrading_from: Option<std::os::unix::net::UnixStream>,
    /// Why the first generation never served (the exit status is then an error).
    failed: Option<String>,
}

/// Runs the master until SIGTERM/SIGINT has drained every worker (or SIGQUIT).
///
/// # Errors
/// A listener cannot be bound, the first generation cannot be prepared or started.
/// `upgrading_from` is the old master's socket when SIGUSR2 started this one.
pub fn run(
    args: Args,
    config: Option<Loaded>,
    inherited: Vec<Listener>,
    upgrading_from: Option<std::os::unix::net::UnixStream>,
) -> anyhow::Result<()> {
    // Refused here, in one line, rather than by every worker of the first generation.
    crate::settings::docroot_dir(&args.docroot).map_err(anyhow::Error::msg)?;
    // And the TLS certificate: a bad one is one line here, not a failing generation.
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        crate::tls::server_config(cert, key)?;
    }
    let listeners = listeners::open(inherited, &args.bind, args.unix_socket_mode, args.backlog)?;
    if let Some(path) = &args.pid_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing the pid file {}", path.display()))?;
    }
    let cache_root = args.cache_dir.clone().unwrap_or_else(|| args.plugins.join(".cache"));
    // For the test loads of each generation's plugins (the master loads none itself).
    crate::plugin::loader::set_facts(crate::plugin::loader::Facts::of(&args, config.as_ref()));
    remove_dead_homes(&cache_root);
    let home = cache_root.join(format!("master-{}", std::process::id()));
    let root = home.join("generations");
    let poll = Poll::new().context("creating the poller")?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).context("creating the waker")?);
    let (tx, rx) = crossbeam_channel::unbounded();
    start_signals(tx.clone(), Arc::clone(&waker))?;
    let target = args.worker_processes();
    let mut master = Master {
        argv: std::env::args_os().skip(1).collect(),
        exe: std::env::current_exe().context("finding the portico executable")?,
        worker_exe: crate::plugin::probe::running_binary().context("finding the portico executable")?,
        listeners,
        poll,
        rx,
        tx,
        waker,
        workers: Slab::new(),
        current: None,
        pending: None,
        config,
        root,
        home,
        next_generation: 1,
        target,
        respawn_at: Vec::new(),
        crash_streak: 0,
        preparing: false,
        reload_again: false,
        announced: false,
        stopping: None,
        next_report: Instant::now() + REPORT_EVERY,
        next_history: Instant::now(),
        record: Record::new(target),
        trees: tree::Asks::default(),
        upgrade: None,
        upgraded: false,
        upgrading_from,
        failed: None,
        args,
    };
    let result = master.start().and_then(|()| master.run_loop()).and_then(|()| match master.failed.take() {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    });
    match (&master.args.pid_file, master.upgraded) {
        (Some(path), true) => {
            let _ = std::fs::remove_file(upgrade::oldbin(path));
        }
        (Some(path), false) => {
            let _ = std::fs::remove_file(path);
        }
        (None, _) => {}
    }
    if !master.upgraded {
        for l in &master.listeners {
            l.remove_file();
        }
    }
    let _ = std::fs::remove_dir_all(&master.home);
    result
}

/// Removes the directories of masters that no longer run (`CACHE/master-PID`).
fn remove_dead_homes(cache_root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(cache_root) else { return };
    for e in entries.flatten() {
        let pid = e.file_name().to_str().and_then(|n| n.strip_prefix("master-")).and_then(|p| p.parse::<i32>().ok());
        let alive =
            pid.and_then(rustix::process::Pid::from_raw).is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
        if pid.is_some() && !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn start_signals(tx: Sender<Msg>, waker: Arc<Waker>) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGTTIN, SIGTTOU, SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGIO,
    ])
    .context("installing signal handlers")?;
    std::thread::Builder::new().name("portico-signals".into()).spawn(move || {
        for sig in signals.forever() {
            let _ = tx.send(Msg::Signal(sig));
            let _ = waker.wake();
        }
    })?;
    Ok(())
}

/// `killed by SIGSEGV`, `exited with status 3`.
fn cause(status: Option<std::process::ExitStatus>) -> String {
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => {
                let name =
                    signal_hook::low_level::signal_name(sig).map_or_else(|| format!("signal {sig}"), str::to_owned);
                format!("killed by {name}{}", if s.core_dumped() { " (core dumped)" } else { "" })
            }
            _ => format!("{s}"),
        },
        None => "gone (status unknown)".to_owned(),
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

impl Master {
    /// The first generation: prepared here (its test loads bounded by the ready timeout),
    /// then started.
    fn start(&mut self) -> anyhow::Result<()> {
        let timeout = self.ready_timeout();
        let (snapshot, findings) =
            generation::prepare(1, &self.root, &self.args.plugins, self.config.as_ref(), None, timeout).map_err(
                |e| match e {
                    // Exit status 2, as without a master.
                    generation::PrepareError::Config(c) => anyhow::Error::new(c),
                    other => anyhow::anyhow!("{other}"),
                },
            )?;
        for line in &findings.refused {
            tracing::error!("{line}; skipped");
        }
        // On the status page from the start, not only after a reload.
        self.record.refused = findings.refused;
        self.record.serving(&snapshot);
        self.next_generation = 2;
        self.start_generation(snapshot)
    }

    fn ready_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.args.worker_ready_timeout.max(0.1))
    }

    fn snapshot_of(&self, id: u64) -> Option<&Snapshot> {
        [&self.current, &self.pending].into_iter().flatten().map(|g| &g.snapshot).find(|s| s.id == id)
    }

    fn run_loop(&mut self) -> anyhow::Result<()> {
        let mut events = Events::with_capacity(64);
        loop {
            let timeout = self.next_deadline().saturating_duration_since(Instant::now()).min(TICK);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                return Err(e.into());
            }
            let tokens: Vec<Token> = events.iter().map(|e| e.token()).collect();
            for token in tokens {
                match token {
                    WAKER => {}
                    upgrade::PIDFD | upgrade::SOCKET => self.upgrade_event(Some(token)),
                    Token(t) if t % 2 == 0 => self.exited(t / 2),
                    Token(t) => self.read_control(t / 2),
                }
            }
            while let Ok(msg) = self.rx.try_recv() {
                match msg {
                    Msg::Signal(sig) => self.on_signal(sig),
                    Msg::Prepared(prepared) => self.on_prepared(prepared.0, prepared.1),
                }
            }
            self.timers(Instant::now());
            if let Some(deadline) = self.stopping {
                if self.workers.is_empty() {
                    tracing::info!("every worker has exited; stopped");
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Ok(());
                }
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut next = self.next_report.min(self.next_history);
        next = next.min(self.respawn_at.iter().copied().min().unwrap_or(next));
        next = next.min(self.workers.iter().filter_map(|(_, w)| w.kill_at).min().unwrap_or(next));
        next = next.min(self.pending.as_ref().map_or(next, |g| g.ready_by));
        next = next.min(self.trees.deadline().unwrap_or(next));
        next = next.min(self.upgrade_deadline().unwrap_or(next));
        next
    }

    fn timers(&mut self, now: Instant) {
        if self.upgrade_deadline().is_some_and(|t| t <= now) {
            self.upgrade_event(None);
        }
        let due = self.respawn_at.iter().filter(|&&t| t <= now).count();
        self.respawn_at.retain(|&t| t > now);
        for _ in 0..due {
            self.respawn(now);
        }
        for (_, w) in self.workers.iter_mut() {
            if w.kill_at.is_some_and(|t| t <= now) {
                // Once: the pidfd says when it is gone (a process in uninterruptible sleep
                // may take a while), and the loop must not spin on a passed deadline.
                w.kill_at = None;
                let pid = w.pid;
                if w.state == State::Starting {
                    tracing::error!(pid, "worker {pid} not ready within --worker-ready-timeout: SIGKILL");
                } else {
                    tracing::warn!(pid, "worker {pid} did not exit in time: SIGKILL");
                }
                signal(pid, rustix::process::Signal::KILL);
            }
        }
        if self.pending.as_ref().is_some_and(|g| g.ready_by <= now) {
            let secs = self.ready_timeout().as_secs_f64();
            self.discard_pending(format!("not ready within --worker-ready-timeout {secs} s"));
        }
        if self.current.as_ref().is_some_and(|g| g.ready_by <= now) && !self.announced {
            let secs = self.ready_timeout().as_secs_f64();
            tracing::error!("no worker became ready within --worker-ready-timeout {secs} s; stopping");
            self.failed = Some(format!("no worker became ready within --worker-ready-timeout {secs} s"));
            self.shutdown(rustix::process::Signal::KILL);
        }
        if now >= self.next_history {
            self.next_history = now + Duration::from_secs_f64(self.args.status_chart_interval);
            let totals = tree::totals(&self.workers_view(), &self.record);
            self.record.history.record(std::time::SystemTime::now(), totals.plugins);
        }
        if now >= self.next_report {
            self.next_report = now + REPORT_EVERY;
            let ready: Vec<usize> =
                self.workers.iter().filter(|(_, w)| w.state == State::Ready).map(|(k, _)| k).collect();
            for k in ready {
                self.send(k, &ToWorker::Report);
            }
        }
        for (key, id, tree) in self.trees.expired(now, &self.workers_view(), &self.record) {
            self.send(key, &ToWorker::Tree { id, tree });
        }
    }

    /// Starts a worker in place of one that died (or a failed start); on failure, tries
    /// again after the backoff, at least a second later.
    fn respawn(&mut self, now: Instant) {
        let id = self.current.as_ref().map(|g| g.snapshot.id);
        if let Some(id) = id.filter(|_| self.stopping.is_none())
            && let Err(e) = self.spawn(id, None)
        {
            tracing::error!("starting a worker failed: {e:#}; trying again");
            self.respawn_at.push(now + self.backoff().max(Duration::from_secs(1)));
        }
    }

    /// The generation SIGTTIN/SIGTTOU act on: the one starting, if any (it becomes the
    /// serving one), and the serving one.
    fn scaled_generations(&self) -> Vec<u64> {
        [&self.current, &self.pending].into_iter().flatten().map(|g| g.snapshot.id).collect()
    }

    fn on_signal(&mut self, sig: i32) {
        match sig {
            SIGHUP if self.stopping.is_none() => self.reload(),
            SIGTERM | SIGINT if self.stopping.is_none() => {
                tracing::info!(
                    "shutting down: draining {} worker(s) for up to {} s",
                    self.workers.len(),
                    self.args.graceful_timeout
                );
                self.shutdown(rustix::process::Signal::TERM);
            }
            SIGTERM | SIGINT => {
                tracing::warn!("second shutdown signal: stopping every worker now");
                self.shutdown(rustix::process::Signal::QUIT);
            }
            SIGQUIT => {
                tracing::warn!("SIGQUIT: stopping every worker now");
                self.shutdown(rustix::process::Signal::QUIT);
            }
            SIGUSR2 => self.start_upgrade(),
            SIGUSR1 => {
                // The workers write the access log: each reopens its own file.
                tracing::info!("SIGUSR1: reopening the access log in every worker");
                crate::access_log::request_reopen();
                for (_, w) in self.workers.iter() {
                    signal(w.pid, rustix::process::Signal::USR1);
                }
            }
            SIGALRM | SIGVTALRM | SIGPROF | SIGIO => {
                let name = signal_hook::low_level::signal_name(sig).unwrap_or("a signal");
                tracing::info!("{name}: not used by portico; ignored");
            }
            SIGTTIN if self.stopping.is_none() => {
                self.target += 1;
                self.record.target = self.target;
                tracing::info!("SIGTTIN: {} worker(s)", self.target);
                for id in self.scaled_generations() {
                    if let Err(e) = self.spawn(id, None) {
                        tracing::error!("starting a worker failed: {e:#}; trying again");
                        if self.current.as_ref().is_some_and(|g| g.snapshot.id == id) {
                            self.respawn_at.push(Instant::now() + Duration::from_secs(1));
                        }
                    }
                }
            }
            SIGTTOU if self.stopping.is_none() && self.target > 1 => {
                self.target -= 1;
                self.record.target = self.target;
                tracing::info!("SIGTTOU: {} worker(s)", self.target);
                for id in self.scaled_generations() {
                    let newest = self
                        .workers
                        .iter()
                        .filter(|(_, w)| w.generation == id && w.state != State::Stopping)
                        .max_by_key(|(_, w)| w.started)
                        .map(|(k, _)| k);
                    if let Some(k) = newest {
                        self.stop(k);
                    }
                }
            }
            _ => {}
        }
    }

    /// Stops every worker with `sig` (TERM drains, QUIT and KILL stop at once). A worker
    /// already draining is not sent TERM again (a second TERM makes a worker exit at once).
    fn shutdown(&mut self, sig: rustix::process::Signal) {
        self.abandon_upgrade();
        let grace = Duration::from_secs(self.args.graceful_timeout) + KILL_MARGIN;
        let deadline = if sig == rustix::process::Signal::TERM { grace } else { Duration::from_secs(2) };
        let now = Instant::now();
        self.stopping = Some(self.stopping.map_or(now + deadline, |d| d.min(now + deadline)));
        self.respawn_at.clear();
        self.pending = None;
        for (_, w) in self.workers.iter_mut() {
            let draining = w.state == State::Stopping;
            w.state = State::Stopping;
            if !(draining && w.kill_at.is_none()) {
                w.kill_at = Some(w.kill_at.map_or(now + deadline, |t| t.min(now + deadline)));
            }
            if !(draining && sig == rustix::process::Signal::TERM) {
                signal(w.pid, sig);
            }
        }
    }
}
