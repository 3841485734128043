//! `portico check [--config FILE] [flags]`: the dry run an operator runs before `kill -HUP`.
//!
//! It reads the configuration exactly as the server would (flags, `PORTICO_*`, the file),
//! checks the docroot, then test-loads every plugin of the plugins directory with its
//! `[plugin.NAME]` settings — each **in a child process** (`portico check --load-many`, a
//! batch of one, settings on stdin), so a plugin that crashes or hangs while loading cannot take the
//! checker down — and finally checks the mounts against what loaded. One line per finding on
//! stdout; exit status 0 when everything would load, 1 otherwise, 2 for a configuration file
//! that does not parse.

use std::collections::HashMap;
use std::ffi::OsString;
use std::time::Duration;

use crate::plugin::{probe, scan};
use crate::routing::mount::{Mounts, Named};
use crate::settings::file as config_file;

/// `println!` that ends the process quietly when stdout is gone (`portico check | head -3`),
/// as a Unix filter does, instead of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// Runs `portico check ARGS...` (`args` without the `check` word); the process exit status.
pub fn run(args: Vec<OsString>) -> i32 {
    if args.first().is_some_and(|a| a == "--load-many") {
        return probe::load_many(&args[1..]);
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        say!(
            "Check a configuration without serving: the file, the docroot, every plugin (each loaded in a \
             child process, so one that crashes cannot take this down) and the mounts.\n\n\
             Usage: portico check [OPTIONS]\n\n\
             The options are the server's (portico --help): --config, --plugins, --docroot, ...\n\
             Exit status: 0 when all is good, 1 when a problem was found, 2 for an unusable command line \
             or configuration file."
        );
        return 0;
    }
    let mut argv = vec![OsString::from("portico")];
    argv.extend(args);
    let (args, config) = match config_file::parse_args(argv) {
        Ok(parsed) => parsed,
        Err(e) => {
            say!("error: {e}");
            return 2;
        }
    };
    crate::plugin::loader::set_facts(crate::plugin::loader::Facts::of(&args, config.as_ref()));
    let mut ok = true;
    match &config {
        Some(c) => say!("ok: configuration {}", c.path.display()),
        None => say!("ok: no configuration file (built-in defaults, flags and PORTICO_* variables)"),
    }
    // The server's own check, and its words.
    match crate::settings::docroot_dir(&args.docroot) {
        Ok(dir) => say!("ok: docroot {}", dir.display()),
        Err(why) => {
            say!("error: {why}");
            ok = false;
        }
    }
    let mut kinds: HashMap<String, bool> = HashMap::new();
    let mut refused: Vec<String> = Vec::new();
    let files = scan::plugin_files(&args.plugins);
    if files.is_empty() {
        say!("warning: no plugins in {}", args.plugins.display());
    }
    let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    let timeout = Duration::from_secs_f64(args.worker_ready_timeout);
    for (name, path) in files {
        let settings = config.as_ref().map(|c| c.plugin_config(&name)).unwrap_or_default();
        match probe::load_in_child(&name, &path, &settings, timeout) {
            Ok(probe::Loaded { version, middleware, .. }) => {
                let kind = if middleware { "middleware" } else { "application" };
                say!("ok: plugin {name} {version} ({kind}) from {}", path.display());
                kinds.insert(name, middleware);
            }
            Err(why) => {
                // A refusal of its [plugin.NAME] table is placed at the file's line.
                let why = why.to_string();
                match crate::plugin::loader::init_refusal(&why)
                    .zip(config.as_ref())
                    .and_then(|(w, c)| c.plugin_init_error(&name, w))
                {
                    Some(e) => say!("error: {e}"),
                    None => say!("error: plugin {name} from {}: {why}", path.display()),
                }
                refused.push(name);
                ok = false;
            }
        }
    }
    if let Some(c) = &config {
        for unused in c.file.plugin.keys().filter(|n| !names.contains(n)) {
            // A typo (`[plugin.ip_filtr]`) would leave the real plugin on its defaults.
            say!(
                "error: {}",
                c.plugin_table_error(
                    unused,
                    format!(
                        "[plugin.{unused}] has settings but there is no plugin {unused} in {}",
                        args.plugins.display()
                    )
                )
            );
            ok = false;
        }
        // One error per mistake: a mount naming a plugin refused above is that refusal.
        let named = |n: &str| match kinds.get(n) {
            Some(true) => Some(Named::Middleware),
            Some(false) => Some(Named::Application),
            None => refused.iter().any(|r| r == n).then_some(Named::AlreadyReported),
        };
        match Mounts::validate_with(c, named) {
            Ok(()) if refused.is_empty() => {
                for m in Mounts::from_config(c).list() {
                    say!("ok: mount {} → {} (middleware: {})", m.prefix, m.app, m.middleware.join(", "));
                }
            }
            Ok(()) => {}
            Err(e) => {
                say!("error: {e}");
                ok = false;
            }
        }
    }
    if ok {
        say!("portico check: all good");
        0
    } else {
        say!("portico check: problems found (the running server, if any, is unaffected)");
        1
    }
}
