//! The configuration file (`--config portico.toml`): server settings, mounts and per-plugin
//! settings, in TOML (serde).
//!
//! Precedence, per setting: command-line flag > `PORTICO_*` environment variable > file >
//! built-in default. The file's `[server]` keys are the long flag names with `_` for `-`
//! (`keep_alive_timeout = 10` is `--keep-alive-timeout 10`); they are merged by handing clap
//! the file's values as arguments for every setting the command line and the environment
//! left at its default, so the file is validated by the same parsers as the flags.
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
use std::ffi::OsString;
use std::ops::Range;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use serde::{Deserialize, Serialize};

use crate::config::Args;

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
    /// Not valid TOML, or a key or value Portico does not accept (the message has the line
    /// and column).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line, column and the offending text.
        message: String,
    },
    /// A setting is valid TOML but not a valid value (`--bind nonsense`, a bad mount).
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

/// The `[server]` table: the command-line settings, all optional.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    bind: Option<Vec<String>>,
    docroot: Option<PathBuf>,
    plugins: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    threads: Option<usize>,
    io_threads: Option<u16>,
    log_level: Option<String>,
    access_log: Option<String>,
    keep_alive_timeout: Option<u64>,
    header_timeout: Option<u64>,
    body_timeout: Option<u64>,
    send_timeout: Option<u64>,
    graceful_timeout: Option<u64>,
    max_body: Option<u64>,
    max_connections: Option<usize>,
    cache_control: Option<String>,
    dir_listing: Option<bool>,
    allow_symlinks_outside: Option<bool>,
    file_cache_valid_ms: Option<u64>,
    file_cache_entries: Option<usize>,
    status_path: Option<String>,
    status_public: Option<bool>,
}

/// One `[[mount]]`: a URL prefix served by an application behind middleware.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// The URL path prefix (`SCRIPT_NAME`): starts with `/`, no trailing `/` except `/` itself.
    pub prefix: toml::Spanned<String>,
    /// The plugin that answers (exactly one of `app` and `static = true`).
    pub app: Option<toml::Spanned<String>>,
    /// The docroot answers, behind the middleware: `/prefix/x` is the file it would be without
    /// the mount.
    #[serde(default, rename = "static")]
    pub static_files: bool,
    /// Middleware plugins, outermost first.
    #[serde(default)]
    pub middleware: Vec<toml::Spanned<String>>,
}

/// The whole file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Server settings.
    #[serde(default)]
    pub server: ServerSection,
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
    /// Reads and parses `path`, and checks the mounts' shapes (plugin names are checked
    /// against the plugins directory by the caller, see [`crate::mount`]).
    ///
    /// # Errors
    /// [`ConfigError::Read`], [`ConfigError::Parse`] or [`ConfigError::Invalid`].
    pub fn read(path: &Path) -> Result<Loaded, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let file: FileConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        let loaded = Loaded { path: path.to_owned(), text, file };
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
            for name in m.app.iter().chain(&m.middleware) {
                let n = name.get_ref();
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                    return Err(self.error_at(name.span(), format!("{n:?} is not a plugin name")));
                }
            }
        }
        Ok(())
    }

    /// The `[plugin.NAME]` table as TOML text (empty when there is none).
    pub fn plugin_config(&self, name: &str) -> String {
        self.file.plugin.get(name).map(|t| toml::to_string(t).unwrap_or_default()).unwrap_or_default()
    }

    /// Where the `[plugin.NAME]` table is, for errors about its contents (line 1 if unknown).
    pub fn plugin_table_error(&self, name: &str, message: impl Into<String>) -> ConfigError {
        let header = format!("[plugin.{name}]");
        let start = self.text.find(&header).unwrap_or(0);
        self.error_at(start..start, message)
    }
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
    let loaded = Loaded::read(&path)?;
    let mut extra = file_arguments(&loaded, &matches)?;
    let mut merged = argv;
    merged.append(&mut extra);
    let args = Args::command().try_get_matches_from(merged).and_then(|m| Args::from_arg_matches(&m)).map_err(|e| {
        ConfigError::Setting { path: path.clone(), message: e.kind().to_string() + ": " + &e.to_string() }
    })?;
    Ok((args, Some(loaded)))
}

/// The file's `[server]` settings as flags, for every setting the command line and the
/// environment did not give. Relative paths are taken relative to the file's directory.
fn file_arguments(loaded: &Loaded, matches: &ArgMatches) -> Result<Vec<OsString>, ConfigError> {
    let base = loaded.path.parent().unwrap_or(Path::new("."));
    let table = toml::Table::try_from(&loaded.file.server)
        .map_err(|e| ConfigError::Parse { path: loaded.path.clone(), message: e.to_string() })?;
    let mut out = Vec::new();
    for (key, value) in table {
        let given = matches!(matches.value_source(&key), Some(ValueSource::CommandLine | ValueSource::EnvVariable));
        if given {
            continue;
        }
        // `--flag=value`, so a value starting with `-` is not read as a flag.
        let flag = format!("--{}", key.replace('_', "-"));
        let path_like = matches!(key.as_str(), "docroot" | "plugins" | "cache_dir" | "access_log");
        let text = |v: &toml::Value| -> String {
            let s = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if path_like && !matches!(s.as_str(), "-" | "off") && Path::new(&s).is_relative() {
                base.join(&s).to_string_lossy().into_owned()
            } else {
                s
            }
        };
        match &value {
            toml::Value::Boolean(true) => out.push(flag.into()),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    out.push(format!("{flag}={}", text(item)).into());
                }
            }
            v => out.push(format!("{flag}={}", text(v)).into()),
        }
    }
    Ok(out)
}

/// The effective configuration, as a TOML document (`portico --print-config`).
pub fn render(args: &Args, loaded: Option<&Loaded>) -> String {
    let mut out =
        String::from("# portico --print-config: the effective settings (flag > environment > file > default)\n");
    if let Some(l) = loaded {
        out.push_str(&format!("# from {}\n", l.path.display()));
    }
    let server = ServerSection {
        bind: Some(args.bind.iter().map(ToString::to_string).collect()),
        docroot: Some(args.docroot.clone()),
        plugins: Some(args.plugins.clone()),
        cache_dir: Some(args.cache_dir.clone().unwrap_or_else(|| args.plugins.join(".cache"))),
        threads: Some(args.worker_threads()),
        io_threads: Some(args.io_threads),
        log_level: Some(args.log_level.clone()),
        access_log: Some(args.access_log.clone()),
        keep_alive_timeout: Some(args.keep_alive_timeout),
        header_timeout: Some(args.header_timeout),
        body_timeout: Some(args.body_timeout),
        send_timeout: Some(args.send_timeout),
        graceful_timeout: Some(args.graceful_timeout),
        max_body: Some(args.max_body),
        max_connections: Some(args.max_connections),
        cache_control: args.cache_control.clone(),
        dir_listing: Some(args.dir_listing),
        allow_symlinks_outside: Some(args.allow_symlinks_outside),
        file_cache_valid_ms: Some(args.file_cache_valid_ms),
        file_cache_entries: Some(args.file_cache_entries),
        status_path: Some(args.status_path.clone()),
        status_public: Some(args.status_public),
    };
    #[derive(Serialize)]
    struct Doc<'a> {
        server: &'a ServerSection,
    }
    out.push_str(&toml::to_string(&Doc { server: &server }).unwrap_or_default());
    if let Some(l) = loaded {
        for m in &l.file.mount {
            out.push_str("\n[[mount]]\n");
            out.push_str(&format!("prefix = {:?}\n", m.prefix.get_ref()));
            match &m.app {
                Some(app) => out.push_str(&format!("app = {:?}\n", app.get_ref())),
                None => out.push_str("static = true\n"),
            }
            let mw: Vec<&String> = m.middleware.iter().map(|s| s.get_ref()).collect();
            out.push_str(&format!("middleware = {mw:?}\n"));
        }
        for name in l.file.plugin.keys() {
            out.push_str(&format!("\n[plugin.{name}]\n{}", l.plugin_config(name)));
        }
    }
    out
}
