//! Settings: where they come from and what the server runs with.
//!
//! | module | owns |
//! |---|---|
//! | [`args`] | the command line ([`Args`], clap): every server setting, spelled once |
//! | [`bind`] | what `--bind` names: a TCP address or `unix:PATH` |
//! | [`file`](mod@file) | the configuration file: `[server]` keys checked against [`Args`], `[[mount]]`, `[plugin.NAME]`; merging under flags and environment |
//! | [`plugin_table`] | a `[plugin.NAME]` table as its plugin's `init` gets it, and a refusal of it placed at the file's line |
//! | [`print`](mod@print) | `--print-config`: every setting, in the file's own format |
//!
//! This module turns the parsed [`Args`] into the values the running server reads: [`Config`]
//! (limits and timeouts, with units) and [`AdminPaths`] (where the server's own pages are).

pub mod args;
pub mod bind;
pub mod file;
pub mod plugin_table;
pub mod print;

use std::time::Duration;

pub use args::Args;

use crate::http::limits;

/// The settings the event loops and workers use, derived from [`Args`].
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Longest request line, bytes (414 beyond).
    pub max_request_line: usize,
    /// Largest header section, bytes (431 beyond).
    pub max_head_bytes: usize,
    /// Most field lines (431 beyond).
    pub max_fields: usize,
    /// Largest request body, bytes (413 beyond).
    pub max_body: u64,
    /// Time to receive a request head from its first byte (and from accept for a new
    /// connection); then 408.
    pub head_timeout: Duration,
    /// Idle time allowed between keep-alive requests; then the connection closes silently.
    pub keep_alive_timeout: Duration,
    /// Longest pause between reads of a request body; then 408. Also the grace before
    /// `body_min_rate` applies.
    pub body_timeout: Duration,
    /// Slowest average rate of a request body, bytes per second (0: no minimum).
    pub body_min_rate: u64,
    /// Bytes of a buffered request body kept in memory.
    pub body_buffer: usize,
    /// Where larger buffered bodies go.
    pub body_temp_dir: std::path::PathBuf,
    /// Longest pause between writes that make progress; then the connection closes.
    pub send_timeout: Duration,
    /// How long SIGTERM waits for requests in flight.
    pub graceful_timeout: Duration,
    /// How long a call of a plugin that promised never to block may run on an event loop
    /// before the loop moves to a fresh thread (`--inline-timeout`); `None`: no calls on
    /// event loops.
    pub inline_timeout: Option<Duration>,
    /// Most open connections over all event loops.
    pub max_connections: usize,
    /// Whether access lines are produced at all.
    pub access_log: bool,
    /// The server's own pages; `None` with `--status-path off`.
    pub admin: Option<AdminPaths>,
    /// Answer them to every client, not only loopback ones.
    pub admin_public: bool,
    /// The health check's path (`--health-path`; `None`: off).
    pub health: Option<String>,
    /// The proxies whose forwarding fields are believed (`--forwarded-allow-ips`).
    pub forwarded: std::sync::Arc<crate::http::forwarded::TrustedProxies>,
}

/// The server-wide limits of applications (`--app-*`), which a mount may override.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AppDefaults {
    /// Deadline of a call; `None`: none.
    pub timeout: Option<Duration>,
    /// Calls of one application at once; `None`: decided from the worker count.
    pub max_concurrency: Option<usize>,
    /// Calls waiting per application.
    pub queue: usize,
    /// Worker threads in the pool.
    pub threads: usize,
}

impl AppDefaults {
    /// The concurrency of an application when nothing sets it: every worker when it is the
    /// only application that can be reached, else one less (the last worker stays free for
    /// the others).
    pub fn concurrency(&self, applications: usize) -> usize {
        self.max_concurrency.unwrap_or(if applications <= 1 { self.threads } else { self.threads - 1 }).max(1)
    }
}

/// The docroot, canonical, if it is a directory; else one line naming the absolute path tried
/// and why (it does not exist, it is a file).
///
/// # Errors
/// The message for the operator.
pub fn docroot_dir(path: &std::path::Path) -> Result<std::path::PathBuf, String> {
    let tried = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    match std::fs::canonicalize(path) {
        Ok(dir) if dir.is_dir() => Ok(dir),
        Ok(_) => Err(format!("docroot {} is not a directory", tried.display())),
        Err(e) => Err(format!("docroot {}: {e}", tried.display())),
    }
}

/// An application's deadline from its seconds (`--app-timeout`, a mount's `timeout`): 0 is none.
pub fn deadline(seconds: f64) -> Option<Duration> {
    (seconds > 0.0).then(|| Duration::from_secs_f64(seconds))
}

impl Args {
    /// The server-wide limits of applications.
    pub fn app_defaults(&self) -> AppDefaults {
        AppDefaults {
            timeout: deadline(self.app_timeout),
            max_concurrency: self.app_max_concurrency.map(|n| n as usize),
            queue: self.app_queue,
            threads: self.worker_threads(),
        }
    }

    /// Worker processes: the flag, or one per core (nginx's `worker_processes auto`). Measured
    /// on 2 cores (wrk -c50, 5 interleaved rounds): 2 processes served 1 KiB static files at
    /// 119k req/s against 110k for one, /hello.py alike (97k, 96k), and a crash leaves the
    /// other process serving.
    pub fn worker_processes(&self) -> usize {
        self.workers.map_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()), usize::from)
    }

    /// Worker threads: the flag, or 2 × cores with a minimum of 4 (Waitress uses 4).
    pub fn worker_threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            (2 * cores).max(4)
        })
    }

    /// `--inline-timeout` as a duration: `None` when calls on event loops are off (`0`, or
    /// below a nanosecond).
    pub(crate) fn inline_timeout(&self) -> Option<Duration> {
        Some(Duration::from_secs_f64(self.inline_timeout)).filter(|d| !d.is_zero())
    }

    /// The settings for the server.
    pub(crate) fn config(&self) -> Config {
        Config {
            max_request_line: limits::MAX_REQUEST_LINE,
            max_head_bytes: limits::MAX_HEAD_BYTES,
            max_fields: limits::MAX_FIELDS,
            max_body: self.max_body,
            head_timeout: Duration::from_secs(self.header_timeout),
            keep_alive_timeout: Duration::from_secs(self.keep_alive_timeout),
            body_timeout: Duration::from_secs(self.body_timeout),
            body_min_rate: self.body_min_rate,
            body_buffer: self.body_buffer_size,
            body_temp_dir: self.body_temp_dir.clone().unwrap_or_else(std::env::temp_dir),
            send_timeout: Duration::from_secs(self.send_timeout),
            graceful_timeout: Duration::from_secs(self.graceful_timeout),
            inline_timeout: self.inline_timeout(),
            max_connections: self.max_connections.max(1),
            access_log: self.access_log != "off",
            admin: AdminPaths::parse(&self.status_path).unwrap_or(None),
            admin_public: self.status_public,
            health: Some(self.health_path.clone()).filter(|p| p != "off"),
            forwarded: std::sync::Arc::new(
                crate::http::forwarded::TrustedProxies::parse(
                    &self.forwarded_allow_ips,
                    self.forwarded_header.header(),
                )
                .unwrap_or_default(),
            ),
        }
    }
}

/// A path flag's value (`--status-path`, `--health-path`): an absolute path of plain segments
/// (no `?`, `#`, `%`, spaces or control characters, no empty, `.` or `..` segment, no
/// trailing `/`), matched byte for byte against a request's path.
///
/// # Errors
/// Why the value is refused.
pub fn plain_path(flag: &str) -> Result<(), String> {
    let Some(rest) = flag.strip_prefix('/') else {
        return Err(format!("{flag:?} must start with '/' (or be `off`)"));
    };
    if flag.bytes().any(|b| b.is_ascii_control() || b" ?#%\\".contains(&b)) {
        return Err(format!("{flag:?} must be a plain path (no spaces, ?, #, % or \\)"));
    }
    if rest.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(format!("{flag:?} has an empty, `.` or `..` segment (or ends with '/')"));
    }
    Ok(())
}

/// Which of the server's own pages (answered on the event loop, see `crate::admin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminPage {
    /// The status page (HTML, or JSON with `?format=json`).
    Status,
    /// The Prometheus metrics.
    Metrics,
}

/// Where the server's own pages are (`--status-path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPaths {
    /// The status page's path.
    pub status: String,
    /// The metrics' path: the status path's parent + `/metrics`.
    pub metrics: String,
}

impl AdminPaths {
    /// Paths from the `--status-path` value: `off` (no pages), or an absolute path of plain
    /// segments (no `?`, `#`, `%`, spaces or control characters, no empty, `.` or `..`
    /// segment, no trailing `/`) whose last segment is not `metrics`.
    ///
    /// # Errors
    /// Why the value is refused.
    pub fn parse(flag: &str) -> Result<Option<AdminPaths>, String> {
        if flag == "off" {
            return Ok(None);
        }
        plain_path(flag)?;
        let (parent, last) = flag.rsplit_once('/').unwrap_or(("", flag));
        if last == "metrics" {
            return Err(format!("{flag:?} would be the metrics path (its parent + /metrics): choose another name"));
        }
        Ok(Some(AdminPaths { status: flag.to_owned(), metrics: format!("{parent}/metrics") }))
    }

    /// The page at decoded path `path`, if any.
    pub fn page(&self, path: &[u8]) -> Option<AdminPage> {
        if path == self.status.as_bytes() {
            Some(AdminPage::Status)
        } else if path == self.metrics.as_bytes() {
            Some(AdminPage::Metrics)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_from_the_flag() {
        let p = AdminPaths::parse("/_portico/status").unwrap().unwrap();
        assert_eq!((p.status.as_str(), p.metrics.as_str()), ("/_portico/status", "/_portico/metrics"));
        let p = AdminPaths::parse("/status").unwrap().unwrap();
        assert_eq!(p.metrics, "/metrics");
        assert_eq!(p.page(b"/status"), Some(AdminPage::Status));
        assert_eq!(p.page(b"/metrics"), Some(AdminPage::Metrics));
        assert_eq!(p.page(b"/status/"), None);
        assert_eq!(AdminPaths::parse("off"), Ok(None));
        for bad in ["", "status", "/", "/a/", "/a//b", "/a/../b", "/a?b", "/a b", "/a%2f", "/x/metrics", "/a/./b"] {
            assert!(AdminPaths::parse(bad).is_err(), "{bad:?}");
        }
    }
}
