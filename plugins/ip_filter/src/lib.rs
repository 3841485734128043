//! `ip_filter`: a middleware that lets a request through, or refuses it with
//! `403 Forbidden`, by the client's IP address.
//!
//! List it as middleware in front of an application in a mount's pipeline. Mounted alone
//! (as a plain application) it still refuses what it refuses, and what it lets through gets
//! `404 Not Found`.
//!
//! ## Which address is the client
//!
//! `REMOTE_ADDR`, the peer of the TCP connection, and nothing the client wrote: never the
//! `Host` field (that names the server the client wants, and is whatever the client
//! types). Only when `REMOTE_ADDR` is one of `trusted_proxies` is the client taken from the
//! proxy's `Forwarded: for=` (RFC 7239) or, without one, `X-Forwarded-For`. Those lists
//! grow to the right, one entry per proxy, and everything left of what a trusted proxy
//! appended may be forged by the client; so the list is walked from the right, skipping
//! addresses that are themselves trusted proxies, and the first one that is not is the
//! client (if every entry is a trusted proxy, the leftmost is). An entry that is not an
//! address (`for=unknown`, an obfuscated `for=_hidden`, garbage), met before the client is
//! found, leaves the client unknown, and an unknown client is refused: the filter fails
//! closed.
//!
//! An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is the IPv4 address, for the client and
//! in rules alike.
//!
//! ## Rules
//!
//! `deny` wins over `allow`. With `allow` empty, everything not denied passes; otherwise only
//! addresses in `allow` pass. With neither key given, the default is `allow` loopback only
//! (`127.0.0.0/8`, `::1/128`), also when the host never called `init`. A refusal is logged
//! through `wsgi.errors` with the method, the path (quoted, control characters escaped), the
//! address, how it was found, and the rule — at most one line a second ([`LOG_EVERY`]): the
//! refusals in between are counted, and the next line says how many.
//!
//! ## Configuration (`[plugin.ip_filter]`)
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `allow` | list of CIDRs | loopback, if `deny` is not given either; else `[]` | addresses that may pass (empty: all not denied) |
//! | `deny` | list of CIDRs | `[]` | addresses refused, whatever `allow` says |
//! | `trusted_proxies` | list of CIDRs | `[]` | peers whose forwarding fields are believed |
//! | `allow_unix` | boolean | `false` | let clients on a Unix socket (`--bind unix:PATH`) pass; they have no address (`REMOTE_ADDR` is empty), so `allow` and `deny` cannot name them |
//! | `proxy_header` | `"x-forwarded-for"`, `"forwarded"`, `"auto"` | required with `trusted_proxies` | which field the trusted proxies write. `auto` reads `Forwarded` if the request has one, else `X-Forwarded-For` — only safe when every proxy strips a client's own `Forwarded` |
//!
//! A CIDR is `address/prefix` (`10.0.0.0/8`, `2001:db8::/32`) or a single address
//! (`192.0.2.7`, meaning `/32` or `/128`). Host bits must be zero (`10.0.0.1/8` is refused:
//! write `10.0.0.0/8`). Unknown keys are refused, so a typo stops the plugin from loading
//! with a message naming the key.
//!
//! ```toml
//! [plugin.ip_filter]
//! allow = ["127.0.0.0/8", "::1/128", "10.0.0.0/8"]
//! deny = ["10.66.0.0/16"]
//! trusted_proxies = ["10.0.0.2"]
//! # Set it to the one field your proxy writes: with "auto", a proxy that writes only
//! # X-Forwarded-For and passes a client's own Forwarded field on lets the client choose.
//! proxy_header = "x-forwarded-for"
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use portico_api::{Body, Environ, Next, StartResponse, export_app, status};
use serde::Deserialize;

/// The rules `init` parsed; read when the middleware is built, on the first request.
static RULES: OnceLock<Rules> = OnceLock::new();

/// Which forwarding field the trusted proxies write (`proxy_header`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyHeader {
    /// `Forwarded` if the request has one, else `X-Forwarded-For`.
    #[default]
    Auto,
    /// Only `Forwarded` (RFC 7239).
    Forwarded,
    /// Only `X-Forwarded-For`.
    XForwardedFor,
}

/// The `[plugin.ip_filter]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    proxy_header: Option<ProxyHeader>,
    #[serde(default)]
    allow_unix: bool,
}

/// The filter's rules, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
    proxy_header: ProxyHeader,
    allow_unix: bool,
}

impl Default for Rules {
    /// Loopback only: what an empty configuration means.
    fn default() -> Self {
        Rules {
            allow: vec![net("127.0.0.0/8"), net("::1/128")],
            deny: Vec::new(),
            trusted_proxies: Vec::new(),
            proxy_header: ProxyHeader::Auto,
            allow_unix: false,
        }
    }
}

fn net(s: &str) -> IpNet {
    parse_cidr(s).unwrap_or_else(|e| panic!("built-in CIDR {s}: {e}"))
}

/// How the client's address was found, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `REMOTE_ADDR` (no trusted proxy involved).
    RemoteAddr,
    /// The `Forwarded` field of a trusted proxy.
    Forwarded,
    /// The `X-Forwarded-For` field of a trusted proxy.
    XForwardedFor,
    /// A Unix socket: no address (reported as `0.0.0.0`), let through by `allow_unix`.
    UnixSocket,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::RemoteAddr => "REMOTE_ADDR",
            Source::Forwarded => "Forwarded",
            Source::XForwardedFor => "X-Forwarded-For",
            Source::UnixSocket => "a Unix socket",
        })
    }
}

/// A refused request: why, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The one-line reason.
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// What a request carries that the decision looks at. Built from an environ by
/// [`Request::from_environ`]; tests build it by hand.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// `REMOTE_ADDR`.
    pub remote_addr: &'a str,
    /// The values of every `Forwarded` field, in order.
    pub forwarded: Vec<&'a [u8]>,
    /// The values of every `X-Forwarded-For` field, in order.
    pub x_forwarded_for: Vec<&'a [u8]>,
}

impl Rules {
    /// Parses the `[plugin.ip_filter]` table (TOML text; empty means the defaults).
    ///
    /// # Errors
    /// The TOML is malformed, a key is unknown or has the wrong type, or a CIDR is invalid;
    /// the message names the key (and index), e.g.
    /// `allow[2]: invalid CIDR '10.0.0.0/33': prefix length 33 is over 32 for IPv4`.
    pub fn from_toml(text: &str) -> Result<Rules, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let list = |key: &str, items: &[String]| -> Result<Vec<IpNet>, String> {
            items
                .iter()
                .enumerate()
                .map(|(i, s)| parse_cidr(s).map_err(|e| format!("{key}[{i}]: invalid CIDR '{s}': {e}")))
                .collect()
        };
        let (allow, deny) = match (&raw.allow, &raw.deny) {
            (None, None) => (Rules::default().allow, Vec::new()),
            (allow, deny) => {
                (list("allow", allow.as_deref().unwrap_or(&[]))?, list("deny", deny.as_deref().unwrap_or(&[]))?)
            }
        };
        let trusted_proxies = list("trusted_proxies", &raw.trusted_proxies)?;
        // A proxy that writes only X-Forwarded-For usually passes a client's own `Forwarded`
        // through: guessing which field to believe would let the client pick its address.
        let proxy_header = match (raw.proxy_header, trusted_proxies.is_empty()) {
            (Some(h), _) => h,
            (None, true) => ProxyHeader::Auto,
            (None, false) => {
                return Err("trusted_proxies is set: also set proxy_header to the field your proxies write \
                            (\"x-forwarded-for\" or \"forwarded\"); \"auto\" trusts whichever the request has"
                    .to_owned());
            }
        };
        Ok(Rules { allow, deny, trusted_proxies, proxy_header, allow_unix: raw.allow_unix })
    }

    /// Decides on a request: `Ok` with the client's address (and where it came from) if it
    /// may pass.
    ///
    /// # Errors
    /// The request is refused; the [`Refusal`] says why.
    pub fn check(&self, request: &Request<'_>) -> Result<(IpAddr, Source), Refusal> {
        if request.remote_addr.is_empty() {
            return if self.allow_unix {
                Ok((IpAddr::from([0, 0, 0, 0]), Source::UnixSocket))
            } else {
                Err(Refusal {
                    reason: "a client on a Unix socket (no REMOTE_ADDR) is refused: set allow_unix = true".to_owned(),
                })
            };
        }
        let (client, source) = self.client(request).map_err(|reason| Refusal { reason })?;
        match self.verdict(client) {
            Ok(()) => Ok((client, source)),
            Err(rule) => Err(Refusal { reason: format!("{client} (from {source}) {rule}") }),
        }
    }

    /// Whether `addr` passes the rules: `Err` names the rule that refused it.
    ///
    /// # Errors
    /// `addr` is in `deny`, or `allow` is not empty and `addr` is not in it.
    pub fn verdict(&self, addr: IpAddr) -> Result<(), String> {
        let addr = canonical(addr);
        if let Some((i, n)) = self.deny.iter().enumerate().find(|(_, n)| n.contains(&addr)) {
            return Err(format!("is denied by deny[{i}] = {n}"));
        }
        if self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&addr)) {
            Ok(())
        } else {
            Err("is not in allow".to_owned())
        }
    }

    fn is_trusted(&self, addr: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&addr))
    }

    /// The client's address: `REMOTE_ADDR`, or what trusted proxies say (see the crate docs).
    ///
    /// # Errors
    /// `REMOTE_ADDR` is not an address, or the forwarding field leaves the client unknown.
    pub fn client(&self, request: &Request<'_>) -> Result<(IpAddr, Source), String> {
        let remote = parse_remote_addr(request.remote_addr)
            .ok_or_else(|| format!("REMOTE_ADDR '{}' is not an IP address", request.remote_addr))?;
        if !self.is_trusted(remote) {
            return Ok((remote, Source::RemoteAddr));
        }
        let use_forwarded = match self.proxy_header {
            ProxyHeader::Auto => !request.forwarded.is_empty(),
            ProxyHeader::Forwarded => true,
            ProxyHeader::XForwardedFor => false,
        };
        let (hops, source) = if use_forwarded {
            (forwarded_for(&request.forwarded), Source::Forwarded)
        } else {
            (x_forwarded_for(&request.x_forwarded_for), Source::XForwardedFor)
        };
        let hops = hops.map_err(|e| format!("trusted proxy {remote} sent a malformed {source} field: {e}"))?;
        if hops.is_empty() {
            // The trusted host's own request, or a proxy that says nothing.
            return Ok((remote, Source::RemoteAddr));
        }
        let mut client = remote;
        for hop in hops.iter().rev() {
            match hop {
                Hop::Addr(addr) => {
                    client = *addr;
                    if !self.is_trusted(*addr) {
                        return Ok((client, source));
                    }
                }
                Hop::Unknown(what) => {
                    return Err(format!("client unknown: {source} from trusted proxy {remote} has {what}"));
                }
            }
        }
        Ok((client, source))
    }
}

impl<'a> Request<'a> {
    /// The facts of `environ`. Nothing else of the request (the `Host` field least of all)
    /// has a say.
    pub fn from_environ(environ: &'a Environ<'_>) -> Request<'a> {
        Request {
            remote_addr: environ.remote_addr.as_str(),
            forwarded: environ.header_values("Forwarded").collect(),
            x_forwarded_for: environ.header_values("X-Forwarded-For").collect(),
        }
    }
}

/// One entry of a forwarding list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop {
    /// An address (IPv4-mapped IPv6 made IPv4).
    Addr(IpAddr),
    /// Not an address: what it was, for the log.
    Unknown(String),
}

/// An IPv4-mapped IPv6 address as IPv4; anything else unchanged.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// `REMOTE_ADDR` as the host writes it (`127.0.0.1`, `::1`), brackets tolerated.
fn parse_remote_addr(s: &str) -> Option<IpAddr> {
    let s = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(s);
    s.parse().ok().map(canonical)
}

/// A rule: `addr/prefix` with zero host bits, or one address. IPv4-mapped IPv6 networks
/// (`::ffff:10.0.0.0/104`) become IPv4 ones.
///
/// # Errors
/// A short explanation, without the input (the caller adds it).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let (addr_text, prefix_text) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| format!("'{addr_text}' is not an IPv4 or IPv6 address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix_text {
        None => max,
        Some(p) => {
            let prefix: u8 =
                p.parse().ok().filter(|n: &u8| p.bytes().all(|b| b.is_ascii_digit()) && *n <= max).ok_or_else(
                    || {
                        format!(
                            "prefix length '{p}' is not 0 to {max} for {}",
                            if addr.is_ipv4() { "IPv4" } else { "IPv6" }
                        )
                    },
                )?;
            prefix
        }
    };
    let net = IpNet::new(addr, prefix).map_err(|e| e.to_string())?;
    if net.addr() != net.network() {
        return Err(format!("host bits are set (the network is '{}')", net.trunc()));
    }
    Ok(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).map_err(|e| e.to_string())?),
            None => net,
        },
        _ => net,
    })
}

/// The `for=` nodes of `Forwarded` fields (RFC 7239 §4), left to right. An element without
/// `for` is an unknown hop.
///
/// # Errors
/// The fields do not parse (an unterminated quoted string, a pair without `=`, text that
/// is not UTF-8).
pub fn forwarded_for(values: &[&[u8]]) -> Result<Vec<Hop>, String> {
    let mut hops = Vec::new();
    for value in values {
        let value = std::str::from_utf8(value).map_err(|_| "not UTF-8".to_owned())?;
        for element in split_outside_quotes(value, ',')? {
            if element.trim().is_empty() {
                continue;
            }
            let mut node = None;
            for pair in split_outside_quotes(element, ';')? {
                let pair = pair.trim();
                if pair.is_empty() {
                    continue;
                }
                let (name, raw) = pair.split_once('=').ok_or_else(|| format!("'{pair}' is not name=value"))?;
                if name.trim().eq_ignore_ascii_case("for") {
                    node = Some(unquote(raw.trim())?);
                }
            }
            hops.push(match node {
                Some(node) => parse_node(&node),
                None => Hop::Unknown("an element without for=".to_owned()),
            });
        }
    }
    Ok(hops)
}

/// The entries of `X-Forwarded-For` fields, left to right (empty list elements skipped).
///
/// # Errors
/// A field that is not UTF-8.
pub fn x_forwarded_for(values: &[&[u8]]) -> Result<Vec<Hop>, String> {
    let mut hops = Vec::new();
    for value in values {
        let value = std::str::from_utf8(value).map_err(|_| "not UTF-8".to_owned())?;
        hops.extend(value.split(',').map(str::trim).filter(|e| !e.is_empty()).map(parse_node));
    }
    Ok(hops)
}

/// An RFC 7239 node (`192.0.2.43`, `192.0.2.43:47011`, `[2001:db8::17]:4711`, `unknown`,
/// `_obfuscated`), leniently also an unbracketed IPv6 address as `X-Forwarded-For` has them.
fn parse_node(node: &str) -> Hop {
    if node.eq_ignore_ascii_case("unknown") {
        return Hop::Unknown("for=unknown".to_owned());
    }
    if node.starts_with('_') {
        return Hop::Unknown(format!("an obfuscated identifier '{node}'"));
    }
    if let Some(rest) = node.strip_prefix('[') {
        let parsed = rest.split_once(']').and_then(|(inner, port)| {
            let port_ok = port.is_empty() || port.starts_with(':');
            inner.parse::<Ipv6Addr>().ok().filter(|_| port_ok)
        });
        return match parsed {
            Some(v6) => Hop::Addr(canonical(IpAddr::V6(v6))),
            None => Hop::Unknown(format!("'{node}', not an address")),
        };
    }
    if let Ok(addr) = node.parse::<IpAddr>() {
        return Hop::Addr(canonical(addr));
    }
    match node.split_once(':').and_then(|(host, _port)| host.parse::<Ipv4Addr>().ok()) {
        Some(v4) => Hop::Addr(IpAddr::V4(v4)),
        None => Hop::Unknown(format!("'{node}', not an address")),
    }
}

/// Splits on `sep` where it is not inside a quoted string.
fn split_outside_quotes(s: &str, sep: char) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    if quoted {
        return Err("unterminated quoted string".to_owned());
    }
    parts.push(&s[start..]);
    Ok(parts)
}

/// A token or a quoted-string (RFC 9110 §5.6.4) as its text.
fn unquote(value: &str) -> Result<String, String> {
    let Some(inner) = value.strip_prefix('"') else { return Ok(value.to_owned()) };
    let inner = inner.strip_suffix('"').ok_or_else(|| format!("'{value}': text after a quoted string"))?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next().unwrap_or('\\') } else { c });
    }
    Ok(out)
}

/// A TOML or schema error as one line, with the line of the table it is about.
fn toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().replace('\n', " ");
    let Some(span) = err.span() else { return message };
    let start = span.start.min(text.len());
    let number = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let shown: String = line.chars().take(80).collect();
    format!("line {number} of [plugin.ip_filter] (`{shown}`): {message}")
}

/// At most one refusal line per this long; the refusals in between are counted and the
/// next line says how many (a client refused in a loop cannot flood the log). 1 s.
pub const LOG_EVERY: Duration = Duration::from_secs(1);

/// When the last refusal was logged, and how many were refused since without a line.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    unlogged: u64,
}

/// The middleware: the rules, and the request handling around them.
#[derive(Debug, Clone, Default)]
pub struct IpFilter {
    rules: Rules,
    throttle: Arc<Mutex<Throttle>>,
}

impl IpFilter {
    /// A filter with these rules.
    pub fn new(rules: Rules) -> Self {
        IpFilter { rules, throttle: Arc::default() }
    }

    /// Lets the request through to `next`, or answers `403 Forbidden` and logs why (at most
    /// one line per [`LOG_EVERY`]; the path is quoted with its control characters escaped).
    pub fn handle(&self, environ: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>, next: &Next<'_>) -> Body {
        let verdict = {
            let request = Request::from_environ(environ);
            // Formatted only when a line will be written (a flood of refusals formats one a second).
            self.rules.check(&request).map_err(|refusal| {
                self.log_line(Instant::now(), || {
                    format!(
                        "ip_filter: refused {} {:?}: {refusal} (REMOTE_ADDR {})",
                        environ.method(),
                        environ.path_info(),
                        request.remote_addr
                    )
                })
            })
        };
        match verdict {
            Ok(_) => next.call(environ, sr),
            Err(line) => {
                if let Some(line) = line {
                    environ.log(&line);
                }
                sr.start(status::FORBIDDEN, &[("Content-Type", "text/plain; charset=utf-8")]);
                Body::from("Forbidden\n")
            }
        }
    }

    /// The line to log for a refusal at `now` (made by `line`), or `None` when one was logged
    /// less than [`LOG_EVERY`] ago (the refusal is counted for the next line).
    fn log_line(&self, now: Instant, line: impl FnOnce() -> String) -> Option<String> {
        let mut t = self.throttle.lock().unwrap_or_else(|e| e.into_inner());
        if t.last.is_some_and(|last| now.duration_since(last) < LOG_EVERY) {
            t.unlogged += 1;
            return None;
        }
        let unlogged = std::mem::take(&mut t.unlogged);
        let since = t.last.map(|last| now.duration_since(last).as_secs());
        t.last = Some(now);
        drop(t);
        let line = line();
        Some(match (unlogged, since) {
            (0, _) | (_, None) => line,
            (n, Some(s)) => format!("{line} (and {n} more refused in the {s} s before, not logged one by one)"),
        })
    }
}

impl portico_api::Middleware for IpFilter {
    fn call(&self, environ: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>, next: &Next<'_>) -> Body {
        self.handle(environ, sr, next)
    }
}

/// Parses and keeps the configuration; runs once per loaded copy of the plugin.
fn init(config: &str) -> Result<(), String> {
    let rules = Rules::from_toml(config)?;
    RULES.set(rules).map_err(|_| "ip_filter: init called twice".to_owned())
}

export_app!(
    name: "ip_filter",
    version: env!("CARGO_PKG_VERSION"),
    middleware: IpFilter::new(RULES.get().cloned().unwrap_or_default()),
    init: init,
    never_blocks: true,
);

#[cfg(test)]
mod tests;
