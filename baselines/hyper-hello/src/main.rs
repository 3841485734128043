//! A minimal hyper hello-world server: the baseline `scripts/bench` compares portico with.
//!
//! `hyper-hello ADDR` serves `Hello, world!\n` as `text/plain` on every path, HTTP/1.1 with
//! keep-alive, on a multi-threaded tokio runtime (one thread per core).

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

async fn hello(_: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = Response::new(Full::new(Bytes::from_static(b"Hello, world!\n")));
    resp.headers_mut().insert("content-type", "text/plain; charset=utf-8".parse().unwrap());
    Ok(resp)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8001".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("hyper-hello listening on http://{addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(hello)).await;
        });
    }
}
