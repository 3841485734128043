//! The applications this plugin calls: the configured `app` (`module:callable`, imported
//! after `pythonpath` is prepended to `sys.path`) and the scripts of `scripts` (each
//! `DIR/NAME.py` loaded by its file path, never `__import__(NAME)`, which would find the
//! standard library's `os` for `/os.py`).
//!
//! Reload ([`Apps::reload`], SIGHUP in `--workers 0`): the modules imported from the
//! application's own directories are dropped from `sys.modules` and the application is
//! imported again; on success it replaces the old one, on failure the old one serves on.
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
    /// Prepends `pythonpath` to `sys.path` and imports the configured application.
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
            Some((module, callable)) => Some(import_app(py, module, callable)?),
            None => None,
        };
        Ok(Apps { config, app: RwLock::new(app), scripts: RwLock::new(HashMap::new()) })
    }

    /// The configuration this copy runs.
    pub fn config(&self) -> &Config {
        &self.config
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
    /// The new import failed: the old application keeps serving.
    pub fn reload(&self, py: Python<'_>) -> Result<(), String> {
        self.scripts.write().unwrap_or_else(|e| e.into_inner()).clear();
        let Some((module, callable)) = &self.config.app else { return Ok(()) };
        let mut roots: Vec<PathBuf> = self.config.pythonpath.clone();
        if let Ok(m) = py.import(module.as_str())
            && let Ok(file) = m.getattr("__file__").and_then(|f| f.extract::<String>())
            && let Some(dir) = Path::new(&file).parent()
        {
            roots.push(dir.to_owned());
        }
        purge_modules(py, &roots).map_err(|e| traceback(py, &e))?;
        let app = import_app(py, module, callable)?;
        *self.app.write().unwrap_or_else(|e| e.into_inner()) = Some(app);
        Ok(())
    }
}

/// `importlib.import_module(module)`, then the dotted attribute path `callable` of it.
fn import_app(py: Python<'_>, module: &str, callable: &str) -> Result<Py<PyAny>, String> {
    let m = py.import(module).map_err(|e| format!("importing {module}: {}", traceback(py, &e)))?;
    let mut obj = m.into_any();
    for part in callable.split('.') {
        obj = obj.getattr(part).map_err(|_| format!("module {module} has no {callable}"))?;
    }
    if !obj.is_callable() {
        return Err(format!("{module}:{callable} is not callable"));
    }
    Ok(obj.unbind())
}

/// Loads `path` as a module of its own (`portico_script_NAME`) and returns its `application`.
fn load_script(py: Python<'_>, name: &str, path: &Path) -> Result<Py<PyAny>, String> {
    let code = pyo3::ffi::c_str!(
        "import importlib.util, sys\n\
         def load(name, path):\n    \
             spec = importlib.util.spec_from_file_location(name, path)\n    \
             module = importlib.util.module_from_spec(spec)\n    \
             sys.modules[name] = module\n    \
             try:\n        spec.loader.exec_module(module)\n    \
             except BaseException:\n        sys.modules.pop(name, None)\n        raise\n    \
             return module.application\n"
    );
    let loader = PyModule::from_code(
        py,
        code,
        pyo3::ffi::c_str!("portico_wsgi_scripts.py"),
        pyo3::ffi::c_str!("portico_wsgi_scripts"),
    )
    .and_then(|m| m.getattr("load"))
    .map_err(|e| traceback(py, &e))?;
    let app = loader
        .call1((format!("portico_script_{name}"), path.to_string_lossy()))
        .map_err(|e| format!("loading {}: {}", path.display(), traceback(py, &e)))?;
    Ok(app.unbind())
}

/// Drops from `sys.modules` every module whose file lies under one of `roots` (the
/// application's code, not the standard library or the venv's packages).
fn purge_modules(py: Python<'_>, roots: &[PathBuf]) -> PyResult<()> {
    let sys = py.import("sys")?;
    let modules = sys.getattr("modules")?;
    let items = modules.call_method0("items")?.try_iter()?.collect::<PyResult<Vec<_>>>()?;
    for item in items {
        let (name, module): (String, Bound<'_, PyAny>) = item.extract()?;
        let file = module.getattr("__file__").ok().and_then(|f| f.extract::<String>().ok());
        if file.is_some_and(|f| roots.iter().any(|r| Path::new(&f).starts_with(r))) {
            modules.del_item(name)?;
        }
    }
    py.import("importlib")?.call_method0("invalidate_caches")?;
    // Django keeps its URL resolver in an lru_cache: drop it so a re-imported urls.py counts.
    if sys.getattr("modules")?.contains("django.urls")? {
        let _ = py.import("django.urls").and_then(|urls| urls.call_method0("clear_url_caches"));
    }
    Ok(())
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
