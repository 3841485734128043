//! The server's own pages, answered on the I/O thread (no worker, so they answer even when
//! every worker is busy): the status page (`--status-path`, default `/_portico/status`; HTML for
//! a person, JSON with `?format=json`) and the Prometheus metrics beside it (the status path's
//! parent + `/metrics`, default `/_portico/metrics`). This module owns their paths, the access
//! rule, and the rendering; the counters are [`crate::stats`]'.
//!
//! - **Access.** By default only loopback clients (127.0.0.0/8, `::1`, and IPv4-mapped
//!   `::ffff:127.x.y.z`) get them; for any other client the paths are routed as if these pages
//!   did not exist (a mount or a static file may answer; usually a 404). `--status-public`
//!   answers everyone.
//! - **One snapshot** ([`Snapshot`]) is read from the counters per request and rendered three
//!   ways, so the HTML, the JSON and the metrics of one request agree.
//! - **HTML**: one small page, a table per section, numbers right-aligned, no script and no
//!   external asset (a `Content-Security-Policy` says so); every text from outside the host
//!   (plugin names, versions, errors) is escaped. `?refresh=N` (1–3600 s) reloads it every N s.
//! - **Metrics**: OpenMetrics text (what Prometheus asks for first), written by the
//!   `prometheus-client` crate's encoder from a [`Collector`] over the snapshot; the host's
//!   counters stay plain atomics (prometheus-client's own histogram takes a mutex per
//!   observation).

use crate::html::escape;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use serde::Serialize;

use crate::http::request::RequestHead;
use crate::http::response;
use crate::http::target;
use crate::plugin::registry::PluginSet;
use crate::stats::{BUCKETS, ConnCounts, LATENCY_BOUNDS, ReloadOutcome, Stats, resident_memory_bytes};

/// `Content-Type` of the metrics: the OpenMetrics text format that prometheus-client writes.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which of the server's own pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The status page (HTML, or JSON with `?format=json`).
    Status,
    /// The metrics.
    Metrics,
}

/// Where the pages are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The status page's path.
    pub status: String,
    /// The metrics' path: the status path's parent + `/metrics`.
    pub metrics: String,
}

impl Paths {
    /// Paths from the `--status-path` value: `off` (no pages), or an absolute path of plain
    /// segments (no `?`, `#`, `%`, spaces or control characters, no empty, `.` or `..`
    /// segment, no trailing `/`) whose last segment is not `metrics`.
    ///
    /// # Errors
    /// Why the value is refused.
    pub fn parse(flag: &str) -> Result<Option<Paths>, String> {
        if flag == "off" {
            return Ok(None);
        }
        let Some(rest) = flag.strip_prefix('/') else {
            return Err(format!("{flag:?} must start with '/' (or be `off`)"));
        };
        if flag.bytes().any(|b| b.is_ascii_control() || b" ?#%\\".contains(&b)) {
            return Err(format!("{flag:?} must be a plain path (no spaces, ?, #, % or \\)"));
        }
        if rest.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
            return Err(format!("{flag:?} has an empty, `.` or `..` segment (or ends with '/')"));
        }
        let (parent, last) = flag.rsplit_once('/').unwrap_or(("", flag));
        if last == "metrics" {
            return Err(format!("{flag:?} would be the metrics path (its parent + /metrics): choose another name"));
        }
        Ok(Some(Paths { status: flag.to_owned(), metrics: format!("{parent}/metrics") }))
    }

    /// The page at decoded path `path`, if any.
    pub fn page(&self, path: &[u8]) -> Option<Page> {
        if path == self.status.as_bytes() {
            Some(Page::Status)
        } else if path == self.metrics.as_bytes() {
            Some(Page::Metrics)
        } else {
            None
        }
    }
}

/// Whether `ip` is a loopback address (127.0.0.0/8, `::1`, or IPv4-mapped `::ffff:127.0.0.0/104`
/// as a dual-stack socket reports an IPv4 loopback client): who gets the pages by default.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The server in one snapshot: what all three renderings show.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The process.
    pub server: ServerInfo,
    /// Every plugin loaded now, and any that served requests before being removed; by name.
    pub plugins: Vec<PluginRow>,
    /// Connections by state (each I/O loop's figures are from its last 250 ms sweep).
    pub connections: ConnCounts,
    /// The worker pool.
    pub workers: WorkerInfo,
    /// SIGHUP reloads.
    pub reloads: ReloadInfo,
}

/// The process.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    /// Portico's version.
    pub version: &'static str,
    /// When the server started, RFC 3339 UTC.
    pub started_at: String,
    /// The same, seconds since the Unix epoch.
    pub started_at_unix: f64,
    /// Seconds since the server started.
    pub uptime_seconds: f64,
    /// Resident memory (VmRSS) in bytes; absent where `/proc/self/status` is not.
    pub resident_memory_bytes: Option<u64>,
}

/// One plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginRow {
    /// Route name.
    pub name: String,
    /// Loaded now (`false`: removed, its counters kept).
    pub loaded: bool,
    /// The version the plugin reports.
    pub version: Option<String>,
    /// Load generation (unique in the process; a reload gives a new one).
    pub generation: Option<u64>,
    /// When this version was loaded, RFC 3339 UTC.
    pub loaded_at: Option<String>,
    /// The same, seconds since the Unix epoch.
    pub loaded_at_unix: Option<f64>,
    /// Requests answered since the server started.
    pub requests: u64,
    /// Responses with a status ≥ 500.
    pub responses_5xx: u64,
    /// Application calls running now.
    pub in_flight: u64,
    /// Mean latency in seconds (worker picks the job up → response head ready).
    pub mean_seconds: Option<f64>,
    /// 99th percentile of the latency in seconds, estimated from the histogram's buckets.
    pub p99_seconds: Option<f64>,
    /// Sum of latencies, seconds (for the histogram).
    #[serde(skip)]
    pub sum_seconds: f64,
    /// Requests per latency bucket (for the histogram).
    #[serde(skip)]
    pub buckets: [u64; BUCKETS],
}

/// The worker pool.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WorkerInfo {
    /// Worker threads.
    pub threads: usize,
    /// Running a job now.
    pub busy: usize,
    /// Jobs waiting for a worker.
    pub queue_depth: usize,
}

/// SIGHUP reloads.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadInfo {
    /// Reloads since the server started.
    pub count: u64,
    /// Reloads that refused something.
    pub failures: u64,
    /// The last one, if any.
    pub last: Option<LastReload>,
}

/// The last reload.
#[derive(Debug, Clone, Serialize)]
pub struct LastReload {
    /// When, RFC 3339 UTC.
    pub at: String,
    /// The same, seconds since the Unix epoch.
    pub at_unix: f64,
    /// `ok`, `partial` or `failed`.
    pub outcome: ReloadOutcome,
    /// What changed.
    pub summary: String,
    /// What was refused, and why.
    pub error: Option<String>,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn rfc3339(t: SystemTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from(t).format(&fmt).unwrap_or_default()
}

impl Snapshot {
    /// Reads the counters now. Every loaded plugin gets a row (its counters are created at
    /// zero), so a plugin that has served nothing yet still shows.
    pub fn take(stats: &Stats, plugins: &PluginSet) -> Snapshot {
        for name in plugins.keys() {
            stats.plugin(name);
        }
        let rows = stats
            .plugins()
            .into_iter()
            .map(|(name, c)| {
                let p = plugins.get(&name);
                PluginRow {
                    loaded: p.is_some(),
                    version: p.map(|p| p.version.clone()),
                    generation: p.map(|p| p.generation),
                    loaded_at: p.map(|p| rfc3339(p.loaded_at)),
                    loaded_at_unix: p.map(|p| unix(p.loaded_at)),
                    requests: c.requests,
                    responses_5xx: c.server_errors,
                    in_flight: c.in_flight,
                    mean_seconds: c.mean_seconds(),
                    p99_seconds: c.quantile_seconds(0.99),
                    sum_seconds: c.sum_seconds,
                    buckets: c.buckets,
                    name,
                }
            })
            .collect();
        let reloads = stats.reloads();
        Snapshot {
            server: ServerInfo {
                version: env!("CARGO_PKG_VERSION"),
                started_at: rfc3339(stats.started_at()),
                started_at_unix: unix(stats.started_at()),
                uptime_seconds: stats.uptime().as_secs_f64(),
                resident_memory_bytes: resident_memory_bytes(),
            },
            plugins: rows,
            connections: stats.connections(),
            workers: WorkerInfo {
                threads: stats.workers(),
                busy: stats.busy_workers(),
                queue_depth: stats.queue_depth(),
            },
            reloads: ReloadInfo {
                count: reloads.count,
                failures: reloads.failures,
                last: reloads.last.map(|r| LastReload {
                    at: rfc3339(r.at),
                    at_unix: unix(r.at),
                    outcome: r.outcome,
                    summary: r.summary,
                    error: r.error,
                }),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP side
// ---------------------------------------------------------------------------------------------

/// A response made here, for the I/O thread to send.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Head and (unless HEAD) body.
    pub bytes: Vec<u8>,
    /// Body bytes sent (0 for HEAD), for the access log.
    pub body_len: u64,
}

/// What the query string asks for.
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

/// Answers `page` for `head`: GET and HEAD get the page (HEAD: the same fields, no body), other
/// methods 405 with `Allow: GET, HEAD`. `close` adds `Connection: close`.
pub fn respond(
    page: Page,
    head: &RequestHead,
    paths: &Paths,
    stats: &Stats,
    plugins: &PluginSet,
    close: bool,
) -> Answer {
    let version = head.version.as_str();
    let head_only = head.is_head();
    if !matches!(head.method(), "GET" | "HEAD") {
        let body = response::error_body(405);
        let bytes = response::simple(
            version,
            405,
            &[("Allow", b"GET, HEAD")],
            "text/plain; charset=utf-8",
            &body,
            close,
            head_only,
        );
        return Answer { status: 405, bytes, body_len: body.len() as u64 };
    }
    let query = parse_query(target::split(head.target(), head.form).query);
    let snapshot = Snapshot::take(stats, plugins);
    // Every page: never cached. The HTML page also says it loads nothing from anywhere.
    const NO_STORE: (&str, &[u8]) = ("Cache-Control", b"no-store");
    const HTML_FIELDS: [(&str, &[u8]); 3] = [
        NO_STORE,
        ("Content-Security-Policy", b"default-src 'none'; style-src 'unsafe-inline'"),
        ("X-Content-Type-Options", b"nosniff"),
    ];
    let (body, content_type, fields) = match page {
        Page::Metrics => (render_metrics(snapshot).into_bytes(), METRICS_CONTENT_TYPE, &HTML_FIELDS[..1]),
        Page::Status if query.json => {
            let mut body = serde_json::to_vec_pretty(&snapshot).unwrap_or_default();
            body.push(b'\n');
            (body, "application/json", &HTML_FIELDS[..1])
        }
        Page::Status => {
            let body = render_html(&snapshot, paths, query.refresh).into_bytes();
            (body, "text/html; charset=utf-8", &HTML_FIELDS[..])
        }
    };
    let bytes = response::simple(version, 200, fields, content_type, &body, close, head_only);
    Answer { status: 200, bytes, body_len: if head_only { 0 } else { body.len() as u64 } }
}

// ---------------------------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------------------------

/// A duration in seconds for a person: `850 µs`, `12.3 ms`, `1.52 s`; `–` when absent.
fn human_seconds(s: Option<f64>) -> String {
    match s {
        None => "–".to_owned(),
        Some(s) if s < 0.001 => format!("{:.0} µs", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.3} ms", s * 1e3),
        Some(s) => format!("{s:.2} s"),
    }
}

/// Seconds as `3 d 4 h`, `2 h 5 min`, `7 min 3 s`, `12 s`.
fn human_uptime(secs: f64) -> String {
    let s = secs as u64;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, _) => format!("{m} min {s} s"),
        (0, _, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

fn human_bytes(b: Option<u64>) -> String {
    match b {
        None => "–".to_owned(),
        Some(b) if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
    }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.3em;margin:0 0 .2em}h2{font-size:1.05em;margin:1.4em 0 .4em}\
table{border-collapse:collapse}th,td{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left}\
th{background:#f3f3f3;font-weight:600}.n{text-align:right;font-variant-numeric:tabular-nums}\
.bad{color:#b00;font-weight:600}.muted{color:#777}.err{white-space:pre-wrap;font-family:monospace}\
p.meta{margin:0;color:#555}";

/// The status page.
pub fn render_html(s: &Snapshot, paths: &Paths, refresh: Option<u32>) -> String {
    let mut h = String::with_capacity(4096 + 512 * s.plugins.len());
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    if let Some(n) = refresh {
        let _ = writeln!(h, "<meta http-equiv=\"refresh\" content=\"{n}\">");
    }
    let _ = writeln!(h, "<title>portico status</title>\n<style>{STYLE}</style></head><body>");
    let _ = writeln!(h, "<h1>portico {}</h1>", escape(s.server.version));
    let refresh_link = match refresh {
        Some(n) => format!("refreshing every {n} s (<a href=\"{}\">stop</a>)", escape(&paths.status)),
        None => format!("<a href=\"{}?refresh=5\">refresh every 5 s</a>", escape(&paths.status)),
    };
    let _ = writeln!(
        h,
        "<p class=\"meta\">up <span id=\"uptime\">{}</span> (since {}) · memory <span id=\"rss\">{}</span> · \
         <a href=\"{}?format=json\">JSON</a> · <a href=\"{}\">metrics</a> · {refresh_link}</p>",
        human_uptime(s.server.uptime_seconds),
        escape(&s.server.started_at),
        human_bytes(s.server.resident_memory_bytes),
        escape(&paths.status),
        escape(&paths.metrics),
    );

    h.push_str("<h2>Plugins</h2>\n<table id=\"plugins\"><thead><tr><th>plugin</th><th>version</th>");
    h.push_str("<th class=\"n\">generation</th><th>loaded at</th><th class=\"n\">requests</th>");
    h.push_str("<th class=\"n\">5xx</th><th class=\"n\">in flight</th><th class=\"n\">mean</th>");
    h.push_str(
        "<th class=\"n\" title=\"estimated from the latency histogram's buckets\">p99</th></tr></thead><tbody>\n",
    );
    if s.plugins.is_empty() {
        h.push_str("<tr><td colspan=\"9\" class=\"muted\">no plugins loaded</td></tr>\n");
    }
    for p in &s.plugins {
        let dash = || "–".to_owned();
        let _ = writeln!(
            h,
            "<tr id=\"plugin-{id}\"><td class=\"name\">{name}{removed}</td><td>{version}</td><td class=\"n\">{generation}</td>\
             <td>{loaded_at}</td><td class=\"n\">{requests}</td><td class=\"n{bad}\">{errors}</td>\
             <td class=\"n\">{in_flight}</td><td class=\"n\">{mean}</td><td class=\"n\">{p99}</td></tr>",
            id = escape(&p.name),
            name = escape(&p.name),
            removed = if p.loaded { "" } else { " <span class=\"muted\">(removed)</span>" },
            version = p.version.as_deref().map_or_else(dash, escape),
            generation = p.generation.map_or_else(dash, |g| g.to_string()),
            loaded_at = p.loaded_at.as_deref().map_or_else(dash, escape),
            requests = p.requests,
            bad = if p.responses_5xx > 0 { " bad" } else { "" },
            errors = p.responses_5xx,
            in_flight = p.in_flight,
            mean = human_seconds(p.mean_seconds),
            p99 = human_seconds(p.p99_seconds),
        );
    }
    h.push_str("</tbody></table>\n");

    let c = &s.connections;
    h.push_str("<h2>Connections</h2>\n<table id=\"connections\"><thead><tr>");
    for (name, title) in [
        ("open", "open connections"),
        ("idle", "waiting for a request, nothing received yet"),
        ("reading", "receiving a request head or body"),
        ("waiting", "the request is with the application (queued or running)"),
        ("writing", "sending a response"),
        ("closing", "lingering close"),
    ] {
        let _ = write!(h, "<th class=\"n\" title=\"{title}\">{name}</th>");
    }
    h.push_str("</tr></thead><tbody><tr>");
    for n in [c.open, c.idle, c.reading, c.waiting, c.writing, c.closing] {
        let _ = write!(h, "<td class=\"n\">{n}</td>");
    }
    h.push_str("</tr></tbody></table>\n");

    let w = &s.workers;
    let _ = writeln!(
        h,
        "<h2>Worker pool</h2>\n<table id=\"workers\"><thead><tr><th class=\"n\">threads</th><th class=\"n\">busy</th>\
         <th class=\"n\">queue depth</th></tr></thead><tbody><tr><td class=\"n\">{}</td><td class=\"n\">{}</td>\
         <td class=\"n{}\">{}</td></tr></tbody></table>",
        w.threads,
        w.busy,
        if w.queue_depth > 0 { " bad" } else { "" },
        w.queue_depth
    );

    let r = &s.reloads;
    h.push_str(
        "<h2>Reloads</h2>\n<table id=\"reloads\"><thead><tr><th class=\"n\">count</th><th class=\"n\">failed</th>",
    );
    h.push_str("<th>last</th><th>outcome</th><th>changes</th><th>error</th></tr></thead><tbody><tr>");
    let _ = write!(h, "<td class=\"n\">{}</td><td class=\"n\">{}</td>", r.count, r.failures);
    match &r.last {
        None => h.push_str("<td colspan=\"4\" class=\"muted\">no reload yet (SIGHUP reloads)</td>"),
        Some(l) => {
            let _ = write!(
                h,
                "<td>{}</td><td class=\"{}\">{}</td><td>{}</td><td class=\"err\">{}</td>",
                escape(&l.at),
                if l.outcome == ReloadOutcome::Ok { "" } else { "bad" },
                l.outcome.as_str(),
                escape(&l.summary),
                l.error.as_deref().map_or_else(|| "–".to_owned(), escape)
            );
        }
    }
    h.push_str("</tr></tbody></table>\n</body></html>\n");
    h
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// The snapshot as a prometheus-client collector (encoded once, then dropped).
#[derive(Debug)]
struct Collect(Snapshot);

type Fmt = Result<(), std::fmt::Error>;

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, v: impl EncodeGaugeValue) -> Fmt {
    e.encode_descriptor(name, help, unit, MetricType::Gauge)?.encode_gauge(&v)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Fmt {
    e.encode_descriptor(name, help, None, MetricType::Counter)?.encode_counter::<NoLabelSet, _, u64>(&v, None)
}

/// One counter family labelled by `plugin`, the value of each row from `value`.
fn plugin_counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[PluginRow],
    value: fn(&PluginRow) -> u64,
) -> Fmt {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for p in rows {
        m.encode_family(&[("plugin", p.name.as_str())])?.encode_counter::<NoLabelSet, _, u64>(&value(p), None)?;
    }
    Ok(())
}

impl Collector for Collect {
    fn encode(&self, mut e: DescriptorEncoder) -> Fmt {
        let s = &self.0;
        let seconds = Unit::Seconds;
        plugin_counter(
            &mut e,
            "portico_plugin_requests",
            "Requests answered by a plugin (a mount's count under its application).",
            &s.plugins,
            |p| p.requests,
        )?;
        plugin_counter(
            &mut e,
            "portico_plugin_responses_5xx",
            "Plugin responses with a status of 500 or more.",
            &s.plugins,
            |p| p.responses_5xx,
        )?;
        {
            let mut m = e.encode_descriptor(
                "portico_plugin_in_flight",
                "Plugin application calls running now.",
                None,
                MetricType::Gauge,
            )?;
            for p in &s.plugins {
                m.encode_family(&[("plugin", p.name.as_str())])?.encode_gauge(&p.in_flight)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "portico_plugin_request_duration",
                "Time from a worker taking a plugin request off the queue to its response head being ready.",
                Some(&seconds),
                MetricType::Histogram,
            )?;
            for p in &s.plugins {
                let buckets: Vec<(f64, u64)> =
                    LATENCY_BOUNDS.iter().copied().chain([f64::INFINITY]).zip(p.buckets.iter().copied()).collect();
                m.encode_family(&[("plugin", p.name.as_str())])?.encode_histogram::<NoLabelSet>(
                    p.sum_seconds,
                    p.requests,
                    &buckets,
                    None,
                )?;
            }
        }
        {
            let mut m =
                e.encode_descriptor("portico_plugin", "The plugin versions loaded now.", None, MetricType::Info)?;
            for p in s.plugins.iter().filter(|p| p.loaded) {
                let generation = p.generation.unwrap_or(0).to_string();
                let labels = [
                    ("plugin", p.name.as_str()),
                    ("version", p.version.as_deref().unwrap_or("")),
                    ("generation", generation.as_str()),
                ];
                m.encode_info(&labels)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "portico_plugin_loaded_timestamp",
                "When the plugin version serving now was loaded, seconds since the Unix epoch.",
                Some(&seconds),
                MetricType::Gauge,
            )?;
            for p in &s.plugins {
                if let Some(t) = p.loaded_at_unix {
                    m.encode_family(&[("plugin", p.name.as_str())])?.encode_gauge(&t)?;
                }
            }
        }
        let c = &s.connections;
        gauge(&mut e, "portico_connections_open", "Open client connections.", None, c.open)?;
        {
            let mut m = e.encode_descriptor(
                "portico_connections",
                "Open client connections by state (recounted by each I/O loop every 250 ms).",
                None,
                MetricType::Gauge,
            )?;
            for (state, n) in [
                ("idle", c.idle),
                ("reading", c.reading),
                ("waiting", c.waiting),
                ("writing", c.writing),
                ("closing", c.closing),
            ] {
                m.encode_family(&[("state", state)])?.encode_gauge(&n)?;
            }
        }
        let w = &s.workers;
        gauge(&mut e, "portico_workers", "Worker threads in the pool.", None, w.threads)?;
        gauge(&mut e, "portico_workers_busy", "Workers running a job now.", None, w.busy)?;
        gauge(&mut e, "portico_worker_queue_depth", "Jobs waiting for a worker.", None, w.queue_depth)?;
        let r = &s.reloads;
        counter(&mut e, "portico_reloads", "SIGHUP reloads handled.", r.count)?;
        counter(
            &mut e,
            "portico_reload_failures",
            "Reloads that refused a plugin file or the configuration.",
            r.failures,
        )?;
        if let Some(last) = &r.last {
            let ok = u64::from(last.outcome == ReloadOutcome::Ok);
            gauge(
                &mut e,
                "portico_reload_last_success",
                "Whether the last reload refused nothing (1) or not (0).",
                None,
                ok,
            )?;
            gauge(
                &mut e,
                "portico_reload_last_timestamp",
                "When the last reload finished, seconds since the Unix epoch.",
                Some(&seconds),
                last.at_unix,
            )?;
        }
        gauge(&mut e, "portico_uptime", "Time since the server started.", Some(&seconds), s.server.uptime_seconds)?;
        gauge(
            &mut e,
            "process_start_time",
            "When the server started, seconds since the Unix epoch.",
            Some(&seconds),
            s.server.started_at_unix,
        )?;
        if let Some(rss) = s.server.resident_memory_bytes {
            gauge(&mut e, "process_resident_memory", "Resident memory (VmRSS).", Some(&Unit::Bytes), rss)?;
        }
        Ok(())
    }
}

/// The metrics in the OpenMetrics text format (ends with `# EOF`).
pub fn render_metrics(snapshot: Snapshot) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Collect(snapshot)));
    let mut out = String::with_capacity(8192);
    // Writing into a String cannot fail; an encoder error would leave a partial text, which
    // the missing `# EOF` tells a scraper about.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

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
    fn paths_from_the_flag() {
        let p = Paths::parse("/_portico/status").unwrap().unwrap();
        assert_eq!((p.status.as_str(), p.metrics.as_str()), ("/_portico/status", "/_portico/metrics"));
        let p = Paths::parse("/status").unwrap().unwrap();
        assert_eq!(p.metrics, "/metrics");
        assert_eq!(p.page(b"/status"), Some(Page::Status));
        assert_eq!(p.page(b"/metrics"), Some(Page::Metrics));
        assert_eq!(p.page(b"/status/"), None);
        assert_eq!(Paths::parse("off"), Ok(None));
        for bad in ["", "status", "/", "/a/", "/a//b", "/a/../b", "/a?b", "/a b", "/a%2f", "/x/metrics", "/a/./b"] {
            assert!(Paths::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn query() {
        assert_eq!(parse_query(b"format=json"), Query { json: true, refresh: None });
        assert_eq!(parse_query(b"refresh=5&format=html"), Query { json: false, refresh: Some(5) });
        assert_eq!(parse_query(b"refresh=0&x"), Query::default());
        assert_eq!(parse_query(b"refresh=99999"), Query::default());
    }

    fn snapshot_with(name: &str, error: Option<&str>) -> Snapshot {
        let (_tx, rx) = crossbeam_channel::unbounded();
        let stats = Stats::new(1, 4, rx);
        let p = stats.plugin(name);
        p.record(Duration::from_micros(300), 200);
        p.record(Duration::from_millis(2), 500);
        stats.record_reload(ReloadOutcome::Failed, "0 loaded".into(), error.map(str::to_owned));
        Snapshot::take(&stats, &PluginSet::new())
    }

    #[test]
    fn html_escapes_what_comes_from_outside() {
        let s = snapshot_with("<script>alert(1)</script>", Some("bad <b>file</b> & \"quotes\""));
        let paths = Paths::parse("/_portico/status").unwrap().unwrap();
        let html = render_html(&s, &paths, Some(5));
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
        assert!(html.contains("bad &lt;b&gt;file&lt;/b&gt; &amp; &quot;quotes&quot;"), "{html}");
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(html.contains("(removed)"), "a plugin with counters but not loaded is marked");
    }

    #[test]
    fn metrics_are_openmetrics_text() {
        let s = snapshot_with("hello", None);
        let text = render_metrics(s);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE portico_plugin_requests counter\n"), "{text}");
        assert!(text.contains("portico_plugin_requests_total{plugin=\"hello\"} 2\n"), "{text}");
        assert!(text.contains("portico_plugin_responses_5xx_total{plugin=\"hello\"} 1\n"), "{text}");
        assert!(text.contains("portico_plugin_request_duration_seconds_count{plugin=\"hello\"} 2\n"), "{text}");
        assert!(
            text.contains("portico_plugin_request_duration_seconds_bucket{le=\"+Inf\",plugin=\"hello\"} 2\n")
                || text.contains("portico_plugin_request_duration_seconds_bucket{plugin=\"hello\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("portico_reload_last_success 0"), "{text}");
        // Label values are escaped by the encoder.
        let text = render_metrics(snapshot_with("a\"b", None));
        assert!(text.contains("plugin=\"a\\\"b\""), "{text}");
    }
}
