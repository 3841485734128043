//! The status page (`/_portico/status`, JSON with `?format=json`) and the metrics
//! (`/_portico/metrics`) over real sockets: the counts match what was sent, the metrics text
//! parses, the access rule holds (loopback only unless `--status-public`), the pages win over
//! mounts and static files and answer while every worker is busy, reloads are reported — and
//! the page renders in a real browser (Debian's headless Chromium), whose screenshot is kept
//! in `target/test-artifacts/status.png`.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Response, STANDARD_PLUGINS, Server, TempDir, WORKSPACE_VERSION, poll_until, request_bytes};

/// How long one Chromium run (start, load, dump or screenshot, exit) may take.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

fn status_json(server: &Server) -> Value {
    let r = server.get("/_portico/status?format=json");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.header("Content-Type"), Some("application/json"), "{}", r.summary());
    r.json()
}

/// The plugin row named `name` of a status JSON.
fn plugin<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["plugins"]
        .as_array()
        .expect("plugins is an array")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no plugin {name:?} in {json:#}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{v} is not an unsigned integer"))
}

fn get_ok(server: &Server, path: &str) -> Response {
    let r = server.get(path);
    assert_eq!(r.status, 200, "GET {path}: {}", r.summary());
    r
}

#[test]
fn json_counts_what_was_sent() {
    let server = Server::start();
    for _ in 0..5 {
        assert_eq!(get_ok(&server, "/hello.py").text(), "Hello, world!\n");
    }
    for _ in 0..3 {
        get_ok(&server, "/echo.py/x");
    }
    for _ in 0..2 {
        let r = server.get("/fixture.py/panic");
        assert_eq!(r.status, 500, "{}", r.summary());
    }
    get_ok(&server, "/index.html");
    assert_eq!(server.get("/no-such-file.txt").status, 404);
    let r = server.get("/_portico/status?format=json");
    assert_eq!(r.header("Cache-Control"), Some("no-store"), "{}", r.summary());
    let json = r.json();

    let hello = plugin(&json, "hello");
    assert_eq!((u(&hello["requests"]), u(&hello["responses"]["5xx"]), u(&hello["in_flight"])), (5, 0, 0), "{hello:#}");
    assert_eq!(u(&hello["responses"]["2xx"]), 5, "responses are counted by status class: {hello:#}");
    assert_eq!(hello["version"], WORKSPACE_VERSION);
    assert_eq!(hello["loaded"], true);
    assert!(hello["loaded_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{hello:#}");
    let mean = hello["mean_seconds"].as_f64().expect("a mean after 5 requests");
    let p99 = hello["p99_seconds"].as_f64().expect("a p99 after 5 requests");
    assert!(mean > 0.0 && mean < 5.0 && p99 > 0.0 && p99 <= 25.0, "{hello:#}");
    let echo = plugin(&json, "echo");
    assert_eq!((u(&echo["requests"]), u(&echo["responses"]["5xx"])), (3, 0), "{echo:#}");
    let fixture = plugin(&json, "fixture");
    assert_eq!((u(&fixture["requests"]), u(&fixture["responses"]["5xx"])), (2, 2), "the panics are 5xx: {fixture:#}");
    // Every loaded plugin has a row, loaded once so far.
    for name in STANDARD_PLUGINS {
        assert_eq!(u(&plugin(&json, name)["loads"]), 1, "{name}: {json:#}");
    }
    // Every request by status class (the status request itself is not counted yet), and
    // the docroot's.
    let t = &json["traffic"];
    let classes = |v: &Value| ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| u(&v[c]));
    assert_eq!(classes(&t["responses"]), [0, 9, 0, 1, 2], "5 hello, 3 echo, 1 file; 1 404; 2 panics: {t:#}");
    assert_eq!(classes(&t["static_files"]), [0, 1, 0, 1, 0], "{t:#}");
    assert_eq!(u(&t["requests"]), 12, "{t:#}");
    let setup = &json["setup"];
    let listening = format!("http://{}", server.addr());
    assert_eq!(setup["listeners"], serde_json::json!([listening]), "{setup:#}");
    assert_eq!((&setup["config_file"], &setup["mounts"]), (&Value::Null, &serde_json::json!([])), "{setup:#}");
    for name in ["ctime", "stream", "dispatch"] {
        assert_eq!(u(&plugin(&json, name)["requests"]), 0, "{json:#}");
    }

    // This connection is open and being answered on the (only) I/O loop.
    let c = &json["connections"];
    assert!(u(&c["open"]) >= 1 && u(&c["writing"]) >= 1, "{c:#}");
    let states =
        ["idle", "reading", "processing", "writing", "paused", "closing"].iter().map(|s| u(&c[s])).sum::<u64>();
    assert_eq!(states, u(&c["open"]), "the states add up to open: {c:#}");
    let w = &json["workers"];
    assert!(u(&w["threads"]) >= 4, "{w:#}");
    assert!(u(&w["busy"]) <= u(&w["threads"]), "{w:#}");
    assert_eq!(u(&w["queue_depth"]), 0, "{w:#}");
    assert_eq!((u(&json["reloads"]["count"]), &json["reloads"]["last"]), (0, &Value::Null), "{json:#}");
    let s = &json["server"];
    assert!(s["uptime_seconds"].as_f64().is_some_and(|t| t > 0.0), "{s:#}");
    assert!(u(&s["resident_memory_bytes"]) > 1 << 20, "VmRSS is read: {s:#}");
    assert_eq!(s["version"], WORKSPACE_VERSION);
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// One sample line of the OpenMetrics text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses `name{k="v",...} value` (label values with `\\`, `\"`, `\n` escapes).
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let end = loop {
            let Some(&(i, c)) = chars.peek() else { return Err("unterminated label set".into()) };
            if c == '}' {
                break i + 1;
            }
            let key_start = i;
            while chars.peek().is_some_and(|&(_, c)| c != '=') {
                chars.next();
            }
            let Some((eq, _)) = chars.next() else { return Err("label without '='".into()) };
            let key = &after[key_start..eq];
            if !is_metric_name(key) {
                return Err(format!("bad label name {key:?}"));
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted".into());
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated label value".into()),
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?}")),
                    },
                    Some((_, c)) => value.push(c),
                }
            }
            labels.insert(key.to_owned(), value);
            if chars.peek().is_some_and(|&(_, c)| c == ',') {
                chars.next();
            }
        };
        rest = &after[end..];
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok(Sample { name: name.to_owned(), labels, value })
}

/// Parses a whole OpenMetrics text exposition strictly enough for a test: `# HELP`, `# TYPE`,
/// `# UNIT` lines, samples belonging to the family last declared, and `# EOF` last.
fn parse_openmetrics(text: &str) -> Result<(Vec<Sample>, BTreeMap<String, String>), String> {
    let body = text.strip_suffix("# EOF\n").ok_or("does not end with `# EOF`")?;
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    let mut family: Option<(String, String)> = None;
    for (n, line) in body.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (kind, name, rest) = (parts.next(), parts.next(), parts.next());
            let name = name.filter(|n| is_metric_name(n)).ok_or_else(|| at("bad metric name".into()))?;
            match kind {
                Some("HELP") => {}
                Some("UNIT") => {}
                Some("TYPE") => {
                    let t = rest.ok_or_else(|| at("TYPE without a type".into()))?;
                    let known = ["counter", "gauge", "histogram", "info", "summary", "stateset", "unknown"];
                    if !known.contains(&t) {
                        return Err(at(format!("unknown type {t}")));
                    }
                    types.insert(name.to_owned(), t.to_owned());
                    family = Some((name.to_owned(), t.to_owned()));
                }
                _ => return Err(at("unknown comment".into())),
            }
            continue;
        }
        let sample = parse_sample(line).map_err(at)?;
        let (fam, t) = family.as_ref().ok_or_else(|| at("sample before any TYPE".into()))?;
        let suffixes: &[&str] = match t.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        if !suffixes.iter().any(|s| sample.name == format!("{fam}{s}")) {
            return Err(at(format!("sample outside its family {fam} ({t})")));
        }
        samples.push(sample);
    }
    Ok((samples, types))
}

fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
        .value
}

#[test]
fn metrics_parse_and_count_per_plugin() {
    let server = Server::start();
    for _ in 0..4 {
        get_ok(&server, "/hello.py");
    }
    assert_eq!(server.get("/fixture.py/panic").status, 500);
    let r = get_ok(&server, "/_portico/metrics");
    assert_eq!(r.header("Content-Type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    let text = r.text();
    let (samples, types) = parse_openmetrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    for (family, t) in [
        ("portico_plugin_requests", "counter"),
        ("portico_plugin_responses", "counter"),
        ("portico_plugin_in_flight", "gauge"),
        ("portico_plugin_request_duration_seconds", "histogram"),
        ("portico_plugin", "info"),
        ("portico_connections", "gauge"),
        ("portico_workers_busy", "gauge"),
        ("portico_worker_queue_depth", "gauge"),
        ("portico_reloads", "counter"),
        ("process_start_time_seconds", "gauge"),
        ("portico_reload_last_success_timestamp_seconds", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some(t), "{family}\n{text}");
    }
    let hello = [("plugin", "hello")];
    let fixture = [("plugin", "fixture")];
    assert_eq!(sample(&samples, "portico_plugin_requests_total", &hello), 4.0, "{text}");
    let class = |plugin: &'static str, class: &'static str| [("plugin", plugin), ("class", class)];
    assert_eq!(sample(&samples, "portico_plugin_responses_total", &class("hello", "5xx")), 0.0, "{text}");
    assert_eq!(sample(&samples, "portico_plugin_responses_total", &class("hello", "2xx")), 4.0, "{text}");
    assert_eq!(sample(&samples, "portico_plugin_requests_total", &fixture), 1.0, "{text}");
    assert_eq!(sample(&samples, "portico_plugin_responses_total", &class("fixture", "5xx")), 1.0, "{text}");
    assert!(!types.contains_key("portico_uptime_seconds"), "process_start_time_seconds says it: {text}");
    assert_eq!(sample(&samples, "portico_plugin_request_duration_seconds_count", &hello), 4.0, "{text}");
    assert!(sample(&samples, "portico_plugin_request_duration_seconds_sum", &hello) > 0.0, "{text}");
    // Buckets are cumulative and end at +Inf with the count.
    let buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == "portico_plugin_request_duration_seconds_bucket" && s.labels["plugin"] == "hello")
        .map(|s| {
            let le = &s.labels["le"];
            (if le == "+Inf" { f64::INFINITY } else { le.parse().expect("le is a number") }, s.value)
        })
        .collect();
    assert!(buckets.len() > 10, "{text}");
    assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&(f64::INFINITY, 4.0)), "{text}");
    assert_eq!(sample(&samples, "portico_plugin_in_flight", &hello), 0.0);
    let info = [("plugin", "hello"), ("version", WORKSPACE_VERSION)];
    assert_eq!(sample(&samples, "portico_plugin_info", &info), 1.0, "{text}");
    assert!(sample(&samples, "portico_connections", &[("state", "writing")]) >= 1.0, "{text}");
    assert_eq!(sample(&samples, "portico_reloads_total", &[]), 0.0);
    assert!(sample(&samples, "process_resident_memory_bytes", &[]) > 1e6);
}

// ---------------------------------------------------------------------------------------------
// HTTP behaviour, access, routing
// ---------------------------------------------------------------------------------------------

#[test]
fn head_gets_the_fields_without_a_body_and_other_methods_405() {
    let server = Server::builder().plugins(&["hello"]).start();
    let html = get_ok(&server, "/_portico/status");
    assert_eq!(html.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert!(html.header("Content-Security-Policy").is_some_and(|v| v.starts_with("default-src 'none'")));
    assert!(html.text().contains("<tr id=\"plugin-hello\">"), "{}", html.text());

    for (path, content_type) in [
        ("/_portico/status", "text/html; charset=utf-8"),
        ("/_portico/status?format=json", "application/json"),
        ("/_portico/metrics", "application/openmetrics-text; version=1.0.0; charset=utf-8"),
    ] {
        let reply = support::raw_until_close(server.addr(), &request_bytes("HEAD", path, true), support::IO_TIMEOUT);
        assert!(reply.closed, "HEAD {path}: the server closes after Connection: close");
        let (head, body) = support::split_head(&reply.bytes);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "HEAD {path}: {head}");
        assert!(body.is_empty(), "HEAD {path} has no body, got {} bytes", body.len());
        let r = support::parse_response(&reply.bytes, true);
        assert_eq!(r.header("Content-Type"), Some(content_type), "HEAD {path}");
        let len: usize = r.header("Content-Length").expect("Content-Length").parse().expect("a number");
        assert!(len > 100, "HEAD {path}: the length of the page GET would get ({len})");
    }

    let r =
        server.request(b"POST /_portico/status HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 405, "{}", r.summary());
    assert_eq!(r.header("Allow"), Some("GET, HEAD"));
    // Keep-alive: two status requests and a plugin request on one connection.
    let mut conn = server.connect();
    for path in ["/_portico/status?format=json", "/_portico/metrics", "/hello.py"] {
        conn.send(&request_bytes("GET", path, false));
        assert_eq!(conn.read_response().status, 200, "{path}");
    }
}

/// A non-loopback IPv4 address of this machine, found by routing a UDP socket (no packet is
/// sent); `None` if there is none.
fn non_loopback_ipv4() -> Option<IpAddr> {
    ["192.0.2.1:9", "10.255.255.254:9", "8.8.8.8:53"].iter().find_map(|target| {
        let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
        sock.connect(target).ok()?;
        let ip = sock.local_addr().ok()?.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
    })
}

/// Starts a server that also listens on `ip`, returning it and that address.
fn server_also_on(ip: IpAddr, extra: &[&str]) -> (Server, SocketAddr) {
    let mut args = vec!["--bind".to_owned(), format!("{ip}:0")];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let server =
        Server::builder().plugins(&["hello"]).docroot_file("_portico/status", "a static file\n").args(args).start();
    let needle = format!("listening on http://{ip}:");
    let line = server.wait_for_log(&needle, support::STARTUP_TIMEOUT);
    let port: String =
        line[line.find(&needle).expect("found") + needle.len()..].chars().take_while(char::is_ascii_digit).collect();
    let addr = SocketAddr::new(ip, port.parse().expect("a port"));
    (server, addr)
}

#[test]
fn only_loopback_clients_see_the_pages_unless_public() {
    // The rule itself (10.0.0.1 refused, 127.0.0.0/8 and ::1 accepted) is unit-tested in
    // `status::tests::loopback_rule`. Here, over a real socket from a non-loopback address
    // of this machine, when it has one.
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("SKIPPED the non-loopback half: this machine has no non-loopback IPv4 address");
        return;
    };
    let (server, outside) = server_also_on(ip, &[]);
    // From `ip` (the client's address is `ip`, not loopback): routed as if the pages did not
    // exist — the docroot's file of that name answers, the metrics are a 404.
    let r = support::get(outside, "/_portico/status");
    assert_eq!((r.status, r.text().as_str()), (200, "a static file\n"), "{}", r.summary());
    assert_eq!(support::get(outside, "/_portico/metrics").status, 404);
    assert_eq!(support::get(outside, "/_portico/status?format=json").text(), "a static file\n");
    // From loopback, the same server answers the status page.
    assert!(get_ok(&server, "/_portico/status").text().contains("<title>portico status</title>"));
    drop(server);

    let (server, outside) = server_also_on(ip, &["--status-public"]);
    let r = support::get(outside, "/_portico/status?format=json");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(u(&plugin(&r.json(), "hello")["requests"]), 0);
    assert_eq!(support::get(outside, "/_portico/metrics").status, 200);
    drop(server);
}

#[test]
fn status_public_is_accepted_from_flag_and_environment() {
    let server = Server::builder().plugins(&["hello"]).args(["--status-public"]).start();
    get_ok(&server, "/_portico/status");
    let server = Server::builder().plugins(&["hello"]).env("PORTICO_STATUS_PUBLIC", "true").start();
    get_ok(&server, "/_portico/metrics");
}

#[test]
fn the_pages_win_over_mounts_and_static_files() {
    let dir = TempDir::new("portico-status");
    let config = dir.path().join("portico.toml");
    support::install_bytes(b"[[mount]]\nprefix = \"/\"\napp = \"hello\"\n", &config);
    let server = Server::builder()
        .plugins(&["hello"])
        .docroot_file("_portico/status", "a static file\n")
        .docroot_file("_portico/metrics", "another static file\n")
        .args(["--config".as_ref(), config.as_os_str()])
        .start();
    // The mount at / answers everything else...
    assert_eq!(get_ok(&server, "/anything").text(), "Hello, world!\n");
    assert_eq!(get_ok(&server, "/_portico/other").text(), "Hello, world!\n");
    // ...but not the server's own pages (also when asked for in absolute form or encoded).
    assert!(get_ok(&server, "/_portico/status").text().contains("<title>portico status</title>"));
    assert!(get_ok(&server, "/_portico/%73tatus").text().contains("<title>portico status</title>"));
    assert!(get_ok(&server, "/_portico/metrics").text().ends_with("# EOF\n"));
    let r = server.request(
        b"GET http://example.test/_portico/metrics HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
    );
    assert!(r.text().ends_with("# EOF\n"), "{}", r.summary());
    drop(server);

    let server = Server::builder()
        .plugins(&["hello"])
        .docroot_file("_portico/status", "a static file\n")
        .docroot_file("_portico/other", "other\n")
        .start();
    assert!(get_ok(&server, "/_portico/status").text().contains("<title>portico status</title>"));
    assert_eq!(get_ok(&server, "/_portico/other").text(), "other\n");
    assert_eq!(server.get("/_portico/status/").status, 404, "only the exact path");
}

#[test]
fn the_status_path_is_configurable_and_can_be_turned_off() {
    let server = Server::builder().plugins(&["hello"]).args(["--status-path", "/admin/state"]).start();
    assert!(get_ok(&server, "/admin/state").text().contains("<title>portico status</title>"));
    assert!(get_ok(&server, "/admin/metrics").text().ends_with("# EOF\n"));
    let page = get_ok(&server, "/admin/state").text();
    assert!(page.contains("href=\"/admin/metrics\"") && page.contains("href=\"/admin/state?format=json\""), "{page}");
    assert_eq!(server.get("/_portico/status").status, 404);
    assert_eq!(server.get("/_portico/metrics").status, 404);
    drop(server);

    let server = Server::builder().plugins(&["hello"]).env("PORTICO_STATUS_PATH", "/status").start();
    assert_eq!(status_from(&server, "/status?format=json")["plugins"][0]["name"], "hello");
    assert!(get_ok(&server, "/metrics").text().ends_with("# EOF\n"));
    drop(server);

    let server = Server::builder().plugins(&["hello"]).args(["--status-path", "off"]).start();
    assert_eq!(server.get("/_portico/status").status, 404);
    assert_eq!(server.get("/_portico/metrics").status, 404);
    drop(server);

    for bad in ["nope", "/x/metrics", "/a/../b", "/a?b"] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portico"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PORTICO_") {
                cmd.env_remove(key);
            }
        }
        let out = cmd.args(["--status-path", bad, "--bind", "127.0.0.1:0"]).output().expect("running portico");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--status-path {bad:?} is refused: {err}");
        assert!(err.contains("--status-path"), "{err}");
    }
}

fn status_from(server: &Server, path: &str) -> Value {
    get_ok(server, path).json()
}

#[test]
fn the_page_answers_while_every_worker_is_busy() {
    let server = Server::builder().plugins(&["fixture", "hello"]).args(["--threads", "1"]).start();
    // One slow request runs on the only worker, a second waits in the queue.
    let mut running = server.connect();
    running.send(&request_bytes("GET", "/fixture.py/slow?ms=1500", true));
    let mut queued = server.connect();
    queued.send(&request_bytes("GET", "/fixture.py/slow?ms=1500", true));
    let mut last = Value::Null;
    let seen = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        last = status_json(&server);
        let f = plugin(&last, "fixture");
        let w = &last["workers"];
        (u(&w["busy"]) == 1 && u(&w["queue_depth"]) == 1 && u(&f["in_flight"]) == 1).then_some(())
    });
    assert!(seen.is_some(), "never saw 1 busy worker, 1 queued job, 1 in flight: {last:#}");
    assert_eq!(u(&last["workers"]["threads"]), 1);
    assert_eq!(u(&last["connections"]["processing"]), 2, "two connections wait on the application: {last:#}");
    assert_eq!(running.read_response().status, 200);
    assert_eq!(queued.read_response().status, 200);

    let json = status_json(&server);
    let f = plugin(&json, "fixture");
    assert_eq!((u(&f["requests"]), u(&f["in_flight"])), (2, 0), "{f:#}");
    // Each call took ~1.5 s on the worker; the second one's time in the queue is not counted
    // (with it the mean would be ~2.25 s).
    let mean = f["mean_seconds"].as_f64().expect("a mean");
    assert!((1.5..2.0).contains(&mean), "mean latency {mean} s: the application's time, not the queue's");
    let p99 = f["p99_seconds"].as_f64().expect("a p99");
    assert!((1.0..=2.5).contains(&p99), "p99 {p99} s is in the (1 s, 2.5 s] bucket");
}

#[test]
fn reloads_are_reported_with_their_error() {
    let server = Server::builder().plugins(&["hello"]).start();
    server.install_plugin_bytes("broken.so", b"not a shared library");
    server.hup();
    let mut last = Value::Null;
    let reloaded = poll_until(support::RELOAD_TIMEOUT, Duration::from_millis(20), || {
        last = status_json(&server);
        (u(&last["reloads"]["count"]) == 1).then_some(())
    });
    assert!(reloaded.is_some(), "the reload was not counted: {last:#}");
    let r = &last["reloads"];
    assert_eq!((r["last"]["outcome"].as_str(), u(&r["failures"])), (Some("failed"), 1), "{r:#}");
    let error = r["last"]["error"].as_str().expect("an error");
    assert!(error.contains("broken.so") && error.contains("not a loadable shared library"), "{error}");
    let html = get_ok(&server, "/_portico/status").text();
    assert!(html.contains(">failed</td>") && html.contains("broken.so"), "{html}");

    server.remove_plugin("broken.so");
    server.install_plugin("hello2.so", &support::plugin("hello"));
    server.hup();
    let reloaded = poll_until(support::RELOAD_TIMEOUT, Duration::from_millis(20), || {
        last = status_json(&server);
        (u(&last["reloads"]["count"]) == 2).then_some(())
    });
    assert!(reloaded.is_some(), "the second reload was not counted: {last:#}");
    let r = &last["reloads"];
    assert_eq!((r["last"]["outcome"].as_str(), u(&r["failures"])), (Some("ok"), 1), "{r:#}");
    assert_eq!(r["last"]["error"], Value::Null);
    assert!(r["last"]["summary"].as_str().is_some_and(|s| s.starts_with("1 loaded")), "{r:#}");
    assert_eq!(plugin(&last, "hello2")["loaded"], true);
    let metrics = get_ok(&server, "/_portico/metrics").text();
    assert!(metrics.contains("portico_reloads_total 2\n"), "{metrics}");
    // The last reload succeeded: its time is the last success's.
    assert!(r["last_success_at_unix"].as_f64().is_some(), "{r:#}");
    assert_eq!(r["last_success_at_unix"], r["last"]["at_unix"], "{r:#}");
    let (samples, _) = parse_openmetrics(&metrics).unwrap_or_else(|e| panic!("{e}\n{metrics}"));
    let success = sample(&samples, "portico_reload_last_success_timestamp_seconds", &[]);
    let last_reload = sample(&samples, "portico_reload_last_timestamp_seconds", &[]);
    assert_eq!(success, last_reload, "{metrics}");

    // One file refused, another loaded: partial.
    server.install_plugin_bytes("broken2.so", b"still not a shared library");
    server.install_plugin("hello3.so", &support::plugin("hello"));
    server.hup();
    let reloaded = poll_until(support::RELOAD_TIMEOUT, Duration::from_millis(20), || {
        last = status_json(&server);
        (u(&last["reloads"]["count"]) == 3).then_some(())
    });
    assert!(reloaded.is_some(), "the third reload was not counted: {last:#}");
    let r = &last["reloads"];
    assert_eq!((r["last"]["outcome"].as_str(), u(&r["failures"])), (Some("partial"), 2), "{r:#}");
    assert!(r["last"]["error"].as_str().is_some_and(|e| e.contains("broken2.so")), "{r:#}");
    assert_eq!(plugin(&last, "hello3")["loaded"], true);
}

/// The server's setup (configuration file, listeners, mounts with their pipelines) and each
/// plugin's load count, alone and under a master (whose count spans generations).
#[test]
fn the_page_shows_the_setup_and_how_often_each_plugin_was_loaded() {
    for workers in ["0", "1"] {
        let dir = TempDir::new("portico-status-setup");
        let config = dir.path().join("portico.toml");
        let text = "[[mount]]\nprefix = \"/api\"\napp = \"hello\"\nmiddleware = [\"headers\"]\n\n\
                    [plugin.headers]\nadd = { X-Test = \"1\" }\n";
        std::fs::write(&config, text).unwrap();
        let server = Server::builder()
            .plugins(&["hello", "headers", "echo"])
            .args(["--config".as_ref(), config.as_os_str()])
            .args(["--workers", workers])
            .start();
        get_ok(&server, "/api");
        let json = status_json(&server);
        let setup = &json["setup"];
        assert_eq!(setup["config_file"].as_str(), config.to_str(), "--workers {workers}: {setup:#}");
        assert!(setup["config_loaded_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{setup:#}");
        let mounts = serde_json::json!([{"prefix": "/api", "app": "hello", "middleware": ["headers"]}]);
        assert_eq!(setup["mounts"], mounts, "--workers {workers}: {setup:#}");
        assert_eq!(setup["listeners"], serde_json::json!([format!("http://{}", server.addr())]), "{setup:#}");
        assert_eq!(u(&plugin(&json, "hello")["loads"]), 1, "--workers {workers}: {json:#}");
        let html = get_ok(&server, "/_portico/status").text();
        assert!(html.contains("<td class=\"name\">/api</td><td>headers → hello</td>"), "{html}");
        assert!(html.contains("id=\"traffic-static\"") && html.contains(">loads</th>"), "{html}");

        // hello's file is replaced (same bytes, a new file): loaded anew; echo is not.
        server.install_plugin("hello.so", &support::plugin("hello"));
        server.hup();
        let mut last = Value::Null;
        let counted = poll_until(support::RELOAD_TIMEOUT, Duration::from_millis(50), || {
            last = status_json(&server);
            (plugin(&last, "hello")["loads"].as_u64() == Some(2)).then_some(())
        });
        assert!(counted.is_some(), "--workers {workers}: hello's second load not counted: {last:#}");
        assert_eq!(u(&plugin(&last, "echo")["loads"]), 1, "--workers {workers}: {last:#}");
        let metrics = get_ok(&server, "/_portico/metrics").text();
        assert!(metrics.contains("portico_plugin_loads_total{plugin=\"hello\"} 2\n"), "{metrics}");
        assert!(metrics.contains("portico_responses_total{class=\"2xx\"}"), "{metrics}");
        assert_metrics_documented(&metrics);
    }
}

/// The charts' data under a master: the master samples every worker's totals, so the history
/// is the same whichever worker answers.
#[test]
fn the_json_has_each_applications_recent_history_under_a_master_too() {
    for workers in ["0", "1"] {
        let server = Server::builder().args(["--status-chart-interval", "0.2", "--workers", workers]).start();
        let mut last = Value::Null;
        let seen = poll_until(Duration::from_secs(15), Duration::from_millis(100), || {
            get_ok(&server, "/hello.py");
            assert_eq!(server.get("/fixture.py/panic").status, 500);
            last = status_json(&server);
            let history = last["history"].as_array()?;
            let points = |name: &str| {
                history
                    .iter()
                    .find(|s| s["name"] == name)
                    .and_then(|s| s["points"].as_array())
                    .cloned()
                    .unwrap_or_default()
            };
            let busy = points("hello").iter().any(|p| p["requests_per_second"].as_f64() > Some(0.0));
            let failing = points("fixture").iter().any(|p| p["errors_per_second"].as_f64() > Some(0.0));
            let timed = points("hello").iter().any(|p| p["p99_seconds"].as_f64().is_some());
            (busy && failing && timed).then_some(())
        });
        assert!(seen.is_some(), "--workers {workers}: no history of hello's requests and fixture's 5xx: {last:#}");
    }
}

/// Every metric family in `text` is named in the README's list (counters as `NAME_total`,
/// info metrics as `NAME_info`).
fn assert_metrics_documented(text: &str) {
    let readme = std::fs::read_to_string(support::workspace_root().join("README.md")).unwrap();
    let (_, types) = parse_openmetrics(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let named = |name: &str| {
        readme.match_indices(name).any(|(i, _)| {
            let next = readme[i + name.len()..].chars().next();
            !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    for (family, kind) in &types {
        let name = match kind.as_str() {
            "counter" => format!("{family}_total"),
            "info" => format!("{family}_info"),
            _ => family.clone(),
        };
        assert!(named(&name), "the README's metrics list lacks {name} ({kind})");
    }
}

// ---------------------------------------------------------------------------------------------
// The browser
// ---------------------------------------------------------------------------------------------

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// Kills Chromium's whole process group (the browser and its zygote, renderer and GPU
/// children) when dropped, whatever happened.
struct ProcessGroup(i32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: kill(2) has no memory-safety preconditions; the group is the one we made for
        // the Chromium we started (`process_group(0)`). ESRCH (all gone) is fine.
        unsafe {
            libc::kill(-self.0, libc::SIGKILL);
        }
    }
}

/// Runs headless Chromium with `args` and a private profile in `profile`; returns its stdout.
/// Panics (with its stderr tail) if it fails or takes longer than [`CHROMIUM_TIMEOUT`].
fn chromium(binary: &Path, profile: &Path, args: &[&str]) -> String {
    use std::os::unix::process::CommandExt;
    let stderr_path = profile.join("chromium-stderr.txt");
    let stderr = std::fs::File::create(&stderr_path).expect("creating chromium's stderr file");
    let mut cmd = Command::new(binary);
    cmd.args(["--headless", "--no-sandbox", "--disable-gpu"])
        .arg(format!("--user-data-dir={}", profile.join("profile").display()))
        .args(["--no-first-run", "--no-default-browser-check", "--disable-dev-shm-usage"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    let group = ProcessGroup(i32::try_from(child.id()).expect("pid fits i32"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for chromium") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr_tail = || support::tail(&std::fs::read_to_string(&stderr_path).unwrap_or_default(), 20);
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("chromium {args:?} did not finish within {CHROMIUM_TIMEOUT:?}\n--- stderr ---\n{}", stderr_tail());
    };
    // The group is killed here (and on any panic when `group` drops), so a child holding stdout open cannot hang us.
    drop(group);
    let out = reader.join().expect("the stdout reader");
    assert!(status.success(), "chromium {args:?} failed ({status})\n--- stderr ---\n{}", stderr_tail());
    String::from_utf8_lossy(&out).into_owned()
}

/// The `<tr id="plugin-NAME">` row of the rendered page.
fn row<'a>(dom: &'a str, name: &str) -> &'a str {
    let start = dom.find(&format!("<tr id=\"plugin-{name}\">")).unwrap_or_else(|| panic!("no row for {name}:\n{dom}"));
    let len = dom[start..].find("</tr>").expect("the row ends");
    &dom[start..start + len]
}

#[test]
fn chromium_renders_the_loaded_plugins() {
    let Some(binary) = find_on_path("chromium") else {
        panic!(
            "`chromium` is not on PATH: this test loads the status page in a real browser. \
             Run scripts/test, which installs Debian's `chromium` package (or `apt-get install chromium`)."
        );
    };
    // Chart points every 0.2 s: the traffic below spans several.
    let server = Server::builder().args(["--status-chart-interval", "0.2"]).start();
    for _ in 0..3 {
        get_ok(&server, "/hello.py");
    }
    assert_eq!(server.get("/fixture.py/panic").status, 500);
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..20 {
        get_ok(&server, "/hello.py");
        std::thread::sleep(Duration::from_millis(25));
    }
    std::thread::sleep(Duration::from_millis(500));
    let url = format!("http://{}/_portico/status", server.addr());
    let profile = TempDir::new("portico-chromium");

    let dom = chromium(&binary, profile.path(), &["--dump-dom", &url]);
    assert!(dom.contains("<title>portico status</title>"), "{dom}");
    for name in STANDARD_PLUGINS {
        let row = row(&dom, name);
        assert!(row.contains(&format!("<td class=\"name\">{name}")), "{row}");
        // Marked when its calls run on the event loop: the plugins that promised never to block.
        let on_loop = !matches!(name, "stream" | "fixture");
        assert_eq!(row.contains("(event loop)"), on_loop, "{row}");
    }
    assert!(
        row(&dom, "hello").contains("<td class=\"n\">23</td>"),
        "hello answered 23 requests: {}",
        row(&dom, "hello")
    );
    assert!(row(&dom, "fixture").contains("<td class=\"n bad\">1</td>"), "one 5xx: {}", row(&dom, "fixture"));
    // The charts: hello's three sparklines, drawn (a polyline over several points).
    let start = dom.find("<tr id=\"chart-hello\">").unwrap_or_else(|| panic!("no chart row for hello:\n{dom}"));
    let chart_row = &dom[start..start + dom[start..].find("</tr>").expect("the row ends")];
    assert_eq!(chart_row.matches("<svg").count(), 3, "{chart_row}");
    assert!(chart_row.contains("<polyline points="), "{chart_row}");
    assert!(dom.contains("<tr id=\"chart-fixture\">"), "the panics' application has a chart: {dom}");
    for table in ["plugins", "connections", "workers", "reloads", "charts"] {
        assert!(dom.contains(&format!("<table id=\"{table}\">")), "{table}: {dom}");
    }

    let artifacts = support::plugin_target_dir().parent().expect("target dir").join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap_or_else(|e| panic!("creating {}: {e}", artifacts.display()));
    let png = artifacts.join("status.png");
    let _ = std::fs::remove_file(&png);
    chromium(&binary, profile.path(), &[&format!("--screenshot={}", png.display()), "--window-size=1200,900", &url]);
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", png.display());
    assert!(bytes.len() > 10_000, "a 1200×900 screenshot of the page is more than {} bytes", bytes.len());
    eprintln!("screenshot kept at {}", png.display());
}
