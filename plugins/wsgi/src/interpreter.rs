//! The one CPython interpreter of this process: started once, on a thread of its own that
//! lives as long as the process, never finalized (shared/research/python-bridge.md §2, §5).
//!
//! The recipe, each step of which failed in the research prototype until it was done so:
//! 1. libpython is promoted to `RTLD_GLOBAL` (the host opens plugins `RTLD_LOCAL`, and C
//!    extension modules find `Py*` symbols only in the global scope).
//! 2. The interpreter starts from a PEP 587 `PyConfig` whose `executable` is the venv's
//!    `bin/python` (or the Python the plugin was built with), so `sys.prefix`, the standard
//!    library and site-packages are that environment's whatever `$PATH` says.
//! 3. `install_signal_handlers = 0`: the host owns SIGINT, SIGTERM and SIGHUP.
//! 4. Each host thread that calls Python keeps one thread state for good ([`pin_thread`]):
//!    pyo3's `attach` would otherwise create and destroy one per call (3.4× slower on a hello
//!    world, and `threading.local()` emptied on every request).
//!
//! A second copy of this plugin loaded into the same process (a `--workers 0` reload after
//! the table changed) finds the interpreter running and uses it.

use std::ffi::{CStr, CString};
use std::path::Path;
use std::sync::OnceLock;

use pyo3::ffi;

/// The start's outcome, shared by every later caller in this copy of the plugin.
static STARTED: OnceLock<Result<(), String>> = OnceLock::new();

/// Starts the interpreter for `executable` (a venv's `bin/python`) unless one runs in this
/// process already, with `env` set in the process environment first. `true`: started here,
/// `false`: it was running (check it with [`same_start`]).
///
/// # Errors
/// libpython could not be promoted, or CPython refused the configuration (its message).
pub fn start(executable: &Path, env: &[(String, String)]) -> Result<bool, String> {
    // SAFETY: `Py_IsInitialized` may be called at any time, before or after initialization.
    if unsafe { ffi::Py_IsInitialized() } != 0 {
        return Ok(false);
    }
    STARTED
        .get_or_init(|| {
            let executable = executable.to_owned();
            let env = env.to_vec();
            let (tx, rx) = std::sync::mpsc::channel();
            // The thread that initializes CPython is its main thread for good (signal.signal,
            // threading.main_thread()): one that never ends.
            let spawned = std::thread::Builder::new().name("python-main".into()).spawn(move || {
                let _ = tx.send(promote_libpython().and_then(|_| initialize(&executable, &env)));
                loop {
                    std::thread::park();
                }
            });
            match spawned {
                Ok(_) => rx.recv().unwrap_or_else(|_| Err("the interpreter's thread ended".into())),
                Err(e) => Err(format!("cannot start the interpreter's thread: {e}")),
            }
        })
        .clone()
        .map(|()| true)
}

/// Whether the running interpreter is the one `executable` and `env` would start: the same
/// `sys.executable` and the same values in `os.environ`.
///
/// # Errors
/// What differs: a change of `venv` or `env` needs a new process (a generation reload in the
/// default process model, a restart with `--workers 0`).
pub fn same_start(py: pyo3::Python<'_>, executable: &Path, env: &[(String, String)]) -> Result<(), String> {
    use pyo3::prelude::*;
    let sys = py.import("sys").map_err(|e| e.to_string())?;
    let running: String = sys.getattr("executable").and_then(|e| e.extract()).map_err(|e| e.to_string())?;
    if Path::new(&running) != executable {
        return Err(format!(
            "Python runs from {running} in this process; venv {} takes a new process \
             (a restart, or a SIGHUP with worker processes)",
            executable.display()
        ));
    }
    let environ = py.import("os").and_then(|os| os.getattr("environ")).map_err(|e| e.to_string())?;
    for (k, v) in env {
        let now: Option<String> = environ.call_method1("get", (k,)).and_then(|x| x.extract()).ok().flatten();
        if now.as_deref() != Some(v.as_str()) {
            return Err(format!(
                "env {k} changed; it takes a new process (a restart, or a SIGHUP with worker processes)"
            ));
        }
    }
    Ok(())
}

/// Re-opens the mapped libpython with `RTLD_GLOBAL` (`RTLD_NOLOAD`: no second copy), so C
/// extension modules resolve `Py*` symbols.
fn promote_libpython() -> Result<(), String> {
    // SAFETY: `Dl_info` is plain data, valid when zeroed; `dladdr` fills it for an address
    // inside a mapped object (a libpython function is one), and `dli_fname` then points at a
    // NUL-terminated path owned by the loader. `dlopen` with RTLD_NOLOAD only re-flags an
    // already loaded object; the handle is kept on purpose (libpython is never unloaded).
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(ffi::Py_IsInitialized as *const libc::c_void, &mut info) == 0 || info.dli_fname.is_null() {
            return Err("cannot find the loaded libpython (dladdr)".into());
        }
        let handle = libc::dlopen(info.dli_fname, libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_GLOBAL);
        let path = CStr::from_ptr(info.dli_fname).to_string_lossy().into_owned();
        if handle.is_null() {
            let why = libc::dlerror();
            let why = if why.is_null() { "?".into() } else { CStr::from_ptr(why).to_string_lossy().into_owned() };
            return Err(format!("cannot make {path} global: {why}"));
        }
        Ok(())
    }
}

/// `Py_InitializeFromConfig` with `executable`, then releases the GIL this thread holds.
fn initialize(executable: &Path, env: &[(String, String)]) -> Result<(), String> {
    for (k, v) in env {
        // SAFETY: called before the interpreter starts, on the only thread of this plugin
        // that touches the environment; the host reads no variable after start-up.
        unsafe { std::env::set_var(k, v) };
    }
    let exe = CString::new(executable.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} contains a NUL byte", executable.display()))?;
    // SAFETY: PEP 587's documented sequence on a zeroed `PyConfig`: initialize it, set a
    // field through `PyConfig_SetBytesString` (which copies the string), start from it, clear
    // it. Every status is checked before the next step.
    unsafe {
        let mut config: ffi::PyConfig = std::mem::zeroed();
        ffi::PyConfig_InitPythonConfig(&mut config);
        config.install_signal_handlers = 0;
        let status = ffi::PyConfig_SetBytesString(&mut config, &mut config.executable, exe.as_ptr());
        if ffi::PyStatus_Exception(status) != 0 {
            let why = status_message(&status);
            ffi::PyConfig_Clear(&mut config);
            return Err(format!("PyConfig executable {}: {why}", executable.display()));
        }
        let status = ffi::Py_InitializeFromConfig(&config);
        ffi::PyConfig_Clear(&mut config);
        if ffi::PyStatus_Exception(status) != 0 {
            return Err(format!("starting Python for {}: {}", executable.display(), status_message(&status)));
        }
        // This thread holds the GIL after initialization: hand it over.
        ffi::PyEval_SaveThread();
    }
    Ok(())
}

fn status_message(status: &ffi::PyStatus) -> String {
    if status.err_msg.is_null() {
        return "unknown error".into();
    }
    // SAFETY: a non-null `err_msg` of a `PyStatus` is a static NUL-terminated string.
    unsafe { CStr::from_ptr(status.err_msg) }.to_string_lossy().into_owned()
}

thread_local! {
    static PINNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Gives the calling thread a thread state that lives as long as the thread, so later
/// `Python::attach` calls on it only take and drop the GIL. Call before `attach`, after
/// [`start`] succeeded.
pub fn pin_thread() {
    if PINNED.get() {
        return;
    }
    // SAFETY: the interpreter is initialized (the caller's contract) and this thread does not
    // hold the GIL (pyo3's attach is not active here: this runs before it). `Ensure` creates
    // this thread's state and takes the GIL; `SaveThread` releases the GIL and keeps the
    // state, which the next `PyGILState_Ensure` (pyo3's attach) finds and reuses.
    unsafe {
        let _ = ffi::PyGILState_Ensure();
        ffi::PyEval_SaveThread();
    }
    PINNED.set(true);
}
