//! From an application's answer to a response: calling it ([`run_call`]), deciding the
//! framing from what it returned (RFC 9112 §6; PEP 3333 on `Content-Length`), and pulling a
//! streamed body one chunk at a time ([`pull`]).
//!
//! Rules, in the order [`run_call`] applies them:
//! - No valid `start_response` (never called, refused, a second call without `exc_info`): 500
//!   from the server, logged with the plugin's name; the body is dropped (PEP 3333 `close()`).
//! - No body for `HEAD`, 204 and 304 (RFC 9110 §6.4.1); a `HEAD` answer still says the length
//!   `GET` would have, when the application gave bytes or a `Content-Length`.
//! - Bytes: `Content-Length` is the application's, else their length. Longer than its
//!   `Content-Length`: cut and the connection closed; shorter: sent and the connection closed
//!   (the client sees a short body). Both logged.
//! - A file (`Body::File`): as bytes, its length being the file body's; sent with
//!   `sendfile(2)` by the event loop.
//! - A stream: `Content-Length` if given, else chunked (HTTP/1.1) or close-delimited
//!   (HTTP/1.0); chunks are framed by the stream's [`Encoder`]. A poll that answers `Pending`
//!   hands the stream back to its connection, which holds it without a worker until the
//!   plugin wakes it (`crate::exchange::stream_wake`).
//! - A body of a kind this host does not know (a `NonExhaustive` variant added after the
//!   host's `portico-api`, from a newer plugin): 500, logged; a chunk of an unknown kind ends
//!   the response (the connection is closed).
//! - Keep-alive only if the request's whole body was read off the socket (RFC 9112 §9.6 lets
//!   us close instead of draining) and the server is not shutting down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use abi_stable::std_types::RResult;
use portico_api::abi::{self, Body};

use crate::exchange::{CallJob, Chunk, ConnId, Notifier, Reply, StreamState};
use crate::http::encode::{Encoder, Ending};
use crate::http::outgoing::{Piece, Response};
use crate::http::request::Version;
use crate::http::response::{Framing, bodiless};
use crate::plugin::call::{self, CallInfo, Final};
use crate::routing::Target;
use crate::static_files::StaticFiles;

/// Runs the application of `job` and turns its answer into a [`Reply`]; a streamed body's
/// wakes go through `notifier`.
pub fn run_call(job: CallJob, docroot: &Mutex<StaticFiles>, shutting_down: &AtomicBool, notifier: &Notifier) -> Reply {
    let CallJob { conn, route, head, peer, mut body, .. } = job;
    let info = CallInfo {
        script_name: &route.script_name,
        path_info: &route.path_info,
        peer: &peer,
        script: route.script.as_deref(),
    };
    let Some(named) = route.named() else {
        // Routing never builds a docroot route without middleware (that is a plain static
        // file); were one built, answer 500 rather than panic.
        tracing::error!("an application route with nothing to call; answering 500");
        let prepared = Response::error(500).prepare(head.version, true, head.is_head());
        return Reply { conn, prepared, stream: None };
    };
    // A docroot mount: the files answer at the end of the pipeline (the request is named by
    // its outermost middleware).
    let full_path: Vec<u8>;
    let fenced;
    let app = match &route.target {
        Target::Plugin(p) => Final::Plugin(p),
        Target::Docroot { prefix, fence } => {
            full_path = [route.script_name.as_bytes(), &route.path_info].concat();
            fenced = |real: &std::path::Path| fence.allows(real, Some(&**prefix));
            Final::Docroot { statics: docroot, head: &head, path: &full_path, allowed: &fenced }
        }
    };
    let outcome = call::call(named, app, &route.middleware, &head, &info, &mut body);
    let body_complete = body.is_complete();
    let mut close = !head.keep_alive || shutting_down.load(Ordering::Relaxed) || !body_complete || outcome.input_failed;
    let version = head.version;
    let head_request = head.is_head();

    let start = outcome.start;
    let mut answer = match (start.head, start.error) {
        (Some(h), None) => h,
        (_, err) => {
            drop(outcome.body); // PEP 3333 close() on the discarded body
            let why = err.unwrap_or_else(|| "application returned without calling start_response".to_owned());
            tracing::error!(plugin = %named.name, "plugin {}: {why}; answered 500", named.name);
            let prepared = Response::error(500).prepare(version, close, head_request);
            return Reply { conn, prepared, stream: None };
        }
    };
    let name = &named.name;
    let body = match outcome.body.into_enum() {
        Ok(body) => body,
        Err(unknown) => {
            let kind = unknown.non_exhaustive.get_discriminant();
            drop(unknown); // through the plugin's own vtable
            tracing::error!(
                plugin = %name,
                "plugin {name}: returned a body of a kind (discriminant {kind}) this server's portico-api {} does not \
                 know (built against a newer one?); answered 500",
                portico_api::abi::VERSION
            );
            let prepared = Response::error(500).prepare(version, close, head_request);
            return Reply { conn, prepared, stream: None };
        }
    };
    let declared = start.content_length;
    let no_body = bodiless(answer.code, head_request);
    let mut pieces = Vec::new();
    let mut stream = None;
    answer.framing = match body {
        Body::Stream(s) if !no_body => {
            let framing = match (declared, version) {
                (Some(len), _) => Framing::Length(len),
                (None, Version::Http11) => Framing::Chunked,
                (None, Version::Http10) => Framing::CloseDelimited,
            };
            if framing == Framing::Length(0) {
                drop(s);
            } else {
                let (plugin, app) = (Arc::clone(named), Arc::clone(&route.app));
                let state = StreamState::new(s, plugin, app, Encoder::new(framing), conn, notifier.clone());
                stream = Some(Box::new(state));
            }
            framing
        }
        Body::Stream(s) => {
            drop(s);
            declared.map_or(Framing::None, Framing::Length)
        }
        Body::Empty if no_body => declared.map_or(Framing::None, Framing::Length),
        Body::Empty => {
            if declared.is_some_and(|l| l > 0) {
                tracing::warn!(plugin = %name, "plugin {name}: body shorter than its Content-Length; closing the connection");
                close = true;
            }
            Framing::Length(declared.unwrap_or(0))
        }
        body @ (Body::Bytes(_) | Body::Static(_) | Body::File(_)) => {
            let piece = match body {
                Body::Bytes(v) => Piece::Plugin(v),
                Body::Static(s) => Piece::Static(s.as_slice()),
                Body::File(f) => {
                    let (offset, len) = (f.offset(), f.len());
                    Piece::File { file: Arc::new(f.into_file()), offset, len }
                }
                _ => unreachable!("matched above"),
            };
            let len = piece.len();
            match declared {
                // 204 and 304 never get a Content-Length from us (RFC 9110 §8.6); HEAD gets
                // the length GET would have (§9.3.2).
                None if no_body && head_request && answer.code != 204 && answer.code != 304 => Framing::Length(len),
                None if no_body => Framing::None,
                Some(cl) if no_body => Framing::Length(cl),
                Some(cl) if cl < len => {
                    tracing::warn!(plugin = %name, "plugin {name}: body of {len} bytes longer than its Content-Length {cl}; cut and closing");
                    close = true;
                    pieces.push(match piece {
                        Piece::File { file, offset, .. } => Piece::File { file, offset, len: cl },
                        other => Piece::Owned(other.bytes().unwrap_or_default()[..cl as usize].to_vec()),
                    });
                    Framing::Length(cl)
                }
                Some(cl) => {
                    if cl > len {
                        tracing::warn!(plugin = %name, "plugin {name}: body of {len} bytes shorter than its Content-Length {cl}; closing");
                        close = true;
                    }
                    pieces.push(piece);
                    Framing::Length(cl)
                }
                None => {
                    pieces.push(piece);
                    Framing::Length(len)
                }
            }
        }
        // A variant added to the ABI after this match was written: into_enum above already
        // refused what this host's portico-api does not know, so this is a host bug.
        other => {
            drop(other);
            tracing::error!(plugin = %name, "plugin {name}: a body kind this server does not handle; answered 500");
            let prepared = Response::error(500).prepare(version, close, head_request);
            return Reply { conn, prepared, stream: None };
        }
    };
    let prepared = Response { head: answer, body: pieces }.prepare(version, close, head_request);
    Reply { conn, prepared, stream }
}

/// Polls a streamed body for its next chunk (empty chunks are skipped, up to 64 of them).
/// A `Pending` answer hands the stream back marked `waiting`, unless the plugin woke it during
/// the poll: then it is handed back ready, and the connection asks for the next pull.
pub fn pull(conn: ConnId, mut st: Box<StreamState>) -> Chunk {
    let mut data = Vec::new();
    for _ in 0..64 {
        st.wake.begin_poll();
        let polled = match st.stream.poll_chunk(&st.waker) {
            RResult::ROk(chunk) => chunk.into_enum(),
            RResult::RErr(e) => {
                st.wake.polled();
                let name = &st.plugin.name;
                tracing::error!(plugin = %name, "plugin {name}: {e}; response cut short, closing the connection");
                return Chunk { conn, data, payload: 0, stream: None, close: true, waiting: false };
            }
        };
        match polled {
            Ok(abi::Chunk::Data(chunk)) if chunk.is_empty() => continue,
            Ok(abi::Chunk::Data(chunk)) => {
                st.wake.polled();
                let e = st.encoder.encode(chunk.as_slice(), &mut data);
                if e.cut {
                    let name = &st.plugin.name;
                    tracing::warn!(plugin = %name, "plugin {name}: streamed body longer than its Content-Length; cut and closing");
                }
                // Done (cut, or every promised byte sent): the stream is dropped here, on the
                // worker.
                let stream = (!e.cut && !e.complete).then_some(st);
                return Chunk { conn, data, payload: e.payload, stream, close: e.cut, waiting: false };
            }
            Ok(abi::Chunk::Pending) => {
                let waiting = st.wake.park();
                return Chunk { conn, data, payload: 0, stream: Some(st), close: false, waiting };
            }
            Ok(abi::Chunk::End) => {
                let close = match st.encoder.finish(&mut data) {
                    Ending::Clean => false,
                    Ending::Close => true,
                    Ending::Short { sent, promised } => {
                        let name = &st.plugin.name;
                        tracing::warn!(plugin = %name, "plugin {name}: streamed body of {sent} bytes shorter than its Content-Length {promised}; closing");
                        true
                    }
                };
                return Chunk { conn, data, payload: 0, stream: None, close, waiting: false };
            }
            Ok(_) | Err(_) => {
                let name = &st.plugin.name;
                tracing::error!(
                    plugin = %name,
                    "plugin {name}: a body chunk of a kind this server's portico-api {} does not know; response cut \
                     short, closing the connection",
                    portico_api::abi::VERSION
                );
                return Chunk { conn, data, payload: 0, stream: None, close: true, waiting: false };
            }
        }
    }
    st.wake.polled();
    Chunk { conn, data, payload: 0, stream: Some(st), close: false, waiting: false }
}
