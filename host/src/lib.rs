//! # portico: the host
//!
//! A web server for static files and compiled plugins that speak Portico's gateway interface
//! (`portico-api`, modelled on PEP 3333). Data flow, one request:
//!
//! 1. [`reactor`] (an I/O thread running a mio loop; `--io-threads` of them) accepts the
//!    connection and reads bytes.
//! 2. [`http::request`] parses the head (httparse) and decides the body's framing
//!    (RFC 9112 §6.3); [`route`] picks a plugin (`/NAME.py/...`) or a static file.
//! 3. Static files are answered on the I/O thread by [`static_files`]. Plugin requests wait
//!    for their body (up to 64 KiB; larger ones stream through [`body_pipe`]) and go to the
//!    [`worker`] pool over a crossbeam channel.
//! 4. A worker calls the application through [`plugin::call`] with an `Environ` of borrowed
//!    views, and turns what it returns into response bytes; streamed bodies are pulled a chunk
//!    at a time as the socket drains.
//! 5. The I/O thread writes the response and goes back to reading the connection
//!    (keep-alive, pipelining) or closes it.
//!
//! [`plugin::registry`] holds the loaded plugins behind an `ArcSwap`; SIGHUP ([`server`])
//! rescans the plugins directory without stopping requests.
//!
//! The library target exists for the binary, the tests and the fuzz targets; it is not a
//! stable API.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod body_pipe;
pub mod check;
pub mod config;
pub mod config_file;
pub mod html;
pub mod http;
pub mod mount;
pub mod plugin;
pub mod reactor;
pub mod route;
pub mod server;
pub mod static_app;
pub mod static_files;
pub mod stats;
pub mod status;
pub mod worker;
