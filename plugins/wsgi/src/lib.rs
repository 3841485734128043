//! `wsgi`: Python WSGI applications (PEP 3333) — Flask, Django, a tutorial's `application`
//! — served unchanged by Portico, in a CPython embedded in each worker process.
//!
//! Configured by `[plugin.wsgi]` (see [`config`]); mounted like any plugin (`[[mount]]
//! prefix = "/shop" app = "wsgi"` gives `SCRIPT_NAME = /shop`), and, with `scripts = "DIR"`,
//! it serves `/NAME.py` from `DIR/NAME.py` for names no compiled plugin has (the host's
//! `serves_script` hook), through the same mount's middleware and limits.
//!
//! Modules: [`config`] (the table), [`interpreter`] (starting CPython once per process,
//! thread states), [`apps`] (importing the application and the scripts, reload),
//! [`environ`] (the environ dictionary), [`objects`] (`start_response`, `write`,
//! `wsgi.input`, `wsgi.errors`, `wsgi.file_wrapper`), [`call`] (one request, and the
//! streamed body).
//!
//! The plugin is never unloaded (the host keeps every library mapped) and never finalizes
//! Python (extension modules such as numpy cannot be imported twice in a process).

pub mod apps;
pub mod call;
pub mod config;
pub mod environ;
pub mod interpreter;
pub mod objects;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::OnceLock;

use abi_stable::sabi_types::RMut;
use abi_stable::std_types::{RErr, RNone, ROk, RResult, RSome, RStr, RString};
use portico_api::Body;
use portico_api::abi::{Body_NE, Environ, Field, PluginMod, PluginMod_Ref, Setup, StartResponse_TO};
use pyo3::Python;

use crate::apps::Apps;
use crate::config::Config;
use crate::environ::Process;

/// This copy's applications and process facts, set by `setup` (`None`: nothing configured).
static STATE: OnceLock<Option<(Apps, Process)>> = OnceLock::new();

/// The plugin's root module, checked and loaded by the portico host.
#[abi_stable::export_root_module]
pub fn portico_root_module() -> PluginMod_Ref {
    use abi_stable::prefix_type::PrefixTypeTrait;
    PluginMod {
        name: RStr::from_str("wsgi"),
        version: RStr::from_str(env!("CARGO_PKG_VERSION")),
        panic_unwind: cfg!(panic = "unwind"),
        application: portico_application,
        init: RNone,
        middleware: RNone,
        setup: RSome(portico_setup),
        reload: RSome(portico_reload),
        serves_script: RSome(portico_serves_script),
        // Python code may sleep, lock and wait on the network: worker threads only.
        never_blocks: false,
    }
    .leak_into_prefix()
}

/// The message of a caught panic.
fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}

extern "C" fn portico_setup(setup: &Setup<'_>) -> RResult<(), RString> {
    match catch_unwind(AssertUnwindSafe(|| set_up(setup))) {
        Ok(Ok(())) => ROk(()),
        Ok(Err(e)) => RErr(e.into()),
        Err(panic) => RErr(format!("wsgi setup panicked: {}", panic_text(panic)).into()),
    }
}

fn set_up(setup: &Setup<'_>) -> Result<(), String> {
    let config = Config::parse(setup.config.as_str(), std::path::Path::new(setup.config_dir.as_str()))?;
    let executable = match &config.venv {
        Some(venv) => {
            let python = venv.join("bin").join("python");
            if !python.exists() {
                return Err(format!("venv {}: no bin/python there (make it with `python3 -m venv`)", venv.display()));
            }
            python
        }
        None => PathBuf::from(env!("WSGI_BUILT_PYTHON")),
    };
    if let Some(dir) = &config.scripts
        && !dir.is_dir()
    {
        return Err(format!("scripts = {}: not a directory", dir.display()));
    }
    if config.is_empty() {
        // Installed without a table (scripts/serve): loaded, serving nothing, Python not started.
        return STATE.set(None).map_err(|_| "wsgi: setup called twice".to_owned());
    }
    if let Some(venv) = &config.venv {
        check_venv_version(venv)?;
    }
    let env: Vec<(String, String)> = config.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let fresh = interpreter::start(&executable, &env)?;
    let number = |name: &str| setup.fact(name).and_then(|v| v.parse::<usize>().ok()).unwrap_or(1);
    let process = Process { multithread: number("worker_threads") > 1, multiprocess: number("worker_processes") > 1 };
    // Not pinned: setup may run on a short-lived thread (a single-process reload's).
    let apps = Python::attach(|py| {
        check_version(py)?;
        if !fresh {
            // Another copy of this plugin started the interpreter: what only a new process
            // can change is refused, so the copy serving now goes on.
            interpreter::same_start(py, &executable, &env)?;
        }
        Apps::load(py, config)
    })?;
    STATE.set(Some((apps, process))).map_err(|_| "wsgi: setup called twice".to_owned())
}

/// The running interpreter must be the one the plugin was built against (its venv made from
/// another Python would load extension modules of another ABI).
fn check_version(py: Python<'_>) -> Result<(), String> {
    let running = py.version_info();
    let built = env!("WSGI_BUILT_PYTHON_VERSION");
    let running_text = format!("{}.{}", running.major, running.minor);
    if running_text != built {
        return Err(format!("the venv runs Python {running_text}; this plugin was built for {built}"));
    }
    Ok(())
}

/// The Python version a venv was made from (its `pyvenv.cfg`) must be the plugin's: checked
/// before the interpreter starts, since a started interpreter stays for the process.
fn check_venv_version(venv: &std::path::Path) -> Result<(), String> {
    let cfg = venv.join("pyvenv.cfg");
    let text = std::fs::read_to_string(&cfg).map_err(|e| format!("venv {}: {e}", cfg.display()))?;
    let built = env!("WSGI_BUILT_PYTHON_VERSION");
    let version = text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        matches!(k.trim(), "version" | "version_info").then(|| v.trim().to_owned())
    });
    match version {
        Some(v) if v == built || v.starts_with(&format!("{built}.")) => Ok(()),
        Some(v) => Err(format!("venv {} was made from Python {v}; this plugin was built for {built}", venv.display())),
        None => Ok(()),
    }
}

extern "C" fn portico_reload() -> RResult<(), RString> {
    let Some(Some((apps, _))) = STATE.get() else { return ROk(()) };
    // Not pinned: the host reloads on a thread of its own, one per SIGHUP.
    let result = catch_unwind(AssertUnwindSafe(|| Python::attach(|py| apps.reload(py))));
    match result {
        Ok(Ok(())) => ROk(()),
        Ok(Err(e)) => RErr(e.into()),
        Err(panic) => RErr(format!("wsgi reload panicked: {}", panic_text(panic)).into()),
    }
}

extern "C" fn portico_serves_script(name: RStr<'_>) -> bool {
    // A file-system check only: the host asks on its event loop.
    catch_unwind(|| {
        STATE.get().and_then(Option::as_ref).is_some_and(|(apps, _)| apps.script_path(name.as_str()).is_some())
    })
    .unwrap_or(false)
}

// `Body_NE` is abi_stable's `NonExhaustive`, checked by the host's layout check.
#[allow(improper_ctypes_definitions)]
extern "C" fn portico_application(
    environ: &mut Environ<'_>,
    mut start_response: StartResponse_TO<'_, RMut<'_, ()>>,
) -> Body_NE {
    let Some(Some((apps, process))) = STATE.get() else {
        let fields = [Field::new("Content-Type", "text/plain; charset=utf-8")];
        let status = RStr::from_str("404 Not Found");
        let _ = start_response.start_response(status, fields.as_slice().into(), RNone);
        let hint = "No WSGI application is configured: give [plugin.wsgi] app = \"module:callable\" \
                    or scripts = \"DIR\" (README, \"Python applications\").\n";
        return Body::from(hint).into_abi();
    };
    match catch_unwind(AssertUnwindSafe(|| call::serve(apps, *process, environ, start_response))) {
        Ok(body) => body.into_abi(),
        Err(panic) => {
            // The host answers 500 to a call that never reached its start_response.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "wsgi: panic while serving: {}", panic_text(panic).escape_debug());
            Body::from("Internal Server Error\n").into_abi()
        }
    }
}
