//! The stable ABI: every type that crosses the boundary between the `portico` host and a plugin.
//!
//! This module is the **API boundary** of Portico, version 0.2. It is shaped to grow within
//! 0.2.x without breaking either side (measured in `shared/research/abi-growth.md`):
//!
//! | what may grow | how | an older peer sees |
//! |---|---|---|
//! | [`PluginMod`] | fields appended after [`PluginMod::middleware`] (the `last_prefix_field`, never moved), each an `ROption` | `None` |
//! | a trait ([`BodyStream`], [`StartResponse`], [`Input`], [`ErrorStream`], [`NextApplication`], [`Wake`]) | methods appended at the end, each with a default body | the default runs |
//! | [`Body`], [`Chunk`] | variants appended (`NonExhaustive`, storage sized ahead) | an unknown variant: the host answers 500 or closes the stream; the SDK reports an error |
//! | request facts | keys in [`Environ::extra`] | nothing (it does not look) |
//!
//! A new host runs plugins built against an earlier 0.2.x (the host's loader checks that the
//! plugin's layout is a prefix of its own: abi_stable's checker with the roles swapped), and
//! abi_stable itself lets an older host run plugins built against a later 0.2.x. Anything else
//! — a field retyped or removed, a plain `#[repr(C)]` struct ([`Environ`], [`Field`],
//! [`FileBody`]) changed, a supertrait added — is a 0.3 and a rebuild of every plugin.
//!
//! Every type here is `#[repr(C)]` and derives [`StableAbi`], so the host checks the layout of
//! each one (recursively, through [`PluginMod::application`]'s signature) before any plugin
//! code runs.
//!
//! Ownership, in one place:
//! - [`Environ`] and everything it points at is **borrowed from the host** for the duration of
//!   one `application` call. A plugin must not keep any of it after returning.
//! - [`Body`] is **owned by the plugin's allocator** and freed through its own vtable
//!   (`RVec`, `RBox`, the `NonExhaustive` wrapper), whichever side drops it. A [`FileBody`]'s
//!   descriptor belongs to whoever holds the body: the host closes it when it is done.
//! - Trait objects ([`StartResponse_TO`], [`Input_TO`], [`ErrorStream_TO`], [`Waker`]) are
//!   implemented by the host; [`BodyStream_TO`] is implemented by the plugin (the SDK wraps it
//!   in a panic fence).

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    sabi_types::{RMut, RRef},
    std_types::{RArc, RBox, ROption, RResult, RSlice, RSliceMut, RStr, RString, RVec},
};

/// This crate's version: the `portico-api` (ABI) version a plugin or host was built with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One field line of a request or response header section (RFC 9110 §5).
///
/// Both parts are bytes, as on the wire: the host lends them without copying or validating
/// them again. In a request, `name` is a token (RFC 9110 §5.1, so ASCII) and `value` has no
/// leading or trailing whitespace (RFC 9112 §5) but may contain obs-text (bytes 0x80–0xFF),
/// which PEP 3333 reads as ISO-8859-1. [`Field::name_str`] and
/// [`crate::Environ::header`] give text views.
#[repr(C)]
#[derive(StableAbi, Copy, Clone, Debug)]
pub struct Field<'a> {
    /// Field name as received (case preserved; compare case-insensitively).
    pub name: RSlice<'a, u8>,
    /// Field value bytes, trimmed of SP/HTAB at both ends.
    pub value: RSlice<'a, u8>,
}

impl<'a> Field<'a> {
    /// A field from a name and a value.
    pub const fn new(name: &'a str, value: &'a str) -> Self {
        Field { name: RSlice::from_slice(name.as_bytes()), value: RSlice::from_slice(value.as_bytes()) }
    }

    /// The name as text (`""` if it is not UTF-8, which a valid token always is).
    pub fn name_str(&self) -> &'a str {
        std::str::from_utf8(self.name.as_slice()).unwrap_or("")
    }

    /// Whether the name is `name`, ASCII case-insensitively.
    pub fn is(&self, name: &str) -> bool {
        self.name.as_slice().eq_ignore_ascii_case(name.as_bytes())
    }
}

/// The request as the host parsed it: PEP 3333's `environ` dictionary as a struct.
///
/// All views borrow the host's buffers and are valid only during the `application` call
/// (PEP 3333 §"environ Variables"). The CGI names are given on each field.
#[repr(C)]
#[derive(StableAbi)]
pub struct Environ<'a> {
    /// `REQUEST_METHOD`: the method token, case preserved (RFC 9110 §9.1).
    pub request_method: RStr<'a>,
    /// `SCRIPT_NAME`: the part of the path that selected this application, e.g. `/ctime.py`.
    /// Never ends in `/` unless it is empty.
    pub script_name: RStr<'a>,
    /// `PATH_INFO`: the rest of the path after `SCRIPT_NAME`, **percent-decoded** bytes
    /// (`%2F` becomes `/`), empty or starting with `/`.
    pub path_info: RSlice<'a, u8>,
    /// `QUERY_STRING`: the raw bytes after the first `?` of the request target, not decoded,
    /// without a fragment. Empty when there is none.
    pub query_string: RSlice<'a, u8>,
    /// The request target exactly as received (RFC 9112 §3.2), like uWSGI's `REQUEST_URI`.
    pub request_target: RSlice<'a, u8>,
    /// `SERVER_PROTOCOL`: `"HTTP/1.1"` or `"HTTP/1.0"`.
    pub server_protocol: RStr<'a>,
    /// `SERVER_NAME`: the host from the `Host` field (or the absolute-form target),
    /// without a port; the listening address when the request has none.
    pub server_name: RStr<'a>,
    /// `SERVER_PORT`: the port of the listening socket.
    pub server_port: u16,
    /// `REMOTE_ADDR`: the peer's IP address in text form (`127.0.0.1`, `::1`).
    pub remote_addr: RStr<'a>,
    /// `REMOTE_PORT`: the peer's TCP port.
    pub remote_port: u16,
    /// `wsgi.url_scheme`: `"http"` (or `"https"` behind a TLS terminator, later).
    pub url_scheme: RStr<'a>,
    /// `CONTENT_TYPE`: the `Content-Type` field value, empty if absent.
    pub content_type: RSlice<'a, u8>,
    /// `CONTENT_LENGTH`: the declared body length in bytes; `None` for a chunked body or
    /// no body. The input stream is the authority on the body's end.
    pub content_length: ROption<u64>,
    /// The request header fields in the order received, repeats kept as separate entries
    /// (the `HTTP_*` variables of PEP 3333, without CGI's renaming). Trailer fields of a
    /// chunked body are not included.
    pub headers: RSlice<'a, Field<'a>>,
    /// Further environ keys, `name = value`, added by newer hosts without a layout change.
    pub extra: RSlice<'a, Field<'a>>,
    /// `wsgi.input`: the request body, de-chunked. See [`Input`].
    pub input: Input_TO<'a, RMut<'a, ()>>,
    /// `wsgi.errors`: a stream into the host's log, tagged with the plugin's name.
    pub errors: ErrorStream_TO<'a, RMut<'a, ()>>,
}

/// `wsgi.input`: the request body stream (PEP 3333 §"Input and Error Streams").
#[sabi_trait]
pub trait Input {
    /// Reads up to `buf.len()` bytes of the (de-chunked) body into `buf`.
    ///
    /// Returns `Ok(0)` at the end of the body, and on every read after it. By default the
    /// host has read the whole body before the call (request buffering), so this never waits
    /// on the network. On a mount with `request_buffering = false` it may block until the
    /// client sends more, and the first read of a request that carried
    /// `Expect: 100-continue` makes the host send `100 Continue` (RFC 9110 §10.1.1).
    ///
    /// # Errors
    /// The client stopped sending (timeout), disconnected, or sent a malformed chunked body.
    /// The message is for logs; the host closes the connection after the response.
    #[sabi(last_prefix_field)]
    fn read(&mut self, buf: RSliceMut<'_, u8>) -> RResult<usize, RString>;
}

/// `wsgi.errors`: a line-oriented stream into the host's log.
#[sabi_trait]
pub trait ErrorStream {
    /// Writes one message to the host's error log, tagged with the plugin's name.
    #[sabi(last_prefix_field)]
    fn write(&mut self, msg: RStr<'_>);
}

/// PEP 3333's `start_response` callable, implemented by the host, or by a middleware that
/// edits the response of the next application (the SDK's [`crate::Next::call_with_headers`]).
#[sabi_trait]
pub trait StartResponse {
    /// Sets the response status and header fields.
    ///
    /// `status` is a status line without the version: three digits, a space and a reason
    /// phrase, e.g. `"200 OK"` (PEP 3333; RFC 9112 §4). Field names must be tokens and
    /// values must not contain CR, LF or NUL. A second call is allowed only with `exc_info`
    /// set, before the first body byte is sent, and replaces the first (PEP 3333
    /// §"The start_response() Callable"). Hop-by-hop fields (`Connection`, `Keep-Alive`,
    /// `Transfer-Encoding`, ...) belong to the host and are refused.
    ///
    /// # Errors
    /// The status or a field is invalid, or this is a second call without `exc_info`. The
    /// host then answers `500 Internal Server Error` whatever the application returns.
    #[sabi(last_prefix_field)]
    fn start_response(
        &mut self,
        status: RStr<'_>,
        headers: RSlice<'_, Field<'_>>,
        exc_info: ROption<RStr<'_>>,
    ) -> RResult<(), RString>;
}

/// Tells the host that a push stream has something for it: implemented by the host, kept by
/// the plugin (clone it freely; it may be called from any thread, at any time, any number of
/// times — a wake with nothing new costs one spurious poll).
#[sabi_trait]
pub trait Wake: Clone + Send + Sync + 'static {
    /// The stream has data, has ended or has failed: the host polls it again soon.
    #[sabi(last_prefix_field)]
    fn wake(&self);
}

/// The host's waker handed to [`BodyStream::poll_chunk`].
pub type Waker = Wake_TO<RArc<()>>;

/// What [`BodyStream::poll_chunk`] has for the host.
#[repr(u8)]
#[derive(StableAbi)]
#[sabi(kind(WithNonExhaustive(size = [usize; 12], align = usize, traits(Sync = false))))]
#[non_exhaustive]
pub enum Chunk {
    /// The next bytes of the body (an empty one is skipped).
    Data(RVec<u8>),
    /// Nothing yet: the host keeps the stream, with no thread waiting on it, until the
    /// plugin calls the waker it was given.
    Pending,
    /// The body is complete.
    End,
}

/// A response body produced in chunks (PEP 3333's iterable), pulled by the host.
///
/// The host calls [`BodyStream::poll_chunk`] from a worker thread, never concurrently, until it
/// returns [`Chunk::End`] or an error. A stream that has nothing yet answers
/// [`Chunk::Pending`] and calls the [`Waker`] when it has (a push stream: server-sent events,
/// long polling, a slow generator): no worker waits meanwhile. A stream that computes its
/// chunks (an iterator) just returns them. Dropping the stream is PEP 3333's `close()`: the
/// host drops it, on a worker, when the response ends, also when the client disconnected
/// first.
#[sabi_trait]
pub trait BodyStream: Send {
    /// The next chunk, [`Chunk::Pending`] (then `waker` is called when there is more), or
    /// [`Chunk::End`].
    ///
    /// # Errors
    /// The application failed mid-body. The host has already sent the head, so it closes the
    /// connection (the client sees a truncated body) and logs the message.
    #[sabi(last_prefix_field)]
    fn poll_chunk(&mut self, waker: &Waker) -> RResult<Chunk_NE, RString>;
}

/// A file the host sends as the body with `sendfile(2)` (PEP 3333's `wsgi.file_wrapper`):
/// `len` bytes from byte `offset` of an open descriptor, which the body owns (the host closes
/// it when the response is done; dropping the body unsent closes it too). Made with
/// [`FileBody::new`] from a [`std::fs::File`].
#[repr(C)]
#[derive(StableAbi)]
pub struct FileBody {
    fd: i32,
    offset: u64,
    len: u64,
}

impl FileBody {
    /// The `len` bytes of `file` from `offset`. The host sends what the file holds when it
    /// sends it: a file that shrinks meanwhile cuts the response short (the connection is
    /// closed).
    #[cfg(unix)]
    pub fn new(file: std::fs::File, offset: u64, len: u64) -> FileBody {
        use std::os::fd::IntoRawFd;
        FileBody { fd: file.into_raw_fd(), offset, len }
    }

    /// The first byte to send.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// How many bytes to send.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file, for its new owner.
    #[cfg(unix)]
    pub fn into_file(self) -> std::fs::File {
        use std::os::fd::FromRawFd;
        let fd = self.fd;
        std::mem::forget(self);
        // SAFETY: `fd` came from `File::into_raw_fd` in `FileBody::new` (the fields are
        // private, so no other constructor exists), and this body owned it alone: it is
        // forgotten above, so its `Drop` will not close the descriptor a second time.
        unsafe { std::fs::File::from_raw_fd(fd) }
    }
}

impl Drop for FileBody {
    fn drop(&mut self) {
        #[cfg(unix)]
        {
            use std::os::fd::FromRawFd;
            // SAFETY: as in `into_file`: the descriptor is this body's alone; dropping the
            // `File` closes it once.
            drop(unsafe { std::fs::File::from_raw_fd(self.fd) });
        }
    }
}

impl std::fmt::Debug for FileBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBody").field("offset", &self.offset).field("len", &self.len).finish()
    }
}

/// What an application returns: the response body (PEP 3333's return value). It crosses the
/// boundary as [`Body_NE`] (`NonExhaustive`), so 0.2.x may add variants.
#[repr(u8)]
#[derive(StableAbi)]
#[sabi(kind(WithNonExhaustive(size = [usize; 8], align = usize, traits(Sync = false))))]
#[non_exhaustive]
pub enum Body {
    /// No body.
    Empty,
    /// A complete body in one buffer, allocated by the plugin.
    Bytes(RVec<u8>),
    /// A complete body in the plugin's static data (plugins are never unloaded).
    Static(RSlice<'static, u8>),
    /// A body produced chunk by chunk; see [`BodyStream`].
    Stream(BodyStream_TO<'static, RBox<()>>),
    /// A file sent without copying; see [`FileBody`].
    File(FileBody),
}

/// The next application in a pipeline, as a middleware plugin sees it (PEP 3333
/// §"Middleware: Components that Play Both Sides"): the middleware calls it with an environ
/// (possibly modified) and a `start_response` of its own (possibly wrapping the one it was
/// given), and may wrap the body it returns. Implemented by the host (and by the SDK for a
/// middleware mounted alone, and in [`crate::testing`]).
#[sabi_trait]
pub trait NextApplication {
    /// Calls the next application.
    #[sabi(last_prefix_field)]
    fn call(&self, environ: &mut Environ<'_>, start_response: StartResponse_TO<'_, RMut<'_, ()>>) -> Body_NE;
}

/// The signature of a plugin's `application` entry point.
///
/// The host calls it on a worker thread, possibly on many threads at once, so plugin state
/// must be `Sync`. It must call `start_response` exactly once (or again with `exc_info`)
/// before returning.
pub type ApplicationFn = extern "C" fn(&mut Environ<'_>, StartResponse_TO<'_, RMut<'_, ()>>) -> Body_NE;

/// The root module every plugin exports (one per `.so`), checked by the host at load time.
///
/// **Growth:** fields are appended after [`PluginMod::middleware`], which carries
/// `last_prefix_field` and never moves within 0.2.x; each new field is one a plugin may leave
/// out (an `ROption` left `RNone`, or a flag left `false`), and its accessor gives `None` for
/// a plugin built before it. New request
/// facts go in [`Environ::extra`].
///
/// **Grown in 0.2.1** for language bridges such as the `wsgi` plugin
/// (`shared/research/python-bridge.md` §8): [`PluginMod::setup`] (the table with the
/// directory its relative paths are relative to), [`PluginMod::reload`] (SIGHUP for a plugin
/// whose file and table did not change) and [`PluginMod::serves_script`] (`/NAME.py` for
/// scripts it finds itself). What the bridge needs beyond these is already the host's or the
/// plugin's: the per-application concurrency cap (a mount's `max_concurrency`), "failed before
/// or after the head" (an error before the head is a `500`, a stream error after it closes the
/// connection), a late head (the plugin runs the iterable until its first non-empty chunk
/// before it returns, so `start_response` may come from inside the iterable), and per-thread
/// state (the host's worker threads live as long as the process).
///
/// **Grown in 0.2.2**: [`PluginMod::never_blocks`], a plugin's promise that lets the host
/// call it on the event loop.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginMod_Ref)))]
#[sabi(missing_field(option))]
pub struct PluginMod {
    /// The plugin's own name (for logs; routing uses the file name).
    pub name: RStr<'static>,
    /// The plugin's own version, free-form (usually its crate version).
    pub version: RStr<'static>,
    /// `cfg!(panic = "unwind")` in the plugin. The host refuses `false`: a plugin built with
    /// `panic = "abort"` would take the whole server down on its first panic.
    pub panic_unwind: bool,
    /// PEP 3333's application callable. Written out rather than as [`ApplicationFn`] because
    /// the `StableAbi` derive does not accept type aliases of fn pointers.
    pub application: extern "C" fn(&mut Environ<'_>, StartResponse_TO<'_, RMut<'_, ()>>) -> Body_NE,
    /// Called once per loaded copy of the plugin, before its first request, with the
    /// plugin's configuration as TOML text (the `[plugin.NAME]` table; empty when there is
    /// none). An `RErr` refuses this version of the plugin (the previous one keeps serving);
    /// its message is shown to the operator. A configuration change makes the host load a
    /// fresh copy of the library (fresh statics) and call its `init`. `RNone`: nothing to set
    /// up.
    pub init: ROption<extern "C" fn(RStr<'_>) -> RResult<(), RString>>,
    /// Middleware entry point: like `application`, and handed the next application of the
    /// pipeline. `RNone` for a plain application. The host calls it for a plugin listed as
    /// middleware in a mount's pipeline, with a [`NextApplication`] that runs the rest of the
    /// pipeline; a middleware plugin mounted alone is called through `application` instead
    /// (the SDK then runs the middleware with a next application that answers 404).
    #[sabi(last_prefix_field)]
    pub middleware: ROption<
        extern "C" fn(
            &mut Environ<'_>,
            StartResponse_TO<'_, RMut<'_, ()>>,
            NextApplication_TO<'_, RRef<'_, ()>>,
        ) -> Body_NE,
    >,
    /// Since 0.2.1. Like `init`, with what a plugin needs to find its files: the host calls
    /// it **instead of** `init` when both are given. See [`Setup`]. `RNone` (and every plugin
    /// built before 0.2.1): `init` is called.
    pub setup: ROption<extern "C" fn(&Setup<'_>) -> RResult<(), RString>>,
    /// Since 0.2.1. Called on SIGHUP, in the process that keeps serving this copy, when
    /// neither the plugin's file nor its table changed (a changed one is loaded afresh
    /// instead): a bridge re-reads the code it runs (a Python application's modules). An
    /// `RErr` is logged and the plugin goes on serving what it served. It may run while
    /// requests are in flight on other threads. `RNone`: nothing to refresh.
    pub reload: ROption<extern "C" fn() -> RResult<(), RString>>,
    /// Since 0.2.1. Whether this plugin serves `/NAME.py` for a `NAME` that no loaded plugin
    /// has (a script it finds itself, e.g. `DIR/NAME.py` of the `wsgi` plugin's `scripts`).
    /// The host asks on the event loop, for each such request and at each table build (to warn
    /// about a compiled plugin that hides a script), so it must answer at once, without
    /// blocking on anything but a local file's metadata, and must not panic. A request it
    /// claims runs through the plugin's mount (its middleware and limits), or as `/SELF.py`
    /// when it is not mounted, with `SCRIPT_NAME = /NAME.py` and the environ key
    /// `portico.script = NAME` ([`Environ::extra`]). `RNone`: no scripts.
    pub serves_script: ROption<extern "C" fn(RStr<'_>) -> bool>,
    /// Since 0.2.2. The plugin promises that its `application` (and `middleware`) never
    /// blocks: no sleeping, no waiting on a lock another request holds, no network or disk
    /// reads beyond a local file's metadata, and a call takes microseconds, not milliseconds.
    /// The host may then call it on the event loop that read the request, skipping the hop to
    /// a worker thread and back (a request with a body still goes to a worker). The host
    /// checks the promise: a call that runs longer than `--inline-timeout` (20 ms by default)
    /// has its event loop handed to a fresh thread at once, so other connections wait at
    /// most about twice that long (the calls before it in the loop's batch, then it), and
    /// from then on every call of the plugin goes to a worker thread
    /// (logged once). `false`, and every plugin built before 0.2.2: calls go to worker threads.
    pub never_blocks: bool,
}

/// What [`PluginMod::setup`] is given: the plugin's table and facts about the host that
/// shape it (PEP 3333's `wsgi.multithread` and `wsgi.multiprocess`).
#[repr(C)]
#[derive(StableAbi)]
pub struct Setup<'a> {
    /// The `[plugin.NAME]` table as TOML text; empty when there is none.
    pub config: RStr<'a>,
    /// The directory relative paths in the table are relative to: the configuration file's,
    /// or the server's working directory when there is no file. Absolute, UTF-8 (lossy).
    pub config_dir: RStr<'a>,
    /// Further facts, `name = value` (decimal numbers as text), added by newer hosts without
    /// a layout change. 0.2.1 gives `worker_threads` (the threads that may call the plugin at
    /// once in one process) and `worker_processes` (processes that each load the plugin; `1`
    /// for `--workers 0`).
    pub extra: RSlice<'a, Field<'a>>,
}

impl<'a> Setup<'a> {
    /// The value of fact `name` in [`Setup::extra`], if given.
    pub fn fact(&self, name: &str) -> Option<&'a str> {
        self.extra.as_slice().iter().find(|f| f.is(name)).and_then(|f| std::str::from_utf8(f.value.as_slice()).ok())
    }
}

impl RootModule for PluginMod_Ref {
    declare_root_module_statics! {PluginMod_Ref}
    const BASE_NAME: &'static str = "portico_plugin";
    const NAME: &'static str = "portico plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
