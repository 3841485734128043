//! The `environ` dictionary of PEP 3333 §"environ Variables", built from the host's
//! [`Environ`] for each request.
//!
//! - Every value is a native `str` decoded as ISO-8859-1 (PEP 3333 §"Unicode Issues"), so
//!   any byte survives: `/caf%C3%A9` arrives as `PATH_INFO = '/cafÃ©'`.
//! - `Content-Type` and `Content-Length` become `CONTENT_TYPE` and `CONTENT_LENGTH`, never
//!   `HTTP_CONTENT_*`. Other fields become `HTTP_*` (upper case, `-` → `_`), repeats joined
//!   with `", "`. Fields whose names contain `_` are dropped: `X_Forwarded_For` would
//!   otherwise become the same key as `X-Forwarded-For` (Gunicorn's anti-spoofing rule).
//! - `portico.raw_headers` keeps the fields as received: a list of `(name, value)` pairs in
//!   order, repeats kept (a server-defined key, as PEP 3333 allows).

use std::collections::HashMap;

use portico_api::abi::Environ;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

/// Facts fixed per process: `wsgi.multithread`, `wsgi.multiprocess`.
#[derive(Debug, Clone, Copy)]
pub struct Process {
    /// More than one thread may call the application at once.
    pub multithread: bool,
    /// More than one process runs it.
    pub multiprocess: bool,
}

/// A `str` of `bytes` decoded as ISO-8859-1.
pub fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
    if bytes.is_ascii() {
        // ASCII is its own ISO-8859-1 and UTF-8: no decoding.
        return PyString::new(py, std::str::from_utf8(bytes).unwrap_or_default());
    }
    let text: String = bytes.iter().map(|&b| char::from(b)).collect();
    PyString::new(py, &text)
}

/// The environ of one request; `wsgi.input`, `wsgi.errors` and `wsgi.file_wrapper` are the
/// caller's objects.
pub fn build<'py>(
    py: Python<'py>,
    env: &Environ<'_>,
    process: Process,
    input: Bound<'py, PyAny>,
    errors: Bound<'py, PyAny>,
    file_wrapper: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item(pyo3::intern!(py, "REQUEST_METHOD"), env.request_method.as_str())?;
    d.set_item(pyo3::intern!(py, "SCRIPT_NAME"), latin1(py, env.script_name.as_str().as_bytes()))?;
    d.set_item(pyo3::intern!(py, "PATH_INFO"), latin1(py, env.path_info.as_slice()))?;
    d.set_item(pyo3::intern!(py, "QUERY_STRING"), latin1(py, env.query_string.as_slice()))?;
    d.set_item(pyo3::intern!(py, "RAW_URI"), latin1(py, env.request_target.as_slice()))?;
    d.set_item(pyo3::intern!(py, "SERVER_PROTOCOL"), env.server_protocol.as_str())?;
    d.set_item(pyo3::intern!(py, "SERVER_NAME"), latin1(py, env.server_name.as_str().as_bytes()))?;
    d.set_item(pyo3::intern!(py, "SERVER_PORT"), env.server_port.to_string())?;
    d.set_item(pyo3::intern!(py, "SERVER_SOFTWARE"), concat!("portico-wsgi/", env!("CARGO_PKG_VERSION")))?;
    d.set_item(pyo3::intern!(py, "REMOTE_ADDR"), env.remote_addr.as_str())?;
    d.set_item(pyo3::intern!(py, "REMOTE_PORT"), env.remote_port.to_string())?;
    if !env.content_type.is_empty() {
        d.set_item(pyo3::intern!(py, "CONTENT_TYPE"), latin1(py, env.content_type.as_slice()))?;
    }
    // The host's length, or the field as sent (the host gives no length for an empty body).
    match env.content_length.into_option() {
        Some(n) => d.set_item(pyo3::intern!(py, "CONTENT_LENGTH"), n.to_string())?,
        None => {
            if let Some(v) = env.header_bytes("content-length") {
                d.set_item(pyo3::intern!(py, "CONTENT_LENGTH"), latin1(py, v))?;
            }
        }
    }
    // HTTP_* with repeats joined in order; the order of first appearance is kept.
    let mut joined: Vec<(String, Vec<u8>)> = Vec::with_capacity(env.headers.len());
    let mut index: HashMap<String, usize> = HashMap::new();
    let raw = PyList::empty(py);
    for f in env.headers.as_slice() {
        let (name, value) = (f.name.as_slice(), f.value.as_slice());
        raw.append(PyTuple::new(py, [latin1(py, name), latin1(py, value)])?)?;
        if name.contains(&b'_') || f.is("content-type") || f.is("content-length") {
            continue;
        }
        let mut key = String::with_capacity(5 + name.len());
        key.push_str("HTTP_");
        key.extend(name.iter().map(|&b| if b == b'-' { '_' } else { char::from(b.to_ascii_uppercase()) }));
        match index.get(&key) {
            Some(&i) => {
                joined[i].1.extend_from_slice(b", ");
                joined[i].1.extend_from_slice(value);
            }
            None => {
                index.insert(key.clone(), joined.len());
                joined.push((key, value.to_vec()));
            }
        }
    }
    for (k, v) in joined {
        d.set_item(k, latin1(py, &v))?;
    }
    for f in env.extra.as_slice() {
        d.set_item(latin1(py, f.name.as_slice()), latin1(py, f.value.as_slice()))?;
    }
    d.set_item(pyo3::intern!(py, "portico.raw_headers"), raw)?;
    d.set_item(pyo3::intern!(py, "wsgi.version"), (1, 0))?;
    d.set_item(pyo3::intern!(py, "wsgi.url_scheme"), env.url_scheme.as_str())?;
    d.set_item(pyo3::intern!(py, "wsgi.input"), input)?;
    d.set_item(pyo3::intern!(py, "wsgi.errors"), errors)?;
    d.set_item(pyo3::intern!(py, "wsgi.multithread"), process.multithread)?;
    d.set_item(pyo3::intern!(py, "wsgi.multiprocess"), process.multiprocess)?;
    d.set_item(pyo3::intern!(py, "wsgi.run_once"), false)?;
    // The host hands over the whole body and signals its end (chunked bodies included).
    d.set_item(pyo3::intern!(py, "wsgi.input_terminated"), true)?;
    d.set_item(pyo3::intern!(py, "wsgi.file_wrapper"), file_wrapper)?;
    Ok(d)
}
