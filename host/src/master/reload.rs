//! Generations in the master: starting one, SIGHUP's re-read and preparation (on a helper
//! thread), promoting a ready generation and draining the old one, discarding one that failed,
//! and removing snapshots nothing uses any more. See the parent module for a generation's life.

use std::sync::Arc;
use std::time::Instant;

use super::generation::{self, Findings, Snapshot};
use super::{Generation, Master, Msg, State, signal};
use crate::settings::file::Loaded;

impl Master {
    /// Starts `snapshot`'s workers as the pending generation (the current one, at start).
    pub(super) fn start_generation(&mut self, snapshot: Snapshot) -> anyhow::Result<()> {
        let id = snapshot.id;
        let generation = Generation { snapshot, ready_by: Instant::now() + self.ready_timeout() };
        let first = self.current.is_none();
        if first {
            self.current = Some(generation);
        } else {
            self.pending = Some(generation);
        }
        for _ in 0..self.target {
            if let Err(e) = self.spawn(id, None) {
                if first {
                    return Err(e.context("starting a worker"));
                }
                self.discard_pending(format!("starting a worker failed: {e:#}"));
                return Ok(());
            }
        }
        tracing::info!(generation = id, "starting generation {id}: {} worker(s)", self.target);
        Ok(())
    }

    /// SIGHUP: re-read the configuration and prepare the next generation on a helper thread.
    pub(super) fn reload(&mut self) {
        if self.preparing || self.pending.is_some() || !self.announced {
            tracing::info!("SIGHUP: a reload or the start is in progress; a reload follows it");
            self.reload_again = true;
            return;
        }
        let config = match self.config.as_ref().map(|c| Loaded::read(&c.path)) {
            None => None,
            Some(Ok(next)) => Some(next),
            Some(Err(e)) => {
                tracing::error!("SIGHUP: configuration not reloaded, the current generation keeps serving: {e}");
                self.record.failed_generation(format!("the configuration file was refused: {e}"));
                return;
            }
        };
        if let (Some(old), Some(next)) = (&self.config, &config)
            && old.file.server != next.file.server
        {
            tracing::warn!(
                "SIGHUP: [server] settings changed in {}: the new workers use them; the master's own \
                 (bind, backlog, workers, the timeouts it enforces, the pid file) take effect on restart",
                next.path.display()
            );
        }
        let id = self.next_generation;
        self.next_generation += 1;
        self.preparing = true;
        tracing::info!("SIGHUP: preparing generation {id} from {}", self.args.plugins.display());
        let (root, dir, timeout, tx, waker) = (
            self.root.clone(),
            self.args.plugins.clone(),
            self.ready_timeout(),
            self.tx.clone(),
            Arc::clone(&self.waker),
        );
        let previous = self.current.as_ref().map(|g| g.snapshot.clone());
        let spawned = std::thread::Builder::new().name("portico-prepare".into()).spawn(move || {
            let result = generation::prepare(id, &root, &dir, config.as_ref(), previous.as_ref(), timeout);
            let _ = tx.send(Msg::Prepared(Box::new((result, config))));
            let _ = waker.wake();
        });
        if let Err(e) = spawned {
            self.preparing = false;
            tracing::error!("SIGHUP: cannot start preparing: {e}");
        }
    }

    pub(super) fn on_prepared(
        &mut self,
        result: Result<(Snapshot, Findings), generation::PrepareError>,
        config: Option<Loaded>,
    ) {
        self.preparing = false;
        if self.stopping.is_some() {
            return;
        }
        match result {
            Ok((snapshot, findings)) => {
                for line in &findings.refused {
                    tracing::error!("{line}");
                }
                for name in &findings.kept_previous {
                    tracing::warn!("plugin {name}: the new file was refused; the previous version keeps serving");
                }
                if config.is_some() {
                    self.config = config;
                }
                self.record.refused = findings.refused;
                if let Err(e) = self.start_generation(snapshot) {
                    self.discard_pending(format!("{e:#}"));
                }
            }
            Err(why) => {
                tracing::error!("SIGHUP: new generation refused, the current one keeps serving: {why}");
                self.record.failed_generation(why.to_string());
                self.next_reload();
            }
        }
    }

    pub(super) fn next_reload(&mut self) {
        if std::mem::take(&mut self.reload_again) {
            self.reload();
        }
    }

    /// Gives up the pending generation: its workers are killed, the current one serves on.
    pub(super) fn discard_pending(&mut self, why: String) {
        let Some(generation) = self.pending.take() else { return };
        let id = generation.snapshot.id;
        tracing::error!(generation = id, "generation {id} discarded, the current generation keeps serving: {why}");
        for (_, w) in self.workers.iter_mut().filter(|(_, w)| w.generation == id) {
            w.state = State::Stopping;
            w.kill_at = None;
            signal(w.pid, rustix::process::Signal::KILL);
        }
        self.record.failed_generation(format!("generation {id}: {why}"));
        self.next_reload();
    }

    /// The pending generation is ready: it serves, the current one drains.
    pub(super) fn promote(&mut self) {
        let Some(generation) = self.pending.take() else { return };
        let new = generation.snapshot.id;
        self.record.serving(&generation.snapshot);
        let old = self.current.replace(generation).map(|g| g.snapshot.id);
        let stopping: Vec<usize> =
            self.workers.iter().filter(|(_, w)| Some(w.generation) == old).map(|(k, _)| k).collect();
        for k in stopping {
            self.stop(k);
        }
        self.respawn_at.clear();
        self.crash_streak = 0;
        self.record.crash_streak = 0;
        self.record.next_respawn_delay = std::time::Duration::ZERO;
        self.record.generations += 1;
        self.record.generation = new;
        tracing::info!(generation = new, "generation {new} serves; generation {} drains", old.unwrap_or(0));
        self.next_reload();
    }

    /// Removes the snapshots of generations that neither serve nor have a worker left.
    pub(super) fn cleanup_snapshots(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return };
        for e in entries.flatten() {
            let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else { continue };
            let live = self.snapshot_of(id).is_some() || self.workers.iter().any(|(_, w)| w.generation == id);
            if !live && id < self.next_generation && !self.preparing {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
