//! # portico: the host
//!
//! A web server for static files and compiled plugins that speak Portico's gateway interface
//! (`portico-api`, modelled on PEP 3333). Data flow, one request:
//!
//! 1. An event loop ([`io`]; `--io-threads` of them, mio) accepts the connection and reads
//!    bytes; the connection's state machine ([`io::conn`]) drives the exchange.
//! 2. [`http::request`] parses the head (httparse) and decides the body's framing
//!    (RFC 9112 §6.3); [`routing`] picks, from one table of mounts and plugins, a plugin
//!    (`/NAME.py/...` or a mount), a static file or an admin page.
//! 3. Static files ([`static_files`]) and admin pages ([`admin`]) are answered on the event
//!    loop. Application requests wait for their body (up to 64 KiB; larger ones stream
//!    through a [`exchange::body_pipe`]) and go to the [`worker`] pool as an
//!    [`exchange::Job`].
//! 4. A worker calls the application through [`plugin::call`] with an `Environ` of borrowed
//!    views, and turns what it returns into a response ([`http::outgoing`]); streamed bodies
//!    are pulled a chunk at a time as the socket drains.
//! 5. The event loop writes the response ([`io::write`]) and goes back to reading the
//!    connection (keep-alive, pipelining) or closes it.
//!
//! SIGHUP ([`server`]) reloads plugins and mounts ([`reload`]) without stopping requests.
//!
//! Layers, each using only those above it in this list (checked by `tests/layers.rs`):
//! `escape`, `http`, `ids`, `tls` · `settings`, `access_log` · `plugin::{loader, registry}`,
//! `admission` · `routing`,
//! `static_files`, `metrics` · `exchange` · `plugin::call` · `worker`, `admin`, `reload`,
//! `check`, `install`, `scaffold` · `io` · `server`.
//!
//! The library target exists for the binary, the tests, the examples and the fuzz targets;
//! it is not a stable API. What they use is `pub`; the rest is `pub(crate)`.

#![forbid(unsafe_code)]
// The docs are for maintainers and built with `--document-private-items` (scripts/test), where
// links from public items to crate-private ones resolve.
#![allow(rustdoc::private_intra_doc_links)]

pub mod access_log;
pub(crate) mod admin;
pub(crate) mod admission;
pub mod check;
pub mod control;
pub(crate) mod escape;
pub mod exchange;
pub mod http;
pub(crate) mod ids;
pub mod install;
pub(crate) mod io;
pub mod listeners;
pub mod master;
pub(crate) mod metrics;
pub mod plugin;
pub(crate) mod reload;
pub mod routing;
pub mod scaffold;
pub mod server;
pub mod settings;
pub mod static_files;
pub mod tls;
pub(crate) mod worker;
