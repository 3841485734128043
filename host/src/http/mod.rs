//! The HTTP/1.1 engine: private, split by stage (STYLE.md §2). Nothing here does I/O: the
//! connection state machine in [`crate::io::conn`] feeds bytes in and writes what comes out.
//!
//! Requests:
//! - [`request`]: the request head (RFC 9112 §3, §5) and its message framing (§6.3) →
//!   [`request::RequestHead`].
//! - [`target`]: the request target → path and query, percent-decoding (RFC 9112 §3.2, RFC 3986).
//! - [`decode`]: request body framing ([`decode::Decoder`]: `Content-Length` or chunked).
//! - [`chunked`]: the chunked transfer coding decoder (RFC 9112 §7.1).
//! - [`forwarded`]: the client behind trusted proxies (`X-Forwarded-For`, `Forwarded`).
//! - [`error`]: every request failure and the status it answers with, in one place.
//!
//! Responses:
//! - [`response`]: [`response::ResponseHead`] (status, fields, framing), its one encoder, and
//!   the checks on what an application hands `start_response`.
//! - [`encode`]: response body framing for streamed bodies ([`encode::Encoder`]).
//! - [`outgoing`]: [`outgoing::Response`] (typed) → [`outgoing::Prepared`] (bytes and body
//!   pieces for the write queue).
//!
//! [`limits`]: the size and time limits, with their defaults and units.

pub mod chunked;
pub(crate) mod decode;
pub(crate) mod encode;
pub mod error;
pub mod forwarded;
pub(crate) mod limits;
pub(crate) mod outgoing;
pub mod request;
pub(crate) mod response;
pub mod target;
