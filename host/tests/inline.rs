//! Calls on the event loop (`never_blocks`, `io::inline`): a plugin that promised never to
//! block is called by the loop's own thread, and a plugin that breaks the promise holds the
//! other connections of its loop up for at most `--inline-timeout` plus a watchdog tick, once;
//! its calls go to worker threads from then on, the call itself is still answered, and an
//! application deadline still cuts it off with a 504.

mod support;

use std::time::{Duration, Instant};

use support::Server;

/// One event loop, so every connection waits on the thread a lying call holds.
fn server(extra: &[&str]) -> Server {
    let mut args = vec!["--io-threads", "1", "--threads", "4"];
    args.extend_from_slice(extra);
    Server::builder().plugins(&["hello"]).plugin_file("fixture.so", support::fixture_never_blocks()).args(args).start()
}

/// Sends `GET path` on a thread; joins to (status, how long it took).
fn get_later(server: &Server, path: &str) -> std::thread::JoinHandle<(u16, Duration)> {
    let (addr, path) = (server.addr(), path.to_owned());
    std::thread::spawn(move || {
        let started = Instant::now();
        let r = support::get(addr, &path);
        (r.status, started.elapsed())
    })
}

/// How long `/hello.py` takes while the call started just before holds the loop's thread.
fn hello_while_held(server: &Server) -> Duration {
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let r = server.get("/hello.py");
    assert_eq!(r.status, 200, "{}{}", r.summary(), server.context());
    started.elapsed()
}

#[test]
fn a_plugin_that_breaks_its_promise_holds_its_loop_once_and_briefly() {
    let server = server(&[]);
    let mark = server.log_mark();
    // Calls that keep the promise run on the loop and are answered.
    let r = server.get("/fixture.py/version");
    assert_eq!((r.status, r.text()), (200, "fixture v1\n".to_owned()), "{}{}", r.summary(), server.context());

    // A call that sleeps 1.5 s on the loop's thread: the loop moves on without it.
    let slow = get_later(&server, "/fixture.py/slow?ms=1500");
    let waited = hello_while_held(&server);
    assert!(
        waited < Duration::from_millis(700),
        "/hello.py waited {waited:?} behind a plugin sleeping on the event loop{}",
        server.context()
    );
    let (status, took) = slow.join().expect("the slow request");
    assert_eq!(status, 200, "the call that broke the promise is still answered{}", server.context());
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    server.wait_for_line(mark, &["plugin fixture promised never to block", "worker threads"], Duration::from_secs(5));
    server.wait_for_line(mark, &["event loop 0", "goes on in a new thread"], Duration::from_secs(5));

    // From now on its calls go to worker threads: a second slow call holds nobody up and
    // logs nothing more. (The wait alone would also pass with a second hand-over, ~40 ms;
    // the counts of log lines below are what tell.)
    let slow = get_later(&server, "/fixture.py/slow?ms=1500");
    let waited = hello_while_held(&server);
    assert!(waited < Duration::from_millis(700), "{waited:?}{}", server.context());
    assert_eq!(slow.join().expect("the second slow request").0, 200);
    let log = &server.stderr_text()[mark..];
    assert_eq!(log.matches("promised never to block").count(), 1, "logged once{}", server.context());
    // The second slow call ran on a worker: the loop was handed over once, not twice.
    assert_eq!(log.matches("goes on in a new thread").count(), 1, "one hand-over{}", server.context());
    // The status page says who runs on the event loop now.
    let status = server.get("/_portico/status?format=json").json();
    let on_loop = |name: &str| {
        status["plugins"].as_array().expect("plugins").iter().find(|p| p["name"] == name).expect(name)["on_event_loop"]
            .clone()
    };
    assert_eq!((on_loop("hello"), on_loop("fixture")), (true.into(), false.into()), "{status}");
    server.assert_alive();
}

#[test]
fn a_call_on_the_loop_past_its_deadline_gets_504() {
    let server = server(&["--app-timeout", "0.5"]);
    let mark = server.log_mark();
    let started = Instant::now();
    let r = server.get("/fixture.py/slow?ms=3000");
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}{}", r.summary(), server.context());
    assert!(took < Duration::from_millis(2000), "the 504 came after {took:?}{}", server.context());
    // It ran on the loop (a worker's call would give the same 504): the loop was handed on.
    server.wait_for_line(mark, &["event loop 0", "goes on in a new thread"], Duration::from_secs(5));
    // The application's slot went on: it answers again at once.
    let r = server.get("/fixture.py/version");
    assert_eq!(r.status, 200, "{}{}", r.summary(), server.context());
    assert_eq!(server.get("/hello.py").status, 200);
    server.assert_alive();
}

#[test]
fn inline_timeout_0_sends_every_call_to_a_worker() {
    // Off: a sleeping call is on a worker from the start; nothing is logged about promises.
    let server = server(&["--inline-timeout", "0"]);
    let mark = server.log_mark();
    let slow = get_later(&server, "/fixture.py/slow?ms=1000");
    let waited = hello_while_held(&server);
    assert!(waited < Duration::from_millis(500), "{waited:?}{}", server.context());
    assert_eq!(slow.join().expect("the slow request").0, 200);
    let log = &server.stderr_text()[mark..];
    assert!(!log.contains("promised never to block") && !log.contains("new thread"), "{}", server.context());
    let status = server.get("/_portico/status?format=json").json();
    let hello = status["plugins"].as_array().expect("plugins").iter().find(|p| p["name"] == "hello").cloned();
    assert_eq!(hello.expect("hello")["on_event_loop"], false, "off: no plugin runs on the event loop");
}

#[test]
fn calls_queued_behind_another_loops_call_reach_their_own_loop() {
    // `--app-max-concurrency 1` over three event loops: calls on the loops take no gate slot,
    // so none waits for another (the first version of calls on the loop queued them in the
    // gate, and a successor from another loop's connection was answered on the wrong loop:
    // its client waited for ever).
    let server = Server::builder()
        .plugins(&["hello"])
        .args(["--io-threads", "3", "--threads", "4", "--app-max-concurrency", "1"])
        .start();
    let addr = server.addr();
    let clients: Vec<_> = (0..12)
        .map(|c| {
            std::thread::spawn(move || {
                let mut conn = support::Conn::open(addr);
                conn.set_read_timeout(Duration::from_secs(10));
                for i in 0..300 {
                    conn.send(&support::request_bytes("GET", "/hello.py", false));
                    let r = conn.read_response();
                    assert_eq!((r.status, r.text().as_str()), (200, "Hello, world!\n"), "client {c} request {i}");
                }
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        if c.join().is_err() {
            panic!("client {i} failed{}", server.context());
        }
    }
    server.assert_alive();
}
