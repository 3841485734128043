//! One client connection's state machine: HTTP/1.1 on a non-blocking socket, driven by its
//! event loop through a [`Handler`] (routing, the job queue, scheduling), so it can be tested
//! without a listening server.
//!
//! Each [`Phase`] carries its own data:
//! - `Head` — reading a request head (an idle keep-alive connection is `Head` with nothing
//!   received); how far the head was scanned and when its first byte came.
//! - `Request` — the head is parsed and the request is with an application (queued,
//!   running, or held back until its body has arrived); the body being read, and the job not
//!   yet sent to the pool.
//! - `Writing` — response bytes queued; a streamed body is pulled as the socket drains. A body
//!   the application did not wait for may still be arriving.
//! - `Lingering` — the response is out and the connection is closing: our side is shut down
//!   for writing and input is read and discarded until the client closes, so unread input
//!   does not turn our close into a reset that destroys the response in flight (nginx's
//!   lingering close).
//!
//! A request's life, in the order of the code below: [`Conn::on_readable`] reads and parses
//! (`pump`); `start_request` asks the handler what answers; a body is fed to its pipe
//! (`feed_body`); the answer is queued (`start_writing`) and written (`flush`); `finish`
//! logs the exchange and goes back to `Head` (keep-alive, next pipelined request) or closes.
//! Timeouts are checked by the event loop's sweep ([`Conn::expired`], [`Conn::expire`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Transport;
use super::body::{BodyIn, Fed};
pub use super::handler::{Admission, Decision, Expiry, Handler, Step};
use super::read_buf::{self, READ_CHUNK};
use super::stream_slot::StreamSlot;
use super::write::{Flushed, WriteQueue};
use crate::access_log::{self, Access};
use crate::exchange::{CallJob, Chunk, ConnId, Job, Peer, Reply, RequestBody, StreamState};
use crate::http::decode::Decoder;
use crate::http::error::RequestError;
use crate::http::limits::WRITE_HIGH_WATER;
use crate::http::outgoing::{Piece, Prepared, Response};
use crate::http::request::{self, Framing, HeadScan, Parsed, RequestHead, Version};
use crate::http::response;
use crate::metrics::counters::ConnCounts;
use crate::routing::App;
use crate::settings::Config;

/// Bytes buffered before a read turn yields to other connections. 128 KiB.
const READ_SHARE: usize = READ_CHUNK * 8;
/// Most bytes one connection writes in one turn of the loop before the others get theirs.
/// 4 MiB.
const FLUSH_SHARE: usize = 4 * 1024 * 1024;
/// Longest pause in the client's input while lingering before we close anyway.
const LINGER_IDLE: Duration = Duration::from_secs(2);
/// Longest lingering close in all.
const LINGER_MAX: Duration = Duration::from_secs(5);
/// Most parse/feed rounds in one turn before the connection yields to the others.
const PUMP_ROUNDS: usize = 64;

enum Phase {
    Head {
        scan: HeadScan,
        first_byte: Option<Instant>,
    },
    /// `pending`: the job not yet sent to its application (its body is still arriving);
    /// `queued`: the application whose gate has it waiting for a slot.
    Request {
        body: Option<BodyIn>,
        pending: Option<Box<CallJob>>,
        queued: Option<Arc<App>>,
    },
    Writing {
        body: Option<BodyIn>,
        stream: StreamSlot,
    },
    Lingering {
        since: Instant,
    },
}

impl Phase {
    fn head() -> Phase {
        Phase::Head { scan: HeadScan::default(), first_byte: None }
    }

    fn body(&mut self) -> Option<&mut BodyIn> {
        match self {
            Phase::Request { body, .. } | Phase::Writing { body, .. } => body.as_mut(),
            _ => None,
        }
    }

    fn take_body(&mut self) -> Option<BodyIn> {
        match self {
            Phase::Request { body, .. } | Phase::Writing { body, .. } => body.take(),
            _ => None,
        }
    }
}

/// The exchange in progress: what its answers and its access line need.
struct Exchange {
    version: Version,
    head_request: bool,
    log: Option<Access>,
    status: u16,
    /// The body's length in bytes: declared, or (streamed) produced so far.
    body_bytes: u64,
    /// Bytes of the response head.
    head_bytes: u64,
    /// Bytes written to the socket so far, head included (chunk framing too).
    sent: u64,
}

impl Exchange {
    fn none() -> Exchange {
        Exchange {
            version: Version::Http11,
            head_request: false,
            log: None,
            status: 0,
            body_bytes: 0,
            head_bytes: 0,
            sent: 0,
        }
    }

    /// The body bytes the client got of a response cut short: what was written after the
    /// head (chunk framing included), at most the body's length.
    fn body_sent(&self) -> u64 {
        self.sent.saturating_sub(self.head_bytes).min(self.body_bytes)
    }
}

/// What one read turn achieved.
enum ReadOutcome {
    /// New bytes, or end of input (`eof` set).
    Progress,
    /// Nothing to read now; readiness will tell.
    WouldBlock,
    /// The connection failed (reset): close it.
    Failed,
}

/// One client connection.
pub struct Conn<S> {
    id: ConnId,
    sock: S,
    peer: Peer,
    rbuf: Vec<u8>,
    /// The client sent EOF.
    eof: bool,
    /// The last read found nothing more (`WouldBlock`, or a short read on a plain socket)
    /// and no readable event has come since: reading again is skipped until one does.
    drained: bool,
    /// An event said the peer closed its side (or an error): read until 0.
    peer_closed: bool,
    phase: Phase,
    out: WriteQueue,
    /// Close once the current response is written.
    close_after: bool,
    /// Requests answered on this connection.
    requests: u64,
    accepted: Instant,
    idle_since: Instant,
    last_read: Instant,
    last_write: Instant,
    exchange: Exchange,
}

impl<S: Transport> Conn<S> {
    /// A connection just accepted.
    pub fn new(id: ConnId, sock: S, peer: Peer) -> Conn<S> {
        let now = Instant::now();
        Conn {
            id,
            sock,
            peer,
            rbuf: Vec::new(),
            eof: false,
            drained: false,
            peer_closed: false,
            phase: Phase::head(),
            out: WriteQueue::default(),
            close_after: false,
            requests: 0,
            accepted: now,
            idle_since: now,
            last_read: now,
            last_write: now,
            exchange: Exchange::none(),
        }
    }

    /// Its identity.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The socket (to deregister it).
    pub fn socket_mut(&mut self) -> &mut S {
        &mut self.sock
    }

    /// Counts this connection's state into `c` (`idle` … `closing`).
    pub fn count(&self, c: &mut ConnCounts) {
        c.open += 1;
        match &self.phase {
            Phase::Head { .. } if self.rbuf.is_empty() => c.idle += 1,
            Phase::Head { .. } | Phase::Request { body: Some(_), .. } => c.reading += 1,
            Phase::Request { .. } => c.processing += 1,
            Phase::Writing { stream, .. } if stream.is_waiting() => c.paused += 1,
            Phase::Writing { .. } => c.writing += 1,
            Phase::Lingering { .. } => c.closing += 1,
        }
    }

    /// The event loop saw the socket readable, or `closed` (the peer shut down its side, or
    /// an error): new input may be there whatever the last read found. Once closed, reads go
    /// on until they return 0 (a short read is no longer the end: the FIN is only read after
    /// the bytes before it, and no further event comes for it).
    pub fn on_read_event(&mut self, closed: bool, h: &mut impl Handler) -> Step {
        self.drained = false;
        self.peer_closed |= closed;
        self.on_readable(h)
    }

    /// The socket may have input (an event, or the connection asked to come back): makes all
    /// the progress the input allows — parse heads, feed bodies, start requests.
    pub fn on_readable(&mut self, h: &mut impl Handler) -> Step {
        match &self.phase {
            Phase::Writing { body: None, stream } if stream.is_waiting() => return self.watch_input(h),
            Phase::Request { body: None, queued: Some(_), .. } => return self.watch_input(h),
            _ => {}
        }
        for _ in 0..PUMP_ROUNDS {
            match &mut self.phase {
                Phase::Lingering { .. } => return self.discard_input(h),
                Phase::Head { scan, first_byte } => {
                    if !self.rbuf.is_empty() {
                        first_byte.get_or_insert(h.now());
                        match request::parse_resume(&self.rbuf, scan, h.limits()) {
                            Ok(Parsed::Complete(head, used)) => {
                                self.rbuf.drain(..used);
                                if self.start_request(head, h) == Step::Close {
                                    return Step::Close;
                                }
                                continue;
                            }
                            Ok(Parsed::Partial) => {}
                            Err(e) => return self.reject(&e, h),
                        }
                    }
                    if self.eof {
                        // Truncated head (or a clean close between requests): nothing to answer.
                        return self.close(h);
                    }
                }
                Phase::Request { body, .. } | Phase::Writing { body, .. } => {
                    // Without a body being read, the next request (pipelined or not) is read
                    // once this response is out.
                    let Some(body) = body else { return Step::Open };
                    if !self.rbuf.is_empty() {
                        match self.feed_body(h) {
                            Err(e) => return self.body_failed(e, h),
                            Ok(Step::Close) => return Step::Close,
                            Ok(Step::Open) => continue,
                        }
                    }
                    if body.hold_back() {
                        return Step::Open; // the worker asks to resume when it has read
                    }
                    if self.eof {
                        let e = RequestError::BadRequest("connection closed inside the request body");
                        return self.body_failed(e, h);
                    }
                }
            }
            match self.read_socket(h) {
                ReadOutcome::Progress => {}
                ReadOutcome::WouldBlock => return Step::Open,
                ReadOutcome::Failed => return self.close(h),
            }
        }
        // Fairness: come back to this connection after serving others.
        h.pump_later(self.id.token);
        Step::Open
    }

    /// The socket is writable: writes what is queued.
    pub fn on_writable(&mut self, h: &mut impl Handler) -> Step {
        // TLS records the socket did not take last time go first (progress for the send
        // timeout).
        if self.sock.pending() {
            match self.sock.flush_pending() {
                Ok(_) => self.last_write = h.now(),
                Err(_) => return self.close(h),
            }
        }
        self.flush(h)
    }

    /// An application's response arrived.
    pub fn on_reply(&mut self, reply: Reply, h: &mut impl Handler) -> Step {
        if matches!(self.phase, Phase::Lingering { .. } | Phase::Head { .. }) {
            // Not waiting for one (cannot happen: the connection id is checked first).
            if let Some(s) = reply.stream {
                h.submit(Job::Close(s));
            }
            return Step::Open;
        }
        self.start_writing(reply.prepared, reply.stream, h)
    }

    /// The next piece of a streamed body arrived.
    pub fn on_chunk(&mut self, chunk: Chunk, h: &mut impl Handler) -> Step {
        let Phase::Writing { stream, .. } = &mut self.phase else {
            if let Some(s) = chunk.stream {
                h.submit(Job::Close(s));
            }
            return Step::Open;
        };
        let waiting = stream.returned(chunk.stream, chunk.waiting);
        self.exchange.body_bytes += chunk.payload;
        if !chunk.data.is_empty() {
            self.out.push(Piece::Owned(chunk.data));
        }
        self.close_after |= chunk.close;
        // The client may have gone while the chunk was polled (its readable event came and
        // went): look once, so a waiting stream of a closed connection is dropped now.
        match self.flush(h) {
            Step::Open if waiting => self.watch_input(h),
            step => step,
        }
    }

    /// A waiting stream's plugin woke it: pull it again (when the write queue allows).
    pub fn on_stream_ready(&mut self, h: &mut impl Handler) -> Step {
        let Phase::Writing { stream, .. } = &mut self.phase else { return Step::Open };
        stream.woken();
        self.flush(h)
    }

    /// While a stream waits for its plugin, or a request in its application's queue: a client
    /// that closes its side (EOF) or resets is gone, and the stream or the queued call is
    /// dropped (nginx's client abort, 499). Pipelined bytes are kept, up to [`READ_SHARE`].
    fn watch_input(&mut self, h: &mut impl Handler) -> Step {
        if self.rbuf.len() < READ_SHARE && (matches!(self.read_socket(h), ReadOutcome::Failed) || self.eof) {
            tracing::debug!(peer = %self.peer.remote, "client gone while its response waited; closing");
            return self.close(h);
        }
        Step::Open
    }

    /// The application started reading a streamed body sent with `Expect: 100-continue`:
    /// send the interim `100 Continue` (RFC 9110 §10.1.1), unless a response has started.
    pub fn on_continue(&mut self, h: &mut impl Handler) -> Step {
        if let Phase::Request { body: Some(body), .. } = &mut self.phase
            && self.out.is_empty()
        {
            // The client starts sending now: the body's clocks count from here.
            body.restart_clocks();
            self.last_read = h.now();
            return self.send_continue(h);
        }
        Step::Open
    }

    /// Queues and writes `HTTP/1.1 100 Continue`.
    fn send_continue(&mut self, h: &mut impl Handler) -> Step {
        let mut msg = Vec::with_capacity(32);
        response::encode_continue(&mut msg);
        self.out.push(Piece::Owned(msg));
        self.flush(h)
    }

    /// The body pipe has room again: read the socket.
    pub fn on_resume(&mut self, h: &mut impl Handler) -> Step {
        self.last_read = h.now();
        self.on_readable(h)
    }

    /// The server is draining (shutdown, or an old generation): closes the connection if it
    /// is between requests with nothing received, and has been so for `grace` since both its
    /// last response and `drain_start`. A close races with a request the client may already
    /// have sent (RFC 9112 §9.6; nginx's `keepalive_min_timeout`), so a connection is given
    /// the grace to send one: it is answered with `Connection: close` (see `start_request`).
    /// A response whose head went out before the drain said nothing about closing, so its
    /// connection is not closed after it either, but waits like any other.
    pub fn close_if_idle(&mut self, now: Instant, drain_start: Instant, grace: Duration, h: &mut impl Handler) -> Step {
        let quiet_since = self.idle_since.max(drain_start);
        if matches!(self.phase, Phase::Head { .. })
            && self.rbuf.is_empty()
            && now.saturating_duration_since(quiet_since) >= grace
        {
            return self.close(h);
        }
        Step::Open
    }

    /// Which timeout, if any, has passed at `now`.
    pub fn expired(&self, now: Instant, cfg: &Config) -> Option<Expiry> {
        let over = |since: Instant, limit: Duration| now.saturating_duration_since(since) > limit;
        match &self.phase {
            Phase::Head { first_byte, .. } => match first_byte.filter(|_| !self.rbuf.is_empty()) {
                Some(first) => over(first, cfg.head_timeout).then_some(Expiry::Head),
                None if self.requests == 0 => over(self.accepted, cfg.head_timeout).then_some(Expiry::Idle),
                None => over(self.idle_since, cfg.keep_alive_timeout).then_some(Expiry::Idle),
            },
            Phase::Lingering { since } => {
                (over(self.last_read, LINGER_IDLE) || over(*since, LINGER_MAX)).then_some(Expiry::Linger)
            }
            Phase::Request { body, .. } | Phase::Writing { body, .. } => {
                // The body's clocks run only while the client is the one we wait for: not
                // while we hold back reading (pipe full) nor before a 100 it waits for.
                let body_stalled = body.as_ref().is_some_and(|b| {
                    b.waiting_on_client()
                        && (over(self.last_read, cfg.body_timeout)
                            || b.too_slow(now, cfg.body_timeout, cfg.body_min_rate))
                });
                if body_stalled {
                    Some(Expiry::Body)
                } else if (!self.out.is_empty() || self.sock.pending()) && over(self.last_write, cfg.send_timeout) {
                    Some(Expiry::Send)
                } else {
                    None
                }
            }
        }
    }

    /// Acts on a timeout [`Conn::expired`] found.
    pub fn expire(&mut self, e: Expiry, h: &mut impl Handler) -> Step {
        match e {
            Expiry::Head => self.reject(&RequestError::HeadTimeout, h),
            Expiry::Body => self.body_failed(RequestError::BodyTimeout, h),
            Expiry::Send => {
                let secs = h.config().send_timeout.as_secs();
                tracing::warn!(peer = %self.peer.remote, "client stopped reading for {secs} s; closing");
                self.close(h)
            }
            Expiry::Idle | Expiry::Linger => self.close(h),
        }
    }

    /// Closes the connection now: fails a body still being read (the application sees a read
    /// error), hands a parked stream to a worker to be dropped, writes the access line of a
    /// response that had started.
    pub fn close(&mut self, h: &mut impl Handler) -> Step {
        if let Some(body) = self.phase.take_body() {
            body.fail("client disconnected");
        }
        self.drop_pending();
        if let Phase::Writing { stream, .. } = &mut self.phase
            && let Some(s) = stream.take_to_close()
        {
            h.submit(Job::Close(s));
        }
        // A response cut short (the client went, a timeout, the end of a drain): logged with
        // what was sent.
        if let (Some(a), true) = (self.exchange.log.take(), self.exchange.status != 0) {
            access_log::write(&a, self.exchange.status, self.exchange.body_sent());
        }
        Step::Close
    }

    /// Reads into the buffer until the socket would block (or a fair share has been read:
    /// the rest waits in the kernel, and the caller comes back).
    fn read_socket(&mut self, h: &mut impl Handler) -> ReadOutcome {
        if self.drained {
            // The last read found the socket empty and no readable event came since: a read
            // now would only say so again (one `read` per request saved).
            return ReadOutcome::WouldBlock;
        }
        let mut progress = false;
        loop {
            match read_buf::read_once(&self.sock, &mut self.rbuf, h.scratch()) {
                Ok((0, _)) => {
                    self.eof = true;
                    return ReadOutcome::Progress;
                }
                Ok((_, short)) => {
                    self.last_read = h.now();
                    progress = true;
                    if short && !self.peer_closed && self.sock.short_read_drains() {
                        self.drained = true;
                        return ReadOutcome::Progress;
                    }
                    if self.rbuf.len() > READ_SHARE {
                        return ReadOutcome::Progress;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.drained = true;
                    return if progress { ReadOutcome::Progress } else { ReadOutcome::WouldBlock };
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return ReadOutcome::Failed,
            }
        }
    }

    /// A head was parsed: asks the handler what answers it, and starts that.
    fn start_request(&mut self, head: Box<RequestHead>, h: &mut impl Handler) -> Step {
        // The client behind trusted proxies, for the application and the access line.
        let forwarded = self.peer.forwarded(&head, &h.config().forwarded);
        self.phase = Phase::Request { body: None, pending: None, queued: None };
        self.exchange = Exchange {
            version: head.version,
            head_request: head.is_head(),
            log: h.config().access_log.then(|| Access::new(&head, forwarded.as_ref().unwrap_or(&self.peer).remote)),
            status: 0,
            body_bytes: 0,
            head_bytes: 0,
            sent: 0,
        };
        if !head.keep_alive || h.draining() {
            self.close_after = true;
        }
        let framing = head.framing;
        let expect_continue = head.expect_continue;
        match h.decide(self.id, forwarded.as_ref().unwrap_or(&self.peer), head) {
            Decision::Reject(e) => self.reject(&e, h),
            Decision::Respond { response, close } => {
                // A body sent along is not read: close after answering.
                let close = close || self.close_after || framing != Framing::None;
                let prepared = response.prepare(self.exchange.version, close, self.exchange.head_request);
                self.start_writing(prepared, None, h)
            }
            Decision::Call(mut job) => {
                // Body bytes already buffered are fed by the caller's next round.
                let Some(decoder) = Decoder::new(framing, h.config().max_head_bytes) else {
                    // No body: the application runs now (when its gate lets it).
                    return self.dispatch(job, h);
                };
                if job.route.app.request_buffering {
                    // Read whole before the call. A client waiting for a 100 gets it now: the
                    // server reads a body it accepts (as nginx does).
                    self.phase =
                        Phase::Request { body: Some(BodyIn::buffered(decoder)), pending: Some(job), queued: None };
                    return if expect_continue { self.send_continue(h) } else { Step::Open };
                }
                // Streamed: the application runs once the first BODY_BUFFER bytes are here, or
                // at once when the client waits for a 100 (sent on its first read).
                let pipe = h.body_pipe(self.id, expect_continue);
                job.body = RequestBody::Streamed(Arc::clone(&pipe));
                let body = Some(BodyIn::streamed(decoder, pipe));
                if expect_continue {
                    self.phase = Phase::Request { body, pending: None, queued: None };
                    return self.dispatch(job, h);
                }
                self.phase = Phase::Request { body, pending: Some(job), queued: None };
                Step::Open
            }
        }
    }

    /// Moves received body bytes to the body's sink; sends the held-back job when the rules
    /// say so (buffered: the body is whole; streamed: enough of it is here).
    fn feed_body(&mut self, h: &mut impl Handler) -> Result<Step, RequestError> {
        let cfg = h.config();
        let Some(body) = self.phase.body() else { return Ok(Step::Open) };
        let Fed { used, done, ready } = body.feed(&self.rbuf, cfg)?;
        self.rbuf.drain(..used);
        if done
            && let Some(body) = self.phase.take_body()
            && let Some(whole) = body.finish()?
            && let Phase::Request { pending: Some(job), .. } = &mut self.phase
        {
            job.body = RequestBody::Buffered(whole);
        }
        if ready
            && let Phase::Request { pending, queued: None, .. } = &mut self.phase
            && let Some(job) = pending.take()
        {
            return Ok(self.dispatch(job, h));
        }
        Ok(Step::Open)
    }

    /// Sends a call whose body rules are met to its application: to the pool if the gate has
    /// a slot, into the gate's queue if not (a worker of the application runs it when one is
    /// free), or refused with 503 when the queue is full.
    fn dispatch(&mut self, job: Box<CallJob>, h: &mut impl Handler) -> Step {
        if self.phase.body().is_none() {
            read_buf::release(&mut self.rbuf); // the request is whole: keep only what is next
        }
        let app = Arc::clone(&job.route.app);
        let admission = h.admit(job);
        self.admitted(app, admission, h)
    }

    /// Sends this connection's call, admitted earlier to run on its event loop's thread, to a
    /// worker after all (its batch ran out of time, its plugin broke its promise): through its
    /// application's gate, as [`Conn::dispatch`] does — run now, queued (and taken out of the
    /// queue if the client leaves), or answered 503 (the connection kept, as any 503).
    pub fn hand_to_worker(&mut self, job: Box<CallJob>, h: &mut impl Handler) -> Step {
        let app = Arc::clone(&job.route.app);
        let admission = super::handler::admit_gated(h, job);
        self.admitted(app, admission, h)
    }

    /// What the call's admission means for the connection.
    fn admitted(&mut self, app: Arc<crate::routing::App>, admission: Admission, h: &mut impl Handler) -> Step {
        match admission {
            Admission::Sent => Step::Open,
            Admission::Queued => {
                if let Phase::Request { queued, .. } = &mut self.phase {
                    *queued = Some(app);
                }
                Step::Open
            }
            Admission::Refused(why) => {
                tracing::debug!(app = %app.gate.name(), "refused with 503: {why:?}");
                if let Some(body) = self.phase.take_body() {
                    body.fail("the application is too busy");
                    self.close_after = true;
                }
                let response = Response::busy();
                let prepared = response.prepare(self.exchange.version, self.close_after, self.exchange.head_request);
                self.start_writing(prepared, None, h)
            }
        }
    }

    /// Drops a call still held here, or waiting in its application's queue (a client that
    /// went away takes its call out).
    fn drop_pending(&mut self) {
        if let Phase::Request { pending, queued, .. } = &mut self.phase {
            pending.take();
            if let Some(app) = queued.take() {
                drop(app.gate.cancel(self.id));
            }
        }
    }

    /// The request body failed (malformed, too large, timed out, cut off).
    fn body_failed(&mut self, e: RequestError, h: &mut impl Handler) -> Step {
        if let Some(body) = self.phase.take_body() {
            body.fail(&e.to_string());
        }
        if let Phase::Request { pending: Some(_), .. } = self.phase {
            // The application has not started: answer the error ourselves (reject drops the job).
            return self.reject(&e, h);
        }
        // The application runs or has answered: close once its response is out.
        self.close_after = true;
        self.rbuf.clear();
        self.finish(h)
    }

    /// Answers a request error and closes the connection after it.
    fn reject(&mut self, e: &RequestError, h: &mut impl Handler) -> Step {
        let status = e.status();
        tracing::debug!(peer = %self.peer.remote, "request refused with {status}: {e}");
        if self.exchange.log.is_none() && h.config().access_log {
            self.exchange.log = Some(Access::unparsed(self.peer.remote));
        }
        if let Some(body) = self.phase.take_body() {
            body.fail(&e.to_string());
        }
        self.drop_pending();
        self.phase = Phase::Request { body: None, pending: None, queued: None };
        self.rbuf.clear();
        self.close_after = true;
        let prepared = Response::error(status).prepare(self.exchange.version, true, self.exchange.head_request);
        self.start_writing(prepared, None, h)
    }

    /// Queues a response (and parks its stream) and writes what the socket takes.
    fn start_writing(&mut self, p: Prepared, stream: Option<Box<StreamState>>, h: &mut impl Handler) -> Step {
        let body = self.phase.take_body();
        let stream = StreamSlot::new(stream);
        self.phase = Phase::Writing { body, stream };
        h.responded(p.status);
        self.exchange.status = p.status;
        self.exchange.body_bytes = p.body_len;
        self.exchange.head_bytes = p.head.len() as u64;
        self.exchange.sent = 0;
        self.close_after |= p.close;
        self.out.push(Piece::Owned(p.head));
        for piece in p.body {
            self.out.push(piece);
        }
        self.flush(h)
    }

    /// Writes queued output until the socket would block; asks for the next stream chunk
    /// below the high-water mark; finishes the response when all is out.
    fn flush(&mut self, h: &mut impl Handler) -> Step {
        let (flushed, sent) = self.out.write_to(&self.sock, FLUSH_SHARE);
        if sent > 0 {
            self.last_write = h.now();
            self.exchange.sent += sent as u64;
        }
        match flushed {
            Flushed::Drained | Flushed::Blocked => {}
            Flushed::ShareUsed => {
                // A fast reader of a large file: let the other connections have this turn
                // (edge-triggered readiness would not report it again while it stays writable).
                h.flush_later(self.id.token);
                return Step::Open;
            }
            Flushed::FileShrank => {
                tracing::warn!("static file shorter than when opened; closing the connection");
                self.out.clear();
                self.close_after = true;
            }
            Flushed::Failed => return self.close(h),
        }
        if self.out.memory() < WRITE_HIGH_WATER
            && let Phase::Writing { stream, .. } = &mut self.phase
            && let Some(s) = stream.take_for_pull()
        {
            h.submit(Job::Pull(self.id, s));
        }
        self.finish(h)
    }

    /// If the response is completely written: logs it, then closes or goes back to `Head`.
    fn finish(&mut self, h: &mut impl Handler) -> Step {
        // Out means out of the transport too: TLS records still in the session would be lost
        // by a close, and a linger's clocks must not run while they wait.
        let done = matches!(&self.phase, Phase::Writing { stream, .. } if stream.is_none())
            && self.out.is_empty()
            && !self.sock.pending();
        if !done {
            return Step::Open;
        }
        if let Some(a) = self.exchange.log.take() {
            access_log::write(&a, self.exchange.status, self.exchange.body_bytes);
        }
        self.requests += 1;
        h.served();
        // A body still arriving means we do not know where the next request starts.
        if self.close_after || self.phase.body().is_some() {
            // Input we never read may still be on its way (a body we refused, a pipelined
            // request): close by lingering unless the client has already sent EOF.
            return if self.eof { self.close(h) } else { self.linger(h) };
        }
        self.phase = Phase::head();
        self.exchange = Exchange::none();
        self.idle_since = h.now();
        // An idle keep-alive connection holds no read buffer: idle connections stay at a few
        // hundred bytes each.
        read_buf::release(&mut self.rbuf);
        h.pump_later(self.id.token);
        Step::Open
    }

    /// Starts a lingering close: shut down our side, then discard input until EOF.
    fn linger(&mut self, h: &mut impl Handler) -> Step {
        if let Some(body) = self.phase.take_body() {
            body.fail("connection closing");
        }
        self.rbuf = Vec::new();
        self.phase = Phase::Lingering { since: h.now() };
        self.last_read = h.now();
        if self.sock.shutdown_write().is_err() {
            return self.close(h);
        }
        self.discard_input(h)
    }

    /// Reads and drops whatever the client still sends; closes at EOF.
    fn discard_input(&mut self, h: &mut impl Handler) -> Step {
        loop {
            let scratch = h.scratch();
            scratch.clear();
            scratch.reserve(READ_CHUNK);
            match self.sock.read_into(scratch) {
                Ok(0) => break,
                Ok(_) => self.last_read = h.now(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Step::Open,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.close(h)
    }
}

#[cfg(test)]
mod tests {
    //! The state machine over a Unix socket pair, with a stand-in event loop: no listener, no
    //! worker threads. The test plays the client on one end and the loop on the other, and
    //! delivers the workers' completions by hand.

    use crate::exchange::body_pipe::BodyPipe;
    use crate::http::request::HeadLimits;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use clap::Parser;
    use crossbeam_channel::Receiver;

    use super::*;
    use crate::exchange::{Completion, Notifier};
    use crate::http::response::{Framing as ResponseFraming, ResponseHead};
    use crate::settings::Args;

    /// The event loop's side, recorded.
    struct Loop {
        config: Config,
        limits: HeadLimits,
        draining: bool,
        jobs: Vec<Job>,
        pump: Vec<usize>,
        flush: Vec<usize>,
        scratch: Vec<u8>,
        /// The two applications: `/app` (buffers bodies; one call at a time, one waiting) and
        /// `/stream` (streams them).
        buffered: Arc<App>,
        streamed: Arc<App>,
        notifier: Notifier,
        completions: Receiver<Completion>,
        _poll: mio::Poll,
        /// Set: calls are admitted to run on the loop's own thread, without a gate slot
        /// (the event loop's `admit` for a plugin that promised never to block), and kept here.
        #[allow(clippy::vec_box, reason = "calls arrive boxed and go on boxed, as in the event loop")]
        on_loop: Option<Vec<Box<CallJob>>>,
    }

    impl Loop {
        fn new() -> Loop {
            let poll = mio::Poll::new().unwrap();
            let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
            let (tx, rx) = crossbeam_channel::unbounded();
            Loop {
                config: Args::parse_from(["portico"]).config(),
                limits: HeadLimits::default(),
                draining: false,
                jobs: Vec::new(),
                pump: Vec::new(),
                flush: Vec::new(),
                scratch: Vec::new(),
                buffered: app(true, 1, 1),
                streamed: app(false, 8, 8),
                notifier: Notifier::new(vec![(tx, waker)]),
                completions: rx,
                _poll: poll,
                on_loop: None,
            }
        }

        fn calls(&mut self) -> Vec<CallJob> {
            let (calls, rest): (Vec<Job>, Vec<Job>) = self.jobs.drain(..).partition(|j| matches!(j, Job::Call(_)));
            self.jobs = rest;
            calls.into_iter().filter_map(|j| if let Job::Call(c) = j { Some(*c) } else { None }).collect()
        }
    }

    fn app(request_buffering: bool, max_concurrency: usize, queue: usize) -> Arc<App> {
        let limits = crate::admission::Limits { max_concurrency, queue, timeout: None, max_abandoned: 1 };
        Arc::new(App { request_buffering, gate: crate::admission::Gate::new("/app".into(), limits, 1) })
    }

    impl Handler for Loop {
        fn config(&self) -> &Config {
            &self.config
        }
        fn limits(&self) -> &HeadLimits {
            &self.limits
        }
        fn draining(&self) -> bool {
            self.draining
        }
        /// `/app…` goes to an application that buffers its bodies, `/stream…` to one that
        /// streams them; everything else is answered here with `hello`.
        fn decide(&mut self, id: ConnId, peer: &Peer, head: Box<RequestHead>) -> Decision {
            let buffering = match head.target() {
                t if t.starts_with(b"/app") => true,
                t if t.starts_with(b"/stream") => false,
                _ => {
                    let response = Response::page(200, "text/plain", b"hello".to_vec());
                    return Decision::Respond { response, close: false };
                }
            };
            let app = if buffering { &self.buffered } else { &self.streamed };
            let route = crate::routing::AppRoute {
                target: crate::routing::Target::Docroot { prefix: "/app".into(), fence: Arc::default() },
                middleware: Arc::new([]),
                script_name: String::new(),
                path_info: Vec::new(),
                app: Arc::clone(app),
                script: None,
            };
            Decision::Call(Box::new(CallJob::new(id, route, head, peer.clone())))
        }

        fn submit(&mut self, job: Job) {
            self.jobs.push(job);
        }
        fn admit(&mut self, mut job: Box<CallJob>) -> Admission {
            match &mut self.on_loop {
                Some(held) => {
                    job.gated = false;
                    held.push(job);
                    Admission::Sent
                }
                None => crate::io::handler::admit_gated(self, job),
            }
        }
        fn body_pipe(&self, id: ConnId, expect_continue: bool) -> Arc<BodyPipe> {
            Arc::new(BodyPipe::new(id, self.notifier.clone(), self.config.body_timeout, expect_continue))
        }
        fn pump_later(&mut self, token: usize) {
            self.pump.push(token);
        }
        fn flush_later(&mut self, token: usize) {
            self.flush.push(token);
        }
        fn scratch(&mut self) -> &mut Vec<u8> {
            &mut self.scratch
        }
    }

    /// A connection on one end of a socket pair; the client (blocking, 5 s timeouts) on the
    /// other.
    fn connect() -> (Conn<mio::net::UnixStream>, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let id = ConnId { event_loop: 0, token: 7, generation: 1 };
        let addr = "127.0.0.1:9".parse().unwrap();
        (Conn::new(id, mio::net::UnixStream::from_std(ours), Peer::new(addr, addr)), theirs)
    }

    /// A connection (slot `token`) whose client sent `GET /app`, after the loop's turn on it.
    fn app_request(h: &mut Loop, token: usize) -> (Conn<mio::net::UnixStream>, UnixStream) {
        let (mut conn, mut client) = connect();
        conn.id.token = token;
        client.write_all(b"GET /app HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(turn(&mut conn, h), Step::Open);
        (conn, client)
    }

    /// Runs the connection as its loop would after a readable event: read, then every turn it
    /// asked for, until it asks for none.
    fn turn(conn: &mut Conn<mio::net::UnixStream>, h: &mut Loop) -> Step {
        turn_after(conn, h, false)
    }

    /// As [`turn`], after an event that says whether the peer closed its side.
    fn turn_after(conn: &mut Conn<mio::net::UnixStream>, h: &mut Loop, closed: bool) -> Step {
        let mut step = conn.on_read_event(closed, h);
        while step == Step::Open && (!h.pump.is_empty() || !h.flush.is_empty()) {
            if !std::mem::take(&mut h.flush).is_empty() {
                step = conn.on_writable(h);
            }
            if step == Step::Open && !std::mem::take(&mut h.pump).is_empty() {
                step = conn.on_readable(h);
            }
        }
        step
    }

    fn counts(conn: &Conn<mio::net::UnixStream>) -> ConnCounts {
        let mut c = ConnCounts::default();
        conn.count(&mut c);
        c
    }

    /// Reads one response: the head, then `Content-Length` bytes of body.
    fn response(client: &mut UnixStream) -> (String, Vec<u8>) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(client.read(&mut byte).expect("reading a response head"), 1, "EOF inside a head: {head:?}");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |n| n.trim().parse::<usize>().unwrap());
        let mut body = vec![0u8; len];
        client.read_exact(&mut body).unwrap();
        (head, body)
    }

    fn at_eof(client: &mut UnixStream) -> bool {
        matches!(client.read(&mut [0u8; 64]), Ok(0))
    }

    fn reply(id: ConnId, code: u16, body: &[u8]) -> Reply {
        let response = Response::page(code, "text/plain", body.to_vec());
        Reply { conn: id, prepared: response.prepare(Version::Http11, false, false), stream: None }
    }

    #[test]
    fn keep_alive_answers_request_after_request_on_one_connection() {
        let (mut conn, mut client) = connect();
        let mut h = Loop::new();
        for _ in 0..3 {
            client.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            assert_eq!(turn(&mut conn, &mut h), Step::Open);
            let (head, body) = response(&mut client);
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && !head.contains("Connection"), "{head}");
            assert_eq!(body, b"hello");
            assert_eq!(counts(&conn).idle, 1, "back to waiting for a request");
        }
        assert_eq!(conn.requests, 3);
    }

    #[test]
    fn a_fin_sent_with_the_request_is_read_when_the_event_says_the_peer_closed() {
        // The request and the FIN are both in the socket before the loop reads: the read that
        // takes the request is short, and no later event comes for the FIN.
        for closed in [true, false] {
            let (mut conn, mut client) = connect();
            let mut h = Loop::new();
            client.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            client.shutdown(std::net::Shutdown::Write).unwrap();
            let step = turn_after(&mut conn, &mut h, closed);
            let (head, body) = response(&mut client);
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && body == b"hello", "{head}");
            if closed {
                // The event said so: read on to the FIN, and close.
                assert_eq!(step, Step::Close);
                drop(conn); // as the loop releases it
                assert!(at_eof(&mut client));
            } else {
                // A plain readable event: one read, the socket taken as drained (what the
                // event loop relies on: epoll reports the FIN with the data it came with).
                assert_eq!(step, Step::Open);
                assert_eq!(counts(&conn).idle, 1);
            }
        }
    }

    #[test]
    fn pipelined_requests_are_answered_in_order_one_at_a_time() {
        let (mut conn, mut client) = connect();
        let mut h = Loop::new();
        client.write_all(b"GET /app/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        // A plain readable event: the client has not closed.
        assert_eq!(conn.on_read_event(false, &mut h), Step::Open);
        // The first is with the application; the second waits unparsed behind it.
        let calls = h.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(counts(&conn).processing, 1);
        assert!(!conn.rbuf.is_empty(), "the second request stays buffered");
        assert_eq!(conn.on_reply(reply(conn.id(), 201, b"first"), &mut h), Step::Open);
        assert_eq!(h.pump, [7], "the connection asks to be read again for the next request");
        assert_eq!(turn(&mut conn, &mut h), Step::Open);
        let (head, body) = response(&mut client);
        assert!(head.starts_with("HTTP/1.1 201 Created\r\n"), "{head}");
        assert_eq!(body, b"first");
        let (head, body) = response(&mut client);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(body, b"hello");
    }

    #[test]
    fn a_buffered_body_gets_its_100_continue_at_once_and_the_application_gets_it_whole() {
        let (mut conn, mut client) = connect();
        let mut h = Loop::new();
        client
            .write_all(b"POST /app HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
            .unwrap();
        assert_eq!(turn(&mut conn, &mut h), Step::Open);
        let mut interim = [0u8; 25];
        client.read_exact(&mut interim).unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n", "the server reads a body it accepts: 100 now");
        assert!(h.calls().is_empty(), "the application waits for the whole body");
        client.write_all(b"5\r\nhello\r\n").unwrap();
        assert_eq!(turn(&mut conn, &mut h), Step::Open);
        assert!(h.calls().is_empty());
        client.write_all(b"6\r\n world\r\n0\r\n\r\n").unwrap();
        assert_eq!(turn(&mut conn, &mut h), Step::Open);
        let mut job = h.calls().pop().expect("sent once the body is whole");
        let RequestBody::Buffered(body) = &mut job.body else { panic!("a buffered body") };
        assert_eq!(body.len(), 11, "a chunked body has a length once buffered");
        let mut buf = [0u8; 32];
        let n = body.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello world");
        assert_eq!(conn.on_reply(reply(conn.id(), 200, b"ok"), &mut h), Step::Open);
        assert_eq!(response(&mut client).1, b"ok");
        assert_eq!(counts(&conn).idle, 1);
    }

    #[test]
    fn a_streamed_body_gets_its_100_continue_when_the_application_reads() {
        let (mut conn, mut client) = connect();
        let mut h = Loop::new();
        client
            .write_all(b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            .unwrap();
        assert_eq!(turn(&mut conn, &mut h), Step::Open);
        // Dispatched at once, before the body; no 100 yet, and no body timeout while it is owed.
        let job = h.calls().pop().expect("the request went to the pool");
        let RequestBody::Streamed(pipe) = &job.body else { panic!("a body pipe") };
        let pipe = Arc::clone(pipe);
        let later = Instant::now() + Duration::from_secs(3600);
        assert_eq!(conn.expired(later, &h.config), None, "the client waits for our 100");
        // The application reads: the pipe asks for the 100.
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            let n = pipe.read(&mut buf).unwrap();
            let end = pipe.read(&mut buf[n..]).unwrap();
            (buf[..n].to_vec(), end)
        });
        let c = h.completions.recv_timeout(Duration::from_secs(5)).expect("a Continue completion");
        assert!(matches!(c, Completion::Continue(id) if id == conn.id()));
        assert_eq!(conn.on_continue(&mut h), Step::Open);
        let mut interim = [0u8; 25];
        client.read_exact(&mut interim).unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        client.write_all(b"hello").unwrap();
        assert_eq!(turn(&mut conn, &mut h), Step::Open);
        assert_eq!(reader.join().unwrap(), (b"hello".to_vec(), 0));
        assert_eq!(conn.on_reply(reply(conn.id(), 200, b"got it"), &mut h), Step::Open);
        assert_eq!(response(&mut client).1, b"got it");
        assert_eq!(counts(&conn).idle, 1, "the body was read to its end: keep-alive");
    }

    #[test]
    fn a_small_body_is_read_before_the_application_runs() {
        let (mut conn, mut client) = connect();
        let mut h = Loop::new();
        client.write_all(b"POST /app HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123").unwrap();
        assert_eq!(turn(&mut conn, &mut h), Step::Open);
        assert!(h.calls().is_empty(), "held back until the body is here");
        assert_eq!(counts(&conn).reading, 1);
        client.write_all(b"456789").unwrap();
        assert_eq!(turn(&mut conn, &mut h), Step::Open);
        let job = h.calls().pop().expect("sent once the body arrived");
        let RequestBody::Buffered(body) = job.body else { panic!("a buffered body") };
        assert_eq!(body.len(), 10);
    }

    #[test]
    fn a_refused_body_gets_its_answer_then_a_lingering_close() {
        let (mut conn, mut client) = connect();
        let mut h = Loop::new();
        // Answered here without reading the body: the connection must close after it, and
        // read what the client still sends rather than reset the connection under the answer.
        client.write_all(b"POST /static HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc").unwrap();
        assert_eq!(turn(&mut conn, &mut h), Step::Open);
        let (head, body) = response(&mut client);
        assert!(head.contains("Connection: close\r\n"), "{head}");
        assert_eq!(body, b"hello");
        assert_eq!(counts(&conn).closing, 1, "lingering");
        assert!(at_eof(&mut client), "our side is shut down for writing");
        client.write_all(&[b'x'; 50]).unwrap();
        assert_eq!(turn(&mut conn, &mut h), Step::Open, "input is read and dropped");
        assert_eq!(conn.expired(Instant::now(), &h.config), None);
        assert_eq!(conn.expired(Instant::now() + LINGER_IDLE * 2, &h.config), Some(Expiry::Linger));
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(turn(&mut conn, &mut h), Step::Close, "closed at the client's EOF");
    }

    #[test]
    fn a_malformed_request_gets_400_and_the_connection_closes() {
        let (mut conn, mut client) = connect();
        let mut h = Loop::new();
        client.write_all(b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\nGET /next HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(turn(&mut conn, &mut h), Step::Open);
        let (head, body) = response(&mut client);
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n") && head.contains("Connection: close"), "{head}");
        assert_eq!(body, b"400 Bad Request\n");
        assert!(at_eof(&mut client), "nothing after the 400: the next request is never parsed");
    }

    #[test]
    fn each_timeout() {
        let cfg = Loop::new().config;
        let now = Instant::now();
        let past = |d: Duration| now + d + Duration::from_secs(1);

        // A new connection that sends nothing: closed silently after the head timeout.
        let (conn, _client) = connect();
        assert_eq!(conn.expired(now, &cfg), None);
        assert_eq!(conn.expired(past(cfg.head_timeout), &cfg), Some(Expiry::Idle));

        // A head that started but did not finish: 408.
        let (mut conn, mut client) = connect();
        let mut h = Loop::new();
        client.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
        assert_eq!(turn(&mut conn, &mut h), Step::Open);
        assert_eq!(conn.expired(past(cfg.head_timeout), &cfg), Some(Expiry::Head));
        assert_eq!(conn.expire(Expiry::Head, &mut h), Step::Open);
        assert!(response(&mut client).0.starts_with("HTTP/1.1 408 Request Timeout\r\n"));

        // Idle between keep-alive requests: the keep-alive timeout, not the head timeout.
        let (mut conn, mut client) = connect();
        client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(turn(&mut conn, &mut h), Step::Open);
        response(&mut client);
        assert_eq!(conn.expired(past(cfg.keep_alive_timeout), &cfg), Some(Expiry::Idle));
        assert_eq!(conn.expire(Expiry::Idle, &mut h), Step::Close);

        // A body that stops arriving before the application started: 408.
        let (mut conn, mut client) = connect();
        client.write_all(b"POST /app HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n012").unwrap();
        assert_eq!(turn(&mut conn, &mut h), Step::Open);
        assert_eq!(conn.expired(past(cfg.body_timeout), &cfg), Some(Expiry::Body));
        assert_eq!(conn.expire(Expiry::Body, &mut h), Step::Open);
        assert!(response(&mut client).0.starts_with("HTTP/1.1 408 "));

        // A body that keeps arriving, but slower than the minimum rate: 408 as well, once the
        // grace (the body timeout) plus a second per `body_min_rate` bytes has passed.
        let (mut conn, mut client) = connect();
        client.write_all(b"POST /app HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n").unwrap();
        client.write_all(&[b'z'; 2048]).unwrap();
        assert_eq!(turn(&mut conn, &mut h), Step::Open);
        conn.last_read = now + cfg.body_timeout * 4; // it never paused for a whole body timeout
        let rate_deadline = cfg.body_timeout + Duration::from_secs(2048 / cfg.body_min_rate);
        assert_eq!(conn.expired(now + rate_deadline - Duration::from_millis(1500), &cfg), None);
        assert_eq!(conn.expired(past(rate_deadline), &cfg), Some(Expiry::Body));

        // A client that stops reading its response: closed after the send timeout.
        let (mut conn, _client) = connect();
        let mut h = Loop::new();
        _client.try_clone().unwrap().write_all(b"GET /app HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(turn(&mut conn, &mut h), Step::Open);
        let big = Response::page(200, "application/octet-stream", vec![0u8; 8 << 20]);
        let r = Reply { conn: conn.id(), prepared: big.prepare(Version::Http11, false, false), stream: None };
        assert_eq!(conn.on_reply(r, &mut h), Step::Open);
        assert_eq!(counts(&conn).writing, 1);
        assert_eq!(conn.expired(past(cfg.send_timeout), &cfg), Some(Expiry::Send));
        assert_eq!(conn.expire(Expiry::Send, &mut h), Step::Close);
    }

    #[test]
    fn the_last_chunk_of_a_stream_ends_the_response() {
        let (mut conn, mut client) = connect();
        let mut h = Loop::new();
        client.write_all(b"GET /app HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(turn(&mut conn, &mut h), Step::Open);
        h.calls();
        // A worker's answer with a stream: the head is queued and the stream is being pulled.
        // (A stream needs a loaded plugin; the stream plugin's tests over sockets cover pulls.)
        let head = ResponseHead::new(200).framing(ResponseFraming::Chunked);
        let prepared = Response { head, body: Vec::new() }.prepare(Version::Http11, false, false);
        conn.phase = Phase::Writing { body: None, stream: StreamSlot::Pulling { woken: false } };
        conn.exchange.status = prepared.status;
        conn.out.push(Piece::Owned(prepared.head));
        assert_eq!(counts(&conn).writing, 1, "a stream being pulled: still writing");
        let last = Chunk {
            conn: conn.id(),
            data: b"1\r\na\r\n0\r\n\r\n".to_vec(),
            payload: 1,
            stream: None,
            close: false,
            waiting: false,
        };
        assert_eq!(conn.on_chunk(last, &mut h), Step::Open);
        let (head, _) = response(&mut client);
        assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
        let mut body = [0u8; 11];
        client.read_exact(&mut body).unwrap();
        assert_eq!(&body, b"1\r\na\r\n0\r\n\r\n");
        assert_eq!(counts(&conn).idle, 1, "the response is done: keep-alive");
    }

    #[test]
    fn calls_wait_for_their_applications_slot_and_a_full_queue_is_503() {
        let mut h = Loop::new();
        let (mut first, mut c1) = connect();
        let (mut second, mut c2) = connect();
        let (mut third, mut c3) = connect();
        second.id.token = 8;
        third.id.token = 9;
        for c in [&mut c1, &mut c2, &mut c3] {
            c.write_all(b"GET /app HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        }
        assert_eq!(turn(&mut first, &mut h), Step::Open);
        assert_eq!(h.calls().len(), 1, "the one slot");
        assert_eq!(turn(&mut second, &mut h), Step::Open);
        assert!(h.calls().is_empty(), "queued");
        assert_eq!(counts(&second).processing, 1);
        assert_eq!(turn(&mut third, &mut h), Step::Open);
        let (head, _) = response(&mut c3);
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n") && head.contains("Retry-After: 1\r\n"),
            "{head}"
        );
        assert_eq!(counts(&third).idle, 1, "a refused call without a body keeps its connection");
        // The first call ends: its slot goes to the second connection's call, which the
        // finishing worker runs.
        let next = h.buffered.gate.release().expect("the waiting call");
        let next: Box<CallJob> = next.downcast().expect("a call");
        assert_eq!(next.conn, second.id());
        // A queued call whose connection closes leaves the queue.
        let (mut fourth, mut c4) = connect();
        fourth.id.token = 10;
        c4.write_all(b"GET /app HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(turn(&mut fourth, &mut h), Step::Open);
        assert_eq!(h.buffered.gate.counts().waiting, 1);
        assert_eq!(fourth.close(&mut h), Step::Close);
        assert_eq!(h.buffered.gate.counts().waiting, 0);
    }

    #[test]
    fn a_call_handed_from_the_loop_to_a_worker_is_queued_as_any_and_a_refusal_keeps_the_connection() {
        let mut h = Loop::new();
        let _first = app_request(&mut h, 7);
        assert_eq!(h.calls().len(), 1, "the one slot, taken");
        // Two calls admitted to run on the loop's thread, then sent to workers after all
        // (their batch ran out of time).
        h.on_loop = Some(Vec::new());
        let (mut second, _c2) = app_request(&mut h, 8);
        let (mut third, mut c3) = app_request(&mut h, 9);
        let mut held = h.on_loop.take().unwrap();
        assert_eq!(held.len(), 2);
        let (for_third, for_second) = (held.pop().unwrap(), held.pop().unwrap());
        for job in [&for_second, &for_third] {
            assert!(!job.gated, "admitted without a slot");
        }
        assert_eq!(second.hand_to_worker(for_second, &mut h), Step::Open);
        assert_eq!(h.buffered.gate.counts().waiting, 1, "queued behind the first");
        assert_eq!(third.hand_to_worker(for_third, &mut h), Step::Open);
        let (head, _) = response(&mut c3);
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n") && !head.contains("Connection: close"),
            "{head}"
        );
        assert_eq!(counts(&third).idle, 1, "a refused call without a body keeps its connection");
        // The queued call leaves the queue with its client.
        assert_eq!(second.close(&mut h), Step::Close);
        assert_eq!(h.buffered.gate.counts().waiting, 0);
    }

    #[test]
    fn shutdown_closes_idle_connections_after_the_grace_and_lets_busy_ones_finish() {
        let mut h = Loop::new();
        h.draining = true;
        let grace = Duration::from_secs(1);
        let (mut idle, _c1) = connect();
        let start = Instant::now();
        assert_eq!(idle.close_if_idle(start, start, grace, &mut h), Step::Open, "an idle connection gets the grace");
        assert_eq!(idle.close_if_idle(start + grace, start, grace, &mut h), Step::Close);
        let (mut busy, mut client) = connect();
        client.write_all(b"GET /app HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(turn(&mut busy, &mut h), Step::Open);
        let later = start + 2 * grace;
        assert_eq!(
            busy.close_if_idle(later, start, grace, &mut h),
            Step::Open,
            "a connection with a request in flight stays"
        );
        // (The worker's head says `Connection: close` when it sees the shutdown flag.)
        assert_eq!(busy.on_reply(reply(busy.id(), 200, b"last"), &mut h), Step::Open);
        assert_eq!(response(&mut client).1, b"last");
        assert_eq!(counts(&busy).closing, 1, "a request that came during the drain closes after its response");
        assert!(at_eof(&mut client));
    }

    /// A response whose head went out before the drain said nothing about closing: its
    /// client sends the next request at once, which must get an answer (with `Connection:
    /// close`), not a closed connection.
    #[test]
    fn a_drain_during_a_response_already_headed_keeps_the_connection_for_the_next_request() {
        let mut h = Loop::new();
        let (mut conn, mut client) = app_request(&mut h, 7);
        // Larger than the socket pair's buffer: the response is still being written.
        let big = vec![b'x'; 4 << 20];
        assert_eq!(conn.on_reply(reply(conn.id(), 200, &big), &mut h), Step::Open);
        assert_eq!(counts(&conn).writing, 1);
        h.draining = true;
        let reader = std::thread::spawn(move || {
            let (head, body) = response(&mut client);
            (client, head, body.len())
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while counts(&conn).writing == 1 && std::time::Instant::now() < deadline {
            assert_eq!(conn.on_writable(&mut h), Step::Open);
            std::thread::sleep(Duration::from_millis(1));
        }
        let (mut client, head, len) = reader.join().unwrap();
        assert!(!head.to_ascii_lowercase().contains("connection: close"), "{head}");
        assert_eq!(len, big.len());
        assert_eq!(counts(&conn).idle, 1, "back to waiting for the next request, not closing");
        let now = Instant::now();
        assert_eq!(
            conn.close_if_idle(now, now - Duration::from_secs(5), Duration::from_secs(1), &mut h),
            Step::Open,
            "the grace counts from its last response"
        );
        client.write_all(b"GET /app HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(turn(&mut conn, &mut h), Step::Open);
        assert_eq!(conn.on_reply(reply(conn.id(), 200, b"next"), &mut h), Step::Open);
        assert_eq!(response(&mut client).1, b"next");
        assert_eq!(counts(&conn).closing, 1, "the request that came during the drain closes it");
    }
}
