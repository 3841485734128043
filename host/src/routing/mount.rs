//! Mounts: URL prefixes served by a pipeline (middleware plugins around an application
//! plugin), from the configuration file's `[[mount]]` tables.
//!
//! Matching is on the percent-decoded path, at a segment boundary (`/api` matches `/api` and
//! `/api/x`, not `/apix`); the longest prefix wins. `SCRIPT_NAME` is the prefix and
//! `PATH_INFO` the rest (PEP 3333, CGI). A plugin named in any mount is reachable only
//! through its mounts: `/NAME.py` no longer routes to it, so a filter in front of an
//! application cannot be bypassed.

use std::collections::HashSet;

use std::sync::Arc;
use std::time::Duration;

use crate::plugin::loader;
use crate::plugin::registry::PluginSet;
use crate::settings::file::{ConfigError, Loaded};
use toml::Spanned;

/// What answers at the end of a mount's pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountApp {
    /// A plugin's application, by name.
    Plugin(String),
    /// The docroot (`static = true`): `/prefix/x` is the file it would be without the mount.
    Docroot,
}

impl std::fmt::Display for MountApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MountApp::Plugin(name) => f.write_str(name),
            MountApp::Docroot => f.write_str("the docroot"),
        }
    }
}

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `SCRIPT_NAME`.
    pub prefix: String,
    /// What answers.
    pub app: MountApp,
    /// Middleware plugins, outermost first.
    pub middleware: Arc<[String]>,
    /// Read request bodies whole before the call (`request_buffering`, default `true`).
    pub request_buffering: bool,
    /// `timeout`, when the mount sets it (`Some(None)`: no deadline).
    pub timeout: Option<Option<Duration>>,
    /// `max_concurrency`, when the mount sets it.
    pub max_concurrency: Option<usize>,
    /// `queue`, when the mount sets it.
    pub queue: Option<usize>,
}

/// What a plugin name in a mount stands for, to [`Mounts::validate_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// A loaded application.
    Application,
    /// A loaded middleware.
    Middleware,
    /// A file that was refused, and why ([`crate::plugin::loader::LoadError`]'s words: an
    /// `init failed: …` refusal is placed at its `[plugin.NAME]` table).
    Refused(String),
    /// A refused file whose refusal the caller has reported already (`portico check`): not
    /// reported again.
    AlreadyReported,
}

/// The mount table the server routes with.
#[derive(Debug, Default, Clone)]
pub struct Mounts {
    /// Longest prefix first.
    list: Vec<Mount>,
    /// Every plugin named by a mount.
    mounted: HashSet<String>,
}

impl Mounts {
    /// The mounts of a configuration file.
    pub fn from_config(loaded: &Loaded) -> Mounts {
        let mut list: Vec<Mount> = loaded
            .file
            .mount
            .iter()
            .map(|m| Mount {
                prefix: m.prefix.get_ref().clone(),
                app: m.app.as_ref().map_or(MountApp::Docroot, |a| MountApp::Plugin(a.get_ref().clone())),
                middleware: m.middleware.iter().map(|s| s.get_ref().clone()).collect::<Vec<_>>().into(),
                request_buffering: m.request_buffering.unwrap_or(true),
                timeout: m.timeout.as_ref().map(|t| crate::settings::deadline(*t.get_ref())),
                max_concurrency: m.max_concurrency.as_ref().map(|n| *n.get_ref() as usize),
                queue: m.queue,
            })
            .collect();
        list.sort_by_key(|m| std::cmp::Reverse(m.prefix.len()));
        let mounted = list
            .iter()
            .flat_map(|m| {
                let app = match &m.app {
                    MountApp::Plugin(name) => Some(name),
                    MountApp::Docroot => None,
                };
                app.into_iter().chain(m.middleware.iter())
            })
            .cloned()
            .collect();
        Mounts { list, mounted }
    }

    /// Checks every mount against the loaded plugins: the application exists, each middleware
    /// exists and exports a middleware entry point.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] at the offending name.
    pub fn validate(loaded: &Loaded, plugins: &PluginSet) -> Result<(), ConfigError> {
        Self::validate_with(loaded, |name| {
            plugins.get(name).map(|p| if p.is_middleware() { Named::Middleware } else { Named::Application })
        })
    }

    /// [`Mounts::validate`] against any plugin set: `kind(name)` says what a plugin name is
    /// (`None`: no such plugin file).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] at the offending name; for a plugin refused by its `init`,
    /// at the line of its `[plugin.NAME]` table the refusal is about (one error per mistake:
    /// the refusal, not "not loaded").
    pub fn validate_with(loaded: &Loaded, kind: impl Fn(&str) -> Option<Named>) -> Result<(), ConfigError> {
        let missing = |prefix: &str, name: &Spanned<String>, why: Option<String>| {
            let n = name.get_ref();
            match why {
                None => loaded.error_at(name.span(), format!("mount {prefix:?}: no plugin {n:?} is loaded")),
                Some(why) => {
                    loader::init_refusal(&why).and_then(|init| loaded.plugin_init_error(n, init)).unwrap_or_else(|| {
                        loaded.error_at(name.span(), format!("mount {prefix:?}: plugin {n:?} was refused: {why}"))
                    })
                }
            }
        };
        for m in &loaded.file.mount {
            let prefix = m.prefix.get_ref();
            if let Some(app) = &m.app {
                match kind(app.get_ref()) {
                    None => return Err(missing(prefix, app, None)),
                    Some(Named::Refused(why)) => return Err(missing(prefix, app, Some(why))),
                    Some(_) => {}
                }
            }
            for name in &m.middleware {
                match kind(name.get_ref()) {
                    None => return Err(missing(prefix, name, None)),
                    Some(Named::Refused(why)) => return Err(missing(prefix, name, Some(why))),
                    Some(Named::Application) => {
                        return Err(loaded.error_at(
                            name.span(),
                            format!("mount {prefix:?}: plugin {:?} is an application, not middleware", name.get_ref()),
                        ));
                    }
                    Some(Named::Middleware | Named::AlreadyReported) => {}
                }
            }
        }
        Ok(())
    }

    /// The mount serving decoded path `path`, and the length of its prefix in bytes.
    pub fn find(&self, path: &[u8]) -> Option<(&Mount, usize)> {
        self.list.iter().find_map(|m| {
            let p = m.prefix.as_bytes();
            if p == b"/" {
                return Some((m, 0));
            }
            let rest = path.strip_prefix(p)?;
            (rest.is_empty() || rest[0] == b'/').then_some((m, p.len()))
        })
    }

    /// Whether `name` is used by a mount (then `/NAME.py` does not route to it).
    pub fn is_mounted(&self, name: &str) -> bool {
        self.mounted.contains(name)
    }

    /// The mounts, longest prefix first.
    pub fn list(&self) -> &[Mount] {
        &self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts(prefixes: &[&str]) -> Mounts {
        let mut list: Vec<Mount> = prefixes
            .iter()
            .map(|p| Mount {
                prefix: (*p).into(),
                app: MountApp::Plugin("a".into()),
                middleware: Vec::new().into(),
                request_buffering: true,
                timeout: None,
                max_concurrency: None,
                queue: None,
            })
            .collect();
        list.sort_by_key(|m| std::cmp::Reverse(m.prefix.len()));
        Mounts { list, mounted: HashSet::new() }
    }

    #[test]
    fn longest_prefix_at_a_segment_boundary() {
        let m = mounts(&["/api", "/api/v2", "/"]);
        assert_eq!(m.find(b"/api/v2/x").map(|(m, n)| (m.prefix.as_str(), n)), Some(("/api/v2", 7)));
        assert_eq!(m.find(b"/api").map(|(m, n)| (m.prefix.as_str(), n)), Some(("/api", 4)));
        assert_eq!(m.find(b"/apix").map(|(m, n)| (m.prefix.as_str(), n)), Some(("/", 0)));
        let m = mounts(&["/api"]);
        assert!(m.find(b"/apix").is_none());
        assert!(m.find(b"/").is_none());
    }
}
