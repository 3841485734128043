//! The status page as HTML: one small page, a table per section, numbers right-aligned, no
//! script and no external asset; every text from outside the host (plugin names, versions,
//! errors) is escaped. `?refresh=N` (1–3600 s) reloads it every N s.

use std::fmt::Write as _;

use crate::escape::html as escape;
use crate::metrics::counters::{CLASSES, ReloadOutcome};
use crate::metrics::snapshot::Snapshot;
use crate::settings::AdminPaths;

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
p.meta{margin:0;color:#555}\
svg.spark{display:block;fill:none;stroke-width:1.5;stroke-linejoin:round}svg.spark circle{stroke-width:0}\
svg.rps{stroke:#2563eb}svg.rps circle{fill:#2563eb}svg.errors{stroke:#b00}svg.errors circle{fill:#b00}\
svg.p99{stroke:#7c3aed}svg.p99 circle{fill:#7c3aed}";

/// The status page.
pub fn render(s: &Snapshot, paths: &AdminPaths, refresh: Option<u32>) -> String {
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

    setup(&mut h, s);
    traffic(&mut h, s);
    super::charts::render(&mut h, &s.history);

    h.push_str("<h2>Plugins</h2>\n<table id=\"plugins\"><thead><tr><th>plugin</th><th>version</th>");
    h.push_str("<th class=\"n\" title=\"times loaded: 1 at the start, one more per reload that changed its file or settings\">loads</th><th>loaded at</th><th class=\"n\">requests</th>");
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
            "<tr id=\"plugin-{id}\"><td class=\"name\">{name}{removed}</td><td>{version}</td><td class=\"n\">{loads}</td>\
             <td>{loaded_at}</td><td class=\"n\">{requests}</td><td class=\"n{bad}\">{errors}</td>\
             <td class=\"n\">{in_flight}</td><td class=\"n\">{mean}</td><td class=\"n\">{p99}</td></tr>",
            id = escape(&p.name),
            name = escape(&p.name),
            removed = match (p.loaded, p.on_event_loop) {
                (false, _) => " <span class=\"muted\">(removed)</span>",
                (true, Some(true)) => {
                    " <span class=\"muted\" title=\"it promised never to block: its requests without a body run \
                     on the event loop\">(event loop)</span>"
                }
                (true, _) => "",
            },
            version = p.version.as_deref().map_or_else(dash, escape),
            loads = p.loads.map_or_else(dash, |g| g.to_string()),
            loaded_at = p.loaded_at.as_deref().map_or_else(dash, escape),
            requests = p.requests,
            bad = if p.responses["5xx"] > 0 { " bad" } else { "" },
            errors = p.responses["5xx"],
            in_flight = p.in_flight,
            mean = human_seconds(p.mean_seconds),
            p99 = human_seconds(p.p99_seconds),
        );
    }
    h.push_str("</tbody></table>\n");

    if let Some(tree) = &s.processes {
        processes(&mut h, tree);
    }

    h.push_str("<h2>Applications</h2>\n<table id=\"apps\"><thead><tr><th>application</th>");
    for (name, title) in [
        ("running", "calls running now / at most"),
        ("waiting", "calls waiting for a slot now / at most (then 503)"),
        ("timeout", "deadline of a call (then 504)"),
        ("admitted", "calls admitted"),
        ("504", "calls cut off at their deadline"),
        ("503", "calls refused: queue full, or stopped"),
        ("stuck threads", "threads abandoned past a deadline and still running"),
    ] {
        let _ = write!(h, "<th class=\"n\" title=\"{title}\">{name}</th>");
    }
    h.push_str("<th>state</th></tr></thead><tbody>\n");
    if s.apps.is_empty() {
        h.push_str("<tr><td colspan=\"9\" class=\"muted\">no application can be reached</td></tr>\n");
    }
    for a in &s.apps {
        let c = &a.counts;
        let _ = writeln!(
            h,
            "<tr id=\"app-{id}\"><td class=\"name\">{name}</td><td class=\"n\">{} / {}</td><td class=\"n\">{} / {}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n{}\">{}</td><td class=\"n{}\">{}</td>\
             <td class=\"n{}\">{}</td><td class=\"{}\">{}</td></tr>",
            c.running,
            c.max_concurrency,
            c.waiting,
            c.queue,
            c.timeout_seconds.map_or_else(|| "none".to_owned(), |t| format!("{t} s")),
            c.admitted,
            if c.timeouts > 0 { " bad" } else { "" },
            c.timeouts,
            if c.refused > 0 { " bad" } else { "" },
            c.refused,
            if c.abandoned > 0 { " bad" } else { "" },
            c.abandoned,
            if c.stopped { "bad" } else { "" },
            if c.stopped { "stopped until reloaded" } else { "serving" },
            id = escape(&a.name),
            name = escape(&a.name),
        );
    }
    h.push_str("</tbody></table>\n");

    let c = &s.connections;
    h.push_str("<h2>Connections</h2>\n<table id=\"connections\"><thead><tr>");
    for (name, title) in [
        ("open", "open connections"),
        ("idle", "waiting for a request, nothing received yet"),
        ("reading", "receiving a request head or body"),
        ("processing", "the request is with the application (queued or running)"),
        ("writing", "sending a response"),
        ("paused", "a streamed response paused until its application has more (no worker held)"),
        ("closing", "lingering close"),
    ] {
        let _ = write!(h, "<th class=\"n\" title=\"{title}\">{name}</th>");
    }
    h.push_str("</tr></thead><tbody><tr>");
    for n in [c.open, c.idle, c.reading, c.processing, c.writing, c.paused, c.closing] {
        let _ = write!(h, "<td class=\"n\">{n}</td>");
    }
    h.push_str("</tr></tbody></table>\n");

    let w = &s.workers;
    let _ = writeln!(
        h,
        "<h2>Worker pool</h2>\n<table id=\"workers\"><thead><tr><th class=\"n\">threads</th><th class=\"n\">busy</th>\
         <th class=\"n\">queue depth</th><th class=\"n\" title=\"abandoned past a deadline, replaced, still running\">\
         stuck threads</th></tr></thead><tbody><tr><td class=\"n\">{}</td><td class=\"n\">{}</td>\
         <td class=\"n{}\">{}</td><td class=\"n{}\">{}</td></tr></tbody></table>",
        w.threads,
        w.busy,
        if w.queue_depth > 0 { " bad" } else { "" },
        w.queue_depth,
        if w.abandoned > 0 { " bad" } else { "" },
        w.abandoned
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
    h.push_str("</tr></tbody></table>\n");
    if !s.refused_plugins.is_empty() {
        h.push_str(
            "<h2>Plugins not serving</h2>\n<table id=\"refused\"><thead><tr><th>file: why</th></tr></thead><tbody>",
        );
        for line in &s.refused_plugins {
            let _ = write!(h, "<tr><td class=\"err\">{}</td></tr>", escape(line));
        }
        h.push_str("</tbody></table>\n");
    }
    h.push_str("</body></html>\n");
    h
}

/// What the server runs with: the configuration file, the listeners, the mounts.
fn setup(h: &mut String, s: &Snapshot) {
    let u = &s.setup;
    let config = match (&u.config_file, &u.config_loaded_at) {
        (Some(f), Some(at)) => format!("configuration <code>{}</code> (read {})", escape(f), escape(at)),
        (Some(f), None) => format!("configuration <code>{}</code>", escape(f)),
        _ => "no configuration file (flags and defaults)".to_owned(),
    };
    let listeners: Vec<String> = u.listeners.iter().map(|l| format!("<code>{}</code>", escape(l))).collect();
    let _ = writeln!(
        h,
        "<h2>Server</h2>\n<p class=\"meta\" id=\"setup\">{config} · listening on {}</p>",
        if listeners.is_empty() { "–".to_owned() } else { listeners.join(", ") }
    );
    h.push_str(
        "<table id=\"mounts\"><thead><tr><th>mount</th><th>pipeline (outermost first)</th></tr></thead><tbody>\n",
    );
    if u.mounts.is_empty() {
        h.push_str("<tr><td colspan=\"2\" class=\"muted\">no mounts: /NAME.py runs plugin NAME, the rest is the docroot</td></tr>\n");
    }
    for m in &u.mounts {
        let pipeline: Vec<String> = m.middleware.iter().chain(std::iter::once(&m.app)).map(|n| escape(n)).collect();
        let _ = writeln!(h, "<tr><td class=\"name\">{}</td><td>{}</td></tr>", escape(&m.prefix), pipeline.join(" → "));
    }
    h.push_str("</tbody></table>\n");
}

/// Every request by status class, and the docroot's share.
fn traffic(h: &mut String, s: &Snapshot) {
    let t = &s.traffic;
    h.push_str("<h2>Requests</h2>\n<table id=\"traffic\"><thead><tr><th>answered by</th>");
    for class in CLASSES {
        let _ = write!(h, "<th class=\"n\">{class}</th>");
    }
    h.push_str("</tr></thead><tbody>\n");
    for (id, name, row) in [("all", "everything", &t.responses), ("static", "static files", &t.static_files)] {
        let _ = write!(h, "<tr id=\"traffic-{id}\"><td class=\"name\">{name}</td>");
        for class in CLASSES {
            let n = row.get(class).copied().unwrap_or(0);
            let bad = if class == "5xx" && n > 0 { " bad" } else { "" };
            let _ = write!(h, "<td class=\"n{bad}\">{n}</td>");
        }
        h.push_str("</tr>\n");
    }
    let _ = writeln!(h, "</tbody></table>\n<p class=\"meta\">{} requests answered in all</p>", t.requests);
}

/// The process tree under a master: its record, a row per worker, the latest deaths.
fn processes(h: &mut String, tree: &serde_json::Value) {
    let m = &tree["master"];
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => escape(s),
        serde_json::Value::Null => "–".to_owned(),
        other => escape(&other.to_string()),
    };
    let _ = writeln!(
        h,
        "<h2>Processes</h2>\n<p class=\"meta\" id=\"master\">master {} since {} · generation {} · {} worker(s) \
         wanted · {} started, <span class=\"{}\">{} died</span>, {} replaced gracefully{}</p>",
        text(&m["pid"]),
        text(&m["started_at"]),
        text(&m["generation"]),
        text(&m["target"]),
        text(&m["workers_started"]),
        if m["workers_died"].as_u64().unwrap_or(0) > 0 { "bad" } else { "" },
        text(&m["workers_died"]),
        text(&m["recycled"]),
        match m["crash_streak"].as_u64() {
            Some(n) if n > 1 => format!(
                " · <span class=\"bad\">crash loop: {n} quick deaths, next start in {} s</span>",
                text(&m["next_respawn_delay"])
            ),
            _ => String::new(),
        }
    );
    if let Some(why) = m["last_failed_generation"].as_str() {
        let _ = writeln!(h, "<p class=\"bad\" id=\"failed-generation\">last failed generation: {}</p>", escape(why));
    }
    h.push_str("<table id=\"workers\"><thead><tr><th>pid</th><th class=\"n\">generation</th><th>state</th>");
    h.push_str(
        "<th>started</th><th class=\"n\">requests</th><th class=\"n\">connections</th><th class=\"n\">memory</th>",
    );
    h.push_str("</tr></thead><tbody>\n");
    for w in tree["workers"].as_array().into_iter().flatten() {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td></tr>",
            text(&w["pid"]),
            text(&w["generation"]),
            text(&w["state"]),
            text(&w["started_at"]),
            text(&w["requests"]),
            text(&w["connections"]),
            human_bytes(w["rss_bytes"].as_u64()),
        );
    }
    h.push_str("</tbody></table>\n");
    let deaths = m["deaths"].as_array().map_or(&[][..], Vec::as_slice);
    if !deaths.is_empty() {
        h.push_str("<h3>Workers that died</h3>\n<ul id=\"deaths\">\n");
        for d in deaths.iter().rev() {
            let _ = writeln!(
                h,
                "<li>{}: worker {} (generation {}) {}</li>",
                text(&d["at"]),
                text(&d["pid"]),
                text(&d["generation"]),
                text(&d["cause"])
            );
        }
        h.push_str("</ul>\n");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::counters::Stats;
    use crate::plugin::registry::PluginSet;

    #[test]
    fn html_escapes_what_comes_from_outside() {
        let stats = Stats::new(1, 4, Box::new(|| 0));
        let p = stats.plugin("<script>alert(1)</script>");
        p.record(Duration::from_micros(300), 200);
        p.record(Duration::from_millis(2), 500);
        stats.record_reload(ReloadOutcome::Failed, "0 loaded".into(), Some("bad <b>file</b> & \"quotes\"".into()));
        let s = Snapshot::take(&stats, &PluginSet::new(), Vec::new(), Vec::new());
        let paths = AdminPaths::parse("/_portico/status").unwrap().unwrap();
        let html = render(&s, &paths, Some(5));
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
        assert!(html.contains("bad &lt;b&gt;file&lt;/b&gt; &amp; &quot;quotes&quot;"), "{html}");
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(html.contains("(removed)"), "a plugin with counters but not loaded is marked");
        assert!(html.contains("<td class=\"n bad\">1</td>"), "one 5xx: {html}");
    }
}
