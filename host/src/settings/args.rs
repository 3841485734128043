//! The command line (clap): every server setting, spelled once. The configuration file's
//! `[server]` keys ([`super::file`]) and `--print-config` ([`super::print`]) are derived from
//! this definition — a key is a long flag with `_` for `-`, typed by the flag's own parser —
//! so a new flag is a new file key with no other change.
//!
//! Every option has a default, so `portico` with no arguments serves `html/` and `plugins/`
//! on 127.0.0.1:8000. Each can also be set through a `PORTICO_*` environment variable.

use std::path::PathBuf;

use crate::http::forwarded;
use clap::{Parser, ValueHint};
use serde::Serialize;

use super::bind::{self, BindSpec};
use crate::http::limits;

/// Portico: static files and hot-reloadable compiled plugins over HTTP/1.1.
#[derive(Debug, Clone, Parser, Serialize)]
#[command(
    name = "portico",
    version,
    about,
    long_about = None,
    override_usage = "portico [OPTIONS]\n       portico check [OPTIONS]\n       portico new NAME [--middleware]\n       \
                      portico install LIB.so [--plugins DIR] [--pid-file FILE] [--config FILE]",
    after_help = "Commands (each has its own --help):\n  check    Check the configuration and load every plugin in a \
                  child process, without serving; the same options\n  new      Make a plugin crate in ./NAME/ that \
                  builds and is served as it is\n  install  Test-load a built plugin, install it into the plugins \
                  directory by rename, and SIGHUP the server\n\nSignals: HUP reload, TERM/INT drain and exit, \
                  QUIT exit now, USR1 reopen the access log, USR2 binary upgrade, TTIN/TTOU one worker more/fewer."
)]
pub struct Args {
    /// Configuration file (TOML): server settings, mounts, plugin settings. Flags and
    /// `PORTICO_*` variables override its `[server]` settings.
    #[arg(long, env = "PORTICO_CONFIG", value_hint = ValueHint::FilePath)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (flags, environment, file, defaults) as TOML and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
    /// Where to listen: IP:PORT (`127.0.0.1:8000`, `[::1]:8000`; port 0 picks a free port),
    /// HOST:PORT (`localhost:8000`: the name's first IPv4 address), :PORT (every IPv4
    /// address) or `unix:PATH` (a Unix stream socket); repeat for several. Ignored when
    /// systemd passes sockets (socket activation: `LISTEN_FDS`).
    #[arg(long = "bind", env = "PORTICO_BIND", value_delimiter = ',', default_value = "127.0.0.1:8000")]
    pub bind: Vec<BindSpec>,
    /// Permission bits of Unix sockets made for `--bind unix:PATH`, in octal.
    #[arg(long, env = "PORTICO_UNIX_SOCKET_MODE", default_value = "0660", value_parser = bind::parse_mode)]
    #[serde(serialize_with = "octal")]
    pub unix_socket_mode: u32,
    /// Connections each listening socket queues before they are accepted (`listen(2)`'s
    /// backlog, as Gunicorn's `--backlog`). Past it the kernel drops new connections'
    /// handshakes, which clients retry after a second or more. Capped by the kernel at
    /// `net.core.somaxconn` (4096 on Linux 5.4 and later, 128 before). Applies to TCP and
    /// Unix sockets alike. Sockets passed by systemd keep theirs (`Backlog=`), and so do
    /// those a binary upgrade (SIGUSR2) inherits from the old master.
    #[arg(long, env = "PORTICO_BACKLOG", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub backlog: u32,
    /// Worker processes. The master process binds the listeners, never loads a plugin, and
    /// starts this many workers (each with `--io-threads` event loops and `--threads` worker
    /// threads); a worker that dies is replaced, SIGHUP starts a new generation of them. 0 runs
    /// everything in this one process, with in-process reload (for debugging)
    /// [default: the number of cores].
    #[arg(long, env = "PORTICO_WORKERS", value_parser = clap::value_parser!(u16).range(0..=256))]
    pub workers: Option<u16>,
    /// Seconds a new worker has to load its plugins and report ready (a plugin that hangs in
    /// its init is given up on then); also how long each plugin's test load in a child may take.
    #[arg(long, env = "PORTICO_WORKER_READY_TIMEOUT", default_value_t = 30.0, value_parser = parse_seconds)]
    pub worker_ready_timeout: f64,
    /// Requests a worker process serves before it is replaced gracefully (Gunicorn's
    /// `max_requests`); 0: never.
    #[arg(long, env = "PORTICO_MAX_REQUESTS", default_value_t = 0)]
    pub max_requests: u64,
    /// Up to this many requests more or less, chosen at random per worker, so workers are not
    /// all replaced at once (Gunicorn's `max_requests_jitter`).
    #[arg(long, env = "PORTICO_MAX_REQUESTS_JITTER", default_value_t = 0)]
    pub max_requests_jitter: u64,
    /// Resident memory in MiB past which a worker process is replaced gracefully (uWSGI's
    /// `reload-on-rss`), checked every second; 0: no limit.
    #[arg(long, env = "PORTICO_MAX_WORKER_MEMORY", default_value_t = 0)]
    pub max_worker_memory: u64,
    /// Application calls abandoned past their deadline (`--app-timeout`) and still running that
    /// a worker process may hold before it is replaced gracefully; 0: never.
    #[arg(long, env = "PORTICO_MAX_ABANDONED", default_value_t = 16)]
    pub max_abandoned: u64,
    /// Let worker processes write core dumps when they crash (off by default: dumping a large
    /// worker keeps its clients waiting for seconds).
    #[arg(long, env = "PORTICO_WORKER_CORE_DUMPS")]
    pub worker_core_dumps: bool,
    /// File to write the master's process id to (removed at exit).
    #[arg(long, env = "PORTICO_PID_FILE", value_hint = ValueHint::FilePath)]
    pub pid_file: Option<PathBuf>,
    /// Directory of static files (the docroot).
    #[arg(long, env = "PORTICO_DOCROOT", default_value = "html", value_hint = ValueHint::DirPath)]
    pub docroot: PathBuf,
    /// Directory of plugins (`NAME.so` or `libNAME.so` serve `/NAME.py`).
    #[arg(long, env = "PORTICO_PLUGINS", default_value = "plugins", value_hint = ValueHint::DirPath)]
    pub plugins: PathBuf,
    /// Where private copies of plugin libraries are made before loading
    /// [default: PLUGINS/.cache].
    #[arg(long, env = "PORTICO_CACHE_DIR", value_hint = ValueHint::DirPath)]
    pub cache_dir: Option<PathBuf>,
    /// Worker threads that run applications, at least 1 [default: 2 × cores, at least 4].
    #[arg(long, env = "PORTICO_THREADS", value_parser = at_least_one)]
    pub threads: Option<usize>,
    /// Event loops, one thread each: each accepts connections, reads requests, serves static
    /// files and writes responses. `--max-connections` is shared out between them.
    #[arg(long, env = "PORTICO_IO_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub io_threads: u16,
    /// Log level for the error log on stderr: error, warn, info, debug, trace or off
    /// (Gunicorn's warning and critical are read as warn and error), or a tracing filter such
    /// as `portico=debug,info`.
    #[arg(long, env = "PORTICO_LOG_LEVEL", default_value = "info", value_parser = log_level)]
    pub log_level: String,
    /// Access log destination: a file path, `-` for stdout, or `off`.
    #[arg(long, env = "PORTICO_ACCESS_LOG", default_value = "-", value_hint = ValueHint::FilePath)]
    pub access_log: String,
    /// Access log lines: `common` (Common Log Format plus the duration in µs), `combined`
    /// (plus Referer and User-Agent, as nginx's `combined`) or `json` (an object a line).
    #[arg(long, env = "PORTICO_ACCESS_LOG_FORMAT", default_value = "common",
          value_parser = clap::builder::PossibleValuesParser::new(["common", "combined", "json"]))]
    pub access_log_format: String,
    /// Error log lines: `text` (for people) or `json` (an object a line, for log collectors).
    #[arg(long, env = "PORTICO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Seconds a keep-alive connection may stay idle between requests; then it is closed.
    #[arg(long, env = "PORTICO_KEEP_ALIVE_TIMEOUT", default_value_t = limits::KEEP_ALIVE_TIMEOUT.as_secs())]
    pub keep_alive_timeout: u64,
    /// Seconds to receive a whole request head from its first byte; then 408 and close.
    #[arg(long, env = "PORTICO_HEADER_TIMEOUT", default_value_t = limits::HEAD_TIMEOUT.as_secs())]
    pub header_timeout: u64,
    /// Seconds allowed between reads of a request body; then 408 and close. Also the time a
    /// body gets before `--body-min-rate` applies.
    #[arg(long, env = "PORTICO_BODY_TIMEOUT", default_value_t = limits::BODY_TIMEOUT.as_secs())]
    pub body_timeout: u64,
    /// Slowest average rate a request body may arrive at, in bytes per second: a body must be
    /// complete within `--body-timeout` seconds plus one second per this many bytes received
    /// (Apache's mod_reqtimeout `MinRate`), else 408 and close. 0 turns it off.
    #[arg(long, env = "PORTICO_BODY_MIN_RATE", default_value_t = limits::BODY_MIN_RATE)]
    pub body_min_rate: u64,
    /// Bytes of a request body kept in memory while the server reads it before the
    /// application runs; the rest goes to an unlinked temporary file in `--body-temp-dir`
    /// (nginx's `client_body_buffer_size`).
    #[arg(long, env = "PORTICO_BODY_BUFFER_SIZE", default_value_t = limits::BODY_BUFFER)]
    pub body_buffer_size: usize,
    /// Directory for the temporary files of request bodies larger than `--body-buffer-size`
    /// [default: the system's temporary directory, `$TMPDIR` or /tmp].
    #[arg(long, env = "PORTICO_BODY_TEMP_DIR", value_hint = ValueHint::DirPath)]
    pub body_temp_dir: Option<PathBuf>,
    /// Seconds allowed between writes that make progress; then the connection is closed.
    #[arg(long, env = "PORTICO_SEND_TIMEOUT", default_value_t = limits::SEND_TIMEOUT.as_secs())]
    pub send_timeout: u64,
    /// Seconds an application call may run until its response head is ready (and each pull
    /// of a streamed body's next chunk); past it the client gets 504 at once, the call is
    /// abandoned and its worker thread replaced (Gunicorn's `--timeout`). Fractions allowed;
    /// 0 means no deadline. A mount's `timeout` key overrides it.
    #[arg(long, env = "PORTICO_APP_TIMEOUT", default_value_t = 30.0, value_parser = parse_seconds)]
    pub app_timeout: f64,
    /// Seconds a call of a plugin that promised never to block (`never_blocks`) may run on
    /// the event loop that read its request before the host stops waiting: the loop goes on
    /// in a fresh thread (the other connections wait at most twice this long — a batch of
    /// calls runs for up to this long before its last call starts — plus up to 20 ms for the
    /// watchdog to look), and every later call of that plugin goes to a worker thread.
    /// Fractions allowed; 0 sends every call to a worker thread.
    #[arg(long, env = "PORTICO_INLINE_TIMEOUT", default_value_t = 0.02, value_parser = parse_seconds)]
    pub inline_timeout: f64,
    /// Calls of one application (a mount, or a `/NAME.py` plugin) running at once; more wait
    /// in its queue [default: --threads when one application can be reached, else one less,
    /// so no application occupies every worker]. A mount's `max_concurrency` key overrides it.
    #[arg(long, env = "PORTICO_APP_MAX_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..))]
    pub app_max_concurrency: Option<u32>,
    /// Calls of one application waiting for a free slot; past it 503 with `Retry-After`. A
    /// mount's `queue` key overrides it.
    #[arg(long, env = "PORTICO_APP_QUEUE", default_value_t = 1024)]
    pub app_queue: usize,
    /// Seconds SIGTERM waits for requests in flight before exiting.
    #[arg(long, env = "PORTICO_GRACEFUL_TIMEOUT", default_value_t = 30)]
    pub graceful_timeout: u64,
    /// Largest request body in bytes; over it 413 and close.
    #[arg(long, env = "PORTICO_MAX_BODY", default_value_t = limits::MAX_BODY)]
    pub max_body: u64,
    /// Most open connections in each worker process; past it new ones wait in the listen
    /// backlog.
    #[arg(long, env = "PORTICO_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// `Cache-Control` value sent with static files (200, 206 and 304), e.g.
    /// `public, max-age=3600`; none by default.
    #[arg(long, env = "PORTICO_CACHE_CONTROL", value_parser = parse_field_value)]
    pub cache_control: Option<String>,
    /// Serve an HTML listing of a directory that has no index.html (otherwise 404).
    #[arg(long, env = "PORTICO_DIR_LISTING")]
    pub dir_listing: bool,
    /// Follow symlinks in the docroot whose target lies outside it (otherwise 404).
    #[arg(long, env = "PORTICO_ALLOW_SYMLINKS_OUTSIDE")]
    pub allow_symlinks_outside: bool,
    /// Milliseconds a static file's cached lookup is trusted before the file system is
    /// checked again (one stat per file); 0 checks on every request.
    #[arg(long, env = "PORTICO_FILE_CACHE_VALID_MS", default_value_t = 1000)]
    pub file_cache_valid_ms: u64,
    /// Most paths in the open-file cache (per event loop).
    #[arg(long, env = "PORTICO_FILE_CACHE_ENTRIES", default_value_t = 1024)]
    pub file_cache_entries: usize,
    /// Path of the status page (HTML; JSON with `?format=json`). The Prometheus metrics are
    /// served beside it: its parent + `/metrics`. `off` serves neither. They take precedence
    /// over mounts and static files.
    #[arg(long, env = "PORTICO_STATUS_PATH", default_value = "/_portico/status", value_parser = parse_status_path)]
    pub status_path: String,
    /// Answer the status page and metrics to every client (by default only to loopback
    /// clients; others are routed as if the pages did not exist).
    #[arg(long, env = "PORTICO_STATUS_PUBLIC")]
    pub status_public: bool,
    /// TLS on every TCP listener: the certificate chain, PEM, leaf first (TLS 1.2 and 1.3,
    /// ALPN `http/1.1`; read again on SIGHUP). Needs `--tls-key`.
    #[arg(long, env = "PORTICO_TLS_CERT", value_hint = ValueHint::FilePath, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert`, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "PORTICO_TLS_KEY", value_hint = ValueHint::FilePath, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Proxies whose forwarding fields are believed, by address or CIDR, comma-separated
    /// (`127.0.0.1,10.0.0.0/8`; `unix`: peers on a Unix socket; Gunicorn's name). From these
    /// peers only, `X-Forwarded-For` (or `Forwarded`, see `--forwarded-header`) sets
    /// `REMOTE_ADDR` and `X-Forwarded-Proto`
    /// sets `wsgi.url_scheme`, for every application, `ip_filter` and the access log. Default:
    /// none (Gunicorn trusts 127.0.0.1 by default; naming them is safer).
    #[arg(long, env = "PORTICO_FORWARDED_ALLOW_IPS", default_value = "", value_parser = parse_trusted)]
    pub forwarded_allow_ips: String,
    /// Which fields the trusted proxies write: `x-forwarded-for` (with `X-Forwarded-Proto`;
    /// nginx, HAProxy, Kubernetes ingresses) or `forwarded` (RFC 7239: `for=`, `proto=`).
    #[arg(long, env = "PORTICO_FORWARDED_HEADER", value_enum, default_value_t = ForwardedHeader::XForwardedFor)]
    pub forwarded_header: ForwardedHeader,
    /// Seconds between the points of the status page's charts (requests/s, 5xx/s and p99 per
    /// application); a chart shows the last 90 of them (15 minutes at the default).
    #[arg(long, env = "PORTICO_STATUS_CHART_INTERVAL", default_value_t = 10.0, value_parser = parse_interval)]
    pub status_chart_interval: f64,
    /// Path of the health check a load balancer or a readiness probe calls, answered to
    /// every client on the event loop, ahead of mounts and files: `200 ok` while the server
    /// serves, `503 draining` (and the connection closes) once it is shutting down. `off`
    /// disables it.
    #[arg(long, env = "PORTICO_HEALTH_PATH", default_value = "/_portico/health", value_parser = parse_health_path)]
    pub health_path: String,
}

/// A file mode as TOML writes it back: octal text (`"0660"`).
fn octal<S: serde::Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{mode:04o}"))
}

/// Seconds as a finite, non-negative number (fractions allowed).
fn parse_seconds(v: &str) -> Result<f64, String> {
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(s),
        _ => Err(format!("{v:?} is not a number of seconds (0 or more)")),
    }
}

/// A `--status-path` must be `off` or a plain absolute path (see [`super::AdminPaths::parse`]).
fn parse_status_path(v: &str) -> Result<String, String> {
    super::AdminPaths::parse(v)?;
    Ok(v.to_owned())
}

/// Seconds between chart points: 0.1 (tests) to an hour; less would keep a thread busy.
fn parse_interval(v: &str) -> Result<f64, String> {
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && (0.1..=3600.0).contains(&s) => Ok(s),
        _ => Err(format!("{v:?} is not a number of seconds from 0.1 to 3600")),
    }
}

/// A `--health-path` must be `off` or a plain absolute path (see [`super::plain_path`]).
fn parse_health_path(v: &str) -> Result<String, String> {
    if v != "off" {
        super::plain_path(v)?;
    }
    Ok(v.to_owned())
}

/// A `Cache-Control` value must be a valid field value (no CR, LF or NUL; RFC 9110 §5.5).
fn parse_field_value(v: &str) -> Result<String, String> {
    crate::http::response::validate_field("Cache-Control", v.as_bytes()).map_err(str::to_owned)?;
    Ok(v.trim().to_owned())
}

/// `--log-level`: a level word (Gunicorn's `warning` and `critical` mapped onto tracing's
/// `warn` and `error`), or a filter of `target=level` directives. A lone unknown word would
/// be read by tracing as a target name and silence every line, so it is refused.
///
/// # Errors
/// The valid values, for clap's one-line error.
fn log_level(value: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let word = |w: &str| match w.trim().to_ascii_lowercase().as_str() {
        "warning" => Some("warn".to_owned()),
        "critical" => Some("error".to_owned()),
        l if LEVELS.contains(&l) => Some(l.to_owned()),
        _ => None,
    };
    let mut out = Vec::new();
    for part in value.split(',') {
        match part.split_once('=') {
            Some((target, level)) if !target.trim().is_empty() => match word(level) {
                Some(level) => out.push(format!("{}={level}", target.trim())),
                None => return Err(format!("unknown level {level:?} in {part:?}; use one of {}", LEVELS.join(", "))),
            },
            _ => match word(part) {
                Some(level) => out.push(level),
                None => {
                    return Err(format!(
                        "unknown log level {part:?}; use one of {} (or warning, critical), or a filter such as portico=debug",
                        LEVELS.join(", ")
                    ));
                }
            },
        }
    }
    Ok(out.join(","))
}

/// A count of 1 or more (`--threads`): 0 would leave no thread to run an application.
///
/// # Errors
/// Not a number, or 0.
fn at_least_one(value: &str) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1 (0 would leave no thread to run applications)".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{value:?} is not a number")),
    }
}

/// `--forwarded-header`: which fields trusted proxies write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` and `X-Forwarded-Proto`.
    XForwardedFor,
    /// RFC 7239 `Forwarded`.
    Forwarded,
}

impl ForwardedHeader {
    /// The parser's own name for it.
    pub fn header(self) -> forwarded::Header {
        match self {
            ForwardedHeader::XForwardedFor => forwarded::Header::XForwardedFor,
            ForwardedHeader::Forwarded => forwarded::Header::Forwarded,
        }
    }
}

/// A `--forwarded-allow-ips` list: addresses and CIDRs.
fn parse_trusted(v: &str) -> Result<String, String> {
    forwarded::TrustedProxies::parse(v, forwarded::Header::XForwardedFor)?;
    Ok(v.to_owned())
}

/// `--log-format`: the error log's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line an event.
    Text,
    /// One JSON object an event (tracing-subscriber's json layer).
    Json,
}

/// Parses a subcommand's own command line (`portico new`, `portico install`): `args` are
/// the words after the subcommand's name. `Err` is the exit status once clap has printed its
/// message: 0 for `--help`, 2 for a bad command line.
///
/// # Errors
/// As above.
pub fn parse_subcommand<T: clap::Parser>(name: &str, args: Vec<std::ffi::OsString>) -> Result<T, i32> {
    T::try_parse_from(std::iter::once(std::ffi::OsString::from(name)).chain(args)).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() { 2 } else { 0 }
    })
}
