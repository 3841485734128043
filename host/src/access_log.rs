//! The access log: one line per request in Common Log Format plus the duration (or the
//! combined format, or JSON: `--access-log-format`), emitted as a `tracing` event with target
//! `portico::access` (routed by `main` to `--access-log`), and the file it is written to,
//! reopened on SIGUSR1.
//!
//! ```text
//! 127.0.0.1 - - [23/Nov/2026:11:00:00 +0000] "GET /hello.py HTTP/1.1" 200 14 87
//! ```
//! Fields: remote address, identity and user (always `-`), time the request head was read
//! (UTC), request line, status, response body bytes (payload, without framing), duration in
//! microseconds from the head being read to the last byte being written (Gunicorn's `%(D)s`).

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use time::OffsetDateTime;
use time::macros::format_description;

use crate::http::request::RequestHead;

/// The `tracing` target of access-log events.
pub const TARGET: &str = "portico::access";

/// `--access-log-format`: the shape of each access line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Common Log Format plus the duration in microseconds (the default).
    #[default]
    Common,
    /// Combined Log Format (nginx's and Apache's `combined`: Referer and User-Agent in
    /// quotes) plus the duration.
    Combined,
    /// One JSON object a line: `time` (RFC 3339), `remote_addr`, `method`, `target`,
    /// `protocol`, `status`, `bytes`, `duration_us`, `referer`, `user_agent`.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "common" => Ok(Format::Common),
            "combined" => Ok(Format::Combined),
            "json" => Ok(Format::Json),
            other => Err(format!("unknown access log format {other:?}: common, combined or json")),
        }
    }
}

static FORMAT: std::sync::OnceLock<Format> = std::sync::OnceLock::new();

/// Fixes the format of this process's access lines (the first call wins).
pub fn set_format(format: Format) {
    let _ = FORMAT.set(format);
}

fn format() -> Format {
    FORMAT.get().copied().unwrap_or_default()
}

/// What the access line needs, captured when the head is parsed.
pub struct Access {
    peer: SocketAddr,
    request_line: String,
    time: String,
    start: Instant,
    /// `Referer` and `User-Agent`, for the combined and JSON formats (empty for common).
    referer: String,
    user_agent: String,
    /// Method, target and protocol apart, for JSON.
    parts: Option<(String, String, &'static str)>,
}

fn clf_now() -> String {
    thread_local! {
        static CACHE: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let now = OffsetDateTime::now_utc();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != now.unix_timestamp() {
            let fmt = format_description!("[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000");
            c.1 = now.format(&fmt).unwrap_or_default();
            c.0 = now.unix_timestamp();
        }
        c.1.clone()
    })
}

impl Access {
    /// Captures a parsed request.
    pub fn new(head: &RequestHead, peer: SocketAddr) -> Self {
        let target = String::from_utf8_lossy(head.target());
        let fmt = format();
        let field = |name: &str| {
            if fmt == Format::Common {
                return String::new();
            }
            head.fields
                .iter()
                .find(|(n, _)| head.slice(n).eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| String::from_utf8_lossy(head.slice(v)).into_owned())
                .unwrap_or_default()
        };
        Access {
            peer,
            request_line: format!("{} {} {}", head.method(), target.escape_debug(), head.version.as_str()),
            time: clf_now(),
            start: Instant::now(),
            referer: field("referer"),
            user_agent: field("user-agent"),
            parts: (fmt == Format::Json)
                .then(|| (head.method().to_owned(), target.into_owned(), head.version.as_str())),
        }
    }

    /// A request that could not be parsed.
    pub fn unparsed(peer: SocketAddr) -> Self {
        Access {
            peer,
            request_line: "-".to_owned(),
            time: clf_now(),
            start: Instant::now(),
            referer: String::new(),
            user_agent: String::new(),
            parts: None,
        }
    }
}

/// `"value"` for a combined-format field: `-` when absent, quotes and controls escaped.
fn quoted(v: &str) -> String {
    if v.is_empty() { "\"-\"".to_owned() } else { format!("\"{}\"", v.escape_debug()) }
}

/// Emits the access line for a finished exchange.
pub fn write(a: &Access, status: u16, body_bytes: u64) {
    let micros = a.start.elapsed().as_micros();
    match format() {
        fmt @ (Format::Common | Format::Combined) => {
            // Combined is common with `"Referer" "User-Agent"` before the duration.
            let combined = if fmt == Format::Combined {
                format!("{} {} ", quoted(&a.referer), quoted(&a.user_agent))
            } else {
                String::new()
            };
            tracing::info!(
                target: TARGET,
                "{} - - [{}] \"{}\" {} {} {combined}{}",
                a.peer.ip(),
                a.time,
                a.request_line,
                status,
                body_bytes,
                micros
            );
        }
        Format::Json => {
            let (method, target, protocol) = a.parts.clone().unwrap_or_default();
            let time =
                OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
            let line = serde_json::json!({
                "time": time,
                "remote_addr": a.peer.ip().to_string(),
                "method": method,
                "target": target,
                "protocol": protocol,
                "status": status,
                "bytes": body_bytes,
                "duration_us": micros as u64,
                "referer": a.referer,
                "user_agent": a.user_agent,
            });
            tracing::info!(target: TARGET, "{line}");
        }
    }
}

/// Set by SIGUSR1: the access log file is opened again by its path before the next line
/// (logrotate's `postrotate kill -USR1`, as nginx and Gunicorn).
static REOPEN: AtomicBool = AtomicBool::new(false);

/// Asks for the access log file to be reopened before its next line (SIGUSR1).
pub fn request_reopen() {
    REOPEN.store(true, Ordering::SeqCst);
}

/// The `--access-log PATH` file: appended to, and opened again by its path after
/// [`request_reopen`] (a file moved away by logrotate gets a new one at the path).
pub struct LogFile {
    path: PathBuf,
    file: File,
}

impl LogFile {
    /// Opens (creating it if needed) `path` for appending.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(path: PathBuf) -> std::io::Result<LogFile> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(LogFile { path, file })
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if REOPEN.swap(false, Ordering::SeqCst) {
            match OpenOptions::new().create(true).append(true).open(&self.path) {
                Ok(file) => self.file = file,
                // Keep writing where it wrote; the error log says why.
                Err(e) => tracing::error!("SIGUSR1: cannot reopen the access log {}: {e}", self.path.display()),
            }
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
