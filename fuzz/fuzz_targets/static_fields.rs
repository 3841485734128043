//! The request fields static serving parses: `Range` (plan), `If-Match` / `If-None-Match` /
//! `If-Range` (entity-tag lists, dates) and `Accept-Encoding` (q-values). Never panics, and:
//! a range plan stays inside the representation; a multipart plan has 2..=MAX_RANGES
//! non-overlapping ranges; the representation's own tag always satisfies If-None-Match
//! (`"tag"`) and If-Range; a coding is picked only if its sibling exists.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use portico::static_files::conditional::{self, Conditions, Precondition};
use portico::static_files::encoding::{self, Coding};
use portico::static_files::ranges::{self, MAX_RANGES, Plan};

fuzz_target!(|data: &[u8]| {
    let (len_bytes, value) = data.split_at(data.len().min(2));
    let len = len_bytes.iter().fold(0u64, |a, &b| a * 256 + u64::from(b));
    match ranges::plan(value, len) {
        Plan::Full | Plan::Unsatisfiable => {}
        Plan::Single(r) => assert!(r.start() <= r.end() && *r.end() < len),
        Plan::Multi(list) => {
            assert!(list.len() >= 2 && list.len() <= MAX_RANGES);
            let mut sorted: Vec<_> = list.iter().map(|r| (*r.start(), *r.end())).collect();
            sorted.sort_unstable();
            assert!(sorted.iter().all(|&(a, b)| a <= b && b < len));
            assert!(sorted.windows(2).all(|w| w[0].1 < w[1].0));
        }
    }
    let tag = "\"5f.1a-400\"";
    let modified = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let conds = Conditions { if_match: Some(value), if_none_match: Some(value), ..Default::default() };
    let _ = conditional::evaluate(&conds, tag, modified);
    let _ = conditional::if_range(value, tag, modified);
    let own = Conditions { if_none_match: Some(tag.as_bytes()), ..Default::default() };
    assert_eq!(conditional::evaluate(&own, tag, modified), Precondition::NotModified);
    assert!(conditional::if_range(tag.as_bytes(), tag, modified));
    let have_br = data.first().is_some_and(|b| b & 1 == 1);
    let have_gz = data.first().is_some_and(|b| b & 2 == 2);
    match encoding::negotiate(Some(value), have_br, have_gz) {
        Some(Coding::Br) => assert!(have_br),
        Some(Coding::Gzip) => assert!(have_gz),
        None => {}
    }
});
