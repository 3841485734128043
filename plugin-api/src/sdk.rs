//! The SDK: what a plugin author uses on top of the raw [`crate::abi`] types.
//!
//! Owns the panic fence ([`guard`]), the [`Application`] trait behind [`crate::export_app!`],
//! the [`StartResponse`] wrapper, the [`Environ`] accessors, [`Response`] and [`status`] (the
//! [`Body`] constructors are in `body.rs`). It does no I/O of its own: everything goes through
//! the host's trait objects.

use std::borrow::Cow;
use std::fmt;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::sabi_types::RMut;
use abi_stable::std_types::{RNone, RResult, RSlice, RSome, RStr, RString};

use crate::abi::{Body, Environ, Field, StartResponse_TO};

/// A Portico application: PEP 3333's application callable.
///
/// Implemented for every `Fn(&mut Environ, &mut StartResponse) -> Body` that is
/// `Send + Sync`, so a plain function or a closure is an application. The host calls it from
/// several worker threads at once.
pub trait Application: Send + Sync + 'static {
    /// Handles one request: calls `start_response` once, then returns the body.
    fn call(&self, environ: &mut Environ<'_>, start_response: &mut StartResponse<'_, '_>) -> Body;
}

impl<F> Application for F
where
    F: Fn(&mut Environ<'_>, &mut StartResponse<'_, '_>) -> Body + Send + Sync + 'static,
{
    fn call(&self, environ: &mut Environ<'_>, start_response: &mut StartResponse<'_, '_>) -> Body {
        self(environ, start_response)
    }
}

/// Why `start_response` refused a status or field; the host then answers 500.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StartResponseError {
    /// The host's reason, for logs.
    pub reason: String,
}

impl fmt::Display for StartResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "start_response refused: {}", self.reason)
    }
}

impl std::error::Error for StartResponseError {}

/// PEP 3333's `start_response` callable, as handed to an [`Application`].
///
/// Two lifetimes because the host's trait object is invariant in its pointer lifetime.
pub struct StartResponse<'a, 'b> {
    inner: StartResponse_TO<'a, RMut<'b, ()>>,
    called: bool,
}

impl<'a, 'b> StartResponse<'a, 'b> {
    /// Wraps the host's `start_response` object.
    pub fn new(inner: StartResponse_TO<'a, RMut<'b, ()>>) -> Self {
        StartResponse { inner, called: false }
    }

    /// Whether `start_response` has been called successfully, by this application or, for a
    /// middleware, by the next application it handed this `start_response` to
    /// ([`Next::call`](crate::Next::call)).
    pub fn called(&self) -> bool {
        self.called
    }

    /// The host's (or the outer middleware's) trait object, for handing on to the next
    /// application.
    pub(crate) fn raw_mut(&mut self) -> &mut StartResponse_TO<'a, RMut<'b, ()>> {
        &mut self.inner
    }

    /// Records that the next application called `start_response` successfully through us.
    pub(crate) fn mark_called(&mut self) {
        self.called = true;
    }

    /// Sets the status (e.g. `"200 OK"`, see [`status`]) and header fields.
    ///
    /// Errors are not returned: an invalid status or field makes the host answer `500` and
    /// log why, whatever the application does next. Use [`StartResponse::try_start`] to see the
    /// error.
    pub fn start(&mut self, status: &str, headers: &[(&str, &str)]) {
        let _ = self.try_start(status, headers);
    }

    /// Like [`StartResponse::start`], returning the host's verdict.
    ///
    /// # Errors
    /// The status line or a field is invalid (RFC 9110 §5.5: no CR, LF or NUL in values; names
    /// are tokens), a field is hop-by-hop, or this is a second call without `exc_info`.
    pub fn try_start(&mut self, status: &str, headers: &[(&str, &str)]) -> Result<(), StartResponseError> {
        self.call(status, headers, None)
    }

    /// A second (or first) call carrying error information, as PEP 3333's `exc_info`: replaces
    /// the status and fields set so far. Allowed until the first body byte is sent, which in
    /// Portico is always true while the application runs.
    ///
    /// # Errors
    /// As [`StartResponse::try_start`].
    pub fn start_with_exc_info(
        &mut self,
        status: &str,
        headers: &[(&str, &str)],
        exc_info: &str,
    ) -> Result<(), StartResponseError> {
        self.call(status, headers, Some(exc_info))
    }

    fn call(
        &mut self,
        status: &str,
        headers: &[(&str, &str)],
        exc_info: Option<&str>,
    ) -> Result<(), StartResponseError> {
        // A small stack buffer covers typical responses without allocating.
        let mut small: [Field<'_>; 8] = [Field::new("", ""); 8];
        let owned: Vec<Field<'_>>;
        let fields: &[Field<'_>] = if headers.len() <= small.len() {
            for (slot, (name, value)) in small.iter_mut().zip(headers) {
                *slot = Field::new(name, value);
            }
            &small[..headers.len()]
        } else {
            owned = headers.iter().map(|(n, v)| Field::new(n, v)).collect();
            &owned
        };
        let exc = match exc_info {
            Some(e) => RSome(RStr::from_str(e)),
            None => RNone,
        };
        match self.inner.start_response(RStr::from_str(status), RSlice::from_slice(fields), exc) {
            RResult::ROk(()) => {
                self.called = true;
                Ok(())
            }
            RResult::RErr(reason) => Err(StartResponseError { reason: reason.into_string() }),
        }
    }
}

/// Reading the whole body failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyError {
    /// The body is longer than the limit given, in bytes.
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The host's input stream failed (client gone, timeout, malformed chunked body).
    Input(String),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::TooLarge { limit } => write!(f, "request body larger than {limit} bytes"),
            BodyError::Input(msg) => write!(f, "reading the request body failed: {msg}"),
        }
    }
}

impl std::error::Error for BodyError {}

impl<'a> Environ<'a> {
    /// `REQUEST_METHOD`, case preserved.
    pub fn method(&self) -> &str {
        self.request_method.as_str()
    }

    /// `PATH_INFO` as text; invalid UTF-8 sequences become U+FFFD. See
    /// [`Environ::path_info`](crate::abi::Environ::path_info) for the raw bytes.
    pub fn path_info(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.path_info.as_slice())
    }

    /// `QUERY_STRING` as text (raw, not percent-decoded).
    pub fn query_string(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.query_string.as_slice())
    }

    /// The query string's `name=value` pairs, percent-decoded as
    /// `application/x-www-form-urlencoded` (`+` is a space).
    pub fn query_pairs(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
        form_urlencoded::parse(self.query_string.as_slice())
    }

    /// The first value of `name` in the query string, decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }

    /// The value of the first header field named `name` (ASCII case-insensitive), if it is
    /// valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_bytes(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The raw value of the first header field named `name` (ASCII case-insensitive).
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|f| f.is(name)).map(|f| f.value.as_slice())
    }

    /// The raw values of every header field named `name` (ASCII case-insensitive), in the
    /// order received. A field sent on several lines (`X-Forwarded-For`, `Forwarded`) is one
    /// comma-separated list in this order (RFC 9110 §5.3).
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.headers.iter().filter(move |f| f.is(name)).map(|f| f.value.as_slice())
    }

    /// A further environ key from [`Environ::extra`](crate::abi::Environ::extra).
    pub fn extra(&self, key: &str) -> Option<&[u8]> {
        self.extra.iter().find(|f| f.name.as_slice() == key.as_bytes()).map(|f| f.value.as_slice())
    }

    /// `wsgi.input.read`: reads body bytes into `buf`; `Ok(0)` at the end.
    ///
    /// # Errors
    /// See [`Input::read`](crate::abi::Input::read).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, BodyError> {
        match self.input.read(buf.into()) {
            RResult::ROk(n) => Ok(n),
            RResult::RErr(e) => Err(BodyError::Input(e.into_string())),
        }
    }

    /// Reads the whole request body, refusing more than `limit` bytes.
    ///
    /// # Errors
    /// [`BodyError::TooLarge`] past `limit` bytes (the rest stays unread: answer 413 and the
    /// host closes the connection); [`BodyError::Input`] if the input stream fails.
    pub fn read_body(&mut self, limit: usize) -> Result<Vec<u8>, BodyError> {
        let hint = self.content_length.into_option().unwrap_or(0).min(limit as u64) as usize;
        let mut body = Vec::with_capacity(hint);
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = self.read(&mut buf)?;
            if n == 0 {
                return Ok(body);
            }
            if body.len() + n > limit {
                return Err(BodyError::TooLarge { limit });
            }
            body.extend_from_slice(&buf[..n]);
        }
    }

    /// `wsgi.errors.write`: one message into the host's log, tagged with the plugin's name.
    pub fn log(&mut self, msg: &str) {
        self.errors.write(RStr::from_str(msg));
    }
}

/// Fields an application may not set: hop-by-hop fields belong to the connection, and so to
/// the server (PEP 3333 §"Other HTTP Features"; RFC 9110 §7.6.1). `Content-Length` is allowed
/// (the host frames the body by it). Lower case.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` is a hop-by-hop field ([`HOP_BY_HOP`], ASCII case-insensitively): the host's
/// `start_response` refuses it.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// A response built in one expression: status, fields and body, then [`Response::send`].
///
/// ```
/// # use portico_api::{Response, status};
/// let r = Response::new(status::NOT_FOUND).header("Content-Type", "text/plain").body("no such page\n");
/// assert_eq!(r.status(), "404 Not Found");
/// ```
pub struct Response {
    status: Cow<'static, str>,
    headers: Vec<(Cow<'static, str>, Cow<'static, str>)>,
    body: Body,
}

impl Response {
    /// A response with `status` (e.g. [`status::OK`]), no fields and an empty body.
    pub fn new(status: impl Into<Cow<'static, str>>) -> Self {
        Response { status: status.into(), headers: Vec::new(), body: Body::Empty }
    }

    /// The status line given to [`Response::new`].
    pub fn status(&self) -> &str {
        &self.status
    }

    /// Appends a field.
    pub fn header(mut self, name: impl Into<Cow<'static, str>>, value: impl Into<Cow<'static, str>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Body>) -> Self {
        self.body = body.into();
        self
    }

    /// Calls `start_response` with the status and fields and returns the body.
    pub fn send(self, start_response: &mut StartResponse<'_, '_>) -> Body {
        let fields: Vec<(&str, &str)> = self.headers.iter().map(|(n, v)| (&**n, &**v)).collect();
        start_response.start(&self.status, &fields);
        self.body
    }
}

/// Status lines for [`StartResponse::start`] (RFC 9110 §15), and [`status::line`] for any code.
pub mod status {
    /// `200 OK`
    pub const OK: &str = "200 OK";
    /// `201 Created`
    pub const CREATED: &str = "201 Created";
    /// `204 No Content`
    pub const NO_CONTENT: &str = "204 No Content";
    /// `301 Moved Permanently`
    pub const MOVED_PERMANENTLY: &str = "301 Moved Permanently";
    /// `302 Found`
    pub const FOUND: &str = "302 Found";
    /// `304 Not Modified`
    pub const NOT_MODIFIED: &str = "304 Not Modified";
    /// `400 Bad Request`
    pub const BAD_REQUEST: &str = "400 Bad Request";
    /// `403 Forbidden`
    pub const FORBIDDEN: &str = "403 Forbidden";
    /// `404 Not Found`
    pub const NOT_FOUND: &str = "404 Not Found";
    /// `405 Method Not Allowed`
    pub const METHOD_NOT_ALLOWED: &str = "405 Method Not Allowed";
    /// `413 Content Too Large`
    pub const CONTENT_TOO_LARGE: &str = "413 Content Too Large";
    /// `500 Internal Server Error`
    pub const INTERNAL_SERVER_ERROR: &str = "500 Internal Server Error";
    /// `503 Service Unavailable`
    pub const SERVICE_UNAVAILABLE: &str = "503 Service Unavailable";

    /// The reason phrase RFC 9110 §15 gives `code`, or `""` for an unregistered code.
    pub fn reason(code: u16) -> &'static str {
        match code {
            100 => "Continue",
            101 => "Switching Protocols",
            200 => "OK",
            201 => "Created",
            202 => "Accepted",
            203 => "Non-Authoritative Information",
            204 => "No Content",
            205 => "Reset Content",
            206 => "Partial Content",
            300 => "Multiple Choices",
            301 => "Moved Permanently",
            302 => "Found",
            303 => "See Other",
            304 => "Not Modified",
            307 => "Temporary Redirect",
            308 => "Permanent Redirect",
            400 => "Bad Request",
            401 => "Unauthorized",
            402 => "Payment Required",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            406 => "Not Acceptable",
            407 => "Proxy Authentication Required",
            408 => "Request Timeout",
            409 => "Conflict",
            410 => "Gone",
            411 => "Length Required",
            412 => "Precondition Failed",
            413 => "Content Too Large",
            414 => "URI Too Long",
            415 => "Unsupported Media Type",
            416 => "Range Not Satisfiable",
            417 => "Expectation Failed",
            421 => "Misdirected Request",
            422 => "Unprocessable Content",
            426 => "Upgrade Required",
            428 => "Precondition Required",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            505 => "HTTP Version Not Supported",
            _ => "",
        }
    }

    /// `"<code> <reason>"`, e.g. `line(404) == "404 Not Found"`.
    pub fn line(code: u16) -> String {
        format!("{code} {}", reason(code))
    }
}

/// The panic fence: every entry point the host calls runs inside `catch_unwind` here, so a
/// panic never unwinds across the boundary (which would abort the host: see
/// `shared/research/plugin-abi.md` Q4).
pub mod guard {
    use super::*;
    use crate::abi::NextApplication_TO;
    use crate::middleware::{Middleware, Next};
    use abi_stable::sabi_types::RRef;
    use std::any::Any;
    use std::cell::{Cell, RefCell};
    use std::panic::{self, AssertUnwindSafe};
    use std::sync::Once;

    thread_local! {
        static IN_FENCE: Cell<bool> = const { Cell::new(false) };
        static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    /// Installs (once per plugin) a panic hook that, inside the fence, keeps the message and
    /// location for the host's log instead of printing to stderr; outside it (threads the
    /// plugin spawned itself) it defers to the previous hook.
    fn install_hook() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            let previous = panic::take_hook();
            panic::set_hook(Box::new(move |info| {
                if IN_FENCE.with(Cell::get) {
                    let msg = payload_text(info.payload());
                    let text = match info.location() {
                        Some(loc) => format!("{msg} at {}:{}", loc.file(), loc.line()),
                        None => msg,
                    };
                    LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
                } else {
                    previous(info);
                }
            }));
        });
    }

    fn payload_text(payload: &(dyn Any + Send)) -> String {
        if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "non-string panic payload".to_owned()
        }
    }

    /// Runs `f` with panics caught; on a panic returns the message (with its location).
    pub(crate) fn fenced<T>(f: impl FnOnce() -> T) -> Result<T, String> {
        install_hook();
        LAST_PANIC.with(|p| p.borrow_mut().take());
        let outer = IN_FENCE.with(|c| c.replace(true));
        let result = panic::catch_unwind(AssertUnwindSafe(f));
        IN_FENCE.with(|c| c.set(outer));
        result.map_err(|payload| {
            let text = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| payload_text(&*payload));
            // A payload whose Drop panics must not unwind out of here either.
            let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
            text
        })
    }

    /// Builds an application once, inside the fence. [`crate::export_app!`] keeps the
    /// result: a constructor that panics is not retried on every request (each request then
    /// gets a 500 and the log says why). Heavy setup belongs in the plugin's `init`.
    ///
    /// # Errors
    /// The constructor panicked: the panic message, with its location.
    pub fn build<A: Application>(f: impl FnOnce() -> A) -> Result<Box<dyn Application>, String> {
        fenced(|| Box::new(f()) as Box<dyn Application>)
            .map_err(|panic| format!("building the application panicked: {panic}"))
    }

    /// Runs an application inside the fence. [`crate::export_app!`] calls this; a plugin
    /// author does not need to.
    ///
    /// On a panic, in the application or in building it, the message goes to the host's log
    /// through `wsgi.errors`, `start_response` is called again with `exc_info` and status
    /// `500 Internal Server Error`, and a short body is returned.
    pub fn run(
        environ: &mut Environ<'_>,
        start_response: StartResponse_TO<'_, RMut<'_, ()>>,
        app: &Result<Box<dyn Application>, String>,
    ) -> Body {
        run_with(environ, start_response, app.as_deref().map_err(String::as_str))
    }

    /// [`run`] for a borrowed application (`Err`: why it could not be built).
    pub(crate) fn run_with(
        environ: &mut Environ<'_>,
        start_response: StartResponse_TO<'_, RMut<'_, ()>>,
        app: Result<&dyn Application, &str>,
    ) -> Body {
        run_fenced(
            environ,
            start_response,
            "application",
            app.map(|app| move |env: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>| app.call(env, sr)),
        )
    }

    /// Builds a middleware once, inside the fence: [`build`] for [`Middleware`]s.
    ///
    /// # Errors
    /// The constructor panicked: the panic message, with its location.
    pub fn build_middleware<M: Middleware>(f: impl FnOnce() -> M) -> Result<Box<dyn Middleware>, String> {
        fenced(|| Box::new(f()) as Box<dyn Middleware>)
            .map_err(|panic| format!("building the middleware panicked: {panic}"))
    }

    /// Runs a middleware inside the fence, handing it the host's next application.
    /// [`crate::export_app!`] calls this for the `middleware` entry point.
    ///
    /// A panic is handled as in [`run`]: logged, and a `500` through `exc_info`. A middleware
    /// that could not be built answers `500` to every request: it fails closed, it never lets
    /// requests through unfiltered.
    pub fn run_middleware(
        environ: &mut Environ<'_>,
        start_response: StartResponse_TO<'_, RMut<'_, ()>>,
        next: NextApplication_TO<'_, RRef<'_, ()>>,
        middleware: &Result<Box<dyn Middleware>, String>,
    ) -> Body {
        run_middleware_with(environ, start_response, next, middleware.as_deref().map_err(String::as_str))
    }

    /// [`run_middleware`] for a borrowed middleware (`Err`: why it could not be built).
    pub(crate) fn run_middleware_with(
        environ: &mut Environ<'_>,
        start_response: StartResponse_TO<'_, RMut<'_, ()>>,
        next: NextApplication_TO<'_, RRef<'_, ()>>,
        mw: Result<&dyn Middleware, &str>,
    ) -> Body {
        // The host's object has two lifetimes; a reborrow gives one `Next<'_>` can hold.
        let next = Next::new(next.sabi_reborrow());
        run_fenced(
            environ,
            start_response,
            "middleware",
            mw.map(|mw| {
                let next = &next;
                move |env: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>| mw.call(env, sr, next)
            }),
        )
    }

    /// Runs a middleware plugin that the host called as a plain application (its
    /// `application` entry point): the middleware runs with a next application that answers
    /// `404 Not Found`. So a filter still refuses what it refuses, and what it lets through
    /// finds nothing. The first such call of each loaded plugin logs a line saying the
    /// plugin is a middleware. [`crate::export_app!`] calls this.
    pub fn run_middleware_as_app(
        environ: &mut Environ<'_>,
        start_response: StartResponse_TO<'_, RMut<'_, ()>>,
        middleware: &Result<Box<dyn Middleware>, String>,
    ) -> Body {
        run_middleware_as_app_with(environ, start_response, middleware.as_deref().map_err(String::as_str))
    }

    /// [`run_middleware_as_app`] for a borrowed middleware.
    pub(crate) fn run_middleware_as_app_with(
        environ: &mut Environ<'_>,
        start_response: StartResponse_TO<'_, RMut<'_, ()>>,
        middleware: Result<&dyn Middleware, &str>,
    ) -> Body {
        static WARNED: Once = Once::new();
        WARNED.call_once(|| {
            environ.log(
                "this plugin is a middleware called as an application: requests it lets through get \
                 404 Not Found (list it as middleware in a pipeline in front of an application)",
            );
        });
        let no_next = crate::middleware::NotFoundNext;
        let next = NextApplication_TO::from_ptr(&no_next, TD_Opaque);
        run_middleware_with(environ, start_response, next, middleware)
    }

    /// The fence around one call of an application or middleware; `Err` is a build failure
    /// kept from [`build`], handled like a panic.
    fn run_fenced<F>(
        environ: &mut Environ<'_>,
        start_response: StartResponse_TO<'_, RMut<'_, ()>>,
        what: &str,
        f: Result<F, &str>,
    ) -> Body
    where
        F: FnOnce(&mut Environ<'_>, &mut StartResponse<'_, '_>) -> Body,
    {
        let mut sr = StartResponse::new(start_response);
        let outcome = match f {
            Ok(f) => fenced(|| f(environ, &mut sr)),
            Err(why) => Err(why.to_owned()),
        };
        match outcome {
            Ok(body) => body,
            Err(msg) => {
                let line = format!("{what} panicked: {msg}");
                environ.log(&line);
                let _ = sr.start_with_exc_info(
                    status::INTERNAL_SERVER_ERROR,
                    &[("Content-Type", "text/plain; charset=utf-8")],
                    &line,
                );
                Body::from("Internal Server Error\n")
            }
        }
    }

    /// Runs a plugin's `init` inside the fence. [`crate::export_app!`] calls this.
    ///
    /// # Errors
    /// The function's own error, or the panic message if it panicked.
    pub fn run_init(config: &str, f: fn(&str) -> Result<(), String>) -> RResult<(), RString> {
        match fenced(|| f(config)) {
            Ok(Ok(())) => RResult::ROk(()),
            Ok(Err(e)) => RResult::RErr(RString::from(e)),
            Err(panic) => RResult::RErr(RString::from(format!("init panicked: {panic}"))),
        }
    }
}
