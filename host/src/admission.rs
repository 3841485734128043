//! Per-application limits (Gunicorn's `--timeout`, uWSGI's harakiri, NGINX Unit's
//! `limits.timeout`, Envoy's circuit breakers): one [`Gate`] for each application a request
//! can reach — a mount, or a `/NAME.py` plugin — counts its calls running at once and keeps
//! the connections waiting for a turn, so one application can never occupy every worker.
//!
//! - **Concurrency.** At most [`Limits::max_concurrency`] calls run at once. A call that finds
//!   no free slot waits in the gate's queue — by its connection's id: the request itself stays
//!   with its connection, holding nothing but memory the connection already has.
//! - **Queue.** At most [`Limits::queue`] calls wait; past it the request is refused at once
//!   (503 with `Retry-After`).
//! - **Deadline.** A call that runs past [`Limits::timeout`] is abandoned by the worker pool's
//!   watchdog: the client gets 504 at once, the call's slot goes to the next waiter, and the
//!   stuck thread is replaced. An application that leaves [`Limits::max_abandoned`] threads
//!   stuck is **stopped**: it answers 503 until a reload gives it a new gate (a new copy of
//!   its plugin, or new limits).
//!
//! A slot is handed from a finishing call straight to the next waiter ([`Gate::release`]), so
//! the queue is first come, first served, and a waiter never races a newcomer.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Threads the application may leave stuck past their deadline before it is stopped.
    pub max_abandoned: usize,
}

/// What [`Gate::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// A slot is taken: call now.
    Now,
    /// Queued: the connection is told when a slot is its ([`Gate::release`] returns it).
    Wait,
    /// Refused: 503 with `Retry-After`.
    Refused(Refusal),
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The queue is full.
    QueueFull,
    /// The application left too many threads stuck past its deadline.
    Stopped,
}

#[derive(Debug, Default)]
struct State {
    running: usize,
    waiting: VecDeque<ConnId>,
    abandoned: usize,
    stopped: bool,
}

/// The gate in front of one application.
#[derive(Debug)]
pub struct Gate {
    name: String,
    limits: Limits,
    /// What the gate was made for (its key and the plugin version), to keep it across a reload
    /// that changes nothing about it.
    identity: (String, u64),
    state: Mutex<State>,
    admitted: AtomicU64,
    timeouts: AtomicU64,
    refused: AtomicU64,
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
            identity: (name.clone(), generation),
            name,
            limits,
            state: Mutex::new(State::default()),
            admitted: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            refused: AtomicU64::new(0),
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

    /// Whether this gate can stand for an application `name` of plugin version `generation`
    /// with `limits` (then a reload keeps it, with its counts and its stopped state).
    pub fn is_for(&self, name: &str, generation: u64, limits: &Limits) -> bool {
        self.identity.0 == name && self.identity.1 == generation && self.limits == *limits
    }

    /// A call of connection `conn` asks to run.
    pub fn admit(&self, conn: ConnId) -> Admit {
        let mut s = self.lock();
        let verdict = if s.stopped {
            Admit::Refused(Refusal::Stopped)
        } else if s.running < self.limits.max_concurrency {
            s.running += 1;
            Admit::Now
        } else if s.waiting.len() < self.limits.queue {
            s.waiting.push_back(conn);
            Admit::Wait
        } else {
            Admit::Refused(Refusal::QueueFull)
        };
        drop(s);
        match verdict {
            Admit::Refused(_) => self.refused.fetch_add(1, Ordering::Relaxed),
            _ => self.admitted.fetch_add(1, Ordering::Relaxed),
        };
        verdict
    }

    /// A waiting connection went away: forgets it. Returns whether it was waiting.
    pub fn cancel(&self, conn: ConnId) -> bool {
        let mut s = self.lock();
        let before = s.waiting.len();
        s.waiting.retain(|c| *c != conn);
        s.waiting.len() != before
    }

    /// A call finished (or its slot was never used): the slot goes to the next waiting
    /// connection, returned (its call may run now), or is freed.
    pub fn release(&self) -> Option<ConnId> {
        let mut s = self.lock();
        match s.waiting.pop_front() {
            Some(next) => Some(next),
            None => {
                s.running = s.running.saturating_sub(1);
                None
            }
        }
    }

    /// A call ran past its deadline and its thread is abandoned: its slot goes on as with
    /// [`Gate::release`]. Returns the next waiter and whether the application is now stopped
    /// (it left [`Limits::max_abandoned`] threads stuck).
    pub fn abandon(&self) -> (Option<ConnId>, bool) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
        let next = self.release();
        let mut s = self.lock();
        s.abandoned += 1;
        let newly = !s.stopped && s.abandoned >= self.limits.max_abandoned.max(1);
        s.stopped |= newly;
        (next, newly)
    }

    /// A pull of a streamed body ran past its deadline (it held no slot).
    pub fn abandon_pull(&self) -> bool {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
        let mut s = self.lock();
        s.abandoned += 1;
        let newly = !s.stopped && s.abandoned >= self.limits.max_abandoned.max(1);
        s.stopped |= newly;
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
            stopped: s.stopped,
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

    #[test]
    fn calls_run_up_to_the_limit_then_wait_then_are_refused() {
        let g = gate(2, 1);
        assert_eq!((g.admit(conn(1)), g.admit(conn(2))), (Admit::Now, Admit::Now));
        assert_eq!(g.admit(conn(3)), Admit::Wait);
        assert_eq!(g.admit(conn(4)), Admit::Refused(Refusal::QueueFull));
        // A finishing call hands its slot to the waiter, first come first served.
        assert_eq!(g.release(), Some(conn(3)));
        assert_eq!(g.release(), None);
        assert_eq!(g.release(), None);
        let c = g.counts();
        assert_eq!((c.running, c.waiting, c.admitted, c.refused), (0, 0, 3, 1));
    }

    #[test]
    fn a_waiter_that_leaves_is_forgotten() {
        let g = gate(1, 4);
        assert_eq!(g.admit(conn(1)), Admit::Now);
        assert_eq!((g.admit(conn(2)), g.admit(conn(3))), (Admit::Wait, Admit::Wait));
        assert!(g.cancel(conn(2)) && !g.cancel(conn(2)));
        assert_eq!(g.release(), Some(conn(3)));
    }

    #[test]
    fn too_many_abandoned_threads_stop_the_application() {
        let g = gate(4, 4);
        assert_eq!((g.admit(conn(1)), g.admit(conn(2))), (Admit::Now, Admit::Now));
        assert_eq!(g.abandon(), (None, false));
        assert_eq!(g.abandon(), (None, true), "the second stuck thread reaches max_abandoned");
        assert_eq!(g.admit(conn(3)), Admit::Refused(Refusal::Stopped));
        g.reap();
        g.reap();
        assert_eq!(g.admit(conn(4)), Admit::Refused(Refusal::Stopped), "until a reload");
        let c = g.counts();
        assert_eq!((c.timeouts, c.abandoned, c.stopped, c.running), (2, 0, true, 0));
        assert!(g.is_for("/app", 1, g.limits()) && !g.is_for("/app", 2, g.limits()));
    }
}
