//! A minimal hyper hello-world server: the baseline `scripts/bench` compares portico with.
//!
//! `hyper-hello ADDR` serves `Hello, world!\n` as `text/plain` on every path, HTTP/1.1 with
//! keep-alive, on a multi-threaded tokio runtime (one thread per core).
//!
//! With `HYPER_PINNED=N` it runs N single-threaded runtimes instead, each accepting from the
//! same listening socket, so each connection stays on the thread that accepted it (no work
//! stealing): the shape of portico's worker processes, to tell what pinning costs.
//!
//! It listens with a backlog of `HYPER_BACKLOG` connections (2048 by default, Portico's
//! `--backlog`; std's `bind` would give 128), so a burst of connections is queued alike on
//! both sides.

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

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn serve(listener: TcpListener) -> Result<(), Error> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(hello)).await;
        });
    }
}

/// A listening socket on `addr` with a queue of `backlog` connections not yet accepted.
fn listen(addr: std::net::SocketAddr, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(backlog)?;
    Ok(sock.into())
}

fn main() -> Result<(), Error> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8001".into());
    let backlog = std::env::var("HYPER_BACKLOG").ok().and_then(|n| n.parse().ok()).unwrap_or(2048);
    let listener = listen(addr.parse()?, backlog)?;
    listener.set_nonblocking(true)?;
    let pinned: usize = std::env::var("HYPER_PINNED").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    if pinned == 0 {
        eprintln!("hyper-hello listening on http://{addr}");
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        return rt.block_on(async { serve(TcpListener::from_std(listener)?).await });
    }
    eprintln!("hyper-hello listening on http://{addr} ({pinned} pinned single-threaded runtimes)");
    let threads: Vec<_> = (0..pinned)
        .map(|_| {
            let listener = listener.try_clone()?;
            Ok(std::thread::spawn(move || -> Result<(), Error> {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(async { serve(TcpListener::from_std(listener)?).await })
            }))
        })
        .collect::<std::io::Result<_>>()?;
    for t in threads {
        t.join().map_err(|_| "a runtime thread panicked")??;
    }
    Ok(())
}
