//! Calls on the event loop's own thread, and the thread that drives a loop's turns.
//!
//! A plugin that promised never to block (`PluginMod::never_blocks`, portico-api 0.2.2) is
//! called by the thread that read its request, after the loop's turn, instead of going to a
//! worker thread and coming back: the hop (a wake of a worker, a wake of the loop) is most of
//! the cost of a small response (`scripts/bench`, `/hello.py`).
//!
//! A batch of calls (a turn's) holds the loop for at most `--inline-timeout` too: calls still
//! queued past it go to workers.
//!
//! The promise is checked, not trusted. While its thread runs calls, the loop is parked in
//! its [`Driver`], which the pool's watchdog looks at every 20 ms (it dozes while nothing
//! runs, and a batch that begins wakes it: [`crate::worker::watchdog::Alarm`]). A call that has run past
//! `--inline-timeout` (20 ms by default) has its loop taken over by a fresh thread at once:
//! the other connections wait at most twice that long (a batch runs for up to the timeout
//! before its last call starts) plus a watchdog tick, the calls queued
//! behind it go with the loop, and the plugins of the call lose their promise (their calls go
//! to worker threads until a reload loads a new copy; logged once). The old thread, when the
//! call returns, hands its reply to the loop as a worker would and exits. A call with an
//! application deadline (`--app-timeout`) is cut off at it like a worker's: the thread's
//! [`Slot`] is watched by the pool.
//!
//! Invariants:
//! - A loop is owned by exactly one thread at a time: the one driving it or, while calls
//!   run, its [`Driver`]'s lock, from which either the calling thread takes it back or the
//!   watchdog moves it to a new thread — never both (`moved`, decided under the lock).
//! - Only calls without a request body whose every plugin still holds the promise run here
//!   ([`eligible`]); the rest go to the pool, as before.
//! - A call admitted here takes no slot of its application's gate (the gate's limits share out
//!   worker threads; a stopped application still refuses) and hands none on; one that ends
//!   up on a worker after all (a batch past its time, a plugin demoted meanwhile) goes
//!   through the gate then, as any call for a worker.
//! - Only this loop's connections' calls are queued here (admitted by this loop, or handed
//!   back after a move), so every reply is delivered to this loop directly.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::event_loop::EventLoop;
use crate::exchange::{CallJob, Completion, Reply, RequestBody};
use crate::metrics::counters::WorkerCache;
use crate::plugin::loader::Plugin;
use crate::routing::Target;
use crate::worker::watchdog::Slot;
use crate::worker::{self, Watched};

/// What every loop's driving thread shares.
pub struct Ctx {
    /// The pool: its shared state, deadline slots and watchdog.
    pub workers: worker::Handle,
    /// `--inline-timeout`: how long a call may hold its loop's thread.
    pub timeout: Duration,
    /// Where each loop's end is reported: its index and whether it drained.
    pub done: Sender<(usize, io::Result<bool>)>,
}

/// Whether `job` may run on an event loop's thread: a plugin's application (not the docroot
/// behind middleware, not a script of a bridge), a request without a body (reading one is
/// work in proportion to its size, up to `--max-body`), and every plugin of the pipeline
/// still holding its promise.
pub fn eligible(job: &CallJob) -> bool {
    let Target::Plugin(p) = &job.route.target else { return false };
    matches!(job.body, RequestBody::None)
        && job.route.script.is_none()
        && p.inline()
        && job.route.middleware.iter().all(|m| m.inline())
}

/// Starts the thread that drives `lp`, loop index `lp.index`.
///
/// # Errors
/// The thread could not be started.
pub fn start(lp: Box<EventLoop>, ctx: Arc<Ctx>) -> io::Result<()> {
    spawn(lp, ctx, Vec::new(), Vec::new())
}

/// One loop's driving thread, as the watchdog sees it.
pub struct Driver {
    index: usize,
    ctx: Arc<Ctx>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The loop, while its thread runs calls.
    parked: Option<Box<EventLoop>>,
    /// Calls still to run.
    queue: VecDeque<Box<CallJob>>,
    /// Replies to hand to the loop's connections.
    replies: Vec<Reply>,
    /// Calls for workers: a batch's calls past its time, and calls whose plugin lost its
    /// promise meanwhile.
    #[allow(clippy::vec_box, reason = "calls arrive and leave boxed (`Job::Call`, the gate): kept so, never copied")]
    to_pool: Vec<Box<CallJob>>,
    /// The call running now.
    running: Option<Running>,
    /// The watchdog moved the loop to another thread.
    moved: bool,
    /// The loop has ended.
    ended: bool,
}

/// A call on the loop's thread: since when, and whose promise it tests.
struct Running {
    since: Instant,
    target: Arc<Plugin>,
    middleware: Arc<[Arc<Plugin>]>,
}

#[allow(clippy::vec_box, reason = "calls arrive and leave boxed (`Job::Call`, the gate): kept so, never copied")]
fn spawn(lp: Box<EventLoop>, ctx: Arc<Ctx>, replies: Vec<Reply>, calls: Vec<Box<CallJob>>) -> io::Result<()> {
    let index = lp.index;
    let driver = Arc::new(Driver { index, ctx: Arc::clone(&ctx), state: Mutex::new(State::default()) });
    ctx.workers.watch(Arc::clone(&driver) as Arc<dyn Watched>);
    std::thread::Builder::new().name(format!("portico-io-{index}")).spawn(move || {
        // A panic here is a bug in the server, and the loop's connections are gone with it:
        // fail fast so a supervisor restarts a whole server (the panic message is already on
        // stderr), rather than limp on with a dead loop still picked for new connections.
        let run = std::panic::AssertUnwindSafe(|| driver.drive(lp, replies, calls));
        if std::panic::catch_unwind(run).is_err() {
            tracing::error!("event loop {index} panicked; exiting");
            std::process::exit(70)
        }
    })?;
    Ok(())
}

impl Driver {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Turns the loop until it ends, running its inline calls after each turn. `replies` and
    /// `calls` are what a thread the loop was moved away from left behind.
    #[allow(clippy::vec_box, reason = "calls arrive and leave boxed (`Job::Call`, the gate): kept so, never copied")]
    fn drive(&self, mut lp: Box<EventLoop>, replies: Vec<Reply>, calls: Vec<Box<CallJob>>) {
        let mut slot = self.ctx.workers.outside_slot();
        let mut counters = WorkerCache::default();
        // A loop moved here from a stuck thread: its clock is from before the stuck call.
        lp.now = Instant::now();
        for r in replies {
            lp.deliver(r);
        }
        for job in calls {
            resubmit(&mut lp, job);
        }
        let mut replies = Vec::new();
        let mut to_pool = Vec::new();
        loop {
            match lp.turn() {
                Ok(None) => {}
                Ok(Some(drained)) => return self.end(lp, &slot, Ok(drained)),
                Err(e) => return self.end(lp, &slot, Err(e)),
            }
            if lp.inline.is_empty() {
                continue;
            }
            {
                let mut st = self.lock();
                st.queue.extend(lp.inline.drain(..));
                st.parked = Some(lp);
            }
            if !self.run_calls(&mut slot, &mut counters) {
                return; // the loop goes on in another thread
            }
            {
                let mut st = self.lock();
                lp = st.parked.take().expect("a loop parked by this thread and not moved");
                std::mem::swap(&mut replies, &mut st.replies);
                std::mem::swap(&mut to_pool, &mut st.to_pool);
            }
            // The batch took time: the connections' clocks read after it.
            lp.now = Instant::now();
            for r in replies.drain(..) {
                lp.deliver(r);
            }
            for job in to_pool.drain(..) {
                lp.call_on_worker(job);
            }
        }
    }

    /// Runs the queued calls. `false` when the watchdog moved the loop away meanwhile: this
    /// thread has handed on what it held and must stop.
    fn run_calls(&self, slot: &mut Arc<Slot>, counters: &mut WorkerCache) -> bool {
        let workers = &self.ctx.workers;
        let batch = Instant::now();
        loop {
            let job = {
                let mut st = self.lock();
                let Some(job) = st.queue.pop_front() else { return true };
                let now = Instant::now();
                // A plugin that broke its promise meanwhile (on another loop), or a batch that
                // has held the loop for the timeout already (many calls, each within it): the
                // rest go to workers.
                if !eligible(&job) || now.duration_since(batch) >= self.ctx.timeout {
                    st.to_pool.push(job);
                    continue;
                }
                let Target::Plugin(target) = &job.route.target else { unreachable!("eligible calls only") };
                st.running = Some(Running {
                    since: now,
                    target: Arc::clone(target),
                    middleware: Arc::clone(&job.route.middleware),
                });
                job
            };
            workers.poke_watchdog();
            let (reply, next) = worker::call(job, workers.shared(), slot, counters);
            // A call here holds no gate slot, so it hands none on.
            debug_assert!(next.is_none(), "a call on the loop handed on a gate slot");
            let mut st = self.lock();
            st.running = None;
            if st.moved {
                drop(st);
                // This thread is a worker now, for what it holds.
                if let Some(r) = reply {
                    workers.shared().notifier.notify(Completion::Response(Box::new(r)));
                }
                workers.forget_slot(slot);
                return false;
            }
            st.replies.extend(reply);
            drop(st);
            if slot.abandoned() {
                // Its call was cut off at its deadline: a fresh slot for the next one.
                workers.forget_slot(slot);
                *slot = workers.outside_slot();
            }
        }
    }

    fn end(&self, lp: Box<EventLoop>, slot: &Arc<Slot>, result: io::Result<bool>) {
        self.lock().ended = true;
        drop(lp); // its job sender with it
        self.ctx.workers.forget_slot(slot);
        let _ = self.ctx.done.send((self.index, result));
    }
}

/// A call handed over from a thread the loop moved away from (one of this loop's
/// connections'): here if it still may, else to the pool.
fn resubmit(lp: &mut EventLoop, job: Box<CallJob>) {
    if eligible(&job) { lp.inline.push(job) } else { lp.call_on_worker(job) }
}

impl Watched for Driver {
    fn busy(&self) -> bool {
        self.lock().running.is_some()
    }

    fn look(&self, now: Instant) -> bool {
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.ended || st.moved {
            return false;
        }
        let Some(r) = &st.running else { return true };
        let ran = now.saturating_duration_since(r.since);
        if ran < self.ctx.timeout {
            return true;
        }
        let (target, middleware) = (Arc::clone(&r.target), Arc::clone(&r.middleware));
        let Some(lp) = st.parked.take() else { return true };
        st.moved = true;
        let replies = std::mem::take(&mut st.replies);
        let calls: Vec<_> = st.queue.drain(..).chain(st.to_pool.drain(..)).collect();
        drop(guard);
        let ms = ran.as_millis();
        for p in middleware.iter().chain(std::iter::once(&target)) {
            if p.broke_promise() {
                tracing::warn!(
                    plugin = %p.name,
                    "plugin {} promised never to block, but a call of {} has run {ms} ms on event loop {} \
                     (--inline-timeout {} ms); its calls go to worker threads until it is loaded again",
                    p.name,
                    target.name,
                    self.index,
                    self.ctx.timeout.as_millis()
                );
            }
        }
        tracing::warn!(
            "event loop {}: a call of {} has held it {ms} ms; the loop goes on in a new thread",
            self.index,
            target.name
        );
        if let Err(e) = spawn(lp, Arc::clone(&self.ctx), replies, calls) {
            // The loop's connections would be stranded: as for a panicking loop.
            tracing::error!("event loop {}: starting a thread to take it over: {e}; exiting", self.index);
            std::process::exit(70);
        }
        false
    }
}
