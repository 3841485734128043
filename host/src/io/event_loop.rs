//! An event loop: a mio readiness loop on its own thread that owns its connections' sockets
//! (`--io-threads` loops run side by side, sharing the listening sockets; [`Balance`] places
//! each new connection on the least-loaded one).
//!
//! Per turn: wait for readiness (at most until the next 250 ms sweep); accept (in a worker
//! process, up to 64 connections per listener at a time, so sibling processes share bursts); hand each
//! ready connection to its [`Conn`] (read, or write); take the completions workers sent
//! (responses, stream chunks, 100-continue, resume reading, adopted connections); serve the
//! connections that asked to come back (fairness, pipelining); every 250 ms, sweep the
//! timeouts and store the connection counts for the admin pages. On shutdown: stop accepting,
//! close idle connections, let the others finish, for at most the graceful timeout. The calls
//! of plugins that promised never to block are left for the loop's thread to run after the
//! turn ([`super::inline`]), which is what drives the turns.
//!
//! A connection is taken out of its slot while it runs ([`EventLoop::with_conn`]), so it can
//! call back into the loop (the [`super::conn::Handler`]) — which can then see every other connection, as
//! the status page's counts need — and is put back or released in one place.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::balance::Balance;
use super::conn::{Conn, Step};
use crate::exchange::{Adopted, CallJob, Completion, ConnId, Job, Notifier, Peer, Reply};
use crate::http::request::HeadLimits;
use crate::listeners::{Accepting, Listener, Stream};
use crate::metrics::counters::{ConnCounts, Stats};
use crate::routing::Current;
use crate::settings::Config;
use crate::static_files::StaticFiles;

/// The waker's token.
pub const WAKER: Token = Token(usize::MAX);
/// Listener `i` has token `LISTENER_BASE + i`.
const LISTENER_BASE: usize = usize::MAX - 1024;
/// How often deadlines are checked.
const TICK: Duration = Duration::from_millis(250);
/// Connections a worker process's loop accepts from one listener before it serves its own
/// (the rest wait for the next turn, or a sibling process). One (nginx's `multi_accept off`)
/// left 4,000 connections arriving at once seconds in the backlog behind turns of busy
/// loops (p99 544 ms, 63 timeouts at `wrk -c4000`); 64 drains such a burst in a few turns.
const ACCEPT_BATCH: usize = 64;
/// How long a drain leaves idle keep-alive connections open before closing them: a request
/// may already be on its way on one (measured in the process-model research: closing at once
/// failed 56–150 requests per 3 generation swaps, with this grace 0).
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// The shared, read-only state every event loop needs.
pub struct Shared {
    /// Settings.
    pub config: Config,
    /// Canonical docroot.
    pub docroot: PathBuf,
    /// The mounts and plugins serving now (swapped on SIGHUP).
    pub routes: Arc<Current>,
    /// Set by SIGTERM/SIGINT.
    pub shutting_down: Arc<AtomicBool>,
    /// How static files are served.
    pub statics: crate::static_files::Options,
    /// Connections per event loop.
    pub balance: Balance,
    /// The server's counters (admin pages).
    pub stats: Arc<Stats>,
    /// In a worker process: how the status page asks the master for the whole tree.
    pub tree: Option<Arc<crate::control::TreeLink>>,
    /// TLS on TCP connections (`--tls-cert`): the configuration new connections get
    /// (swapped when SIGHUP reads the files again).
    pub tls: Option<Arc<arc_swap::ArcSwap<rustls::ServerConfig>>>,
}

/// One event loop.
pub struct EventLoop {
    /// Which loop this is (0-based).
    pub(super) index: usize,
    poll: Poll,
    listeners: Vec<Accepting>,
    /// Connections by token; a slot is `None` while its connection runs.
    conns: Slab<Option<Box<Conn<Stream>>>>,
    completions: Receiver<Completion>,
    jobs: Option<Sender<Job>>,
    pub(super) notifier: Notifier,
    pub(super) shared: Arc<Shared>,
    next_gen: u64,
    pub(super) limits: HeadLimits,
    pub(super) draining: Option<Instant>,
    /// When the drain started (connections between requests are closed once quiet for
    /// [`IDLE_GRACE`] since then and since their last response).
    drain_started: Option<Instant>,
    /// Static files, with this loop's open-file cache.
    pub(super) statics: StaticFiles,
    /// Connections to read again on the next turn (a finished response with more input
    /// buffered, or a connection that used its share of a turn). Keeps a connection from
    /// recursing through pipelined requests.
    pub(super) ready: Vec<usize>,
    /// Connections whose write queue still has bytes after their share of a turn: written
    /// again on the next turn (edge-triggered readiness would not report them again while the
    /// socket stays writable).
    pub(super) flush_again: Vec<usize>,
    /// Where a read into an empty connection buffer lands first (16 KiB, never cleared).
    pub(super) scratch: Vec<u8>,
    /// Calls this loop's thread runs itself after the turn (plugins that promised never to
    /// block; see [`super::inline`]).
    #[allow(clippy::vec_box, reason = "calls arrive and leave boxed (`Job::Call`, the gate): kept so, never copied")]
    pub(super) inline: Vec<Box<CallJob>>,
    events: Events,
    /// Listeners to accept from again on the next turn (this turn took its share).
    accept_again: Vec<usize>,
    /// Connections one listener's readiness may bring in at a time: all of them alone (the
    /// loops of a process share them out, [`Balance`]); [`ACCEPT_BATCH`] in a worker process,
    /// whose sibling processes wait on the same socket: a burst of new connections is shared
    /// between them, each taking more the less busy it is.
    accept_batch: usize,
    next_tick: Instant,
    /// The last sweep found no connection (and said so on the status page): until one comes
    /// (`adopt` clears it), a loop that is not draining waits for events without a tick.
    swept_idle: bool,
    /// The clock as of this turn's wait for events (or the last batch of calls on the
    /// loop's thread): what [`super::handler::Handler::now`] answers, one clock read a turn
    /// for every connection's timeout clocks.
    pub(super) now: Instant,
}

impl EventLoop {
    /// Event loop `index`: a loop over `listeners` (already bound; every loop accepts from
    /// the same sockets), receiving its completions from `completions` (whose sender is entry
    /// `index` of `notifier`), and sending jobs to `jobs`.
    ///
    /// # Errors
    /// Registering a listener failed.
    pub fn new(
        index: usize,
        poll: Poll,
        listeners: Vec<Listener>,
        completions: Receiver<Completion>,
        notifier: Notifier,
        jobs: Sender<Job>,
        shared: Arc<Shared>,
    ) -> io::Result<EventLoop> {
        let mut ls = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let mut l = l.into_accepting()?;
            poll.registry().register(&mut l, Token(LISTENER_BASE + i), Interest::READABLE)?;
            ls.push(l);
        }
        let c = &shared.config;
        let limits = HeadLimits {
            request_line: c.max_request_line,
            head_bytes: c.max_head_bytes,
            fields: c.max_fields,
            body: c.max_body,
        };
        Ok(EventLoop {
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
            drain_started: None,
            ready: Vec::new(),
            flush_again: Vec::new(),
            scratch: Vec::new(),
            inline: Vec::new(),
            events: Events::with_capacity(1024),
            accept_again: Vec::new(),
            accept_batch: if shared.tree.is_some() { ACCEPT_BATCH } else { usize::MAX },
            next_tick: Instant::now() + TICK,
            now: Instant::now(),
            swept_idle: false,
            statics: StaticFiles::new(shared.docroot.clone(), shared.statics.clone()),
            shared,
        })
    }

    /// One turn of the loop: wait for readiness (not at all when work is pending), handle
    /// what is ready, take the workers' completions, serve the connections that asked to come
    /// back, sweep the timeouts when due, drain on shutdown. Calls of plugins that promised
    /// never to block are left in [`EventLoop::inline`] for the caller to run. Returns
    /// `Some(drained)` once the loop has ended: every connection drained (`true`) or the
    /// graceful timeout passed (`false`: requests are still running on workers).
    /// The loop must not be turned again once it has ended (its driver drops it).
    ///
    /// # Errors
    /// `poll` itself failed.
    pub fn turn(&mut self) -> io::Result<Option<bool>> {
        let timeout = if self.ready.is_empty()
            && self.flush_again.is_empty()
            && self.inline.is_empty()
            && self.accept_again.is_empty()
        {
            if self.conns.is_empty() && self.swept_idle && self.draining.is_none() {
                // Nothing to sweep: wait for an event (a connection, a completion, a wake)
                // rather than tick 4 times a second. Not while draining: the last connection
                // can close outside a turn (a reply delivered after calls on the loop's
                // thread), and with no event to come, only the tick brings the loop back to
                // its drain check (a worker of an old generation that never exits).
                None
            } else {
                Some(self.next_tick.saturating_duration_since(Instant::now()))
            }
        } else {
            Some(Duration::ZERO)
        };
        // Listeners that had more for this loop than its share of the last turn.
        let mut accept_again = std::mem::take(&mut self.accept_again);
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        let polled = self.poll.poll(&mut events, timeout);
        if let Err(e) = polled
            && e.kind() != io::ErrorKind::Interrupted
        {
            self.events = events;
            return Err(e);
        }
        self.now = Instant::now();
        for ev in events.iter() {
            match ev.token() {
                WAKER => {}
                Token(t) if t >= LISTENER_BASE => {
                    // This accept is the listener's share for the turn; no retry on top of it.
                    accept_again.retain(|&i| i != t - LISTENER_BASE);
                    self.accept(t - LISTENER_BASE);
                }
                Token(t) => {
                    let closed = ev.is_read_closed() || ev.is_error();
                    if ev.is_readable() || closed {
                        self.with_conn(t, |c, h| c.on_read_event(closed, h));
                    }
                    if ev.is_writable() {
                        self.with_conn(t, |c, h| c.on_writable(h));
                    }
                }
            }
        }
        self.events = events;
        for i in accept_again {
            self.accept(i);
        }
        self.drain_completions();
        for t in std::mem::take(&mut self.flush_again) {
            self.with_conn(t, |c, h| c.on_writable(h));
        }
        for t in std::mem::take(&mut self.ready) {
            self.with_conn(t, |c, h| c.on_readable(h));
        }
        let now = self.now;
        if now >= self.next_tick {
            self.sweep(now);
            self.next_tick = now + TICK;
        }
        if self.shared.shutting_down.load(Ordering::Relaxed) && self.draining.is_none() {
            self.start_drain();
        }
        if let Some(deadline) = self.draining {
            if self.conns.is_empty() && self.inline.is_empty() {
                tracing::info!("all connections drained");
                return Ok(Some(self.finish(true)));
            }
            if now >= deadline {
                tracing::warn!(open = self.conns.len(), "graceful timeout passed; closing the remaining connections");
                // Closed as any other: a response cut short gets its access line.
                let tokens: Vec<usize> = self.conns.iter().map(|(t, _)| t).collect();
                for t in tokens {
                    self.with_conn(t, |c, h| c.close(h));
                }
                return Ok(Some(self.finish(false)));
            }
        }
        Ok(None)
    }

    /// Ends the loop: dropping the job sender lets the workers finish their queue and exit.
    fn finish(&mut self, drained: bool) -> bool {
        // Calls not run yet hold no slot (they skipped their gates) and their connections are
        // gone: dropped.
        self.inline.clear();
        self.jobs = None;
        drained
    }

    /// Sends a call meant for this loop's thread to a worker after all (its batch ran out of
    /// time, its plugin broke its promise), through its connection ([`Conn::hand_to_worker`]); a
    /// call whose connection is gone is dropped unrun.
    pub(super) fn call_on_worker(&mut self, job: Box<CallJob>) {
        // Only calls queued for this loop come here, and those were admitted without a slot.
        debug_assert!(!job.gated, "a call queued on the loop held a gate slot");
        if self.live(job.conn) {
            self.with_conn(job.conn.token, |c, h| c.hand_to_worker(job, h));
        }
    }

    /// Hands a reply to its connection (a call this loop's thread ran, or a worker's); a
    /// connection that is gone has its stream, if any, dropped on a worker.
    pub(super) fn deliver(&mut self, reply: Reply) {
        if self.live(reply.conn) {
            self.with_conn(reply.conn.token, |c, h| c.on_reply(reply, h));
        } else if let Some(s) = reply.stream {
            self.send_job(Job::Close(s));
        }
    }

    /// Runs `f` on connection `t` (if there is one), taken out of its slot so `f` can use the
    /// loop as its handler; puts it back, or releases it when `f` closed it.
    fn with_conn(&mut self, t: usize, f: impl FnOnce(&mut Conn<Stream>, &mut EventLoop) -> Step) {
        let Some(mut conn) = self.conns.get_mut(t).and_then(Option::take) else { return };
        match f(&mut conn, self) {
            Step::Open => self.conns[t] = Some(conn),
            Step::Close => self.release(t, conn),
        }
    }

    /// Forgets a closed connection; resumes accepting if the cap had paused it.
    fn release(&mut self, t: usize, mut conn: Box<Conn<Stream>>) {
        self.conns.remove(t);
        let _ = self.poll.registry().deregister(conn.socket_mut());
        drop(conn);
        self.shared.balance.remove(self.index);
        if self.draining.is_none() && self.shared.balance.take_paused() {
            for i in 0..self.listeners.len() {
                self.accept(i);
            }
        }
    }

    /// Whether `id` is a connection this loop holds now (not one that closed, nor a reused
    /// slot).
    fn live(&self, id: ConnId) -> bool {
        self.conns.get(id.token).and_then(Option::as_ref).is_some_and(|c| c.id() == id)
    }

    /// Sends a job to the pool (dropped once shutdown has stopped the pool's queue).
    pub(super) fn send_job(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
    }

    fn start_drain(&mut self) {
        let grace = self.shared.config.graceful_timeout;
        let c = self.count_conns();
        tracing::info!(
            open = c.open,
            in_flight = c.open - c.idle - c.closing,
            "shutting down: no longer accepting; draining for up to {} s",
            grace.as_secs()
        );
        self.draining = Some(Instant::now() + grace);
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.drain_started = Some(Instant::now());
    }

    fn accept(&mut self, i: usize) {
        if self.draining.is_some() {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let balance = &shared.balance;
        let mut taken = 0;
        loop {
            if taken == self.accept_batch {
                // (A listener is also accepted from `release`, when the cap resumes accepting.)
                if !self.accept_again.contains(&i) {
                    self.accept_again.push(i);
                }
                return;
            }
            if shared.shutting_down.load(Ordering::Relaxed) {
                return; // this loop starts draining at the end of the turn
            }
            if !balance.room(shared.config.max_connections) {
                // Leave the rest in the kernel's backlog until a connection closes.
                return;
            }
            let Some(listener) = self.listeners.get(i) else { return };
            match listener.accept() {
                Ok((sock, addrs)) => {
                    taken += 1;
                    let mut peer = match addrs {
                        Some((remote, local)) => Peer::new(remote, local),
                        None => Peer::unix(),
                    };
                    let sock = match (sock, &shared.tls) {
                        (Stream::Tcp(tcp), Some(tls)) => match crate::tls::TlsStream::new(tcp, tls.load_full()) {
                            Ok(t) => {
                                peer.https = true;
                                Stream::Tls(Box::new(t))
                            }
                            Err(e) => {
                                tracing::warn!("TLS session not started: {e}");
                                continue;
                            }
                        },
                        (sock, _) => sock,
                    };
                    let event_loop = balance.pick(self.index);
                    balance.add(event_loop);
                    if event_loop == self.index {
                        self.adopt(sock, peer);
                    } else {
                        let a = Adopted { event_loop, sock, peer };
                        self.notifier.notify(Completion::Adopt(Box::new(a)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: back off until a connection closes.
                    tracing::warn!("accept failed: {e}");
                    balance.pause();
                    return;
                }
            }
        }
    }

    /// Takes up an accepted connection (counted in this loop's load already).
    fn adopt(&mut self, mut sock: Stream, peer: Peer) {
        // Even while draining: another loop accepted it before this one began to drain, and
        // dropping it would reset a client that did nothing wrong. Its request is answered
        // with `Connection: close` (or it is closed idle after the grace).
        // The last sweep's "no connection" is out of date from here.
        self.swept_idle = false;
        let entry = self.conns.vacant_entry();
        let token = entry.key();
        if self.poll.registry().register(&mut sock, Token(token), Interest::READABLE | Interest::WRITABLE).is_err() {
            self.shared.balance.remove(self.index);
            return;
        }
        self.next_gen += 1;
        let id = ConnId { event_loop: self.index, token, generation: self.next_gen };
        entry.insert(Some(Box::new(Conn::new(id, sock, peer))));
        self.with_conn(token, |c, h| c.on_readable(h));
    }

    fn drain_completions(&mut self) {
        while let Ok(c) = self.completions.try_recv() {
            match c {
                Completion::Response(reply) => self.deliver(*reply),
                Completion::Chunk(chunk) => {
                    if self.live(chunk.conn) {
                        self.with_conn(chunk.conn.token, |c, h| c.on_chunk(*chunk, h));
                    } else if let Some(s) = chunk.stream {
                        self.send_job(Job::Close(s));
                    }
                }
                Completion::Continue(id) if self.live(id) => self.with_conn(id.token, |c, h| c.on_continue(h)),
                Completion::ResumeRead(id) if self.live(id) => self.with_conn(id.token, |c, h| c.on_resume(h)),
                Completion::StreamReady(id) if self.live(id) => self.with_conn(id.token, |c, h| c.on_stream_ready(h)),
                Completion::Continue(_) | Completion::ResumeRead(_) | Completion::StreamReady(_) => {}
                Completion::Adopt(a) => {
                    let Adopted { sock, peer, .. } = *a;
                    self.adopt(sock, peer);
                }
            }
        }
    }

    /// This loop's connections by state; a connection taken out of its slot (the one asking
    /// for the status page) counts as writing.
    pub(super) fn count_conns(&self) -> ConnCounts {
        let mut counts = ConnCounts::default();
        for (_, c) in self.conns.iter() {
            match c {
                Some(c) => c.count(&mut counts),
                None => {
                    counts.open += 1;
                    counts.writing += 1;
                }
            }
        }
        counts
    }

    /// Enforces the timeouts, and recounts the connections by state for the admin pages (one
    /// more walk over the connections every 250 ms).
    fn sweep(&mut self, now: Instant) {
        let expired: Vec<_> = self
            .conns
            .iter()
            .filter_map(|(t, c)| c.as_ref().and_then(|c| c.expired(now, &self.shared.config)).map(|e| (t, e)))
            .collect();
        for (t, e) in expired {
            self.with_conn(t, |c, h| c.expire(e, h));
        }
        if let Some(start) = self.drain_started.filter(|&s| now >= s + IDLE_GRACE) {
            let tokens: Vec<usize> = self.conns.iter().map(|(t, _)| t).collect();
            for t in tokens {
                self.with_conn(t, |c, h| c.close_if_idle(now, start, IDLE_GRACE, h));
            }
        }
        self.shared.stats.loop_conns(self.index).store(self.count_conns());
        self.swept_idle = self.conns.is_empty();
    }
}
