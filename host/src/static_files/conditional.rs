//! Validators and conditional requests (RFC 9110 §8.8 and §13).
//!
//! The entity tag of a file is strong and made of its modification time, to the nanosecond,
//! and its size in bytes: `"<mtime seconds hex>.<mtime nanoseconds hex>-<size hex>"` (a
//! precompressed variant appends `-br` or `-gz`). A rewrite within the same second at the same
//! size still changes it on file systems that keep nanoseconds (ext4, xfs, btrfs, tmpfs). The
//! inode is deliberately left out: servers behind a load balancer that deploy the same files
//! with the same mtimes then agree on the tag (Apache dropped the inode from its default
//! `FileETag` for this reason).
//!
//! [`evaluate`] applies the preconditions in the order of RFC 9110 §13.2.2; [`if_range`]
//! decides whether a `Range` applies (§13.1.5).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The outcome of evaluating the preconditions of a GET or HEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Serve the representation (or the requested range of it).
    Proceed,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

/// The conditional fields of a request, as received (list fields with several lines joined
/// by `, `, as RFC 9110 §5.3 allows).
#[derive(Debug, Default, Clone, Copy)]
pub struct Conditions<'a> {
    /// `If-Match`.
    pub if_match: Option<&'a [u8]>,
    /// `If-None-Match`.
    pub if_none_match: Option<&'a [u8]>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<&'a [u8]>,
    /// `If-Unmodified-Since`.
    pub if_unmodified_since: Option<&'a [u8]>,
}

/// A file's entity tag (with its quotes) from its mtime and size.
pub fn etag(mtime_secs: i64, mtime_nanos: i64, len: u64, suffix: &str) -> String {
    format!("\"{mtime_secs:x}.{mtime_nanos:x}-{len:x}{suffix}\"")
}

/// Last second an IMF-fixdate can show (9999-12-31T23:59:59Z).
const LAST_HTTP_SECOND: u64 = 253_402_300_799;

/// The mtime as `Last-Modified` uses it: whole seconds (HTTP dates have no fraction),
/// clamped to what an HTTP date can express (1970 to 9999): a file stamped before 1970 says
/// 1970-01-01, which is what it would compare as anyway.
pub fn last_modified(mtime_secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(mtime_secs).unwrap_or(0).min(LAST_HTTP_SECOND))
}

/// Evaluates the preconditions of a GET or HEAD against a representation with entity tag
/// `etag` (quoted, strong) and modification time `modified` (whole seconds), in RFC 9110
/// §13.2.2's order: If-Match, else If-Unmodified-Since (→ 412); then If-None-Match, else
/// If-Modified-Since (→ 304). An unparsable date is ignored (§13.1.3, §13.1.4).
pub fn evaluate(c: &Conditions<'_>, etag: &str, modified: SystemTime) -> Precondition {
    if let Some(v) = c.if_match {
        if !list_matches(v, etag, false) {
            return Precondition::Failed;
        }
    } else if let Some(since) = c.if_unmodified_since.and_then(date)
        && modified > since
    {
        return Precondition::Failed;
    }
    if let Some(v) = c.if_none_match {
        if list_matches(v, etag, true) {
            return Precondition::NotModified;
        }
    } else if let Some(since) = c.if_modified_since.and_then(date)
        && modified <= since
    {
        return Precondition::NotModified;
    }
    Precondition::Proceed
}

/// Whether a `Range` applies given an `If-Range` value (RFC 9110 §13.1.5): an entity tag must
/// match strongly (a weak tag never does); a date must equal `Last-Modified` exactly. An
/// unparsable value means "send the whole representation".
pub fn if_range(value: &[u8], etag: &str, modified: SystemTime) -> bool {
    let value = trim(value);
    if value.starts_with(b"\"") || value.starts_with(b"W/") {
        return matches!(entity_tag(value), Some((false, tag, [])) if tag == etag.as_bytes());
    }
    date(value) == Some(modified)
}

/// Whether the list field `value` (`*` or entity tags) matches `etag`: weak comparison for
/// If-None-Match, strong for If-Match (RFC 9110 §8.8.3.2). Malformed members match nothing.
fn list_matches(value: &[u8], etag: &str, weak: bool) -> bool {
    let value = trim(value);
    if value == b"*" {
        return true;
    }
    let mut rest = value;
    while !rest.is_empty() {
        let Some((is_weak, tag, after)) = entity_tag(rest) else { return false };
        if tag == etag.as_bytes() && (weak || !is_weak) {
            return true;
        }
        // OWS "," OWS before the next member; empty members are allowed (§5.6.1).
        let after = trim(after);
        match after.split_first() {
            None => break,
            Some((b',', more)) => rest = trim_commas(more),
            Some(_) => return false,
        }
    }
    false
}

/// Parses one `entity-tag` at the start of `s` (`[W/] DQUOTE *etagc DQUOTE`, RFC 9110 §8.8.3):
/// `(weak, quoted tag, rest)`.
fn entity_tag(s: &[u8]) -> Option<(bool, &[u8], &[u8])> {
    let (weak, s) = match s.strip_prefix(b"W/") {
        Some(r) => (true, r),
        None => (false, s),
    };
    if s.first() != Some(&b'"') {
        return None;
    }
    let end = 1 + s[1..].iter().position(|&b| b == b'"')?;
    let opaque = &s[1..end];
    // etagc = %x21 / %x23-7E / obs-text
    if !opaque.iter().all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80) {
        return None;
    }
    Some((weak, &s[..=end], &s[end + 1..]))
}

fn date(v: &[u8]) -> Option<SystemTime> {
    httpdate::parse_http_date(std::str::from_utf8(trim(v)).ok()?).ok()
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

fn trim_commas(mut v: &[u8]) -> &[u8] {
    loop {
        v = trim(v);
        match v.split_first() {
            Some((b',', more)) => v = more,
            _ => return v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &str = "\"5f.1a-400\"";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn precedence_follows_rfc_9110_13_2_2() {
        let m = at(1_000_000);
        let later = httpdate::fmt_http_date(at(2_000_000));
        let earlier = httpdate::fmt_http_date(at(10));
        let c = |im: Option<&'static str>, inm: Option<&'static str>, ims: Option<&str>, ius: Option<&str>| {
            let ims = ims.map(|s| s.as_bytes().to_vec());
            let ius = ius.map(|s| s.as_bytes().to_vec());
            let conds = Conditions {
                if_match: im.map(str::as_bytes),
                if_none_match: inm.map(str::as_bytes),
                if_modified_since: ims.as_deref(),
                if_unmodified_since: ius.as_deref(),
            };
            evaluate(&conds, TAG, m)
        };
        assert_eq!(c(None, None, None, None), Precondition::Proceed);
        assert_eq!(c(Some("\"other\""), None, None, None), Precondition::Failed);
        assert_eq!(c(Some("W/\"5f.1a-400\""), None, None, None), Precondition::Failed, "If-Match is strong");
        assert_eq!(c(Some("*"), None, None, None), Precondition::Proceed);
        assert_eq!(c(Some("\"x\", \"5f.1a-400\""), None, None, None), Precondition::Proceed);
        assert_eq!(c(None, None, None, Some(&earlier)), Precondition::Failed);
        assert_eq!(c(Some(TAG), None, None, Some(&earlier)), Precondition::Proceed, "If-Match wins");
        assert_eq!(c(None, Some("W/\"5f.1a-400\""), None, None), Precondition::NotModified, "weak match");
        assert_eq!(c(None, Some("\"a\",, \"5f.1a-400\""), None, None), Precondition::NotModified);
        assert_eq!(c(None, Some("*"), None, None), Precondition::NotModified);
        assert_eq!(c(None, None, Some(&later), None), Precondition::NotModified);
        assert_eq!(c(None, None, Some(&earlier), None), Precondition::Proceed);
        assert_eq!(c(None, Some("\"other\""), Some(&later), None), Precondition::Proceed, "INM wins over IMS");
        assert_eq!(c(None, None, Some("yesterday"), None), Precondition::Proceed, "bad date ignored");
        assert_eq!(c(None, Some("garbage"), None, None), Precondition::Proceed);
    }

    #[test]
    fn last_modified_stays_within_what_an_http_date_shows() {
        assert_eq!(last_modified(-86_400), UNIX_EPOCH);
        assert_eq!(httpdate::fmt_http_date(last_modified(i64::MAX)), "Fri, 31 Dec 9999 23:59:59 GMT");
        assert_eq!(last_modified(1_000), at(1_000));
    }

    #[test]
    fn if_range_is_strong_or_an_exact_date() {
        let m = at(1_000_000);
        assert!(if_range(TAG.as_bytes(), TAG, m));
        assert!(!if_range(b"W/\"5f.1a-400\"", TAG, m));
        assert!(!if_range(b"\"other\"", TAG, m));
        assert!(if_range(httpdate::fmt_http_date(m).as_bytes(), TAG, m));
        assert!(!if_range(httpdate::fmt_http_date(at(5)).as_bytes(), TAG, m));
        assert!(!if_range(b"nonsense", TAG, m));
    }
}
