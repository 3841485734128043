//! The worker pool: threads that run applications and pull streamed bodies, fed by the job
//! queue (a crossbeam channel) and answering through the [`Notifier`].
//!
//! A worker never touches a socket. It runs one [`Job`] at a time and hands the result to the
//! connection's event loop as a [`Completion`]. A streamed body is pulled one chunk per job,
//! so a body that waits on a slow client (the event loop stops asking for chunks above the
//! write high-water mark) holds no worker in the meantime. How an application's answer
//! becomes a response is [`respond`]'s.
//!
//! Each worker keeps the counters of [`crate::metrics::counters`] as it goes: busy while it
//! runs a job; for an application call, in flight, latency (from taking the job to the
//! response head being ready) and status, recorded before the response is handed to the
//! event loop.

pub mod respond;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::Receiver;

use crate::exchange::{Completion, Job, Notifier};
use crate::metrics::counters::{Stats, WorkerCache};
use crate::static_files::StaticFiles;

/// What every worker shares.
pub struct Shared {
    /// Where results go.
    pub notifier: Notifier,
    /// Set on SIGTERM/SIGINT: responses from then on close their connection.
    pub shutting_down: Arc<AtomicBool>,
    /// The counters.
    pub stats: Arc<Stats>,
    /// The docroot, for mounts that put middleware in front of it (one cache for the pool).
    pub docroot: Arc<Mutex<StaticFiles>>,
}

/// Handle to the pool's threads.
pub struct Pool {
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `n` workers taking jobs from `jobs`.
    ///
    /// # Errors
    /// A thread could not be started.
    pub fn start(n: usize, jobs: Receiver<Job>, shared: Arc<Shared>) -> std::io::Result<Pool> {
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let jobs = jobs.clone();
            let shared = Arc::clone(&shared);
            let thread = std::thread::Builder::new().name(format!("portico-worker-{i}")).spawn(move || {
                let mut counters = WorkerCache::default();
                for job in jobs.iter() {
                    let _busy = shared.stats.worker_busy();
                    run(job, &shared, &mut counters);
                }
            })?;
            threads.push(thread);
        }
        Ok(Pool { threads })
    }

    /// Waits for every worker to finish (after the job sender is dropped).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn run(job: Job, shared: &Shared, counters: &mut WorkerCache) {
    match job {
        Job::Call(job) => {
            // Measured: from here (the job taken off the queue) to the response head being
            // ready; recorded before the event loop can send it, so a client that has its
            // response sees it counted.
            let plugin = job.route.named().map(|p| counters.get(&shared.stats, p));
            let in_flight = plugin.map(|p| p.start());
            let started = Instant::now();
            let reply = respond::run_call(*job, &shared.docroot, &shared.shutting_down);
            if let Some(p) = plugin {
                p.record(started.elapsed(), reply.prepared.status);
            }
            drop(in_flight);
            shared.notifier.notify(Completion::Response(Box::new(reply)));
        }
        Job::Pull(conn, stream) => {
            let chunk = respond::pull(conn, stream);
            shared.notifier.notify(Completion::Chunk(Box::new(chunk)));
        }
        Job::Close(stream) => drop(stream),
    }
}
