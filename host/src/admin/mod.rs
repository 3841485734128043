//! The server's own pages, answered on the event loop (no worker, so they answer even when
//! every worker is busy): the status page (`--status-path`, default `/_portico/status`; HTML
//! for a person, JSON with `?format=json`) and the Prometheus metrics beside it (the status
//! path's parent + `/metrics`, default `/_portico/metrics`). "Admin pages" in the code, to
//! keep "status" for HTTP status codes.
//!
//! | module | owns |
//! |---|---|
//! | this one | answering a request for a page: methods, the query, the access rule |
//! | [`html`] | the status page as HTML |
//! | [`charts`] | the status page's charts: inline SVG sparklines of each application's recent requests/s, 5xx/s and p99 |
//! | [`openmetrics`] | the metrics as OpenMetrics text |
//!
//! - **Access.** By default only loopback clients (127.0.0.0/8, `::1`, and IPv4-mapped
//!   `::ffff:127.x.y.z`) get them; for any other client the paths are routed as if these pages
//!   did not exist (a mount or a static file may answer; usually a 404). `--status-public`
//!   answers everyone.
//! - **One snapshot** ([`Snapshot`]) is read from the counters per request and rendered three
//!   ways, so the HTML, the JSON and the metrics of one request agree.

pub mod charts;
pub mod html;
pub mod openmetrics;

use std::net::IpAddr;
use std::time::Duration;

use crate::control::TreeLink;
use crate::http::outgoing::Response;
use crate::http::request::RequestHead;
use crate::http::target;
use crate::metrics::counters::Stats;
use crate::metrics::snapshot::{AppRow, MountRow, Snapshot};
use crate::routing::Table;
use crate::settings::{AdminPage, AdminPaths};

/// Longest wait for the master's view of the tree.
pub const TREE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether `ip` is a loopback address (127.0.0.0/8, `::1`, or IPv4-mapped `::ffff:127.0.0.0/104`
/// as a dual-stack socket reports an IPv4 loopback client): who gets the pages by default.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    json: bool,
    /// Seconds between reloads of the HTML page.
    refresh: Option<u32>,
}

fn parse_query(q: &[u8]) -> Query {
    let mut out = Query::default();
    for pair in q.split(|&b| b == b'&') {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        match k {
            b"format" => out.json = v == b"json",
            b"refresh" => {
                out.refresh =
                    std::str::from_utf8(v).ok().and_then(|v| v.parse().ok()).filter(|n| (1..=3600).contains(n))
            }
            _ => {}
        }
    }
    out
}

/// Answers `page` for `head`: GET and HEAD get the page (the event loop leaves HEAD's body
/// out), other methods 405 with `Allow: GET, HEAD`.
///
/// Under a master, the page asks it for the whole tree first (this event loop waits for the
/// answer, at most [`TREE_TIMEOUT`]: the totals are exact when read); if it does not answer, the
/// page shows this worker alone.
pub fn respond(
    page: AdminPage,
    head: &RequestHead,
    paths: &AdminPaths,
    stats: &Stats,
    table: &Table,
    tree: Option<&TreeLink>,
) -> Response {
    if !matches!(head.method(), "GET" | "HEAD") {
        return Response::error(405).field("Allow", "GET, HEAD");
    }
    let query = parse_query(target::split(head.target(), head.form).query);
    let mut apps: Vec<AppRow> =
        table.apps.iter().map(|(name, app)| AppRow { name: name.clone(), counts: app.gate.counts() }).collect();
    apps.sort_by(|a, b| a.name.cmp(&b.name));
    let mounts = table
        .mounts
        .list()
        .iter()
        .map(|m| MountRow { prefix: m.prefix.clone(), app: m.app.to_string(), middleware: m.middleware.to_vec() })
        .collect();
    let mut snapshot = Snapshot::take(stats, &table.plugins, apps, mounts);
    if let Some(tree) = tree.and_then(|t| t.ask(TREE_TIMEOUT)) {
        snapshot = snapshot.with_tree(tree);
    }
    let response = match page {
        AdminPage::Metrics => {
            Response::page(200, openmetrics::CONTENT_TYPE, openmetrics::render(snapshot).into_bytes())
        }
        AdminPage::Status if query.json => {
            let mut body = serde_json::to_vec_pretty(&snapshot).unwrap_or_default();
            body.push(b'\n');
            Response::page(200, "application/json", body)
        }
        AdminPage::Status => {
            let body = html::render(&snapshot, paths, query.refresh).into_bytes();
            // The page loads nothing from anywhere.
            Response::page(200, "text/html; charset=utf-8", body)
                .field("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
                .field("X-Content-Type-Options", "nosniff")
        }
    };
    // Every page: never cached.
    response.field("Cache-Control", "no-store")
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn loopback_rule() {
        for ip in ["127.0.0.1", "127.255.3.4", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.1", "192.168.1.1", "0.0.0.0", "::", "::ffff:10.0.0.1", "2001:db8::1", "fe80::1"] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
        assert!(!is_loopback(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
        assert!(is_loopback(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    }

    #[test]
    fn query() {
        assert_eq!(parse_query(b"format=json"), Query { json: true, refresh: None });
        assert_eq!(parse_query(b"refresh=5&format=html"), Query { json: false, refresh: Some(5) });
        assert_eq!(parse_query(b"refresh=0&x"), Query::default());
        assert_eq!(parse_query(b"refresh=99999"), Query::default());
    }
}
