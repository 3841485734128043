//! The access log: one line per request in Common Log Format plus the duration, emitted as a
//! `tracing` event with target `portico::access` (routed by `main` to `--access-log`).
//!
//! ```text
//! 127.0.0.1 - - [23/Nov/2026:11:00:00 +0000] "GET /hello.py HTTP/1.1" 200 14 87
//! ```
//! Fields: remote address, identity and user (always `-`), time the request head was read
//! (UTC), request line, status, response body bytes (payload, without framing), duration in
//! microseconds from the head being read to the last byte being written (Gunicorn's `%(D)s`).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Instant;

use time::OffsetDateTime;
use time::macros::format_description;

use crate::http::request::RequestHead;

/// The `tracing` target of access-log events.
pub const TARGET: &str = "portico::access";

/// What the access line needs, captured when the head is parsed.
pub struct Access {
    peer: SocketAddr,
    request_line: String,
    time: String,
    start: Instant,
}

fn clf_now() -> String {
    thread_local! {
        static CACHE: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let now = OffsetDateTime::now_utc();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != now.unix_timestamp() {
            let fmt = format_description!("[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000");
            c.1 = now.format(&fmt).unwrap_or_default();
            c.0 = now.unix_timestamp();
        }
        c.1.clone()
    })
}

impl Access {
    /// Captures a parsed request.
    pub fn new(head: &RequestHead, peer: SocketAddr) -> Self {
        let target = String::from_utf8_lossy(head.target());
        Access {
            peer,
            request_line: format!("{} {} {}", head.method(), target.escape_debug(), head.version.as_str()),
            time: clf_now(),
            start: Instant::now(),
        }
    }

    /// A request that could not be parsed.
    pub fn unparsed(peer: SocketAddr) -> Self {
        Access { peer, request_line: "-".to_owned(), time: clf_now(), start: Instant::now() }
    }
}

/// Emits the access line for a finished exchange.
pub fn write(a: &Access, status: u16, body_bytes: u64) {
    tracing::info!(
        target: TARGET,
        "{} - - [{}] \"{}\" {} {} {}",
        a.peer.ip(),
        a.time,
        a.request_line,
        status,
        body_bytes,
        a.start.elapsed().as_micros()
    );
}
