//! What the master records about its workers — started, died of what, generations, the last
//! failed generation, the crash loop — and the view of the whole process tree a worker shows
//! on its status page: the master's record, a row per worker, and totals across workers.
//!
//! Totals are exact when read: a worker serving the status page asks the master
//! ([`crate::control::ToMaster::TreeRequest`]), the master asks every ready worker for its
//! counters and answers when all have replied (or after 500 ms with what it has). Counters of
//! workers that have exited are kept in the record (from their last report), so totals never
//! go down when a worker is replaced (Prometheus counters stay monotonic, up to what a
//! crashed worker did after its last report).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::control::{PluginTotals, WorkerReport};
use crate::metrics::history::History;
pub use crate::metrics::snapshot::rfc3339;
use crate::metrics::snapshot::unix;

use super::generation::Snapshot;

/// How long a tree request waits for the workers' reports.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);
/// Deaths kept for the status page.
const DEATHS_KEPT: usize = 20;

/// One worker, for the status page.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerRow {
    /// Process id.
    pub pid: u32,
    /// Its generation.
    pub generation: u64,
    /// When it started, RFC 3339 UTC.
    pub started_at: String,
    /// Seconds since.
    pub uptime_seconds: f64,
    /// `starting`, `ready`, `retiring` (a replacement is starting) or `stopping`.
    pub state: String,
    /// Its last report (requests, memory, connections, per plugin).
    #[serde(skip)]
    pub report: Option<WorkerReport>,
}

/// A worker that died without being asked to.
#[derive(Debug, Clone, Serialize)]
pub struct Death {
    /// Its pid.
    pub pid: u32,
    /// Its generation.
    pub generation: u64,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// The signal or exit status, and the applications it was running when known.
    pub cause: String,
}

/// The master's record.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// The master's pid.
    pub pid: u32,
    /// When the master started, RFC 3339 UTC.
    pub started_at: String,
    /// Workers it keeps running (`--workers`, changed by SIGTTIN/SIGTTOU).
    pub target: usize,
    /// Workers started since the master started.
    pub workers_started: u64,
    /// Workers that died without being asked to.
    pub workers_died: u64,
    /// Workers replaced gracefully (`--max-requests`, memory ceiling, abandoned calls).
    pub recycled: u64,
    /// Generations that became the serving one (1 at start).
    pub generations: u64,
    /// The serving generation.
    pub generation: u64,
    /// Quick deaths in a row (each within 10 s of its start): a crash loop when above 1.
    pub crash_streak: u32,
    /// The wait before the next respawn, seconds (doubles in a crash loop, at most 10).
    #[serde(serialize_with = "seconds")]
    pub next_respawn_delay: Duration,
    /// The last generation that failed to start or was refused, with when and why.
    pub last_failed_generation: Option<String>,
    /// Plugin files refused for the serving generation.
    pub refused: Vec<String>,
    /// The serving generation's plugins: how often each was loaded anew, and when last.
    pub plugins: BTreeMap<String, PluginLoads>,
    /// The latest deaths, newest last.
    pub deaths: Vec<Death>,
    /// Counters of workers that have exited (their last reports), added to the totals.
    #[serde(skip)]
    pub retired: WorkerReport,
    /// Samples of the totals for the status page's charts (shown as the tree's `history`).
    #[serde(skip)]
    pub history: History,
}

/// One plugin of the serving generation, as the status page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginLoads {
    /// Generations that loaded a new file or new settings for it (1 at the start).
    pub loads: u64,
    /// When the last of those was made, RFC 3339 UTC.
    pub loaded_at: String,
    /// The same, seconds since the Unix epoch.
    pub loaded_at_unix: f64,
}

impl Record {
    /// `snapshot` serves now: its plugins' load counts.
    pub fn serving(&mut self, snapshot: &Snapshot) {
        self.plugins = snapshot
            .plugins
            .iter()
            .map(|(name, e)| {
                let row =
                    PluginLoads { loads: e.loads, loaded_at: rfc3339(e.loaded_at), loaded_at_unix: unix(e.loaded_at) };
                (name.clone(), row)
            })
            .collect();
    }
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Record {
    /// A fresh record for a master keeping `target` workers.
    pub fn new(target: usize) -> Record {
        Record {
            pid: std::process::id(),
            started_at: rfc3339(SystemTime::now()),
            target,
            workers_started: 0,
            workers_died: 0,
            recycled: 0,
            generations: 0,
            generation: 1,
            crash_streak: 0,
            next_respawn_delay: Duration::ZERO,
            last_failed_generation: None,
            refused: Vec::new(),
            plugins: BTreeMap::new(),
            deaths: Vec::new(),
            retired: WorkerReport::default(),
            history: History::default(),
        }
    }

    /// A worker died unasked.
    pub fn died(&mut self, pid: u32, generation: u64, cause: String) {
        self.workers_died += 1;
        self.deaths.push(Death { pid, generation, at: rfc3339(SystemTime::now()), cause });
        if self.deaths.len() > DEATHS_KEPT {
            self.deaths.remove(0);
        }
    }

    /// A generation failed to start or was refused.
    pub fn failed_generation(&mut self, why: String) {
        self.last_failed_generation = Some(format!("{}: {why}", rfc3339(SystemTime::now())));
    }

    /// Keeps an exited worker's counters in the totals.
    pub fn retire(&mut self, last: Option<&WorkerReport>) {
        if let Some(r) = last {
            add(&mut self.retired, r);
        }
    }
}

/// Adds `r`'s counters into `into` (not the gauges: memory, connections, calls in flight).
fn add(into: &mut WorkerReport, r: &WorkerReport) {
    into.requests += r.requests;
    sum_into(&mut into.responses, &r.responses);
    sum_into(&mut into.static_responses, &r.static_responses);
    for p in &r.plugins {
        let i = match into.plugins.iter().position(|q| q.name == p.name) {
            Some(i) => i,
            None => {
                into.plugins.push(PluginTotals { name: p.name.clone(), ..PluginTotals::default() });
                into.plugins.len() - 1
            }
        };
        let q = &mut into.plugins[i];
        q.requests += p.requests;
        q.sum_seconds += p.sum_seconds;
        sum_into(&mut q.classes, &p.classes);
        sum_into(&mut q.buckets, &p.buckets);
    }
}

fn sum_into(into: &mut Vec<u64>, from: &[u64]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

/// Every worker's counters added up (exited ones included): what the charts sample.
pub fn totals(workers: &[WorkerRow], record: &Record) -> WorkerReport {
    let mut totals = record.retired.clone();
    for r in workers.iter().filter_map(|w| w.report.as_ref()) {
        add(&mut totals, r);
    }
    totals
}

/// The tree as the status page gets it.
pub fn view(workers: &[WorkerRow], record: &Record) -> serde_json::Value {
    let mut totals = totals(workers, record);
    let mut rss = 0;
    let mut connections = 0;
    let mut in_flight: BTreeMap<String, u64> = BTreeMap::new();
    let rows: Vec<serde_json::Value> = workers
        .iter()
        .map(|w| {
            let mut row = serde_json::to_value(w).unwrap_or_default();
            if let Some(r) = &w.report {
                rss += r.rss_bytes.unwrap_or(0);
                connections += r.connections;
                for p in &r.plugins {
                    *in_flight.entry(p.name.clone()).or_default() += p.in_flight;
                }
                row["requests"] = r.requests.into();
                row["rss_bytes"] = r.rss_bytes.into();
                row["connections"] = r.connections.into();
            }
            row
        })
        .collect();
    for p in &mut totals.plugins {
        p.in_flight = in_flight.get(&p.name).copied().unwrap_or(0);
    }
    totals.rss_bytes = Some(rss);
    totals.connections = connections;
    totals.plugins.sort_by(|a, b| a.name.cmp(&b.name));
    serde_json::json!({ "master": record, "workers": rows, "totals": totals, "history": record.history.series() })
}

struct Ask {
    from: usize,
    id: u64,
    waiting: Vec<usize>,
    deadline: Instant,
}

/// Tree requests waiting for workers' reports.
#[derive(Default)]
pub struct Asks {
    list: Vec<Ask>,
}

/// A finished request: to whom, its id, the tree.
pub type Answer = (usize, u64, serde_json::Value);

impl Asks {
    /// Worker `from` asked (request `id`); `waiting` are the workers asked for a report.
    pub fn ask(&mut self, from: usize, id: u64, waiting: Vec<usize>, now: Instant) {
        self.list.push(Ask { from, id, waiting, deadline: now + ASK_TIMEOUT });
    }

    /// When the oldest request gives up waiting.
    pub fn deadline(&self) -> Option<Instant> {
        self.list.iter().map(|a| a.deadline).min()
    }

    /// Worker `key` reported: the requests that now have every report.
    pub fn answered(&mut self, key: usize, workers: &[WorkerRow], record: &Record) -> Vec<Answer> {
        for a in &mut self.list {
            a.waiting.retain(|&k| k != key);
        }
        self.finish(|a| a.waiting.is_empty(), workers, record)
    }

    /// The requests past their deadline, answered with what there is.
    pub fn expired(&mut self, now: Instant, workers: &[WorkerRow], record: &Record) -> Vec<Answer> {
        self.finish(|a| a.deadline <= now, workers, record)
    }

    /// Worker `key` exited: nothing waits for it, and nothing is sent to it.
    pub fn forget(&mut self, key: usize) {
        self.list.retain(|a| a.from != key);
        for a in &mut self.list {
            a.waiting.retain(|&k| k != key);
        }
    }

    fn finish(&mut self, done: impl Fn(&Ask) -> bool, workers: &[WorkerRow], record: &Record) -> Vec<Answer> {
        if !self.list.iter().any(&done) {
            return Vec::new();
        }
        let tree = view(workers, record);
        let (finished, rest): (Vec<Ask>, Vec<Ask>) = std::mem::take(&mut self.list).into_iter().partition(|a| done(a));
        self.list = rest;
        finished.into_iter().map(|a| (a.from, a.id, tree.clone())).collect()
    }
}
