//! Request target → SCRIPT_NAME / PATH_INFO: never panics; a plugin route's SCRIPT_NAME is
//! `/NAME.py` with a plain NAME; PATH_INFO is empty or starts with `/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::routing::{Split, split_path};

fuzz_target!(|data: &[u8]| {
    if let Ok(Split::NamePy { name, script_name, path_info }) = split_path(data) {
        assert_eq!(script_name, format!("/{name}.py"));
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        assert!(path_info.is_empty() || path_info[0] == b'/' || !data.starts_with(b"/"));
    }
});
