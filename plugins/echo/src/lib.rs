//! `echo`: answers any method with JSON of what the server parsed, exactly the contract of
//! `shared/conformance/README.md` ("The server under test: the echo app"):
//! `{"method", "script_name", "path_info", "query_string", "protocol", "headers", "body_b64"}`.
//!
//! Every string is the received bytes read as ISO-8859-1 (one code point per byte), as
//! PEP 3333's native strings; header names are lower-cased.

use base64::Engine;
use portico_api::{Body, Environ, StartResponse, export_app, status};
use serde_json::{Value, json};

/// Bodies larger than this (bytes) are refused with 413.
const BODY_LIMIT: usize = 64 << 20;

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

fn echo(environ: &mut Environ<'_>, start_response: &mut StartResponse<'_, '_>) -> Body {
    let body = match environ.read_body(BODY_LIMIT) {
        Ok(body) => body,
        Err(e) => {
            environ.log(&e.to_string());
            start_response.start(status::CONTENT_TOO_LARGE, &[("Content-Type", "text/plain")]);
            return Body::from("request body too large\n");
        }
    };
    let headers: Vec<Value> = environ
        .headers
        .iter()
        .map(|f| json!([latin1(f.name.as_slice()).to_ascii_lowercase(), latin1(f.value.as_slice())]))
        .collect();
    let doc = json!({
        "method": environ.method(),
        "script_name": environ.script_name.as_str(),
        "path_info": latin1(environ.path_info.as_slice()),
        "query_string": latin1(environ.query_string.as_slice()),
        "protocol": environ.server_protocol.as_str(),
        "headers": headers,
        "body_b64": base64::engine::general_purpose::STANDARD.encode(&body),
        "remote_addr": environ.remote_addr.as_str(),
        "remote_port": environ.remote_port,
        "server_name": environ.server_name.as_str(),
        "server_port": environ.server_port,
        "url_scheme": environ.url_scheme.as_str(),
        "content_type": latin1(environ.content_type.as_slice()),
        "content_length": environ.content_length.into_option(),
    });
    let mut out = serde_json::to_vec(&doc).unwrap_or_default();
    out.push(b'\n');
    start_response.start(status::OK, &[("Content-Type", "application/json")]);
    Body::from(out)
}

export_app!(name: "echo", version: env!("CARGO_PKG_VERSION"), app: echo, never_blocks: true);
