//! Request head parsing: never panics; a complete head's ranges lie inside its buffer; and
//! resumed parsing (the buffer growing across reads, as the I/O loop does) agrees with
//! parsing the whole buffer at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::http::request::{HeadLimits, HeadScan, Parsed, parse, parse_resume};

fuzz_target!(|input: (u16, &[u8])| {
    let (split, data) = input;
    let limits = HeadLimits { request_line: 512, head_bytes: 2048, fields: 16, body: 1 << 20 };
    let whole = parse(data, &limits);
    if let Ok(Parsed::Complete(head, used)) = &whole {
        assert!(*used <= data.len());
        for (n, v) in &head.fields {
            assert!(n.end <= head.buf.len() && v.end <= head.buf.len());
        }
        let _ = portico::routing::route(head, &portico::routing::Table::default(), None);
    }
    // The same bytes in two reads.
    let split = (split as usize).min(data.len());
    let mut scan = HeadScan::default();
    match parse_resume(&data[..split], &mut scan, &limits) {
        // Resuming must give exactly what parsing the whole buffer gives.
        Ok(Parsed::Partial) => match (&whole, parse_resume(data, &mut scan, &limits)) {
            (Ok(Parsed::Partial), Ok(Parsed::Partial)) => {}
            (Ok(Parsed::Complete(_, a)), Ok(Parsed::Complete(_, b))) => assert_eq!(*a, b),
            (Err(a), Err(b)) => assert_eq!(a.status(), b.status()),
            (w, r) => panic!("whole {w:?} but resumed {r:?}"),
        },
        // A head complete in the prefix is the same head in the whole.
        Ok(Parsed::Complete(_, used)) => {
            assert!(matches!(whole, Ok(Parsed::Complete(_, u)) if u == used), "prefix complete, whole {whole:?}")
        }
        // A malformed prefix makes the whole malformed (the status may differ: a later
        // check can fail first on more bytes).
        Err(_) => assert!(whole.is_err(), "prefix refused, whole {whole:?}"),
    }
});
