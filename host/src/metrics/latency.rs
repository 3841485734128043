//! The latency histogram's shape: its buckets' bounds (in seconds, and in nanoseconds for the
//! request path) and the quantile estimate over a set of bucket counts, shared by the live
//! counters ([`super::counters`]) and their history ([`super::history`]).

/// Upper bounds of the latency histogram's buckets, in seconds (a value `v` falls in the first
/// bucket with `v <= bound`; past the last, in `+Inf`). 25 µs to 10 s, 1-2.5-5 steps.
pub const LATENCY_BOUNDS: [f64; 19] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 25.0,
];

/// [`LATENCY_BOUNDS`] in nanoseconds, for the hot path (integer compares).
pub(super) const BOUNDS_NS: [u64; 19] = [
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    25_000_000_000,
];

/// Buckets in the histogram: one per bound, plus `+Inf`.
pub const BUCKETS: usize = LATENCY_BOUNDS.len() + 1;

/// The `q`-quantile (0..=1) of the latencies counted in `buckets` (one count per bucket of
/// [`LATENCY_BOUNDS`], then `+Inf`), in seconds, estimated as Prometheus's
/// `histogram_quantile` does: linear interpolation inside the bucket it falls in (from 0 for
/// the first bucket). In the `+Inf` bucket it is the largest finite bound. `None` when the
/// buckets are empty.
pub fn quantile_seconds(buckets: &[u64], q: f64) -> Option<f64> {
    let requests: u64 = buckets.iter().sum();
    if requests == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * requests as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&upper) = LATENCY_BOUNDS.get(i) else { return LATENCY_BOUNDS.last().copied() };
            let lower = if i == 0 { 0.0 } else { LATENCY_BOUNDS[i - 1] };
            let into = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * into);
        }
        below += n;
    }
    LATENCY_BOUNDS.last().copied()
}
