//! Wiring of one serving process: loads what serves ([`crate::reload::initial`]), starts the
//! worker pool, the event loops and the signal thread over the listeners it is given, and
//! waits for shutdown. It runs as a worker process under the master (`crate::master`; the
//! listeners and a control socket inherited), or alone with `--workers 0` (it binds the
//! listeners itself, or takes systemd's).
//!
//! Signals (signal-hook): SIGTERM and SIGINT stop accepting and drain requests in flight for
//! up to the graceful timeout, then the process exits 0; alone, a second one exits at once (1)
//! (a worker may get the same signal from its process group and from its master: it drains).
//! SIGQUIT exits at once (0). SIGHUP reloads on a thread of its own when alone
//! ([`crate::reload::reload`], each changed plugin test-loaded in a child process first;
//! requests and signals never wait for it); a worker ignores it (the master reloads by
//! generation).

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use mio::{Poll, Waker};
use signal_hook::consts::{SIGALRM, SIGHUP, SIGINT, SIGIO, SIGPROF, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGVTALRM};
use signal_hook::iterator::Signals;

use crate::control::{self, ToMaster, ToWorker, TreeLink, WorkerReport};
use crate::exchange::Notifier;
use crate::io::balance::Balance;
use crate::io::event_loop::{self, EventLoop};
use crate::io::inline;
use crate::listeners::{self, Listener};
use crate::metrics::counters::{Setup, Stats, resident_memory_bytes};
use crate::plugin::registry::Registry;
use crate::reload;
use crate::routing::Current;
use crate::settings::Args;
use crate::settings::file::Loaded;
use crate::static_files::{self, StaticFiles};
use crate::worker::{self, Pool};

/// How this process serves.
enum Role {
    /// Alone (`--workers 0`): it bound the listeners, and reloads in place on SIGHUP.
    Alone,
    /// A worker process of generation `generation`, talking to its master over `control`.
    Worker {
        /// The control socket.
        control: UnixStream,
    },
}

/// Runs the server in this one process (`--workers 0`) until SIGTERM/SIGINT has drained it;
/// `inherited` are systemd's sockets (served instead of `--bind` when there are any).
///
/// # Errors
/// The docroot does not exist, a mount names a plugin that did not load, a listener cannot be
/// bound, or a thread cannot start.
pub fn run(args: Args, config: Option<Loaded>, inherited: Vec<Listener>) -> anyhow::Result<()> {
    let listeners = listeners::open(inherited, &args.bind, args.unix_socket_mode, args.backlog)?;
    let pid_file = args.pid_file.clone();
    if let Some(path) = &pid_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing the pid file {}", path.display()))?;
    }
    let result = serve(args, config, &listeners, Role::Alone);
    if let Some(path) = &pid_file {
        let _ = std::fs::remove_file(path);
    }
    for l in &listeners {
        l.remove_file();
    }
    result
}

/// Runs a worker process: serves `listeners` (inherited from the master) until told to stop,
/// reporting to the master over `control`.
///
/// # Errors
/// As [`run`], except binding.
pub fn run_worker(
    args: Args,
    config: Option<Loaded>,
    listeners: Vec<Listener>,
    control: UnixStream,
) -> anyhow::Result<()> {
    if !args.worker_core_dumps {
        // A crashing worker's clients wait for its core to be written (2.7 s for 512 MiB in
        // the process-model research): none unless asked for.
        let none = rustix::process::Rlimit { current: Some(0), maximum: None };
        let hard = rustix::process::getrlimit(rustix::process::Resource::Core).maximum;
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Core,
            rustix::process::Rlimit { maximum: hard, ..none },
        );
    }
    // Should the master die without stopping us, drain and exit rather than linger.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    serve(args, config, &listeners, Role::Worker { control })
}

fn serve(args: Args, config: Option<Loaded>, listeners: &[Listener], role: Role) -> anyhow::Result<()> {
    let docroot = crate::settings::docroot_dir(&args.docroot).map_err(anyhow::Error::msg)?;
    let cache_dir = args.cache_dir.clone().unwrap_or_else(|| args.plugins.join(".cache"));
    crate::plugin::loader::set_facts(crate::plugin::loader::Facts::of(&args, config.as_ref()));
    let registry = Arc::new(match role {
        Role::Alone => Registry::new(args.plugins.clone(), cache_dir),
        // Its generation's snapshot: private copies already, loaded where they are.
        Role::Worker { .. } => Registry::snapshot(args.plugins.clone(), cache_dir),
    });
    let site = reload::Site { docroot: docroot.clone(), apps: args.app_defaults() };
    let (table, refused) = reload::initial(&registry, config.as_ref(), &site)?;
    let routes = Arc::new(Current::new(table));
    if matches!(role, Role::Alone) {
        registry.probe_first(Duration::from_secs_f64(args.worker_ready_timeout));
    }

    let (link, tree) = match &role {
        Role::Alone => (None, None),
        Role::Worker { control } => {
            let link = Arc::new(Mutex::new(control.try_clone().context("cloning the control socket")?));
            (Some(Arc::clone(&link)), Some(Arc::new(TreeLink::new(link))))
        }
    };
    raise_open_file_limit();
    let threads = args.worker_threads();
    let io_threads = usize::from(args.io_threads);
    let shutting_down = Arc::new(AtomicBool::new(false));
    let (job_tx, job_rx) = crossbeam_channel::unbounded();
    let queue = job_rx.clone();
    let stats = Arc::new(Stats::new(io_threads, threads, Box::new(move || queue.len())));
    stats.set_refused(refused);
    stats.set_setup(Setup {
        config_file: config.as_ref().map(|c| c.path.clone()),
        config_loaded_at: config.as_ref().map(|_| std::time::SystemTime::now()),
        listeners: listeners.iter().map(|l| l.describe_as(args.tls_cert.is_some())).collect(),
        inline_calls: args.inline_timeout().is_some(),
    });
    // TLS: the certificate and key read now (a worker of a new generation reads them anew;
    // alone, SIGHUP reads them again below).
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(arc_swap::ArcSwap::new(crate::tls::server_config(cert, key)?))),
        _ => None,
    };
    let shared = Arc::new(event_loop::Shared {
        config: args.config(),
        docroot: docroot.clone(),
        routes: Arc::clone(&routes),
        shutting_down: Arc::clone(&shutting_down),
        statics: static_files::Options::from_args(&args),
        balance: Balance::new(io_threads),
        stats: Arc::clone(&stats),
        tree: tree.clone(),
        tls: tls.clone(),
    });
    let mut polls = Vec::with_capacity(io_threads);
    let mut loops = Vec::with_capacity(io_threads);
    let mut receivers = Vec::with_capacity(io_threads);
    for _ in 0..io_threads {
        let poll = Poll::new().context("creating the poller")?;
        let waker = Arc::new(Waker::new(poll.registry(), event_loop::WAKER).context("creating the waker")?);
        let (tx, rx) = crossbeam_channel::unbounded();
        polls.push(poll);
        loops.push((tx, waker));
        receivers.push(rx);
    }
    let wakers: Vec<Arc<Waker>> = loops.iter().map(|(_, w)| Arc::clone(w)).collect();
    let notifier = Notifier::new(loops);
    let mut event_loops = Vec::with_capacity(io_threads);
    for (index, (poll, completions)) in polls.into_iter().zip(receivers).enumerate() {
        // Every event loop registers the same listening sockets; whichever wakes first
        // accepts (the others see WouldBlock).
        let ls = listeners.iter().map(Listener::try_clone).collect::<std::io::Result<Vec<_>>>()?;
        let l = EventLoop::new(index, poll, ls, completions, notifier.clone(), job_tx.clone(), Arc::clone(&shared))
            .context("starting an event loop")?;
        event_loops.push(l);
    }
    drop(job_tx);
    let workers = Arc::new(worker::Shared {
        notifier,
        shutting_down: Arc::clone(&shutting_down),
        stats: Arc::clone(&stats),
        docroot: Arc::new(Mutex::new(StaticFiles::new(docroot.clone(), static_files::Options::from_args(&args)))),
    });
    let pool = Arc::new(Pool::start(threads, job_rx, workers).context("starting the workers")?);

    // The charts' samples (alone: a master samples its workers' totals itself), when there is
    // a status page to show them.
    if matches!(role, Role::Alone) && args.status_path != "off" {
        let stats = Arc::clone(&stats);
        let every = Duration::from_secs_f64(args.status_chart_interval);
        std::thread::Builder::new()
            .name("portico-history".into())
            .spawn(move || {
                loop {
                    stats.record_history();
                    std::thread::sleep(every);
                }
            })
            .context("starting the chart sampler")?;
    }

    // Idempotent: the master gone (end of input on the control socket) and its death signal
    // both drain, once. Only a second SIGTERM/SIGINT exits at once (the signal thread counts).
    let stop = {
        let shutting_down = Arc::clone(&shutting_down);
        let wakers = wakers.clone();
        move || {
            shutting_down.store(true, Ordering::SeqCst);
            for waker in &wakers {
                let _ = waker.wake();
            }
        }
    };
    // Every signal whose default would end the process silently is heard (issue 15): the
    // unused ones are logged and ignored.
    let mut signals =
        Signals::new([SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGIO])
            .context("installing signal handlers")?;
    {
        let routes = Arc::clone(&routes);
        let stats = Arc::clone(&stats);
        let config = Arc::new(Mutex::new(config));
        let alone = matches!(role, Role::Alone);
        let stop = stop.clone();
        let tls_files = (args.tls_cert.clone(), args.tls_key.clone());
        std::thread::Builder::new().name("portico-signals".into()).spawn(move || {
            let mut terms = 0;
            for sig in signals.forever() {
                match sig {
                    SIGHUP if alone => {
                        // As a new generation's workers do when they open it: a log moved
                        // away before the SIGHUP gets a new file.
                        crate::access_log::request_reopen();
                        // On its own thread: a plugin's test load may take up to
                        // --worker-ready-timeout, and SIGTERM must still be heard meanwhile.
                        // Reloads run one at a time (the lock); one asked for during another
                        // runs after it.
                        let (registry, routes, stats, config, site, tls, tls_files) = (
                            Arc::clone(&registry),
                            Arc::clone(&routes),
                            Arc::clone(&stats),
                            Arc::clone(&config),
                            site.clone(),
                            tls.clone(),
                            tls_files.clone(),
                        );
                        let spawned = std::thread::Builder::new().name("portico-reload".into()).spawn(move || {
                            let mut config = config.lock().unwrap_or_else(|e| e.into_inner());
                            reload::reload(&registry, &routes, &stats, &mut config, &site);
                            if let (Some(swap), Some(cert), Some(key)) = (&tls, &tls_files.0, &tls_files.1) {
                                match crate::tls::server_config(cert, key) {
                                    Ok(c) => {
                                        swap.store(c);
                                        tracing::info!("SIGHUP: TLS certificate {} read again", cert.display());
                                    }
                                    Err(e) => tracing::error!(
                                        "SIGHUP: TLS certificate not reloaded, the previous one serves: {e}"
                                    ),
                                }
                            }
                        });
                        if let Err(e) = spawned {
                            tracing::error!("SIGHUP: cannot start the reload: {e}");
                        }
                    }
                    SIGHUP => {}
                    SIGUSR1 => {
                        tracing::info!("SIGUSR1: reopening the access log");
                        crate::access_log::request_reopen();
                    }
                    SIGUSR2 if alone => {
                        tracing::warn!(
                            "SIGUSR2: a binary upgrade needs worker processes (--workers 1 or more); ignored"
                        );
                    }
                    SIGUSR2 | SIGALRM | SIGVTALRM | SIGPROF | SIGIO => {
                        let name = signal_hook::low_level::signal_name(sig).unwrap_or("a signal");
                        tracing::info!("{name}: not used by portico; ignored");
                    }
                    SIGQUIT => {
                        tracing::warn!("SIGQUIT: exiting now");
                        std::process::exit(0);
                    }
                    _ => {
                        // Alone, a second SIGTERM/SIGINT exits at once. A worker only drains:
                        // the same signal may reach it twice (Ctrl-C or systemd signal the
                        // whole process group, then the master sends its own SIGTERM); the
                        // master says "at once" with SIGQUIT.
                        terms += 1;
                        if alone && terms > 1 {
                            tracing::warn!("second shutdown signal: exiting now");
                            std::process::exit(1);
                        }
                        stop();
                    }
                }
            }
        })?;
    }

    let (done_tx, done) = crossbeam_channel::unbounded();
    let ctx = Arc::new(inline::Ctx {
        workers: pool.handle(),
        timeout: shared.config.inline_timeout.unwrap_or(Duration::MAX),
        done: done_tx,
    });
    for l in event_loops {
        inline::start(Box::new(l), Arc::clone(&ctx))?;
    }
    drop(ctx);
    let table = routes.load_full();
    let mut names: Vec<_> = table.plugins.values().map(|p| format!("{} {}", p.name, p.version)).collect();
    names.sort();
    match role {
        Role::Alone => {
            tracing::info!(
                "docroot {}; plugins from {}: {}",
                docroot.display(),
                args.plugins.display(),
                if names.is_empty() { "none".to_owned() } else { names.join(", ") }
            );
            tracing::info!(
                "{threads} worker threads, {io_threads} event loop{}",
                if io_threads == 1 { "" } else { "s" }
            );
            for l in listeners {
                tracing::info!("listening on {}", l.describe_as(args.tls_cert.is_some()));
            }
        }
        Role::Worker { control } => {
            let (Some(link), Some(tree)) = (link, tree) else { unreachable!("a worker has its link") };
            control::send(&link, &ToMaster::Ready { plugins: names })?;
            start_link(control, Arc::clone(&link), tree, Arc::clone(&stats), stop.clone())?;
            start_recycler(&args, link, Arc::clone(&stats), Arc::clone(&pool))?;
        }
    }

    // Each loop reports its end from whichever thread drives it then (a loop moves to a new
    // thread when a plugin breaks its promise never to block: `io::inline`).
    let mut drained = true;
    for _ in 0..io_threads {
        let (i, result) = done.recv().map_err(|_| anyhow::anyhow!("an event loop ended without a word"))?;
        drained &= result.with_context(|| format!("event loop {i} failed"))?;
    }
    if drained {
        // Every connection is done, so the workers are idle; the job sender is gone, so
        // they exit.
        if let Ok(pool) = Arc::try_unwrap(pool) {
            pool.join();
        }
    } else {
        // Past the graceful timeout an application may still be running: do not wait for
        // it. Returning from main ends the process and its worker threads.
        tracing::warn!("exiting with applications still running on workers");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The worker's side of the control channel: answers the master's requests; the master gone
/// (end of input) drains this worker like SIGTERM.
fn start_link(
    control: UnixStream,
    link: Arc<Mutex<UnixStream>>,
    tree: Arc<TreeLink>,
    stats: Arc<Stats>,
    stop: impl Fn() + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("portico-control".into()).spawn(move || {
        control::read_all(control, |msg: ToWorker| match msg {
            ToWorker::Report => {
                let _ = control::send(&link, &ToMaster::Report(report(&stats)));
            }
            ToWorker::Tree { id, tree: view } => tree.answered(id, view),
        });
        tracing::warn!("the master process is gone: draining");
        stop();
    })?;
    Ok(())
}

/// This worker's counters for the master.
pub(crate) fn report(stats: &Stats) -> WorkerReport {
    let plugins = stats.plugin_totals();
    WorkerReport {
        requests: stats.requests_served(),
        responses: stats.responses().to_vec(),
        static_responses: stats.static_responses().to_vec(),
        rss_bytes: resident_memory_bytes(),
        connections: stats.connections().open as u64,
        plugins,
    }
}

/// Checks once a second whether this worker should be replaced (`--max-requests` with its
/// jitter, `--max-worker-memory`, `--max-abandoned`) and asks the master (again every 30 s,
/// should a replacement fail to start).
fn start_recycler(
    args: &Args,
    link: Arc<Mutex<UnixStream>>,
    stats: Arc<Stats>,
    pool: Arc<Pool>,
) -> std::io::Result<()> {
    let jitter = if args.max_requests_jitter > 0 {
        // Spread by the pid: workers started together get different limits.
        u64::from(std::process::id()) % (args.max_requests_jitter + 1)
    } else {
        0
    };
    let max_requests = (args.max_requests > 0).then(|| args.max_requests + jitter);
    let max_memory = (args.max_worker_memory > 0).then(|| args.max_worker_memory * 1024 * 1024);
    let max_abandoned = (args.max_abandoned > 0).then_some(args.max_abandoned as usize);
    if max_requests.is_none() && max_memory.is_none() && max_abandoned.is_none() {
        return Ok(());
    }
    std::thread::Builder::new().name("portico-recycle".into()).spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let served = stats.requests_served();
            let reason = if let Some(max) = max_requests.filter(|&m| served >= m) {
                format!("served {served} requests (--max-requests {max})")
            } else if let Some((rss, max)) =
                max_memory.and_then(|max| resident_memory_bytes().filter(|&r| r > max).map(|r| (r, max)))
            {
                format!("resident memory {} MiB over --max-worker-memory {} MiB", rss >> 20, max >> 20)
            } else if let Some(n) =
                max_abandoned.map(|_| pool.abandoned_running()).filter(|&n| Some(n) >= max_abandoned)
            {
                format!("{n} application calls abandoned past their deadline still running (--max-abandoned)")
            } else {
                continue;
            };
            tracing::info!("asking to be replaced: {reason}");
            let _ = control::send(&link, &ToMaster::Retire { reason });
            // Normally this process is told to drain long before; should its replacement
            // have failed to start, ask again.
            std::thread::sleep(Duration::from_secs(30));
        }
    })?;
    Ok(())
}

/// Raises the soft limit on open descriptors to the hard limit, as nginx's
/// `worker_rlimit_nofile` and Go's runtime do: every connection and every cached large file
/// holds one, and the common soft default (1024) is far below `--max-connections`. Logged;
/// a failure only leaves the limit as it was.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(current), hard) = (limit.current, limit.maximum) else { return };
    let target = hard.unwrap_or(u64::MAX).min(1 << 20);
    if target <= current {
        tracing::debug!("open file limit {current}");
        return;
    }
    match setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(target), maximum: hard }) {
        Ok(()) => tracing::info!("open file limit raised from {current} to {target}"),
        Err(e) => tracing::warn!("open file limit stays {current}: raising it to {target} failed: {e}"),
    }
}
