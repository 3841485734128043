//! Wiring: binds the listeners, loads what serves ([`crate::reload::initial`]), starts the
//! worker pool, the event loops and the signal thread, and waits for shutdown.
//!
//! Signals (signal-hook): SIGHUP reloads on the signal thread ([`crate::reload::reload`];
//! requests never wait for it); SIGTERM and SIGINT stop accepting and drain requests in flight
//! for up to the graceful timeout, then the process exits 0. A second SIGTERM/SIGINT exits at
//! once (1).

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use mio::{Poll, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::exchange::Notifier;
use crate::io::balance::Balance;
use crate::io::event_loop::{self, EventLoop};
use crate::metrics::counters::Stats;
use crate::plugin::registry::Registry;
use crate::reload;
use crate::routing::Current;
use crate::settings::Args;
use crate::settings::file::Loaded;
use crate::static_files::{self, StaticFiles};
use crate::worker::{self, Pool};

/// Runs the server until SIGTERM/SIGINT has drained it.
///
/// # Errors
/// The docroot does not exist, a mount names a plugin that did not load, a listener cannot be
/// bound, or a thread cannot start.
pub fn run(args: Args, config: Option<Loaded>) -> anyhow::Result<()> {
    let docroot = std::fs::canonicalize(&args.docroot)
        .with_context(|| format!("docroot {} does not exist", args.docroot.display()))?;
    let cache_dir = args.cache_dir.clone().unwrap_or_else(|| args.plugins.join(".cache"));
    let registry = Arc::new(Registry::new(args.plugins.clone(), cache_dir));
    let site = reload::Site { docroot: docroot.clone(), apps: args.app_defaults() };
    let routes = Arc::new(Current::new(reload::initial(&registry, config.as_ref(), &site)?));

    let listeners = args
        .bind
        .iter()
        .map(|addr| TcpListener::bind(addr).with_context(|| format!("binding {addr}")))
        .collect::<anyhow::Result<Vec<_>>>()?;

    raise_open_file_limit();
    let threads = args.worker_threads();
    let io_threads = usize::from(args.io_threads);
    let shutting_down = Arc::new(AtomicBool::new(false));
    let (job_tx, job_rx) = crossbeam_channel::unbounded();
    let queue = job_rx.clone();
    let stats = Arc::new(Stats::new(io_threads, threads, Box::new(move || queue.len())));
    let shared = Arc::new(event_loop::Shared {
        config: args.config(),
        docroot: docroot.clone(),
        routes: Arc::clone(&routes),
        shutting_down: Arc::clone(&shutting_down),
        statics: static_files::Options::from_args(&args),
        balance: Balance::new(io_threads),
        stats: Arc::clone(&stats),
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
    let addrs: Vec<_> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    let mut event_loops = Vec::with_capacity(io_threads);
    for (index, (poll, completions)) in polls.into_iter().zip(receivers).enumerate() {
        // Every event loop registers the same listening sockets; whichever wakes first
        // accepts (the others see WouldBlock).
        let ls = listeners.iter().map(TcpListener::try_clone).collect::<std::io::Result<Vec<_>>>()?;
        let l = EventLoop::new(index, poll, ls, completions, notifier.clone(), job_tx.clone(), Arc::clone(&shared))
            .context("starting an event loop")?;
        event_loops.push(l);
    }
    drop(job_tx);
    drop(listeners);
    let workers = Arc::new(worker::Shared {
        notifier,
        shutting_down: Arc::clone(&shutting_down),
        stats: Arc::clone(&stats),
        docroot: Arc::new(Mutex::new(StaticFiles::new(docroot.clone(), static_files::Options::from_args(&args)))),
    });
    let pool = Pool::start(threads, job_rx, workers).context("starting the workers")?;

    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT]).context("installing signal handlers")?;
    {
        let routes = Arc::clone(&routes);
        let stats = Arc::clone(&stats);
        let mut config = config;
        std::thread::Builder::new().name("portico-signals".into()).spawn(move || {
            for sig in signals.forever() {
                match sig {
                    SIGHUP => reload::reload(&registry, &routes, &stats, &mut config, &site),
                    _ => {
                        if shutting_down.swap(true, Ordering::SeqCst) {
                            tracing::warn!("second shutdown signal: exiting now");
                            std::process::exit(1);
                        }
                        for waker in &wakers {
                            let _ = waker.wake();
                        }
                    }
                }
            }
        })?;
    }

    let mut handles = Vec::with_capacity(io_threads);
    for (i, l) in event_loops.into_iter().enumerate() {
        let run = move || {
            // A panic here is a bug in the server, and the loop's connections are gone with
            // it: fail fast so a supervisor restarts a whole server (the panic message is
            // already on stderr), rather than limp on with a dead loop still picked for new
            // connections.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l.run())).unwrap_or_else(|_| {
                tracing::error!("event loop {i} panicked; exiting");
                std::process::exit(70)
            })
        };
        handles.push(std::thread::Builder::new().name(format!("portico-io-{i}")).spawn(run)?);
    }
    let table = routes.load_full();
    let mut names: Vec<_> = table.plugins.values().map(|p| format!("{} {}", p.name, p.version)).collect();
    names.sort();
    tracing::info!(
        "docroot {}; plugins from {}: {}",
        docroot.display(),
        args.plugins.display(),
        if names.is_empty() { "none".to_owned() } else { names.join(", ") }
    );
    tracing::info!("{threads} worker threads, {io_threads} event loop{}", if io_threads == 1 { "" } else { "s" });
    for addr in &addrs {
        tracing::info!("listening on http://{addr}");
    }

    let mut drained = true;
    for handle in handles {
        drained &=
            handle.join().map_err(|_| anyhow::anyhow!("an event loop panicked"))?.context("event loop failed")?;
    }
    if drained {
        // Every connection is done, so the workers are idle; the job sender is gone, so
        // they exit.
        pool.join();
    } else {
        // Past the graceful timeout an application may still be running: do not wait for
        // it. Returning from main ends the process and its worker threads.
        tracing::warn!("exiting with applications still running on workers");
    }
    tracing::info!("stopped");
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
