//! The chunked decoder: never panics, never consumes more than it was given, and gives the
//! same data whether the input arrives whole or split in two.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::http::chunked::ChunkedDecoder;

fuzz_target!(|input: (u16, &[u8])| {
    let (split, data) = input;
    let mut whole = ChunkedDecoder::new(1024);
    let mut out_whole = Vec::new();
    let r_whole = whole.decode(data, &mut out_whole);
    if let Ok(n) = r_whole {
        assert!(n <= data.len());
    }
    let split = (split as usize).min(data.len());
    let mut parts = ChunkedDecoder::new(1024);
    let mut out_parts = Vec::new();
    let r_parts = parts.decode(&data[..split], &mut out_parts).and_then(|a| {
        if parts.is_done() { Ok(a) } else { parts.decode(&data[split..], &mut out_parts).map(|b| a + b) }
    });
    if let (Ok(a), Ok(b)) = (&r_whole, &r_parts) {
        assert_eq!(a, b);
        assert_eq!(out_whole, out_parts);
    }
    assert_eq!(r_whole.is_err(), r_parts.is_err());
});
