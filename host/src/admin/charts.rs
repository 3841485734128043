//! The status page's charts: per application, requests/s, 5xx/s and p99 latency over the
//! samples kept ([`crate::metrics::history`]), each an inline SVG sparkline — a polyline in a
//! fixed box, newest point at the right edge, no script and no external asset. A person reads
//! "is it getting worse?" from the shape; the last value and the maximum are written beside it.

use std::fmt::Write as _;

use crate::escape::html as escape;
use crate::metrics::history::{POINTS, Point, Series};

/// A sparkline's box, in CSS pixels.
const WIDTH: f64 = 180.0;
const HEIGHT: f64 = 32.0;
/// Room left above and below the line so a stroke at 0 or at the maximum shows whole.
const PAD: f64 = 2.0;

/// One chart: `values` (oldest first; `None`: no value in that interval) as a polyline, the
/// last point at the right edge and one slot per interval of the window.
fn sparkline(values: &[Option<f64>], label: &str, class: &str) -> String {
    let max = values.iter().flatten().fold(0.0f64, |m, v| m.max(*v));
    let step = WIDTH / (POINTS.max(2) - 1) as f64;
    let first_slot = POINTS.saturating_sub(values.len());
    let y = |v: f64| HEIGHT - PAD - if max > 0.0 { v / max * (HEIGHT - 2.0 * PAD) } else { 0.0 };
    // A gap (an interval without a value) ends one polyline; the next value starts another.
    let mut lines: Vec<Vec<String>> = vec![Vec::new()];
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => {
                let x = (first_slot + i) as f64 * step;
                if let Some(line) = lines.last_mut() {
                    line.push(format!("{x:.1},{:.1}", y(*v)));
                }
            }
            None if lines.last().is_some_and(|l| !l.is_empty()) => lines.push(Vec::new()),
            None => {}
        }
    }
    let mut svg = format!(
        "<svg class=\"spark {class}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         role=\"img\" aria-label=\"{label}\"><title>{label}</title>"
    );
    for line in lines.iter().filter(|l| !l.is_empty()) {
        // One point alone draws nothing as a polyline: a dot instead.
        if let [only] = line.as_slice() {
            let (x, y) = only.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(svg, "<circle cx=\"{x}\" cy=\"{y}\" r=\"1.5\"/>");
        } else {
            let _ = write!(svg, "<polyline points=\"{}\"/>", line.join(" "));
        }
    }
    svg.push_str("</svg>");
    svg
}

/// A number for a person: `1234`, `12.3`, `0.05`.
fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A cell: the sparkline, then `last (max M)`.
fn cell(points: &[Point], name: &str, what: &str, unit: &str, class: &str, value: fn(&Point) -> Option<f64>) -> String {
    let values: Vec<Option<f64>> = points.iter().map(value).collect();
    let last = values.last().copied().flatten();
    let max = values.iter().flatten().fold(None, |m: Option<f64>, v| Some(m.map_or(*v, |m| m.max(*v))));
    let label = escape(&format!(
        "{name}: {what}, last {}{unit}, max {}{unit}",
        last.map_or("–".into(), short),
        max.map_or("–".into(), short)
    ));
    format!(
        "<td>{}</td><td class=\"n\">{}{unit}<br><span class=\"muted\">max {}{unit}</span></td>",
        sparkline(&values, &label, class),
        last.map_or("–".into(), short),
        max.map_or("–".into(), short)
    )
}

/// The charts section: a row per application that answered anything in the window (others
/// would be flat lines).
pub fn render(h: &mut String, history: &[Series]) {
    let span = history
        .iter()
        .filter_map(|s| Some(s.points.last()?.at_unix - s.points.first()?.at_unix))
        .fold(0.0f64, f64::max);
    let span = if span < 120.0 { format!("{} s", short(span)) } else { format!("{} min", short(span / 60.0)) };
    let _ = writeln!(
        h,
        "<h2>Recent traffic</h2>\n<p class=\"meta\">per application, one point per interval, newest at the right; \
         the last {span}</p>"
    );
    h.push_str(
        "<table id=\"charts\"><thead><tr><th>application</th><th colspan=\"2\">requests/s</th>\
         <th colspan=\"2\">5xx/s</th><th colspan=\"2\">p99</th></tr></thead><tbody>\n",
    );
    let active: Vec<&Series> =
        history.iter().filter(|s| s.points.iter().any(|p| p.requests_per_second > 0.0)).collect();
    if active.is_empty() {
        let why = if history.iter().all(|s| s.points.is_empty()) {
            "collecting: the first point comes one interval after the start"
        } else {
            "no application answered a request in this window"
        };
        let _ = writeln!(h, "<tr><td colspan=\"7\" class=\"muted\">{why}</td></tr>");
    }
    for s in active {
        let name = escape(&s.name);
        let _ = writeln!(
            h,
            "<tr id=\"chart-{name}\"><td class=\"name\">{name}</td>{}{}{}</tr>",
            cell(&s.points, &s.name, "requests/s", "", "rps", |p| Some(p.requests_per_second)),
            cell(&s.points, &s.name, "5xx/s", "", "errors", |p| Some(p.errors_per_second)),
            cell(&s.points, &s.name, "p99 latency", " ms", "p99", |p| p.p99_seconds.map(|s| s * 1000.0)),
        );
    }
    h.push_str("</tbody></table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(i: usize, rps: f64, errors: f64, p99: Option<f64>) -> Point {
        Point {
            at_unix: 1000.0 + 10.0 * i as f64,
            requests_per_second: rps,
            errors_per_second: errors,
            p99_seconds: p99,
        }
    }

    #[test]
    fn a_row_per_active_application_with_three_sparklines() {
        let points = vec![point(0, 10.0, 0.0, Some(0.001)), point(1, 20.0, 1.0, None), point(2, 5.0, 0.0, Some(0.002))];
        let idle = Series { name: "ctime".into(), points: vec![point(0, 0.0, 0.0, None)] };
        let busy = Series { name: "<hello>".into(), points };
        let mut h = String::new();
        render(&mut h, &[busy, idle]);
        assert_eq!(h.matches("<svg class=\"spark").count(), 3, "{h}");
        assert!(!h.contains("chart-ctime"), "an idle application has no row: {h}");
        assert!(h.contains("id=\"chart-&lt;hello&gt;\""), "names are escaped: {h}");
        // requests/s 10, 20, 5: the newest point sits at the right edge, 20 at the top.
        assert!(h.contains("180.0,23.0\"/>"), "5 of 20: 32 - 2 - 28 / 4: {h}");
        assert!(h.contains(",2.0 "), "the maximum at the top: {h}");
        assert!(h.contains("max 20.0"), "{h}");
        // p99 has a gap: two pieces, a dot and a dot.
        assert_eq!(h.matches("<circle").count(), 2, "{h}");
        assert!(h.contains("the last 20.0 s"), "{h}");
        assert!(h.contains("max 2.0 ms"), "{h}");
    }

    #[test]
    fn nothing_yet_says_so() {
        let mut h = String::new();
        render(&mut h, &[]);
        assert!(h.contains("collecting"), "{h}");
    }
}
