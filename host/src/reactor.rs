//! The I/O thread: one mio readiness loop that owns every socket.
//!
//! It accepts connections, reads request heads and bodies, answers static files and errors
//! itself, hands plugin requests to the worker pool, and writes every response. Workers send
//! results back as [`Completion`]s through a channel and a [`mio::Waker`].
//!
//! Invariants:
//! - A worker never waits on a socket: a request reaches the pool only once its head (and its
//!   body up to [`crate::http::limits::BODY_BUFFER`]) has arrived.
//! - One request at a time per connection: a pipelined request is parsed only after the
//!   previous response has been written, so responses go out in order (RFC 9112 §9.3.2).
//! - After any framing error the connection is closed once the error response is written.
//! - A completion for a connection that has since closed (or whose token was reused: see
//!   [`ConnId::generation`]) is discarded; a stream in it is dropped on a worker.
//!
//! Connection states (see ARCHITECTURE.md for the worked scenario):
//! `Head` (reading a request head; idle keep-alive is `Head` with an empty buffer) →
//! `Request` (head parsed; body being read; application queued or running) → `Writing`
//! (response bytes queued; stream pulled as the socket drains) → `Head` again or closed.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::access_log::{self, Access};
use crate::body_pipe::BodyPipe;
use crate::config::Config;
use crate::http::chunked::{ChunkedDecoder, ChunkedError};
use crate::http::error::RequestError;
use crate::http::limits::{BODY_BUFFER, WRITE_HIGH_WATER};
use crate::http::request::{self, Framing, HeadLimits, HeadScan, Parsed, RequestHead};
use crate::http::response;
use crate::plugin::registry::Registry;
use crate::route::{self, Route};
use crate::static_files;
use crate::worker::{CallJob, ChunkOut, Job, OutBody, PluginBytes, ResponseOut, StreamState};

const WAKER: Token = Token(usize::MAX);
const LISTENER_BASE: usize = usize::MAX - 1024;
/// Bytes read per `read` call.
const READ_CHUNK: usize = 16 * 1024;
/// File bytes read per refill of the write queue.
const FILE_CHUNK: usize = 64 * 1024;
/// How often deadlines are checked.
const TICK: Duration = Duration::from_millis(250);

/// Identifies a connection across its slab slot's reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId {
    /// The slab slot (mio token).
    pub token: usize,
    /// Accept counter value when the connection was accepted.
    pub generation: u64,
}

/// A result from a worker (or the body pipe) for the I/O thread.
pub enum Completion {
    /// An application's response.
    Response(Box<ResponseOut>),
    /// The next piece of a streamed body.
    Chunk(Box<ChunkOut>),
    /// The application started reading a body sent with `Expect: 100-continue`.
    Continue(ConnId),
    /// The body pipe has room again: resume reading the socket.
    ResumeRead(ConnId),
}

/// Sends completions to the I/O thread and wakes it.
#[derive(Clone)]
pub struct Notifier {
    tx: Sender<Completion>,
    waker: Arc<Waker>,
}

impl Notifier {
    /// Sends `c` and wakes the loop.
    pub fn notify(&self, c: Completion) {
        if self.tx.send(c).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Request,
    Writing,
    /// The response is out and the connection is closing: our side is shut down for
    /// writing and input is read and discarded until the client closes, so unread input
    /// does not turn our close into a reset that destroys the response in flight
    /// (nginx's lingering close).
    Lingering,
}

/// Longest pause in the client's input while lingering before we close anyway.
const LINGER_IDLE: Duration = Duration::from_secs(2);
/// Longest lingering close in all.
const LINGER_MAX: Duration = Duration::from_secs(5);

enum BodyDecoder {
    Length(u64),
    Chunked(ChunkedDecoder),
}

struct BodyIn {
    decoder: BodyDecoder,
    pipe: Arc<BodyPipe>,
    received: u64,
}

enum Out {
    Owned(Vec<u8>, usize),
    Plugin(PluginBytes, usize),
}

impl Out {
    fn remaining(&self) -> &[u8] {
        match self {
            Out::Owned(v, off) => &v[*off..],
            Out::Plugin(p, off) => &p.as_slice()[*off..],
        }
    }
    fn advance(&mut self, n: usize) {
        match self {
            Out::Owned(_, off) | Out::Plugin(_, off) => *off += n,
        }
    }
}

/// What one [`Reactor::read_socket`] call achieved.
enum ReadOutcome {
    /// New bytes, or EOF (`Conn::eof` set).
    Progress,
    /// Nothing to read now; readiness will tell us.
    WouldBlock,
    /// The connection failed (reset): close it.
    Failed,
}

enum StreamSlot {
    None,
    Parked(Box<StreamState>),
    Pulling,
}

struct Conn {
    id: ConnId,
    sock: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    ips: Arc<(String, String)>,
    rbuf: Vec<u8>,
    /// How much of a partial head in `rbuf` has been scanned.
    scan: HeadScan,
    phase: Phase,
    body: Option<BodyIn>,
    pending: Option<Box<CallJob>>,
    expect_continue: bool,
    wq: VecDeque<Out>,
    wq_bytes: usize,
    stream: StreamSlot,
    file: Option<(File, u64)>,
    close_after: bool,
    eof: bool,
    accepted: Instant,
    head_first_byte: Option<Instant>,
    idle_since: Instant,
    last_read: Instant,
    last_write: Instant,
    requests: u64,
    linger_since: Option<Instant>,
    access: Option<Access>,
    status: u16,
    body_bytes: u64,
    http10: bool,
    /// The current request is HEAD: a response the server makes itself has no body.
    head_request: bool,
}

/// The shared, read-only state the loop needs.
pub struct Shared {
    /// Settings.
    pub config: Config,
    /// Canonical docroot.
    pub docroot: PathBuf,
    /// The plugins.
    pub registry: Arc<Registry>,
    /// Set by SIGTERM/SIGINT.
    pub shutting_down: Arc<AtomicBool>,
}

/// The readiness loop.
pub struct Reactor {
    poll: Poll,
    listeners: Vec<(TcpListener, SocketAddr)>,
    conns: Slab<Conn>,
    completions: Receiver<Completion>,
    jobs: Option<Sender<Job>>,
    notifier: Notifier,
    shared: Arc<Shared>,
    next_gen: u64,
    accept_paused: bool,
    limits: HeadLimits,
    draining: Option<Instant>,
    /// Connections to pump again on the next turn (a finished response with more input
    /// buffered, or a connection that used its share of a turn). Keeps `pump` from recursing
    /// through pipelined requests.
    ready: Vec<usize>,
}

impl Reactor {
    /// A loop over `listeners` (already bound), sending jobs to `jobs`.
    ///
    /// # Errors
    /// Creating the poller or registering a listener failed.
    pub fn new(
        poll: Poll,
        waker: Arc<Waker>,
        listeners: Vec<std::net::TcpListener>,
        jobs: Sender<Job>,
        shared: Arc<Shared>,
    ) -> io::Result<(Self, Notifier)> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let notifier = Notifier { tx, waker };
        let mut ls = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            l.set_nonblocking(true)?;
            let addr = l.local_addr()?;
            let mut l = TcpListener::from_std(l);
            poll.registry().register(&mut l, Token(LISTENER_BASE + i), Interest::READABLE)?;
            ls.push((l, addr));
        }
        let c = &shared.config;
        let limits = HeadLimits {
            request_line: c.max_request_line,
            head_bytes: c.max_head_bytes,
            fields: c.max_fields,
            body: c.max_body,
        };
        let reactor = Reactor {
            poll,
            listeners: ls,
            conns: Slab::with_capacity(1024),
            completions: rx,
            jobs: Some(jobs),
            notifier: notifier.clone(),
            shared,
            next_gen: 0,
            accept_paused: false,
            limits,
            draining: None,
            ready: Vec::new(),
        };
        Ok((reactor, notifier))
    }

    /// Runs until shutdown has drained every connection (returns `true`) or the graceful
    /// timeout passed (returns `false`: requests are still running on workers).
    ///
    /// # Errors
    /// `poll` itself failed.
    pub fn run(mut self) -> io::Result<bool> {
        let mut drained = true;
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        loop {
            let timeout = if self.ready.is_empty() {
                next_tick.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                return Err(e);
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    Token(t) if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE),
                    Token(t) => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.pump(t);
                        }
                        if ev.is_writable() && self.conns.contains(t) {
                            self.flush(t);
                        }
                    }
                }
            }
            self.drain_completions();
            for t in std::mem::take(&mut self.ready) {
                self.pump(t);
            }
            let now = Instant::now();
            if now >= next_tick {
                self.sweep(now);
                next_tick = now + TICK;
            }
            if self.shared.shutting_down.load(Ordering::Relaxed) && self.draining.is_none() {
                self.start_drain();
            }
            if let Some(deadline) = self.draining {
                if self.conns.is_empty() {
                    tracing::info!("all connections drained");
                    break;
                }
                if now >= deadline {
                    tracing::warn!(
                        open = self.conns.len(),
                        "graceful timeout passed; closing the remaining connections"
                    );
                    drained = false;
                    break;
                }
            }
        }
        // Dropping the job sender lets the workers finish their queue and exit.
        self.jobs = None;
        Ok(drained)
    }

    fn start_drain(&mut self) {
        let grace = self.shared.config.graceful_timeout;
        tracing::info!(
            in_flight = self.conns.len(),
            "shutting down: no longer accepting; draining for up to {} s",
            grace.as_secs()
        );
        self.draining = Some(Instant::now() + grace);
        for (mut l, _) in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let idle: Vec<usize> = self.conns.iter().filter(|(_, c)| c.phase == Phase::Head).map(|(t, _)| t).collect();
        for t in idle {
            self.close(t);
        }
        for (_, c) in self.conns.iter_mut() {
            c.close_after = true;
        }
    }

    fn accept(&mut self, i: usize) {
        if self.draining.is_some() {
            return;
        }
        loop {
            if self.conns.len() >= self.shared.config.max_connections {
                // Leave the rest in the kernel's backlog until a connection closes.
                self.accept_paused = true;
                return;
            }
            let Some((listener, _)) = self.listeners.get(i) else { return };
            match listener.accept() {
                Ok((mut sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    let local = sock.local_addr().unwrap_or(self.listeners[i].1);
                    let entry = self.conns.vacant_entry();
                    let token = entry.key();
                    if self
                        .poll
                        .registry()
                        .register(&mut sock, Token(token), Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        continue;
                    }
                    self.next_gen += 1;
                    let now = Instant::now();
                    entry.insert(Conn {
                        id: ConnId { token, generation: self.next_gen },
                        sock,
                        peer,
                        local,
                        ips: Arc::new((peer.ip().to_string(), local.ip().to_string())),
                        rbuf: Vec::new(),
                        scan: HeadScan::default(),
                        phase: Phase::Head,
                        body: None,
                        pending: None,
                        expect_continue: false,
                        wq: VecDeque::new(),
                        wq_bytes: 0,
                        stream: StreamSlot::None,
                        file: None,
                        close_after: false,
                        eof: false,
                        accepted: now,
                        head_first_byte: None,
                        idle_since: now,
                        last_read: now,
                        last_write: now,
                        requests: 0,
                        linger_since: None,
                        access: None,
                        status: 0,
                        body_bytes: 0,
                        http10: false,
                        head_request: false,
                    });
                    self.pump(token);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: back off until a connection closes.
                    tracing::warn!("accept failed: {e}");
                    self.accept_paused = true;
                    return;
                }
            }
        }
    }

    /// Reads into the connection's buffer until the socket would block (or a fair share has
    /// been read: the rest waits in the kernel, and the caller comes back).
    fn read_socket(conn: &mut Conn) -> ReadOutcome {
        let mut buf = [0u8; READ_CHUNK];
        let mut progress = false;
        loop {
            match conn.sock.read(&mut buf) {
                Ok(0) => {
                    conn.eof = true;
                    return ReadOutcome::Progress;
                }
                Ok(n) => {
                    conn.rbuf.extend_from_slice(&buf[..n]);
                    conn.last_read = Instant::now();
                    progress = true;
                    if conn.rbuf.len() > READ_CHUNK * 8 {
                        return ReadOutcome::Progress;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if progress { ReadOutcome::Progress } else { ReadOutcome::WouldBlock };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return ReadOutcome::Failed,
            }
        }
    }

    /// Makes all the progress a connection's input allows: parse heads, feed bodies,
    /// dispatch requests.
    fn pump(&mut self, t: usize) {
        for _ in 0..64 {
            let Some(conn) = self.conns.get_mut(t) else { return };
            match conn.phase {
                Phase::Lingering => return self.discard_input(t),
                Phase::Head => {
                    if !conn.rbuf.is_empty() {
                        if conn.head_first_byte.is_none() {
                            conn.head_first_byte = Some(Instant::now());
                        }
                        match request::parse_resume(&conn.rbuf, &mut conn.scan, &self.limits) {
                            Ok(Parsed::Complete(head, used)) => {
                                conn.rbuf.drain(..used);
                                conn.scan = HeadScan::default();
                                self.start_request(t, head);
                                continue;
                            }
                            Ok(Parsed::Partial) => {}
                            Err(e) => {
                                self.reject(t, &e);
                                return;
                            }
                        }
                    }
                    let conn = &mut self.conns[t];
                    if conn.eof {
                        // Truncated head (or a clean close between requests): nothing to answer.
                        self.close(t);
                        return;
                    }
                    match Self::read_socket(conn) {
                        ReadOutcome::Progress => {}
                        ReadOutcome::WouldBlock => return,
                        ReadOutcome::Failed => return self.close(t),
                    }
                }
                Phase::Request | Phase::Writing => {
                    if conn.body.is_none() {
                        // The next request (pipelined or not) is read once this response is out.
                        return;
                    }
                    if !conn.rbuf.is_empty() {
                        if let Err(e) = self.feed_body(t) {
                            self.body_failed(t, e);
                            return;
                        }
                        continue;
                    }
                    let conn = &mut self.conns[t];
                    let paused = conn.body.as_ref().is_some_and(|b| b.pipe.full_then_pause());
                    if paused {
                        return; // the worker asks to resume when it has read
                    }
                    if conn.eof {
                        let e = RequestError::BadRequest("connection closed inside the request body");
                        self.body_failed(t, e);
                        return;
                    }
                    match Self::read_socket(conn) {
                        ReadOutcome::Progress => {}
                        ReadOutcome::WouldBlock => return,
                        ReadOutcome::Failed => return self.close(t),
                    }
                }
            }
        }
        // Fairness: come back to this connection after serving others.
        self.ready.push(t);
    }

    /// Moves buffered body bytes into the pipe; dispatches when the rules say so.
    fn feed_body(&mut self, t: usize) -> Result<(), RequestError> {
        let max_body = self.shared.config.max_body;
        let conn = &mut self.conns[t];
        let Some(body) = conn.body.as_mut() else { return Ok(()) };
        let (data, used, done) = match &mut body.decoder {
            BodyDecoder::Length(remaining) => {
                let take = conn.rbuf.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                *remaining -= take as u64;
                (conn.rbuf[..take].to_vec(), take, *remaining == 0)
            }
            BodyDecoder::Chunked(dec) => {
                let mut out = Vec::new();
                let used = dec.decode(&conn.rbuf, &mut out).map_err(|e: ChunkedError| {
                    tracing::debug!("chunked body: {e}");
                    RequestError::BadRequest("malformed chunked body")
                })?;
                (out, used, dec.is_done())
            }
        };
        conn.rbuf.drain(..used);
        body.received += data.len() as u64;
        if body.received > max_body {
            return Err(RequestError::BodyTooLarge { limit: max_body });
        }
        body.pipe.push(data);
        let pipe = Arc::clone(&body.pipe);
        if done {
            pipe.finish();
            conn.body = None;
        }
        if conn.pending.is_some() && (done || pipe.buffered() >= BODY_BUFFER || conn.expect_continue) {
            self.dispatch(t);
        }
        Ok(())
    }

    fn body_failed(&mut self, t: usize, e: RequestError) {
        let conn = &mut self.conns[t];
        if let Some(body) = conn.body.take() {
            body.pipe.fail(&e.to_string());
        }
        if conn.pending.is_some() {
            // The application has not started: answer the error ourselves.
            conn.pending = None;
            self.reject(t, &e);
        } else {
            // The application runs or has answered: close once its response is out.
            conn.close_after = true;
            conn.rbuf.clear();
            self.maybe_finish(t);
        }
    }

    fn start_request(&mut self, t: usize, head: Box<RequestHead>) {
        let shared = Arc::clone(&self.shared);
        let conn = &mut self.conns[t];
        conn.phase = Phase::Request;
        conn.head_first_byte = None;
        conn.status = 0;
        conn.body_bytes = 0;
        conn.http10 = head.version == request::Version::Http10;
        conn.head_request = head.is_head();
        if shared.config.access_log {
            conn.access = Some(Access::new(&head, conn.peer));
        }
        if !head.keep_alive || self.draining.is_some() {
            conn.close_after = true;
        }
        let route = match route::route(&head) {
            Ok(r) => r,
            Err(e) => return self.reject(t, &e),
        };
        let (name, script_name, path_info) = match route {
            Route::Plugin { name, script_name, path_info } => (name, script_name, path_info),
            Route::Static { path } => return self.serve_static(t, &head, &path),
            Route::ServerOptions => {
                let conn = &mut self.conns[t];
                let close = conn.close_after || head.framing != Framing::None;
                let allow: &[u8] = b"GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE";
                let bytes = response::simple(head.version.as_str(), 200, &[("Allow", allow)], "", b"", close, false);
                return self.respond_local(t, 200, bytes, None, 0, head.framing != Framing::None);
            }
            Route::NotAllowed => {
                let body = response::error_body(405);
                let bytes =
                    response::simple(head.version.as_str(), 405, &[], "text/plain; charset=utf-8", &body, true, false);
                return self.respond_local(t, 405, bytes, None, body.len() as u64, true);
            }
        };
        let Some(plugin) = shared.registry.get(&name) else {
            let conn = &self.conns[t];
            let r = static_files::not_found(
                &shared.docroot,
                head.version.as_str(),
                head.is_head(),
                conn.close_after || head.framing != Framing::None,
            );
            let close = head.framing != Framing::None;
            return self.respond_local(t, r.status, r.bytes, None, r.body_len, close);
        };
        let conn = &mut self.conns[t];
        let pipe = match head.framing {
            Framing::None => None,
            framing => {
                let pipe = Arc::new(BodyPipe::new(
                    conn.id,
                    self.notifier.clone(),
                    shared.config.body_timeout,
                    head.expect_continue,
                ));
                let decoder = match framing {
                    Framing::Length(n) => BodyDecoder::Length(n),
                    _ => BodyDecoder::Chunked(ChunkedDecoder::new(shared.config.max_head_bytes)),
                };
                conn.body = Some(BodyIn { decoder, pipe: Arc::clone(&pipe), received: 0 });
                Some(pipe)
            }
        };
        conn.expect_continue = head.expect_continue;
        let has_body = pipe.is_some();
        conn.pending = Some(Box::new(CallJob {
            conn: conn.id,
            plugin,
            head,
            script_name,
            path_info,
            peer: conn.peer,
            local: conn.local,
            ips: Arc::clone(&conn.ips),
            pipe,
        }));
        if !has_body || conn.expect_continue {
            self.dispatch(t);
        }
        // Body bytes already buffered are fed by the caller's next pump round.
    }

    fn dispatch(&mut self, t: usize) {
        let conn = &mut self.conns[t];
        let Some(job) = conn.pending.take() else { return };
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::Call(job));
        }
    }

    fn serve_static(&mut self, t: usize, head: &RequestHead, path: &[u8]) {
        let close_after = self.conns[t].close_after;
        // A body sent to a static file is not read: close after answering.
        let has_body = head.framing != Framing::None;
        let method = head.method();
        let raw_path = route::raw_path(head);
        if method != "GET" && method != "HEAD" {
            let body = response::error_body(405);
            let allow: &[u8] = b"GET, HEAD";
            let bytes = response::simple(
                head.version.as_str(),
                405,
                &[("Allow", allow)],
                "text/plain; charset=utf-8",
                &body,
                true,
                false,
            );
            return self.respond_local(t, 405, bytes, None, body.len() as u64, true);
        }
        let r = static_files::serve(
            &self.shared.docroot,
            path,
            &raw_path,
            head.version.as_str(),
            head.is_head(),
            close_after || has_body,
        );
        self.respond_local(t, r.status, r.bytes, r.file, r.body_len, has_body);
    }

    /// Queues a response produced on this thread.
    fn respond_local(
        &mut self,
        t: usize,
        status: u16,
        bytes: Vec<u8>,
        file: Option<(File, u64)>,
        body_len: u64,
        close: bool,
    ) {
        let conn = &mut self.conns[t];
        conn.phase = Phase::Writing;
        conn.status = status;
        conn.body_bytes = body_len;
        conn.close_after |= close;
        conn.wq_bytes += bytes.len();
        conn.wq.push_back(Out::Owned(bytes, 0));
        conn.file = file;
        self.flush(t);
    }

    /// Answers a request error and closes the connection after it.
    fn reject(&mut self, t: usize, e: &RequestError) {
        let status = e.status();
        let conn = &mut self.conns[t];
        tracing::debug!(peer = %conn.peer, "request refused with {status}: {e}");
        if conn.access.is_none() && self.shared.config.access_log {
            conn.access = Some(Access::unparsed(conn.peer));
        }
        conn.rbuf.clear();
        conn.body = None;
        conn.pending = None;
        conn.close_after = true;
        let body = response::error_body(status);
        let version = if conn.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        let head_only = conn.head_request;
        let bytes = response::simple(version, status, &[], "text/plain; charset=utf-8", &body, true, head_only);
        let sent = if head_only { 0 } else { body.len() as u64 };
        self.respond_local(t, status, bytes, None, sent, true);
    }

    fn drain_completions(&mut self) {
        while let Ok(c) = self.completions.try_recv() {
            match c {
                Completion::Response(out) => self.on_response(*out),
                Completion::Chunk(out) => self.on_chunk(*out),
                Completion::Continue(id) => {
                    if let Some(conn) = self.live(id)
                        && conn.phase == Phase::Request
                        && conn.wq.is_empty()
                        && conn.body.is_some()
                    {
                        // The client starts sending now: the body timeout counts from here.
                        conn.last_read = Instant::now();
                        {
                            let msg = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
                            conn.wq_bytes += msg.len();
                            conn.wq.push_back(Out::Owned(msg, 0));
                            self.flush(id.token);
                        }
                    }
                }
                Completion::ResumeRead(id) => {
                    if let Some(conn) = self.live(id) {
                        conn.last_read = Instant::now();
                        self.pump(id.token);
                    }
                }
            }
        }
    }

    fn live(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id.token).filter(|c| c.id == id)
    }

    fn on_response(&mut self, out: ResponseOut) {
        let Some(conn) = self.live(out.conn) else {
            if let OutBody::Stream(s) = out.body {
                self.close_stream(s);
            }
            return;
        };
        conn.phase = Phase::Writing;
        conn.status = out.status;
        conn.body_bytes = out.body_len;
        conn.close_after |= out.close;
        conn.wq_bytes += out.bytes.len();
        conn.wq.push_back(Out::Owned(out.bytes, 0));
        match out.body {
            OutBody::None => {}
            OutBody::Plugin(p) => {
                conn.wq_bytes += p.as_slice().len();
                conn.wq.push_back(Out::Plugin(p, 0));
            }
            OutBody::Stream(s) => conn.stream = StreamSlot::Parked(s),
        }
        let t = out.conn.token;
        self.flush(t);
    }

    fn on_chunk(&mut self, out: ChunkOut) {
        let Some(conn) = self.live(out.conn) else {
            if let Some(s) = out.stream {
                self.close_stream(s);
            }
            return;
        };
        conn.body_bytes += out.payload;
        if !out.data.is_empty() {
            conn.wq_bytes += out.data.len();
            conn.wq.push_back(Out::Owned(out.data, 0));
        }
        conn.stream = match out.stream {
            Some(s) => StreamSlot::Parked(s),
            None => StreamSlot::None,
        };
        if out.abort {
            conn.close_after = true;
        }
        self.flush(out.conn.token);
    }

    fn close_stream(&self, s: Box<StreamState>) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::Close(s));
        }
    }

    /// Writes queued bytes until the socket would block; refills from a file; asks for the
    /// next stream chunk below the high-water mark; finishes the response when all is out.
    fn flush(&mut self, t: usize) {
        let Some(conn) = self.conns.get_mut(t) else { return };
        loop {
            if conn.wq.is_empty() {
                if let Some((file, remaining)) = conn.file.as_mut() {
                    let want = (*remaining).min(FILE_CHUNK as u64) as usize;
                    let mut buf = vec![0u8; want];
                    match file.read(&mut buf) {
                        Ok(n) if n > 0 => {
                            buf.truncate(n);
                            *remaining -= n as u64;
                            conn.wq_bytes += n;
                            conn.wq.push_back(Out::Owned(buf, 0));
                            if *remaining == 0 {
                                conn.file = None;
                            }
                        }
                        _ => {
                            // The file shrank: the length is already promised, so close.
                            tracing::warn!("static file shorter than when opened; closing the connection");
                            conn.file = None;
                            conn.close_after = true;
                            break;
                        }
                    }
                } else {
                    break;
                }
            }
            let Some(front) = conn.wq.front_mut() else { break };
            match conn.sock.write(front.remaining()) {
                Ok(0) => {
                    self.close(t);
                    return;
                }
                Ok(n) => {
                    conn.last_write = Instant::now();
                    conn.wq_bytes -= n;
                    front.advance(n);
                    if front.remaining().is_empty() {
                        conn.wq.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // The client went away mid-response: nothing else is disturbed.
                    self.close(t);
                    return;
                }
            }
        }
        if conn.wq_bytes < WRITE_HIGH_WATER
            && matches!(conn.stream, StreamSlot::Parked(_))
            && let StreamSlot::Parked(s) = std::mem::replace(&mut conn.stream, StreamSlot::Pulling)
            && let Some(jobs) = &self.jobs
        {
            let _ = jobs.send(Job::Pull(conn.id, s));
        }
        self.maybe_finish(t);
    }

    /// If the response is completely written: log it, then close or go back to `Head`.
    fn maybe_finish(&mut self, t: usize) {
        let Some(conn) = self.conns.get_mut(t) else { return };
        let done = conn.phase == Phase::Writing
            && conn.wq.is_empty()
            && conn.file.is_none()
            && matches!(conn.stream, StreamSlot::None);
        if !done {
            return;
        }
        if let Some(a) = conn.access.take() {
            access_log::write(&a, conn.status, conn.body_bytes);
        }
        conn.requests += 1;
        // A body still arriving means we do not know where the next request starts.
        if conn.close_after || conn.body.is_some() {
            // Input we never read may still be on its way (a body we refused, a pipelined
            // request): close by lingering unless the client has already sent EOF.
            if conn.eof {
                self.close(t);
            } else {
                self.linger(t);
            }
            return;
        }
        conn.phase = Phase::Head;
        conn.head_request = false;
        conn.idle_since = Instant::now();
        conn.expect_continue = false;
        self.ready.push(t);
    }

    /// Starts a lingering close: shut down our side, then discard input until EOF.
    fn linger(&mut self, t: usize) {
        let conn = &mut self.conns[t];
        if let Some(body) = conn.body.take() {
            body.pipe.fail("connection closing");
        }
        conn.rbuf = Vec::new();
        conn.phase = Phase::Lingering;
        conn.linger_since = Some(Instant::now());
        conn.last_read = Instant::now();
        if conn.sock.shutdown(std::net::Shutdown::Write).is_err() {
            self.close(t);
            return;
        }
        self.discard_input(t);
    }

    /// Reads and drops whatever the client still sends; closes at EOF.
    fn discard_input(&mut self, t: usize) {
        let Some(conn) = self.conns.get_mut(t) else { return };
        let mut buf = [0u8; READ_CHUNK];
        loop {
            match conn.sock.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => conn.last_read = Instant::now(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.close(t);
    }

    fn close(&mut self, t: usize) {
        if !self.conns.contains(t) {
            return;
        }
        let mut conn = self.conns.remove(t);
        let _ = self.poll.registry().deregister(&mut conn.sock);
        if let Some(body) = conn.body.take() {
            body.pipe.fail("client disconnected");
        }
        if let StreamSlot::Parked(s) = std::mem::replace(&mut conn.stream, StreamSlot::None) {
            self.close_stream(s);
        }
        if let (Some(a), true) = (conn.access.take(), conn.status != 0) {
            access_log::write(&a, conn.status, conn.body_bytes);
        }
        drop(conn);
        if self.accept_paused && self.draining.is_none() {
            self.accept_paused = false;
            for i in 0..self.listeners.len() {
                self.accept(i);
            }
        }
    }

    /// Enforces the timeouts of [`crate::http::limits`].
    fn sweep(&mut self, now: Instant) {
        let cfg = &self.shared.config;
        let mut expired: Vec<(usize, Option<RequestError>)> = Vec::new();
        for (t, c) in self.conns.iter() {
            match c.phase {
                Phase::Head => {
                    if let Some(first) = c.head_first_byte.filter(|_| !c.rbuf.is_empty()) {
                        if now.duration_since(first) > cfg.head_timeout {
                            expired.push((t, Some(RequestError::HeadTimeout)));
                        }
                    } else if c.requests == 0 {
                        if now.duration_since(c.accepted) > cfg.head_timeout {
                            expired.push((t, None));
                        }
                    } else if now.duration_since(c.idle_since) > cfg.keep_alive_timeout {
                        expired.push((t, None));
                    }
                }
                Phase::Lingering => {
                    let since = c.linger_since.unwrap_or(c.last_read);
                    if now.duration_since(c.last_read) > LINGER_IDLE || now.duration_since(since) > LINGER_MAX {
                        expired.push((t, None));
                    }
                }
                Phase::Request | Phase::Writing => {
                    // The body timeout runs only while the client is the one we wait for: not
                    // while we hold back reading (pipe full) nor before a 100 it waits for.
                    let body_stalled =
                        c.body.as_ref().is_some_and(|b| !b.pipe.is_paused() && !b.pipe.awaiting_continue())
                            && now.duration_since(c.last_read) > cfg.body_timeout;
                    if body_stalled {
                        expired.push((t, Some(RequestError::BodyTimeout)));
                    } else if !c.wq.is_empty() && now.duration_since(c.last_write) > cfg.send_timeout {
                        tracing::warn!(peer = %c.peer, "client stopped reading for {} s; closing", cfg.send_timeout.as_secs());
                        expired.push((t, None));
                    }
                }
            }
        }
        for (t, e) in expired {
            match e {
                Some(RequestError::BodyTimeout) => self.body_failed(t, RequestError::BodyTimeout),
                Some(e) => self.reject(t, &e),
                None => self.close(t),
            }
        }
    }
}
