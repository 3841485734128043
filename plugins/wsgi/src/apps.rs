//! The applications this plugin calls: the configured `app` (`module:callable`, imported
//! after `pythonpath` is prepended to `sys.path`) and the scripts of `scripts` (each
//! `DIR/NAME.py` loaded by its file path, never `__import__(NAME)`, which would find the
//! standard library's `os` for `/os.py`).
//!
//! Reload ([`Apps::reload`], SIGHUP in `--workers 0`): the modules imported from the
//! application's own directories (never the standard library's, the venv's or extension
//! modules) are dropped from `sys.modules` and the application is imported again; on success
//! it replaces the old one, on failure the dropped modules are put back and the old one
//! serves on ([`HELPERS`]).
//! Scripts are loaded again on their next request. What a re-import cannot refresh —
//! process-wide state such as Django's settings, or a package upgraded in the venv — needs a
//! generation reload (the default process model) or a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use std::sync::RwLock;

use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::config::Config;

/// The loaded applications of one copy of the plugin.
pub struct Apps {
    config: Config,
    /// The configured application (`None` when only scripts are served).
    app: RwLock<Option<Py<PyAny>>>,
    /// Scripts by NAME, loaded on first use.
    scripts: RwLock<HashMap<String, Py<PyAny>>>,
}

impl Apps {
    /// Prepends `pythonpath` to `sys.path` and imports the configured application, as a
    /// reload does ([`HELPERS`]' `reimport`): in a fresh interpreter nothing of the
    /// application is imported yet; in one another copy of the plugin started, its modules are
    /// imported anew.
    ///
    /// # Errors
    /// The import failed or the callable is missing: the formatted traceback.
    pub fn load(py: Python<'_>, config: Config) -> Result<Apps, String> {
        let sys_path = py.import("sys").and_then(|s| s.getattr("path")).map_err(|e| traceback(py, &e))?;
        let sys_path = sys_path.cast_into::<PyList>().map_err(|_| "sys.path is not a list".to_owned())?;
        for dir in config.pythonpath.iter().rev() {
            let dir = dir.to_string_lossy();
            if !sys_path.contains(&*dir).unwrap_or(false) {
                sys_path.insert(0, &*dir).map_err(|e| traceback(py, &e))?;
            }
        }
        let app = match &config.app {
            Some((module, callable)) => Some(reimport_app(py, module, callable, &config.pythonpath)?),
            None => None,
        };
        Ok(Apps { config, app: RwLock::new(app), scripts: RwLock::new(HashMap::new()) })
    }

    /// The application for a request: script `NAME`, or the configured one.
    ///
    /// # Errors
    /// No application is configured, or the script could not be loaded (a traceback).
    pub fn get(&self, py: Python<'_>, script: Option<&str>) -> Result<Py<PyAny>, String> {
        let Some(name) = script else {
            let app = self.app.read().unwrap_or_else(|e| e.into_inner());
            return app.as_ref().map(|a| a.clone_ref(py)).ok_or_else(|| "no app is configured".to_owned());
        };
        if let Some(a) = self.scripts.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(a.clone_ref(py));
        }
        let path = self.script_path(name).ok_or_else(|| format!("no script {name}.py"))?;
        let app = load_script(py, name, &path)?;
        let mut scripts = self.scripts.write().unwrap_or_else(|e| e.into_inner());
        Ok(scripts.entry(name.to_owned()).or_insert(app).clone_ref(py))
    }

    /// `DIR/NAME.py` if `scripts` is configured and that file exists.
    pub fn script_path(&self, name: &str) -> Option<PathBuf> {
        let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let path = self.config.scripts.as_ref()?.join(format!("{name}.py"));
        (valid && path.is_file()).then_some(path)
    }

    /// Imports the application again (dropping the modules under its own directories
    /// first) and forgets the loaded scripts.
    ///
    /// # Errors
    /// The new import failed: the modules dropped are put back and the old application keeps
    /// serving.
    pub fn reload(&self, py: Python<'_>) -> Result<(), String> {
        // Old objects are dropped after their lock is released: their `__del__` may run
        // Python, which may let a request thread take the GIL and wait on that lock.
        let old_scripts = std::mem::take(&mut *self.scripts.write().unwrap_or_else(|e| e.into_inner()));
        drop(old_scripts);
        let Some((module, callable)) = &self.config.app else { return Ok(()) };
        let app = reimport_app(py, module, callable, &self.config.pythonpath)?;
        let old = self.app.write().unwrap_or_else(|e| e.into_inner()).replace(app);
        drop(old);
        Ok(())
    }
}

/// The Python side of loading code, one module compiled on use:
/// - `reimport(module, attr, roots)`, the import recipe of start and reload: modules whose
///   file is under the application's directories (`roots`: `pythonpath` and the application
///   module's own directory) and not under the interpreter's or the venv's prefixes or
///   site-packages, and not extension modules (which cannot be imported twice), leave
///   `sys.modules`; the application is imported; on any failure the new half-imported modules
///   leave and the old ones come back, so requests go on with the old code. Django's URL
///   resolver cache is cleared only after a success.
/// - `load_script(name, path)`: the file at `path` as a module of its own, never imported by
///   name (`/os.py` is not the standard library's `os`); its `application`.
const HELPERS: &std::ffi::CStr = pyo3::ffi::c_str!(
    r#"
import importlib, importlib.util, os, site, sys

def reimport(module, attr, roots):
    current = sys.modules.get(module)
    roots = [os.path.realpath(r) for r in roots]
    if current is not None and getattr(current, "__file__", None):
        roots.append(os.path.dirname(os.path.realpath(current.__file__)))
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    try:
        prefixes.update(site.getsitepackages())
    except AttributeError:
        pass
    skip = [os.path.realpath(p) for p in prefixes]

    def under(path, dirs):
        return any(path == d or path.startswith(d + os.sep) for d in dirs)

    def ours(mod):
        f = getattr(mod, "__file__", None)
        if not f or not f.endswith(".py"):
            return False
        f = os.path.realpath(f)
        return under(f, roots) and not under(f, skip)

    removed = {n: m for n, m in list(sys.modules.items()) if ours(m)}
    for n in removed:
        sys.modules.pop(n, None)
    importlib.invalidate_caches()
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError(f"{module}:{attr} is not callable")
    except BaseException:
        for n, m in list(sys.modules.items()):
            if n not in removed and ours(m):
                sys.modules.pop(n, None)
        sys.modules.update(removed)
        raise
    urls = sys.modules.get("django.urls")
    if urls is not None:
        urls.clear_url_caches()
    return obj

def load_script(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module.application
"#
);

/// Calls [`HELPERS`]' function `name` with `args`; `what` names the work in an error.
fn call_helper<'py>(
    py: Python<'py>,
    name: &str,
    args: impl pyo3::call::PyCallArgs<'py>,
    what: &str,
) -> Result<Py<PyAny>, String> {
    // Compiled once: a script's first request and every reload use it.
    static MODULE: pyo3::sync::PyOnceLock<Py<PyModule>> = pyo3::sync::PyOnceLock::new();
    let helpers = MODULE
        .get_or_try_init(py, || {
            PyModule::from_code(py, HELPERS, pyo3::ffi::c_str!("portico_wsgi.py"), pyo3::ffi::c_str!("portico_wsgi"))
                .map(Bound::unbind)
        })
        .map_err(|e| traceback(py, &e))?
        .bind(py);
    helpers
        .getattr(name)
        .and_then(|f| f.call1(args))
        .map(Bound::unbind)
        .map_err(|e| format!("{what}: {}", traceback(py, &e)))
}

/// `reimport(module, callable, roots)` of [`HELPERS`].
fn reimport_app(py: Python<'_>, module: &str, callable: &str, roots: &[PathBuf]) -> Result<Py<PyAny>, String> {
    let roots: Vec<String> = roots.iter().map(|r| r.to_string_lossy().into_owned()).collect();
    call_helper(py, "reimport", (module, callable, roots), &format!("importing {module}"))
}

/// `load_script` of [`HELPERS`]: `path` as the module `portico_script_NAME`, its `application`.
fn load_script(py: Python<'_>, name: &str, path: &Path) -> Result<Py<PyAny>, String> {
    let args = (format!("portico_script_{name}"), path.to_string_lossy().into_owned());
    call_helper(py, "load_script", args, &format!("loading {}", path.display()))
}

/// An exception as Python prints it (`traceback.format_exception`), for the error log.
pub fn traceback(py: Python<'_>, err: &PyErr) -> String {
    let formatted = py
        .import("traceback")
        .and_then(|tb| tb.call_method1("format_exception", (err.value(py),)))
        .and_then(|lines| lines.extract::<Vec<String>>());
    match formatted {
        Ok(lines) => lines.concat().trim_end().to_owned(),
        Err(_) => err.to_string(),
    }
}
