//! `stream`: a streamed response of N chunks, to prove streaming end to end, and a push
//! stream: its delays cost no worker.
//!
//! `GET /stream.py?n=5&delay_ms=100&size=16`: `n` chunks (default 10, at most 100 000), each
//! `size` bytes (default: a numbered line; at most 1 MiB), `delay_ms` milliseconds apart
//! (default 0, at most 10 000). No `Content-Length` is set, so the host sends the body
//! chunked on HTTP/1.1 and close-delimited on HTTP/1.0.
//!
//! The body is a [`Body::poll_fn`]: while a chunk is not due it answers `Pending` and asks
//! the SDK's [`timer`] to wake the host when it is, so a thousand slow streams hold no worker
//! (the server-sent events and long-polling shape).

use std::task::Poll;
use std::time::{Duration, Instant};

use portico_api::{Body, Environ, StartResponse, export_app, status, timer};

fn param(environ: &Environ<'_>, name: &str, default: u64, max: u64) -> u64 {
    environ.query_param(name).and_then(|v| v.parse().ok()).unwrap_or(default).min(max)
}

fn stream(environ: &mut Environ<'_>, start_response: &mut StartResponse<'_, '_>) -> Body {
    let n = param(environ, "n", 10, 100_000);
    let delay = Duration::from_millis(param(environ, "delay_ms", 0, 10_000));
    let size = param(environ, "size", 0, 1 << 20) as usize;
    start_response.start(status::OK, &[("Content-Type", "text/plain; charset=utf-8")]);
    let mut i = 0;
    let mut due = Instant::now();
    Body::poll_fn(move |cx| {
        if i == n {
            return Poll::Ready(None);
        }
        if i > 0 && !delay.is_zero() && Instant::now() < due {
            timer::wake_at(due, cx.waker().clone());
            return Poll::Pending;
        }
        let chunk = if size > 0 { vec![b'a' + (i % 26) as u8; size] } else { format!("chunk {i}\n").into_bytes() };
        i += 1;
        due = Instant::now() + delay;
        Poll::Ready(Some(Ok::<_, String>(chunk)))
    })
}

export_app!(name: "stream", version: env!("CARGO_PKG_VERSION"), app: stream);
