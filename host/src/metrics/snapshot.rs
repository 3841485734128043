//! One consistent read of the counters ([`Snapshot`]): what the admin pages render three
//! ways (`crate::admin`: HTML, JSON, OpenMetrics), so the three agree within one request.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::counters::{BUCKETS, CLASSES, ConnCounts, PluginCounts, ReloadOutcome, Stats, resident_memory_bytes};
use crate::admission::GateCounts;
use crate::control::WorkerReport;
use crate::plugin::registry::PluginSet;

/// The server in one snapshot: what all three renderings show.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The process.
    pub server: ServerInfo,
    /// What the server runs with: configuration file, listeners, mounts.
    pub setup: SetupInfo,
    /// Every request, by what answered it.
    pub traffic: Traffic,
    /// Each application's recent past (see [`super::history`]): under a master, every
    /// worker's.
    pub history: Vec<super::history::Series>,
    /// Every plugin loaded now, and any that served requests before being removed; by name.
    pub plugins: Vec<PluginRow>,
    /// Connections by state (each event loop's figures are from its last 250 ms sweep).
    pub connections: ConnCounts,
    /// The worker pool.
    pub workers: WorkerInfo,
    /// The applications a request can reach (mounts and `/NAME.py` plugins), by name: their
    /// limits and admission figures.
    pub apps: Vec<AppRow>,
    /// SIGHUP reloads.
    pub reloads: ReloadInfo,
    /// Plugin files in the directory that do not serve, with why (`FILE: reason`): refused at
    /// the start or by a reload, and not changed since. Under a master see also
    /// `processes.master.refused` (the workers load only what the master's test load passed).
    pub refused_plugins: Vec<String>,
    /// Under a master (`--workers N`): the master's record, a row per worker, and totals
    /// across workers (the plugin rows above then count every worker, not only this one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<serde_json::Value>,
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

/// What the server runs with.
#[derive(Debug, Clone, Serialize)]
pub struct SetupInfo {
    /// The configuration file (`--config`), if any.
    pub config_file: Option<String>,
    /// When this process read the configuration serving now (at the start, or the last reload
    /// that applied it), RFC 3339 UTC.
    pub config_loaded_at: Option<String>,
    /// Where the server listens: `http://127.0.0.1:8000`, `unix:/run/portico.sock`.
    pub listeners: Vec<String>,
    /// The mounts, in the order they are matched (longest prefix first).
    pub mounts: Vec<MountRow>,
}

/// One mount: a URL prefix and the pipeline that answers it.
#[derive(Debug, Clone, Serialize)]
pub struct MountRow {
    /// The prefix (`SCRIPT_NAME`).
    pub prefix: String,
    /// What answers at the end of the pipeline: a plugin's name, or `static files`.
    pub app: String,
    /// Middleware, outermost first.
    pub middleware: Vec<String>,
}

/// Every request since the start (under a master: every worker's, exited ones included).
#[derive(Debug, Clone, Serialize)]
pub struct Traffic {
    /// Requests answered, every kind (a response written whole).
    pub requests: u64,
    /// Responses by status class, every kind (files, applications, admin pages, the server's
    /// own errors such as a 400 for a malformed request or a 503 when an application is
    /// full): `{"1xx": 0, "2xx": 12, …}`.
    pub responses: BTreeMap<&'static str, u64>,
    /// Of those, the docroot's answers on the event loop (files, 304s, ranges, 404s), by
    /// status class. A static mount behind middleware counts under its pipeline instead.
    pub static_files: BTreeMap<&'static str, u64>,
}

impl Traffic {
    fn of(requests: u64, responses: &[u64], static_files: &[u64]) -> Traffic {
        let by_class =
            |v: &[u64]| CLASSES.iter().enumerate().map(|(i, c)| (*c, v.get(i).copied().unwrap_or(0))).collect();
        Traffic { requests, responses: by_class(responses), static_files: by_class(static_files) }
    }
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
    /// Times this plugin has been loaded: 1 at the start, one more for each reload that
    /// loaded a new file or new settings (under a master, counted by the master across
    /// generations).
    pub loads: Option<u64>,
    /// When this version was loaded, RFC 3339 UTC.
    pub loaded_at: Option<String>,
    /// The same, seconds since the Unix epoch.
    pub loaded_at_unix: Option<f64>,
    /// Whether its calls without a request body run on the event loop that read them: it
    /// promised never to block (`never_blocks`) and, in this process, has kept the promise.
    pub on_event_loop: Option<bool>,
    /// Requests answered since the server started.
    pub requests: u64,
    /// Responses by status class: `{"1xx": 0, "2xx": 12, …, "5xx": 1}`.
    pub responses: BTreeMap<&'static str, u64>,
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
    /// Calls and stream pulls waiting for a worker: in the pool's queue, or in an
    /// application's queue for a slot.
    pub queue_depth: usize,
    /// Threads abandoned in an application past its deadline and still running (not in
    /// `threads`: the pool started others in their place).
    pub abandoned: usize,
}

/// One application: a mount, or a `/NAME.py` plugin.
#[derive(Debug, Clone, Serialize)]
pub struct AppRow {
    /// Its name: the mount's prefix, or `/NAME.py`.
    pub name: String,
    /// Its limits and figures.
    #[serde(flatten)]
    pub counts: GateCounts,
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
    /// When what serves now was last loaded without refusing anything (the start, or the
    /// last reload whose outcome was `ok`), RFC 3339 UTC.
    pub last_success_at: String,
    /// The same, seconds since the Unix epoch.
    pub last_success_at_unix: f64,
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

/// Seconds since the Unix epoch.
pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// RFC 3339, UTC, whole seconds.
pub fn rfc3339(t: SystemTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from(t).format(&fmt).unwrap_or_default()
}

impl Snapshot {
    /// Reads the counters now. Every loaded plugin gets a row (its counters are created at
    /// zero), so a plugin that has served nothing yet still shows.
    pub fn take(stats: &Stats, plugins: &PluginSet, apps: Vec<AppRow>, mounts: Vec<MountRow>) -> Snapshot {
        for name in plugins.keys() {
            stats.plugin(name);
        }
        let inline_calls = stats.setup().inline_calls;
        let rows = stats
            .plugins()
            .into_iter()
            .map(|(name, c)| {
                let p = plugins.get(&name);
                PluginRow {
                    loaded: p.is_some(),
                    version: p.map(|p| p.version.clone()),
                    loads: p.map(|p| p.loads),
                    loaded_at: p.map(|p| rfc3339(p.loaded_at)),
                    loaded_at_unix: p.map(|p| unix(p.loaded_at)),
                    on_event_loop: p.map(|p| inline_calls && p.inline()),
                    requests: c.requests,
                    responses: CLASSES.iter().copied().zip(c.responses).collect(),
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
        let setup = stats.setup();
        Snapshot {
            setup: SetupInfo {
                config_file: setup.config_file.map(|p| p.display().to_string()),
                config_loaded_at: setup.config_loaded_at.map(rfc3339),
                listeners: setup.listeners,
                mounts,
            },
            server: ServerInfo {
                version: env!("CARGO_PKG_VERSION"),
                started_at: rfc3339(stats.started_at()),
                started_at_unix: unix(stats.started_at()),
                uptime_seconds: stats.uptime().as_secs_f64(),
                resident_memory_bytes: resident_memory_bytes(),
            },
            traffic: Traffic::of(stats.requests_served(), &stats.responses(), &stats.static_responses()),
            history: stats.history(),
            plugins: rows,
            connections: stats.connections(),
            workers: WorkerInfo {
                threads: stats.workers(),
                busy: stats.busy_workers(),
                queue_depth: stats.queue_depth() + apps.iter().map(|a| a.counts.waiting).sum::<usize>(),
                abandoned: apps.iter().map(|a| a.counts.abandoned).sum(),
            },
            apps,
            refused_plugins: stats.refused(),
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
                last_success_at: rfc3339(reloads.last_success),
                last_success_at_unix: unix(reloads.last_success),
            },
            processes: None,
        }
    }

    /// The snapshot with the process tree's view (from the master): each plugin's counters
    /// become the totals across every worker (exited ones included).
    pub fn with_tree(mut self, tree: serde_json::Value) -> Snapshot {
        let totals: WorkerReport = serde_json::from_value(tree["totals"].clone()).unwrap_or_default();
        self.traffic = Traffic::of(totals.requests, &totals.responses, &totals.static_responses);
        if let Ok(history) = serde_json::from_value(tree["history"].clone()) {
            self.history = history;
        }
        for row in &mut self.plugins {
            // The master's count: each worker of a generation loads its plugins once.
            let loads = &tree["master"]["plugins"][&row.name];
            if let (Some(n), Some(at)) = (loads["loads"].as_u64(), loads["loaded_at_unix"].as_f64()) {
                row.loads = Some(n);
                row.loaded_at_unix = Some(at);
                row.loaded_at = loads["loaded_at"].as_str().map(str::to_owned);
            }
            let Some(t) = totals.plugins.iter().find(|t| t.name == row.name) else { continue };
            let mut c = PluginCounts {
                requests: t.requests,
                responses: [0; 5],
                in_flight: t.in_flight,
                sum_seconds: t.sum_seconds,
                buckets: [0; BUCKETS],
            };
            for (to, from) in c.responses.iter_mut().zip(&t.classes) {
                *to = *from;
            }
            for (to, from) in c.buckets.iter_mut().zip(&t.buckets) {
                *to = *from;
            }
            row.requests = c.requests;
            row.responses = CLASSES.iter().copied().zip(c.responses).collect();
            row.in_flight = c.in_flight;
            row.mean_seconds = c.mean_seconds();
            row.p99_seconds = c.quantile_seconds(0.99);
            row.sum_seconds = c.sum_seconds;
            row.buckets = c.buckets;
        }
        self.processes = Some(tree);
        self
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_row_per_plugin_with_its_responses_by_class() {
        let stats = Stats::new(1, 4, Box::new(|| 3));
        let p = stats.plugin("hello");
        p.record(Duration::from_micros(300), 200);
        p.record(Duration::from_millis(2), 503);
        let s = Snapshot::take(&stats, &PluginSet::new(), Vec::new(), Vec::new());
        let row = &s.plugins[0];
        assert_eq!((row.name.as_str(), row.loaded, row.requests), ("hello", false, 2));
        assert_eq!((row.responses["2xx"], row.responses["5xx"], row.responses["4xx"]), (1, 1, 0));
        assert_eq!((s.workers.threads, s.workers.queue_depth), (4, 3));
        assert!(s.reloads.last.is_none() && s.reloads.last_success_at_unix > 0.0);
    }
}
