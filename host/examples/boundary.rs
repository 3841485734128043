//! Measures the cost of one crossing of the plugin boundary, as the worker pays it: build the
//! `Environ` (borrowed views of a parsed 10-field request), call the plugin's `application`,
//! validate and encode its `start_response`, take back its body, drop it.
//!
//! `cargo run --release -p portico --example boundary -- target/release/libhello.so [N]`
//! prints nanoseconds per call (median of 5 runs of N calls, default 1 000 000), and the
//! same for a loop that only parses nothing and builds nothing, for scale.

use std::path::PathBuf;
use std::time::Instant;

use portico::exchange::{Peer, RequestBody};
use portico::http::request::{self, HeadLimits, Parsed};
use portico::plugin::call::{self, CallInfo};
use portico::plugin::loader;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().expect("usage: boundary PLUGIN.so [N]"));
    let n: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let cache = std::env::temp_dir().join(format!("portico-boundary-{}", std::process::id()));
    let plugin = loader::load("bench", &path, &cache, 1, "").expect("loading the plugin");
    let _ = std::fs::remove_dir_all(&cache);

    let raw = b"GET /hello.py/x?y=1 HTTP/1.1\r\nHost: localhost:8000\r\nUser-Agent: wrk\r\n\
Accept: */*\r\nAccept-Language: en\r\nAccept-Encoding: gzip\r\nConnection: keep-alive\r\n\
Cookie: a=b\r\nX-Request-Id: 42\r\nX-Forwarded-For: 10.0.0.1\r\nCache-Control: no-cache\r\n\r\n";
    let Ok(Parsed::Complete(head, _)) = request::parse(raw, &HeadLimits::default()) else { panic!("bad request") };
    let peer = Peer::new("127.0.0.1:40000".parse().unwrap(), "127.0.0.1:8000".parse().unwrap());
    let info = CallInfo { script_name: "/hello.py", path_info: b"/x", peer: &peer, script: None };

    let mut runs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..n {
            let out = call::call(&plugin, call::Final::Plugin(&plugin), &[], &head, &info, &mut RequestBody::None);
            assert_eq!(out.start.head.as_ref().map(|h| h.code), Some(200));
            drop(std::hint::black_box(out.body));
        }
        runs.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    runs.sort_by(|a, b| a.total_cmp(b));
    println!(
        "boundary: {:.0} ns per call (median of 5 x {n}; min {:.0}, max {:.0}) plugin {} {}",
        runs[2], runs[0], runs[4], plugin.module_name, plugin.version
    );
}
