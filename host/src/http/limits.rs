//! Size and time limits of the HTTP layer: each a named constant with its unit and what
//! happens past it. The time limits and the body limit can be changed on the command line
//! (see `crate::settings`).

use std::time::Duration;

/// Longest request line, in bytes, CRLF excluded. Over it: 414 and close.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Largest header section (request line and fields), in bytes. Over it: 431 and close.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most field lines in a header section. Over it: 431 and close.
pub const MAX_FIELDS: usize = 100;
/// Largest request body, in bytes (1 GiB). Over it: 413 and close, before reading when
/// `Content-Length` shows it.
pub const MAX_BODY: u64 = 1 << 30;
/// Bytes of a request body kept in memory while it is read before the application runs; the
/// rest goes to a temporary file (with request buffering), or, on a mount that streams its
/// bodies (`request_buffering = false`), the application is called once this much has
/// arrived. 64 KiB.
pub const BODY_BUFFER: usize = 64 * 1024;
/// Slowest average rate of a request body, bytes per second, after the body timeout's grace:
/// 1 KiB/s. Below it: 408 and close.
pub const BODY_MIN_RATE: u64 = 1024;
/// Time to receive a whole request head, from its first byte (and from accept for a new
/// connection). Over it: 408 and close. 30 s.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle time allowed between keep-alive requests. Over it: the connection closes silently. 5 s.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between reads of a request body. Over it: 408 (if no response has started)
/// and close. 30 s.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause between writes that make progress. Over it: close, with a log line. 30 s.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Response bytes queued for a connection above which the application's body stream is no
/// longer pulled until the client reads: 256 KiB.
pub const WRITE_HIGH_WATER: usize = 256 * 1024;
