//! The Python objects one request hands its application (PEP 3333): `start_response` and the
//! `write` callable it returns, `wsgi.input`, `wsgi.errors`, and `wsgi.file_wrapper`.
//!
//! Each borrows what the host lent for the `application` call through a [`Link`], which
//! [`Link::end`] empties before the call returns: an application that stashes one of these
//! objects and uses it later gets a Python exception, never a dangling pointer.
//!
//! Locking rule (pyo3's FAQ): a `Mutex` here is never held while waiting for the GIL. The
//! host's input may block on the network, so it is read with the GIL released, and the
//! link's lock is taken and dropped inside that detached section.

use std::sync::{Arc, Mutex, MutexGuard};

use abi_stable::sabi_types::RMut;
use abi_stable::std_types::{RResult, RStr};
use portico_api::abi::{Environ, ErrorStream_TO, Input_TO};
use pyo3::exceptions::{PyAssertionError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

/// A part of the host's environ (its input, its error stream), lent for one call.
struct Lent<T>(*mut T);

// SAFETY: the pointer is only dereferenced under the `Link`'s mutex that holds it (one thread
// at a time), only on the thread the host called the plugin on (checked against
// `Link::thread`: the host's input and error stream are not `Send`), and only while the
// host's `application` call that lent it is running (the call empties the link before it
// returns, also when it panics: see `call::serve`). The two parts are disjoint fields, so
// the input and the error stream never alias.
unsafe impl<T> Send for Lent<T> {}

/// What the host lent, and the request's response state, shared by its Python objects.
pub struct Link {
    /// The thread the host called the plugin on: the only one that may use what it lent.
    thread: std::thread::ThreadId,
    input_env: Mutex<Option<Lent<Input_TO<'static, RMut<'static, ()>>>>>,
    errors_env: Mutex<Option<Lent<ErrorStream_TO<'static, RMut<'static, ()>>>>>,
    input: Mutex<InputState>,
    errors_line: Mutex<String>,
    /// The response so far.
    pub reply: Mutex<Reply>,
}

#[derive(Default)]
struct InputState {
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
}

/// `start_response`'s state and what `write()` was given.
#[derive(Default)]
pub struct Reply {
    /// The status line (`"200 OK"`), once `start_response` was called.
    pub status: Option<String>,
    /// Header fields, ISO-8859-1 bytes, validated.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The head went to the host: `exc_info` now re-raises.
    pub head_sent: bool,
    /// Bytes given to `write()` not yet handed on.
    pub pending: Vec<u8>,
    /// The request is over: every callable raises.
    pub ended: bool,
}

impl Link {
    /// A link for one request, lending nothing yet.
    pub fn new() -> Arc<Link> {
        Arc::new(Link {
            thread: std::thread::current().id(),
            input_env: Mutex::new(None),
            errors_env: Mutex::new(None),
            input: Mutex::new(InputState::default()),
            errors_line: Mutex::new(String::new()),
            reply: Mutex::new(Reply::default()),
        })
    }

    /// Lends the host's input and error stream to the request's objects until
    /// [`Link::end_call`]. The caller must not use `environ` again before then.
    pub fn lend(&self, environ: &mut Environ<'_>) {
        let input: *mut Input_TO<'_, RMut<'_, ()>> = &mut environ.input;
        let errors: *mut ErrorStream_TO<'_, RMut<'_, ()>> = &mut environ.errors;
        *lock(&self.input_env) = Some(Lent(input.cast()));
        *lock(&self.errors_env) = Some(Lent(errors.cast()));
    }

    /// The reply, locked (never across a GIL release).
    pub fn reply(&self) -> MutexGuard<'_, Reply> {
        lock(&self.reply)
    }

    /// Ends the loan: flushes `wsgi.errors` and forgets what the host lent. Called before
    /// the `application` call returns (idempotent).
    pub fn end_call(&self) {
        self.flush_errors();
        *lock(&self.input_env) = None;
        *lock(&self.errors_env) = None;
    }

    /// Ends the request: every callable raises from now on.
    pub fn end(&self) {
        self.reply().ended = true;
        self.end_call();
    }

    fn on_host_thread(&self) -> bool {
        std::thread::current().id() == self.thread
    }

    /// One message into the host's error log (the process's stderr once the call is over, or
    /// from a thread of the application's own).
    pub fn log(&self, msg: &str) {
        let errors = lock(&self.errors_env);
        match errors.as_ref().filter(|_| self.on_host_thread()) {
            // SAFETY: see `Lent`: the call that lent it is running, on this thread, and the
            // lock is held.
            Some(p) => unsafe { (*p.0).write(RStr::from_str(msg)) },
            None => {
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr(), "wsgi: {}", msg.escape_debug());
            }
        }
    }

    fn flush_errors(&self) {
        let rest = std::mem::take(&mut *lock(&self.errors_line));
        if !rest.is_empty() {
            self.log(&rest);
        }
    }

    /// Up to `want` more body bytes (`None`: to the end), or up to and including the next
    /// `\n` when `line`; read with the GIL released.
    fn read(&self, py: Python<'_>, want: Option<usize>, line: bool) -> PyResult<Vec<u8>> {
        py.detach(|| {
            let mut st = lock(&self.input);
            let mut out = Vec::new();
            loop {
                let avail = &st.buf[st.pos..];
                let limit = want.map_or(avail.len(), |w| avail.len().min(w - out.len()));
                let take =
                    if line { avail[..limit].iter().position(|&b| b == b'\n').map_or(limit, |i| i + 1) } else { limit };
                out.extend_from_slice(&avail[..take]);
                st.pos += take;
                let done_line = line && out.last() == Some(&b'\n');
                if done_line || want.is_some_and(|w| out.len() >= w) || st.eof {
                    return Ok(out);
                }
                if st.pos == st.buf.len() {
                    st.buf.clear();
                    st.pos = 0;
                    let input = lock(&self.input_env);
                    let Some(p) = input.as_ref() else {
                        return Err(PyValueError::new_err("wsgi.input used after the request's call returned"));
                    };
                    if !self.on_host_thread() {
                        return Err(PyRuntimeError::new_err("wsgi.input read from a thread other than the request's"));
                    }
                    st.buf.resize(64 * 1024, 0);
                    // SAFETY: see `Lent`: the call that lent it is running, on this thread,
                    // and the lock is held.
                    let read = unsafe { (*p.0).read((&mut st.buf[..]).into()) };
                    match read {
                        RResult::ROk(n) => {
                            st.buf.truncate(n);
                            st.eof = n == 0;
                        }
                        RResult::RErr(e) => {
                            st.buf.clear();
                            return Err(PyRuntimeError::new_err(format!("reading the request body: {e}")));
                        }
                    }
                }
            }
        })
    }
}

/// PEP 3333's `start_response(status, response_headers, exc_info=None)`.
#[pyclass(frozen, module = "portico")]
pub struct StartResponse {
    link: Arc<Link>,
}

impl StartResponse {
    /// `start_response` for the request behind `link`.
    pub fn new(link: Arc<Link>) -> StartResponse {
        StartResponse { link }
    }
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn __call__(
        &self,
        py: Python<'_>,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
        exc_info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Write>> {
        let exc_info = exc_info.filter(|e| !e.is_none());
        let (ended, head_sent, started) = {
            let reply = self.link.reply();
            (reply.ended, reply.head_sent, reply.status.is_some())
        };
        if ended {
            return Err(PyRuntimeError::new_err("start_response called after the request ended"));
        }
        match exc_info {
            // PEP 3333: with exc_info after the head is sent, re-raise it.
            Some(exc) if head_sent => return Err(PyErr::from_value(exc.get_item(1)?)),
            None if started => {
                return Err(PyAssertionError::new_err("start_response called a second time without exc_info"));
            }
            _ => {}
        }
        let status = status_line(status)?;
        let headers = fields(headers)?;
        let mut reply = self.link.reply();
        reply.status = Some(status);
        reply.headers = headers;
        if exc_info.is_some() {
            // The error response replaces what write() gave for the first one.
            reply.pending.clear();
        }
        drop(reply);
        Py::new(py, Write { link: Arc::clone(&self.link) })
    }
}

/// The `write(data)` callable `start_response` returns (PEP 3333's imperative output).
#[pyclass(frozen, module = "portico")]
pub struct Write {
    link: Arc<Link>,
}

#[pymethods]
impl Write {
    fn __call__(&self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let bytes = data
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err(format!("write() takes bytes, not {}", type_name(data))))?;
        let mut reply = self.link.reply();
        if reply.ended {
            return Err(PyRuntimeError::new_err("write() called after the request ended"));
        }
        if reply.status.is_none() {
            return Err(PyAssertionError::new_err("write() called before start_response"));
        }
        reply.pending.extend_from_slice(bytes.as_bytes());
        Ok(())
    }
}

/// `wsgi.input`: the request body (PEP 3333 §"Input and Error Streams"), read from the host
/// in 64 KiB blocks.
#[pyclass(frozen, module = "portico")]
pub struct Input {
    link: Arc<Link>,
}

impl Input {
    /// `wsgi.input` for the request behind `link`.
    pub fn new(link: Arc<Link>) -> Input {
        Input { link }
    }
}

/// A mutex's guard, poisoned or not (the state stays usable: each critical section leaves it
/// consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn size_arg(size: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
    match size {
        None => Ok(None),
        Some(s) if s.is_none() => Ok(None),
        Some(s) => {
            let n: i64 = s.extract()?;
            Ok(usize::try_from(n).ok())
        }
    }
}

#[pymethods]
impl Input {
    /// `read(size=-1)`: up to `size` bytes (all of the rest when negative or absent).
    #[pyo3(signature = (size=None))]
    fn read<'py>(&self, py: Python<'py>, size: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.link.read(py, size_arg(size)?, false)?;
        Ok(PyBytes::new(py, &data))
    }

    /// `readline(size=-1)`: up to and including the next `\n`, at most `size` bytes.
    #[pyo3(signature = (size=None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.link.read(py, size_arg(size)?, true)?;
        Ok(PyBytes::new(py, &data))
    }

    /// `readlines(hint=-1)`: the remaining lines (stopping once `hint` bytes were read).
    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyList>> {
        let hint = size_arg(hint)?;
        let lines = PyList::empty(py);
        let mut total = 0;
        loop {
            let line = self.link.read(py, None, true)?;
            if line.is_empty() {
                return Ok(lines);
            }
            total += line.len();
            lines.append(PyBytes::new(py, &line))?;
            if hint.is_some_and(|h| h > 0 && total >= h) {
                return Ok(lines);
            }
        }
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.link.read(py, None, true)?;
        Ok((!line.is_empty()).then(|| PyBytes::new(py, &line)))
    }
}

/// `wsgi.errors`: text into the host's error log, one log line per line written.
#[pyclass(frozen, module = "portico")]
pub struct Errors {
    link: Arc<Link>,
}

impl Errors {
    /// `wsgi.errors` for the request behind `link`.
    pub fn new(link: Arc<Link>) -> Errors {
        Errors { link }
    }
}

#[pymethods]
impl Errors {
    fn write(&self, text: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.link.reply().ended {
            return Err(PyValueError::new_err("wsgi.errors used after its request ended"));
        }
        let text = text
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err(format!("wsgi.errors.write() takes str, not {}", type_name(text))))?;
        let text = text.to_cow()?;
        let mut line = lock(&self.link.errors_line);
        line.push_str(&text);
        while let Some(i) = line.find('\n') {
            let one: String = line.drain(..=i).collect();
            drop(line);
            self.link.log(one.trim_end_matches('\n'));
            line = lock(&self.link.errors_line);
        }
        Ok(())
    }

    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for line in lines.try_iter()? {
            self.write(&line?)?;
        }
        Ok(())
    }

    fn flush(&self) {
        self.link.flush_errors();
    }
}

/// `wsgi.file_wrapper(filelike, block_size=8192)`: returned by the application, a real file
/// is sent by the host with `sendfile(2)`; anything else is iterated in blocks.
#[pyclass(frozen, module = "portico")]
pub struct FileWrapper {
    /// The file-like object.
    pub filelike: Py<PyAny>,
    block_size: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, block_size=8192))]
    fn new(filelike: Py<PyAny>, block_size: usize) -> FileWrapper {
        FileWrapper { filelike, block_size: block_size.max(1) }
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let block = self.filelike.bind(py).call_method1("read", (self.block_size,))?;
        Ok((block.len().unwrap_or(0) > 0).then(|| block.unbind()))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr("close")? {
            f.call_method0("close")?;
        }
        Ok(())
    }
}

/// A status line as PEP 3333 wants it: a `str` of three digits, a space and a reason.
fn status_line(status: &Bound<'_, PyAny>) -> PyResult<String> {
    let s = status
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err(format!("status must be a str, not {}", type_name(status))))?
        .to_cow()?;
    let b = s.as_bytes();
    let ok = b.len() >= 4
        && b[..3].iter().all(u8::is_ascii_digit)
        && s[..3].parse::<u16>().is_ok_and(|code| (200..=599).contains(&code))
        && b[3] == b' '
        && s.chars().all(|c| c == '\t' || (' '..='\u{ff}').contains(&c) && c != '\u{7f}');
    if !ok {
        return Err(PyValueError::new_err(format!("status {s:?} is not \"NNN Reason\" with NNN in 200..=599")));
    }
    Ok(s.into_owned())
}

/// Header fields: `(str, str)` tuples, names tokens (RFC 9110 §5.1), values without CR, LF
/// or NUL and ISO-8859-1 encodable; surrounding whitespace stripped (Django's `Set-Cookie`
/// starts with a space).
fn fields(headers: &Bound<'_, PyAny>) -> PyResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for item in headers.try_iter()? {
        let item = item?;
        let pair = item
            .cast::<PyTuple>()
            .ok()
            .filter(|t| t.len() == 2)
            .ok_or_else(|| PyTypeError::new_err(format!("a header must be a (name, value) tuple, not {item}")))?;
        let text = |o: Bound<'_, PyAny>| -> PyResult<String> {
            Ok(o.cast::<PyString>()
                .map_err(|_| {
                    PyTypeError::new_err(format!("header names and values must be str, not {}", type_name(&o)))
                })?
                .to_cow()?
                .into_owned())
        };
        let (name, value) = (text(pair.get_item(0)?)?, text(pair.get_item(1)?)?);
        let name = name.trim();
        let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(tchar) {
            return Err(PyValueError::new_err(format!("header name {name:?} is not a token")));
        }
        if portico_api::is_hop_by_hop(name) {
            return Err(PyValueError::new_err(format!("{name} is a hop-by-hop field: the server sets it")));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.chars().any(|c| (c < ' ' && c != '\t') || c == '\u{7f}') {
            return Err(PyValueError::new_err(format!(
                "header {name}: value contains CR, LF, NUL or another control character"
            )));
        }
        let latin1: Option<Vec<u8>> = value.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect();
        let value = latin1
            .ok_or_else(|| PyValueError::new_err(format!("header {name}: value is not ISO-8859-1 (PEP 3333)")))?;
        out.push((name.as_bytes().to_vec(), value));
    }
    Ok(out)
}

fn type_name(o: &Bound<'_, PyAny>) -> String {
    o.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}
