//! Request errors and the status each answers with (RFC 9110 §15, RFC 9112), in one place.

use thiserror::Error;

/// Why a request was refused before reaching an application. Every variant ends the
/// connection after its response: after a framing error the server cannot know where the next
/// request starts (RFC 9112 §6.3, last paragraph; Apache CVE-2022-22720).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// Malformed request line, field line or framing (RFC 9112 §2.2, §3, §5, §6.3): 400.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// Request line longer than the limit (RFC 9112 §3, RFC 9110 §15.5.15): 414.
    #[error("request line longer than {limit} bytes")]
    UriTooLong {
        /// The limit, in bytes.
        limit: usize,
    },
    /// Header section over the byte or field-count limit (RFC 6585 §5, "Request Header Fields
    /// Too Large"): 431.
    #[error("header section over the limit of {limit_bytes} bytes or {limit_fields} fields")]
    HeaderFieldsTooLarge {
        /// The byte limit.
        limit_bytes: usize,
        /// The field-count limit.
        limit_fields: usize,
    },
    /// Declared or received content over the limit (RFC 9110 §15.5.14, "Content Too Large"):
    /// 413.
    #[error("request body over the limit of {limit} bytes")]
    ContentTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// A transfer coding other than chunked (RFC 9112 §6.1, RFC 9110 §15.6.2): 501.
    #[error("unsupported transfer coding")]
    UnknownTransferCoding,
    /// An HTTP version other than 1.0 and 1.1, e.g. `HTTP/2.0` or the HTTP/2 preface
    /// (RFC 9110 §15.6.6): 505.
    #[error("unsupported HTTP version")]
    VersionNotSupported,
    /// An `Expect` other than `100-continue` (RFC 9110 §10.1.1): 417.
    #[error("unsupported expectation")]
    ExpectationFailed,
    /// The request head did not arrive in time (RFC 9110 §15.5.9): 408.
    #[error("request head timed out")]
    HeadTimeout,
    /// The request body stalled, or arrived slower than the minimum rate (RFC 9110
    /// §15.5.9): 408.
    #[error("request body timed out")]
    BodyTimeout,
    /// The server could not keep the request (a request body's temporary file could not be
    /// written): 500.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl RequestError {
    /// The status code this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::BadRequest(_) => 400,
            RequestError::UriTooLong { .. } => 414,
            RequestError::HeaderFieldsTooLarge { .. } => 431,
            RequestError::ContentTooLarge { .. } => 413,
            RequestError::UnknownTransferCoding => 501,
            RequestError::VersionNotSupported => 505,
            RequestError::ExpectationFailed => 417,
            RequestError::HeadTimeout | RequestError::BodyTimeout => 408,
            RequestError::Internal(_) => 500,
        }
    }
}
