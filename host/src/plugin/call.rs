//! Calling an application through its pipeline: building the [`Environ`] from a parsed
//! request (borrowed views, no per-field copies), the host's `start_response` (which checks
//! what the application hands it and keeps it as a [`ResponseHead`]), `wsgi.input` and
//! `wsgi.errors`, and the host's [`NextApplication`] that lets middleware call the rest of the
//! pipeline.

use std::sync::{Arc, Mutex};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::sabi_types::{RMut, RRef};
use abi_stable::std_types::{ROption, RResult, RSlice, RSliceMut, RStr, RString};
use portico_api::abi::{
    Body, Body_NE, Environ, ErrorStream, ErrorStream_TO, Field, Input, Input_TO, NextApplication, NextApplication_TO,
    StartResponse, StartResponse_TO,
};

use super::loader::Plugin;
use crate::exchange::body_pipe::BodyPipe;
use crate::exchange::spool::Buffered;
use crate::exchange::{Peer, RequestBody};
use crate::http::request::RequestHead;
use crate::http::response::{ResponseHead, validate_field, validate_status};
use crate::http::target;
use crate::static_files::StaticFiles;

/// The host's `start_response`: validates the status and fields as they come and keeps them
/// as a [`ResponseHead`] (whose framing the worker decides from the body).
#[derive(Default)]
pub struct HostStartResponse {
    /// The head, once `start_response` was called with a valid status and fields.
    pub head: Option<ResponseHead>,
    /// `Content-Length` the application declared, if any (not among the head's fields: it
    /// becomes the head's framing).
    pub content_length: Option<u64>,
    /// Why the response is invalid (then the host answers 500).
    pub error: Option<String>,
}

impl HostStartResponse {
    fn set(&mut self, status: &str, headers: &[Field<'_>]) -> Result<(), String> {
        let code = validate_status(status).map_err(|e| format!("invalid status {status:?}: {e}"))?;
        let mut head = ResponseHead::new(code);
        head.reason = Some(status[4..].to_owned());
        for f in headers {
            let Ok(name) = std::str::from_utf8(f.name.as_slice()) else {
                return Err("field name is not a token".to_owned());
            };
            let value = f.value.as_slice();
            validate_field(name, value).map_err(|e| format!("invalid field {name:?}: {e}"))?;
            if name.eq_ignore_ascii_case("content-length") {
                let v =
                    std::str::from_utf8(value).ok().filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
                let len = v.and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| "invalid Content-Length".to_owned())?;
                match self.content_length {
                    Some(l) if l != len => return Err("conflicting Content-Length fields".to_owned()),
                    // The same value twice is sent once.
                    Some(_) => {}
                    // RFC 9110 §8.6: never on a 204.
                    None if code == 204 => {}
                    None => self.content_length = Some(len),
                }
                continue;
            }
            head.own_date |= name.eq_ignore_ascii_case("date");
            head.own_server |= name.eq_ignore_ascii_case("server");
            head.fields.push(name, value);
        }
        self.head = Some(head);
        Ok(())
    }
}

impl StartResponse for HostStartResponse {
    fn start_response(
        &mut self,
        status: RStr<'_>,
        headers: RSlice<'_, Field<'_>>,
        exc_info: ROption<RStr<'_>>,
    ) -> RResult<(), RString> {
        if (self.head.is_some() || self.error.is_some()) && exc_info.is_none() {
            let msg = "start_response called a second time without exc_info".to_owned();
            self.error = Some(msg.clone());
            return RResult::RErr(msg.into());
        }
        // A call with exc_info replaces everything set before (PEP 3333).
        *self = HostStartResponse::default();
        match self.set(status.as_str(), headers.as_slice()) {
            Ok(()) => RResult::ROk(()),
            Err(msg) => {
                self.head = None;
                self.content_length = None;
                self.error = Some(msg.clone());
                RResult::RErr(msg.into())
            }
        }
    }
}

/// Where `wsgi.input` reads from.
enum Source<'a> {
    None,
    Buffered(&'a mut Buffered),
    Streamed(&'a BodyPipe),
}

/// `wsgi.input`: the buffered body, the body pipe, or nothing.
struct HostInput<'a> {
    source: Source<'a>,
    failed: bool,
}

impl Input for HostInput<'_> {
    fn read(&mut self, mut buf: RSliceMut<'_, u8>) -> RResult<usize, RString> {
        let read = match &mut self.source {
            Source::None => return RResult::ROk(0),
            Source::Buffered(b) => b.read(buf.as_mut_slice()).map_err(|e| format!("reading the request body: {e}")),
            Source::Streamed(pipe) => pipe.read(buf.as_mut_slice()),
        };
        match read {
            Ok(n) => RResult::ROk(n),
            Err(e) => {
                self.failed = true;
                RResult::RErr(e.into())
            }
        }
    }
}

/// `wsgi.errors`: each write becomes one log line tagged with the plugin's name, its control
/// characters escaped (a message cannot end its line and forge one of the server's).
struct HostErrors<'a> {
    plugin: &'a str,
}

impl ErrorStream for HostErrors<'_> {
    fn write(&mut self, msg: RStr<'_>) {
        let msg = msg.as_str().trim_end();
        if !msg.is_empty() {
            tracing::warn!(plugin = %self.plugin, "{}", crate::escape::controls(msg));
        }
    }
}

/// The request facts the environ needs besides the head.
pub struct CallInfo<'a> {
    /// `SCRIPT_NAME`.
    pub script_name: &'a str,
    /// `PATH_INFO`, decoded.
    pub path_info: &'a [u8],
    /// The connection's addresses.
    pub peer: &'a Peer,
    /// The script NAME a `serves_script` plugin was routed for (`portico.script`).
    pub script: Option<&'a str>,
}

/// What the application answered.
pub struct AppOutcome {
    /// The start_response state.
    pub start: HostStartResponse,
    /// The body it returned, as it crossed the boundary (a variant newer than the host's
    /// `portico-api` is possible: see `crate::worker::respond`).
    pub body: Body_NE,
    /// Whether reading the body failed (client gone or timed out).
    pub input_failed: bool,
}

/// `SERVER_NAME`: the Host (or absolute-form authority) without its port, else the local IP.
fn server_name<'h>(head: &'h RequestHead, authority: Option<&'h [u8]>, local: &'h str) -> &'h str {
    let host = authority.or_else(|| head.host.as_ref().map(|r| head.slice(r))).unwrap_or(b"");
    let host = if host.starts_with(b"[") {
        // IPv6 literal: keep the brackets, drop the port.
        host.iter().position(|&b| b == b']').map_or(host, |i| &host[..=i])
    } else {
        host.iter().position(|&b| b == b':').map_or(host, |i| &host[..i])
    };
    match std::str::from_utf8(host) {
        Ok(h) if !h.is_empty() => h,
        _ => local,
    }
}

/// Request fields are lent to the plugin from a stack array when there are at most this many.
const STACK_FIELDS: usize = 32;

/// What answers at the end of a pipeline.
#[derive(Clone, Copy)]
pub enum Final<'p> {
    /// A plugin's application.
    Plugin(&'p Plugin),
    /// The docroot (a mount with `static = true`): the file at `path` (decoded).
    Docroot {
        /// Static serving, shared by the workers.
        statics: &'p Mutex<StaticFiles>,
        /// The request.
        head: &'p RequestHead,
        /// The full decoded path (SCRIPT_NAME + PATH_INFO).
        path: &'p [u8],
        /// Whether a resolved file may be served through this mount (its fence).
        allowed: &'p dyn Fn(&std::path::Path) -> bool,
    },
}

/// The rest of a pipeline, as the middleware in front of it sees it: the host's
/// [`NextApplication`], calling the next middleware or, at the end, the application.
struct HostNext<'p> {
    middleware: &'p [Arc<Plugin>],
    app: Final<'p>,
}

impl NextApplication for HostNext<'_> {
    fn call(&self, environ: &mut Environ<'_>, start_response: StartResponse_TO<'_, RMut<'_, ()>>) -> Body_NE {
        run_pipeline(self.middleware, self.app, environ, start_response)
    }
}

/// Calls the first middleware with the rest of the pipeline as its next application, or the
/// application when there is none. Plugins fence their own panics (the SDK); nothing here
/// can panic, so nothing unwinds back into a plugin.
fn run_pipeline(
    middleware: &[Arc<Plugin>],
    app: Final<'_>,
    environ: &mut Environ<'_>,
    start_response: StartResponse_TO<'_, RMut<'_, ()>>,
) -> Body_NE {
    match middleware.split_first() {
        Some((first, rest)) => match first.module.middleware() {
            ROption::RSome(entry) => {
                let next = HostNext { middleware: rest, app };
                entry(environ, start_response, NextApplication_TO::from_ptr(RRef::new(&next), TD_Opaque))
            }
            // Checked when the route was built, so unreachable; were it reached, fail closed
            // (no start_response: the worker answers 500) rather than skip the filter.
            ROption::RNone => {
                tracing::error!(plugin = %first.name, "plugin {} has no middleware entry point; answering 500", first.name);
                let _ = (rest, environ, start_response);
                Body_NE::new(Body::Empty)
            }
        },
        None => match app {
            Final::Plugin(p) => (p.module.application())(environ, start_response),
            // Host code called from inside a plugin (through HostNext): a panic must not unwind
            // into it. Caught, it leaves start_response uncalled, so the worker answers 500.
            Final::Docroot { statics, head, path, allowed } => {
                let body = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    crate::static_files::app::call(statics, head, path, allowed, start_response)
                }))
                .unwrap_or_else(|_| {
                    tracing::error!("static files behind middleware panicked; answering 500");
                    Body::Empty
                });
                Body_NE::new(body)
            }
        },
    }
}

/// Runs `app` on one request, behind `middleware` (outermost first); `plugin` names the
/// request (its `wsgi.errors` tag). `CONTENT_LENGTH` is the head's: a chunked body has none,
/// buffered or not (the application reads `wsgi.input` to its end, as with Gunicorn's
/// `wsgi.input_terminated`).
pub fn call(
    plugin: &Plugin,
    app: Final<'_>,
    middleware: &[Arc<Plugin>],
    head: &RequestHead,
    info: &CallInfo<'_>,
    body: &mut RequestBody,
) -> AppOutcome {
    let parts = target::split(head.target(), head.form);
    let remote_addr = info.peer.ips.0.as_str();
    let local_ip = info.peer.ips.1.as_str();
    let to_field = |(n, v): &(std::ops::Range<usize>, std::ops::Range<usize>)| Field {
        name: RSlice::from_slice(head.slice(n)),
        value: RSlice::from_slice(head.slice(v)),
    };
    let mut stack = [Field::new("", ""); STACK_FIELDS];
    let heap: Vec<Field<'_>>;
    let fields: &[Field<'_>] = if head.fields.len() <= STACK_FIELDS {
        for (slot, f) in stack.iter_mut().zip(&head.fields) {
            *slot = to_field(f);
        }
        &stack[..head.fields.len()]
    } else {
        heap = head.fields.iter().map(to_field).collect();
        &heap
    };
    let source = match body {
        RequestBody::None => Source::None,
        RequestBody::Buffered(b) => Source::Buffered(b),
        RequestBody::Streamed(pipe) => Source::Streamed(pipe),
    };
    let mut input = HostInput { source, failed: false };
    let mut errors = HostErrors { plugin: &plugin.name };
    let mut start = HostStartResponse::default();
    let content_length = match head.framing {
        crate::http::request::Framing::Length(n) => ROption::RSome(n),
        _ => ROption::RNone,
    };
    let extra = [Field::new("portico.script", info.script.unwrap_or(""))];
    let body = {
        let mut environ = Environ {
            request_method: RStr::from_str(head.method()),
            script_name: RStr::from_str(info.script_name),
            path_info: RSlice::from_slice(info.path_info),
            query_string: RSlice::from_slice(parts.query),
            request_target: RSlice::from_slice(head.target()),
            server_protocol: RStr::from_str(head.version.as_str()),
            server_name: RStr::from_str(server_name(head, parts.authority, local_ip)),
            server_port: info.peer.local.port(),
            remote_addr: RStr::from_str(remote_addr),
            remote_port: info.peer.remote.port(),
            url_scheme: RStr::from_str(if info.peer.https { "https" } else { "http" }),
            content_type: RSlice::from_slice(head.content_type.as_ref().map_or(&b""[..], |r| head.slice(r))),
            content_length,
            headers: RSlice::from_slice(fields),
            extra: RSlice::from_slice(&extra[..info.script.map_or(0, |_| 1)]),
            input: Input_TO::from_ptr(RMut::new(&mut input), TD_Opaque),
            errors: ErrorStream_TO::from_ptr(RMut::new(&mut errors), TD_Opaque),
        };
        let sr = StartResponse_TO::from_ptr(RMut::new(&mut start), TD_Opaque);
        run_pipeline(middleware, app, &mut environ, sr)
    };
    AppOutcome { start, body, input_failed: input.failed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(sr: &mut HostStartResponse, status: &str, fields: &[(&str, &str)], exc: bool) -> Result<(), String> {
        let fields: Vec<Field<'_>> = fields.iter().map(|(n, v)| Field::new(n, v)).collect();
        let exc_info = if exc { ROption::RSome(RStr::from_str("boom")) } else { ROption::RNone };
        sr.start_response(RStr::from_str(status), RSlice::from_slice(&fields), exc_info)
            .into_result()
            .map_err(Into::into)
    }

    #[test]
    fn start_response_keeps_a_checked_head() {
        let mut sr = HostStartResponse::default();
        start(&mut sr, "201 Made It", &[("Content-Type", "text/plain"), ("Content-Length", "5"), ("Date", "x")], false)
            .unwrap();
        let head = sr.head.as_ref().unwrap();
        assert_eq!(
            (head.code, head.reason.as_deref(), head.own_date, head.own_server),
            (201, Some("Made It"), true, false)
        );
        assert_eq!(sr.content_length, Some(5));
        let names: Vec<&str> = head.fields.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["Content-Type", "Date"], "Content-Length becomes the framing");
    }

    #[test]
    fn start_response_refuses_what_would_break_the_response() {
        for (status, fields) in [
            ("200", &[][..]),
            ("100 Continue", &[]),
            ("200 OK", &[("X-Split", "a\r\nb")]),
            ("200 OK", &[("Connection", "close")]),
            ("200 OK", &[("Content-Length", "5"), ("Content-Length", "6")]),
            ("200 OK", &[("Content-Length", "-1")]),
        ] {
            let mut sr = HostStartResponse::default();
            assert!(start(&mut sr, status, fields, false).is_err(), "{status} {fields:?}");
            assert!(sr.head.is_none() && sr.error.is_some());
        }
        let mut sr = HostStartResponse::default();
        start(&mut sr, "204 No Content", &[("Content-Length", "0")], false).unwrap();
        assert_eq!(sr.content_length, None, "never a Content-Length on a 204 (RFC 9110 §8.6)");
    }

    #[test]
    fn a_second_call_needs_exc_info_and_replaces_the_first() {
        let mut sr = HostStartResponse::default();
        start(&mut sr, "200 OK", &[("X-A", "1")], false).unwrap();
        assert!(start(&mut sr, "500 Oops", &[], false).is_err(), "PEP 3333: only with exc_info");
        start(&mut sr, "500 Oops", &[("X-B", "2")], true).unwrap();
        let head = sr.head.as_ref().unwrap();
        assert_eq!(head.code, 500);
        assert_eq!(head.fields.iter().map(|(n, _)| n).collect::<Vec<_>>(), ["X-B"]);
        assert!(sr.error.is_none());
    }
}
