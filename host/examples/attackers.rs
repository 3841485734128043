//! Slow and idle clients for `scripts/slowloris`, in one mio thread so the attacker itself
//! costs little CPU (the measurement is about the server, on a 2-core machine).
//!
//! `attackers PORT SLOW IDLE SECONDS [MODE]` (127.0.0.1 only; at most 300 s). The SLOW
//! connections (start times spread over a second; each reconnects when the server closes it)
//! depend on MODE:
//! - `head` (the default, slowloris): a request line, then one header byte a second, never
//!   finishing the head.
//! - `body` (a slow upload): a whole head for `POST /echo.py` with `Content-Length: 1000000`,
//!   then one body byte a second.
//! - `stream` (a waiting stream): `GET /stream.py?n=100000&delay_ms=10000`, whose chunks come
//!   10 s apart, read as they come (server-sent events, long polling).
//! - IDLE connections (connects spread over 5 s) send one keep-alive request, read the
//!   answer, then sit idle; they reconnect when the server closes them.
//!
//! Prints `attackers: slow open N, idle open N, reconnects slow N idle N, connect errors N` once a second to
//! stderr.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// What the SLOW connections do.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Head,
    Body,
    Stream,
}

impl Mode {
    /// The first bytes a slow connection sends.
    fn first(self) -> &'static [u8] {
        match self {
            Mode::Head => b"GET /hello.py HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",
            Mode::Body => b"POST /echo.py HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n",
            Mode::Stream => b"GET /stream.py?n=100000&delay_ms=10000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        }
    }
}

#[derive(PartialEq)]
enum Kind {
    Slow,
    Idle,
}

struct Client {
    kind: Kind,
    sock: Option<TcpStream>,
    next_at: Instant,
    answered: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let addr: SocketAddr = format!("127.0.0.1:{}", num(1, 8000)).parse().expect("port");
    let (slow, idle) = (num(2, 1000) as usize, num(3, 1000) as usize);
    let deadline = Instant::now() + Duration::from_secs(num(4, 30).min(300));
    let mode = match args.get(5).map(String::as_str) {
        None | Some("head") => Mode::Head,
        Some("body") => Mode::Body,
        Some("stream") => Mode::Stream,
        Some(other) => panic!("MODE is head, body or stream, not {other}"),
    };
    let mut poll = Poll::new().expect("poll");
    let start = Instant::now();
    let mut clients: Vec<Client> = (0..slow + idle)
        .map(|i| {
            let kind = if i < slow { Kind::Slow } else { Kind::Idle };
            // Spread start times: slow over 1 s, idle over 5 s (deterministic, even).
            let spread = if kind == Kind::Slow { 1000 * i / slow.max(1) } else { 5000 * (i - slow) / idle.max(1) };
            Client { kind, sock: None, next_at: start + Duration::from_millis(spread as u64), answered: false }
        })
        .collect();
    let (mut reconnect_slow, mut reconnect_idle, mut connect_errors) = (0u64, 0u64, 0u64);
    let mut events = Events::with_capacity(1024);
    let mut next_report = start;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let now = Instant::now();
        for (i, c) in clients.iter_mut().enumerate() {
            if c.next_at > now {
                continue;
            }
            match (&mut c.sock, &c.kind) {
                (None, _) => {
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        connect_errors += 1;
                        c.next_at = now + Duration::from_millis(500);
                        continue;
                    };
                    let _ = poll.registry().register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE);
                    c.sock = Some(s);
                    c.answered = false;
                    c.next_at = now + Duration::from_millis(50); // let the connect finish
                }
                (Some(s), Kind::Slow) => {
                    let msg = if c.answered { &b"a"[..] } else { mode.first() };
                    match s.write(msg) {
                        Ok(_) => c.answered = true, // for a slow client: the request has started
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => {
                            let _ = poll.registry().deregister(s);
                            c.sock = None;
                            reconnect_slow += 1;
                        }
                    }
                    // A waiting stream sends nothing more: it reads what comes.
                    let sent_all = mode == Mode::Stream && c.answered;
                    c.next_at = if sent_all { deadline } else { now + Duration::from_secs(1) };
                }
                (Some(s), Kind::Idle) => {
                    if !c.answered {
                        let _ = s.write(b"GET /hello.py HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
                        c.answered = true;
                    }
                    c.next_at = deadline; // then only readiness matters
                }
            }
        }
        let _ = poll.poll(&mut events, Some(Duration::from_millis(5)));
        for ev in events.iter() {
            let c = &mut clients[ev.token().0];
            let Some(s) = c.sock.as_mut() else { continue };
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                let mut closed = false;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => {
                            closed = true;
                            break;
                        }
                        Ok(_) => continue,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    }
                }
                if closed {
                    let _ = poll.registry().deregister(s);
                    c.sock = None;
                    c.next_at = Instant::now();
                    if c.kind == Kind::Slow { reconnect_slow += 1 } else { reconnect_idle += 1 }
                }
            }
        }
        if Instant::now() >= next_report {
            let open = |k: Kind| clients.iter().filter(|c| c.kind == k && c.sock.is_some()).count();
            eprintln!(
                "attackers: slow open {}, idle open {}, reconnects slow {reconnect_slow} idle {reconnect_idle}, connect errors {connect_errors}",
                open(Kind::Slow),
                open(Kind::Idle)
            );
            next_report += Duration::from_secs(1);
        }
    }
}
