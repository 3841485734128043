//! The server's counters about itself: what the admin pages show (`crate::admin`: the
//! status page, as HTML and JSON, and the Prometheus metrics). This module owns every
//! counter; it formats nothing.
//!
//! What is measured, where, and what it costs:
//! - **Per plugin** ([`PluginStats`], by route name; a mount's requests count under its
//!   application plugin): requests, 5xx responses, requests in flight, and a latency
//!   histogram. Recorded by the worker (`crate::worker`) around the application call: from the
//!   moment a worker takes the request's job off the queue until the response head is ready
//!   (the application has returned and `start_response` was checked). Queue wait, streamed
//!   body chunks and writing to the socket are **not** in it. Responses are counted by class
//!   of their status (`2xx` … `5xx`), the application's own or the host's 500 for a broken
//!   response. Cost per request:
//!   two `Instant::now()` and four or five relaxed atomic adds on the plugin's counters; the
//!   counters are found through a per-worker cache ([`WorkerCache`], keyed by the plugin's
//!   load generation), so the shared map's lock is taken once per worker per plugin version,
//!   never per request.
//! - **Connections by state** ([`LoopConns`], one per event loop): each loop recounts its own
//!   connections on its 250 ms sweep (it walks them all for the timeouts anyway) and stores
//!   the counts; readers add the loops up. So the figures are at most ~250 ms old, and
//!   nothing is counted on the request path.
//! - **Worker pool**: busy workers (an atomic the worker raises and lowers around each job:
//!   an application call, a stream pull or a stream close) and the job queue's depth
//!   (read when asked, through a function the server hands over: this module does not know
//!   the queue's type).
//! - **Reloads** (SIGHUP, recorded by `crate::reload`): how many, how many failed, the last
//!   one's time, outcome and error, and when the plugins and configuration serving now were
//!   last loaded successfully (the start counts as one).
//! - **Start time** of the server (`server::run`), and resident memory (VmRSS of
//!   `/proc/self/status`, read when asked).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::plugin::loader::Plugin;

use super::latency::BOUNDS_NS;
pub use super::latency::{BUCKETS, LATENCY_BOUNDS};

/// The status classes responses are counted by (RFC 9110 §15), as Prometheus labels.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index in [`CLASSES`] of a status code (out-of-range codes count as `5xx`).
fn class_of(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// One plugin's counters (all since the server started; kept across reloads of the plugin).
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Requests whose application call is running now.
    in_flight: AtomicUsize,
    /// Responses per status class ([`CLASSES`]).
    responses: [AtomicU64; 5],
    /// Requests per latency bucket (not cumulative); their sum is the request count.
    buckets: [AtomicU64; BUCKETS],
    /// Sum of the latencies, nanoseconds.
    sum_ns: AtomicU64,
}

/// Counts a request in flight until dropped (so a panic unwinding through the worker does not
/// leave it counted).
#[must_use = "the request counts as in flight only while this guard lives"]
pub struct InFlight<'a>(&'a PluginStats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A consistent-enough copy of one plugin's counters (each counter is read once; a request
/// finishing meanwhile may show in one and not yet in another).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginCounts {
    /// Requests answered (the histogram's count).
    pub requests: u64,
    /// Responses per status class ([`CLASSES`]).
    pub responses: [u64; 5],
    /// Application calls running now.
    pub in_flight: u64,
    /// Sum of the latencies, seconds.
    pub sum_seconds: f64,
    /// Requests per bucket of [`LATENCY_BOUNDS`] (not cumulative), `+Inf` last.
    pub buckets: [u64; BUCKETS],
}

impl PluginStats {
    /// Marks a request as started; it counts as in flight until the guard drops.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Records a finished call: its latency and the response status.
    pub fn record(&self, latency: Duration, status: u16) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NS.partition_point(|&bound| bound < ns);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.responses[class_of(status)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn counts(&self) -> PluginCounts {
        let buckets: [u64; BUCKETS] = std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed));
        PluginCounts {
            requests: buckets.iter().sum(),
            responses: std::array::from_fn(|i| self.responses[i].load(Ordering::Relaxed)),
            in_flight: self.in_flight.load(Ordering::Relaxed) as u64,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            buckets,
        }
    }
}

impl PluginCounts {
    /// Mean latency in seconds; `None` before the first request.
    pub fn mean_seconds(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.sum_seconds / self.requests as f64)
    }

    /// The `q`-quantile (0..=1) of the latency in seconds, estimated from the buckets as
    /// Prometheus's `histogram_quantile` does: linear interpolation inside the bucket it falls
    /// in (from 0 for the first bucket). In the `+Inf` bucket it is the largest finite bound.
    /// `None` before the first request.
    pub fn quantile_seconds(&self, q: f64) -> Option<f64> {
        super::latency::quantile_seconds(&self.buckets, q)
    }
}

/// One event loop's connections by state, as counted on its last sweep. The states add up to
/// `open`.
#[derive(Debug, Default)]
pub struct LoopConns {
    /// Connections the loop holds.
    pub open: AtomicUsize,
    /// Waiting for a request (keep-alive or new) with no byte of it yet.
    pub idle: AtomicUsize,
    /// Receiving a request head, or a body the application has not fully read.
    pub reading: AtomicUsize,
    /// The request is with the application (queued or running); nothing to read or write.
    pub processing: AtomicUsize,
    /// Sending a response.
    pub writing: AtomicUsize,
    /// A streamed response paused until its application has more (no worker holds it).
    pub paused: AtomicUsize,
    /// Lingering close: the response is out, the client's leftover input is being drained.
    pub closing: AtomicUsize,
    /// Requests answered on this loop since it started (every kind; for `--max-requests`).
    pub served: std::sync::atomic::AtomicU64,
    /// Responses started on this loop, every kind (files, applications, admin pages, the
    /// server's own errors), by status class ([`CLASSES`]).
    pub responses: [AtomicU64; 5],
    /// Of those, the docroot's answers made on the loop (files, 304s, ranges, 404s; not
    /// static mounts behind middleware, which their pipeline answers), by status class.
    pub static_responses: [AtomicU64; 5],
}

impl LoopConns {
    /// Counts a response with `status` (every kind).
    pub fn responded(&self, status: u16) {
        self.responses[class_of(status)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a response the docroot made, with `status` (also counted by [`Self::responded`]).
    pub fn docroot_responded(&self, status: u16) {
        self.static_responses[class_of(status)].fetch_add(1, Ordering::Relaxed);
    }
}

/// Connections by state, all loops added up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConnCounts {
    /// Open connections.
    pub open: usize,
    /// Waiting for a request, nothing received yet.
    pub idle: usize,
    /// Receiving a request head or body.
    pub reading: usize,
    /// The request is with the application (queued or running).
    pub processing: usize,
    /// Sending a response.
    pub writing: usize,
    /// A streamed response paused until its application has more (a push stream that
    /// answered "not ready": no worker holds it).
    pub paused: usize,
    /// Closing (lingering).
    pub closing: usize,
}

impl LoopConns {
    /// Stores a loop's fresh counts.
    pub fn store(&self, c: ConnCounts) {
        self.open.store(c.open, Ordering::Relaxed);
        self.idle.store(c.idle, Ordering::Relaxed);
        self.reading.store(c.reading, Ordering::Relaxed);
        self.processing.store(c.processing, Ordering::Relaxed);
        self.writing.store(c.writing, Ordering::Relaxed);
        self.paused.store(c.paused, Ordering::Relaxed);
        self.closing.store(c.closing, Ordering::Relaxed);
    }
}

/// How a reload went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadOutcome {
    /// Everything it tried loaded (or nothing had changed).
    Ok,
    /// Some plugin files were refused; the others (and the old versions) serve.
    Partial,
    /// Nothing was applied: the configuration file or the mounts were refused.
    Failed,
}

impl ReloadOutcome {
    /// `ok`, `partial` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Ok => "ok",
            ReloadOutcome::Partial => "partial",
            ReloadOutcome::Failed => "failed",
        }
    }
}

/// The last reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadRecord {
    /// When it finished.
    pub at: SystemTime,
    /// How it went.
    pub outcome: ReloadOutcome,
    /// What changed, in a few words (`2 loaded, 1 reloaded, 0 removed`).
    pub summary: String,
    /// Why it failed, when it did (one line per refused file or setting).
    pub error: Option<String>,
}

/// Reload counters.
#[derive(Debug, Clone)]
pub struct Reloads {
    /// SIGHUPs handled.
    pub count: u64,
    /// Those whose outcome was not [`ReloadOutcome::Ok`].
    pub failures: u64,
    /// The last one.
    pub last: Option<ReloadRecord>,
    /// When what serves now was last loaded without refusing anything: the start, or the last
    /// reload whose outcome was [`ReloadOutcome::Ok`].
    pub last_success: SystemTime,
}

/// What the server runs with, for the status page: set at the start, the file's time again
/// on each reload that applies it.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// The configuration file (`--config`), if any.
    pub config_file: Option<std::path::PathBuf>,
    /// When the configuration serving now was read from it.
    pub config_loaded_at: Option<SystemTime>,
    /// Where the server listens (`http://127.0.0.1:8000`, `unix:/run/portico.sock`).
    pub listeners: Vec<String>,
    /// Whether calls may run on event loops (`--inline-timeout` is not 0).
    pub inline_calls: bool,
}

/// The length of the job queue, read when asked.
pub type QueueDepth = Box<dyn Fn() -> usize + Send + Sync>;

/// Every counter of the server (one, shared by `Arc`).
pub struct Stats {
    started: Instant,
    started_at: SystemTime,
    /// Per-plugin counters by route name. Entries are never removed (a plugin's counters
    /// outlive its reloads, as Prometheus counters should).
    plugins: Mutex<HashMap<String, Arc<PluginStats>>>,
    loops: Box<[LoopConns]>,
    workers: usize,
    busy: AtomicUsize,
    /// Reads the job queue's length.
    queue: QueueDepth,
    reloads: Mutex<Reloads>,
    /// Plugin files that do not serve, with why (see [`Stats::set_refused`]).
    refused: Mutex<Vec<String>>,
    setup: Mutex<Setup>,
    history: Mutex<super::history::History>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats").field("workers", &self.workers).finish_non_exhaustive()
    }
}

impl Stats {
    /// Counters for a server with `event_loops` event loops and `workers` worker threads, whose
    /// job queue's length `queue` reads. Uptime counts from now.
    pub fn new(event_loops: usize, workers: usize, queue: QueueDepth) -> Stats {
        let now = SystemTime::now();
        Stats {
            started: Instant::now(),
            started_at: now,
            plugins: Mutex::new(HashMap::new()),
            loops: (0..event_loops.max(1)).map(|_| LoopConns::default()).collect(),
            workers,
            busy: AtomicUsize::new(0),
            queue,
            reloads: Mutex::new(Reloads { count: 0, failures: 0, last: None, last_success: now }),
            refused: Mutex::new(Vec::new()),
            setup: Mutex::new(Setup::default()),
            history: Mutex::new(super::history::History::default()),
        }
    }

    /// Requests answered since the process started, every kind (static files, applications,
    /// admin pages, errors).
    pub fn requests_served(&self) -> u64 {
        self.loops.iter().map(|l| l.served.load(Ordering::Relaxed)).sum()
    }

    /// Every plugin's counters as the master adds them up (and as a chart samples them).
    pub fn plugin_totals(&self) -> Vec<crate::control::PluginTotals> {
        self.plugins()
            .into_iter()
            .map(|(name, c)| crate::control::PluginTotals {
                name,
                requests: c.requests,
                classes: c.responses.to_vec(),
                in_flight: c.in_flight,
                sum_seconds: c.sum_seconds,
                buckets: c.buckets.to_vec(),
            })
            .collect()
    }

    /// Samples every plugin's counters for the charts (alone; a master samples its workers').
    pub fn record_history(&self) {
        let totals = self.plugin_totals();
        self.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner).record(SystemTime::now(), totals);
    }

    /// The charts from the samples kept.
    pub fn history(&self) -> Vec<super::history::Series> {
        self.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner).series()
    }

    /// Records what the server runs with (at the start).
    pub fn set_setup(&self, setup: Setup) {
        *self.setup.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = setup;
    }

    /// A reload applied the configuration file read at `at`.
    pub fn config_reloaded(&self, at: SystemTime) {
        self.setup.lock().unwrap_or_else(std::sync::PoisonError::into_inner).config_loaded_at = Some(at);
    }

    /// What the server runs with.
    pub fn setup(&self) -> Setup {
        self.setup.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Responses since the process started, every kind, by status class ([`CLASSES`]).
    pub fn responses(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.loops.iter().map(|l| l.responses[i].load(Ordering::Relaxed)).sum())
    }

    /// The docroot's responses since the process started, by status class.
    pub fn static_responses(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.loops.iter().map(|l| l.static_responses[i].load(Ordering::Relaxed)).sum())
    }

    /// The counters of plugin `name`, created at zero on first use. Takes a lock: the request
    /// path goes through a [`WorkerCache`] instead.
    pub fn plugin(&self, name: &str) -> Arc<PluginStats> {
        let mut map = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(name.to_owned()).or_default())
    }

    /// Every plugin's counters, by route name, sorted.
    pub fn plugins(&self) -> Vec<(String, PluginCounts)> {
        let map = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map.iter().map(|(n, s)| (n.clone(), s.counts())).collect();
        drop(map);
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Event loop `index`'s connection counts (the loop stores into them on its sweep).
    pub fn loop_conns(&self, index: usize) -> &LoopConns {
        &self.loops[index.min(self.loops.len() - 1)]
    }

    /// Connections by state over all loops (each loop's figures are from its last sweep).
    pub fn connections(&self) -> ConnCounts {
        let mut c = ConnCounts::default();
        for l in self.loops.iter() {
            c.open += l.open.load(Ordering::Relaxed);
            c.idle += l.idle.load(Ordering::Relaxed);
            c.reading += l.reading.load(Ordering::Relaxed);
            c.processing += l.processing.load(Ordering::Relaxed);
            c.writing += l.writing.load(Ordering::Relaxed);
            c.paused += l.paused.load(Ordering::Relaxed);
            c.closing += l.closing.load(Ordering::Relaxed);
        }
        c
    }

    /// Marks a worker busy until the guard drops.
    pub fn worker_busy(&self) -> Busy<'_> {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self)
    }

    /// Worker threads in the pool.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Workers running a job now.
    pub fn busy_workers(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// Jobs waiting for a worker now.
    pub fn queue_depth(&self) -> usize {
        (self.queue)()
    }

    /// Sets the plugin files that do not serve, with why (`FILE: reason` each), after the
    /// start and after each reload.
    pub fn set_refused(&self, lines: Vec<String>) {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = lines;
    }

    /// The plugin files that do not serve, with why.
    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records a reload.
    pub fn record_reload(&self, outcome: ReloadOutcome, summary: String, error: Option<String>) {
        let mut r = self.reloads.lock().unwrap_or_else(|e| e.into_inner());
        r.count += 1;
        let at = SystemTime::now();
        if outcome == ReloadOutcome::Ok {
            r.last_success = at;
        } else {
            r.failures += 1;
        }
        r.last = Some(ReloadRecord { at, outcome, summary, error });
    }

    /// The reload counters.
    pub fn reloads(&self) -> Reloads {
        self.reloads.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Time since the server started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// When the server started (wall clock).
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }
}

/// Counts a worker as busy until dropped.
#[must_use = "the worker counts as busy only while this guard lives"]
pub struct Busy<'a>(&'a Stats);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A worker's own map from a plugin version (its load generation, unique in the process) to
/// its counters: the request path finds the counters without a shared lock. Old generations
/// stay until the map grows past [`WorkerCache::MAX`] entries, then it starts afresh.
#[derive(Debug, Default)]
pub struct WorkerCache {
    by_generation: HashMap<u64, Arc<PluginStats>>,
}

impl WorkerCache {
    /// Entries kept before the cache is cleared (each one is a pointer; reloads add them).
    pub const MAX: usize = 1024;

    /// The counters of `plugin`.
    pub fn get(&mut self, stats: &Stats, plugin: &Plugin) -> &PluginStats {
        if self.by_generation.len() >= Self::MAX && !self.by_generation.contains_key(&plugin.generation) {
            self.by_generation.clear();
        }
        self.by_generation.entry(plugin.generation).or_insert_with(|| stats.plugin(&plugin.name))
    }
}

/// Resident memory of this process in bytes (`VmRSS` of `/proc/self/status`); `None` where
/// there is no such file.
pub fn resident_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line["VmRSS:".len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_agree() {
        for (s, ns) in LATENCY_BOUNDS.iter().zip(BOUNDS_NS) {
            assert_eq!((s * 1e9).round() as u64, ns);
        }
        assert!(LATENCY_BOUNDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn record_buckets_errors_and_in_flight() {
        let p = PluginStats::default();
        {
            let _a = p.start();
            let _b = p.start();
            assert_eq!(p.counts().in_flight, 2);
        }
        assert_eq!(p.counts().in_flight, 0);
        p.record(Duration::from_micros(25), 200); // on the first bound: first bucket
        p.record(Duration::from_micros(26), 200);
        p.record(Duration::from_millis(3), 500);
        p.record(Duration::from_secs(60), 503); // +Inf
        let c = p.counts();
        assert_eq!(c.requests, 4);
        assert_eq!(c.responses, [0, 2, 0, 0, 2]);
        assert_eq!((c.buckets[0], c.buckets[1], c.buckets[7], c.buckets[BUCKETS - 1]), (1, 1, 1, 1));
        assert!((c.sum_seconds - 60.003_051).abs() < 1e-9, "{}", c.sum_seconds);
    }

    #[test]
    fn quantiles_interpolate_like_histogram_quantile() {
        let mut c = PluginCounts::default();
        assert_eq!(c.quantile_seconds(0.99), None);
        assert_eq!(c.mean_seconds(), None);
        // 100 requests in (0.5 ms, 1 ms]: p50 is half-way, p99 near the top.
        c.buckets[5] = 100;
        c.requests = 100;
        c.sum_seconds = 0.075;
        let p50 = c.quantile_seconds(0.5).unwrap();
        assert!((p50 - 0.000_75).abs() < 1e-12, "{p50}");
        let p99 = c.quantile_seconds(0.99).unwrap();
        assert!((p99 - 0.000_995).abs() < 1e-12, "{p99}");
        assert_eq!(c.mean_seconds(), Some(0.000_75));
        // One slow request in +Inf: p99 of 100 stays in the fast bucket, p100 is the last bound.
        c.buckets[BUCKETS - 1] = 1;
        c.requests = 101;
        assert!(c.quantile_seconds(0.99).unwrap() <= 0.001);
        assert_eq!(c.quantile_seconds(1.0), Some(25.0));
    }

    #[test]
    fn reloads_count_failures() {
        let s = Stats::new(2, 4, Box::new(|| 0));
        let started = s.reloads().last_success;
        assert_eq!(started, s.started_at(), "the start is the first successful load");
        s.record_reload(ReloadOutcome::Ok, "nothing changed".into(), None);
        let ok = s.reloads().last_success;
        assert!(ok >= started);
        s.record_reload(ReloadOutcome::Failed, "not applied".into(), Some("bad file".into()));
        let r = s.reloads();
        assert_eq!((r.count, r.failures, r.last_success), (2, 1, ok), "a failure does not move it");
        assert_eq!(r.last.unwrap().error.as_deref(), Some("bad file"));
        s.loop_conns(1).store(ConnCounts { open: 3, idle: 1, reading: 1, writing: 1, ..ConnCounts::default() });
        assert_eq!(s.connections().open, 3);
        let b = s.worker_busy();
        assert_eq!(s.busy_workers(), 1);
        drop(b);
        assert_eq!((s.busy_workers(), s.queue_depth(), s.workers()), (0, 0, 4));
    }

    #[test]
    fn rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(resident_memory_bytes().is_some_and(|b| b > 0));
        }
    }
}
