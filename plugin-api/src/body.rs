//! Response bodies on the plugin's side: the [`Body`] constructors, the three
//! [`BodyStream`] implementations the SDK offers, and the crossing to and from [`Body_NE`].
//!
//! The three streams, by how their chunks come:
//! - [`Body::stream`] / [`Body::try_stream`]: an iterator that *computes* its chunks. Each
//!   `next()` runs on a worker and holds it while it runs.
//! - [`Body::poll_fn`]: a poll function in the shape of `futures::Stream::poll_next`: it answers
//!   `Poll::Pending` when it has nothing yet and wakes the `std::task::Waker` it was given
//!   (from a timer, see [`crate::timer`], an async runtime, any thread). No worker waits.
//! - [`Body::channel`]: a [`BodySender`] the plugin's own threads feed; waiting costs no
//!   worker either.
//!
//! Every call into plugin code (an iterator's `next`, a poll function, their drops) runs
//! inside the panic fence ([`crate::guard`]).

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RBox, RResult, RSlice, RString, RVec};

use crate::abi::{Body, Body_NE, BodyStream, BodyStream_TO, Chunk, Chunk_NE, FileBody, Wake, Wake_TO, Waker};
use crate::sdk::guard::fenced;

impl Body {
    /// A body produced by an iterator of chunks; the host pulls it on a worker thread and
    /// drops it (PEP 3333's `close()`) when the response ends or the client goes away.
    ///
    /// Each `next()` holds a worker while it runs (and counts against the application's
    /// deadline): use it for chunks that are computed. A body that *waits* for its data
    /// (server-sent events, long polling) is a [`Body::poll_fn`] or a [`Body::channel`].
    ///
    /// Each `next()` and the final drop run inside the panic fence: a panic ends the response
    /// (the connection is closed, the body is cut short) and is logged.
    pub fn stream<I>(chunks: I) -> Body
    where
        I: IntoIterator<Item = Vec<u8>>,
        I::IntoIter: Send + 'static,
    {
        Body::try_stream(chunks.into_iter().map(Ok::<_, String>))
    }

    /// Like [`Body::stream`] for chunks that can fail: an `Err` ends the response (the
    /// connection is closed) and its message is logged.
    pub fn try_stream<I, E>(chunks: I) -> Body
    where
        I: IntoIterator<Item = Result<Vec<u8>, E>>,
        I::IntoIter: Send + 'static,
        E: fmt::Display,
    {
        let stream = IterStream { inner: Some(chunks.into_iter()) };
        Body::Stream(BodyStream_TO::from_value(stream, TD_Opaque))
    }

    /// A push stream: `poll` is called, on a worker, each time the host wants the next chunk,
    /// in the shape of `futures::Stream::poll_next`:
    ///
    /// - `Poll::Ready(Some(Ok(chunk)))`: the next chunk (an empty one is skipped);
    /// - `Poll::Pending`: nothing yet. The worker is released; `poll` runs again after
    ///   something calls `wake()` on (a clone of) `cx.waker()`: a timer
    ///   ([`crate::timer::wake_at`]), an async runtime, a thread of the plugin's own;
    /// - `Poll::Ready(None)`: the body is complete;
    /// - `Poll::Ready(Some(Err(e)))`: the body failed; the connection is closed and `e` logged.
    ///
    /// A wake may be spurious: `poll` must check its own state. Each call counts against the
    /// application's deadline, like one `next()` of [`Body::stream`]; waiting between calls
    /// does not. Panics are fenced as in [`Body::stream`].
    ///
    /// ```
    /// use std::task::Poll;
    /// use std::time::{Duration, Instant};
    /// use portico_api::{Body, timer};
    ///
    /// // One line a second, three times, without holding a worker in between.
    /// let mut next_at = Instant::now();
    /// let mut left = 3;
    /// let body = Body::poll_fn(move |cx| {
    ///     if left == 0 {
    ///         return Poll::Ready(None);
    ///     }
    ///     if Instant::now() < next_at {
    ///         timer::wake_at(next_at, cx.waker().clone());
    ///         return Poll::Pending;
    ///     }
    ///     left -= 1;
    ///     next_at += Duration::from_secs(1);
    ///     Poll::Ready(Some(Ok::<_, String>(b"tick\n".to_vec())))
    /// });
    /// # drop(body);
    /// ```
    pub fn poll_fn<F, E>(poll: F) -> Body
    where
        F: FnMut(&mut Context<'_>) -> Poll<Option<Result<Vec<u8>, E>>> + Send + 'static,
        E: fmt::Display,
    {
        Body::Stream(BodyStream_TO::from_value(PollFnStream { poll: Some(poll) }, TD_Opaque))
    }

    /// A push stream fed through a channel: returns the [`BodySender`] the plugin's threads
    /// send chunks into, and the body to return. The body ends when the sender is dropped,
    /// and fails (connection closed) on [`BodySender::fail`]. The host holds no worker while
    /// the channel is empty.
    ///
    /// `capacity` is in bytes: [`BodySender::send`] blocks while that much is queued and not
    /// yet taken by the host (a slow client slows the sender down; one chunk larger than
    /// `capacity` is accepted when the queue is empty). When the client goes away the host
    /// drops the body, and every send then fails with [`SendError::Disconnected`].
    pub fn channel(capacity: usize) -> (BodySender, Body) {
        let shared = Arc::new(Channel { state: Mutex::new(ChannelState::default()), space: Condvar::new(), capacity });
        let stream = ChannelStream { shared: Arc::clone(&shared) };
        (BodySender { shared }, Body::Stream(BodyStream_TO::from_value(stream, TD_Opaque)))
    }

    /// The whole of `file`, sent by the host with `sendfile(2)` (PEP 3333's
    /// `wsgi.file_wrapper`); the length, in bytes, is the file's size now.
    ///
    /// # Errors
    /// The file's metadata cannot be read.
    #[cfg(unix)]
    pub fn file(file: File) -> std::io::Result<Body> {
        let len = file.metadata()?.len();
        Ok(Body::File(FileBody::new(file, 0, len)))
    }

    /// `len` bytes of `file` from byte `offset`, sent with `sendfile(2)`. See [`FileBody`].
    #[cfg(unix)]
    pub fn file_range(file: File, offset: u64, len: u64) -> Body {
        Body::File(FileBody::new(file, offset, len))
    }

    /// The body as an iterator of chunks: for a test, or a middleware that needs the whole
    /// body at once (to rewrite chunk by chunk, use [`Body::map_chunks`], which keeps a push
    /// stream waiting without a worker).
    ///
    /// A complete body ([`Body::Bytes`], [`Body::Static`]) is one chunk (a static body is
    /// copied); [`Body::Empty`] is none; a [`Body::File`] is read in chunks of 64 KiB; a
    /// [`Body::Stream`] is polled one chunk per `next()`, and **`next()` blocks the calling
    /// thread while a push stream is pending** (so a rewritten push stream holds a worker
    /// while it waits). Errors come out as `Err` (after which the iterator ends). Empty
    /// chunks are skipped. Dropping the iterator drops the stream (PEP 3333's `close()`).
    pub fn into_chunks(self) -> impl Iterator<Item = Result<Vec<u8>, String>> + Send + 'static {
        let mut state = match self {
            Body::Empty => Chunks::Done,
            Body::Bytes(bytes) => Chunks::One(bytes.into_vec()),
            Body::Static(bytes) => Chunks::One(bytes.as_slice().to_vec()),
            Body::Stream(stream) => Chunks::Stream(stream),
            #[cfg(unix)]
            Body::File(file) => {
                let (offset, len) = (file.offset(), file.len());
                Chunks::File { file: file.into_file(), offset, left: len }
            }
            #[cfg(not(unix))]
            Body::File(_) => Chunks::Failed("file bodies need a unix host".to_owned()),
        };
        std::iter::from_fn(move || state.next())
    }

    /// The body with `f` applied to each chunk, for a middleware that rewrites the body of the
    /// next application (`Body::map_chunks(body, |c| Ok::<_, String>(c.to_ascii_uppercase()))`).
    ///
    /// A stream stays a stream polled by the host: while a push stream waits, so does the
    /// rewritten body, holding no worker ([`Body::into_chunks`] would block one). A complete
    /// body or a file becomes a stream of its rewritten chunks. `f` runs inside the panic fence;
    /// an `Err` (or a panic) ends the response (the connection is closed) and is logged.
    pub fn map_chunks<F, E>(self, mut f: F) -> Body
    where
        F: FnMut(Vec<u8>) -> Result<Vec<u8>, E> + Send + 'static,
        E: fmt::Display,
    {
        match self {
            Body::Stream(inner) => Body::Stream(BodyStream_TO::from_value(MapStream { inner, f: Some(f) }, TD_Opaque)),
            other => {
                Body::try_stream(other.into_chunks().map(move |c| c.and_then(|c| f(c).map_err(|e| e.to_string()))))
            }
        }
    }

    /// The body as it crosses the boundary (what an entry point returns).
    /// [`crate::export_app!`] calls this.
    pub fn into_abi(self) -> Body_NE {
        Body_NE::new(self)
    }

    /// A body that crossed the boundary, as this SDK's [`Body`].
    ///
    /// # Errors
    /// The body is a variant added to the ABI after the `portico-api` this plugin was built
    /// with (it came from a newer plugin through the host). It is dropped, through its own
    /// plugin's code.
    pub fn from_abi(body: Body_NE) -> Result<Body, UnknownVariant> {
        body.into_enum()
            .map_err(|e| UnknownVariant { what: "response body", discriminant: e.non_exhaustive.get_discriminant() })
    }
}

/// A value of an ABI enum ([`Body`], [`Chunk`]) with a variant newer than this plugin's
/// `portico-api`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVariant {
    what: &'static str,
    discriminant: u8,
}

impl fmt::Display for UnknownVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {} of a kind (discriminant {}) newer than this plugin's portico-api {}",
            self.what,
            self.discriminant,
            crate::abi::VERSION
        )
    }
}

impl std::error::Error for UnknownVariant {}

impl UnknownVariant {
    /// A [`Chunk`] of the kind `discriminant`.
    fn chunk(discriminant: u8) -> UnknownVariant {
        UnknownVariant { what: "body chunk", discriminant }
    }
}

/// The state of [`Body::into_chunks`].
enum Chunks {
    Done,
    One(Vec<u8>),
    Stream(BodyStream_TO<'static, RBox<()>>),
    #[cfg(unix)]
    File {
        file: File,
        offset: u64,
        left: u64,
    },
    #[cfg(not(unix))]
    Failed(String),
}

/// How much of a file [`Body::into_chunks`] reads at a time, in bytes.
const FILE_CHUNK: u64 = 64 * 1024;

impl Chunks {
    fn next(&mut self) -> Option<Result<Vec<u8>, String>> {
        match std::mem::replace(self, Chunks::Done) {
            Chunks::Done => None,
            Chunks::One(bytes) if bytes.is_empty() => None,
            Chunks::One(bytes) => Some(Ok(bytes)),
            Chunks::Stream(mut stream) => {
                let waker = thread_waker();
                loop {
                    let chunk = match stream.poll_chunk(&waker) {
                        RResult::ROk(chunk) => chunk,
                        RResult::RErr(e) => return Some(Err(e.into_string())),
                    };
                    match chunk.into_enum() {
                        Ok(Chunk::Data(bytes)) if bytes.is_empty() => {}
                        Ok(Chunk::Data(bytes)) => {
                            *self = Chunks::Stream(stream);
                            return Some(Ok(bytes.into_vec()));
                        }
                        // A wake that came before the park makes it return at once.
                        Ok(Chunk::Pending) => std::thread::park(),
                        Ok(Chunk::End) => return None,
                        Err(e) => {
                            return Some(Err(UnknownVariant::chunk(e.non_exhaustive.get_discriminant()).to_string()));
                        }
                    }
                }
            }
            #[cfg(unix)]
            Chunks::File { file, offset, left } => {
                use std::os::unix::fs::FileExt;
                if left == 0 {
                    return None;
                }
                let mut buf = vec![0; left.min(FILE_CHUNK) as usize];
                match file.read_at(&mut buf, offset) {
                    Ok(0) => Some(Err(format!("file body ended {left} bytes before its length"))),
                    Ok(n) => {
                        buf.truncate(n);
                        *self = Chunks::File { file, offset: offset + n as u64, left: left - n as u64 };
                        Some(Ok(buf))
                    }
                    Err(e) => Some(Err(format!("reading the file body failed: {e}"))),
                }
            }
            #[cfg(not(unix))]
            Chunks::Failed(why) => Some(Err(why)),
        }
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Body {
        Body::Static(RSlice::from_slice(s.as_bytes()))
    }
}

impl From<&'static [u8]> for Body {
    fn from(s: &'static [u8]) -> Body {
        Body::Static(RSlice::from_slice(s))
    }
}

impl From<String> for Body {
    fn from(s: String) -> Body {
        Body::Bytes(RVec::from(s.into_bytes()))
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Body {
        Body::Bytes(RVec::from(v))
    }
}

fn data(bytes: Vec<u8>) -> RResult<Chunk_NE, RString> {
    RResult::ROk(Chunk_NE::new(Chunk::Data(RVec::from(bytes))))
}

fn pending() -> RResult<Chunk_NE, RString> {
    RResult::ROk(Chunk_NE::new(Chunk::Pending))
}

fn end() -> RResult<Chunk_NE, RString> {
    RResult::ROk(Chunk_NE::new(Chunk::End))
}

/// [`Body::try_stream`]: an iterator behind the fence.
struct IterStream<I> {
    inner: Option<I>,
}

impl<I, E> BodyStream for IterStream<I>
where
    I: Iterator<Item = Result<Vec<u8>, E>> + Send,
    E: fmt::Display,
{
    fn poll_chunk(&mut self, _waker: &Waker) -> RResult<Chunk_NE, RString> {
        let Some(iter) = self.inner.as_mut() else {
            return end();
        };
        let polled = fenced(|| iter.next()).map(Poll::Ready);
        settle(&mut self.inner, polled)
    }
}

impl<I> Drop for IterStream<I> {
    fn drop(&mut self) {
        close(&mut self.inner);
    }
}

/// What a poll of plugin code answers: [`Body::poll_fn`]'s shape.
type Polled<E> = Poll<Option<Result<Vec<u8>, E>>>;
/// The outcome of a call inside the fence (`Err`: the panic message).
type Fenced<T> = Result<T, String>;

/// One poll of plugin state (an iterator, a poll function) run inside the fence, as the host
/// sees it. Once the body ends, fails or panics (its state is unknown then), the state in `slot`
/// is dropped, fenced too.
fn settle<T, E: fmt::Display>(slot: &mut Option<T>, polled: Fenced<Polled<E>>) -> RResult<Chunk_NE, RString> {
    let last = match polled {
        Ok(Poll::Ready(Some(Ok(chunk)))) => return data(chunk),
        Ok(Poll::Pending) => return pending(),
        Ok(Poll::Ready(None)) => end(),
        Ok(Poll::Ready(Some(Err(e)))) => RResult::RErr(RString::from(format!("body stream failed: {e}"))),
        Err(panic) => RResult::RErr(RString::from(format!("body stream panicked: {panic}"))),
    };
    close(slot);
    last
}

/// Drops plugin state (an iterator, a poll function) inside the fence.
fn close<T>(slot: &mut Option<T>) {
    if let Some(value) = slot.take() {
        let _ = fenced(move || drop(value));
    }
}

/// [`Body::poll_fn`]: a poll function behind the fence.
struct PollFnStream<F> {
    poll: Option<F>,
}

impl<F, E> BodyStream for PollFnStream<F>
where
    F: FnMut(&mut Context<'_>) -> Poll<Option<Result<Vec<u8>, E>>> + Send,
    E: fmt::Display,
{
    fn poll_chunk(&mut self, waker: &Waker) -> RResult<Chunk_NE, RString> {
        let Some(poll) = self.poll.as_mut() else {
            return end();
        };
        let waker = std::task::Waker::from(Arc::new(StdWake(waker.clone())));
        let mut cx = Context::from_waker(&waker);
        let polled = fenced(|| poll(&mut cx));
        settle(&mut self.poll, polled)
    }
}

impl<F> Drop for PollFnStream<F> {
    fn drop(&mut self) {
        close(&mut self.poll);
    }
}

/// [`Body::map_chunks`] of a stream: polls the inner stream with the host's waker, so a
/// `Pending` passes straight through.
struct MapStream<F> {
    inner: BodyStream_TO<'static, RBox<()>>,
    f: Option<F>,
}

impl<F, E> BodyStream for MapStream<F>
where
    F: FnMut(Vec<u8>) -> Result<Vec<u8>, E> + Send,
    E: fmt::Display,
{
    fn poll_chunk(&mut self, waker: &Waker) -> RResult<Chunk_NE, RString> {
        let Some(f) = self.f.as_mut() else {
            return end();
        };
        let chunk = match self.inner.poll_chunk(waker) {
            RResult::ROk(chunk) => chunk.into_enum(),
            RResult::RErr(e) => {
                close(&mut self.f);
                return RResult::RErr(e);
            }
        };
        let polled = match chunk {
            Ok(Chunk::Data(bytes)) => fenced(|| Poll::Ready(Some(f(bytes.into_vec())))),
            Ok(Chunk::Pending) => Ok(Poll::Pending),
            Ok(Chunk::End) => Ok(Poll::Ready(None)),
            Err(unknown) => {
                close(&mut self.f);
                let why = UnknownVariant::chunk(unknown.non_exhaustive.get_discriminant());
                return RResult::RErr(RString::from(why.to_string()));
            }
        };
        settle(&mut self.f, polled)
    }
}

impl<F> Drop for MapStream<F> {
    fn drop(&mut self) {
        close(&mut self.f);
    }
}

/// The host's [`Waker`] as a `std::task::Waker`.
struct StdWake(Waker);

impl std::task::Wake for StdWake {
    fn wake(self: Arc<Self>) {
        self.0.wake();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.wake();
    }
}

/// A [`Waker`] that unparks the thread that made it (for [`Body::into_chunks`] and
/// [`crate::testing`], which wait on a push stream by blocking).
#[derive(Clone)]
struct ThreadWake(std::thread::Thread);

impl Wake for ThreadWake {
    fn wake(&self) {
        self.0.unpark();
    }
}

/// A waker for the calling thread: its `wake` unparks it (made once per thread).
pub(crate) fn thread_waker() -> Waker {
    thread_local! {
        static WAKER: Waker = Wake_TO::from_ptr(RArc::new(ThreadWake(std::thread::current())), TD_Opaque);
    }
    WAKER.with(Waker::clone)
}

/// What [`BodySender`] and the body share.
struct Channel {
    state: Mutex<ChannelState>,
    /// Signalled when the host takes a chunk or drops the body.
    space: Condvar,
    /// In bytes.
    capacity: usize,
}

#[derive(Default)]
struct ChannelState {
    queue: VecDeque<Vec<u8>>,
    /// Bytes in `queue`.
    queued: usize,
    /// The sender was dropped: the body ends after the queue.
    finished: bool,
    /// [`BodySender::fail`]'s message: the body fails after the queue.
    failed: Option<String>,
    /// The host dropped the body (the response ended or the client went away).
    disconnected: bool,
    /// The host's waker from the last poll that found the queue empty.
    waker: Option<Waker>,
}

impl Channel {
    /// Whether senders must wait: `capacity` bytes or more are queued (one chunk of any size
    /// is accepted into an empty queue).
    fn full(&self, queued: usize) -> bool {
        queued > 0 && queued >= self.capacity
    }

    fn lock(&self) -> MutexGuard<'_, ChannelState> {
        // No code that can panic runs under this lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The body half of [`Body::channel`].
struct ChannelStream {
    shared: Arc<Channel>,
}

impl BodyStream for ChannelStream {
    fn poll_chunk(&mut self, waker: &Waker) -> RResult<Chunk_NE, RString> {
        let mut state = self.shared.lock();
        if let Some(chunk) = state.queue.pop_front() {
            let was_full = self.shared.full(state.queued);
            state.queued -= chunk.len();
            let room = was_full && !self.shared.full(state.queued);
            drop(state);
            if room {
                // Only a full queue has senders blocked on it.
                self.shared.space.notify_all();
            }
            return data(chunk);
        }
        if let Some(why) = state.failed.take() {
            return RResult::RErr(RString::from(format!("body stream failed: {why}")));
        }
        if state.finished {
            return end();
        }
        state.waker = Some(waker.clone());
        pending()
    }
}

impl Drop for ChannelStream {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.disconnected = true;
        state.queue.clear();
        state.queued = 0;
        state.waker = None;
        drop(state);
        self.shared.space.notify_all();
    }
}

/// The sending half of [`Body::channel`]: owned by the plugin, moved to the thread that
/// produces the body. Dropping it ends the body (after what is queued).
pub struct BodySender {
    shared: Arc<Channel>,
}

/// Why [`BodySender::send`] or [`BodySender::try_send`] did not queue a chunk; the chunk is
/// handed back.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The queue holds `capacity` bytes or more ([`BodySender::try_send`] only).
    Full(Vec<u8>),
    /// The host dropped the body: the response ended or the client went away. Stop producing.
    Disconnected(Vec<u8>),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Full(_) => f.write_str("the body channel is full"),
            SendError::Disconnected(_) => f.write_str("the client is gone: the response body was dropped"),
        }
    }
}

impl std::error::Error for SendError {}

impl BodySender {
    /// Queues `chunk` and wakes the host, blocking while the queue holds `capacity` bytes
    /// or more. Call it from a thread of the plugin's own, never from the application before
    /// it has returned the body: nothing takes from the queue until the host has the body, so
    /// a full queue would block that call for good (use [`BodySender::try_send`] to fill it
    /// up front).
    ///
    /// # Errors
    /// [`SendError::Disconnected`] once the host dropped the body.
    pub fn send(&self, chunk: impl Into<Vec<u8>>) -> Result<(), SendError> {
        let chunk = chunk.into();
        let mut state = self.shared.lock();
        while !state.disconnected && self.shared.full(state.queued) {
            state = self.shared.space.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        self.queue(state, chunk)
    }

    /// Queues `chunk` and wakes the host, without blocking.
    ///
    /// # Errors
    /// [`SendError::Full`] while the queue holds `capacity` bytes or more;
    /// [`SendError::Disconnected`] once the host dropped the body.
    pub fn try_send(&self, chunk: impl Into<Vec<u8>>) -> Result<(), SendError> {
        let chunk = chunk.into();
        let state = self.shared.lock();
        if !state.disconnected && self.shared.full(state.queued) {
            return Err(SendError::Full(chunk));
        }
        self.queue(state, chunk)
    }

    fn queue(&self, mut state: MutexGuard<'_, ChannelState>, chunk: Vec<u8>) -> Result<(), SendError> {
        if state.disconnected {
            return Err(SendError::Disconnected(chunk));
        }
        state.queued += chunk.len();
        state.queue.push_back(chunk);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Ends the body with an error after what is queued: the host closes the connection (the
    /// client sees a truncated body) and logs `why`.
    pub fn fail(self, why: impl Into<String>) {
        self.shared.lock().failed = Some(why.into());
        // Drop wakes the host.
    }

    /// Whether the host dropped the body (the client went away): sending is pointless.
    pub fn is_disconnected(&self) -> bool {
        self.shared.lock().disconnected
    }

    /// Bytes queued and not yet taken by the host.
    pub fn queued_bytes(&self) -> usize {
        self.shared.lock().queued
    }
}

impl Drop for BodySender {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.finished = true;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl fmt::Debug for BodySender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodySender").field("capacity", &self.shared.capacity).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(body: Body) -> Result<Vec<Vec<u8>>, String> {
        body.into_chunks().collect()
    }

    #[test]
    fn a_channel_body_carries_what_was_sent_in_order_and_ends_when_the_sender_drops() {
        let (tx, body) = Body::channel(4);
        let producer = std::thread::spawn(move || {
            for i in 0..50u8 {
                tx.send(vec![i; 3]).unwrap();
            }
        });
        let chunks = collect(body).unwrap();
        producer.join().unwrap();
        assert_eq!(chunks, (0..50u8).map(|i| vec![i; 3]).collect::<Vec<_>>());
    }

    #[test]
    fn a_failed_channel_body_ends_in_its_error() {
        let (tx, body) = Body::channel(1024);
        tx.send(b"a".to_vec()).unwrap();
        tx.fail("upstream gone");
        let out: Vec<_> = body.into_chunks().collect();
        assert_eq!(out, [Ok(b"a".to_vec()), Err("body stream failed: upstream gone".to_owned())]);
    }

    #[test]
    fn sending_after_the_body_is_dropped_says_disconnected_and_never_blocks() {
        let (tx, body) = Body::channel(1);
        tx.send(b"xx".to_vec()).unwrap();
        assert_eq!(tx.try_send(b"y".to_vec()), Err(SendError::Full(b"y".to_vec())));
        drop(body);
        assert!(tx.is_disconnected());
        assert_eq!(tx.send(b"z".to_vec()), Err(SendError::Disconnected(b"z".to_vec())));
    }

    #[test]
    fn a_poll_fn_body_waits_for_its_waker() {
        let mut sent = 0;
        let body = Body::poll_fn(move |cx| {
            sent += 1;
            match sent {
                1 | 3 => {
                    let waker = cx.waker().clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        waker.wake();
                    });
                    Poll::Pending
                }
                2 | 4 => Poll::Ready(Some(Ok::<_, String>(vec![b'0' + sent as u8]))),
                _ => Poll::Ready(None),
            }
        });
        assert_eq!(collect(body).unwrap(), [b"2".to_vec(), b"4".to_vec()]);
    }

    #[test]
    fn a_mapped_push_stream_stays_pending_without_blocking_and_maps_what_comes() {
        let (tx, body) = Body::channel(1024);
        let Body::Stream(mut mapped) = body.map_chunks(|c| Ok::<_, String>(c.to_ascii_uppercase())) else {
            panic!("a stream stays a stream");
        };
        let waker = thread_waker();
        let mut poll = || match mapped.poll_chunk(&waker) {
            RResult::ROk(c) => match c.into_enum() {
                Ok(Chunk::Data(d)) => format!("data {}", String::from_utf8_lossy(&d)),
                Ok(Chunk::Pending) => "pending".to_owned(),
                Ok(Chunk::End) => "end".to_owned(),
                Err(_) => "unknown".to_owned(),
            },
            RResult::RErr(e) => format!("error {e}"),
        };
        assert_eq!(poll(), "pending", "nothing sent: the mapped body waits, it does not block");
        tx.send(b"abc".to_vec()).unwrap();
        assert_eq!(poll(), "data ABC");
        drop(tx);
        assert_eq!(poll(), "end");
    }

    #[test]
    fn mapping_a_complete_body_maps_its_one_chunk_and_an_error_ends_it() {
        assert_eq!(collect(Body::from("ab").map_chunks(|c| Ok::<_, String>(c.repeat(2)))).unwrap(), [b"abab".to_vec()]);
        let failed: Vec<_> =
            Body::stream(vec![b"x".to_vec()]).map_chunks(|_| Err::<Vec<u8>, _>("no")).into_chunks().collect();
        assert_eq!(failed, [Err("body stream failed: no".to_owned())]);
    }

    #[test]
    fn a_panicking_poll_fn_becomes_an_error() {
        let body = Body::poll_fn(|_| -> Poll<Option<Result<Vec<u8>, String>>> { panic!("bad poll") });
        let out: Vec<_> = body.into_chunks().collect();
        assert_eq!(out.len(), 1);
        assert!(out[0].as_ref().unwrap_err().contains("bad poll"), "{out:?}");
    }

    #[test]
    fn a_file_body_reads_its_range() {
        use std::io::Write;
        let mut file = tempfile_in_target();
        file.write_all(&(0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>()).unwrap();
        let body = Body::file_range(file, 10, 150_000);
        let bytes: Vec<u8> = collect(body).unwrap().concat();
        assert_eq!(bytes, (10..150_010u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    }

    #[test]
    fn a_file_body_shorter_than_its_length_fails() {
        let file = tempfile_in_target();
        let out: Vec<_> = Body::file_range(file, 0, 5).into_chunks().collect();
        assert!(out[0].as_ref().unwrap_err().contains("5 bytes before its length"), "{out:?}");
    }

    #[test]
    fn a_body_crosses_the_boundary_and_back() {
        let body = Body::from_abi(Body::from("x").into_abi()).unwrap();
        assert_eq!(collect(body).unwrap(), [b"x".to_vec()]);
    }

    /// An unlinked file in the temporary directory (the SDK takes no tempfile dependency).
    fn tempfile_in_target() -> File {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("portico-api-test-{}-{:?}", std::process::id(), std::thread::current().id()));
        let file = File::options().read(true).write(true).create_new(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }
}
