//! Range requests (RFC 9110 §14): which byte ranges to send, and the `multipart/byteranges`
//! framing when there are several.
//!
//! The `Range` field is parsed by the `http-range-header` crate. The policy is ours:
//! - a field that does not parse (another unit, a reversed range, stray characters) is
//!   ignored, and the whole representation is sent (§14.2: a server MAY ignore it);
//! - a valid range set none of whose ranges overlaps the representation → 416 (§15.5.17);
//! - one satisfiable range → 206 with `Content-Range`;
//! - several → 206 `multipart/byteranges` in the order asked, **unless** more than
//!   [`MAX_RANGES`] were asked or any two overlap: then the whole representation, once, with
//!   200. That bounds what one request can make the server send to about the file's size plus
//!   a few hundred bytes of part headers per range, which is the amplification §14.2 warns
//!   about ("bytes=0-,0-,0-,…").

use std::num::NonZeroUsize;
use std::ops::RangeInclusive;

use http_range_header::RangeUnsatisfiableError;

/// Most ranges honoured in one request; more get the whole representation.
pub const MAX_RANGES: usize = 16;

/// What to send for a `Range` request on a representation of a known length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The whole representation (200).
    Full,
    /// One range (206), inclusive byte offsets.
    Single(RangeInclusive<u64>),
    /// Several non-overlapping ranges (206 multipart/byteranges), in the order asked.
    Multi(Vec<RangeInclusive<u64>>),
    /// Nothing satisfiable (416 with `Content-Range: bytes */len`).
    Unsatisfiable,
}

/// Decides what to send for the `Range` field `value` on a representation of `len` bytes.
pub fn plan(value: &[u8], len: u64) -> Plan {
    let Ok(text) = std::str::from_utf8(value) else { return Plan::Full };
    let max = NonZeroUsize::new(MAX_RANGES).unwrap_or(NonZeroUsize::MIN);
    let parsed = match http_range_header::parse_range_header_with_max_ranges(text.trim(), max) {
        Ok(p) => p,
        Err(RangeUnsatisfiableError::Unsatisfiable) => return Plan::Unsatisfiable,
        Err(_) => return Plan::Full,
    };
    let ranges = match parsed.validate(len) {
        Ok(r) => r,
        Err(RangeUnsatisfiableError::Unsatisfiable) => return Plan::Unsatisfiable,
        Err(_) => return Plan::Full,
    };
    match ranges.len() {
        0 => Plan::Full,
        1 => Plan::Single(ranges[0].clone()),
        _ if overlapping(&ranges) => Plan::Full,
        _ => Plan::Multi(ranges),
    }
}

fn overlapping(ranges: &[RangeInclusive<u64>]) -> bool {
    let mut sorted: Vec<_> = ranges.iter().map(|r| (*r.start(), *r.end())).collect();
    sorted.sort_unstable();
    sorted.windows(2).any(|w| w[1].0 <= w[0].1)
}

/// A `multipart/byteranges` boundary: 20 hex digits, distinct per response of this process.
pub fn boundary() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    format!("{:016x}{:04x}", t ^ n.rotate_left(32), n & 0xffff)
}

/// The part header before a range's bytes: a delimiter line (preceded by the CRLF that ends
/// the previous part's bytes, except for the first), `Content-Type`, `Content-Range`, and
/// the empty line (RFC 9110 §14.6, RFC 2046 §5.1.1).
pub fn part_head(boundary: &str, first: bool, content_type: &str, range: &RangeInclusive<u64>, len: u64) -> Vec<u8> {
    let lead = if first { "" } else { "\r\n" };
    format!(
        "{lead}--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: bytes {}-{}/{len}\r\n\r\n",
        range.start(),
        range.end()
    )
    .into_bytes()
}

/// The closing delimiter after the last part's bytes.
pub fn closing(boundary: &str) -> Vec<u8> {
    format!("\r\n--{boundary}--\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        assert_eq!(plan(b"bytes=0-9", 100), Plan::Single(0..=9));
        assert_eq!(plan(b"bytes=-10", 100), Plan::Single(90..=99));
        assert_eq!(plan(b"bytes=-1000", 100), Plan::Single(0..=99));
        assert_eq!(plan(b"bytes=90-", 100), Plan::Single(90..=99));
        assert_eq!(plan(b"bytes=0-999", 100), Plan::Single(0..=99));
        assert_eq!(plan(b"bytes=100-", 100), Plan::Unsatisfiable);
        assert_eq!(plan(b"bytes=110-120", 100), Plan::Unsatisfiable);
        assert_eq!(plan(b"bytes=0-1,5-6", 100), Plan::Multi(vec![0..=1, 5..=6]));
        assert_eq!(plan(b"bytes=0-1,200-300", 100), Plan::Single(0..=1), "unsatisfiable members dropped");
        assert_eq!(plan(b"bytes=0-10,5-15", 100), Plan::Full, "overlap");
        assert_eq!(plan(b"bytes=abc", 100), Plan::Full);
        assert_eq!(plan(b"items=0-5", 100), Plan::Full);
        assert_eq!(plan(b"bytes=5-1", 100), Plan::Full, "reversed: invalid, ignored");
        let many = format!("bytes={}", (0..17).map(|i| format!("{}-{}", i * 2, i * 2)).collect::<Vec<_>>().join(","));
        assert_eq!(plan(many.as_bytes(), 100), Plan::Full, "too many");
        assert_eq!(plan(b"bytes=-5", 0), Plan::Full, "empty file");
    }

    #[test]
    fn boundaries_differ() {
        assert_ne!(boundary(), boundary());
    }
}
