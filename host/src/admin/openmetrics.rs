//! The metrics as OpenMetrics text (what Prometheus asks for first), written by the
//! `prometheus-client` crate's encoder from a [`Collector`] over one [`Snapshot`]; the host's
//! counters stay plain atomics (prometheus-client's own histogram takes a mutex per
//! observation). Names follow Prometheus's conventions: `_total` counters, `_seconds` and
//! `_bytes` units, a `class` label for status classes.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use crate::admission::GateCounts;
use crate::metrics::counters::LATENCY_BOUNDS;
use crate::metrics::snapshot::{AppRow, PluginRow, Snapshot};

/// `Content-Type` of the metrics: the OpenMetrics text format that prometheus-client writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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

/// One counter or gauge family with one label, `key` = `label(row)`, and `value(row)` for
/// each row.
#[allow(clippy::too_many_arguments)] // a family's name, help, type, label and value: one call each
fn family<R>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    key: &str,
    rows: &[R],
    label: impl Fn(&R) -> &str,
    value: impl Fn(&R) -> u64,
) -> Fmt {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for row in rows {
        let labels = [(key, label(row))];
        let mut family = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => family.encode_counter::<NoLabelSet, _, u64>(&value(row), None)?,
            _ => family.encode_gauge(&value(row))?,
        }
    }
    Ok(())
}

/// A family labelled by `app` (an application's name), the value of each from `value`.
fn app_family(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    apps: &[AppRow],
    value: fn(&GateCounts) -> u64,
) -> Fmt {
    family(e, name, help, kind, "app", apps, |a| a.name.as_str(), |a| value(&a.counts))
}

/// A counter family labelled by `plugin`, the value of each row from `value`.
fn plugin_counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[PluginRow],
    value: fn(&PluginRow) -> u64,
) -> Fmt {
    family(e, name, help, MetricType::Counter, "plugin", rows, |p| p.name.as_str(), value)
}

impl Collector for Collect {
    fn encode(&self, mut e: DescriptorEncoder) -> Fmt {
        let s = &self.0;
        let seconds = Unit::Seconds;
        let t = &s.traffic;
        counter(
            &mut e,
            "portico_requests",
            "Requests answered, every kind (under a master: every worker process's).",
            t.requests,
        )?;
        for (name, help, by_class) in [
            (
                "portico_responses",
                "Responses by status class, every kind: files, applications, admin pages, the server's own errors.",
                &t.responses,
            ),
            (
                "portico_static_responses",
                "The docroot's responses by status class (files, 304s, ranges, 404s).",
                &t.static_files,
            ),
        ] {
            let rows: Vec<(&str, u64)> = by_class.iter().map(|(c, n)| (*c, *n)).collect();
            family(&mut e, name, help, MetricType::Counter, "class", &rows, |r| r.0, |r| r.1)?;
        }
        plugin_counter(
            &mut e,
            "portico_plugin_requests",
            "Requests answered by a plugin (a mount's count under its application).",
            &s.plugins,
            |p| p.requests,
        )?;
        {
            let mut m = e.encode_descriptor(
                "portico_plugin_responses",
                "Plugin responses by status class (1xx to 5xx; a mount's under its application).",
                None,
                MetricType::Counter,
            )?;
            for p in &s.plugins {
                for (class, n) in &p.responses {
                    m.encode_family(&[("plugin", p.name.as_str()), ("class", class)])?
                        .encode_counter::<NoLabelSet, _, u64>(n, None)?;
                }
            }
        }
        family(
            &mut e,
            "portico_plugin_in_flight",
            "Plugin application calls running now.",
            MetricType::Gauge,
            "plugin",
            &s.plugins,
            |p| p.name.as_str(),
            |p| p.in_flight,
        )?;
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
                let labels = [("plugin", p.name.as_str()), ("version", p.version.as_deref().unwrap_or(""))];
                m.encode_info(&labels)?;
            }
        }
        let loaded: Vec<&PluginRow> = s.plugins.iter().filter(|p| p.loads.is_some()).collect();
        family(
            &mut e,
            "portico_plugin_loads",
            "Times a plugin has been loaded: 1 at the start, one more per reload that changed its file or settings.",
            MetricType::Counter,
            "plugin",
            &loaded,
            |p| p.name.as_str(),
            |p| p.loads.unwrap_or(0),
        )?;
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
                "Open client connections by state (recounted by each event loop every 250 ms).",
                None,
                MetricType::Gauge,
            )?;
            for (state, n) in [
                ("idle", c.idle),
                ("reading", c.reading),
                ("processing", c.processing),
                ("writing", c.writing),
                ("paused", c.paused),
                ("closing", c.closing),
            ] {
                m.encode_family(&[("state", state)])?.encode_gauge(&n)?;
            }
        }
        app_family(
            &mut e,
            "portico_app_running",
            "Calls of an application running now.",
            MetricType::Gauge,
            &s.apps,
            |c| c.running as u64,
        )?;
        app_family(
            &mut e,
            "portico_app_waiting",
            "Calls of an application waiting for a slot now.",
            MetricType::Gauge,
            &s.apps,
            |c| c.waiting as u64,
        )?;
        app_family(
            &mut e,
            "portico_app_max_concurrency",
            "Calls of an application that may run at once.",
            MetricType::Gauge,
            &s.apps,
            |c| c.max_concurrency as u64,
        )?;
        app_family(
            &mut e,
            "portico_app_admitted",
            "Calls of an application admitted.",
            MetricType::Counter,
            &s.apps,
            |c| c.admitted,
        )?;
        app_family(
            &mut e,
            "portico_app_timeouts",
            "Calls of an application cut off at their deadline (504, or a closed stream).",
            MetricType::Counter,
            &s.apps,
            |c| c.timeouts,
        )?;
        app_family(
            &mut e,
            "portico_app_refused",
            "Calls of an application refused with 503 (queue full, or stopped).",
            MetricType::Counter,
            &s.apps,
            |c| c.refused,
        )?;
        app_family(
            &mut e,
            "portico_app_abandoned_threads",
            "Worker threads abandoned in an application past its deadline and still running.",
            MetricType::Gauge,
            &s.apps,
            |c| c.abandoned as u64,
        )?;
        app_family(
            &mut e,
            "portico_app_stopped",
            "Whether an application left too many threads stuck and answers 503 until reloaded (1) or not (0).",
            MetricType::Gauge,
            &s.apps,
            |c| u64::from(c.stopped),
        )?;
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
        gauge(
            &mut e,
            "portico_reload_last_success_timestamp",
            "When the plugins and configuration serving now were last loaded without refusing anything \
             (the start, or the last reload whose outcome was ok), seconds since the Unix epoch.",
            Some(&seconds),
            r.last_success_at_unix,
        )?;
        if let Some(last) = &r.last {
            gauge(
                &mut e,
                "portico_reload_last_timestamp",
                "When the last reload finished, whatever its outcome, seconds since the Unix epoch.",
                Some(&seconds),
                last.at_unix,
            )?;
        }
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
        if let Some(tree) = &s.processes {
            processes(&mut e, tree)?;
        }
        Ok(())
    }
}

/// The process tree under a master: workers, their memory, starts, deaths, generations.
fn processes(e: &mut DescriptorEncoder, tree: &serde_json::Value) -> Fmt {
    let m = &tree["master"];
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let workers = tree["workers"].as_array().map_or(0, Vec::len);
    gauge(e, "portico_worker_processes", "Worker processes running now.", None, workers as u64)?;
    gauge(
        e,
        "portico_worker_processes_wanted",
        "Worker processes the master keeps (--workers, SIGTTIN/SIGTTOU).",
        None,
        n(&m["target"]),
    )?;
    counter(e, "portico_worker_process_starts", "Worker processes started by the master.", n(&m["workers_started"]))?;
    counter(
        e,
        "portico_worker_process_deaths",
        "Worker processes that died without being asked to.",
        n(&m["workers_died"]),
    )?;
    counter(e, "portico_worker_process_recycles", "Worker processes replaced gracefully.", n(&m["recycled"]))?;
    gauge(e, "portico_generation", "The serving generation of worker processes.", None, n(&m["generation"]))?;
    let rss = n(&tree["totals"]["rss_bytes"]);
    gauge(
        e,
        "portico_worker_processes_resident_memory",
        "Resident memory of every worker process.",
        Some(&Unit::Bytes),
        rss,
    )
}

/// The metrics in the OpenMetrics text format (ends with `# EOF`).
pub fn render(snapshot: Snapshot) -> String {
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
    use std::time::Duration;

    use super::*;
    use crate::metrics::counters::{ReloadOutcome, Stats};
    use crate::plugin::registry::PluginSet;

    fn snapshot_with(name: &str) -> Snapshot {
        let stats = Stats::new(1, 4, Box::new(|| 0));
        let p = stats.plugin(name);
        p.record(Duration::from_micros(300), 200);
        p.record(Duration::from_millis(2), 500);
        stats.record_reload(ReloadOutcome::Failed, "0 loaded".into(), None);
        let limits = crate::admission::Limits { max_concurrency: 3, queue: 8, timeout: None, max_abandoned: 4 };
        let gate = crate::admission::Gate::new("/api".into(), limits, 1);
        let apps = vec![crate::metrics::snapshot::AppRow { name: "/api".into(), counts: gate.counts() }];
        Snapshot::take(&stats, &PluginSet::new(), apps, Vec::new())
    }

    #[test]
    fn metrics_are_openmetrics_text() {
        let text = render(snapshot_with("hello"));
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE portico_plugin_requests counter\n"), "{text}");
        assert!(text.contains("portico_plugin_requests_total{plugin=\"hello\"} 2\n"), "{text}");
        assert!(text.contains("portico_plugin_responses_total{plugin=\"hello\",class=\"5xx\"} 1\n"), "{text}");
        assert!(text.contains("portico_plugin_responses_total{plugin=\"hello\",class=\"2xx\"} 1\n"), "{text}");
        assert!(text.contains("portico_plugin_request_duration_seconds_count{plugin=\"hello\"} 2\n"), "{text}");
        assert!(
            text.contains("portico_plugin_request_duration_seconds_bucket{le=\"+Inf\",plugin=\"hello\"} 2\n")
                || text.contains("portico_plugin_request_duration_seconds_bucket{plugin=\"hello\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("portico_reload_last_success_timestamp_seconds "), "{text}");
        assert!(text.contains("portico_requests_total 0\n"), "{text}");
        assert!(text.contains("portico_responses_total{class=\"4xx\"} 0\n"), "{text}");
        assert!(text.contains("# TYPE portico_static_responses counter\n"), "{text}");
        assert!(text.contains("portico_app_max_concurrency{app=\"/api\"} 3\n"), "{text}");
        assert!(text.contains("portico_app_timeouts_total{app=\"/api\"} 0\n"), "{text}");
        assert!(!text.contains("portico_uptime"), "process_start_time_seconds says it: {text}");
        // Label values are escaped by the encoder.
        let text = render(snapshot_with("a\"b"));
        assert!(text.contains("plugin=\"a\\\"b\""), "{text}");
    }
}
