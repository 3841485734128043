//! Routing: which application answers a request target.
//!
//! First the server's own pages ([`crate::status`]: the status page and the metrics, when
//! the client may see them), which win over everything else. Then the configured mounts
//! ([`crate::mount`]: longest prefix of the decoded path; the pipeline's middleware travels
//! with the route). Then `/NAME.py` and `/NAME.py/rest` go to
//! plugin NAME with `SCRIPT_NAME = /NAME.py` and `PATH_INFO = /rest` (percent-decoded), as a
//! WSGI tutorial's `__import__` of a module per path does — unless NAME is used by a mount.
//! Everything else is a static file under the docroot.

use std::sync::Arc;

use crate::mount::Mounts;
use crate::status::Paths;

use crate::http::error::RequestError;
use crate::http::request::RequestHead;
use crate::http::target::{self, TargetForm};

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A plugin application.
    Plugin {
        /// The application plugin (`NAME` of `/NAME.py`, or a mount's `app`).
        name: String,
        /// Middleware plugins around it, outermost first (a mount's pipeline).
        middleware: Arc<[String]>,
        /// `SCRIPT_NAME`.
        script_name: String,
        /// `PATH_INFO`, decoded.
        path_info: Vec<u8>,
    },
    /// A file under the docroot; the path is decoded and still to be checked.
    Static {
        /// The decoded path.
        path: Vec<u8>,
    },
    /// `OPTIONS *` (RFC 9110 §9.3.7): about the server as a whole.
    ServerOptions,
    /// One of the server's own pages, answered on the I/O thread.
    Status(crate::status::Page),
    /// Authority-form (CONNECT): Portico is not a proxy.
    NotAllowed,
}

/// Routes a parsed request. `status`: the server's own pages, when this client may see them
/// (`None`: route their paths like any other).
///
/// # Errors
/// [`RequestError::BadRequest`] for a malformed percent-encoding.
pub fn route(head: &RequestHead, mounts: &Mounts, status: Option<&Paths>) -> Result<Route, RequestError> {
    match head.form {
        TargetForm::Asterisk => return Ok(Route::ServerOptions),
        TargetForm::Authority => return Ok(Route::NotAllowed),
        TargetForm::Origin | TargetForm::Absolute => {}
    }
    let parts = target::split(head.target(), head.form);
    // Decoded once: the status pages, the mounts and the static path all match on it.
    let decoded = target::decode_path(parts.path)?;
    if let Some(page) = status.and_then(|paths| paths.page(&decoded)) {
        return Ok(Route::Status(page));
    }
    if let Some((m, n)) = mounts.find(&decoded) {
        if m.app == crate::mount::STATIC_APP && m.middleware.is_empty() {
            return Ok(Route::Static { path: decoded.into_owned() });
        }
        // PEP 3333: an application mounted at the root has an empty SCRIPT_NAME.
        let script_name = if m.prefix == "/" { String::new() } else { m.prefix.clone() };
        return Ok(Route::Plugin {
            name: m.app.clone(),
            middleware: Arc::clone(&m.middleware),
            script_name,
            path_info: decoded[n..].to_vec(),
        });
    }
    match name_py(parts.path)? {
        Some(Route::Plugin { name, .. }) if mounts.is_mounted(&name) => {
            Ok(Route::Static { path: decoded.into_owned() })
        }
        Some(r) => Ok(r),
        None => Ok(Route::Static { path: decoded.into_owned() }),
    }
}

/// The request target's path, still percent-encoded (for a redirect's `Location`).
pub fn raw_path(head: &RequestHead) -> Vec<u8> {
    target::split(head.target(), head.form).path.to_vec()
}

/// Splits a raw (encoded) path into a plugin route or a static path.
///
/// # Errors
/// [`RequestError::BadRequest`] for a malformed percent-encoding.
pub fn split_path(raw: &[u8]) -> Result<Route, RequestError> {
    match name_py(raw)? {
        Some(r) => Ok(r),
        None => Ok(Route::Static { path: target::decode_path(raw)?.into_owned() }),
    }
}

/// The `/NAME.py[/rest]` route of a raw path, if it is one (matched on the raw path, so a
/// `%2F` in a name never splits it).
///
/// # Errors
/// [`RequestError::BadRequest`] for a malformed percent-encoding in the rest.
fn name_py(raw: &[u8]) -> Result<Option<Route>, RequestError> {
    let rest = raw.strip_prefix(b"/").unwrap_or(raw);
    let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    let first = &rest[..end];
    if let Some(stem) = first.strip_suffix(b".py") {
        let valid = !stem.is_empty() && stem.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            let name = String::from_utf8_lossy(stem).into_owned();
            let path_info = target::decode_path(&rest[end..])?.into_owned();
            return Ok(Some(Route::Plugin {
                script_name: format!("/{name}.py"),
                name,
                path_info,
                middleware: Arc::new([]),
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(name: &str, path_info: &[u8]) -> Route {
        Route::Plugin {
            name: name.into(),
            script_name: format!("/{name}.py"),
            path_info: path_info.to_vec(),
            middleware: Arc::new([]),
        }
    }

    #[test]
    fn script_name_and_path_info() {
        assert_eq!(split_path(b"/ctime.py").unwrap(), plugin("ctime", b""));
        assert_eq!(split_path(b"/echo.py/a%20b/c%2Fd").unwrap(), plugin("echo", b"/a b/c/d"));
        assert_eq!(split_path(b"/echo.py/").unwrap(), plugin("echo", b"/"));
        assert_eq!(split_path(b"/x/echo.py").unwrap(), Route::Static { path: b"/x/echo.py".to_vec() });
        assert_eq!(split_path(b"/.py").unwrap(), Route::Static { path: b"/.py".to_vec() });
        assert_eq!(split_path(b"/%2e%2e/x").unwrap(), Route::Static { path: b"/../x".to_vec() });
    }
}
