//! What a connection ([`super::conn::Conn`]) and its event loop say to each other: the
//! [`Handler`] the loop implements (routing, the job queue, scheduling, counting), the
//! [`Decision`] on a request, what became of a call ([`Admission`]), whether the connection
//! stays open ([`Step`]) and which timeout passed ([`Expiry`]).

use std::sync::Arc;
use std::time::Instant;

use crate::admission::{Admit, Refusal};
use crate::exchange::body_pipe::BodyPipe;
use crate::exchange::{CallJob, ConnId, Job, Peer};
use crate::http::error::RequestError;
use crate::http::outgoing::Response;
use crate::http::request::{HeadLimits, RequestHead};
use crate::settings::Config;

/// What the connection needs from its event loop.
pub trait Handler {
    /// The settings (limits and timeouts).
    fn config(&self) -> &Config;
    /// The request head limits.
    fn limits(&self) -> &HeadLimits;
    /// Now, for a connection's timeout clocks (last read, last write, idle since). The
    /// event loop reads the clock once a turn, after its wait for events, and answers that
    /// (as nginx caches its time per turn): at most a turn behind, where the clocks count
    /// seconds.
    fn now(&self) -> Instant {
        Instant::now()
    }
    /// Whether the server is shutting down (new requests close their connection).
    fn draining(&self) -> bool;
    /// What answers `head`, which arrived on connection `id` from `peer`.
    fn decide(&mut self, id: ConnId, peer: &Peer, head: Box<RequestHead>) -> Decision;
    /// Sends a job to the worker pool.
    fn submit(&mut self, job: Job);
    /// Hands a call to its application's gate (see [`crate::admission`]): sent to the pool,
    /// queued, or refused.
    fn admit(&mut self, job: Box<CallJob>) -> Admission {
        admit_gated(self, job)
    }
    /// A new pipe for a request body of connection `id`.
    fn body_pipe(&self, id: ConnId, expect_continue: bool) -> Arc<BodyPipe>;
    /// Asks for [`Conn::on_readable`](super::conn::Conn::on_readable) on the next turn (fairness; a pipelined request).
    fn pump_later(&mut self, token: usize);
    /// Asks for [`Conn::on_writable`](super::conn::Conn::on_writable) on the next turn (a fast reader used its share).
    fn flush_later(&mut self, token: usize);
    /// The loop's scratch buffer for reads whose bytes are not kept as they come (its
    /// contents are meaningless between calls; readers reserve what they need).
    fn scratch(&mut self) -> &mut Vec<u8>;
    /// A request's response has been written (counted for `--max-requests`).
    fn served(&mut self) {}
    /// A response with `status` starts (every kind; counted by status class).
    fn responded(&mut self, _status: u16) {}
}

/// [`Handler::admit`] through the application's gate: the call is submitted when the gate
/// has a slot, queued in it, or refused. It is marked as holding a gate slot (`gated`),
/// whatever it was admitted as before (a call handed from its event loop to a worker).
pub fn admit_gated<H: Handler + ?Sized>(h: &mut H, mut job: Box<CallJob>) -> Admission {
    job.gated = true;
    let app = Arc::clone(&job.route.app);
    match app.gate.admit(job.conn, job) {
        Admit::Now(job) => {
            h.submit(Job::Call(job));
            Admission::Sent
        }
        Admit::Queued => Admission::Queued,
        Admit::Refused(_, why) => Admission::Refused(why),
    }
}

/// What answers a request (the handler's decision).
pub enum Decision {
    /// A response made on the event loop (static file, admin page, server-made answer). A
    /// request body is not read: the connection closes after it. `close` closes it anyway.
    Respond {
        /// The response.
        response: Response,
        /// Close the connection after it.
        close: bool,
    },
    /// An application, on a worker: the connection reads the body (whole, or into a pipe as
    /// the route's policy says) and sends the job when the body rules allow.
    Call(Box<CallJob>),
    /// Refused: the error's status, and the connection closes.
    Reject(RequestError),
}

/// What became of a call handed to its application ([`Handler::admit`]).
#[derive(Debug)]
pub enum Admission {
    /// It went to the worker pool.
    Sent,
    /// It waits in the application's queue; a worker runs it when a slot is free.
    Queued,
    /// Refused (503).
    Refused(Refusal),
}

/// Whether the connection stays open after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Keep it.
    Open,
    /// It is closed: deregister and drop it (its body pipe, stream and access line are
    /// already dealt with).
    Close,
}

/// A timeout found by [`Conn::expired`](super::conn::Conn::expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request head arrived too slowly: 408.
    Head,
    /// Nothing arrived on a new or idle keep-alive connection: close silently.
    Idle,
    /// A request body stalled: 408 if no response has started, else close.
    Body,
    /// The client stopped reading the response: close, with a log line.
    Send,
    /// Lingering lasted long enough.
    Linger,
}
