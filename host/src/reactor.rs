//! An I/O thread: a mio readiness loop that owns its connections' sockets (`--io-threads` loops
//! run side by side; [`Balance`] places each new connection on the least-loaded one).
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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
use crate::static_files::{Part, StaticFiles, StaticResponse};
use crate::worker::{CallJob, ChunkOut, Job, OutBody, PluginBytes, ResponseOut, StreamState};

const WAKER: Token = Token(usize::MAX);
const LISTENER_BASE: usize = usize::MAX - 1024;
/// Bytes read per `read` call.
const READ_CHUNK: usize = 16 * 1024;
/// Most file bytes one `sendfile` call sends (or one read + write, without sendfile). 1 MiB.
const FILE_CHUNK: usize = 1024 * 1024;
/// Most bytes one connection writes in one turn of the loop before the others get theirs.
/// 4 MiB.
const FLUSH_SHARE: usize = 4 * 1024 * 1024;
/// Most queued pieces gathered into one `writev`.
const WRITEV_MAX: usize = 8;
/// How often deadlines are checked.
const TICK: Duration = Duration::from_millis(250);

/// Identifies a connection across its slab slot's reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId {
    /// The I/O thread that owns the connection (index into [`Notifier`]'s loops).
    pub io: usize,
    /// The slab slot (mio token) in that thread's table.
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
    /// A connection another I/O thread accepted for this one (see [`Balance`]).
    Adopt(Box<Adopted>),
}

/// A freshly accepted connection handed to the least-loaded I/O thread.
pub struct Adopted {
    /// The I/O thread that takes it.
    io: usize,
    sock: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
}

impl Completion {
    /// The I/O thread this is for.
    pub fn io(&self) -> usize {
        match self {
            Completion::Response(out) => out.conn.io,
            Completion::Chunk(out) => out.conn.io,
            Completion::Continue(id) | Completion::ResumeRead(id) => id.io,
            Completion::Adopt(a) => a.io,
        }
    }
}

/// How many connections each I/O thread holds, shared by all of them. Every thread accepts
/// from the same listening sockets; the one that accepts places the connection on the
/// least-loaded thread (itself on a tie), so connections spread evenly however the kernel
/// wakes the threads. Also the global `--max-connections` count.
pub struct Balance {
    loads: Box<[AtomicUsize]>,
    /// Accepting stopped (the cap, or an accept error such as EMFILE): the next thread that
    /// closes a connection resumes it.
    paused: AtomicBool,
}

impl Balance {
    /// For `threads` I/O threads.
    pub fn new(threads: usize) -> Balance {
        Balance { loads: (0..threads.max(1)).map(|_| AtomicUsize::new(0)).collect(), paused: AtomicBool::new(false) }
    }

    fn total(&self) -> usize {
        self.loads.iter().map(|l| l.load(Ordering::SeqCst)).sum()
    }

    /// The least-loaded thread, `me` on a tie.
    fn pick(&self, me: usize) -> usize {
        let mut best = (self.loads[me].load(Ordering::SeqCst), me);
        for (i, l) in self.loads.iter().enumerate() {
            let n = l.load(Ordering::SeqCst);
            if n < best.0 {
                best = (n, i);
            }
        }
        best.1
    }
}

/// Sends completions to the I/O thread that owns their connection, and wakes it.
#[derive(Clone)]
pub struct Notifier {
    loops: Arc<[(Sender<Completion>, Arc<Waker>)]>,
}

impl Notifier {
    /// A notifier over the I/O threads' completion channels and wakers, in thread order.
    pub fn new(loops: Vec<(Sender<Completion>, Arc<Waker>)>) -> Notifier {
        Notifier { loops: loops.into() }
    }

    /// Sends `c` to its connection's I/O thread and wakes that loop.
    pub fn notify(&self, c: Completion) {
        let Some((tx, waker)) = self.loops.get(c.io()) else { return };
        if tx.send(c).is_ok() {
            let _ = waker.wake();
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

/// A piece of queued output. In-memory pieces go out with `writev`; a file piece with
/// `sendfile` (Linux) or through a bounded buffer (elsewhere).
enum Out {
    Owned(Vec<u8>, usize),
    Plugin(PluginBytes, usize),
    /// Shared bytes (a cached static file): the range still to send.
    Shared(Arc<[u8]>, std::ops::Range<usize>),
    /// Bytes of an open file still to send: from `offset`, `remaining` bytes.
    File {
        file: Arc<File>,
        offset: u64,
        remaining: u64,
    },
}

impl Out {
    /// The in-memory bytes still to send (empty for a file piece).
    fn remaining(&self) -> &[u8] {
        match self {
            Out::Owned(v, off) => &v[*off..],
            Out::Plugin(p, off) => &p.as_slice()[*off..],
            Out::Shared(b, r) => &b[r.clone()],
            Out::File { .. } => &[],
        }
    }
    fn advance(&mut self, n: usize) {
        match self {
            Out::Owned(_, off) | Out::Plugin(_, off) => *off += n,
            Out::Shared(_, r) => r.start += n,
            Out::File { offset, remaining, .. } => {
                *offset += n as u64;
                *remaining -= n as u64;
            }
        }
    }
    fn is_done(&self) -> bool {
        match self {
            Out::File { remaining, .. } => *remaining == 0,
            other => other.remaining().is_empty(),
        }
    }
}

impl From<Part> for Out {
    fn from(p: Part) -> Out {
        match p {
            Part::Shared(b, r) => Out::Shared(b, r),
            Part::Owned(v) => Out::Owned(v, 0),
            Part::File { file, offset, len } => Out::File { file, offset, remaining: len },
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
    /// How static files are served.
    pub statics: crate::static_files::Options,
    /// Connections per I/O thread.
    pub balance: Balance,
    /// Static files for mounts that put middleware in front of the docroot (served on
    /// workers, through the pipeline).
    pub static_app: Arc<std::sync::Mutex<StaticFiles>>,
    /// The mount table (swapped on SIGHUP).
    pub mounts: arc_swap::ArcSwap<crate::mount::Mounts>,
    /// The server's counters (status page, metrics).
    pub stats: Arc<crate::stats::Stats>,
}

/// The readiness loop.
pub struct Reactor {
    /// Which I/O thread this is (0-based).
    index: usize,
    poll: Poll,
    listeners: Vec<(TcpListener, SocketAddr)>,
    conns: Slab<Conn>,
    completions: Receiver<Completion>,
    jobs: Option<Sender<Job>>,
    notifier: Notifier,
    shared: Arc<Shared>,
    next_gen: u64,
    limits: HeadLimits,
    draining: Option<Instant>,
    /// Static files, with this thread's open-file cache.
    statics: StaticFiles,
    /// Connections to pump again on the next turn (a finished response with more input
    /// buffered, or a connection that used its share of a turn). Keeps `pump` from recursing
    /// through pipelined requests.
    ready: Vec<usize>,
    /// Connections whose write queue still has bytes after their share of a turn
    /// ([`FLUSH_SHARE`]): flushed again on the next turn (edge-triggered readiness would not
    /// report them again while the socket stays writable).
    flush_again: Vec<usize>,
}

impl Reactor {
    /// I/O thread `index`: a loop over `listeners` (already bound; every thread
    /// accepts from the same sockets), receiving its completions from `completions` (whose
    /// sender is entry `index` of `notifier`), and sending jobs to `jobs`.
    ///
    /// # Errors
    /// Registering a listener failed.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        poll: Poll,
        listeners: Vec<std::net::TcpListener>,
        completions: Receiver<Completion>,
        notifier: Notifier,
        jobs: Sender<Job>,
        shared: Arc<Shared>,
    ) -> io::Result<Self> {
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
            index,
            poll,
            listeners: ls,
            conns: Slab::with_capacity(1024),
            completions,
            jobs: Some(jobs),
            notifier,
            next_gen: 0,
            limits,
            draining: None,
            ready: Vec::new(),
            flush_again: Vec::new(),
            statics: StaticFiles::new(shared.docroot.clone(), shared.statics.clone()),
            shared,
        };
        Ok(reactor)
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
            let timeout = if self.ready.is_empty() && self.flush_again.is_empty() {
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
            for t in std::mem::take(&mut self.flush_again) {
                self.flush(t);
            }
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
        let shared = Arc::clone(&self.shared);
        let balance = &shared.balance;
        loop {
            if self.shared.shutting_down.load(Ordering::Relaxed) {
                return; // this loop starts draining at the end of the turn
            }
            if balance.total() >= self.shared.config.max_connections {
                // Leave the rest in the kernel's backlog until a connection closes. Checked
                // again after setting the flag: a loop that closed a connection in between
                // saw the flag unset and did not resume accepting.
                balance.paused.store(true, Ordering::SeqCst);
                if balance.total() >= self.shared.config.max_connections {
                    return;
                }
                balance.paused.store(false, Ordering::SeqCst);
            }
            let Some((listener, _)) = self.listeners.get(i) else { return };
            match listener.accept() {
                Ok((sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    let local = sock.local_addr().unwrap_or(self.listeners[i].1);
                    let io = balance.pick(self.index);
                    balance.loads[io].fetch_add(1, Ordering::SeqCst);
                    if io == self.index {
                        self.adopt(sock, peer, local);
                    } else {
                        self.notifier.notify(Completion::Adopt(Box::new(Adopted { io, sock, peer, local })));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: back off until a connection closes.
                    tracing::warn!("accept failed: {e}");
                    balance.paused.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }

    /// Takes up an accepted connection (counted in this thread's load already).
    fn adopt(&mut self, mut sock: TcpStream, peer: SocketAddr, local: SocketAddr) {
        if self.draining.is_some() {
            self.shared.balance.loads[self.index].fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let entry = self.conns.vacant_entry();
        let token = entry.key();
        if self.poll.registry().register(&mut sock, Token(token), Interest::READABLE | Interest::WRITABLE).is_err() {
            self.shared.balance.loads[self.index].fetch_sub(1, Ordering::SeqCst);
            return;
        }
        self.next_gen += 1;
        let now = Instant::now();
        entry.insert(Conn {
            id: ConnId { io: self.index, token, generation: self.next_gen },
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
        // The server's own pages, for the clients allowed to see them (the others are routed
        // as if the pages did not exist).
        let status = shared
            .config
            .status
            .as_ref()
            .filter(|_| shared.config.status_public || crate::status::is_loopback(conn.peer.ip()));
        let route = match route::route(&head, &self.shared.mounts.load(), status) {
            Ok(r) => r,
            Err(e) => return self.reject(t, &e),
        };
        let (name, script_name, path_info, middleware) = match route {
            Route::Plugin { name, script_name, path_info, middleware } => (name, script_name, path_info, middleware),
            Route::Static { path } => return self.serve_static(t, &head, &path),
            Route::Status(page) => return self.serve_status(t, &head, page),
            Route::ServerOptions => {
                let conn = &mut self.conns[t];
                let close = conn.close_after || head.framing != Framing::None;
                let allow: &[u8] = b"GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE";
                let bytes = response::simple(head.version.as_str(), 200, &[("Allow", allow)], "", b"", close, false);
                return self.respond_local(t, 200, bytes, 0, head.framing != Framing::None);
            }
            Route::NotAllowed => {
                let body = response::error_body(405);
                let bytes =
                    response::simple(head.version.as_str(), 405, &[], "text/plain; charset=utf-8", &body, true, false);
                return self.respond_local(t, 405, bytes, body.len() as u64, true);
            }
        };
        let plugins = shared.registry.snapshot();
        let static_mount = name == crate::mount::STATIC_APP;
        let app = if static_mount { middleware.first().and_then(|m| plugins.get(m)) } else { plugins.get(&name) };
        let Some(plugin) = app.cloned() else {
            if static_mount {
                // The filter in front of these files is not loaded.
                return self.fail_closed(t, &head, &script_name, middleware.first().map_or("", String::as_str));
            }
            let close = self.conns[t].close_after || head.framing != Framing::None;
            let r = self.statics.not_found(head.version.as_str(), head.is_head(), close);
            return self.respond_static(t, r, head.framing != Framing::None);
        };
        // Every middleware of the pipeline, from the same snapshot as the application. One
        // missing fails closed (500): the filter in front of an application is never skipped.
        let mut pipeline = Vec::with_capacity(middleware.len());
        for m in middleware.iter() {
            match plugins.get(m).filter(|p| p.is_middleware()) {
                Some(p) => pipeline.push(Arc::clone(p)),
                None => return self.fail_closed(t, &head, &script_name, m),
            }
        }
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
            middleware: pipeline,
            static_app: static_mount.then(|| Arc::clone(&shared.static_app)),
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
        // A body sent to a static file is not read: close after answering.
        let has_body = head.framing != Framing::None;
        let close = self.conns[t].close_after || has_body;
        let r = self.statics.serve(head, path, close);
        self.respond_static(t, r, has_body);
    }

    /// Answers one of the server's own pages ([`crate::status`]) here, on the I/O thread.
    fn serve_status(&mut self, t: usize, head: &RequestHead, page: crate::status::Page) {
        // As for static files, a body sent along is not read: close after answering.
        let has_body = head.framing != Framing::None;
        let close = self.conns[t].close_after || has_body;
        let Some(paths) = &self.shared.config.status else { return };
        // This loop's connection counts fresh (the asking connection as writing), so a person
        // sees their own connection; the other loops' are from their last sweep.
        self.conns[t].phase = Phase::Writing;
        self.shared.stats.loop_conns(self.index).store(self.count_conns());
        let plugins = self.shared.registry.snapshot();
        let a = crate::status::respond(page, head, paths, &self.shared.stats, &plugins, close);
        self.respond_local(t, a.status, a.bytes, a.body_len, has_body);
    }

    /// Queues a static response: its head, then its body parts.
    fn respond_static(&mut self, t: usize, r: StaticResponse, close: bool) {
        let conn = &mut self.conns[t];
        for part in r.body {
            let out = Out::from(part);
            if out.is_done() {
                continue;
            }
            conn.wq_bytes += out.remaining().len();
            conn.wq.push_back(out);
        }
        // The head goes in front of the body parts.
        conn.wq_bytes += r.head.len();
        conn.wq.push_front(Out::Owned(r.head, 0));
        conn.phase = Phase::Writing;
        conn.status = r.status;
        conn.body_bytes = r.body_len;
        conn.close_after |= close;
        self.flush(t);
    }

    /// Answers 500 for a mount whose middleware `missing` is not loaded: the filter in front of
    /// an application (or of static files) is never skipped.
    fn fail_closed(&mut self, t: usize, head: &RequestHead, mount: &str, missing: &str) {
        tracing::error!(plugin = %missing, "mount {mount:?}: middleware {missing:?} is not loaded; answering 500");
        let has_body = head.framing != Framing::None;
        let close = self.conns[t].close_after || has_body;
        let body = response::error_body(500);
        let bytes = response::simple(
            head.version.as_str(),
            500,
            &[],
            "text/plain; charset=utf-8",
            &body,
            close,
            head.is_head(),
        );
        let sent = if head.is_head() { 0 } else { body.len() as u64 };
        self.respond_local(t, 500, bytes, sent, has_body);
    }

    /// Queues a response produced on this thread.
    fn respond_local(&mut self, t: usize, status: u16, bytes: Vec<u8>, body_len: u64, close: bool) {
        let conn = &mut self.conns[t];
        conn.phase = Phase::Writing;
        conn.status = status;
        conn.body_bytes = body_len;
        conn.close_after |= close;
        conn.wq_bytes += bytes.len();
        conn.wq.push_back(Out::Owned(bytes, 0));
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
        self.respond_local(t, status, bytes, sent, true);
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
                Completion::Adopt(a) => {
                    let Adopted { sock, peer, local, .. } = *a;
                    self.adopt(sock, peer, local);
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

    /// Writes queued output until the socket would block (in-memory pieces gathered into one
    /// `writev`, file pieces with `sendfile`); asks for the next stream chunk below the
    /// high-water mark; finishes the response when all is out.
    fn flush(&mut self, t: usize) {
        let Some(conn) = self.conns.get_mut(t) else { return };
        let mut sent = 0;
        loop {
            while conn.wq.front().is_some_and(Out::is_done) {
                conn.wq.pop_front();
            }
            let Some(front) = conn.wq.front_mut() else { break };
            if sent >= FLUSH_SHARE {
                // A fast reader of a large file: let the other connections have this turn.
                self.flush_again.push(t);
                return;
            }
            let result = if let Out::File { file, offset, remaining } = front {
                send_file(&conn.sock, file, *offset, *remaining)
            } else {
                let mut slices = [io::IoSlice::new(&[]); WRITEV_MAX];
                let mut n = 0;
                let mut file_next = false;
                for out in conn.wq.iter().take(WRITEV_MAX) {
                    if matches!(out, Out::File { .. }) {
                        file_next = true;
                        break;
                    }
                    slices[n] = io::IoSlice::new(out.remaining());
                    n += 1;
                }
                write_gathered(&conn.sock, &slices[..n], file_next)
            };
            match result {
                Ok(0) => {
                    if matches!(conn.wq.front(), Some(Out::File { .. })) {
                        // The file shrank after its length was promised: close.
                        tracing::warn!("static file shorter than when opened; closing the connection");
                        conn.wq.clear();
                        conn.wq_bytes = 0;
                        conn.close_after = true;
                        break;
                    }
                    self.close(t);
                    return;
                }
                Ok(mut n) => {
                    conn.last_write = Instant::now();
                    sent += n;
                    while n > 0 {
                        let Some(front) = conn.wq.front_mut() else { break };
                        let take = match &*front {
                            Out::File { remaining, .. } => n.min(*remaining as usize),
                            other => n.min(other.remaining().len()),
                        };
                        if !matches!(front, Out::File { .. }) {
                            conn.wq_bytes -= take;
                        }
                        front.advance(take);
                        n -= take;
                        if front.is_done() {
                            conn.wq.pop_front();
                        }
                    }
                    while conn.wq.front().is_some_and(Out::is_done) {
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
        let done = conn.phase == Phase::Writing && conn.wq.is_empty() && matches!(conn.stream, StreamSlot::None);
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
        self.shared.balance.loads[self.index].fetch_sub(1, Ordering::SeqCst);
        if self.draining.is_none() && self.shared.balance.paused.swap(false, Ordering::SeqCst) {
            for i in 0..self.listeners.len() {
                self.accept(i);
            }
        }
    }

    /// This loop's connections by state.
    fn count_conns(&self) -> crate::stats::ConnCounts {
        let mut counts = crate::stats::ConnCounts { open: self.conns.len(), ..Default::default() };
        for (_, c) in self.conns.iter() {
            match c.phase {
                Phase::Head if c.rbuf.is_empty() => counts.idle += 1,
                Phase::Head => counts.reading += 1,
                Phase::Request if c.body.is_some() => counts.reading += 1,
                Phase::Request => counts.waiting += 1,
                Phase::Writing => counts.writing += 1,
                Phase::Lingering => counts.closing += 1,
            }
        }
        counts
    }

    /// Enforces the timeouts of [`crate::http::limits`], and recounts the connections by
    /// state for [`crate::stats`] (one more walk over the connections every 250 ms).
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
        self.shared.stats.loop_conns(self.index).store(self.count_conns());
    }
}

/// Writes `slices` with one `writev`. When file bytes follow (`more`), Linux is told so with
/// `MSG_MORE`, so a response head and the start of its file leave in the same segments instead
/// of a small packet of head alone (what nginx gets from `tcp_nopush`).
///
/// # Errors
/// As `sendmsg(2)` / `writev(2)`; `WouldBlock` when the socket buffer is full.
fn write_gathered(sock: &TcpStream, slices: &[io::IoSlice<'_>], more: bool) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    if more {
        use rustix::net::{SendAncillaryBuffer, SendFlags, sendmsg};
        let flags = SendFlags::MORE | SendFlags::NOSIGNAL;
        return sendmsg(sock, slices, &mut SendAncillaryBuffer::default(), flags).map_err(io::Error::from);
    }
    let _ = more;
    (&*sock).write_vectored(slices)
}

/// Sends up to `remaining` bytes of `file` from byte `offset` to the socket with one
/// `sendfile(2)`: the bytes go from the page cache to the socket without passing through this
/// process, so a large file costs no memory here.
///
/// # Errors
/// As `sendfile(2)`; `WouldBlock` when the socket buffer is full. `Ok(0)` means the file
/// ended before `offset + remaining` (it shrank).
#[cfg(target_os = "linux")]
fn send_file(sock: &TcpStream, file: &File, offset: u64, remaining: u64) -> io::Result<usize> {
    let mut off = offset;
    let count = remaining.min(FILE_CHUNK as u64) as usize;
    rustix::fs::sendfile(sock, file, Some(&mut off), count).map_err(io::Error::from)
}

/// Without `sendfile`: one positioned read into a bounded buffer and one write.
///
/// # Errors
/// As `pread(2)` and `write(2)`.
#[cfg(not(target_os = "linux"))]
fn send_file(sock: &TcpStream, file: &File, offset: u64, remaining: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; remaining.min(FILE_CHUNK as u64) as usize];
    let n = file.read_at(&mut buf, offset)?;
    if n == 0 {
        return Ok(0);
    }
    (&*sock).write(&buf[..n])
}
