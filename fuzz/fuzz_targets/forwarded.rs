//! The trusted-proxy walk over arbitrary forwarding fields: never panics, and a client it
//! names is one of the addresses written in the field or the peer, never made up.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use portico::http::forwarded::{Header, TrustedProxies};
use portico::http::request::{HeadLimits, Parsed, parse};

fuzz_target!(|input: (bool, &[u8])| {
    let (rfc, value) = input;
    let name = if rfc { "Forwarded" } else { "X-Forwarded-For" };
    let mut head = format!("GET / HTTP/1.1\r\nHost: x\r\n{name}: ").into_bytes();
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\nX-Forwarded-Proto: https\r\n\r\n");
    let Ok(Parsed::Complete(head, _)) = parse(&head, &HeadLimits::default()) else { return };
    let header = if rfc { Header::Forwarded } else { Header::XForwardedFor };
    let trusted = TrustedProxies::parse("10.0.0.0/8, ::1", header).expect("a valid list");
    let peer: IpAddr = "10.0.0.1".parse().expect("an address");
    if let Some(ip) = trusted.client(&head, Some(peer)).and_then(|c| c.ip) {
        // Named by the input: some run of address characters in it parses to this address.
        let text = String::from_utf8_lossy(value);
        let named = text
            .split(|c: char| !(c.is_ascii_hexdigit() || c == ':' || c == '.'))
            .flat_map(|run| [run, run.rsplit_once(':').map_or(run, |(host, _)| host)])
            .any(|candidate| candidate.parse::<IpAddr>() == Ok(ip));
        assert!(ip == peer || named, "{ip} from {text:?}");
    }
});
