//! The routing table: one immutable snapshot of what serves — the mounts, the plugins they
//! were checked against, the applications a request can reach (each with its admission
//! [`Gate`]) and the static mounts' [`Fence`] — published whole by [`Current`], so a request
//! never sees parts of two configurations.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Target;
use super::mount::{Mount, MountApp, Mounts};
use crate::admission::{Gate, Limits};
use crate::plugin::loader::Plugin;
use crate::plugin::registry::PluginSet;
use crate::settings::AppDefaults;

/// An application a request can reach: a mount, or a `/NAME.py` plugin.
#[derive(Debug)]
pub struct App {
    /// Read the whole request body (into memory, then a temporary file) before the
    /// application runs, so it never waits on the network (the default). `false`: stream the
    /// body to it as it arrives (an application that proxies or consumes a huge upload).
    pub request_buffering: bool,
    /// Its limits and the calls waiting for it.
    pub gate: Gate,
}

/// The mounts and the plugins they were checked against: one immutable snapshot.
#[derive(Default)]
pub struct Table {
    /// The mount table.
    pub mounts: Mounts,
    /// The plugins serving, by route name.
    pub plugins: PluginSet,
    /// The directories static mounts with middleware guard.
    pub fence: Arc<Fence>,
    /// Every application a request can reach, by name: a mount's prefix, or `/NAME.py`.
    pub apps: HashMap<String, Arc<App>>,
    /// What each mount resolves to, by prefix: worked out once here, so routing a request to
    /// a mount is one lookup and reference counts.
    pub resolved: HashMap<String, Resolved>,
    /// The empty pipeline of a `/NAME.py` route (shared, so such a route allocates none).
    pub no_middleware: Arc<[Arc<Plugin>]>,
    /// The plugin that serves `/NAME.py` for names no plugin has (its `serves_script` hook),
    /// and the prefix of its mount when it has one: the first such plugin by name.
    pub scripts: Option<(Arc<Plugin>, Option<String>)>,
}

/// What a mount resolves to in one table.
pub enum Resolved {
    /// Plain static files: a static mount without middleware.
    Static,
    /// An application behind its middleware (outermost first).
    App {
        /// What answers at the end of the pipeline.
        target: Target,
        /// The pipeline's middleware, from this table.
        middleware: Arc<[Arc<Plugin>]>,
        /// The mount's application (its gate).
        app: Arc<App>,
    },
    /// A middleware of the pipeline is not loaded, or is not a middleware: 500, never the
    /// application without its filter.
    FailClosed {
        /// The missing middleware's name.
        missing: String,
    },
    /// The mount's plugin is not loaded.
    NotFound,
}

impl Resolved {
    fn of(m: &Mount, plugins: &PluginSet, fence: &Arc<Fence>, apps: &HashMap<String, Arc<App>>) -> Resolved {
        let mut middleware = Vec::with_capacity(m.middleware.len());
        for name in m.middleware.iter() {
            match plugins.get(name).filter(|p| p.is_middleware()) {
                Some(p) => middleware.push(Arc::clone(p)),
                None => return Resolved::FailClosed { missing: name.clone() },
            }
        }
        let target = match &m.app {
            MountApp::Docroot if middleware.is_empty() => return Resolved::Static,
            MountApp::Docroot => Target::Docroot { prefix: m.prefix.as_str().into(), fence: Arc::clone(fence) },
            MountApp::Plugin(name) => match plugins.get(name) {
                Some(p) => Target::Plugin(Arc::clone(p)),
                None => return Resolved::NotFound,
            },
        };
        match apps.get(&m.prefix) {
            Some(app) => Resolved::App { target, middleware: middleware.into(), app: Arc::clone(app) },
            None => Resolved::NotFound,
        }
    }
}

impl Table {
    /// A table of `mounts` and `plugins` over the canonical `docroot` (for the fence), with
    /// an application for every mount and every plugin not mounted, limited by `defaults`
    /// where the mount says nothing. An application that `previous` already had — the same
    /// name, the same plugin versions, the same limits — keeps its gate (its counts, its
    /// waiting calls, and a stop a reload did not lift).
    pub fn new(
        mounts: Mounts,
        plugins: PluginSet,
        docroot: &Path,
        defaults: &AppDefaults,
        previous: Option<&Table>,
    ) -> Table {
        let fence = Arc::new(Fence::of(&mounts, docroot));
        // (name, generations that identify its code, the mount's own limits and buffering)
        let mut wanted: Vec<(String, u64, Option<&super::mount::Mount>)> = Vec::new();
        for m in mounts.list() {
            let mut gens: Vec<u64> = m.middleware.iter().filter_map(|n| plugins.get(n)).map(|p| p.generation).collect();
            match &m.app {
                MountApp::Plugin(name) => gens.extend(plugins.get(name).map(|p| p.generation)),
                MountApp::Docroot if m.middleware.is_empty() => continue, // plain static files
                MountApp::Docroot => {}
            }
            wanted.push((m.prefix.clone(), identity(&gens), Some(m)));
        }
        for (name, p) in plugins.iter().filter(|(name, _)| !mounts.is_mounted(name)) {
            wanted.push((format!("/{name}.py"), p.generation, None));
        }
        let reachable = wanted.len();
        let apps = wanted
            .into_iter()
            .map(|(name, generation, mount)| {
                let limits = Limits {
                    max_concurrency: mount
                        .and_then(|m| m.max_concurrency)
                        .unwrap_or_else(|| defaults.concurrency(reachable)),
                    queue: mount.and_then(|m| m.queue).unwrap_or(defaults.queue),
                    timeout: mount.and_then(|m| m.timeout).unwrap_or(defaults.timeout),
                    max_abandoned: defaults.threads,
                };
                let request_buffering = mount.is_none_or(|m| m.request_buffering);
                let kept = previous
                    .and_then(|t| t.apps.get(&name))
                    .filter(|a| a.request_buffering == request_buffering && a.gate.is_for(generation, &limits));
                let app = match kept {
                    Some(a) => Arc::clone(a),
                    None => Arc::new(App { request_buffering, gate: Gate::new(name.clone(), limits, generation) }),
                };
                (name, app)
            })
            .collect();
        let resolved =
            mounts.list().iter().map(|m| (m.prefix.clone(), Resolved::of(m, &plugins, &fence, &apps))).collect();
        let scripts = script_handler(&mounts, &plugins);
        Table { mounts, plugins, fence, apps, resolved, no_middleware: Arc::new([]), scripts }
    }
}

/// The plugin that serves scripts (the first by name with a `serves_script` hook) and its
/// first mount's prefix; logs each loaded plugin whose name hides one of its scripts.
fn script_handler(mounts: &Mounts, plugins: &PluginSet) -> Option<(Arc<Plugin>, Option<String>)> {
    let mut handlers: Vec<&Arc<Plugin>> = plugins.values().filter(|p| p.has_scripts()).collect();
    handlers.sort_by(|a, b| a.name.cmp(&b.name));
    let handler = handlers.first()?;
    for other in handlers.iter().skip(1) {
        tracing::warn!("plugin {} also serves scripts; /NAME.py scripts go to {} only", other.name, handler.name);
    }
    for name in plugins.keys().filter(|n| handler.serves_script(n)) {
        tracing::warn!("/{name}.py runs the compiled plugin {name}, not the script {} also has", handler.name);
    }
    let mount = mounts.list().iter().find(|m| m.app == MountApp::Plugin(handler.name.clone()));
    Some((Arc::clone(handler), mount.map(|m| m.prefix.clone())))
}

/// One number for the plugin versions of a pipeline (load generations are unique in the
/// process, so a new copy of any of them gives another number).
fn identity(generations: &[u64]) -> u64 {
    generations.iter().fold(0xcbf2_9ce4_8422_2325, |h, g| (h ^ g).wrapping_mul(0x0100_0000_01b3))
}

/// The directories of the static mounts, each by its canonical path (or, for a directory that
/// does not exist when the table is built, the docroot-joined path until the next reload). A
/// file belongs to the innermost of them that holds it: if that mount has middleware, the file
/// is served only through it; a mount without middleware (or no mount) guards nothing.
#[derive(Debug, Default)]
pub struct Fence {
    /// (directory, the prefix of its mount if that mount has middleware), innermost first.
    dirs: Vec<(PathBuf, Option<String>)>,
}

impl Fence {
    fn of(mounts: &Mounts, docroot: &Path) -> Fence {
        let dirs = mounts
            .list()
            .iter()
            .filter(|m| m.app == MountApp::Docroot)
            .map(|m| {
                let joined = docroot.join(m.prefix.trim_start_matches('/'));
                let guard = (!m.middleware.is_empty()).then(|| m.prefix.clone());
                (std::fs::canonicalize(&joined).unwrap_or(joined), guard)
            })
            .collect();
        Fence::new(dirs)
    }

    /// A fence over `dirs` (directory, guarding prefix), in any order: the innermost is found
    /// first.
    fn new(mut dirs: Vec<(PathBuf, Option<String>)>) -> Fence {
        dirs.sort_by_key(|(d, _)| std::cmp::Reverse(d.components().count()));
        Fence { dirs }
    }

    /// Whether the file at canonical path `real` may be served on a route that came through
    /// the static mount `via` (its prefix), or through none (`None`).
    pub fn allows(&self, real: &Path, via: Option<&str>) -> bool {
        match self.dirs.iter().find(|(dir, _)| real.starts_with(dir)) {
            Some((_, Some(guard))) => via == Some(guard.as_str()),
            Some((_, None)) | None => true,
        }
    }
}

/// The table serving now, swapped whole on SIGHUP (one `ArcSwap`: a request's one atomic load
/// gives it mounts and plugins that belong together).
pub(crate) struct Current(ArcSwap<Table>);

impl Current {
    /// Serving `table`.
    pub fn new(table: Table) -> Current {
        Current(ArcSwap::from_pointee(table))
    }

    /// The table now (a guard: cheap, for one request).
    pub fn load(&self) -> arc_swap::Guard<Arc<Table>> {
        self.0.load()
    }

    /// The table now, as an `Arc` to keep.
    pub fn load_full(&self) -> Arc<Table> {
        self.0.load_full()
    }

    /// Serves `table` from now on.
    pub fn store(&self, table: Table) {
        self.0.store(Arc::new(table));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_innermost_static_mount_decides_who_may_serve_a_file() {
        let dirs = |d: &[(&str, Option<&str>)]| {
            Fence::new(d.iter().map(|(p, g)| (PathBuf::from(p), g.map(str::to_owned))).collect())
        };
        // Outermost first: the fence finds the innermost anyway.
        let f = dirs(&[("/root/private", Some("/private")), ("/root/private/open", None)]);
        let p = Path::new;
        assert!(f.allows(p("/root/private/a.txt"), Some("/private")));
        assert!(!f.allows(p("/root/private/a.txt"), None), "around the mount");
        assert!(!f.allows(p("/root/private/a.txt"), Some("/other")), "through another mount");
        assert!(f.allows(p("/root/private/open/b.txt"), None), "a mount without middleware guards nothing");
        assert!(f.allows(p("/root/privateer/c.txt"), None), "whole components only");
        assert!(f.allows(p("/root/d.txt"), Some("/private")));
    }
}
