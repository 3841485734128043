//! The plugins directory and building a plugin set from it, for the start and for each
//! SIGHUP.
//!
//! [`Registry::stage`] builds a new, immutable [`PluginSet`] from the directory, reusing every
//! plugin whose file and settings did not change; it publishes nothing. The set that serves
//! is part of the routing table (`crate::routing::Table`), swapped in whole by the reload
//! (`crate::reload`) together with the mounts it was checked against. Requests in flight keep
//! the version they started on; new requests get the new one; no request waits for a reload.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::loader::{self, Fingerprint, LoadError, Plugin};
use super::scan::Scan;

/// A test load in a child process before a plugin is loaded here.
#[derive(Debug, Clone, Copy)]
struct TestLoad {
    /// How long the child may take.
    timeout: std::time::Duration,
    /// The scan has other test loads to make.
    more: bool,
}

/// An immutable snapshot: route name → loaded plugin.
pub type PluginSet = HashMap<String, Arc<Plugin>>;

/// What one scan did, for logs and tests.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Newly loaded (name, version).
    pub added: Vec<(String, String)>,
    /// Reloaded because the file changed (name, version).
    pub reloaded: Vec<(String, String)>,
    /// Kept (same file and table) and refreshed by their own `reload` hook.
    pub refreshed: Vec<String>,
    /// Dropped because the file disappeared.
    pub removed: Vec<String>,
    /// Files refused, with why; a previous version of the same name keeps serving.
    pub failed: Vec<(PathBuf, LoadError)>,
    /// Files refused before and unchanged since (not tried again), with why: with `failed`,
    /// every file in the directory that does not serve.
    pub still_refused: Vec<(PathBuf, String)>,
}

/// The plugins directory, and what loading from it remembers between scans.
pub struct Registry {
    dir: PathBuf,
    cache_dir: PathBuf,
    generation: AtomicU64,
    /// Files that failed to load, by fingerprint, so an unchanged bad file is not retried
    /// (and re-logged) on every SIGHUP.
    failed: Mutex<HashMap<PathBuf, (Fingerprint, String, String)>>,
    /// Each plugin's `[plugin.NAME]` table as TOML text, handed to `init` at load. A plugin
    /// whose table changes is loaded afresh on the next scan.
    configs: Mutex<HashMap<String, String>>,
    /// What the last scan saw (an inotify watch on the directory, each file's fingerprint);
    /// the lock serialises scans (SIGHUP during a scan waits for it).
    scanning: Mutex<Scan>,
    /// Test-load each new or changed file in a child process before loading it here, for at
    /// most this long (the single-process server's reloads: a crash in `init` refuses the
    /// file instead of killing the server).
    probe: OnceLock<std::time::Duration>,
    /// A checking process started ahead for the next test load (from `probe_first` on; each
    /// test load uses one up; the next is started in the background at the end of the scan,
    /// or at once when the scan has more test loads to make).
    spare: Arc<Mutex<Option<super::probe::Spare>>>,
    /// Asks the thread that starts spares for one (unset until `probe_first`). One thread
    /// for the registry's life: a spare dies with the thread that started it (it asks the
    /// kernel for SIGKILL when its parent goes, `PR_SET_PDEATHSIG`, which is per thread).
    spare_wanted: OnceLock<crossbeam_channel::Sender<()>>,
    /// Load files where they are, without private copies: the directory is a generation's
    /// snapshot, private to it and never rewritten (a worker process).
    in_place: bool,
}

impl Registry {
    /// An empty registry over `dir`, copying libraries into `cache_dir` to load them.
    pub fn new(dir: PathBuf, cache_dir: PathBuf) -> Self {
        loader::clean_cache(&cache_dir);
        Registry {
            dir,
            cache_dir,
            generation: AtomicU64::new(0),
            failed: Mutex::new(HashMap::new()),
            configs: Mutex::new(HashMap::new()),
            scanning: Mutex::new(Scan::default()),
            probe: OnceLock::new(),
            spare: Arc::new(Mutex::new(None)),
            spare_wanted: OnceLock::new(),
            in_place: false,
        }
    }

    /// A registry over a generation's snapshot `dir`, loading each file where it is (no
    /// private copies: the master made them, and nobody rewrites them).
    pub fn snapshot(dir: PathBuf, cache_dir: PathBuf) -> Self {
        Registry { in_place: true, ..Registry::new(dir, cache_dir) }
    }

    /// From now on, test-load every new or changed file in a child process first, waiting
    /// at most `timeout` for it. Once: a second call changes nothing.
    pub fn probe_first(&self, timeout: std::time::Duration) {
        if self.probe.set(timeout).is_err() {
            return;
        }
        let (tx, rx) = crossbeam_channel::unbounded::<()>();
        let spare = Arc::clone(&self.spare);
        let started = std::thread::Builder::new().name("portico-spare".into()).spawn(move || {
            for () in rx {
                if spare.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                    continue;
                }
                match super::probe::Spare::start() {
                    Ok(s) => *spare.lock().unwrap_or_else(|e| e.into_inner()) = Some(s),
                    Err(e) => tracing::warn!("starting a spare checking process: {e}"),
                }
            }
        });
        match started {
            Ok(_) => {
                let _ = self.spare_wanted.set(tx);
            }
            Err(e) => tracing::warn!("starting the thread of spare checking processes: {e}"),
        }
        self.start_spare();
    }

    /// Has the next spare checking process started, off the caller's path.
    fn start_spare(&self) {
        if let Some(tx) = self.spare_wanted.get() {
            let _ = tx.send(());
        }
    }

    /// Test-loads `path` as `name` with `settings` in a child process, at most `timeout`:
    /// the spare one started ahead when there is one, else a new one. The next spare is
    /// started at once when the scan has more test loads to make (`more`), else when the
    /// scan is over (see [`Registry::stage`]): on a small machine its start would take the
    /// cores the one-plugin reload waits on.
    fn test_load(
        &self,
        name: &str,
        path: &Path,
        settings: &str,
        timeout: std::time::Duration,
        more: bool,
    ) -> Result<super::probe::Loaded, super::probe::ProbeError> {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).take();
        if more {
            self.start_spare();
        }
        match spare {
            Some(spare) => spare.load(name, path, settings, timeout),
            None => super::probe::load_in_child(name, path, settings, timeout),
        }
    }

    /// A new plugin set from the directory, given the set serving now (`current`): loads new
    /// files, reloads changed ones (file or `[plugin.NAME]` settings), drops removed ones. A
    /// file that fails to load keeps its version from `current`, if any. Nothing is
    /// published: the caller checks the set and swaps it in, or drops it.
    pub fn stage(&self, current: &PluginSet) -> (PluginSet, ReloadReport) {
        let mut scan = self.scanning.lock().unwrap_or_else(|e| e.into_inner());
        let old = current;
        let mut next: PluginSet = HashMap::with_capacity(old.len() + 1);
        let mut report = ReloadReport::default();
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        let configs = self.configs.lock().unwrap_or_else(|e| e.into_inner()).clone();

        // 1. What changed (cheap, in order); 2. load what changed, in parallel; 3. the report.
        let mut wanted: Vec<(String, PathBuf, Fingerprint, String)> = Vec::new();
        // A generation's snapshot is nobody's to change: not watched.
        for (name, path, fp) in scan.files(&self.dir, !self.in_place) {
            let previous = old.get(name);
            let config = configs.get(name).map_or("", String::as_str);
            if let Some(p) = previous.filter(|p| p.fingerprint == fp && p.source == path && p.config == config) {
                // Unchanged: the same copy serves on, told to refresh what it runs (a bridge
                // re-reads its scripts), if it asks to be.
                if let Some(abi_stable::std_types::RSome(reload)) = p.module.reload() {
                    match reload() {
                        abi_stable::std_types::ROk(()) => report.refreshed.push(name.to_owned()),
                        abi_stable::std_types::RErr(e) => {
                            let e = crate::escape::controls(e.as_str());
                            tracing::warn!(plugin = %name, "reload failed, it serves what it served: {e}");
                        }
                    }
                }
                next.insert(name.to_owned(), Arc::clone(p));
                continue;
            }
            if let Some((_, _, why)) = failed.get(path).filter(|(f, c, _)| *f == fp && c == config) {
                // Unchanged since it last failed: keep what serves, without a new log line.
                report.still_refused.push((path.to_owned(), why.clone()));
                if let Some(p) = previous {
                    next.insert(name.to_owned(), Arc::clone(p));
                }
                continue;
            }
            wanted.push((name.to_owned(), path.to_owned(), fp, config.to_owned()));
        }
        let probe = self.probe.get().map(|&timeout| TestLoad { timeout, more: wanted.len() > 1 });
        let tested = probe.is_some() && !wanted.is_empty();
        let first = self.generation.fetch_add(wanted.len() as u64, Ordering::Relaxed) + 1;
        // (`available_parallelism` reads the cgroup's CPU quota from /proc and /sys: not for
        // the one changed file of a reload.)
        let threads = match wanted.len() {
            0 | 1 => 1,
            n => std::thread::available_parallelism().map_or(1, |p| p.get()).min(n),
        };
        let share = wanted.len().div_ceil(threads).max(1);
        let loaded: Vec<Result<Plugin, LoadError>> = std::thread::scope(|scope| {
            let jobs: Vec<_> = wanted
                .chunks(share)
                .enumerate()
                .map(|(i, chunk)| {
                    let base = first + (i * share) as u64;
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .enumerate()
                            .map(|(j, (name, path, fp, config))| {
                                self.load_one(name, path, *fp, config, base + j as u64, probe)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            // One result per plugin, in order, even when a thread panicked (each of its
            // plugins is then an error, not an init refusal).
            jobs.into_iter()
                .zip(wanted.chunks(share))
                .flat_map(|(j, chunk)| {
                    j.join().unwrap_or_else(|_| {
                        let failed = || LoadError::Io {
                            what: "load plugin",
                            source: std::io::Error::other("the loading thread panicked"),
                        };
                        chunk.iter().map(|_| Err(failed())).collect()
                    })
                })
                .collect()
        });
        for ((name, path, fp, config), loaded) in wanted.into_iter().zip(loaded) {
            let previous = old.get(&name);
            match loaded {
                Ok(mut plugin) => {
                    plugin.loads = previous.map_or(1, |p| p.loads + 1);
                    failed.remove(&path);
                    let entry = (name.clone(), plugin.version.clone());
                    if previous.is_some() {
                        report.reloaded.push(entry)
                    } else {
                        report.added.push(entry)
                    }
                    next.insert(name, Arc::new(plugin));
                }
                Err(e) => {
                    // Remember only failures that the same bytes will always give; a full
                    // disk or a missing system library may be fixed without touching the file.
                    if e.is_permanent() {
                        failed.insert(path.clone(), (fp, config, e.to_string()));
                    }
                    if let Some(p) = previous {
                        next.insert(name, Arc::clone(p));
                    }
                    report.failed.push((path, e));
                }
            }
        }
        for name in old.keys() {
            if !next.contains_key(name) {
                report.removed.push(name.clone());
            }
        }
        if tested {
            // A test load used the spare up: the next one starts now, after this scan's
            // loads, not beside them (on a small machine its start would take the cores
            // the reload waits on).
            self.start_spare();
        }
        (next, report)
    }

    /// Loads one new or changed file (on one of `stage`'s loading threads): tested in a child
    /// first when `probe` says so, where it is in a generation snapshot, else through a
    /// private copy.
    fn load_one(
        &self,
        name: &str,
        path: &Path,
        fp: Fingerprint,
        config: &str,
        generation: u64,
        probe: Option<TestLoad>,
    ) -> Result<Plugin, LoadError> {
        let Some(TestLoad { timeout, more }) = probe else {
            return if self.in_place {
                loader::load_in_place(name, path, generation, config)
            } else {
                loader::load(name, path, &self.cache_dir, generation, config)
            };
        };
        // A file the child's loader refused is loaded here anyway, for its typed error
        // (refusing is safe); one that crashed or hung the child is not. The child tests a
        // copy, and the copy is what is loaded here: a file replaced in between cannot be
        // loaded untested. The plugin is then known by the file it came from (its path and
        // fingerprint, to tell later whether that file changed).
        let copy = self.cache_dir.join(format!(".probe-{name}-{}-{generation}.so", std::process::id()));
        let loaded = fs::create_dir_all(&self.cache_dir)
            .and_then(|()| fs::copy(path, &copy))
            .map_err(|source| LoadError::Io { what: "copy plugin file for its test load", source })
            .and_then(|_| match self.test_load(name, &copy, config, timeout, more) {
                Err(super::probe::ProbeError::Died(why)) => Err(LoadError::Probe(why)),
                _ => Ok(()),
            })
            // The tested copy is private already: loaded where it is (no second copy).
            .and_then(|()| loader::load_in_place(name, &copy, generation, config))
            .map(|mut plugin| {
                plugin.source = path.to_owned();
                plugin.fingerprint = fp;
                plugin
            });
        let _ = fs::remove_file(&copy);
        loaded
    }

    /// The configuration tables in use (to put them back when a reload is refused).
    pub fn configs(&self) -> HashMap<String, String> {
        self.configs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets the plugins' configuration tables (TOML text by plugin name) for the next scans.
    pub fn set_configs(&self, configs: HashMap<String, String>) {
        *self.configs.lock().unwrap_or_else(|e| e.into_inner()) = configs;
    }

    /// The plugins directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Logs a scan's outcome: one line per plugin loaded, reloaded, removed or refused.
pub fn log_report(report: &ReloadReport, startup: bool) {
    for (name, version) in &report.added {
        tracing::info!(plugin = %name, version = %version, "loaded plugin {name} {version}");
    }
    for (name, version) in &report.reloaded {
        tracing::info!(plugin = %name, version = %version, "reloaded plugin {name} {version}");
    }
    for name in &report.refreshed {
        tracing::info!(plugin = %name, "plugin {name} refreshed its code in place");
    }
    for name in &report.removed {
        tracing::info!(plugin = %name, "removed plugin {name}");
    }
    for (path, err) in &report.failed {
        let name = path.file_name().and_then(|n| n.to_str()).and_then(loader::route_name).unwrap_or("?");
        match err {
            LoadError::Incompatible { full, .. } => {
                tracing::error!(plugin = %name, file = %path.display(), "plugin {name} refused: {err}");
                tracing::debug!(plugin = %name, "abi_stable report for {name}:\n{full}");
            }
            _ => tracing::error!(plugin = %name, file = %path.display(), "failed to load plugin {name}: {err}"),
        }
    }
    if !startup
        && report.added.is_empty()
        && report.reloaded.is_empty()
        && report.refreshed.is_empty()
        && report.removed.is_empty()
        && report.failed.is_empty()
    {
        tracing::info!("reload: no plugin changed");
    }
}
