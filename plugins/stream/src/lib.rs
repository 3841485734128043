//! `stream`: a streamed response of N chunks, to prove streaming end to end.
//!
//! `GET /stream.py?n=5&delay_ms=100&size=16`: `n` chunks (default 10, at most 100 000), each
//! `size` bytes (default: a numbered line; at most 1 MiB), `delay_ms` milliseconds apart
//! (default 0, at most 10 000). No `Content-Length` is set, so the host sends the body
//! chunked on HTTP/1.1 and close-delimited on HTTP/1.0.

use std::time::Duration;

use portico_api::{Body, Environ, StartResponse, export_app, status};

fn param(environ: &Environ<'_>, name: &str, default: u64, max: u64) -> u64 {
    environ.query_param(name).and_then(|v| v.parse().ok()).unwrap_or(default).min(max)
}

fn stream(environ: &mut Environ<'_>, start_response: &mut StartResponse<'_, '_>) -> Body {
    let n = param(environ, "n", 10, 100_000);
    let delay = Duration::from_millis(param(environ, "delay_ms", 0, 10_000));
    let size = param(environ, "size", 0, 1 << 20) as usize;
    start_response.start(status::OK, &[("Content-Type", "text/plain; charset=utf-8")]);
    Body::stream((0..n).map(move |i| {
        if i > 0 && !delay.is_zero() {
            std::thread::sleep(delay);
        }
        if size > 0 { vec![b'a' + (i % 26) as u8; size] } else { format!("chunk {i}\n").into_bytes() }
    }))
}

export_app!(name: "stream", version: env!("CARGO_PKG_VERSION"), app: stream);
