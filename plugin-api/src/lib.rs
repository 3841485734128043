//! # portico-api: Portico's gateway interface
//!
//! Portico does for compiled Rust applications what WSGI ([PEP 3333]) does for Python: one
//! small, stable interface between the server (the `portico` host) and the application (a
//! plugin: a `cdylib` dropped into `plugins/`), so either side can change without the other.
//! This crate is both halves of that contract:
//!
//! - [`abi`]: the `#[repr(C)]` types that cross the boundary, checked at load time by
//!   [abi_stable]. The host refuses a plugin built against an incompatible `portico-api`.
//! - The SDK (this module's items): [`export_app!`], [`Environ`] accessors, [`StartResponse`],
//!   [`Body`] constructors (complete, iterator, push stream, channel, file), [`Response`] and
//!   [`status`] helpers, [`Middleware`] and [`Next`], a small [`Router`], a [`timer`] for push
//!   streams, the panic fence that keeps a plugin's panic from crossing the boundary, and
//!   [`testing`] for running an application in a unit test without a host.
//! - [`compat`]: the host's load-time check (both directions of growth within 0.2.x).
//!
//! ## PEP 3333, section by section
//!
//! | PEP 3333 | Portico |
//! |---|---|
//! | "The Application/Framework Side": a callable taking `environ, start_response` | a function `fn(&mut Environ, &mut StartResponse) -> Body` (or any [`Application`]) exported with [`export_app!`] |
//! | "The Server/Gateway Side" | the `portico` host: it builds the environ, calls the application on a worker thread, sends the response |
//! | "Middleware: Components that Play Both Sides" | a [`Middleware`] exported with [`export_app!`]'s `middleware:` form ([`abi::PluginMod::middleware`]): handed the next application of the mount's pipeline as [`Next`], it answers by itself or calls it, with its own `start_response` ([`Next::call`]) or one that edits the status and fields ([`Next::call_with_headers`]), and may rewrite the body ([`Body::map_chunks`]) |
//! | "environ Variables" | [`Environ`]: `REQUEST_METHOD`, `SCRIPT_NAME`, `PATH_INFO` (percent-decoded), `QUERY_STRING` (raw), `CONTENT_TYPE`, `CONTENT_LENGTH`, `SERVER_NAME`, `SERVER_PORT`, `SERVER_PROTOCOL`, `REMOTE_ADDR`, `REMOTE_PORT`, `wsgi.url_scheme`; the `HTTP_*` variables are [`Environ::headers`] in order, repeats kept |
//! | "Input and Error Streams" | `wsgi.input` is [`Environ::read`] (de-chunked; `Ok(0)` at the end); `wsgi.errors` is [`Environ::log`], which goes to the host's log |
//! | "The start_response() Callable" | [`StartResponse::start`]: status `"200 OK"`, fields as `(name, value)` pairs; a second call only with `exc_info` ([`StartResponse::start_with_exc_info`]) before the first body byte |
//! | "Buffering and Streaming" | [`Body::Bytes`]/[`Body::Static`] for a complete body (the host sends `Content-Length`); [`Body::stream`] for chunks an iterator computes; [`Body::poll_fn`] and [`Body::channel`] for a body that *waits* for its data (server-sent events, long polling): it answers "not ready" and wakes the host later, holding no worker meanwhile. Streams are chunked on HTTP/1.1, close-delimited on HTTP/1.0, unless the application set `Content-Length` |
//! | the iterable's `close()` | dropping the [`BodyStream`](abi::BodyStream): the host drops it when the response ends, also when the client disconnected |
//! | "Optional Platform-Specific File Handling" (`wsgi.file_wrapper`) | [`Body::file`] / [`Body::file_range`]: the host sends the file with `sendfile(2)` |
//! | "Error Handling" | a panic in the application is caught inside the plugin: the response becomes `500 Internal Server Error` (through `exc_info`) and the panic message goes to the host's log |
//! | "Thread Support" | applications run on a pool of worker threads, concurrently: state must be `Sync` |
//! | hop-by-hop headers are the server's | the host refuses `Connection`, `Keep-Alive`, `Transfer-Encoding`, `TE`, `Trailer`, `Upgrade`, `Proxy-*` from an application |
//!
//! ## Writing a plugin
//!
//! ```no_run
//! use portico_api::{Body, Environ, StartResponse, export_app, status};
//!
//! fn hello(environ: &mut Environ<'_>, start_response: &mut StartResponse<'_, '_>) -> Body {
//!     let who = environ.path_info().trim_start_matches('/').to_owned();
//!     start_response.start(status::OK, &[("Content-Type", "text/plain; charset=utf-8")]);
//!     Body::from(format!("Hello, {}!\n", if who.is_empty() { "world" } else { &who }))
//! }
//!
//! export_app!(name: "hello", version: env!("CARGO_PKG_VERSION"), app: hello);
//! ```
//!
//! A middleware (a plugin that runs in front of applications in a mount's pipeline) is
//! exported the same way with `middleware:` instead of `app:`; see [`export_app!`] and
//! [`Middleware`]. [`Router`] dispatches on method and path; [`testing`] runs an
//! application, a middleware, or a plugin's exported entry points in a unit test.
//!
//! The crate must be a `cdylib`, must list `abi_stable = "0.11"` among its own dependencies
//! (the export macro expands to `::abi_stable` paths), and must be built with
//! `panic = "unwind"` (the default); the host refuses `panic = "abort"` plugins. Install the
//! built `.so` into `plugins/` with a temporary name and `rename` (never `cp` over a file the
//! server may be loading), then `kill -HUP` the server.
//!
//! ## Compatibility rule (measured)
//!
//! The host checks, before running any plugin code, the plugin's `portico-api` version and
//! the layout of every type reachable from its root module:
//! - **Another 0.minor** (a 0.1 plugin in a 0.2 host, or a 0.3 one): refused, with one log
//!   line naming the plugin and both versions (`expected portico-api 0.2.0, found 0.1.0`).
//!   Rebuild the plugin against the host's `portico-api`.
//! - **Within 0.2.x, both directions load**: a host runs plugins built against an earlier
//!   0.2.x ([`compat`]: the plugin's layout is checked as a prefix of the host's) and against
//!   a later one (abi_stable's own rule). The ABI grows only in ways that allow this (see
//!   [`abi`]): fields appended to [`abi::PluginMod`] after its last prefix field, trait
//!   methods with default bodies appended at the end, variants of the `NonExhaustive`
//!   [`abi::Body`] and [`abi::Chunk`], keys in [`abi::Environ::extra`]. A peer that meets
//!   something newer than it knows degrades: a missing field reads as `None`, a missing method
//!   runs its default body, an unknown body variant gets a `500` (host) or an error (SDK).
//!   Both directions are tested against a generated grown copy of this crate
//!   (`host/tests/abi_growth.rs`).
//! - Any other change (a field retyped, a plain `#[repr(C)]` struct changed) is a 0.3.
//!
//! ## What the fence does not cover
//!
//! A plugin runs in the server's process: memory-unsafe code in a plugin (a segfault, a
//! double free, an `abort`) takes the whole server down. Panics are contained; UB is not.
//!
//! [PEP 3333]: https://peps.python.org/pep-3333/
//! [abi_stable]: https://docs.rs/abi_stable
#![allow(non_camel_case_types)]
#![warn(missing_docs)]

pub mod abi;
mod body;
pub mod compat;
mod middleware;
mod router;
mod sdk;
pub mod testing;
pub mod timer;

pub use abi::{Body, Environ, Field};
pub use body::{BodySender, SendError, UnknownVariant};
pub use middleware::{Middleware, Next};
pub use router::{Handler, Match, Params, Router};
pub use sdk::{
    Application, BodyError, HOP_BY_HOP, Response, StartResponse, StartResponseError, guard, is_hop_by_hop, status,
};

/// Re-exports the export macro needs; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use abi_stable;
}

/// Exports an application, or a middleware, as this plugin's root module.
///
/// `name` and `version` are `&'static str`s the host prints at load time. Then either:
///
/// - `app:` an expression giving any [`Application`]: a
///   `fn(&mut Environ, &mut StartResponse) -> Body`, a closure, a [`Router`], or a value of
///   your own type; or
/// - `middleware:` an expression giving any [`Middleware`]: a
///   `fn(&mut Environ, &mut StartResponse, &Next) -> Body`, a closure, or a value of your own
///   type. The host calls it for a plugin listed as middleware in a mount's pipeline, handing
///   it the rest of the pipeline as [`Next`]. Called as a plain application (mounted alone),
///   it runs with a next application that answers `404 Not Found`, and the first such call
///   logs that the plugin is a middleware ([`guard::run_middleware_as_app`]).
///
/// The expression is evaluated once, on the first request (so after `init`), and may build
/// state (a parsed template, a connection pool, rules read from the configuration `init`
/// stored). If it panics, every request gets a 500 and the log says why.
///
/// The generated `extern "C"` entry points run inside the SDK's panic fence ([`guard::run`],
/// [`guard::run_middleware`]): a panic becomes a `500` and a log line, never an unwind across
/// the boundary.
///
/// An optional `init: f` takes a `fn(&str) -> Result<(), String>` that the host calls once
/// per loaded copy of the plugin, before its first request, with the plugin's configuration
/// (its `[plugin.NAME]` table) as TOML text, empty when there is none; an `Err` (or a panic)
/// refuses the plugin, with the message shown to the operator, and the previous version
/// keeps serving. Written as a `[plugin.NAME]` header and keys, the text is the table's own
/// lines numbered as in the file (the lines before it are empty), so a TOML error's line is
/// the file's. The host shows a refusal at the file's line when its message starts with
/// `line N` or with the key it is about (`allow[0]: invalid CIDR …`, `deny: …`), else at the
/// table's header. A configuration change makes the host load a fresh copy of the library
/// (fresh statics), so `init` can keep what it parsed in a `static OnceLock`.
///
/// An optional `never_blocks: true` (after `init`, if any) is the plugin's promise that a
/// call never blocks and takes microseconds ([`abi::PluginMod::never_blocks`]): the host may
/// then run a request without a body on the event loop that read it, which saves the hop to
/// a worker thread and back (`/hello.py` at 10 connections: 72k → 99k requests/s, one run
/// each by hand on `scripts/bench`'s machine, whose runs vary by ±20 %). A call that breaks
/// the promise (runs past `--inline-timeout`) costs the other connections of its event loop
/// that wait, once: the host hands the loop to a fresh thread and sends the plugin's calls
/// to worker threads from then on. Leave it out for anything that sleeps, locks what another
/// request holds, or talks to the network or a database.
///
/// An application:
///
/// ```no_run
/// # use portico_api::{Body, Environ, StartResponse, export_app, status};
/// export_app!(name: "ping", version: "1.0.0", app: |_: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>| {
///     sr.start(status::OK, &[("Content-Type", "text/plain")]);
///     Body::from("pong\n")
/// });
/// ```
///
/// A middleware with configuration:
///
/// ```no_run
/// use std::sync::OnceLock;
/// use portico_api::{Body, Environ, Next, StartResponse, export_app, status};
///
/// static GREETING: OnceLock<String> = OnceLock::new();
///
/// /// `[plugin.greet]` takes one key, the text itself: `greeting = "hi"`.
/// fn init(config: &str) -> Result<(), String> {
///     let greeting = config.trim().strip_prefix("greeting = ").unwrap_or("\"hello\"").trim_matches('"');
///     GREETING.set(greeting.to_owned()).map_err(|_| "init called twice".to_owned())
/// }
///
/// /// Adds `X-Greeting` to every response of the next application.
/// fn greet(environ: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>, next: &Next<'_>) -> Body {
///     let greeting = GREETING.get().map_or("hello", String::as_str);
///     next.call_with_headers(environ, sr, |_status, fields| {
///         fields.push(("X-Greeting".to_owned(), greeting.to_owned()));
///     })
/// }
///
/// export_app!(name: "greet", version: env!("CARGO_PKG_VERSION"), middleware: greet, init: init);
/// ```
#[macro_export]
macro_rules! export_app {
    (name: $name:expr, version: $version:expr, app: $app:expr $(, never_blocks: $nb:expr)? $(,)?) => {
        $crate::export_app!(@app $name, $version, $app, $crate::__private::abi_stable::std_types::RNone, (false $(|| $nb)?));
    };
    (name: $name:expr, version: $version:expr, app: $app:expr, init: $init:expr $(, never_blocks: $nb:expr)? $(,)?) => {
        $crate::export_app!(@init $init);
        $crate::export_app!(
            @app $name, $version, $app, $crate::__private::abi_stable::std_types::RSome(portico_init), (false $(|| $nb)?)
        );
    };
    (name: $name:expr, version: $version:expr, middleware: $mw:expr $(, never_blocks: $nb:expr)? $(,)?) => {
        $crate::export_app!(
            @middleware $name, $version, $mw, $crate::__private::abi_stable::std_types::RNone, (false $(|| $nb)?)
        );
    };
    (name: $name:expr, version: $version:expr, middleware: $mw:expr, init: $init:expr $(, never_blocks: $nb:expr)? $(,)?) => {
        $crate::export_app!(@init $init);
        $crate::export_app!(
            @middleware $name, $version, $mw, $crate::__private::abi_stable::std_types::RSome(portico_init),
            (false $(|| $nb)?)
        );
    };
    (@init $init:expr) => {
        extern "C" fn portico_init(
            config: $crate::__private::abi_stable::std_types::RStr<'_>,
        ) -> $crate::__private::abi_stable::std_types::RResult<(), $crate::__private::abi_stable::std_types::RString> {
            $crate::guard::run_init(config.as_str(), $init)
        }
    };
    (@app $name:expr, $version:expr, $app:expr, $init:expr, $nb:expr) => {
        extern "C" fn portico_application(
            environ: &mut $crate::abi::Environ<'_>,
            start_response: $crate::abi::StartResponse_TO<'_, $crate::__private::abi_stable::sabi_types::RMut<'_, ()>>,
        ) -> $crate::abi::Body_NE {
            static APP: ::std::sync::OnceLock<
                ::std::result::Result<::std::boxed::Box<dyn $crate::Application>, ::std::string::String>,
            > = ::std::sync::OnceLock::new();
            $crate::Body::into_abi($crate::guard::run(environ, start_response, APP.get_or_init(|| $crate::guard::build(|| $app))))
        }
        $crate::export_app!(@root $name, $version, $init, $crate::__private::abi_stable::std_types::RNone, $nb);
    };
    (@middleware $name:expr, $version:expr, $mw:expr, $init:expr, $nb:expr) => {
        /// The middleware, built on first use and shared by both entry points.
        fn portico_middleware_instance()
        -> &'static ::std::result::Result<::std::boxed::Box<dyn $crate::Middleware>, ::std::string::String> {
            static MIDDLEWARE: ::std::sync::OnceLock<
                ::std::result::Result<::std::boxed::Box<dyn $crate::Middleware>, ::std::string::String>,
            > = ::std::sync::OnceLock::new();
            MIDDLEWARE.get_or_init(|| $crate::guard::build_middleware(|| $mw))
        }

        extern "C" fn portico_application(
            environ: &mut $crate::abi::Environ<'_>,
            start_response: $crate::abi::StartResponse_TO<'_, $crate::__private::abi_stable::sabi_types::RMut<'_, ()>>,
        ) -> $crate::abi::Body_NE {
            $crate::Body::into_abi($crate::guard::run_middleware_as_app(environ, start_response, portico_middleware_instance()))
        }

        extern "C" fn portico_middleware(
            environ: &mut $crate::abi::Environ<'_>,
            start_response: $crate::abi::StartResponse_TO<'_, $crate::__private::abi_stable::sabi_types::RMut<'_, ()>>,
            next: $crate::abi::NextApplication_TO<'_, $crate::__private::abi_stable::sabi_types::RRef<'_, ()>>,
        ) -> $crate::abi::Body_NE {
            $crate::Body::into_abi($crate::guard::run_middleware(environ, start_response, next, portico_middleware_instance()))
        }

        $crate::export_app!(@root $name, $version, $init, $crate::__private::abi_stable::std_types::RSome(portico_middleware), $nb);
    };
    (@root $name:expr, $version:expr, $init:expr, $middleware:expr, $nb:expr) => {
        /// The plugin's root module, checked and loaded by the portico host.
        #[::abi_stable::export_root_module]
        pub fn portico_root_module() -> $crate::abi::PluginMod_Ref {
            use $crate::__private::abi_stable::prefix_type::PrefixTypeTrait;
            $crate::abi::PluginMod {
                name: $crate::__private::abi_stable::std_types::RStr::from_str($name),
                version: $crate::__private::abi_stable::std_types::RStr::from_str($version),
                panic_unwind: cfg!(panic = "unwind"),
                application: portico_application,
                init: $init,
                middleware: $middleware,
                setup: $crate::__private::abi_stable::std_types::RNone,
                reload: $crate::__private::abi_stable::std_types::RNone,
                serves_script: $crate::__private::abi_stable::std_types::RNone,
                never_blocks: $nb,
            }
            .leak_into_prefix()
        }
    };
}
