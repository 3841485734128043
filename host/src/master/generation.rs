//! A generation's plugins and configuration: a snapshot of the plugins directory (and a copy
//! of the configuration file's text) that the master makes before starting a generation of
//! workers (`CACHE/master-PID/generations/ID/`), each file test-loaded in a child
//! process with its `[plugin.NAME]` settings ([`crate::plugin::probe`]). Workers load from
//! the snapshot, never from the live directory, so a worker started later in the same
//! generation (after a crash) runs exactly what the generation's first workers ran.
//!
//! Rules, as in the single-process reload: a file refused at start is skipped with a log line;
//! on a reload, a refused file keeps the previous generation's copy (the others move on),
//! unless the configuration names the plugin (a mount or a `[plugin.NAME]` table), which
//! refuses the whole generation. The mounts are checked against what the snapshot holds.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::plugin::{probe, scan};
use crate::routing::mount::{Mounts, Named};
use crate::settings::file::{ConfigError, Loaded};

/// The configuration file's copy in a snapshot (not a plugin name: it does not end in `.so`).
pub const CONFIG_COPY: &str = "portico.toml";

/// One plugin in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The version it reported.
    pub version: String,
    /// Middleware rather than an application.
    pub middleware: bool,
    /// Its source file and settings when copied: a generation whose stamp differs from the
    /// previous generation's loaded something new.
    pub stamp: Stamp,
    /// Generations that loaded something new for it, this one included (1 at the start).
    pub loads: u64,
    /// When the generation that loaded this file and these settings first was made.
    pub loaded_at: SystemTime,
}

/// What a plugin's load depends on: its file's length and modification time, its settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    settings: String,
}

/// A generation's plugin files.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The generation's number (1 at start).
    pub id: u64,
    /// The directory its workers load from.
    pub dir: PathBuf,
    /// What it holds, by route name.
    pub plugins: BTreeMap<String, Entry>,
}

/// What making a snapshot found besides the snapshot.
#[derive(Debug, Default)]
pub struct Findings {
    /// Files refused, with why (the log's and the status page's words).
    pub refused: Vec<String>,
    /// Plugins whose new file was refused and whose previous copy the generation keeps.
    pub kept_previous: Vec<String>,
}

/// Why a generation cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The configuration does not fit the plugins: a mount's plugin is missing, refused (by
    /// its `init`: placed at its `[plugin.NAME]` table) or of the wrong kind.
    #[error(transparent)]
    Config(ConfigError),
    /// Anything else: a directory or a file could not be made or copied, a plugin the
    /// configuration names was refused on a reload.
    #[error("{0}")]
    Other(String),
}

impl From<String> for PrepareError {
    fn from(s: String) -> PrepareError {
        PrepareError::Other(s)
    }
}

/// Makes generation `id`'s snapshot under `root` from `plugins_dir`, test-loading each file
/// (at most `timeout` each, a few at a time); `previous` is the generation serving now (none
/// at start).
///
/// # Errors
/// Why the generation cannot start (the directory cannot be made, a plugin the configuration
/// names was refused on a reload, the mounts do not check out); its directory is removed.
pub fn prepare(
    id: u64,
    root: &Path,
    plugins_dir: &Path,
    config: Option<&Loaded>,
    previous: Option<&Snapshot>,
    timeout: Duration,
) -> Result<(Snapshot, Findings), PrepareError> {
    let dir = root.join(id.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| PrepareError::Other(format!("making {}: {e}", dir.display())))?;
    let result = fill(id, &dir, plugins_dir, config, previous, timeout);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn fill(
    id: u64,
    dir: &Path,
    plugins_dir: &Path,
    config: Option<&Loaded>,
    previous: Option<&Snapshot>,
    timeout: Duration,
) -> Result<(Snapshot, Findings), PrepareError> {
    if let Some(c) = config {
        // What the generation's workers read instead of the file (which may change).
        std::fs::write(dir.join(CONFIG_COPY), c.text()).map_err(|e| format!("copying the configuration: {e}"))?;
    }
    let files = scan::plugin_files(plugins_dir);
    let settings = |name: &str| config.map(|c| c.plugin_config(name)).unwrap_or_default();
    // Copy first, then test the copy: what was tested is byte for byte what the workers load.
    let mut probed: Vec<(String, Result<Entry, String>)> = Vec::with_capacity(files.len());
    let mut items = Vec::with_capacity(files.len());
    // Each file's stamp, taken before its copy (so it describes what was copied, or older).
    let mut stamps: BTreeMap<String, Stamp> = BTreeMap::new();
    for (name, src) in &files {
        let copy = dir.join(format!("{name}.so"));
        let meta = std::fs::metadata(src).ok();
        let settings = settings(name);
        let stamp = Stamp {
            len: meta.as_ref().map_or(0, std::fs::Metadata::len),
            modified: meta.and_then(|m| m.modified().ok()),
            settings: settings.clone(),
        };
        match std::fs::copy(src, &copy) {
            Ok(_) => {
                stamps.insert(name.clone(), stamp);
                items.push(probe::Item { name: name.clone(), path: copy, settings, in_place: true });
            }
            Err(e) => probed.push((name.clone(), Err(format!("copying {}: {e}", src.display())))),
        }
    }
    let now = SystemTime::now();
    // In a few children (one per core), each plugin alone only when a child dies.
    for (item, result) in items.iter().zip(probe::load_many_in_child(&items, timeout)) {
        let stamp = stamps.remove(&item.name).unwrap_or_default();
        // Loaded anew when its file or its settings changed since the previous generation.
        let (loads, loaded_at) = match previous.and_then(|p| p.plugins.get(&item.name)) {
            Some(old) if old.stamp == stamp => (old.loads, old.loaded_at),
            Some(old) => (old.loads + 1, now),
            None => (1, now),
        };
        let result = result
            .map(|p| Entry { version: p.version, middleware: p.middleware, stamp, loads, loaded_at })
            .map_err(|e| e.to_string());
        probed.push((item.name.clone(), result));
    }
    let named: HashSet<String> = config
        .map(|c| {
            c.file
                .plugin
                .keys()
                .cloned()
                .chain(c.file.mount.iter().flat_map(|m| m.app.iter().chain(&m.middleware).map(|n| n.get_ref().clone())))
                .collect()
        })
        .unwrap_or_default();
    let mut plugins = BTreeMap::new();
    let mut findings = Findings::default();
    let mut fatal = Vec::new();
    let mut refusals: BTreeMap<String, String> = BTreeMap::new();
    for (name, result) in probed {
        let copy = dir.join(format!("{name}.so"));
        match result {
            Ok(entry) => {
                plugins.insert(name, entry);
            }
            Err(why) => {
                let _ = std::fs::remove_file(&copy);
                let line = format!("plugin {name}: {why}");
                refusals.insert(name.clone(), why.clone());
                let kept = previous.and_then(|p| p.plugins.get(&name).map(|e| (p.dir.join(format!("{name}.so")), e)));
                if previous.is_some() && named.contains(&name) {
                    // Its old version with the new settings and mounts, or the new mounts
                    // without it, could serve what the operator meant to filter.
                    fatal.push(line.clone());
                } else if let Some((old, entry)) = kept {
                    std::fs::copy(&old, &copy).map_err(|e| format!("keeping the previous {name}: {e}"))?;
                    plugins.insert(name.clone(), entry.clone());
                    findings.kept_previous.push(name);
                }
                findings.refused.push(line);
            }
        }
    }
    if !fatal.is_empty() {
        return Err(PrepareError::Other(format!("a plugin the configuration names was refused: {}", fatal.join("; "))));
    }
    if let Some(c) = config
        && let Err(e) = Mounts::validate_with(c, |n| match (plugins.get(n), refusals.get(n)) {
            (Some(e), _) if e.middleware => Some(Named::Middleware),
            (Some(_), _) => Some(Named::Application),
            (None, why) => why.map(|w| Named::Refused(w.clone())),
        })
    {
        // The error names the refusal of a plugin a mount needs (one line per mistake); the
        // other refusals are logged, as on a generation that starts.
        for line in &findings.refused {
            tracing::warn!("{line}");
        }
        return Err(PrepareError::Config(e));
    }
    Ok((Snapshot { id, dir: dir.to_owned(), plugins }, findings))
}
