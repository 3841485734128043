//! The client behind trusted proxies (`--forwarded-allow-ips`, Gunicorn's name): who sent a
//! request, and over which scheme, when the peer is a proxy we were told to believe.
//!
//! Only a request whose peer is in the trusted list is looked at; from any other peer the
//! forwarding fields are ignored (they are the client's own words). Then, by
//! `--forwarded-header`:
//! - `x-forwarded-for` (the default; what nginx, HAProxy and Kubernetes ingresses write):
//!   `X-Forwarded-For` gives the client, `X-Forwarded-Proto` the scheme;
//! - `forwarded`: RFC 7239's `Forwarded` — `for=` the client, `proto=` the scheme.
//!
//! A forwarding list grows to the right, one entry per proxy, and what is left of a trusted
//! proxy's entry was written by whoever talked to it. So the list is walked from the right,
//! over entries that are trusted proxies themselves; the first one that is not is the client.
//! If every entry is trusted, the leftmost is the client. An entry that is not an address
//! (`unknown`, an obfuscated RFC 7239 identifier, garbage) stops the walk: the last trusted
//! address before it stands for the client. The scheme is the rightmost `X-Forwarded-Proto`
//! value (or the `proto=` of the element the client came from), `http` or `https`; anything
//! else is ignored.

use std::net::IpAddr;

use ipnet::IpNet;

use super::request::RequestHead;

/// Which forwarding fields the trusted proxies write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Header {
    /// `X-Forwarded-For` and `X-Forwarded-Proto`.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded`: `for=` and `proto=`.
    Forwarded,
}

/// The proxies whose forwarding fields are believed (`--forwarded-allow-ips`), and which
/// fields they write.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: Header,
    /// `unix` in the list: peers on a Unix socket (a proxy on the same host) are trusted.
    unix: bool,
}

/// What trusted proxies say about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client's address (`REMOTE_ADDR`); `None` when the proxies named only the scheme
    /// (the peer's address stands).
    pub ip: Option<IpAddr>,
    /// The scheme the client used, when a proxy said: `Some(true)` for `https`.
    pub https: Option<bool>,
}

/// An address or a CIDR (`10.0.0.0/8`, `::1`, `192.0.2.7`).
///
/// # Errors
/// The text is neither.
fn net(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    t.parse::<IpNet>()
        .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{t:?} is not an IP address or a CIDR (10.0.0.0/8, ::1)"))
}

impl TrustedProxies {
    /// `list`: addresses and CIDRs separated by commas, and `unix` for peers on a Unix socket
    /// (empty: none; `*` is refused — trust is named, not assumed).
    ///
    /// # Errors
    /// The first entry that is not an address or a CIDR.
    pub fn parse(list: &str, header: Header) -> Result<TrustedProxies, String> {
        let mut nets = Vec::new();
        let mut unix = false;
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item.eq_ignore_ascii_case("unix") {
                unix = true;
                continue;
            }
            if item == "*" {
                return Err("\"*\" would let every client choose its own address: name the proxies".into());
            }
            nets.push(net(item)?);
        }
        Ok(TrustedProxies { nets, header, unix })
    }

    /// Whether no proxy is trusted (the common case: nothing to do per request).
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty() && !self.unix
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client of `head`, which came from `peer` (`None`: a Unix socket): `None` when
    /// `peer` is not trusted or the proxies said nothing usable (the peer is then the client).
    pub fn client(&self, head: &RequestHead, peer: Option<IpAddr>) -> Option<Client> {
        if self.is_empty() || !peer.map_or(self.unix, |ip| self.trusts(ip)) {
            return None;
        }
        let (entries, protos) = match self.header {
            Header::XForwardedFor => {
                let hops: Vec<(Option<IpAddr>, Option<bool>)> =
                    values(head, "x-forwarded-for").map(|e| (address(e), None)).collect();
                (hops, values(head, "x-forwarded-proto").last().and_then(scheme))
            }
            Header::Forwarded => (values(head, "forwarded").map(element).collect(), None),
        };
        // From the right: past the trusted proxies, to the first address that is not one.
        let mut client = None;
        for (ip, proto) in entries.iter().rev() {
            let Some(ip) = *ip else { break };
            client = Some(Client { ip: Some(ip), https: proto.or(protos) });
            if !self.trusts(ip) {
                break;
            }
        }
        client.or(protos.map(|https| Client { ip: None, https: Some(https) }))
    }
}

/// The comma-separated values of every `name` field, in order, trimmed.
fn values<'h>(head: &'h RequestHead, name: &'h str) -> impl Iterator<Item = &'h str> + 'h {
    head.fields
        .iter()
        .filter(move |(n, _)| head.slice(n).eq_ignore_ascii_case(name.as_bytes()))
        .filter_map(|(_, v)| std::str::from_utf8(head.slice(v)).ok())
        .flat_map(|v| split_outside_quotes(v, ','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// `v` split at `sep`, except inside a quoted string (RFC 9110 §5.6.4: `"…"`, `\` escaping
/// the next character): a quoted `host="a,for=6.6.6.6"` stays one value.
fn split_outside_quotes(v: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in v.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&v[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&v[start..]);
    parts
}

/// `https` / `http` (any case).
fn scheme(v: &str) -> Option<bool> {
    let v = v.trim().trim_matches('"');
    if v.eq_ignore_ascii_case("https") {
        Some(true)
    } else if v.eq_ignore_ascii_case("http") {
        Some(false)
    } else {
        None
    }
}

/// An address as forwarding fields write it: `192.0.2.7`, `192.0.2.7:4711`, `2001:db8::1`,
/// `[2001:db8::1]:4711`, quoted or not.
fn address(v: &str) -> Option<IpAddr> {
    let v = v.trim().trim_matches('"');
    if let Ok(ip) = v.parse() {
        return Some(ip);
    }
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    v.rsplit_once(':').and_then(|(host, _)| host.parse().ok())
}

/// One RFC 7239 element (`for=192.0.2.7;proto=https;by=…`): its `for` and `proto`.
fn element(e: &str) -> (Option<IpAddr>, Option<bool>) {
    let mut ip = None;
    let mut proto = None;
    for pair in split_outside_quotes(e, ';') {
        let Some((k, v)) = pair.split_once('=') else { continue };
        match k.trim().to_ascii_lowercase().as_str() {
            "for" => ip = address(v),
            "proto" => proto = scheme(v),
            _ => {}
        }
    }
    (ip, proto)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{HeadLimits, Parsed, parse};

    fn head(fields: &str) -> RequestHead {
        let text = format!("GET / HTTP/1.1\r\nHost: x\r\n{fields}\r\n");
        match parse(text.as_bytes(), &HeadLimits::default()) {
            Ok(Parsed::Complete(h, _)) => *h,
            other => panic!("{other:?}"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_trusted_peers_are_believed_and_the_walk_stops_at_the_first_untrusted_hop() {
        let t = TrustedProxies::parse("10.0.0.0/8, 192.0.2.1", Header::XForwardedFor).unwrap();
        let h =
            head("X-Forwarded-For: 6.6.6.6, 203.0.113.9\r\nX-Forwarded-For: 10.1.1.1\r\nX-Forwarded-Proto: https\r\n");
        assert_eq!(t.client(&h, Some(ip("203.0.113.50"))), None, "an untrusted peer's fields are its own words");
        let c = t.client(&h, Some(ip("10.0.0.2"))).unwrap();
        assert_eq!(c, Client { ip: Some(ip("203.0.113.9")), https: Some(true) }, "6.6.6.6 was written by the client");
        let c = t.client(&h, Some(ip("::ffff:192.0.2.1"))).unwrap();
        assert_eq!(c.ip, Some(ip("203.0.113.9")), "an IPv4-mapped peer is its IPv4 address");
        let all_trusted = head("X-Forwarded-For: 10.9.9.9, 10.0.0.7\r\n");
        assert_eq!(t.client(&all_trusted, Some(ip("10.0.0.2"))).unwrap().ip, Some(ip("10.9.9.9")));
        let garbage = head("X-Forwarded-For: 1.2.3.4, nonsense, 10.0.0.7\r\n");
        assert_eq!(t.client(&garbage, Some(ip("10.0.0.2"))).unwrap().ip, Some(ip("10.0.0.7")));
        let ports = head("X-Forwarded-For: [2001:db8::1]:4711\r\n");
        assert_eq!(t.client(&ports, Some(ip("10.0.0.2"))).unwrap().ip, Some(ip("2001:db8::1")));
        let proto_only = head("X-Forwarded-Proto: http, https\r\n");
        assert_eq!(t.client(&proto_only, Some(ip("10.0.0.2"))), Some(Client { ip: None, https: Some(true) }));
        assert_eq!(t.client(&head(""), Some(ip("10.0.0.2"))), None);
    }

    #[test]
    fn rfc_7239_forwarded() {
        let t = TrustedProxies::parse("10.0.0.0/8", Header::Forwarded).unwrap();
        let h = head(
            "Forwarded: for=\"[2001:db8::7]:80\";proto=https, for=10.0.0.9;proto=http\r\nX-Forwarded-For: 6.6.6.6\r\n",
        );
        assert_eq!(t.client(&h, Some(ip("10.0.0.2"))), Some(Client { ip: Some(ip("2001:db8::7")), https: Some(true) }));
        // A quoted parameter cannot smuggle in another element or parameter.
        let smuggled = head("Forwarded: for=203.0.113.9;host=\"a,for=6.6.6.6;proto=https\"\r\n");
        assert_eq!(
            t.client(&smuggled, Some(ip("10.0.0.2"))),
            Some(Client { ip: Some(ip("203.0.113.9")), https: None })
        );
        let hidden = head("Forwarded: for=_hidden, for=10.0.0.9\r\n");
        assert_eq!(t.client(&hidden, Some(ip("10.0.0.2"))).unwrap().ip, Some(ip("10.0.0.9")));
    }

    #[test]
    fn lists_are_addresses_and_cidrs() {
        assert!(TrustedProxies::parse("", Header::XForwardedFor).unwrap().is_empty());
        let unix = TrustedProxies::parse("unix", Header::XForwardedFor).unwrap();
        let h = head("X-Forwarded-For: 203.0.113.9\r\n");
        assert_eq!(unix.client(&h, None).and_then(|c| c.ip), Some(ip("203.0.113.9")), "a Unix-socket proxy");
        assert_eq!(unix.client(&h, Some(ip("127.0.0.1"))), None, "unix trusts no TCP peer");
        assert_eq!(TrustedProxies::parse("127.0.0.1", Header::XForwardedFor).unwrap().client(&h, None), None);
        assert!(TrustedProxies::parse("127.0.0.1,::1, 10.0.0.0/8", Header::XForwardedFor).is_ok());
        let e = TrustedProxies::parse("10.0.0.0/33", Header::XForwardedFor).unwrap_err();
        assert!(e.contains("10.0.0.0/33"), "{e}");
        assert!(TrustedProxies::parse("*", Header::XForwardedFor).unwrap_err().contains("name the proxies"));
    }
}
