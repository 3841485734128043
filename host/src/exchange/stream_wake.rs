//! Waking a push stream: the host's implementation of the ABI's `Wake`, one per streamed
//! response body.
//!
//! A stream that answers `Chunk::Pending` goes back to its connection's event loop and waits
//! there with no worker; its plugin keeps the [`Waker`] and calls it when it has data. The
//! wake may come from any thread at any time: during the poll itself, between the poll and the
//! loop receiving the stream, long after, or after the response ended. One atomic state makes
//! every order safe:
//!
//! ```text
//!            begin_poll            poll answered Pending: park()
//!   IDLE ───────────────► POLLING ──────────────────────────────► WAITING
//!    ▲                      │ wake()                                  │ wake(): notify the loop
//!    │                      ▼                                         │ (Completion::StreamReady)
//!    └──── park() = false ◄ WOKEN (poll again at once)                ▼
//!    └──────────────────────────────────────────────────────────────  IDLE
//!   any ── finish() (the stream was dropped) ──► DONE: wakes are ignored
//! ```
//!
//! A wake in WAITING sends exactly one `StreamReady`; any other wake sends nothing (the
//! stream is being polled, or already due to be). The loop may receive `StreamReady` before
//! the chunk that says the stream waits (two threads, two sends): it remembers it
//! (`crate::io::conn`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::RArc;
use portico_api::abi::{Wake, Wake_TO, Waker};

use super::{Completion, ConnId, Notifier};

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;
const WAITING: u8 = 3;
const DONE: u8 = 4;

/// The wake state of one streamed body.
pub(crate) struct StreamWake {
    state: AtomicU8,
    conn: ConnId,
    notifier: Notifier,
}

impl StreamWake {
    /// The wake state of a stream answering on `conn`, and the waker its polls are handed.
    pub fn new(conn: ConnId, notifier: Notifier) -> (Arc<StreamWake>, Waker) {
        let wake = Arc::new(StreamWake { state: AtomicU8::new(IDLE), conn, notifier });
        let waker = Wake_TO::from_ptr(RArc::new(HostWake(Arc::clone(&wake))), TD_Opaque);
        (wake, waker)
    }

    /// A worker is about to poll.
    pub fn begin_poll(&self) {
        self.state.store(POLLING, Ordering::SeqCst);
    }

    /// The poll gave data, ended or failed.
    pub fn polled(&self) {
        self.state.store(IDLE, Ordering::SeqCst);
    }

    /// The poll answered `Pending`: `true` if the stream now waits for a wake; `false` if a
    /// wake came during the poll (poll again).
    pub fn park(&self) -> bool {
        match self.state.compare_exchange(POLLING, WAITING, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => true,
            Err(_) => {
                self.state.store(IDLE, Ordering::SeqCst);
                false
            }
        }
    }

    /// The stream was dropped: later wakes do nothing.
    pub fn finish(&self) {
        self.state.store(DONE, Ordering::SeqCst);
    }

    fn wake(&self) {
        let mut current = self.state.load(Ordering::SeqCst);
        loop {
            let next = match current {
                WAITING => IDLE,
                POLLING => WOKEN,
                _ => return,
            };
            match self.state.compare_exchange(current, next, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) if current == WAITING => {
                    self.notifier.notify(Completion::StreamReady(self.conn));
                    return;
                }
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }
}

/// The `Wake` object handed to plugins.
#[derive(Clone)]
struct HostWake(Arc<StreamWake>);

impl Wake for HostWake {
    fn wake(&self) {
        self.0.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::Receiver;

    fn setup() -> (Arc<StreamWake>, Waker, Receiver<Completion>) {
        let poll = mio::Poll::new().unwrap();
        let mio_waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let (tx, rx) = crossbeam_channel::unbounded();
        let notifier = Notifier::new(vec![(tx, mio_waker)]);
        let conn = ConnId { event_loop: 0, token: 7, generation: 1 };
        let (wake, waker) = StreamWake::new(conn, notifier);
        (wake, waker, rx)
    }

    #[test]
    fn a_wake_while_waiting_notifies_the_loop_once() {
        let (wake, waker, rx) = setup();
        wake.begin_poll();
        assert!(wake.park());
        waker.wake();
        waker.wake();
        assert!(matches!(rx.try_recv(), Ok(Completion::StreamReady(id)) if id.token == 7));
        assert!(rx.try_recv().is_err(), "one notification");
    }

    #[test]
    fn a_wake_during_the_poll_makes_the_worker_poll_again_and_notifies_nothing() {
        let (wake, waker, rx) = setup();
        wake.begin_poll();
        waker.wake();
        assert!(!wake.park());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn wakes_after_the_stream_is_dropped_do_nothing() {
        let (wake, waker, rx) = setup();
        wake.begin_poll();
        assert!(wake.park());
        wake.finish();
        waker.clone().wake();
        assert!(rx.try_recv().is_err());
    }
}
