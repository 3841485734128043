//! Trusted proxies (`--forwarded-allow-ips`): from a trusted peer, `X-Forwarded-For` /
//! `Forwarded` set `REMOTE_ADDR` and `X-Forwarded-Proto` sets `wsgi.url_scheme` — for the
//! application, for `ip_filter` and in the access log; from any other peer they are ignored.

mod support;

use std::time::Duration;

use support::{Server, TempDir};

fn echo_with(server: &Server, fields: &[(&str, &str)]) -> serde_json::Value {
    let mut req = String::from("GET /echo.py/x HTTP/1.1\r\nHost: portico.test\r\nConnection: close\r\n");
    for (n, v) in fields {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let r = server.request(req.as_bytes());
    assert_eq!(r.status, 200, "{}", r.summary());
    r.json()
}

const PROXIED: &[(&str, &str)] = &[("X-Forwarded-For", "6.6.6.6, 203.0.113.9"), ("X-Forwarded-Proto", "https")];

#[test]
fn a_trusted_proxy_names_the_client_and_the_scheme() {
    let dir = TempDir::new("portico-forwarded");
    let log = dir.path().join("access.log");
    let server = Server::builder()
        .plugins(&["echo"])
        .args(["--forwarded-allow-ips", "127.0.0.1, 10.0.0.0/8"])
        .args([std::ffi::OsString::from("--access-log"), log.clone().into_os_string()])
        .start();
    let j = echo_with(&server, PROXIED);
    assert_eq!((j["remote_addr"].as_str(), j["url_scheme"].as_str()), (Some("203.0.113.9"), Some("https")), "{j}");
    assert_eq!(j["remote_port"], 0, "the proxies do not say the client's port: {j}");
    // A request with no forwarding fields is the peer's own.
    let j = echo_with(&server, &[]);
    assert_eq!((j["remote_addr"].as_str(), j["url_scheme"].as_str()), (Some("127.0.0.1"), Some("http")), "{j}");
    // The status page is for local clients: a proxied request is not one.
    let mut req = String::from("GET /_portico/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    req.push_str("X-Forwarded-For: 203.0.113.9\r\n\r\n");
    assert_eq!(server.request(req.as_bytes()).status, 404);
    // Not even when a trusted proxy names a loopback client: a proxied request is not local.
    let req = "GET /_portico/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n";
    assert_eq!(server.request(req.as_bytes()).status, 404);
    server.term();
    server.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("no exit{}", server.context()));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().any(|l| l.starts_with("203.0.113.9 - - [")), "the access log names the client: {text}");

    // Not trusted (the default): the fields are the client's own words.
    let plain = Server::builder().plugins(&["echo"]).start();
    let j = echo_with(&plain, PROXIED);
    assert_eq!((j["remote_addr"].as_str(), j["url_scheme"].as_str()), (Some("127.0.0.1"), Some("http")), "{j}");
    let other = Server::builder().plugins(&["echo"]).args(["--forwarded-allow-ips", "10.0.0.0/8"]).start();
    assert_eq!(echo_with(&other, PROXIED)["remote_addr"], "127.0.0.1", "127.0.0.1 is not in the list");

    // RFC 7239 when asked for.
    let rfc = Server::builder()
        .plugins(&["echo"])
        .args(["--forwarded-allow-ips", "127.0.0.1", "--forwarded-header", "forwarded"])
        .start();
    let j = echo_with(&rfc, &[("Forwarded", "for=\"[2001:db8::7]:4711\";proto=https"), ("X-Forwarded-For", "6.6.6.6")]);
    assert_eq!((j["remote_addr"].as_str(), j["url_scheme"].as_str()), (Some("2001:db8::7"), Some("https")), "{j}");
}

#[test]
fn ip_filter_relies_on_the_server_wide_client() {
    let dir = TempDir::new("portico-forwarded-filter");
    let config = dir.path().join("portico.toml");
    let text = "[[mount]]\nprefix = \"/api\"\napp = \"echo\"\nmiddleware = [\"ip_filter\"]\n\n\
                [plugin.ip_filter]\nallow = [\"203.0.113.0/24\"]\n";
    std::fs::write(&config, text).unwrap();
    let server = Server::builder()
        .plugins(&["echo", "ip_filter"])
        .args(["--config".as_ref(), config.as_os_str()])
        .args(["--forwarded-allow-ips", "127.0.0.1"])
        .start();
    let req = |xff: &str| {
        let text = format!("GET /api HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Forwarded-For: {xff}\r\n\r\n");
        server.request(text.as_bytes()).status
    };
    assert_eq!(req("203.0.113.9"), 200);
    assert_eq!(req("198.51.100.1"), 403);
}

/// A proxy on the same host over a Unix socket (nginx `proxy_pass http://unix:…`), trusted
/// with `unix` in the list.
#[test]
fn a_unix_socket_proxy_can_be_trusted() {
    use std::io::{Read, Write};
    let dir = TempDir::new("portico-forwarded-unix");
    let path = dir.path().join("portico.sock");
    let bind = format!("unix:{}", path.display());
    let server = Server::builder()
        .plugins(&["echo"])
        .args(["--bind", "127.0.0.1:0", "--bind", &bind, "--forwarded-allow-ips", "unix"])
        .start();
    let ask = |fields: &str, path_q: &str| {
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        write!(s, "GET {path_q} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{fields}\r\n").unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        String::from_utf8_lossy(&out).into_owned()
    };
    let echo = ask("X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n", "/echo.py/x");
    let json: serde_json::Value = serde_json::from_str(echo.split_once("\r\n\r\n").map_or("", |(_, b)| b)).unwrap();
    assert_eq!((json["remote_addr"].as_str(), json["url_scheme"].as_str()), (Some("203.0.113.9"), Some("https")));
    // A proxied request is not local; the Unix socket's own (unproxied) requests still are.
    assert!(ask("X-Forwarded-For: 203.0.113.9\r\n", "/_portico/status").starts_with("HTTP/1.1 404"));
    assert!(ask("", "/_portico/status").starts_with("HTTP/1.1 200"));
    // TCP peers are not trusted by `unix`.
    let j = echo_with(&server, PROXIED);
    assert_eq!(j["remote_addr"], "127.0.0.1", "{j}");
}

#[test]
fn a_wildcard_or_a_bad_address_is_refused_at_start() {
    for list in ["*", "10.0.0.0/33", "proxy.local"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(["--bind", "127.0.0.1:0", "--forwarded-allow-ips", list])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{list}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
