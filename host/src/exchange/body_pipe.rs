//! The request body on its way from the event loop to an application (`wsgi.input`).
//!
//! The event loop decodes body bytes (de-chunked) and pushes them in; the application's
//! worker reads them out, blocking until more arrive, for at most the body timeout between
//! arrivals. The pipe holds at most [`PIPE_CAPACITY`] bytes: past that the event loop stops
//! reading the socket (TCP backpressure on the client) until the application reads.
//!
//! `Expect: 100-continue` (RFC 9110 §10.1.1): the interim `100 Continue` is asked for on the
//! application's first read, not before it runs (PEP 3333 allows this; Gunicorn sends it
//! up front, which defeats the point of the expectation).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Completion, ConnId, Notifier};

/// Bytes buffered in a pipe above which the event loop stops reading the body: 256 KiB.
pub const PIPE_CAPACITY: usize = 256 * 1024;

#[derive(Default)]
struct State {
    chunks: VecDeque<Vec<u8>>,
    front: usize,
    buffered: usize,
    done: bool,
    error: Option<String>,
    paused: bool,
    continue_pending: bool,
}

/// One request body in flight between the event loop and a worker.
pub struct BodyPipe {
    state: Mutex<State>,
    ready: Condvar,
    timeout: Duration,
    conn: ConnId,
    notifier: Notifier,
}

impl BodyPipe {
    /// An open pipe for connection `conn`. `expect_continue`: ask for `100 Continue` on the
    /// first read.
    pub(crate) fn new(conn: ConnId, notifier: Notifier, timeout: Duration, expect_continue: bool) -> Self {
        BodyPipe {
            state: Mutex::new(State { continue_pending: expect_continue, ..State::default() }),
            ready: Condvar::new(),
            timeout,
            conn,
            notifier,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Event loop side: appends decoded body bytes.
    pub fn push(&self, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        let mut s = self.lock();
        s.buffered += data.len();
        s.chunks.push_back(data);
        drop(s);
        self.ready.notify_one();
    }

    /// Event loop side: the body is complete.
    pub fn finish(&self) {
        self.lock().done = true;
        self.ready.notify_one();
    }

    /// Event loop side: the body failed (client gone, timeout, bad chunked framing).
    pub fn fail(&self, msg: &str) {
        let mut s = self.lock();
        if !s.done {
            s.error = Some(msg.to_owned());
        }
        drop(s);
        self.ready.notify_one();
    }

    /// Event loop side: whether the buffer is full; if so, marks the pipe paused so the reader asks
    /// the event loop to resume once it has drained half of it.
    pub fn full_then_pause(&self) -> bool {
        let mut s = self.lock();
        if s.buffered >= PIPE_CAPACITY {
            s.paused = true;
            true
        } else {
            false
        }
    }

    /// Whether the event loop stopped reading because the buffer is full (then the body
    /// timeout does not run: the wait is ours, not the client's).
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Whether `100 Continue` is still owed: the client waits for it before sending the
    /// body, so the body timeout does not run yet.
    pub fn awaiting_continue(&self) -> bool {
        self.lock().continue_pending
    }

    /// Whether the event loop has read the whole body off the socket.
    pub fn is_complete(&self) -> bool {
        self.lock().done
    }

    /// Bytes buffered and not yet read by the application.
    pub fn buffered(&self) -> usize {
        self.lock().buffered
    }

    /// Worker side: `wsgi.input.read`. Returns `Ok(0)` at the end of the body.
    ///
    /// # Errors
    /// The body failed, or nothing arrived for the body timeout.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, String> {
        let mut s = self.lock();
        if s.continue_pending {
            s.continue_pending = false;
            self.notifier.notify(Completion::Continue(self.conn));
        }
        // A huge --body-timeout means "no deadline", not an overflow panic (which would
        // cross into the plugin that called us).
        let deadline = Instant::now().checked_add(self.timeout);
        loop {
            if s.buffered > 0 {
                let mut n = 0;
                while n < buf.len() {
                    let front = s.front;
                    let Some(chunk) = s.chunks.front() else { break };
                    let take = (chunk.len() - front).min(buf.len() - n);
                    buf[n..n + take].copy_from_slice(&chunk[front..front + take]);
                    n += take;
                    if front + take == chunk.len() {
                        s.chunks.pop_front();
                        s.front = 0;
                    } else {
                        s.front = front + take;
                    }
                }
                s.buffered -= n;
                if s.paused && s.buffered <= PIPE_CAPACITY / 2 {
                    s.paused = false;
                    self.notifier.notify(Completion::ResumeRead(self.conn));
                }
                return Ok(n);
            }
            if let Some(e) = &s.error {
                return Err(e.clone());
            }
            if s.done || buf.is_empty() {
                return Ok(0);
            }
            let now = Instant::now();
            let wait = match deadline {
                Some(d) if now >= d => return Err(format!("no request body bytes for {} s", self.timeout.as_secs())),
                Some(d) => d - now,
                None => Duration::from_secs(3600),
            };
            s = self.ready.wait_timeout(s, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe(expect_continue: bool) -> (BodyPipe, crossbeam_channel::Receiver<Completion>, mio::Poll) {
        let poll = mio::Poll::new().unwrap();
        let waker = std::sync::Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let (tx, rx) = crossbeam_channel::unbounded();
        let id = ConnId { event_loop: 0, token: 3, generation: 9 };
        let p = BodyPipe::new(id, Notifier::new(vec![(tx, waker)]), Duration::from_millis(200), expect_continue);
        (p, rx, poll)
    }

    #[test]
    fn bytes_come_out_in_order_then_the_end() {
        let (p, rx, _poll) = pipe(false);
        p.push(b"hel".to_vec());
        p.push(b"lo".to_vec());
        p.finish();
        let mut buf = [0u8; 4];
        assert_eq!(p.read(&mut buf), Ok(4));
        assert_eq!(&buf, b"hell");
        assert_eq!(p.read(&mut buf), Ok(1));
        assert_eq!(p.read(&mut buf), Ok(0));
        assert!(p.is_complete() && rx.try_recv().is_err(), "no 100 without the expectation");
    }

    #[test]
    fn the_first_read_asks_for_100_continue_once() {
        let (p, rx, _poll) = pipe(true);
        assert!(p.awaiting_continue());
        p.finish();
        assert_eq!(p.read(&mut [0u8; 8]), Ok(0));
        assert!(matches!(rx.try_recv(), Ok(Completion::Continue(id)) if id.token == 3));
        assert_eq!(p.read(&mut [0u8; 8]), Ok(0));
        assert!(rx.try_recv().is_err() && !p.awaiting_continue());
    }

    #[test]
    fn a_full_pipe_pauses_reading_until_half_is_read() {
        let (p, rx, _poll) = pipe(false);
        p.push(vec![1u8; PIPE_CAPACITY]);
        assert!(p.full_then_pause() && p.is_paused());
        let mut buf = vec![0u8; PIPE_CAPACITY / 4];
        assert_eq!(p.read(&mut buf), Ok(PIPE_CAPACITY / 4));
        assert!(rx.try_recv().is_err(), "three quarters still buffered");
        assert_eq!(p.read(&mut buf), Ok(PIPE_CAPACITY / 4));
        assert!(matches!(rx.try_recv(), Ok(Completion::ResumeRead(_))), "half read: resume");
        assert!(!p.is_paused());
    }

    #[test]
    fn a_failed_or_silent_body_is_a_read_error() {
        let (p, _rx, _poll) = pipe(false);
        p.fail("client disconnected");
        assert_eq!(p.read(&mut [0u8; 8]), Err("client disconnected".to_owned()));
        let (p, _rx, _poll) = pipe(false);
        let e = p.read(&mut [0u8; 8]).unwrap_err();
        assert!(e.starts_with("no request body bytes for"), "the body timeout between arrivals: {e}");
    }
}
