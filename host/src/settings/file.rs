//! The configuration file (`--config portico.toml`): server settings, mounts and per-plugin
//! settings, in TOML (serde).
//!
//! Precedence, per setting: command-line flag > `PORTICO_*` environment variable > file >
//! built-in default. The `[server]` keys are not a second list of settings: each is checked
//! against the command line's definition ([`Args`]) — a key is a long flag with `_` for `-`
//! (`keep_alive_timeout = 10` is `--keep-alive-timeout 10`), its value is checked by that
//! flag's own parser, and the file's values are merged by handing clap the file's values as
//! arguments for every setting the command line and the environment left at its default.
//!
//! ```toml
//! [server]
//! bind = ["127.0.0.1:8000"]
//! docroot = "html"             # relative paths are relative to this file's directory
//!
//! [[mount]]
//! prefix = "/api"              # SCRIPT_NAME; PATH_INFO is the rest of the path
//! app = "dispatch"             # a plugin in the plugins directory
//! middleware = ["ip_filter", "headers"]   # outermost first
//!
//! [plugin.ip_filter]           # handed to the plugin's init, as TOML text
//! allow = ["127.0.0.0/8"]
//! ```
//!
//! Every error names the file, and the line and column (toml's spans).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::ops::Range;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches, ValueHint};
use serde::Deserialize;
use toml::Spanned;

use super::Args;

/// Set by the master for a worker process: the copy of the configuration file its generation
/// was checked with (read instead of the file itself; see [`Loaded::read_copy`]).
pub const CONFIG_COPY_ENV: &str = "PORTICO_WORKER_CONFIG_COPY";

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, or a table Portico does not know (the message has the line and
    /// column).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line, column and the offending text.
        message: String,
    },
    /// A setting is valid TOML but not a valid value (`bind = ["nonsense"]`, a bad mount, an
    /// unknown `[server]` key).
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column (characters).
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// Clap refused the merged settings.
    #[error("{path}: {message}")]
    Setting {
        /// The file.
        path: PathBuf,
        /// Clap's message, naming the flag the file's key stands for.
        message: String,
    },
}

/// One `[[mount]]`: a URL prefix served by an application behind middleware.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// The URL path prefix (`SCRIPT_NAME`): starts with `/`, no trailing `/` except `/` itself.
    pub prefix: Spanned<String>,
    /// The plugin that answers (exactly one of `app` and `static = true`).
    pub app: Option<Spanned<String>>,
    /// The docroot answers, behind the middleware: `/prefix/x` is the file it would be without
    /// the mount.
    #[serde(default, rename = "static")]
    pub static_files: bool,
    /// Middleware plugins, outermost first.
    #[serde(default)]
    pub middleware: Vec<Spanned<String>>,
    /// Read each request body whole before calling the application (default `true`);
    /// `false` streams it to the application as it arrives (nginx's `proxy_request_buffering`).
    pub request_buffering: Option<bool>,
    /// Seconds a call may run (`--app-timeout` for this mount; 0: none).
    pub timeout: Option<Spanned<f64>>,
    /// Calls running at once (`--app-max-concurrency` for this mount).
    pub max_concurrency: Option<Spanned<u32>>,
    /// Calls waiting for a slot (`--app-queue` for this mount).
    pub queue: Option<usize>,
}

/// The `[server]` table as written: keys and values with their positions in the file.
pub type ServerTable = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

/// The whole file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Server settings: long flag names with `_` for `-` (checked against [`Args`]).
    #[serde(default)]
    pub server: ServerTable,
    /// Mounts.
    #[serde(default)]
    pub mount: Vec<MountSpec>,
    /// Per-plugin settings, handed to each plugin's `init` as TOML text.
    #[serde(default)]
    pub plugin: BTreeMap<String, toml::Table>,
}

/// A loaded configuration file: its path, its text (for positions) and its contents.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file.
    pub path: PathBuf,
    text: String,
    /// What it says.
    pub file: FileConfig,
}

impl Loaded {
    /// Reads and parses `path`, and checks the `[server]` keys and the mounts' shapes (plugin
    /// names are checked against the loaded plugins by the caller, see `crate::routing`).
    ///
    /// # Errors
    /// [`ConfigError::Read`], [`ConfigError::Parse`] or [`ConfigError::Invalid`].
    pub fn read(path: &Path) -> Result<Loaded, ConfigError> {
        Loaded::read_copy(path, path)
    }

    /// The file at `path` as it was when `copy` was made of it: the text comes from `copy`,
    /// everything else (relative paths, error messages) from `path`. A worker process reads
    /// its generation's copy, so one started later in the generation runs what the first did.
    ///
    /// # Errors
    /// As [`Loaded::read`].
    pub fn read_copy(path: &Path, copy: &Path) -> Result<Loaded, ConfigError> {
        let text =
            std::fs::read_to_string(copy).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let file: FileConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        let loaded = Loaded { path: path.to_owned(), text, file };
        loaded.server_arguments(&Args::command())?;
        loaded.check_mounts()?;
        Ok(loaded)
    }

    /// An [`ConfigError::Invalid`] at byte `span` of the file.
    pub fn error_at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError::Invalid { path: self.path.clone(), line, column, message: message.into() }
    }

    fn check_mounts(&self) -> Result<(), ConfigError> {
        let mut seen = BTreeMap::new();
        for m in &self.file.mount {
            let p = m.prefix.get_ref();
            if !p.starts_with('/') || (p.len() > 1 && p.ends_with('/')) || p.contains("//") {
                return Err(self.error_at(
                    m.prefix.span(),
                    format!("mount prefix {p:?} must start with '/' and not end with '/' (use \"/\" for everything)"),
                ));
            }
            if p.bytes().any(|b| b.is_ascii_control() || b == b'?' || b == b'#' || b == b'%') {
                return Err(self.error_at(m.prefix.span(), format!("mount prefix {p:?} must be a plain path")));
            }
            if seen.insert(p.clone(), ()).is_some() {
                return Err(self.error_at(m.prefix.span(), format!("mount prefix {p:?} appears twice")));
            }
            match (&m.app, m.static_files) {
                (Some(app), true) => {
                    return Err(self.error_at(app.span(), format!("mount {p:?}: give either app or static = true")));
                }
                (None, false) => {
                    return Err(
                        self.error_at(m.prefix.span(), format!("mount {p:?}: needs app = \"PLUGIN\" or static = true"))
                    );
                }
                _ => {}
            }
            if let Some(t) = &m.timeout
                && !(t.get_ref().is_finite() && *t.get_ref() >= 0.0)
            {
                return Err(self.error_at(t.span(), format!("mount {p:?}: timeout must be 0 or more seconds")));
            }
            if let Some(n) = &m.max_concurrency
                && *n.get_ref() == 0
            {
                return Err(self.error_at(n.span(), format!("mount {p:?}: max_concurrency must be at least 1")));
            }
            for name in m.app.iter().chain(&m.middleware) {
                let n = name.get_ref();
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                    return Err(self.error_at(name.span(), format!("{n:?} is not a plugin name")));
                }
            }
        }
        Ok(())
    }

    /// The file's text as read.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The `[server]` table as command-line arguments (`--flag=value`, `--flag` for `true`),
    /// in the file's key order, each checked by its flag's parser. Relative paths (flags whose
    /// value is a path) are taken relative to the file's directory.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] at the key (unknown, or not a setting) or at the value (wrong
    /// type, or refused by the flag's parser).
    fn server_arguments(&self, cmd: &Command) -> Result<Vec<(String, OsString)>, ConfigError> {
        let base = self.path.parent().unwrap_or(Path::new("."));
        let mut out = Vec::new();
        for (key, value) in &self.file.server {
            let arg = setting(cmd, key.get_ref()).ok_or_else(|| {
                self.error_at(
                    key.span(),
                    format!(
                        "unknown setting {:?} in [server] (its keys are the long flags of `portico --help` \
                         with `_` for `-`, except config and print_config)",
                        key.get_ref()
                    ),
                )
            })?;
            let flag = format!("--{}", arg.get_long().unwrap_or_default());
            let is_switch = matches!(arg.get_action(), ArgAction::SetTrue);
            let is_list = matches!(arg.get_action(), ArgAction::Append);
            let items: Vec<&toml::Value> = match value.get_ref() {
                toml::Value::Array(items) if is_list => items.iter().collect(),
                toml::Value::Array(_) => {
                    return Err(self.error_at(value.span(), format!("{}: takes one value, not a list", key.get_ref())));
                }
                v => vec![v],
            };
            for item in items {
                let text = match (item, is_switch) {
                    (toml::Value::Boolean(b), true) => {
                        if *b {
                            out.push((key.get_ref().clone(), OsString::from(&flag)));
                        }
                        continue;
                    }
                    (_, true) => {
                        return Err(self.error_at(value.span(), format!("{}: must be true or false", key.get_ref())));
                    }
                    (toml::Value::String(s), false) => s.clone(),
                    (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_), false) => {
                        item.to_string()
                    }
                    (_, false) => {
                        return Err(
                            self.error_at(value.span(), format!("{}: must be a string or a number", key.get_ref()))
                        );
                    }
                };
                let path_like = matches!(arg.get_value_hint(), ValueHint::DirPath | ValueHint::FilePath);
                let text = if path_like && !matches!(text.as_str(), "-" | "off") && Path::new(&text).is_relative() {
                    base.join(&text).to_string_lossy().into_owned()
                } else if let Some(socket) = text.strip_prefix("unix:").filter(|p| Path::new(p).is_relative()) {
                    // A Unix socket's path, like every other path in the file.
                    format!("unix:{}", base.join(socket).to_string_lossy())
                } else {
                    text
                };
                // The flag's own parser, alone on a command line without environment.
                let alone = cmd.clone().mut_args(|a| a.env(clap::builder::Resettable::Reset));
                if let Err(e) =
                    alone.try_get_matches_from([OsStr::new("portico"), OsStr::new(&format!("{flag}={text}"))])
                {
                    let why = e.to_string();
                    let why = why.trim().trim_start_matches("error: ");
                    let why = why.lines().next().unwrap_or_default();
                    return Err(self.error_at(value.span(), format!("{} ({flag}): {why}", key.get_ref())));
                }
                // `--flag=value`, so a value starting with `-` is not read as a flag.
                out.push((key.get_ref().clone(), OsString::from(format!("{flag}={text}"))));
            }
        }
        Ok(out)
    }
}

/// The command-line argument a `[server]` key stands for: a long flag, not `--config`,
/// `--print-config`, `--help` or `--version`.
fn setting<'c>(cmd: &'c Command, key: &str) -> Option<&'c Arg> {
    let long = key.replace('_', "-");
    cmd.get_arguments().find(|a| a.get_long() == Some(long.as_str()) && is_setting(a))
}

/// Whether `arg` is a server setting (a `[server]` key): every long flag but the file itself,
/// `--print-config`, `--help` and `--version`.
pub fn is_setting(arg: &Arg) -> bool {
    let not_settings = ["config", "print_config", "help", "version"];
    arg.get_long().is_some() && !not_settings.contains(&arg.get_id().as_str())
}

/// The `[server]` key for a setting's argument: its long flag with `_` for `-`.
pub fn key_of(arg: &Arg) -> String {
    arg.get_long().unwrap_or_default().replace('-', "_")
}

/// Parses the command line and, when `--config` (or `PORTICO_CONFIG`) names a file, merges its
/// `[server]` settings under the flags and the environment.
///
/// # Errors
/// The file is unreadable or invalid; clap's own errors exit the process as usual (`--help`,
/// a bad flag).
pub fn parse_args<I, T>(argv: I) -> Result<(Args, Option<Loaded>), ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let matches = Args::command().get_matches_from(argv.clone());
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let Some(path) = args.config.clone() else { return Ok((args, None)) };
    let loaded = match std::env::var_os(CONFIG_COPY_ENV) {
        Some(copy) => Loaded::read_copy(&path, Path::new(&copy))?,
        None => Loaded::read(&path)?,
    };
    let mut extra = file_arguments(&loaded, &matches)?;
    let mut merged = argv;
    merged.append(&mut extra);
    let args = Args::command().try_get_matches_from(merged).and_then(|m| Args::from_arg_matches(&m)).map_err(|e| {
        ConfigError::Setting { path: path.clone(), message: e.kind().to_string() + ": " + &e.to_string() }
    })?;
    Ok((args, Some(loaded)))
}

/// The file's `[server]` settings as arguments, for every setting the command line and the
/// environment did not give.
fn file_arguments(loaded: &Loaded, matches: &ArgMatches) -> Result<Vec<OsString>, ConfigError> {
    let cmd = Args::command();
    Ok(loaded
        .server_arguments(&cmd)?
        .into_iter()
        .filter(|(key, _)| {
            !matches!(matches.value_source(key), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
        })
        .map(|(_, arg)| arg)
        .collect())
}

/// The directory relative paths in `config` are relative to (the file's), or the working
/// directory when there is no file; absolute.
pub fn config_dir(config: Option<&Loaded>) -> std::path::PathBuf {
    let dir = config.and_then(|c| c.path.parent()).unwrap_or(Path::new(""));
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` as a configuration file in a fresh directory.
    fn read(text: &str) -> (Result<Loaded, ConfigError>, PathBuf) {
        let dir = std::env::temp_dir().join(format!("portico-file-{}-{:x}", std::process::id(), text.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.toml");
        std::fs::write(&path, text).unwrap();
        (Loaded::read(&path), dir)
    }

    fn invalid_at(text: &str) -> (usize, usize, String) {
        match read(text).0 {
            Err(ConfigError::Invalid { line, column, message, .. }) => (line, column, message),
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn server_keys_are_flags_checked_by_their_own_parsers() {
        let (line, column, message) = invalid_at("[server]\nthreads = 4\nno_such = 1\n");
        assert_eq!((line, column), (3, 1), "{message}");
        assert!(message.contains("unknown setting \"no_such\""), "{message}");
        let (line, column, message) = invalid_at("[server]\nkeep_alive_timeout = \"soon\"\n");
        assert_eq!((line, column), (2, 22));
        assert!(message.contains("--keep-alive-timeout") && message.contains("soon"), "{message}");
        let (_, _, message) = invalid_at("[server]\nstatus_path = \"/a/../b\"\n");
        assert!(message.contains("--status-path"), "{message}");
        let (_, _, message) = invalid_at("[server]\ndir_listing = \"yes\"\n");
        assert!(message.contains("true or false"), "{message}");
        let (_, _, message) = invalid_at("[server]\nheader_timeout = [1, 2]\n");
        assert!(message.contains("not a list"), "{message}");
        let (_, _, message) = invalid_at("[server]\nprint_config = true\n");
        assert!(message.contains("unknown setting"), "{message}");
    }

    #[test]
    fn file_values_become_arguments_with_paths_relative_to_the_file() {
        let (loaded, dir) = read(
            "[server]\nbind = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\ndocroot = \"site\"\naccess_log = \"-\"\ndir_listing = true\n",
        );
        let args: Vec<String> = loaded
            .unwrap()
            .server_arguments(&Args::command())
            .unwrap()
            .into_iter()
            .map(|(_, a)| a.to_string_lossy().into_owned())
            .collect();
        let site = dir.join("site");
        assert_eq!(
            args,
            [
                "--access-log=-".to_owned(),
                "--bind=127.0.0.1:1".to_owned(),
                "--bind=127.0.0.1:2".to_owned(),
                "--dir-listing".to_owned(),
                format!("--docroot={}", site.display()),
            ]
        );
    }

    #[test]
    fn every_long_flag_but_four_is_a_server_key() {
        let cmd = Args::command();
        let keys: Vec<String> = cmd.get_arguments().filter(|a| is_setting(a)).map(key_of).collect();
        assert!(keys.contains(&"keep_alive_timeout".to_owned()) && keys.contains(&"bind".to_owned()), "{keys:?}");
        for not in ["config", "print_config", "help", "version"] {
            assert!(setting(&cmd, not).is_none(), "{not} is not a setting");
        }
        // The clap id is the key: the merge looks values up by it.
        for a in cmd.get_arguments().filter(|a| is_setting(a)) {
            assert_eq!(a.get_id().as_str(), key_of(a), "flag --{:?}", a.get_long());
        }
    }
}
