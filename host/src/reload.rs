//! Loading what serves: the plugins and the mounts, at start ([`initial`]) and on SIGHUP
//! ([`reload`]), published as one [`Table`] so a request never sees mounts and plugins that do
//! not belong together.
//!
//! A reload is all or nothing for what the configuration names: the file is re-read; the
//! plugins are loaded into a staged set (a changed file or `[plugin.NAME]` table gives a fresh
//! copy; a file that fails keeps its old version); if a plugin the configuration names failed,
//! or the mounts do not check out against the staged set, nothing is applied and the old table
//! keeps serving. `[server]` settings need a restart (a warning says so). The outcome is
//! recorded in [`Stats`] for the admin pages.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use crate::metrics::counters::{ReloadOutcome, Stats};
use crate::plugin::loader;
use crate::plugin::registry::{self, PluginSet, Registry};
use crate::routing::mount::{Mounts, Named};
use crate::routing::{Current, Table};
use crate::settings::AppDefaults;
use crate::settings::file::{ConfigError, Loaded};

/// What a table is built with besides the configuration file: the canonical docroot (for the
/// static mounts' fence) and the server-wide limits of applications.
#[derive(Debug, Clone)]
pub struct Site {
    /// The canonical docroot.
    pub docroot: PathBuf,
    /// `--app-timeout`, `--app-max-concurrency`, `--app-queue`, and the worker count.
    pub apps: AppDefaults,
}

/// Each `[plugin.NAME]` table as TOML text, by plugin name.
fn plugin_configs(c: &Loaded) -> HashMap<String, String> {
    c.file.plugin.keys().map(|name| (name.clone(), c.plugin_config(name))).collect()
}

/// The table to start with: every plugin of the directory (with its settings), and the mounts
/// of `config`, checked against them.
///
/// # Errors
/// A mount names a plugin that did not load, or an application where middleware belongs.
/// The plugin files that do not serve after a scan, with why: `FILE: reason` each.
fn refused_lines(report: &registry::ReloadReport) -> Vec<String> {
    let mut lines: Vec<String> = report.failed.iter().map(|(path, e)| format!("{}: {e}", path.display())).collect();
    lines.extend(report.still_refused.iter().map(|(path, why)| format!("{}: {why}", path.display())));
    lines.sort();
    lines
}

/// [`initial`]'s table and the plugin files it refused (for the status page).
pub fn initial(registry: &Registry, config: Option<&Loaded>, site: &Site) -> Result<(Table, Vec<String>), ConfigError> {
    if let Some(c) = config {
        registry.set_configs(plugin_configs(c));
    }
    let (plugins, report) = registry.stage(&PluginSet::new());
    registry::log_report(&report, true);
    warn_unused_tables(config, &plugins, &report);
    let refused = refused_lines(&report);
    let mounts = match config {
        Some(c) => {
            // A mount naming a refused plugin is that refusal (placed at its table when its
            // init refused the settings), not "not loaded".
            Mounts::validate_with(c, |n| match plugins.get(n) {
                Some(p) if p.is_middleware() => Some(Named::Middleware),
                Some(_) => Some(Named::Application),
                None => report
                    .failed
                    .iter()
                    .find(|(path, _)| path.file_name().and_then(|f| f.to_str()).and_then(loader::route_name) == Some(n))
                    .map(|(_, e)| Named::Refused(e.to_string())),
            })?;
            Mounts::from_config(c)
        }
        None => Mounts::default(),
    };
    for m in mounts.list() {
        tracing::info!("mount {} → {} (middleware: {})", m.prefix, m.app, m.middleware.join(", "));
    }
    Ok((Table::new(mounts, plugins, &site.docroot, &site.apps, None), refused))
}

/// A `[plugin.NAME]` table for a plugin the directory does not have (a typo such as
/// `[plugin.ip_filtr]` leaves the real plugin on its defaults): a warning (`portico check`
/// makes it an error).
fn warn_unused_tables(config: Option<&Loaded>, plugins: &PluginSet, report: &registry::ReloadReport) {
    let Some(c) = config else { return };
    // The scan just made: every file serves, or was refused (now or before).
    let refused = report.failed.iter().map(|(p, _)| p).chain(report.still_refused.iter().map(|(p, _)| p));
    let files: Vec<&str> =
        refused.filter_map(|p| p.file_name().and_then(|f| f.to_str()).and_then(loader::route_name)).collect();
    for name in c.file.plugin.keys().filter(|n| !plugins.contains_key(*n) && !files.contains(&n.as_str())) {
        tracing::warn!(
            "{}",
            c.plugin_table_error(name, format!("[plugin.{name}] has settings but there is no plugin {name}"))
        );
    }
}

/// SIGHUP: re-reads the configuration file (if any), stages the plugins with their new
/// settings, and publishes the new table if everything the configuration names checks out.
pub fn reload(registry: &Registry, routes: &Current, stats: &Stats, config: &mut Option<Loaded>, site: &Site) {
    let next = match config.as_ref().map(|c| Loaded::read(&c.path)) {
        None => None,
        Some(Ok(next)) => Some(next),
        Some(Err(e)) => {
            tracing::error!("SIGHUP: configuration not reloaded, the previous one keeps serving: {e}");
            let summary = "nothing applied: the configuration file was refused".to_owned();
            stats.record_reload(ReloadOutcome::Failed, summary, Some(e.to_string()));
            return;
        }
    };
    tracing::info!("SIGHUP: rescanning {}", registry.dir().display());
    let old_configs = registry.configs();
    if let Some(next) = &next {
        if let Some(old) = config.as_ref()
            && old.file.server != next.file.server
        {
            tracing::warn!("SIGHUP: [server] settings changed in {}; they take effect on restart", next.path.display());
        }
        registry.set_configs(plugin_configs(next));
    }
    let current = routes.load_full();
    let (staged, report) = registry.stage(&current.plugins);
    let Some(next) = next else {
        // Published before it is logged: whoever reads the log line finds it serving.
        routes.store(Table::new(current.mounts.clone(), staged, &site.docroot, &site.apps, Some(&current)));
        registry::log_report(&report, false);
        record(stats, &report, false, None);
        return;
    };
    // A plugin the configuration names (in a mount or a [plugin.NAME] table) that failed to
    // load refuses the whole reload: its old version with the new mounts, or the new mounts
    // without it, could serve what the operator meant to filter.
    let named: HashSet<&str> = next
        .file
        .plugin
        .keys()
        .map(String::as_str)
        .chain(next.file.mount.iter().flat_map(|m| m.app.iter().chain(&m.middleware).map(|n| n.get_ref().as_str())))
        .collect();
    let refused: Vec<String> = report
        .failed
        .iter()
        .filter(|(path, _)| {
            path.file_name().and_then(|n| n.to_str()).and_then(loader::route_name).is_some_and(|n| named.contains(n))
        })
        .map(|(path, e)| format!("{}: {e}", path.display()))
        .collect();
    let checked = if refused.is_empty() {
        Mounts::validate(&next, &staged).map_err(|e| e.to_string())
    } else {
        Err(format!("a plugin the configuration names did not load: {}", refused.join("; ")))
    };
    // On the status page the refusals are listed once, with the reason after them.
    let refusal = |e: &str| {
        if refused.is_empty() {
            format!("reload refused: {e}")
        } else {
            "reload refused: a plugin the configuration names did not load (above)".to_owned()
        }
    };
    match checked {
        Ok(()) => {
            warn_unused_tables(Some(&next), &staged, &report);
            routes.store(Table::new(Mounts::from_config(&next), staged, &site.docroot, &site.apps, Some(&current)));
            registry::log_report(&report, false);
            tracing::info!("SIGHUP: configuration {} reloaded", next.path.display());
            *config = Some(next);
            stats.config_reloaded(std::time::SystemTime::now());
            record(stats, &report, true, None);
        }
        Err(e) => {
            registry::log_report(&report, false);
            registry.set_configs(old_configs);
            tracing::error!("SIGHUP: reload refused, the previous configuration and plugins keep serving: {e}");
            let nothing = registry::ReloadReport { failed: report.failed, ..Default::default() };
            record(stats, &nothing, false, Some(refusal(&e)));
        }
    }
}

/// Records a reload's outcome: `ok` when nothing was refused; `partial` when something was
/// refused and something else applied; `failed` when nothing new was applied.
fn record(stats: &Stats, report: &registry::ReloadReport, config_applied: bool, refusal: Option<String>) {
    stats.set_refused(refused_lines(report));
    let mut errors: Vec<String> = report.failed.iter().map(|(path, e)| format!("{}: {e}", path.display())).collect();
    errors.extend(refusal);
    let changed = !(report.added.is_empty() && report.reloaded.is_empty() && report.removed.is_empty());
    let outcome = match (errors.is_empty(), changed || config_applied) {
        (true, _) => ReloadOutcome::Ok,
        (false, true) => ReloadOutcome::Partial,
        (false, false) => ReloadOutcome::Failed,
    };
    let mut summary = format!(
        "{} loaded, {} reloaded, {} removed, {} refused",
        report.added.len(),
        report.reloaded.len(),
        report.removed.len(),
        report.failed.len()
    );
    if config_applied {
        summary.push_str("; configuration reloaded");
    }
    let error = (!errors.is_empty()).then(|| errors.join("\n"));
    stats.record_reload(outcome, summary, error);
}
