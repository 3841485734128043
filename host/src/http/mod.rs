//! The HTTP/1.1 engine: private, split by stage (STYLE.md §2).
//!
//! - [`request`]: the request head (RFC 9112 §3, §5) and message framing (§6.3) → [`request::RequestHead`].
//! - [`target`]: the request target → path and query, percent-decoding (RFC 9112 §3.2, RFC 3986).
//! - [`chunked`]: the chunked transfer coding decoder (RFC 9112 §7.1).
//! - [`response`]: response heads, status and field validation, chunk framing (RFC 9112 §4, §7).
//! - [`error`]: every parse failure and the status it answers with, in one place.
//! - [`limits`]: the size and time limits, with their defaults and units.
//!
//! Nothing here does I/O: the connection state machine in [`crate::reactor`] feeds bytes in.

pub mod chunked;
pub mod error;
pub mod limits;
pub mod request;
pub mod response;
pub mod target;
