//! The master's workers: starting one, talking to it over its control socket (ready,
//! retire, reports, tree requests), stopping it, and what happens when one exits — logged
//! with its cause, replaced (with exponential backoff in a crash loop), or the end of a
//! generation that never became ready.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::{BACKOFF_MAX, KILL_MARGIN, Master, QUICK_DEATH, State, Worker, cause, signal, spawn, tree};
use crate::control::{self, ToMaster, ToWorker};

impl Master {
    /// Starts one worker of generation `id`.
    pub(super) fn spawn(&mut self, id: u64, replaces: Option<usize>) -> anyhow::Result<usize> {
        let snapshot = self.snapshot_of(id).context("no such generation")?.dir.clone();
        let ready_by = Instant::now() + self.ready_timeout();
        let entry = self.workers.vacant_entry();
        let key = entry.key();
        let cache = self.home.join("workers").join(format!("{id}-{key}-{}", self.record.workers_started + 1));
        let s = spawn::spawn(&self.worker_exe, &self.exe, &self.argv, &self.listeners, id, &snapshot, &cache)?;
        let pid = s.child.id();
        s.control.set_nonblocking(true)?;
        let mut control = mio::net::UnixStream::from_std(s.control);
        let registry = self.poll.registry();
        registry.register(&mut SourceFd(&s.pidfd.as_raw_fd()), Token(key * 2), Interest::READABLE)?;
        registry.register(&mut control, Token(key * 2 + 1), Interest::READABLE)?;
        entry.insert(Worker {
            pid,
            child: s.child,
            pidfd: s.pidfd,
            control,
            inbuf: Vec::new(),
            generation: id,
            started: Instant::now(),
            started_at: SystemTime::now(),
            state: State::Starting,
            report: None,
            cache,
            // Not ready by then: killed (and replaced, with the crash loop's backoff).
            kill_at: Some(ready_by),
            retiring: None,
            replaces,
        });
        self.record.workers_started += 1;
        tracing::debug!(pid, generation = id, "started worker {pid}");
        Ok(key)
    }

    pub(super) fn send(&mut self, key: usize, msg: &ToWorker) {
        let Some(w) = self.workers.get_mut(key) else { return };
        let Ok(mut line) = serde_json::to_vec(msg) else { return };
        line.push(b'\n');
        if let Err(e) = (&w.control).write_all(&line) {
            tracing::debug!(pid = w.pid, "control message not sent: {e}");
        }
    }

    /// Asks worker `key` to drain and exit (SIGTERM), with SIGKILL as the backstop.
    pub(super) fn stop(&mut self, key: usize) {
        let grace = Duration::from_secs(self.args.graceful_timeout) + KILL_MARGIN;
        if let Some(w) = self.workers.get_mut(key)
            && w.state != State::Stopping
        {
            w.state = State::Stopping;
            w.kill_at = Some(Instant::now() + grace);
            signal(w.pid, rustix::process::Signal::TERM);
        }
    }

    pub(super) fn read_control(&mut self, key: usize) {
        let mut msgs = Vec::new();
        if let Some(w) = self.workers.get_mut(key) {
            let mut buf = [0u8; 8192];
            loop {
                match (&w.control).read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => w.inbuf.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            msgs = control::take_lines::<ToMaster>(&mut w.inbuf);
        }
        for msg in msgs {
            self.on_message(key, msg);
        }
    }

    pub(super) fn on_message(&mut self, key: usize, msg: ToMaster) {
        match msg {
            ToMaster::Ready { plugins } => self.ready(key, plugins),
            ToMaster::Retire { reason } => {
                let Some(w) = self.workers.get_mut(key) else { return };
                if w.retiring.is_some() || w.state != State::Ready {
                    return;
                }
                let (pid, id) = (w.pid, w.generation);
                tracing::info!(pid, "replacing worker {pid}: {reason}");
                w.retiring = Some(reason);
                self.record.recycled += 1;
                if self.snapshot_of(id).is_some() {
                    if let Err(e) = self.spawn(id, Some(key)) {
                        tracing::error!("starting a replacement for worker {pid} failed: {e:#}");
                    }
                } else {
                    self.stop(key);
                }
            }
            ToMaster::Report(report) => {
                if let Some(w) = self.workers.get_mut(key) {
                    w.report = Some(report);
                }
                let view = self.workers_view();
                for (to, id, tree) in self.trees.answered(key, &view, &self.record) {
                    self.send(to, &ToWorker::Tree { id, tree });
                }
            }
            ToMaster::TreeRequest { id } => {
                let ready: Vec<usize> =
                    self.workers.iter().filter(|(_, w)| w.state == State::Ready).map(|(k, _)| k).collect();
                self.trees.ask(key, id, ready.clone(), Instant::now());
                for k in ready {
                    self.send(k, &ToWorker::Report);
                }
            }
        }
    }

    pub(super) fn ready(&mut self, key: usize, plugins: Vec<String>) {
        let Some(w) = self.workers.get_mut(key) else { return };
        if w.state != State::Starting {
            return;
        }
        w.state = State::Ready;
        w.kill_at = None;
        let (pid, id, replaces) = (w.pid, w.generation, w.replaces.take());
        tracing::info!(pid, generation = id, "worker {pid} ready (generation {id}; plugins: {})", plugins.join(", "));
        if let Some(old) = replaces {
            self.stop(old);
        }
        if self.pending.as_ref().is_some_and(|g| g.snapshot.id == id) {
            let ready = self.workers.iter().filter(|(_, w)| w.generation == id && w.state == State::Ready).count();
            if ready >= self.target {
                self.promote();
            }
        } else if !self.announced && self.current.as_ref().is_some_and(|g| g.snapshot.id == id) {
            let ready = self.workers.iter().filter(|(_, w)| w.generation == id && w.state == State::Ready).count();
            if ready >= self.target {
                self.announced = true;
                self.record.generations = 1;
                tracing::info!(
                    "master {}: {} worker process(es), each {} worker threads and {} event loop(s); docroot {}",
                    std::process::id(),
                    self.target,
                    self.args.worker_threads(),
                    self.args.io_threads,
                    self.args.docroot.display()
                );
                for l in &self.listeners {
                    tracing::info!("listening on {}", l.describe_as(self.args.tls_cert.is_some()));
                }
                if let Some(mut old) = self.upgrading_from.take() {
                    // SIGUSR2: the old master drains once it reads this.
                    let _ = old.write_all(b"ready\n");
                }
                // A SIGHUP that came during the start.
                self.next_reload();
            }
        }
    }

    /// Worker `key`'s pidfd is readable: it has exited.
    pub(super) fn exited(&mut self, key: usize) {
        // A "ready" that came with the exit counts: read it first.
        self.read_control(key);
        let Some(mut w) = self.workers.try_remove(key) else { return };
        let registry = self.poll.registry();
        let _ = registry.deregister(&mut SourceFd(&w.pidfd.as_raw_fd()));
        let _ = registry.deregister(&mut w.control);
        let status = w.child.wait().ok();
        let _ = std::fs::remove_dir_all(&w.cache);
        let why = cause(status);
        let (pid, id) = (w.pid, w.generation);
        self.trees.forget(key);
        self.record.retire(w.report.as_ref());
        if w.state == State::Stopping {
            tracing::info!(pid, generation = id, "worker {pid} {why}");
            self.cleanup_snapshots();
            return;
        }
        let running: Vec<String> = w
            .report
            .iter()
            .flat_map(|r| r.plugins.iter().filter(|p| p.in_flight > 0).map(|p| p.name.clone()))
            .collect();
        let apps = if running.is_empty() { String::new() } else { format!("; it was running: {}", running.join(", ")) };
        let before_ready = w.state == State::Starting;
        tracing::error!(
            pid,
            generation = id,
            "worker {pid} (generation {id}) {why}{}{apps}",
            if before_ready { " before it was ready" } else { "" }
        );
        self.record.died(pid, id, format!("{why}{apps}"));
        if self.pending.as_ref().is_some_and(|g| g.snapshot.id == id) {
            self.discard_pending(format!("worker {pid} {why} before it was ready"));
            return;
        }
        if self.current.as_ref().is_none_or(|g| g.snapshot.id != id) || self.stopping.is_some() {
            return;
        }
        if before_ready && !self.announced {
            tracing::error!("the first generation's worker could not start; stopping");
            self.failed = Some(format!("worker {pid} {why} before it was ready (its log lines are above)"));
            self.shutdown(rustix::process::Signal::KILL);
            return;
        }
        if let Some(old) = w.replaces {
            // A replacement died before it was ready: the worker it was to replace serves
            // on, and asks again later.
            if let Some(o) = self.workers.get_mut(old) {
                o.retiring = None;
            }
            return;
        }
        if let Some(replacement) = self.workers.iter().find(|(_, r)| r.replaces == Some(key)).map(|(k, _)| k) {
            // It died while its replacement was starting: the replacement takes its place.
            if let Some(r) = self.workers.get_mut(replacement) {
                r.replaces = None;
            }
            return;
        }
        if w.retiring.is_none() {
            self.crash_streak = if w.started.elapsed() < QUICK_DEATH { self.crash_streak + 1 } else { 1 };
        }
        let delay = self.backoff();
        self.record.crash_streak = self.crash_streak;
        self.record.next_respawn_delay = delay;
        if delay > Duration::ZERO {
            tracing::warn!("{} quick deaths in a row: next worker in {:.1} s", self.crash_streak, delay.as_secs_f64());
        }
        self.respawn_at.push(Instant::now() + delay);
    }

    pub(super) fn workers_view(&self) -> Vec<tree::WorkerRow> {
        self.workers
            .iter()
            .map(|(_, w)| tree::WorkerRow {
                pid: w.pid,
                generation: w.generation,
                started_at: tree::rfc3339(w.started_at),
                uptime_seconds: w.started.elapsed().as_secs_f64(),
                state: w.retiring.as_ref().map_or(w.state.as_str(), |_| "retiring").to_owned(),
                report: w.report.clone(),
            })
            .collect()
    }

    pub(super) fn backoff(&self) -> Duration {
        match self.crash_streak {
            0 | 1 => Duration::ZERO,
            n => (Duration::from_millis(100) * 2u32.saturating_pow((n - 2).min(16))).min(BACKOFF_MAX),
        }
    }
}
