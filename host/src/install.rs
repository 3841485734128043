//! `portico install LIB.so [--plugins DIR] [--pid-file FILE] [--config FILE]`: puts a built
//! plugin into a plugins directory safely and has the server load it.
//!
//! 1. It is copied into the plugins directory under a hidden temporary name (the server's
//!    scan skips names starting with `.`) and flushed.
//! 2. That copy is test-loaded in a child process (as `portico check` does), with its
//!    `[plugin.NAME]` table when a configuration file is given: a library that is not a
//!    plugin, was built against another `portico-api` 0.minor, refuses its settings, or
//!    crashes while loading is refused here, and nothing is installed.
//! 3. Its name is the one it exports (`export_app!(name: …)`), not the file's: a
//!    `target/release/libhello.so` of a crate named anything installs as `NAME.so`. The
//!    tested copy is renamed over `NAME.so`: a server reading the directory sees the old file
//!    or the new one, never half of one, and what it loads is what was tested.
//! 4. SIGHUP goes to the pid in the pid file (`--pid-file`, or the configuration's
//!    `pid_file`): the server reloads without dropping a request, and keeps the previous
//!    version serving if this one fails there.
//!
//! `--plugins` and `--pid-file` default to what the configuration file (and `PORTICO_*`)
//! says, as for the server itself.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::settings::args::parse_subcommand;

use crate::plugin::{loader, probe};
use crate::settings::file as config_file;

/// `portico install`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "portico install",
    about = "Test-load a plugin library, install it as PLUGINS/NAME.so (NAME: the name it exports) \
             by rename, and send SIGHUP to the server.",
    after_help = "Exit status: 0 installed (and signalled, with a pid file), 1 refused or failed, \
                  2 a bad command line or configuration file."
)]
struct InstallArgs {
    /// The built library (`target/release/libNAME.so`).
    library: PathBuf,
    /// The plugins directory (default: the configuration's, else `plugins`).
    #[arg(long, value_name = "DIR")]
    plugins: Option<PathBuf>,
    /// The running server's pid file (`portico --pid-file FILE`); without one (here or in the
    /// configuration) nothing is signalled.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// The server's configuration file: the plugin is test-loaded with its `[plugin.NAME]`
    /// table, and the plugins directory and pid file default to the file's.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Seconds the test load may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    timeout: f64,
}

/// What went wrong: the message, and the exit status.
struct Failed(String, i32);

/// Runs `portico install ARGS...` (`args` without the `install` word); the exit status.
pub fn run(args: Vec<OsString>) -> i32 {
    let args: InstallArgs = match parse_subcommand("portico install", args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match install(&args) {
        Ok(lines) => {
            let mut out = std::io::stdout().lock();
            for line in lines {
                let _ = writeln!(out, "{line}");
            }
            0
        }
        Err(Failed(why, code)) => {
            eprintln!("portico install: error: {why}");
            code
        }
    }
}

fn install(args: &InstallArgs) -> Result<Vec<String>, Failed> {
    let library = std::path::absolute(&args.library).unwrap_or_else(|_| args.library.clone());
    if !library.is_file() {
        return Err(Failed(format!("{}: no such file", library.display()), 1));
    }
    // The server's own reading of its settings: file, PORTICO_* and these flags.
    let mut argv: Vec<OsString> = vec!["portico".into()];
    if let Some(c) = &args.config {
        argv.extend(["--config".into(), c.clone().into_os_string()]);
    }
    if let Some(p) = &args.plugins {
        argv.extend(["--plugins".into(), p.clone().into_os_string()]);
    }
    let (server, config) = config_file::parse_args(argv).map_err(|e| Failed(e.to_string(), 2))?;
    loader::set_facts(loader::Facts::of(&server, config.as_ref()));
    let settings = |name: &str| config.as_ref().map(|c| c.plugin_config(name)).unwrap_or_default();
    let timeout = Duration::from_secs_f64(args.timeout.max(0.1));

    // The copy that will be installed is the one tested: a rebuild meanwhile changes nothing.
    let dir = &server.plugins;
    std::fs::create_dir_all(dir).map_err(|e| Failed(format!("making {}: {e}", dir.display()), 1))?;
    let file_name = library.file_name().and_then(|n| n.to_str()).unwrap_or("plugin").to_owned();
    let temp = dir.join(format!(".{file_name}.install-{}", std::process::id()));
    let staged = stage(&library, &temp)
        .and_then(|()| test_and_rename(&library, &temp, dir, timeout, &|name: &str| settings(name), config.as_ref()));
    if staged.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    let (name, target, loaded) = staged?;
    let kind = if loaded.middleware { "middleware" } else { "application" };
    let mut lines = vec![format!("installed {name} {} ({kind}) as {}", loaded.version, target.display())];
    match args.pid_file.as_ref().or(server.pid_file.as_ref()) {
        Some(pid_file) => {
            let pid = signal_reload(pid_file).map_err(|e| Failed(format!("installed, but {e}"), 1))?;
            lines.push(format!("SIGHUP sent to portico {pid}: it loads {name} now"));
        }
        None => lines.push("no --pid-file: send the server SIGHUP to load it".to_owned()),
    }
    Ok(lines)
}

/// Copies `library` to `temp` (a hidden name in the plugins directory, which the server's
/// scan skips) and flushes it.
fn stage(library: &Path, temp: &Path) -> Result<(), Failed> {
    std::fs::copy(library, temp).map_err(|e| Failed(format!("copying to {}: {e}", temp.display()), 1))?;
    std::fs::File::open(temp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Failed(format!("flushing {}: {e}", temp.display()), 1))
}

/// Test-loads the staged copy `temp` of `library` in a child and renames it into `dir` under
/// the name it exports: (name, installed path, what loaded).
///
/// The first test load needs a name for its settings: the file's (`libmy_app.so` → `my_app`,
/// or `my-app` when only that has a `[plugin.NAME]` table, as `portico new my-app` makes);
/// then the exported name's, if its table differs.
fn test_and_rename(
    library: &Path,
    temp: &Path,
    dir: &Path,
    timeout: Duration,
    settings: &dyn Fn(&str) -> String,
    config: Option<&config_file::Loaded>,
) -> Result<(String, PathBuf, probe::Loaded), Failed> {
    let file_name = library.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let stem = loader::route_name(file_name).unwrap_or("plugin").to_owned();
    let dashed = stem.replace('_', "-");
    let has_table = |n: &str| config.is_some_and(|c| c.file.plugin.contains_key(n));
    let guess = if !has_table(&stem) && has_table(&dashed) { dashed } else { stem };
    let test = |name: &str| {
        probe::load_in_child(name, temp, &settings(name), timeout).map_err(|e| {
            let why = e.to_string();
            let placed = loader::init_refusal(&why)
                .and_then(|w| config.and_then(|c| c.plugin_init_error(name, w)))
                .map_or(why, |e| e.to_string());
            Failed(format!("{} was not installed: {placed}", library.display()), 1)
        })
    };
    let mut loaded = test(&guess)?;
    let name = loaded.module_name.clone();
    if loader::route_name(&format!("{name}{}", std::env::consts::DLL_SUFFIX)) != Some(name.as_str()) {
        return Err(Failed(format!("the plugin exports the name {name:?}, which cannot be a plugin file's name"), 1));
    }
    if name != guess && settings(&name) != settings(&guess) {
        loaded = test(&name)?;
    }
    let target = dir.join(format!("{name}{}", std::env::consts::DLL_SUFFIX));
    std::fs::rename(temp, &target).map_err(|e| Failed(format!("renaming to {}: {e}", target.display()), 1))?;
    Ok((name, target, loaded))
}

/// Sends SIGHUP to the pid written in `pid_file`; the pid.
fn signal_reload(pid_file: &Path) -> Result<i32, String> {
    let text =
        std::fs::read_to_string(pid_file).map_err(|e| format!("reading the pid file {}: {e}", pid_file.display()))?;
    // A positive pid only: kill(-1) would signal every process this user may signal.
    let pid = text
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|&p| p > 0)
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| format!("the pid file {} holds no pid: {:?}", pid_file.display(), text.trim()))?;
    // A stale pid file may name a process that reused the pid: SIGHUP would end most
    // programs. Where /proc says what runs there, it must be portico.
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", pid.as_raw_nonzero()));
    if let Ok(comm) = comm
        && comm.trim() != "portico"
    {
        return Err(format!(
            "the pid file {} names process {} ({}), not portico: a stale pid file? nothing signalled",
            pid_file.display(),
            pid.as_raw_nonzero(),
            comm.trim()
        ));
    }
    rustix::process::kill_process(pid, rustix::process::Signal::HUP)
        .map_err(|e| format!("sending SIGHUP to {} (from {}): {e}", pid.as_raw_nonzero(), pid_file.display()))?;
    Ok(pid.as_raw_nonzero().get())
}
