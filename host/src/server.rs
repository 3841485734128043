//! Wiring: binds the listeners, loads the plugins, starts the worker pool, the I/O thread and
//! the signal thread, and waits for shutdown.
//!
//! Signals (signal-hook): SIGHUP rescans `plugins/` on the signal thread (requests never wait
//! for it); SIGTERM and SIGINT stop accepting and drain requests in flight for up to the
//! graceful timeout, then the process exits 0. A second SIGTERM/SIGINT exits at once (1).

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use mio::{Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::Args;
use crate::config_file::Loaded;
use crate::mount::Mounts;
use crate::plugin::loader;
use crate::plugin::registry::{self, Registry};
use crate::reactor::{Balance, Notifier, Reactor, Shared};
use crate::stats::{ReloadOutcome, Stats};
use crate::worker::Pool;

/// Runs the server until SIGTERM/SIGINT has drained it.
///
/// # Errors
/// The docroot does not exist, a listener cannot be bound, or a thread cannot start.
pub fn run(args: Args, config: Option<Loaded>) -> anyhow::Result<()> {
    let docroot = std::fs::canonicalize(&args.docroot)
        .with_context(|| format!("docroot {} does not exist", args.docroot.display()))?;
    let cache_dir = args.cache_dir.clone().unwrap_or_else(|| args.plugins.join(".cache"));
    let registry = Arc::new(Registry::new(args.plugins.clone(), cache_dir));
    if let Some(c) = &config {
        registry.set_configs(plugin_configs(c));
    }
    let report = registry.scan();
    registry::log_report(&report, true);
    let mounts = match &config {
        Some(c) => {
            Mounts::validate(c, &registry.snapshot())?;
            Mounts::from_config(c)
        }
        None => Mounts::default(),
    };
    for m in mounts.list() {
        tracing::info!("mount {} → {} (middleware: {})", m.prefix, m.app, m.middleware.join(", "));
    }

    let listeners = args
        .bind
        .iter()
        .map(|addr| TcpListener::bind(addr).with_context(|| format!("binding {addr}")))
        .collect::<anyhow::Result<Vec<_>>>()?;

    raise_open_file_limit();
    let threads = args.worker_threads();
    let shutting_down = Arc::new(AtomicBool::new(false));
    let (job_tx, job_rx) = crossbeam_channel::unbounded();
    let stats = Arc::new(Stats::new(usize::from(args.io_threads), threads, job_rx.clone()));
    let shared = Arc::new(Shared {
        config: args.config(),
        docroot: docroot.clone(),
        registry: Arc::clone(&registry),
        shutting_down: Arc::clone(&shutting_down),
        statics: args.static_options(),
        balance: Balance::new(usize::from(args.io_threads)),
        mounts: arc_swap::ArcSwap::from_pointee(mounts),
        static_app: Arc::new(std::sync::Mutex::new(crate::static_files::StaticFiles::new(
            docroot.clone(),
            args.static_options(),
        ))),
        stats: Arc::clone(&stats),
    });
    let io_threads = usize::from(args.io_threads);
    let mut polls = Vec::with_capacity(io_threads);
    let mut loops = Vec::with_capacity(io_threads);
    let mut receivers = Vec::with_capacity(io_threads);
    for _ in 0..io_threads {
        let poll = Poll::new().context("creating the poller")?;
        let waker = Arc::new(Waker::new(poll.registry(), Token(usize::MAX)).context("creating the waker")?);
        let (tx, rx) = crossbeam_channel::unbounded();
        polls.push(poll);
        loops.push((tx, waker));
        receivers.push(rx);
    }
    let wakers: Vec<Arc<Waker>> = loops.iter().map(|(_, w)| Arc::clone(w)).collect();
    let notifier = Notifier::new(loops);
    let addrs: Vec<_> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    let mut reactors = Vec::with_capacity(io_threads);
    for (index, (poll, completions)) in polls.into_iter().zip(receivers).enumerate() {
        // Every I/O thread registers the same listening sockets; whichever wakes first
        // accepts (the others see WouldBlock).
        let ls = listeners.iter().map(std::net::TcpListener::try_clone).collect::<std::io::Result<Vec<_>>>()?;
        let reactor = Reactor::new(index, poll, ls, completions, notifier.clone(), job_tx.clone(), Arc::clone(&shared))
            .context("starting an I/O loop")?;
        reactors.push(reactor);
    }
    drop(job_tx);
    drop(listeners);
    let pool = Pool::start(threads, job_rx, notifier, Arc::clone(&shutting_down), stats);

    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT]).context("installing signal handlers")?;
    {
        let registry = Arc::clone(&registry);
        let shutting_down = Arc::clone(&shutting_down);
        let shared = Arc::clone(&shared);
        let mut config = config;
        std::thread::Builder::new().name("portico-signals".into()).spawn(move || {
            for sig in signals.forever() {
                match sig {
                    SIGHUP => reload(&registry, &shared, &mut config),
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
    for (i, reactor) in reactors.into_iter().enumerate() {
        let io = move || {
            // A panic here is a bug in the server, and the loop's connections are gone with
            // it: fail fast so a supervisor restarts a whole server (the panic message is
            // already on stderr), rather than limp on with a dead loop still picked for new
            // connections.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reactor.run())).unwrap_or_else(|_| {
                tracing::error!("I/O thread {i} panicked; exiting");
                std::process::exit(70)
            })
        };
        handles.push(std::thread::Builder::new().name(format!("portico-io-{i}")).spawn(io)?);
    }
    let snapshot = registry.snapshot();
    let mut names: Vec<_> = snapshot.values().map(|p| format!("{} {}", p.name, p.version)).collect();
    names.sort();
    tracing::info!(
        "docroot {}; plugins from {}: {}",
        docroot.display(),
        args.plugins.display(),
        if names.is_empty() { "none".to_owned() } else { names.join(", ") }
    );
    tracing::info!("{threads} worker threads, {io_threads} I/O thread{}", if io_threads == 1 { "" } else { "s" });
    for addr in &addrs {
        tracing::info!("listening on http://{addr}");
    }

    let mut drained = true;
    for io in handles {
        drained &= io.join().map_err(|_| anyhow::anyhow!("an I/O thread panicked"))?.context("I/O loop failed")?;
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

/// Each `[plugin.NAME]` table as TOML text, by plugin name.
fn plugin_configs(c: &Loaded) -> std::collections::HashMap<String, String> {
    c.file.plugin.keys().map(|name| (name.clone(), c.plugin_config(name))).collect()
}

/// SIGHUP: re-reads the configuration file (if any), then rescans the plugins with their new
/// settings, then swaps the mounts in. A file that does not parse changes nothing (the old
/// configuration and plugins keep serving); mounts that name a plugin that did not load are
/// refused and the old mounts stay. `[server]` settings need a restart (a warning says so).
/// The outcome is recorded in [`Stats`] for the status page.
fn reload(registry: &Registry, shared: &Shared, config: &mut Option<Loaded>) {
    let next = match config.as_ref().map(|c| Loaded::read(&c.path)) {
        None => None,
        Some(Ok(next)) => Some(next),
        Some(Err(e)) => {
            tracing::error!("SIGHUP: configuration not reloaded, the previous one keeps serving: {e}");
            let summary = "nothing applied: the configuration file was refused".to_owned();
            shared.stats.record_reload(ReloadOutcome::Failed, summary, Some(e.to_string()));
            return;
        }
    };
    tracing::info!("SIGHUP: rescanning {}", registry.dir().display());
    let old_configs = registry.configs();
    if let Some(next) = &next {
        if let Some(old) = config.as_ref()
            && toml::Table::try_from(&old.file.server).ok() != toml::Table::try_from(&next.file.server).ok()
        {
            tracing::warn!("SIGHUP: [server] settings changed in {}; they take effect on restart", next.path.display());
        }
        registry.set_configs(plugin_configs(next));
    }
    // Load into a staged set; nothing serves it until the whole configuration checks out, so
    // a request never sees new mounts with old plugins or the reverse.
    let (staged, report) = registry.stage();
    let mut config_applied = false;
    let mut mounts_error = None;
    if let Some(next) = next {
        // A plugin the configuration names (in a mount or a [plugin.NAME] table) that failed to
        // load refuses the whole reload: its old version with the new mounts, or the new mounts
        // without it, could serve what the operator meant to filter.
        let named: std::collections::HashSet<&str> = next
            .file
            .plugin
            .keys()
            .map(String::as_str)
            .chain(next.file.mount.iter().flat_map(|m| m.app.iter().chain(&m.middleware).map(|n| n.get_ref().as_str())))
            .collect();
        let refused: Vec<String> = report
            .failed
            .iter()
            .filter(|(path, _)| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(loader::route_name)
                    .is_some_and(|n| named.contains(n))
            })
            .map(|(path, e)| format!("{}: {e}", path.display()))
            .collect();
        let checked = if refused.is_empty() {
            Mounts::validate(&next, &staged).map_err(|e| e.to_string())
        } else {
            Err(format!("a plugin the configuration names did not load: {}", refused.join("; ")))
        };
        match checked {
            Ok(()) => {
                // Mounts first: a plugin that only a new mount may reach is not in the set yet
                // (404) rather than reachable around its middleware for a moment.
                shared.mounts.store(Arc::new(Mounts::from_config(&next)));
                registry.publish(staged);
                registry::log_report(&report, false);
                tracing::info!("SIGHUP: configuration {} reloaded", next.path.display());
                *config = Some(next);
                config_applied = true;
            }
            Err(e) => {
                registry.set_configs(old_configs);
                registry::log_report(&report, false);
                tracing::error!("SIGHUP: reload refused, the previous configuration and plugins keep serving: {e}");
                mounts_error = Some(format!("reload refused: {e}"));
                let nothing = registry::ReloadReport { failed: report.failed, ..Default::default() };
                record_reload(&shared.stats, &nothing, false, mounts_error);
                return;
            }
        }
    } else {
        registry.publish(staged);
        registry::log_report(&report, false);
    }
    record_reload(&shared.stats, &report, config_applied, mounts_error);
}

/// Records a reload's outcome: `ok` when nothing was refused; `partial` when something was
/// refused and something else applied; `failed` when nothing new was applied.
fn record_reload(stats: &Stats, report: &registry::ReloadReport, config_applied: bool, mounts_error: Option<String>) {
    let mut errors: Vec<String> = report.failed.iter().map(|(path, e)| format!("{}: {e}", path.display())).collect();
    errors.extend(mounts_error);
    let changed = !(report.added.is_empty() && report.reloaded.is_empty() && report.removed.is_empty());
    let outcome = match (errors.is_empty(), changed || config_applied) {
        (true, _) => ReloadOutcome::Ok,
        (false, true) => ReloadOutcome::Partial,
        (false, false) => ReloadOutcome::Failed,
    };
    let mut summary = format!(
        "{} loaded, {} reloaded, {} removed, {} refused",
        report.added.len(),
        report.reloaded.len(),
        report.removed.len(),
        report.failed.len()
    );
    if config_applied {
        summary.push_str("; configuration reloaded");
    }
    let error = (!errors.is_empty()).then(|| errors.join("\n"));
    stats.record_reload(outcome, summary, error);
}
