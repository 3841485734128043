//! The recent past of each application's counters, for the status page's charts: a sample of
//! every plugin's totals every `--status-chart-interval` seconds (10), the last [`POINTS`] + 1
//! kept (15 minutes at the default), turned into points — requests/s, 5xx/s and the p99
//! latency of the requests answered in each interval.
//!
//! Alone, the process samples its own counters; under a master, the master samples the
//! totals of every worker (from their reports, at most a second old), so the charts do not
//! depend on which worker answers the page.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::latency::{BUCKETS, quantile_seconds};
use crate::control::PluginTotals;

/// Points a chart shows: intervals between the samples kept.
pub const POINTS: usize = 90;

/// One point of one application's chart: what happened in the interval that ended at
/// `at_unix`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The end of the interval, seconds since the Unix epoch.
    pub at_unix: f64,
    /// Requests answered per second.
    pub requests_per_second: f64,
    /// 5xx responses per second.
    pub errors_per_second: f64,
    /// The 99th percentile latency of the interval's requests, seconds (from the histogram's
    /// buckets); `None` when there were none.
    pub p99_seconds: Option<f64>,
}

/// One application's chart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// The plugin's route name (a mount's requests count under its application).
    pub name: String,
    /// Oldest first.
    pub points: Vec<Point>,
}

/// The samples kept.
#[derive(Debug, Default, Clone)]
pub struct History {
    samples: VecDeque<(f64, Vec<PluginTotals>)>,
}

impl History {
    /// Keeps `plugins`' totals as they are at `at` (dropping the oldest sample beyond
    /// [`POINTS`] + 1).
    pub fn record(&mut self, at: SystemTime, plugins: Vec<PluginTotals>) {
        let at = at.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        self.samples.push_back((at, plugins));
        while self.samples.len() > POINTS + 1 {
            self.samples.pop_front();
        }
    }

    /// A chart per application seen in the samples, by name; a counter that went down (a
    /// worker's counters gone with it) gives no negative rate, just zero.
    pub fn series(&self) -> Vec<Series> {
        let mut names: Vec<&str> = self.samples.iter().flat_map(|(_, ps)| ps.iter().map(|p| p.name.as_str())).collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let find = |ps: &[PluginTotals]| ps.iter().find(|p| p.name == name).cloned().unwrap_or_default();
                let points = self
                    .samples
                    .iter()
                    .zip(self.samples.iter().skip(1))
                    .map(|((t0, a), (t1, b))| point(*t0, &find(a), *t1, &find(b)))
                    .collect();
                Series { name: name.to_owned(), points }
            })
            .collect()
    }
}

/// What happened between sample `a` (at `t0`) and sample `b` (at `t1`).
fn point(t0: f64, a: &PluginTotals, t1: f64, b: &PluginTotals) -> Point {
    let secs = (t1 - t0).max(1e-3);
    let class = |p: &PluginTotals, i: usize| p.classes.get(i).copied().unwrap_or(0);
    let mut buckets = [0u64; BUCKETS];
    for (i, slot) in buckets.iter_mut().enumerate() {
        *slot = b.buckets.get(i).copied().unwrap_or(0).saturating_sub(a.buckets.get(i).copied().unwrap_or(0));
    }
    let requests = b.requests.saturating_sub(a.requests);
    Point {
        at_unix: t1,
        requests_per_second: requests as f64 / secs,
        errors_per_second: class(b, 4).saturating_sub(class(a, 4)) as f64 / secs,
        p99_seconds: quantile_seconds(&buckets, 0.99),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn totals(name: &str, requests: u64, errors: u64, slow: u64) -> PluginTotals {
        let mut buckets = vec![0; BUCKETS];
        buckets[0] = requests - slow;
        buckets[BUCKETS - 2] += slow;
        PluginTotals {
            name: name.into(),
            requests,
            classes: vec![0, requests - errors, 0, 0, errors],
            buckets,
            ..Default::default()
        }
    }

    #[test]
    fn points_are_rates_per_interval_and_the_window_is_bounded() {
        let mut h = History::default();
        let t = UNIX_EPOCH + Duration::from_secs(1_000);
        h.record(t, vec![totals("hello", 0, 0, 0)]);
        h.record(t + Duration::from_secs(10), vec![totals("hello", 100, 0, 0), totals("fixture", 5, 5, 5)]);
        h.record(t + Duration::from_secs(20), vec![totals("hello", 150, 10, 0), totals("fixture", 5, 5, 5)]);
        let s = h.series();
        assert_eq!(s.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["fixture", "hello"]);
        let hello = &s[1].points;
        assert_eq!((hello.len(), hello[0].requests_per_second, hello[1].requests_per_second), (2, 10.0, 5.0));
        assert_eq!((hello[0].errors_per_second, hello[1].errors_per_second), (0.0, 1.0));
        assert!(hello[0].p99_seconds.is_some_and(|p| p <= 0.001), "{hello:?}");
        let fixture = &s[0].points;
        assert!(fixture[0].p99_seconds.is_some_and(|p| p > 1.0) && fixture[1].p99_seconds.is_none(), "{fixture:?}");
        for i in 0..200 {
            h.record(t + Duration::from_secs(30 + i), vec![totals("hello", 150, 10, 0)]);
        }
        let all = h.series();
        let hello = all.iter().find(|s| s.name == "hello").expect("hello's chart");
        assert_eq!(hello.points.len(), POINTS);
    }
}
