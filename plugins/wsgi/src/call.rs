//! One request through a Python application: environ in, `application(environ,
//! start_response)` called, its iterable turned into the host's [`Body`].
//!
//! The head is sent late, as PEP 3333 §"Buffering and Streaming" wants: the iterable is run
//! until it yields its first non-empty chunk (or ends) before the host gets the head, so an
//! application may call `start_response` from inside its iterable (a generator), and may
//! call it again with `exc_info` until then. After that the rest is streamed from a worker
//! thread, one `next()` per chunk; `exc_info` then re-raises and the host closes the
//! connection. A body that is complete by then — the iterable ended, or gave the declared
//! `Content-Length` and then ends — goes out in one buffer. `wsgi.file_wrapper` around a
//! real file goes out with `sendfile(2)`.
//!
//! `close()` of the iterable is always called: when it is exhausted, when it fails, and when
//! the client goes away mid-stream (the host drops the stream).

use std::sync::Arc;

use abi_stable::sabi_types::RMut;
use abi_stable::std_types::{ROption, RSlice, RStr};
use portico_api::Body;
use portico_api::abi::{Environ, Field, StartResponse_TO};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::apps::{Apps, traceback};
use crate::environ::{self, Process};
use crate::interpreter;
use crate::objects::{Errors, FileWrapper, Input, Link, StartResponse};

/// What the application produced before the head was sent.
enum Start {
    /// The body is complete: these bytes.
    Whole(Vec<u8>),
    /// A file to send: (file, offset, length in bytes).
    File(std::fs::File, u64, u64),
    /// The first bytes, then the rest from the iterator; the iterable (for `close()`).
    Stream(Vec<u8>, Py<PyAny>, Py<PyAny>),
}

/// Serves one request with the application `apps` holds for it.
pub fn serve(apps: &Apps, process: Process, environ: &mut Environ<'_>, sr: StartResponse_TO<'_, RMut<'_, ()>>) -> Body {
    interpreter::pin_thread();
    let script = environ.extra("portico.script").map(|v| String::from_utf8_lossy(v).into_owned());
    Python::attach(|py| {
        let link = Link::new();
        // Whatever happens below, a panic included, nothing the host lent outlives this call.
        let _loan = EndCall(Arc::clone(&link));
        let outcome = run(py, apps, process, environ, &link, script.as_deref());
        let outcome = match outcome {
            Ok(start) => Ok(start),
            Err(e) => {
                link.log(&traceback(py, &e));
                Err(())
            }
        };
        respond(&link, sr, outcome)
    })
}

/// Ends the host's loan when dropped ([`Link::end_call`]), on every way out of a call.
struct EndCall(Arc<Link>);

impl Drop for EndCall {
    fn drop(&mut self) {
        self.0.end_call();
    }
}

/// Calls the application and runs its iterable up to the head.
fn run(
    py: Python<'_>,
    apps: &Apps,
    process: Process,
    environ: &mut Environ<'_>,
    link: &Arc<Link>,
    script: Option<&str>,
) -> PyResult<Start> {
    let app = apps.get(py, script).map_err(pyo3::exceptions::PyRuntimeError::new_err)?;
    let input = Bound::new(py, Input::new(Arc::clone(link)))?.into_any();
    let errors = Bound::new(py, Errors::new(Arc::clone(link)))?.into_any();
    let wrapper = py.get_type::<FileWrapper>().into_any();
    let env = environ::build(py, environ, process, input, errors, &wrapper)?;
    // From here on the host's environ is reached only through the link.
    link.lend(environ);
    let start_response = Bound::new(py, StartResponse::new(Arc::clone(link)))?;
    let result = app.bind(py).call1((env, start_response))?;
    match first_chunks(py, link, &result) {
        Ok(Some(start)) => Ok(start),
        Ok(None) => {
            close(&result)?;
            Ok(Start::Whole(std::mem::take(&mut link.reply().pending)))
        }
        Err(e) => {
            let _ = close(&result);
            Err(e)
        }
    }
}

/// Runs `result` until the head may be sent: `None` when it ended (the body is what
/// `write()` collected), else how the body goes on.
fn first_chunks(py: Python<'_>, link: &Arc<Link>, result: &Bound<'_, PyAny>) -> PyResult<Option<Start>> {
    if let Ok(wrapper) = result.cast::<FileWrapper>()
        && let Some((file, offset, len)) = real_file(py, &wrapper.get().filelike)
        && link.reply().status.is_some()
        && link.reply().pending.is_empty()
    {
        let _ = close(result);
        return Ok(Some(Start::File(file, offset, len)));
    }
    // A list or tuple (the common `return [body]`): all of it, no iterator.
    if let Ok(list) = result.cast::<PyList>() {
        for item in list.iter() {
            push(link, &item)?;
        }
        return Ok(None);
    }
    if let Ok(tuple) = result.cast::<PyTuple>() {
        for item in tuple.iter() {
            push(link, &item)?;
        }
        return Ok(None);
    }
    let iter = result.try_iter()?;
    let mut chunks = iter.clone();
    loop {
        match chunks.next() {
            None => return Ok(None),
            Some(item) => {
                let item = item?;
                push(link, &item)?;
                let mut reply = link.reply();
                if reply.pending.is_empty() {
                    continue;
                }
                if reply.status.is_none() {
                    return Err(pyo3::exceptions::PyAssertionError::new_err(
                        "the application yielded body bytes before calling start_response",
                    ));
                }
                // Complete when it gave its whole Content-Length: one more next() to let it
                // end (and run its clean-up) before the head.
                let declared = reply
                    .headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(b"content-length"))
                    .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
                if declared == Some(reply.pending.len()) {
                    drop(reply);
                    match chunks.next() {
                        None => return Ok(None),
                        Some(item) => {
                            push(link, &item?)?;
                            reply = link.reply();
                        }
                    }
                }
                let first = std::mem::take(&mut reply.pending);
                return Ok(Some(Start::Stream(first, iter.into_any().unbind(), result.clone().unbind())));
            }
        }
    }
}

/// Appends one item of the iterable to the reply's pending bytes.
fn push(link: &Link, item: &Bound<'_, PyAny>) -> PyResult<()> {
    let bytes = item.cast::<PyBytes>().map_err(|_| {
        let ty = item.get_type().name().map(|n| n.to_string()).unwrap_or_default();
        pyo3::exceptions::PyTypeError::new_err(format!("the application yielded {ty} instead of bytes"))
    })?;
    link.reply().pending.extend_from_slice(bytes.as_bytes());
    Ok(())
}

/// The open file under `filelike`, from its current position to its end, as a descriptor of
/// our own (`dup`): `None` when it is not a regular file with a `fileno()`.
fn real_file(py: Python<'_>, filelike: &Py<PyAny>) -> Option<(std::fs::File, u64, u64)> {
    let f = filelike.bind(py);
    let fd: i32 = f.call_method0("fileno").ok()?.extract().ok()?;
    let offset: u64 = f.call_method0("tell").ok().and_then(|t| t.extract().ok()).unwrap_or(0);
    // SAFETY: `fd` is open (Python's file object holds it for the duration of this call);
    // `BorrowedFd` only lends it for the `try_clone_to_owned` (dup) below.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let owned = borrowed.try_clone_to_owned().ok()?;
    let file = std::fs::File::from(owned);
    let meta = file.metadata().ok()?;
    if !meta.is_file() || offset > meta.len() {
        return None;
    }
    Some((file, offset, meta.len() - offset))
}

/// Calls `close()` of the iterable if it has one (PEP 3333: always).
fn close(result: &Bound<'_, PyAny>) -> PyResult<()> {
    if result.hasattr(pyo3::intern!(result.py(), "close"))? {
        result.call_method0(pyo3::intern!(result.py(), "close"))?;
    }
    Ok(())
}

/// Sends the head to the host and returns the body; `Err`: a 500.
fn respond(link: &Arc<Link>, mut sr: StartResponse_TO<'_, RMut<'_, ()>>, outcome: Result<Start, ()>) -> Body {
    let head = {
        let mut reply = link.reply();
        reply.head_sent = true;
        match (&outcome, reply.status.clone()) {
            (Ok(_), Some(status)) => Some((status, std::mem::take(&mut reply.headers))),
            _ => None,
        }
    };
    let Some((status, headers)) = head else {
        if outcome.is_ok() {
            link.log("the application returned without calling start_response");
        }
        link.end();
        let fields = [Field::new("Content-Type", "text/plain; charset=utf-8")];
        let _ =
            sr.start_response(RStr::from_str("500 Internal Server Error"), RSlice::from_slice(&fields), ROption::RNone);
        return Body::from("Internal Server Error\n");
    };
    let fields: Vec<Field<'_>> =
        headers.iter().map(|(n, v)| Field { name: RSlice::from_slice(n), value: RSlice::from_slice(v) }).collect();
    if let abi_stable::std_types::RErr(e) =
        sr.start_response(RStr::from_str(&status), RSlice::from_slice(&fields), ROption::RNone)
    {
        link.log(&format!("start_response refused by the server: {e}"));
    }
    match outcome {
        Ok(Start::Whole(bytes)) => {
            link.end();
            Body::from(bytes)
        }
        Ok(Start::File(file, offset, len)) => {
            link.end();
            Body::file_range(file, offset, len)
        }
        Ok(Start::Stream(first, iter, result)) => {
            link.end_call();
            Body::try_stream(Chunks { first: Some(first), iter: Some((iter, result)), link: Arc::clone(link) })
        }
        Err(()) => unreachable!("handled above"),
    }
}

/// The rest of a streamed body: the iterable, pulled one `next()` per chunk on the host's
/// worker threads; dropping it calls `close()`.
struct Chunks {
    first: Option<Vec<u8>>,
    /// The iterator, and the iterable whose `close()` ends it.
    iter: Option<(Py<PyAny>, Py<PyAny>)>,
    link: Arc<Link>,
}

impl Iterator for Chunks {
    type Item = Result<Vec<u8>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        let (iter, _) = self.iter.as_ref()?;
        interpreter::pin_thread();
        let next = Python::attach(|py| -> Result<Option<Vec<u8>>, String> {
            let it = iter.bind(py);
            loop {
                let item = match it.call_method0(pyo3::intern!(py, "__next__")) {
                    Ok(item) => item,
                    Err(e) if e.is_instance_of::<pyo3::exceptions::PyStopIteration>(py) => {
                        let rest = std::mem::take(&mut self.link.reply().pending);
                        return Ok((!rest.is_empty()).then_some(rest));
                    }
                    Err(e) => return Err(traceback(py, &e)),
                };
                push(&self.link, &item).map_err(|e| traceback(py, &e))?;
                let chunk = std::mem::take(&mut self.link.reply().pending);
                if !chunk.is_empty() {
                    return Ok(Some(chunk));
                }
            }
        });
        match next {
            Ok(Some(chunk)) => Some(Ok(chunk)),
            Ok(None) => {
                self.finish();
                None
            }
            Err(e) => {
                self.link.log(&e);
                self.finish();
                Some(Err("the application failed mid-body (traceback above)".into()))
            }
        }
    }
}

impl Chunks {
    /// `close()` and the end of the request, once.
    fn finish(&mut self) {
        let Some((iter, result)) = self.iter.take() else { return };
        interpreter::pin_thread();
        Python::attach(|py| {
            if let Err(e) = close(result.bind(py)) {
                self.link.log(&traceback(py, &e));
            }
            drop((iter, result));
        });
        self.link.end();
    }
}

impl Drop for Chunks {
    fn drop(&mut self) {
        self.finish();
    }
}
