//! The worker pool: threads that run applications and pull streamed bodies, fed by a
//! crossbeam channel.
//!
//! A worker never touches a socket. It runs one [`Job`] at a time and hands bytes back to the
//! I/O thread as a [`Completion`]. A streamed body is pulled one chunk per job, so a body
//! that waits on a slow client (the I/O thread stops asking for chunks above the write
//! high-water mark) holds no worker in the meantime.
//!
//! Each worker keeps the counters of [`crate::stats`] as it goes: busy while it runs a job;
//! for an application call, in flight, latency (from taking the job to the response head
//! being ready) and status, recorded before the response is handed to the I/O thread.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use abi_stable::std_types::{RBox, ROption, RResult, RVec};
use crossbeam_channel::Receiver;
use portico_api::abi::{Body, BodyStream_TO};

use crate::body_pipe::BodyPipe;
use crate::http::chunked::{LAST_CHUNK, encode_chunk_header};
use crate::http::request::{RequestHead, Version};
use crate::http::response::{self, bodiless, write_date};
use crate::plugin::call::{self, CallInfo};
use crate::plugin::loader::Plugin;
use crate::reactor::{Completion, ConnId, Notifier};
use crate::stats::{Stats, WorkerCache};

/// Bodies up to this many bytes are copied next to the head so one write sends both.
const COALESCE: usize = 16 * 1024;

/// A plugin request, ready to run.
pub struct CallJob {
    /// The connection it came on.
    pub conn: ConnId,
    /// The plugin version this request is pinned to.
    pub plugin: Arc<Plugin>,
    /// Middleware plugins around it (a mount's pipeline), outermost first; pinned likewise.
    pub middleware: Vec<Arc<Plugin>>,
    /// For a mount with `static = true`: the docroot answers instead of `plugin`'s
    /// application, and `plugin` is the outermost middleware.
    pub static_app: Option<Arc<std::sync::Mutex<crate::static_files::StaticFiles>>>,
    /// The parsed head.
    pub head: Box<RequestHead>,
    /// `SCRIPT_NAME`.
    pub script_name: String,
    /// `PATH_INFO`, decoded.
    pub path_info: Vec<u8>,
    /// Peer address.
    pub peer: SocketAddr,
    /// Local address.
    pub local: SocketAddr,
    /// The peer's and the local IP as text, formatted once per connection.
    pub ips: Arc<(String, String)>,
    /// The body, if the request has one.
    pub pipe: Option<Arc<BodyPipe>>,
}

/// How a streamed response body is delimited on the wire (RFC 9112 §6.3 for responses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFraming {
    /// `Transfer-Encoding: chunked` (HTTP/1.1, no Content-Length from the application).
    Chunked,
    /// The application's `Content-Length`: bytes past it are cut, fewer close the connection.
    Length(u64),
    /// Close-delimited (HTTP/1.0, no Content-Length).
    Close,
}

/// A streamed body between pulls: parked at the I/O thread, or being pulled by a worker.
pub struct StreamState {
    /// The application's stream; dropping it is PEP 3333's `close()`.
    pub stream: BodyStream_TO<'static, RBox<()>>,
    /// Keeps the plugin version alive while its stream is.
    pub plugin: Arc<Plugin>,
    /// Framing.
    pub framing: OutFraming,
    /// Payload bytes sent so far.
    pub sent: u64,
}

/// Body bytes owned by a plugin, written without copying.
pub enum PluginBytes {
    /// A buffer from the plugin's allocator (freed through its own vtable).
    Vec(RVec<u8>),
    /// Static data inside the plugin (never unloaded).
    Static(&'static [u8]),
}

impl PluginBytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            PluginBytes::Vec(v) => v.as_slice(),
            PluginBytes::Static(s) => s,
        }
    }
}

/// The body part of a [`ResponseOut`].
pub enum OutBody {
    /// Nothing beyond the bytes already in the response.
    None,
    /// Plugin-owned bytes.
    Plugin(PluginBytes),
    /// A stream to pull.
    Stream(Box<StreamState>),
}

/// A response head (and maybe body) for the I/O thread to send.
pub struct ResponseOut {
    /// The connection.
    pub conn: ConnId,
    /// Head bytes, possibly followed by a small body.
    pub bytes: Vec<u8>,
    /// The rest of the body.
    pub body: OutBody,
    /// Close the connection after this response.
    pub close: bool,
    /// Status code, for the access log.
    pub status: u16,
    /// Payload bytes known so far, for the access log.
    pub body_len: u64,
}

/// One pulled chunk of a stream.
pub struct ChunkOut {
    /// The connection.
    pub conn: ConnId,
    /// Framed bytes to write.
    pub data: Vec<u8>,
    /// Payload bytes in `data`.
    pub payload: u64,
    /// The stream, if there is more to pull.
    pub stream: Option<Box<StreamState>>,
    /// The body ended early (application error or a short Content-Length): close the
    /// connection after `data`.
    pub abort: bool,
}

/// Work for the pool.
pub enum Job {
    /// Run an application.
    Call(Box<CallJob>),
    /// Pull the next chunk of a streamed body.
    Pull(ConnId, Box<StreamState>),
    /// Drop a stream whose connection went away (runs the plugin's close hook on a worker,
    /// never on the I/O thread).
    Close(Box<StreamState>),
}

/// Handle to the pool's threads.
pub struct Pool {
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `n` workers taking jobs from `jobs`, counting into `stats`.
    pub fn start(
        n: usize,
        jobs: Receiver<Job>,
        notifier: Notifier,
        shutting_down: Arc<AtomicBool>,
        stats: Arc<Stats>,
    ) -> Self {
        let threads = (0..n)
            .map(|i| {
                let jobs = jobs.clone();
                let notifier = notifier.clone();
                let shutting_down = Arc::clone(&shutting_down);
                let stats = Arc::clone(&stats);
                std::thread::Builder::new()
                    .name(format!("portico-worker-{i}"))
                    .spawn(move || {
                        let mut counters = WorkerCache::default();
                        for job in jobs.iter() {
                            let _busy = stats.worker_busy();
                            run(job, &notifier, &shutting_down, &stats, &mut counters);
                        }
                    })
                    .expect("spawning a worker thread")
            })
            .collect();
        Pool { threads }
    }

    /// Waits for every worker to finish (after the job sender is dropped).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn run(job: Job, notifier: &Notifier, shutting_down: &AtomicBool, stats: &Stats, counters: &mut WorkerCache) {
    match job {
        Job::Call(job) => {
            // Measured: from here (the job taken off the queue) to the response head being
            // ready; recorded before the I/O thread can send it, so a client that has its
            // response sees it counted.
            let plugin = counters.get(stats, &job.plugin);
            let in_flight = plugin.start();
            let started = Instant::now();
            let out = run_call(*job, shutting_down);
            plugin.record(started.elapsed(), out.status);
            drop(in_flight);
            notifier.notify(Completion::Response(Box::new(out)));
        }
        Job::Pull(conn, stream) => {
            let out = pull(conn, stream);
            notifier.notify(Completion::Chunk(Box::new(out)));
        }
        Job::Close(stream) => drop(stream),
    }
}

/// A 500 from the server, logged with the plugin's name.
fn internal_error(job: &CallJob, close: bool, why: &str) -> ResponseOut {
    tracing::error!(plugin = %job.plugin.name, "plugin {}: {why}; answered 500", job.plugin.name);
    let body = response::error_body(500);
    ResponseOut {
        conn: job.conn,
        bytes: response::simple(
            job.head.version.as_str(),
            500,
            &[],
            "text/plain; charset=utf-8",
            &body,
            close,
            job.head.is_head(),
        ),
        body: OutBody::None,
        close,
        status: 500,
        body_len: body.len() as u64,
    }
}

fn run_call(job: CallJob, shutting_down: &AtomicBool) -> ResponseOut {
    let info = CallInfo {
        script_name: &job.script_name,
        path_info: &job.path_info,
        peer: job.peer,
        local: job.local,
        peer_ip: &job.ips.0,
        local_ip: &job.ips.1,
    };
    // A static mount: the docroot answers at the end of the pipeline (`job.plugin` is then
    // its outermost middleware, which names the request).
    let full_path: Vec<u8>;
    let app = match &job.static_app {
        Some(statics) => {
            full_path = [job.script_name.as_bytes(), &job.path_info].concat();
            call::Final::Static { statics, head: &job.head, path: &full_path }
        }
        None => call::Final::Plugin(&job.plugin),
    };
    let outcome = call::call(&job.plugin, app, &job.middleware, &job.head, &info, job.pipe.as_deref());
    // Keep-alive only if the whole request body has been read off the socket: otherwise the
    // next request's start is unknown (RFC 9112 §9.6 lets us close instead of draining).
    let body_complete = job.pipe.as_ref().is_none_or(|p| p.is_complete());
    let mut close =
        !job.head.keep_alive || shutting_down.load(Ordering::Relaxed) || !body_complete || outcome.input_failed;

    let start = outcome.start;
    let code = match (start.status, &start.error) {
        (Some(code), None) => code,
        (_, err) => {
            drop(outcome.body); // PEP 3333 close() on the discarded body
            let why = err.clone().unwrap_or_else(|| "application returned without calling start_response".to_owned());
            return internal_error(&job, close, &why);
        }
    };
    let head_request = job.head.is_head();
    let no_body = bodiless(code, head_request);
    let version = job.head.version;

    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(version.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(start.status_line.as_bytes());
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(&start.fields);
    if !start.has_date {
        write_date(&mut head);
    }
    if !start.has_server {
        head.extend_from_slice(b"Server: portico\r\n");
    }

    let mut body_out = OutBody::None;
    let mut small: Option<PluginBytes> = None;
    let mut body_len = 0u64;
    match outcome.body {
        Body::Stream(stream) if !no_body => {
            let framing = match (start.content_length, version) {
                (Some(len), _) => OutFraming::Length(len),
                (None, Version::Http11) => {
                    head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                    OutFraming::Chunked
                }
                (None, Version::Http10) => {
                    close = true;
                    OutFraming::Close
                }
            };
            if framing == OutFraming::Length(0) {
                drop(stream);
            } else {
                body_out = OutBody::Stream(Box::new(StreamState {
                    stream,
                    plugin: Arc::clone(&job.plugin),
                    framing,
                    sent: 0,
                }));
            }
        }
        Body::Stream(stream) => drop(stream),
        Body::Empty if no_body => {}
        Body::Empty => {
            if start.content_length.is_some_and(|l| l > 0) {
                tracing::warn!(plugin = %job.plugin.name, "plugin {}: body shorter than its Content-Length; closing the connection", job.plugin.name);
                close = true;
            } else if start.content_length.is_none() {
                head.extend_from_slice(b"Content-Length: 0\r\n");
            }
        }
        Body::Bytes(_) | Body::Static(_) => {
            let bytes = match outcome.body {
                Body::Bytes(v) => PluginBytes::Vec(v),
                Body::Static(s) => PluginBytes::Static(s.as_slice()),
                _ => unreachable!("matched above"),
            };
            let len = bytes.as_slice().len() as u64;
            // 204 and 304 never carry Content-Length from us (RFC 9110 §8.6); HEAD gets the
            // length GET would have (§9.3.2), but only if the application did not set one.
            let send = match start.content_length {
                _ if no_body => {
                    if start.content_length.is_none() && head_request && code != 204 && code != 304 {
                        let _ = write!(head, "Content-Length: {len}\r\n");
                    }
                    0
                }
                Some(cl) if cl < len => {
                    tracing::warn!(plugin = %job.plugin.name, "plugin {}: body of {len} bytes longer than its Content-Length {cl}; cut and closing", job.plugin.name);
                    close = true;
                    cl
                }
                Some(cl) if cl > len => {
                    tracing::warn!(plugin = %job.plugin.name, "plugin {}: body of {len} bytes shorter than its Content-Length {cl}; closing", job.plugin.name);
                    close = true;
                    len
                }
                Some(_) => len,
                None => {
                    let _ = write!(head, "Content-Length: {len}\r\n");
                    len
                }
            };
            if !no_body {
                body_len = send;
                if send as usize <= COALESCE {
                    small = Some(bytes);
                } else if send == len {
                    body_out = OutBody::Plugin(bytes);
                } else {
                    small = Some(bytes);
                }
            }
        }
    }
    response::finish_head(&mut head, version.as_str(), close);
    if let Some(bytes) = small {
        head.extend_from_slice(&bytes.as_slice()[..body_len as usize]);
    }
    ResponseOut { conn: job.conn, bytes: head, body: body_out, close, status: code, body_len }
}

fn pull(conn: ConnId, mut st: Box<StreamState>) -> ChunkOut {
    let mut data = Vec::new();
    // Skip empty chunks, but not forever.
    for _ in 0..64 {
        match st.stream.next_chunk() {
            RResult::ROk(ROption::RSome(chunk)) if chunk.is_empty() => continue,
            RResult::ROk(ROption::RSome(chunk)) => {
                let chunk = chunk.as_slice();
                let (payload, abort) = match st.framing {
                    OutFraming::Chunked => {
                        encode_chunk_header(chunk.len(), &mut data);
                        data.extend_from_slice(chunk);
                        data.extend_from_slice(b"\r\n");
                        (chunk.len() as u64, false)
                    }
                    OutFraming::Close => {
                        data.extend_from_slice(chunk);
                        (chunk.len() as u64, false)
                    }
                    OutFraming::Length(len) => {
                        let room = len - st.sent;
                        let take = (chunk.len() as u64).min(room);
                        data.extend_from_slice(&chunk[..take as usize]);
                        if take < chunk.len() as u64 {
                            tracing::warn!(plugin = %st.plugin.name, "plugin {}: streamed body longer than its Content-Length {len}; cut and closing", st.plugin.name);
                            (take, true)
                        } else {
                            (take, false)
                        }
                    }
                };
                st.sent += payload;
                let finished = matches!(st.framing, OutFraming::Length(len) if st.sent == len);
                if abort || finished {
                    // Done: close the stream here, on the worker.
                    return ChunkOut { conn, data, payload, stream: None, abort };
                }
                return ChunkOut { conn, data, payload, stream: Some(st), abort: false };
            }
            RResult::ROk(ROption::RNone) => {
                let abort = match st.framing {
                    OutFraming::Chunked => {
                        data.extend_from_slice(LAST_CHUNK);
                        false
                    }
                    OutFraming::Close => true,
                    OutFraming::Length(len) => {
                        tracing::warn!(plugin = %st.plugin.name, "plugin {}: streamed body of {} bytes shorter than its Content-Length {len}; closing", st.plugin.name, st.sent);
                        true
                    }
                };
                return ChunkOut { conn, data, payload: 0, stream: None, abort };
            }
            RResult::RErr(e) => {
                tracing::error!(plugin = %st.plugin.name, "plugin {}: {e}; response cut short, closing the connection", st.plugin.name);
                return ChunkOut { conn, data, payload: 0, stream: None, abort: true };
            }
        }
    }
    ChunkOut { conn, data, payload: 0, stream: Some(st), abort: false }
}
