//! Deadlines of application calls: each worker thread has a [`Slot`] where it records the call
//! it runs and when that call must be done; the watchdog thread looks at every slot every
//! [`TICK`] (after [`DOZE_AFTER`] ticks with nothing running it dozes, looking once a
//! [`DOZE`], until a run that begins wakes it through the [`Alarm`]) and cuts off a call past
//! its deadline — the client gets 504 at once (or, for a
//! streamed body already under way, the connection is closed), the call's admission slot goes
//! to the next waiting call, and the worker thread, stuck in the application, is abandoned and
//! replaced so the pool keeps its size.
//!
//! Whoever marks the slot first wins: the watchdog (the call timed out) or the worker (it
//! finished in time). The loser's result is dropped — an abandoned worker that finally returns
//! drops what the application gave it (PEP 3333 `close()`) and exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::exchange::{CallJob, Chunk, Completion, ConnId, Notifier, Reply};
use crate::http::outgoing::Response;
use crate::http::request::Version;
use crate::routing::App;

/// How often the watchdog looks at the slots: a call is cut off at most this late. 20 ms.
pub const TICK: Duration = Duration::from_millis(20);
/// Ticks with nothing running after which the watchdog dozes (1 s): it then looks once a
/// [`DOZE`] until work begins and [`Alarm::poke`]s it. An idle worker process wakes its
/// watchdog once a second, not 50 times.
pub const DOZE_AFTER: u32 = 50;
/// How long a dozing watchdog sleeps at most (a safety net: work that begins pokes it).
pub const DOZE: Duration = Duration::from_secs(1);

/// How work that must be watched wakes a dozing watchdog.
///
/// The watchdog says it dozes (`dozing`, SeqCst) and then looks whether anything runs; work
/// records that it runs (under its slot's or driver's lock) and then looks whether the
/// watchdog dozes. One of the two sees the other: the watchdog does not doze, or it is
/// unparked (and `park` returns at once for an `unpark` that came first).
#[derive(Debug, Default)]
pub struct Alarm {
    dozing: AtomicBool,
    thread: std::sync::OnceLock<std::thread::Thread>,
}

impl Alarm {
    /// Work began that the watchdog must watch: wakes it if it dozes (an atomic load
    /// otherwise).
    pub fn poke(&self) {
        if self.dozing.load(Ordering::SeqCst) {
            self.wake();
        }
    }

    /// Wakes the watchdog whatever it does (the pool stops).
    pub fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// The watchdog's thread: sleeps for up to [`DOZE`] unless `busy` says something runs
    /// (asked after saying it dozes) or it is poked. Returns whether it was woken early
    /// (busy, poked, or a spurious wakeup): the caller then ticks again for a while, so that
    /// calls that keep coming poke it once, not each.
    pub fn doze(&self, busy: impl Fn() -> bool) -> bool {
        let _ = self.thread.set(std::thread::current());
        let start = Instant::now();
        self.dozing.store(true, Ordering::SeqCst);
        if !busy() {
            std::thread::park_timeout(DOZE);
        }
        self.dozing.store(false, Ordering::SeqCst);
        start.elapsed() < DOZE
    }
}

/// What a worker is running, when it has a deadline.
pub struct Running {
    /// When it must be done.
    pub deadline: Instant,
    /// Whose request it is.
    pub conn: ConnId,
    /// The application (its gate takes the timeout into account).
    pub app: Arc<App>,
    /// A call (the response head is not sent yet) or a pull of a streamed body.
    pub kind: Kind,
    /// Set by the watchdog when it cut the call off.
    timed_out: bool,
}

/// What is running.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// An application call: a timeout answers 504.
    Call {
        /// The request's version (for the 504's status line).
        version: Version,
        /// A `HEAD` request (the 504 has no body).
        head_request: bool,
        /// It holds a slot of its application's gate (a call on an event loop does not).
        gated: bool,
    },
    /// A pull of a streamed body's next chunk: a timeout closes the connection.
    Pull,
}

impl Running {
    /// A run of `kind` for `conn` that must end by `deadline`.
    pub fn new(deadline: Instant, conn: ConnId, app: Arc<App>, kind: Kind) -> Running {
        Running { deadline, conn, app, kind, timed_out: false }
    }
}

/// One worker thread's record.
pub struct Slot {
    running: Mutex<Option<Running>>,
    /// Wakes the watchdog when a run begins.
    alarm: Arc<Alarm>,
    /// The thread was given up on (a replacement took its place): it exits after its call.
    abandoned: AtomicBool,
    /// The slot of a thread that is not one of the pool's workers (an event loop's): no
    /// worker is started in its place.
    outside: bool,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A worker's slot, waking the watchdog through `alarm`.
    pub fn new(alarm: Arc<Alarm>) -> Slot {
        Slot { running: Mutex::new(None), alarm, abandoned: AtomicBool::new(false), outside: false }
    }

    /// The slot of a thread outside the pool (an event loop's).
    pub fn outside(alarm: Arc<Alarm>) -> Slot {
        Slot { outside: true, ..Slot::new(alarm) }
    }

    /// The worker starts `r` (the watchdog is woken if it dozes).
    pub fn begin(&self, r: Running) {
        *self.lock() = Some(r);
        self.alarm.poke();
    }

    /// Whether a run is under way.
    pub fn busy(&self) -> bool {
        self.lock().is_some()
    }

    /// The worker is done; `true` if it finished in time (its result stands), `false` if the
    /// watchdog cut it off first (drop the result).
    pub fn end(&self) -> bool {
        self.lock().take().is_none_or(|r| !r.timed_out)
    }

    /// Whether this thread was abandoned.
    pub fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Relaxed)
    }
}

/// A call the watchdog cut off: counted against its gate under the slot's lock, answered and
/// logged after it is released.
struct Expired {
    conn: ConnId,
    app: Arc<App>,
    kind: Kind,
    late_by: Duration,
    /// The waiting call that takes over the slot (a call's only).
    next: Option<Box<CallJob>>,
    /// The application is stopped now.
    stopped: bool,
    /// The slot is outside the pool.
    outside: bool,
}

/// Looks at `slots` once: cuts off what is past its deadline. Returns one entry per abandoned
/// worker thread of the pool, for the caller to start one in its place: the call that takes
/// over its application's gate slot, if one was waiting (the new thread runs it first). A
/// thread [`Slot::outside`] the pool (an event loop's) gets no entry: it is not the pool's to
/// replace, and its call held no gate slot to hand on.
///
/// The stuck thread is counted against its gate while the slot's lock is held: a worker that
/// finishes just after the deadline then finds its call cut off (`Slot::end`) and reaps a count
/// that is already there, so no abandoned thread is counted that nothing will reap. (Lock order:
/// a slot, then a gate; nothing takes a slot's lock while holding a gate's.)
pub fn sweep(slots: &[Arc<Slot>], notifier: &Notifier, now: Instant) -> Vec<Option<Box<CallJob>>> {
    let mut expired = Vec::new();
    for slot in slots {
        let mut guard = slot.lock();
        if let Some(r) = guard.as_mut()
            && !r.timed_out
            && now >= r.deadline
        {
            r.timed_out = true;
            slot.abandoned.store(true, Ordering::Relaxed);
            let (next, stopped) = match r.kind {
                Kind::Call { gated: false, .. } => (None, r.app.gate.abandon_pull()),
                Kind::Call { .. } => {
                    let (next, stopped) = r.app.gate.abandon();
                    // What goes into a gate comes out: calls only.
                    (next.and_then(|w| w.downcast::<CallJob>().ok()), stopped)
                }
                Kind::Pull => (None, r.app.gate.abandon_pull()),
            };
            let late_by = now - r.deadline;
            let outside = slot.outside;
            expired.push(Expired {
                conn: r.conn,
                app: Arc::clone(&r.app),
                kind: r.kind,
                late_by,
                next,
                stopped,
                outside,
            });
        }
    }
    let mut replacements = Vec::new();
    for e in expired {
        let name = e.app.gate.name();
        let limit = e.app.gate.limits().timeout.map_or(0.0, |t| t.as_secs_f64());
        match e.kind {
            Kind::Call { version, head_request, .. } => {
                let prepared = Response::error(504).prepare(version, true, head_request);
                notifier.notify(Completion::Response(Box::new(Reply { conn: e.conn, prepared, stream: None })));
                tracing::error!(
                    app = %name,
                    "application {name}: call ran past its {limit} s deadline (by {} ms); answered 504, its worker \
                     thread is abandoned and replaced",
                    e.late_by.as_millis()
                );
            }
            Kind::Pull => {
                let chunk =
                    Chunk { conn: e.conn, data: Vec::new(), payload: 0, stream: None, close: true, waiting: false };
                notifier.notify(Completion::Chunk(Box::new(chunk)));
                tracing::error!(
                    app = %name,
                    "application {name}: a streamed body's next chunk took more than {limit} s; connection closed, \
                     worker thread abandoned and replaced"
                );
            }
        }
        if e.stopped {
            tracing::error!(
                app = %name,
                "application {name} left {} worker threads stuck: it answers 503 until a reload loads a new copy",
                e.app.gate.limits().max_abandoned
            );
        }
        if e.outside {
            // A call on an event loop took no gate slot, so it hands none on.
            debug_assert!(e.next.is_none(), "an event loop's call held a gate slot");
        } else {
            replacements.push(e.next);
        }
    }
    replacements
}
