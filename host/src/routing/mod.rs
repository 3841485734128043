//! Routing: which application answers a request target, from one consistent [`Table`] of
//! mounts and plugins.
//!
//! Order, for a request's decoded path:
//! 1. The server's own pages ([`AdminPaths`]: status page and metrics), when the client may
//!    see them; they win over everything else.
//! 2. The configured mounts ([`mount`]: longest prefix at a segment boundary); the
//!    pipeline's middleware travels with the route.
//! 3. `/NAME.py` and `/NAME.py/rest` go to plugin NAME with `SCRIPT_NAME = /NAME.py` and
//!    `PATH_INFO = /rest` (percent-decoded), as a WSGI tutorial's `__import__` of a module per
//!    path does — unless NAME is used by a mount.
//!    With no plugin NAME, a plugin with a `serves_script` hook (the `wsgi` bridge's
//!    `scripts` directory) may claim it: the request then runs through that plugin's mount
//!    (its middleware and limits), so a script is never reachable around a filter.
//! 4. Everything else is a static file under the docroot.
//!
//! Invariant: the mounts and the plugins a request is routed with come from the same
//! [`Table`], loaded with one atomic read of [`Current`]; a reload swaps both at once, so a
//! request never sees new mounts with old plugins or the reverse.
//!
//! A static mount with middleware fences its directory ([`Fence`]): a file under it is served
//! only through that mount's pipeline, whatever path or symlink reached it — decided by the
//! file's canonical path, after resolution, not by the URL.

pub(crate) mod mount;
pub(crate) mod table;

use std::sync::Arc;

use crate::http::error::RequestError;
use crate::http::request::RequestHead;
use crate::http::target::{self, TargetForm};
use crate::plugin::loader::Plugin;
use crate::settings::{AdminPage, AdminPaths};
pub(crate) use table::Current;
pub use table::{App, Fence, Resolved, Table};

/// What answers at the end of an application route.
#[derive(Clone)]
pub enum Target {
    /// A plugin's application (this version, pinned for the request).
    Plugin(Arc<Plugin>),
    /// The docroot, behind the middleware of the static mount at `prefix`.
    Docroot {
        /// The mount's prefix.
        prefix: Arc<str>,
        /// The fence of the table the request was routed with.
        fence: Arc<Fence>,
    },
}

/// A request for an application: a plugin, or the docroot behind middleware.
#[derive(Clone)]
pub struct AppRoute {
    /// What answers at the end of the pipeline.
    pub target: Target,
    /// Middleware around it, outermost first (a mount's pipeline), from the same table.
    pub middleware: Arc<[Arc<Plugin>]>,
    /// `SCRIPT_NAME`.
    pub script_name: String,
    /// `PATH_INFO`, decoded.
    pub path_info: Vec<u8>,
    /// The application (a mount, or a `/NAME.py` plugin): how it is called and its gate.
    pub app: Arc<App>,
    /// The script NAME of a `/NAME.py` the target serves with its `serves_script` hook
    /// (given to it as the environ key `portico.script`).
    pub script: Option<String>,
}

impl AppRoute {
    /// The plugin the request is counted and logged under: the application, or for the
    /// docroot the outermost middleware.
    pub fn named(&self) -> Option<&Arc<Plugin>> {
        match &self.target {
            Target::Plugin(p) => Some(p),
            Target::Docroot { .. } => self.middleware.first(),
        }
    }
}

/// Where a request goes.
pub enum Route {
    /// An application on a worker.
    App(AppRoute),
    /// A file under the docroot, answered on the event loop; the path is decoded and still to
    /// be checked.
    Static {
        /// The decoded path.
        path: Vec<u8>,
    },
    /// One of the server's own pages, answered on the event loop.
    Admin(AdminPage),
    /// `OPTIONS *` (RFC 9110 §9.3.7): about the server as a whole.
    ServerOptions,
    /// Authority-form (CONNECT): Portico is not a proxy.
    NotAllowed,
    /// `/NAME.py` with no plugin NAME loaded: a 404, as for a missing file.
    NotFound,
    /// A mount whose middleware is not loaded: 500, never the application without its filter.
    FailClosed {
        /// The mount's prefix.
        mount: String,
        /// The middleware that is missing.
        missing: String,
    },
}

/// Routes a parsed request with `table`. `admin`: the server's own pages, when this client
/// may see them (`None`: route their paths like any other).
///
/// # Errors
/// [`RequestError::BadRequest`] for a malformed percent-encoding.
pub fn route(head: &RequestHead, table: &Table, admin: Option<&AdminPaths>) -> Result<Route, RequestError> {
    match head.form {
        TargetForm::Asterisk => return Ok(Route::ServerOptions),
        TargetForm::Authority => return Ok(Route::NotAllowed),
        TargetForm::Origin | TargetForm::Absolute => {}
    }
    let parts = target::split(head.target(), head.form);
    // Decoded once: the admin pages, the mounts and the static path all match on it.
    let decoded = target::decode_path(parts.path)?;
    if let Some(page) = admin.and_then(|paths| paths.page(&decoded)) {
        return Ok(Route::Admin(page));
    }
    if let Some((m, n)) = table.mounts.find(&decoded) {
        // Every middleware of the pipeline comes from the same table as the application; one
        // missing fails closed (500): the filter in front of an application is never skipped.
        return Ok(match table.resolved.get(&m.prefix) {
            Some(Resolved::Static) => Route::Static { path: decoded.into_owned() },
            Some(Resolved::App { target, middleware, app }) => Route::App(AppRoute {
                target: target.clone(),
                middleware: Arc::clone(middleware),
                // PEP 3333: an application mounted at the root has an empty SCRIPT_NAME.
                script_name: if m.prefix == "/" { String::new() } else { m.prefix.clone() },
                path_info: decoded[n..].to_vec(),
                app: Arc::clone(app),
                script: None,
            }),
            Some(Resolved::FailClosed { missing }) => {
                Route::FailClosed { mount: m.prefix.clone(), missing: missing.clone() }
            }
            Some(Resolved::NotFound) | None => Route::NotFound,
        });
    }
    match split_path(parts.path)? {
        Split::NamePy { name, .. } if table.mounts.is_mounted(&name) => {
            Ok(Route::Static { path: decoded.into_owned() })
        }
        Split::NamePy { name, script_name, path_info } => {
            match (table.plugins.get(&name), table.apps.get(&script_name)) {
                (Some(p), Some(app)) => Ok(Route::App(AppRoute {
                    target: Target::Plugin(Arc::clone(p)),
                    middleware: Arc::clone(&table.no_middleware),
                    script_name,
                    path_info,
                    app: Arc::clone(app),
                    script: None,
                })),
                (None, _) => Ok(script(table, name, script_name, path_info)),
                _ => Ok(Route::NotFound),
            }
        }
        Split::Static => Ok(Route::Static { path: decoded.into_owned() }),
    }
}

/// `/NAME.py` with no plugin NAME: the script handler's, if it serves NAME (through its mount's
/// pipeline and gate, or as its own `/HANDLER.py`), else a 404.
fn script(table: &Table, name: String, script_name: String, path_info: Vec<u8>) -> Route {
    let Some((handler, mount)) = table.scripts.as_ref().filter(|(h, _)| h.serves_script(&name)) else {
        return Route::NotFound;
    };
    let (middleware, app) = match mount {
        Some(prefix) => match table.resolved.get(prefix) {
            Some(Resolved::App { middleware, app, .. }) => (Arc::clone(middleware), Arc::clone(app)),
            Some(Resolved::FailClosed { missing }) => {
                return Route::FailClosed { mount: prefix.clone(), missing: missing.clone() };
            }
            _ => return Route::NotFound,
        },
        None => match table.apps.get(&format!("/{}.py", handler.name)) {
            Some(app) => (Arc::clone(&table.no_middleware), Arc::clone(app)),
            None => return Route::NotFound,
        },
    };
    Route::App(AppRoute {
        target: Target::Plugin(Arc::clone(handler)),
        middleware,
        script_name,
        path_info,
        app,
        script: Some(name),
    })
}

/// A raw path, split by the `/NAME.py` rule alone (no mounts, no table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    /// `/NAME.py[/rest]`.
    NamePy {
        /// The plugin's route name.
        name: String,
        /// `SCRIPT_NAME`: `/NAME.py`.
        script_name: String,
        /// `PATH_INFO`: the rest, decoded.
        path_info: Vec<u8>,
    },
    /// Not a `/NAME.py` path.
    Static,
}

/// The `/NAME.py[/rest]` split of a raw (encoded) path, if it is one (matched on the raw path,
/// so a `%2F` in a name never splits it). NAME is ASCII letters, digits, `_` and `-`.
///
/// # Errors
/// [`RequestError::BadRequest`] for a malformed percent-encoding in the rest.
pub fn split_path(raw: &[u8]) -> Result<Split, RequestError> {
    let rest = raw.strip_prefix(b"/").unwrap_or(raw);
    let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    let first = &rest[..end];
    if let Some(stem) = first.strip_suffix(b".py") {
        let valid = !stem.is_empty() && stem.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            let name = String::from_utf8_lossy(stem).into_owned();
            let path_info = target::decode_path(&rest[end..])?.into_owned();
            return Ok(Split::NamePy { script_name: format!("/{name}.py"), name, path_info });
        }
    }
    Ok(Split::Static)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_py(name: &str, path_info: &[u8]) -> Split {
        Split::NamePy { name: name.into(), script_name: format!("/{name}.py"), path_info: path_info.to_vec() }
    }

    #[test]
    fn script_name_and_path_info() {
        assert_eq!(split_path(b"/ctime.py").unwrap(), name_py("ctime", b""));
        assert_eq!(split_path(b"/echo.py/a%20b/c%2Fd").unwrap(), name_py("echo", b"/a b/c/d"));
        assert_eq!(split_path(b"/echo.py/").unwrap(), name_py("echo", b"/"));
        assert_eq!(split_path(b"/x/echo.py").unwrap(), Split::Static);
        assert_eq!(split_path(b"/.py").unwrap(), Split::Static);
        assert_eq!(split_path(b"/a%2Eb.py").unwrap(), Split::Static);
        assert!(split_path(b"/echo.py/%zz").is_err());
    }
}
