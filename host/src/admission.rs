//! Per-application limits (Gunicorn's `--timeout`, uWSGI's harakiri, NGINX Unit's
//! `limits.timeout`, Envoy's circuit breakers): one [`Gate`] for each application a request
//! can reach — a mount, or a `/NAME.py` plugin — counts its calls running at once and keeps
//! the connections waiting for a turn, so one application can never occupy every worker.
//!
//! - **Concurrency.** At most [`Limits::max_concurrency`] calls run at once. A call that finds
//!   no free slot waits in the gate's queue (with its connection's id, so a client that goes
//!   away takes its call out); a worker that finishes a call of the application takes the next
//!   waiting one itself, so a waiting call costs no trip back through the event loop.
//! - **Queue.** At most [`Limits::queue`] calls wait; past it the request is refused at once
//!   (503 with `Retry-After`).
//! - **Deadline.** A call that runs past [`Limits::timeout`] is abandoned by the worker pool's
//!   watchdog: the client gets 504 at once, the call's slot goes to the next waiter, and the
//!   stuck thread is replaced. An application that leaves [`Limits::max_abandoned`] threads
//!   stuck is **stopped**: it answers 503 until a reload gives it a new gate (a new copy of
//!   its plugin, or new limits).
//!
//! A slot is handed from a finishing call straight to the next waiter ([`Gate::release`]), so
//! the queue is first come, first served, and a waiter never races a newcomer. The gate holds
//! its waiting calls as `Box<dyn Any + Send>` (the call type belongs to a higher layer, see
//! ARCHITECTURE.md); the one caller that puts them in takes them out as what it put in.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::ids::ConnId;

/// One application's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Calls running at once, at least 1.
    pub max_concurrency: usize,
    /// Calls waiting for a slot, beyond those running; past it: 503.
    pub queue: usize,
    /// How long a call may run until its response head is ready (and each pull of a streamed
    /// body's next chunk); `None`: no deadline.
    pub timeout: Option<Duration>,
    /// Threads the application may leave stuck past their deadline before it is stopped (the
    /// pool's size, at least 1).
    pub max_abandoned: usize,
}

/// A call waiting in a gate.
pub type Waiting = Box<dyn Any + Send>;

/// What [`Gate::admit`] decided about a call of type `T`.
#[derive(Debug)]
pub enum Admit<T> {
    /// A slot is taken: run the call now (it is handed back).
    Now(Box<T>),
    /// Queued: a worker finishing a call of this application will run it
    /// ([`Gate::release`]).
    Queued,
    /// Refused: 503 with `Retry-After` (the call is handed back).
    Refused(Box<T>, Refusal),
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The queue is full.
    QueueFull,
    /// The application left too many threads stuck past its deadline.
    Stopped,
}

#[derive(Default)]
struct State {
    running: usize,
    waiting: VecDeque<(ConnId, Waiting)>,
    abandoned: usize,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("running", &self.running)
            .field("waiting", &self.waiting.len())
            .field("abandoned", &self.abandoned)
            .finish()
    }
}

/// The gate in front of one application.
#[derive(Debug)]
pub struct Gate {
    name: String,
    limits: Limits,
    /// The plugin version the gate was made for, to keep it across a reload that changes
    /// nothing about it.
    generation: u64,
    state: Mutex<State>,
    admitted: AtomicU64,
    timeouts: AtomicU64,
    refused: AtomicU64,
    /// The application is stopped (it only ever turns on; set under `state`'s lock, read
    /// under it by [`Gate::admit`] and without it by the calls that take no slot).
    stopped: AtomicBool,
}

/// A gate's figures, for the admin pages.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GateCounts {
    /// Calls running now.
    pub running: usize,
    /// Calls waiting for a slot now.
    pub waiting: usize,
    /// Threads stuck past a deadline now.
    pub abandoned: usize,
    /// Refusing every call until a reload.
    pub stopped: bool,
    /// Calls admitted since the gate was made.
    pub admitted: u64,
    /// Calls cut off at their deadline (504).
    pub timeouts: u64,
    /// Calls refused (503: queue full, or stopped).
    pub refused: u64,
    /// The limits.
    pub max_concurrency: usize,
    /// The queue's size.
    pub queue: usize,
    /// The deadline in seconds, if any.
    pub timeout_seconds: Option<f64>,
}

impl Gate {
    /// A gate named `name` (a mount's prefix, or `/NAME.py`) with `limits`, for the plugin
    /// version `generation` (0 for the docroot).
    pub fn new(name: String, limits: Limits, generation: u64) -> Gate {
        let limits = Limits { max_concurrency: limits.max_concurrency.max(1), ..limits };
        Gate {
            generation,
            name,
            limits,
            state: Mutex::new(State::default()),
            admitted: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The application's name (`/api`, `/hello.py`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether this gate (found under its application's name) can stand for that application
    /// at plugin version `generation` with `limits` (then a reload keeps it, with its counts
    /// and its stopped state).
    pub fn is_for(&self, generation: u64, limits: &Limits) -> bool {
        self.generation == generation && self.limits == *limits
    }

    /// `call`, of connection `conn`, asks to run. A queued call comes back out of
    /// [`Gate::release`] as a [`Waiting`] of the same type.
    pub fn admit<T: Any + Send>(&self, conn: ConnId, call: Box<T>) -> Admit<T> {
        let mut s = self.lock();
        let verdict = if self.stopped.load(Ordering::Relaxed) {
            Admit::Refused(call, Refusal::Stopped)
        } else if s.running < self.limits.max_concurrency {
            s.running += 1;
            Admit::Now(call)
        } else if s.waiting.len() < self.limits.queue {
            s.waiting.push_back((conn, call as Waiting));
            Admit::Queued
        } else {
            Admit::Refused(call, Refusal::QueueFull)
        };
        drop(s);
        match verdict {
            Admit::Refused(..) => self.refused.fetch_add(1, Ordering::Relaxed),
            _ => self.admitted.fetch_add(1, Ordering::Relaxed),
        };
        verdict
    }

    /// A call that takes no slot (one run on its event loop) asks to run: admitted, unless
    /// the application is stopped.
    ///
    /// # Errors
    /// [`Refusal::Stopped`].
    pub fn admit_ungated(&self) -> Result<(), Refusal> {
        if self.stopped.load(Ordering::Relaxed) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Stopped);
        }
        self.admitted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The waiting call of connection `conn` is not wanted any more (the client went away):
    /// returns it, if it was still waiting.
    pub fn cancel(&self, conn: ConnId) -> Option<Waiting> {
        let mut s = self.lock();
        let i = s.waiting.iter().position(|(c, _)| *c == conn)?;
        s.waiting.remove(i).map(|(_, call)| call)
    }

    /// A call finished: its slot goes to the next waiting call, returned (the caller runs it),
    /// or is freed.
    pub fn release(&self) -> Option<Waiting> {
        let mut s = self.lock();
        match s.waiting.pop_front() {
            Some((_, next)) => Some(next),
            None => {
                s.running = s.running.saturating_sub(1);
                None
            }
        }
    }

    /// A call ran past its deadline and its thread is abandoned: its slot goes on as with
    /// [`Gate::release`]. Returns the next waiting call and whether the application is now
    /// stopped (it left [`Limits::max_abandoned`] threads stuck).
    pub fn abandon(&self) -> (Option<Waiting>, bool) {
        (self.release(), self.abandon_pull())
    }

    /// A pull of a streamed body ran past its deadline (it held no slot). Returns whether the
    /// application is now stopped.
    pub fn abandon_pull(&self) -> bool {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
        let mut s = self.lock();
        s.abandoned += 1;
        let newly = !self.stopped.load(Ordering::Relaxed) && s.abandoned >= self.limits.max_abandoned;
        if newly {
            self.stopped.store(true, Ordering::Relaxed);
        }
        newly
    }

    /// An abandoned thread finished at last (the application stays stopped if it was).
    pub fn reap(&self) {
        let mut s = self.lock();
        s.abandoned = s.abandoned.saturating_sub(1);
    }

    /// The figures now.
    pub fn counts(&self) -> GateCounts {
        let s = self.lock();
        GateCounts {
            running: s.running,
            waiting: s.waiting.len(),
            abandoned: s.abandoned,
            stopped: self.stopped.load(Ordering::Relaxed),
            admitted: self.admitted.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            max_concurrency: self.limits.max_concurrency,
            queue: self.limits.queue,
            timeout_seconds: self.limits.timeout.map(|t| t.as_secs_f64()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(token: usize) -> ConnId {
        ConnId { event_loop: 0, token, generation: 1 }
    }

    fn gate(max: usize, queue: usize) -> Gate {
        Gate::new("/app".into(), Limits { max_concurrency: max, queue, timeout: None, max_abandoned: 2 }, 1)
    }

    /// What a verdict holds: `Now`/`Refused` give the call back, `Queued` keeps it.
    fn verdict(a: Admit<usize>) -> (&'static str, Option<usize>) {
        match a {
            Admit::Now(w) => ("now", Some(*w)),
            Admit::Queued => ("queued", None),
            Admit::Refused(w, Refusal::QueueFull) => ("full", Some(*w)),
            Admit::Refused(w, Refusal::Stopped) => ("stopped", Some(*w)),
        }
    }

    fn call(g: &Gate, token: usize) -> (&'static str, Option<usize>) {
        verdict(g.admit(conn(token), Box::new(token)))
    }

    fn next(w: Option<Waiting>) -> Option<usize> {
        w.map(|w| *w.downcast::<usize>().expect("the test's call"))
    }

    #[test]
    fn calls_run_up_to_the_limit_then_wait_then_are_refused() {
        let g = gate(2, 1);
        assert_eq!((call(&g, 1), call(&g, 2)), (("now", Some(1)), ("now", Some(2))));
        assert_eq!(call(&g, 3), ("queued", None));
        assert_eq!(call(&g, 4), ("full", Some(4)));
        // A finishing call hands its slot to the waiter, first come first served.
        assert_eq!(next(g.release()), Some(3));
        assert_eq!(next(g.release()), None);
        assert_eq!(next(g.release()), None);
        let c = g.counts();
        assert_eq!((c.running, c.waiting, c.admitted, c.refused), (0, 0, 3, 1));
    }

    #[test]
    fn a_waiter_that_leaves_is_forgotten() {
        let g = gate(1, 4);
        assert_eq!(call(&g, 1).0, "now");
        assert_eq!((call(&g, 2).0, call(&g, 3).0), ("queued", "queued"));
        assert_eq!(next(g.cancel(conn(2))), Some(2));
        assert!(g.cancel(conn(2)).is_none());
        assert_eq!(next(g.release()), Some(3));
    }

    #[test]
    fn too_many_abandoned_threads_stop_the_application() {
        let g = gate(4, 4);
        assert_eq!((call(&g, 1).0, call(&g, 2).0), ("now", "now"));
        let (n, stopped) = g.abandon();
        assert_eq!((next(n), stopped), (None, false));
        let (n, stopped) = g.abandon();
        assert_eq!((next(n), stopped), (None, true), "the second stuck thread reaches max_abandoned");
        assert_eq!(call(&g, 3).0, "stopped");
        g.reap();
        g.reap();
        assert_eq!(call(&g, 4).0, "stopped", "until a reload");
        let c = g.counts();
        assert_eq!((c.timeouts, c.abandoned, c.stopped, c.running), (2, 0, true, 0));
        assert!(g.is_for(1, g.limits()) && !g.is_for(2, g.limits()));
        // A call on an event loop (no slot) is refused too.
        assert!(matches!(g.admit_ungated(), Err(Refusal::Stopped)));
    }
}
