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
//!
//! Admission: a call reaches the pool holding a slot of its application's gate
//! ([`crate::admission`]); when it is done, the worker runs the application's next waiting call
//! in the same slot. A call or a pull with a deadline
//! is recorded in the worker's [`Slot`]; the [`watchdog`] cuts off what runs past it and the
//! pool starts a thread in place of the stuck one.

pub mod respond;
pub mod watchdog;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::Receiver;

use crate::exchange::{CallJob, Completion, Job, Notifier, Reply};
use crate::metrics::counters::{Stats, WorkerCache};
use crate::static_files::StaticFiles;
use watchdog::{Kind, Running, Slot};

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

/// The pool: its threads, their slots, the watchdog.
pub struct Pool {
    inner: Arc<Inner>,
    watchdog: Option<JoinHandle<()>>,
}

struct Inner {
    jobs: Receiver<Job>,
    shared: Arc<Shared>,
    /// Every live worker's slot, for the watchdog.
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Threads started, abandoned ones included (they are not joined).
    threads: Mutex<Vec<(Arc<Slot>, JoinHandle<()>)>>,
    next: AtomicUsize,
    stop: AtomicBool,
    /// What else the watchdog looks at every tick (event loops running calls themselves).
    watched: Mutex<Vec<Arc<dyn Watched>>>,
    /// Wakes the watchdog from its doze.
    alarm: Arc<watchdog::Alarm>,
}

/// Something the watchdog looks at every [`watchdog::TICK`] besides the workers' slots: an
/// event loop's thread while it runs calls of plugins that promised never to block
/// (`crate::io::inline`).
pub trait Watched: Send + Sync {
    /// Looks once, at `now`; `false` once it no longer needs looking at.
    fn look(&self, now: Instant) -> bool;
    /// Whether something runs that the watchdog must keep looking at (it dozes otherwise).
    fn busy(&self) -> bool;
}

/// What an event loop's thread needs to run application calls itself, as a worker would:
/// the workers' shared state and a way to register its deadline slot and be watched.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

impl Handle {
    /// The workers' shared state (notifier, counters, shutdown flag).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// A deadline slot for a thread that is not one of the pool's workers (an event loop's):
    /// the watchdog cuts off its calls at their deadline like a worker's, but starts no
    /// thread in its place (such a call holds no gate slot, so none is handed on).
    pub fn outside_slot(&self) -> Arc<Slot> {
        let slot = Arc::new(Slot::outside(Arc::clone(&self.inner.alarm)));
        self.inner.slots.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::clone(&slot));
        slot
    }

    /// Stops watching `slot` (its thread is done with it).
    pub fn forget_slot(&self, slot: &Arc<Slot>) {
        self.inner.slots.lock().unwrap_or_else(|e| e.into_inner()).retain(|s| !Arc::ptr_eq(s, slot));
    }

    /// Has the watchdog look at `w` every tick until it says it is done.
    pub fn watch(&self, w: Arc<dyn Watched>) {
        self.inner.watched.lock().unwrap_or_else(|e| e.into_inner()).push(w);
    }

    /// Wakes the watchdog if it dozes: a watched thing became [busy](Watched::busy).
    pub fn poke_watchdog(&self) {
        self.inner.alarm.poke();
    }
}

impl Pool {
    /// Starts `n` workers taking jobs from `jobs`, and the watchdog.
    ///
    /// # Errors
    /// A thread could not be started.
    pub fn start(n: usize, jobs: Receiver<Job>, shared: Arc<Shared>) -> std::io::Result<Pool> {
        let inner = Arc::new(Inner {
            jobs,
            shared,
            slots: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            watched: Mutex::new(Vec::new()),
            alarm: Arc::new(watchdog::Alarm::default()),
        });
        for _ in 0..n {
            spawn_worker(&inner, None)?;
        }
        let watched = Arc::clone(&inner);
        let watchdog = std::thread::Builder::new().name("portico-watchdog".into()).spawn(move || {
            let mut quiet = 0;
            let busy = || {
                watched.slots.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|s| s.busy())
                    || watched.watched.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|w| w.busy())
            };
            while !watched.stop.load(Ordering::Relaxed) {
                if quiet >= watchdog::DOZE_AFTER {
                    if watched.alarm.doze(busy) {
                        quiet = 0; // poked: work is coming; tick again for a while
                    }
                } else {
                    std::thread::sleep(watchdog::TICK);
                }
                let others: Vec<Arc<dyn Watched>> = watched.watched.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let slots: Vec<Arc<Slot>> = {
                    let mut slots = watched.slots.lock().unwrap_or_else(|e| e.into_inner());
                    // Threads given up on at an earlier tick: nothing more to watch.
                    slots.retain(|s| !s.abandoned());
                    slots.clone()
                };
                let running = slots.iter().any(|s| s.busy()) || others.iter().any(|w| w.busy());
                quiet = if running { 0 } else { quiet.saturating_add(1) };
                let now = Instant::now();
                let done: Vec<_> = others.into_iter().filter(|w| !w.look(now)).collect();
                if !done.is_empty() {
                    watched
                        .watched
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|w| !done.iter().any(|d| Arc::ptr_eq(w, d)));
                }
                for first in watchdog::sweep(&slots, &watched.shared.notifier, Instant::now()) {
                    if let Err(e) = spawn_worker(&watched, first) {
                        tracing::error!("starting a worker in place of an abandoned one: {e}");
                    }
                }
            }
        })?;
        Ok(Pool { inner, watchdog: Some(watchdog) })
    }

    /// What an event loop's thread needs to run calls itself.
    pub fn handle(&self) -> Handle {
        Handle { inner: Arc::clone(&self.inner) }
    }

    /// Threads abandoned past an application's deadline that are still running (each holds a
    /// call the client no longer waits for).
    pub fn abandoned_running(&self) -> usize {
        let threads = self.inner.threads.lock().unwrap_or_else(|e| e.into_inner());
        threads.iter().filter(|(slot, t)| slot.abandoned() && !t.is_finished()).count()
    }

    /// Waits for every worker to finish (after the job sender is dropped), then stops the
    /// watchdog. Abandoned threads are not waited for.
    pub fn join(mut self) {
        let threads = std::mem::take(&mut *self.inner.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for (slot, t) in threads {
            if !slot.abandoned() {
                let _ = t.join();
            }
        }
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.alarm.wake();
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
    }
}

/// Starts one worker thread with its slot; it runs `first` (a call that took over an
/// abandoned thread's slot) before taking jobs from the queue.
fn spawn_worker(inner: &Arc<Inner>, first: Option<Box<CallJob>>) -> std::io::Result<()> {
    let slot = Arc::new(Slot::new(Arc::clone(&inner.alarm)));
    let i = inner.next.fetch_add(1, Ordering::Relaxed);
    let (worker_inner, worker_slot) = (Arc::clone(inner), Arc::clone(&slot));
    let handle = std::thread::Builder::new().name(format!("portico-worker-{i}")).spawn(move || {
        let mut counters = WorkerCache::default();
        // `first` is watched like any job: cut off too, this thread takes no other.
        for job in first.map(Job::Call).into_iter().chain(worker_inner.jobs.iter()) {
            let _busy = worker_inner.shared.stats.worker_busy();
            run(job, &worker_inner.shared, &worker_slot, &mut counters);
            if worker_slot.abandoned() {
                break; // a replacement has taken this thread's place
            }
        }
    })?;
    inner.slots.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::clone(&slot));
    inner.threads.lock().unwrap_or_else(|e| e.into_inner()).push((slot, handle));
    Ok(())
}

fn run(job: Job, shared: &Shared, slot: &Slot, counters: &mut WorkerCache) {
    match job {
        Job::Call(job) => {
            // A finished call's slot goes to the application's next waiting call, which this
            // thread runs right away (no trip through the event loop).
            let mut next = Some(job);
            while let Some(job) = next.take() {
                next = run_call(job, shared, slot, counters);
            }
        }
        Job::Pull(conn, stream) => {
            let app = Arc::clone(&stream.app);
            if let Some(timeout) = app.gate.limits().timeout {
                slot.begin(Running::new(Instant::now() + timeout, conn, Arc::clone(&app), Kind::Pull));
            }
            let chunk = respond::pull(conn, stream);
            if !slot.end() {
                drop(chunk);
                app.gate.reap();
                return;
            }
            shared.notifier.notify(Completion::Chunk(Box::new(chunk)));
        }
        Job::Close(stream) => drop(stream),
    }
}

/// Runs one application call; returns the application's next waiting call, which now holds
/// the slot this one had (`None` when nothing waits, or when this call was cut off: the
/// watchdog passed the slot on).
fn run_call(job: Box<CallJob>, shared: &Shared, slot: &Slot, counters: &mut WorkerCache) -> Option<Box<CallJob>> {
    let (reply, next) = call(job, shared, slot, counters);
    if let Some(reply) = reply {
        shared.notifier.notify(Completion::Response(Box::new(reply)));
    }
    next
}

/// Runs one application call and gives its reply, for the caller to hand to the event loop
/// (`None`: the watchdog cut the call off and answered it), and the application's next
/// waiting call, which now holds the slot this one had (`None` when nothing waits, or when
/// this call was cut off: the watchdog passed the slot on). The counters are recorded
/// before the reply is handed over.
pub fn call(
    job: Box<CallJob>,
    shared: &Shared,
    slot: &Slot,
    counters: &mut WorkerCache,
) -> (Option<Reply>, Option<Box<CallJob>>) {
    let app = Arc::clone(&job.route.app);
    let gated = job.gated;
    // Measured: from here (the job taken off the queue) to the response head being ready;
    // recorded before the event loop can send it, so a client that has its response sees it
    // counted. The deadline counts from here too.
    let started = Instant::now();
    if let Some(timeout) = app.gate.limits().timeout {
        let kind = Kind::Call { version: job.head.version, head_request: job.head.is_head(), gated: job.gated };
        slot.begin(Running::new(started + timeout, job.conn, Arc::clone(&app), kind));
    }
    let plugin = job.route.named().map(|p| counters.get(&shared.stats, p));
    let in_flight = plugin.map(|p| p.start());
    let reply = respond::run_call(*job, &shared.docroot, &shared.shutting_down, &shared.notifier);
    if !slot.end() {
        // Cut off by the watchdog: the client has its 504, the slot went on.
        drop(reply);
        app.gate.reap();
        return (None, None);
    }
    if let Some(p) = plugin {
        p.record(started.elapsed(), reply.prepared.status);
    }
    drop(in_flight);
    // What goes into a gate comes out: calls only. A call that took no slot hands none on.
    let next = if gated { app.gate.release().and_then(|w| w.downcast::<CallJob>().ok()) } else { None };
    (Some(reply), next)
}
