//! The messages between the event loops and the workers, in a module below both, so neither
//! knows the other: a loop sends [`Job`]s to the pool's queue; a worker (or a request body's
//! [`body_pipe::BodyPipe`]) sends [`Completion`]s back through the [`Notifier`], which puts each
//! on its connection's loop and wakes it.
//!
//! ```text
//!  event loop ── Job::Call(CallJob) ─────────────► worker: runs the application
//!             ◄─ Completion::Response(Reply) ────  (head encoded, body or a StreamState)
//!             ── Job::Pull(conn, StreamState) ───► worker: next chunk of a streamed body
//!             ◄─ Completion::Chunk(Chunk) ───────  (or "waiting": the stream answered Pending)
//!             ◄─ Completion::StreamReady ────────  a plugin's thread woke a waiting stream
//!             ── Job::Close(StreamState) ────────► worker: drops a stream (PEP 3333 close())
//!             ◄─ Completion::Continue / ResumeRead ─ BodyPipe (the application reads its body)
//!  event loop ── Completion::Adopt ──────────────► another event loop (a connection handed over)
//! ```
//!
//! Invariants:
//! - A [`ConnId`] names one connection for its whole life: a completion for a connection that
//!   has since closed, or whose slot was reused (another [`ConnId::generation`]), is discarded
//!   by its loop, and any stream in it is handed back to a worker to be dropped.
//! - A [`StreamState`] holds the plugin version its stream came from, so the code a stream
//!   runs stays loaded for as long as it can be pulled.
//! - A stream waiting for its plugin (a push stream that answered `Pending`) is held by its
//!   connection, never by a worker; [`stream_wake`] turns the plugin's wake into exactly one
//!   `StreamReady`.

pub(crate) mod body_pipe;
pub(crate) mod spool;
pub(crate) mod stream_wake;

use std::net::SocketAddr;
use std::sync::Arc;

use abi_stable::std_types::RBox;
use crossbeam_channel::Sender;
use mio::Waker;
use portico_api::abi::BodyStream_TO;
use stream_wake::StreamWake;

use crate::http::encode::Encoder;
use crate::http::outgoing::Prepared;
use crate::http::request::RequestHead;
use crate::plugin::loader::Plugin;
use crate::routing::{App, AppRoute};
use body_pipe::BodyPipe;
use spool::Buffered;

pub(crate) use crate::ids::ConnId;

/// The addresses of a connection, as an application's environ needs them.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address (`REMOTE_ADDR`, `REMOTE_PORT`).
    pub remote: SocketAddr,
    /// The local address it connected to (`SERVER_PORT`; `SERVER_NAME` without `Host`).
    pub local: SocketAddr,
    /// `remote`'s and `local`'s IP as text, formatted once per connection (both empty on a
    /// Unix socket).
    pub ips: Arc<(String, String)>,
    /// The connection came on a Unix socket: it has no addresses (`REMOTE_ADDR` is empty, the
    /// ports are 0), and counts as local for the admin pages.
    pub unix: bool,
    /// The client used `https` (`wsgi.url_scheme`): as a trusted proxy said.
    pub https: bool,
    /// The addresses are what trusted proxies said ([`Peer::forwarded`]): such a request is
    /// never local for the admin pages, whatever address a proxy names.
    pub forwarded: bool,
}

impl Peer {
    /// The addresses of a new TCP connection.
    pub fn new(remote: SocketAddr, local: SocketAddr) -> Peer {
        Peer {
            remote,
            local,
            ips: Arc::new((remote.ip().to_string(), local.ip().to_string())),
            unix: false,
            https: false,
            forwarded: false,
        }
    }

    /// The peer as trusted proxies describe the client (`--forwarded-allow-ips`): their
    /// client's address (port 0: the proxies do not say) and scheme; `None` when this peer
    /// is not trusted or they said nothing.
    pub fn forwarded(
        &self,
        head: &crate::http::request::RequestHead,
        trusted: &crate::http::forwarded::TrustedProxies,
    ) -> Option<Peer> {
        if trusted.is_empty() {
            return None;
        }
        let client = trusted.client(head, (!self.unix).then(|| self.remote.ip()))?;
        let (remote, ips, unix) = match client.ip {
            Some(ip) if !self.unix && ip == self.remote.ip() => (self.remote, Arc::clone(&self.ips), false),
            Some(ip) => (SocketAddr::new(ip, 0), Arc::new((ip.to_string(), self.ips.1.clone())), false),
            None => (self.remote, Arc::clone(&self.ips), self.unix),
        };
        Some(Peer { remote, local: self.local, ips, unix, https: client.https.unwrap_or(self.https), forwarded: true })
    }

    /// A connection on a Unix socket.
    pub fn unix() -> Peer {
        let none = SocketAddr::from(([0, 0, 0, 0], 0));
        Peer {
            remote: none,
            local: none,
            ips: Arc::new((String::new(), String::new())),
            unix: true,
            https: false,
            forwarded: false,
        }
    }
}

/// A request for an application, ready to run.
pub(crate) struct CallJob {
    /// The connection it came on.
    pub conn: ConnId,
    /// What answers, with its pipeline and `SCRIPT_NAME` / `PATH_INFO` (plugin versions
    /// pinned for the request).
    pub route: AppRoute,
    /// The parsed head.
    pub head: Box<RequestHead>,
    /// The connection's addresses.
    pub peer: Peer,
    /// The request body.
    pub body: RequestBody,
    /// It holds a slot of its application's gate, to hand on when it ends (`false`: a call
    /// run on its event loop, outside the gate's limits, which are about worker threads).
    pub gated: bool,
}

impl CallJob {
    /// A call without a request body (one arriving is attached later), holding a slot of its
    /// application's gate once admitted.
    pub fn new(conn: ConnId, route: AppRoute, head: Box<RequestHead>, peer: Peer) -> CallJob {
        CallJob { conn, route, head, peer, body: RequestBody::None, gated: true }
    }
}

/// A request's body as its application reads it (`wsgi.input`).
pub enum RequestBody {
    /// The request has none.
    None,
    /// Read whole by the event loop before the call (request buffering): reading never
    /// waits on the network.
    Buffered(Buffered),
    /// Arriving while the application runs (a mount with `request_buffering = false`).
    Streamed(Arc<BodyPipe>),
}

impl RequestBody {
    /// Whether the whole body has been read off the socket (so the connection can stay open
    /// after the response).
    pub fn is_complete(&self) -> bool {
        match self {
            RequestBody::None | RequestBody::Buffered(_) => true,
            RequestBody::Streamed(pipe) => pipe.is_complete(),
        }
    }
}

/// A streamed response body between pulls: parked at the event loop, or being pulled by a
/// worker.
pub(crate) struct StreamState {
    /// The application's stream; dropping it is PEP 3333's `close()`.
    pub stream: BodyStream_TO<'static, RBox<()>>,
    /// Keeps the plugin version alive while its stream is.
    pub plugin: Arc<Plugin>,
    /// The application it answers for (each pull has its deadline).
    pub app: Arc<App>,
    /// Frames the chunks as the head said.
    pub encoder: Encoder,
    /// Its wake state, and the waker its polls are handed.
    pub wake: Arc<StreamWake>,
    /// The plugin's handle on `wake`.
    pub waker: portico_api::abi::Waker,
}

impl StreamState {
    /// The state of `stream`, answering on `conn`.
    pub fn new(
        stream: BodyStream_TO<'static, RBox<()>>,
        plugin: Arc<Plugin>,
        app: Arc<App>,
        encoder: Encoder,
        conn: ConnId,
        notifier: Notifier,
    ) -> StreamState {
        let (wake, waker) = StreamWake::new(conn, notifier);
        StreamState { stream, plugin, app, encoder, wake, waker }
    }
}

impl Drop for StreamState {
    fn drop(&mut self) {
        self.wake.finish();
    }
}

/// Work for the pool.
pub(crate) enum Job {
    /// Run an application.
    Call(Box<CallJob>),
    /// Pull the next chunk of a streamed body.
    Pull(ConnId, Box<StreamState>),
    /// Drop a stream whose connection went away (runs the plugin's close hook on a worker,
    /// never on an event loop).
    Close(Box<StreamState>),
}

/// An application's response, encoded, for the event loop to send.
pub(crate) struct Reply {
    /// The connection.
    pub conn: ConnId,
    /// The head and the body (or its first pieces).
    pub prepared: Prepared,
    /// A streamed body still to pull.
    pub stream: Option<Box<StreamState>>,
}

/// One pulled piece of a streamed body.
pub(crate) struct Chunk {
    /// The connection.
    pub conn: ConnId,
    /// Framed bytes to write (may be empty).
    pub data: Vec<u8>,
    /// Content bytes in `data` (for the access log).
    pub payload: u64,
    /// The stream, if there is more to pull.
    pub stream: Option<Box<StreamState>>,
    /// The body ended early or wrongly (application error, a short or long
    /// `Content-Length`, close-delimited): close the connection after `data`.
    pub close: bool,
    /// The stream answered `Pending` and waits for its plugin's wake (`StreamReady`) before
    /// it is pulled again.
    pub waiting: bool,
}

/// A connection accepted by one event loop for another (see `crate::io::balance`).
pub(crate) struct Adopted {
    /// The event loop that takes it.
    pub event_loop: usize,
    /// The socket.
    pub sock: crate::listeners::Stream,
    /// Its addresses.
    pub peer: Peer,
}

/// A message for an event loop.
pub(crate) enum Completion {
    /// An application's response.
    Response(Box<Reply>),
    /// The next piece of a streamed body.
    Chunk(Box<Chunk>),
    /// The application started reading a body sent with `Expect: 100-continue`: send the
    /// interim `100 Continue`.
    Continue(ConnId),
    /// The body pipe has room again: resume reading the socket.
    ResumeRead(ConnId),
    /// A waiting stream's plugin has data for it: pull it again.
    StreamReady(ConnId),
    /// A connection another event loop accepted for this one.
    Adopt(Box<Adopted>),
}

impl Completion {
    /// The event loop this is for.
    pub fn event_loop(&self) -> usize {
        match self {
            Completion::Response(r) => r.conn.event_loop,
            Completion::Chunk(c) => c.conn.event_loop,
            Completion::Continue(id) | Completion::ResumeRead(id) | Completion::StreamReady(id) => id.event_loop,
            Completion::Adopt(a) => a.event_loop,
        }
    }
}

/// Sends completions to the event loop that owns their connection, and wakes it.
#[derive(Clone)]
pub(crate) struct Notifier {
    loops: Arc<[(Sender<Completion>, Arc<Waker>)]>,
}

impl Notifier {
    /// A notifier over the event loops' completion channels and wakers, in loop order.
    pub fn new(loops: Vec<(Sender<Completion>, Arc<Waker>)>) -> Notifier {
        Notifier { loops: loops.into() }
    }

    /// Sends `c` to its event loop and wakes the loop. A loop that has stopped drops it.
    pub fn notify(&self, c: Completion) {
        let Some((tx, waker)) = self.loops.get(c.event_loop()) else { return };
        if tx.send(c).is_ok() {
            let _ = waker.wake();
        }
    }
}
