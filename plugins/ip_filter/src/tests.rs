use super::*;
use portico_api::testing::{TestRequest, TestResponse};

/// Rules from `toml`; tables with trusted proxies but no `proxy_header` get `"auto"` (these
/// tests were written against it; real configurations must say which field).
fn rules(toml: &str) -> Rules {
    let toml = if toml.contains("trusted_proxies") && !toml.contains("proxy_header") {
        format!("{toml}\nproxy_header = \"auto\"")
    } else {
        toml.to_owned()
    };
    Rules::from_toml(&toml).unwrap_or_else(|e| panic!("{toml}: {e}"))
}

#[test]
fn trusted_proxies_need_an_explicit_proxy_header() {
    let e = Rules::from_toml("trusted_proxies = [\"10.0.0.2\"]").expect_err("must be refused");
    assert!(e.contains("proxy_header"), "{e}");
    // With X-Forwarded-For named, a client's own Forwarded field is not believed.
    let r = Rules::from_toml("trusted_proxies = [\"10.0.0.2\"]\nproxy_header = \"x-forwarded-for\"").unwrap();
    assert_eq!(
        client(&r, "10.0.0.2", &["for=127.0.0.1"], &["198.51.100.1"]),
        Ok((ip("198.51.100.1"), Source::XForwardedFor))
    );
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn req<'a>(remote: &'a str, forwarded: &[&'a str], xff: &[&'a str]) -> Request<'a> {
    Request {
        remote_addr: remote,
        forwarded: forwarded.iter().map(|s| s.as_bytes()).collect(),
        x_forwarded_for: xff.iter().map(|s| s.as_bytes()).collect(),
    }
}

fn client(rules: &Rules, remote: &str, forwarded: &[&str], xff: &[&str]) -> Result<(IpAddr, Source), String> {
    rules.client(&req(remote, forwarded, xff))
}

fn ok(app_env: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>) -> Body {
    sr.start(status::OK, &[("Content-Type", "text/plain")]);
    Body::from(format!("app: {}\n", app_env.path_info()))
}

fn through(filter: &IpFilter, request: TestRequest) -> TestResponse {
    request.call_middleware(filter, &ok)
}

// ---- configuration ----

#[test]
fn empty_config_is_loopback_only() {
    let r = rules("");
    assert_eq!(r, Rules::default());
    assert!(r.verdict(ip("127.0.0.1")).is_ok());
    assert!(r.verdict(ip("127.200.0.9")).is_ok());
    assert!(r.verdict(ip("::1")).is_ok());
    assert!(r.verdict(ip("10.0.0.1")).is_err());
    assert!(r.verdict(ip("::2")).is_err());
}

#[test]
fn deny_only_lets_the_rest_through() {
    let r = rules(r#"deny = ["10.0.0.0/8"]"#);
    assert!(r.verdict(ip("10.1.2.3")).is_err());
    assert!(r.verdict(ip("192.0.2.1")).is_ok());
    assert!(r.verdict(ip("2001:db8::1")).is_ok());
}

#[test]
fn explicit_empty_allow_passes_everything() {
    let r = rules("allow = []");
    assert!(r.verdict(ip("203.0.113.5")).is_ok());
}

#[test]
fn config_errors_name_the_key() {
    let cases = [
        (
            r#"allow = ["127.0.0.0/8", "::1/128", "10.0.0.0/33"]"#,
            "allow[2]: invalid CIDR '10.0.0.0/33': prefix length '33' is not 0 to 32 for IPv4",
        ),
        (r#"deny = ["2001:db8::/129"]"#, "deny[0]: invalid CIDR '2001:db8::/129'"),
        (
            r#"deny = ["10.0.0.1/8"]"#,
            "deny[0]: invalid CIDR '10.0.0.1/8': host bits are set (the network is '10.0.0.0/8')",
        ),
        (
            r#"trusted_proxies = ["proxy.local"]"#,
            "trusted_proxies[0]: invalid CIDR 'proxy.local': 'proxy.local' is not an IPv4 or IPv6 address",
        ),
        (r#"allow = ["10.0.0.0/+8"]"#, "allow[0]: invalid CIDR '10.0.0.0/+8'"),
        (r#"allow = [" 10.0.0.0/8"]"#, "allow[0]: invalid CIDR ' 10.0.0.0/8'"),
        ("alow = []", "unknown field `alow`"),
        (
            "allow = \"10.0.0.0/8\"",
            "(`allow = \"10.0.0.0/8\"`): invalid type: string \"10.0.0.0/8\", expected a sequence",
        ),
        ("proxy_header = \"xff\"", "unknown variant `xff`"),
        ("allow = [", "line 1 of [plugin.ip_filter]"),
    ];
    for (toml, expected) in cases {
        let err = Rules::from_toml(toml).expect_err(toml);
        assert!(err.contains(expected), "{toml}\n got: {err}\nwant: {expected}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
}

#[test]
fn single_addresses_and_mapped_rules() {
    let r = rules(r#"allow = ["192.0.2.7", "2001:db8::1", "::ffff:10.9.0.0/112"]"#);
    assert!(r.verdict(ip("192.0.2.7")).is_ok());
    assert!(r.verdict(ip("192.0.2.8")).is_err());
    assert!(r.verdict(ip("2001:db8::1")).is_ok());
    assert!(r.verdict(ip("10.9.3.4")).is_ok(), "an IPv4-mapped rule is an IPv4 rule");
    assert!(r.verdict(ip("10.8.3.4")).is_err());
}

// ---- the decision ----

#[test]
fn deny_wins_over_allow() {
    let r = rules(
        r#"allow = ["10.0.0.0/8"]
deny = ["10.66.0.0/16"]"#,
    );
    assert!(r.verdict(ip("10.1.1.1")).is_ok());
    let why = r.verdict(ip("10.66.1.1")).unwrap_err();
    assert_eq!(why, "is denied by deny[0] = 10.66.0.0/16");
    assert_eq!(r.verdict(ip("192.0.2.1")).unwrap_err(), "is not in allow");
}

#[test]
fn ipv4_mapped_clients_match_ipv4_rules() {
    let r = rules(r#"deny = ["10.0.0.0/8"]"#);
    assert!(r.verdict(ip("::ffff:10.0.0.1")).is_err());
    let r = rules(r#"allow = ["10.0.0.0/8"]"#);
    assert!(r.verdict(ip("::ffff:10.0.0.1")).is_ok());
    let refused = r.check(&req("::ffff:192.0.2.1", &[], &[])).unwrap_err();
    assert!(refused.reason.starts_with("192.0.2.1 (from REMOTE_ADDR)"), "{refused}");
    assert_eq!(r.check(&req("::ffff:10.0.0.1", &[], &[])).unwrap().0, ip("10.0.0.1"));
}

#[test]
fn ipv6_rules() {
    let r = rules(
        r#"allow = ["2001:db8::/32"]
deny = ["2001:db8:bad::/48"]"#,
    );
    assert!(r.verdict(ip("2001:db8:1::5")).is_ok());
    assert!(r.verdict(ip("2001:db8:bad::5")).is_err());
    assert!(r.verdict(ip("2001:db9::1")).is_err());
    assert!(r.verdict(ip("192.0.2.1")).is_err());
}

#[test]
fn the_host_field_has_no_say() {
    // A popular WSGI tutorial filters on the Host header: the client writes that field.
    let filter = IpFilter::new(rules(
        r#"allow = ["127.0.0.0/8"]
deny = ["203.0.113.0/24"]"#,
    ));
    for host in ["127.0.0.1", "localhost", "127.0.0.1:8000", "[::1]"] {
        let r = through(&filter, TestRequest::get("/").remote_addr("203.0.113.9").header("Host", host));
        assert_eq!(r.code(), 403, "Host: {host}");
        let r = through(&filter, TestRequest::get("/").remote_addr("198.51.100.1").header("Host", host));
        assert_eq!(r.code(), 403, "not allowed whatever Host says: {host}");
    }
    let r = through(&filter, TestRequest::get("/").remote_addr("127.0.0.1").header("Host", "203.0.113.9"));
    assert_eq!(r.code(), 200);
}

#[test]
fn forwarding_fields_from_untrusted_peers_are_ignored() {
    let r = rules(r#"deny = ["203.0.113.0/24"]"#);
    assert_eq!(
        client(&r, "203.0.113.9", &["for=127.0.0.1"], &["127.0.0.1"]).unwrap(),
        (ip("203.0.113.9"), Source::RemoteAddr)
    );
    let r = rules(
        r#"allow = ["127.0.0.0/8"]
trusted_proxies = ["10.0.0.2"]"#,
    );
    assert!(r.check(&req("198.51.100.1", &[], &["127.0.0.1"])).is_err(), "an untrusted peer cannot claim loopback");
}

#[test]
fn x_forwarded_for_walks_from_the_right() {
    let r = rules(
        r#"allow = []
trusted_proxies = ["10.0.0.0/24"]"#,
    );
    // client forged "1.1.1.1", then the real client 198.51.100.7, then an inner proxy 10.0.0.3.
    let got = client(&r, "10.0.0.2", &[], &["1.1.1.1, 198.51.100.7", "10.0.0.3"]).unwrap();
    assert_eq!(got, (ip("198.51.100.7"), Source::XForwardedFor));
    // No field: the trusted peer itself.
    assert_eq!(client(&r, "10.0.0.2", &[], &[]).unwrap(), (ip("10.0.0.2"), Source::RemoteAddr));
    // Every hop trusted: the leftmost.
    assert_eq!(client(&r, "10.0.0.2", &[], &["10.0.0.9, 10.0.0.3"]).unwrap().0, ip("10.0.0.9"));
    // Ports and brackets as some proxies write them; empty list elements skipped.
    assert_eq!(client(&r, "10.0.0.2", &[], &["198.51.100.7:5555, ,"]).unwrap().0, ip("198.51.100.7"));
    assert_eq!(client(&r, "10.0.0.2", &[], &["[2001:db8::7]:443"]).unwrap().0, ip("2001:db8::7"));
    assert_eq!(client(&r, "10.0.0.2", &[], &["2001:db8::7"]).unwrap().0, ip("2001:db8::7"));
    assert_eq!(client(&r, "10.0.0.2", &[], &["::ffff:192.0.2.1"]).unwrap().0, ip("192.0.2.1"));
}

#[test]
fn a_forged_left_entry_does_not_get_through() {
    let r = rules(
        r#"deny = ["203.0.113.0/24"]
trusted_proxies = ["10.0.0.2"]"#,
    );
    // The denied client writes X-Forwarded-For: 127.0.0.1; the proxy appends the real peer.
    let refused = r.check(&req("10.0.0.2", &[], &["127.0.0.1, 203.0.113.9"])).unwrap_err();
    assert!(refused.reason.contains("203.0.113.9 (from X-Forwarded-For) is denied by deny[0]"), "{refused}");
}

#[test]
fn unknown_clients_are_refused() {
    let r = rules(
        r#"deny = ["203.0.113.0/24"]
trusted_proxies = ["10.0.0.2"]"#,
    );
    for xff in ["unknown", "garbage", "198.51.100.7, unknown"] {
        let err = r.check(&req("10.0.0.2", &[], &[xff])).unwrap_err();
        assert!(err.reason.starts_with("client unknown: X-Forwarded-For from trusted proxy 10.0.0.2"), "{xff}: {err}");
    }
    // An unknown hop left of the client does not matter.
    assert_eq!(r.check(&req("10.0.0.2", &[], &["unknown, 198.51.100.7"])).unwrap().0, ip("198.51.100.7"));
    assert!(r.check(&req("not-an-ip", &[], &[])).unwrap_err().reason.contains("REMOTE_ADDR 'not-an-ip'"));
}

#[test]
fn forwarded_takes_precedence_in_auto_mode() {
    let r = rules(
        r#"allow = []
trusted_proxies = ["10.0.0.2"]"#,
    );
    let got = client(&r, "10.0.0.2", &["for=198.51.100.1"], &["192.0.2.99"]).unwrap();
    assert_eq!(got, (ip("198.51.100.1"), Source::Forwarded));
    // proxy_header chooses.
    let r = rules(
        r#"allow = []
trusted_proxies = ["10.0.0.2"]
proxy_header = "x-forwarded-for""#,
    );
    assert_eq!(client(&r, "10.0.0.2", &["for=198.51.100.1"], &["192.0.2.99"]).unwrap().0, ip("192.0.2.99"));
    let r = rules(
        r#"allow = []
trusted_proxies = ["10.0.0.2"]
proxy_header = "forwarded""#,
    );
    assert_eq!(client(&r, "10.0.0.2", &[], &["192.0.2.99"]).unwrap().0, ip("10.0.0.2"));
}

// ---- Forwarded parsing (RFC 7239) ----

fn fwd(values: &[&str]) -> Result<Vec<Hop>, String> {
    forwarded_for(&values.iter().map(|s| s.as_bytes()).collect::<Vec<_>>())
}

#[test]
fn forwarded_rfc_7239_examples() {
    use Hop::{Addr, Unknown};
    // §4 and §7.4 examples.
    assert_eq!(fwd(&[r#"for="_gazonk""#]).unwrap(), [Unknown("an obfuscated identifier '_gazonk'".into())]);
    assert_eq!(fwd(&[r#"For="[2001:db8:cafe::17]:4711""#]).unwrap(), [Addr(ip("2001:db8:cafe::17"))]);
    assert_eq!(fwd(&["for=192.0.2.60;proto=http;by=203.0.113.43"]).unwrap(), [Addr(ip("192.0.2.60"))]);
    assert_eq!(
        fwd(&["for=192.0.2.43, for=198.51.100.17"]).unwrap(),
        [Addr(ip("192.0.2.43")), Addr(ip("198.51.100.17"))]
    );
    assert_eq!(fwd(&["for=unknown"]).unwrap(), [Unknown("for=unknown".into())]);
    assert_eq!(fwd(&["for=UNKNOWN"]).unwrap(), [Unknown("for=unknown".into())]);
    assert_eq!(fwd(&[r#"for="192.0.2.43:47011""#]).unwrap(), [Addr(ip("192.0.2.43"))]);
    assert_eq!(fwd(&[r#"for="[2001:db8:cafe::17]""#]).unwrap(), [Addr(ip("2001:db8:cafe::17"))]);
    assert_eq!(fwd(&[r#"for="[2001:db8::1]:_obf""#]).unwrap(), [Addr(ip("2001:db8::1"))]);
}

#[test]
fn forwarded_several_fields_and_odd_spacing() {
    assert_eq!(
        fwd(&["for=192.0.2.1", " for = 192.0.2.2 ; proto=https ,for=\"[::1]\""]).unwrap(),
        [Hop::Addr(ip("192.0.2.1")), Hop::Addr(ip("192.0.2.2")), Hop::Addr(ip("::1"))]
    );
    // Separators inside a quoted string do not split.
    assert_eq!(fwd(&[r#"for="_a,b;c", for=192.0.2.3"#]).unwrap().len(), 2);
    // An element without for=.
    assert_eq!(fwd(&["proto=https"]).unwrap(), [Hop::Unknown("an element without for=".into())]);
    assert!(fwd(&[""]).unwrap().is_empty());
}

#[test]
fn forwarded_non_addresses() {
    for node in [r#"for="[2001:db8::1""#, "for=[2001:db8::1]x", r#"for="[10.0.0.1]""#, "for=host.example", "for=\"\""] {
        let hops = fwd(&[node]).unwrap();
        assert!(matches!(hops.as_slice(), [Hop::Unknown(_)]), "{node}: {hops:?}");
    }
}

#[test]
fn forwarded_malformed_is_an_error_and_refused() {
    assert!(fwd(&[r#"for="192.0.2.1"#]).unwrap_err().contains("unterminated"));
    assert!(fwd(&["for"]).unwrap_err().contains("not name=value"));
    assert!(fwd(&[r#"for="192.0.2.1"x"#]).is_err());
    assert!(forwarded_for(&[b"for=\xff"]).is_err());
    let r = rules(
        r#"allow = []
trusted_proxies = ["10.0.0.2"]"#,
    );
    let err = r.check(&req("10.0.0.2", &[r#"for="192.0.2.1"#], &[])).unwrap_err();
    assert!(err.reason.contains("trusted proxy 10.0.0.2 sent a malformed Forwarded field"), "{err}");
}

#[test]
fn forwarded_through_a_trusted_chain() {
    let r = rules(
        r#"allow = ["198.51.100.0/24"]
trusted_proxies = ["10.0.0.0/8", "2001:db8:f::/48"]"#,
    );
    let got = r.check(&req(
        "10.0.0.2",
        &[r#"for=1.2.3.4, for="[2001:db8:cafe::17]:4711", for=198.51.100.9;proto=https, for="[2001:db8:f::1]""#],
        &[],
    ));
    assert_eq!(got.unwrap(), (ip("198.51.100.9"), Source::Forwarded));
}

// ---- the middleware ----

#[test]
fn refusal_is_403_and_logged() {
    let filter = IpFilter::new(rules(r#"deny = ["203.0.113.0/24"]"#));
    let r = through(&filter, TestRequest::get("/secret").remote_addr("203.0.113.9"));
    assert_eq!(r.code(), 403);
    assert_eq!(r.text(), "Forbidden\n");
    assert_eq!(r.log.len(), 1, "{r:?}");
    assert_eq!(
        r.log[0],
        "ip_filter: refused GET \"/secret\": 203.0.113.9 (from REMOTE_ADDR) is denied by deny[0] = 203.0.113.0/24 \
         (REMOTE_ADDR 203.0.113.9)"
    );
    let r = through(&filter, TestRequest::get("/open").remote_addr("192.0.2.1"));
    assert_eq!((r.code(), r.text().as_str()), (200, "app: /open\n"));
    assert!(r.log.is_empty());
}

#[test]
fn a_path_cannot_forge_a_log_line() {
    let filter = IpFilter::new(rules(r#"deny = ["203.0.113.0/24"]"#));
    let r =
        through(&filter, TestRequest::get("/x\n2026-11-29T00:00:00Z ERROR portico: FAKE").remote_addr("203.0.113.9"));
    assert_eq!(r.log.len(), 1);
    assert!(!r.log[0].contains('\n'), "{:?}", r.log[0]);
    assert!(
        r.log[0].starts_with("ip_filter: refused GET \"/x\\n2026-11-29T00:00:00Z ERROR portico: FAKE\": "),
        "{:?}",
        r.log[0]
    );
}

#[test]
fn repeated_refusals_are_summarised() {
    let filter = IpFilter::new(rules(r#"deny = ["203.0.113.0/24"]"#));
    let t0 = std::time::Instant::now();
    assert!(filter.log_line(t0, || "first".into()).is_some());
    for i in 1..=5 {
        assert_eq!(filter.log_line(t0 + LOG_EVERY / 10 * i, || format!("refusal {i}")), None, "within a second");
    }
    let next = filter.log_line(t0 + LOG_EVERY * 2, || "later".into()).expect("a line after a second");
    assert_eq!(next, "later (and 5 more refused in the 2 s before, not logged one by one)");
    assert_eq!(filter.log_line(t0 + LOG_EVERY * 4, || "again".into()).as_deref(), Some("again"));
    // Through the middleware: the second refusal right after the first is not a line.
    let filter = IpFilter::new(rules(r#"deny = ["203.0.113.0/24"]"#));
    let r1 = through(&filter, TestRequest::get("/a").remote_addr("203.0.113.9"));
    let r2 = through(&filter, TestRequest::get("/b").remote_addr("203.0.113.9"));
    assert_eq!((r1.code(), r2.code()), (403, 403));
    assert_eq!(r1.log.len() + r2.log.len(), 1, "{:?} {:?}", r1.log, r2.log);
}

#[test]
fn the_exported_entry_points() {
    // init is not called here: the defaults (loopback only) apply.
    let root = crate::portico_root_module();
    assert!(root.init().is_some());
    let r = TestRequest::get("/a").remote_addr("127.0.0.1").call_plugin_middleware(root, &ok);
    assert_eq!((r.code(), r.text().as_str()), (200, "app: /a\n"));
    let r = TestRequest::get("/a").remote_addr("192.0.2.1").call_plugin_middleware(root, &ok);
    assert_eq!(r.code(), 403);
    // Mounted alone: what passes finds nothing.
    let r = TestRequest::get("/a").remote_addr("::1").call_plugin(root);
    assert_eq!(r.code(), 404);
    let r = TestRequest::get("/a").remote_addr("192.0.2.1").call_plugin(root);
    assert_eq!(r.code(), 403);
}

#[test]
fn the_exported_init_refuses_bad_config() {
    // Only failing configurations: a successful init would set this test binary's rules.
    let root = crate::portico_root_module();
    let init = root.init().expect("ip_filter exports init");
    let verdict = init(abi_stable::std_types::RStr::from_str(r#"allow = ["127.0.0.0/8", "::1/128", "10.0.0.0/33"]"#));
    let err = verdict.into_result().expect_err("refused");
    assert_eq!(err.as_str(), "allow[2]: invalid CIDR '10.0.0.0/33': prefix length '33' is not 0 to 32 for IPv4");
}

#[test]
fn unix_socket_clients_pass_only_with_allow_unix() {
    let unix = Request { remote_addr: "", ..Request::default() };
    let refused = Rules::from_toml("").unwrap().check(&unix).unwrap_err();
    assert!(refused.reason.contains("allow_unix"), "{refused}");
    let rules = Rules::from_toml("allow = [\"10.0.0.0/8\"]\nallow_unix = true\n").unwrap();
    assert_eq!(rules.check(&unix).unwrap().1, Source::UnixSocket);
    let outsider = Request { remote_addr: "192.0.2.1", ..Request::default() };
    assert!(rules.check(&outsider).is_err(), "allow_unix lets only Unix socket clients through");
}
