//! What answers a parsed request, decided on the event loop (the [`Handler`] side of a
//! connection): routing with one consistent table, then
//! - a static file, an admin page, `OPTIONS *`, a 404 for a plugin that is not loaded, a 405
//!   for CONNECT, or a 500 for a mount whose middleware is missing — answered here, at once;
//! - or an application: a [`CallJob`] for the worker pool, or for this loop's own thread
//!   when every plugin of the call promised never to block and the request has no body
//!   ([`super::inline`]).

use std::sync::Arc;

use super::conn::{Decision, Handler};
use super::event_loop::EventLoop;
use super::handler::Admission;
use crate::admin;
use crate::exchange::body_pipe::BodyPipe;
use crate::exchange::{CallJob, ConnId, Job, Peer};
use crate::http::outgoing::Response;
use crate::http::request::{HeadLimits, RequestHead};
use crate::http::response::{Framing, ResponseHead};
use crate::http::target;
use crate::routing::{self, Route};
use crate::settings::Config;

/// The methods `OPTIONS *` lists (RFC 9110 §9.3.7): what the server as a whole may accept.
const SERVER_METHODS: &str = "GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE";

impl Handler for EventLoop {
    fn config(&self) -> &Config {
        &self.shared.config
    }

    fn limits(&self) -> &HeadLimits {
        &self.limits
    }

    fn now(&self) -> std::time::Instant {
        self.now
    }

    fn draining(&self) -> bool {
        self.draining.is_some()
    }

    fn decide(&mut self, id: ConnId, peer: &Peer, head: Box<RequestHead>) -> Decision {
        let respond = |response| Decision::Respond { response, close: false };
        let config = &self.shared.config;
        // The health check: every client, before anything else is looked at.
        if let Some(path) = &config.health
            && target::split(head.target(), head.form).path == path.as_bytes()
        {
            return health(&head, self.draining.is_some());
        }
        // The server's own pages, for the clients allowed to see them (the others are routed
        // as if the pages did not exist).
        let admin = config.admin.as_ref().filter(|_| {
            config.admin_public || (!peer.forwarded && (peer.unix || admin::is_loopback(peer.remote.ip())))
        });
        let table = self.shared.routes.load();
        let route = match routing::route(&head, &table, admin) {
            Ok(r) => r,
            Err(e) => return Decision::Reject(e),
        };
        match route {
            Route::App(route) => Decision::Call(Box::new(CallJob::new(id, route, head, peer.clone()))),
            Route::Static { path } => {
                let fence = &table.fence;
                let response = self.statics.serve(&head, &path, &|real| fence.allows(real, None));
                self.shared.stats.loop_conns(self.index).docroot_responded(response.head.code);
                respond(response)
            }
            Route::NotFound => {
                let response = self.statics.not_found();
                self.shared.stats.loop_conns(self.index).docroot_responded(response.head.code);
                respond(response)
            }
            Route::Admin(page) => {
                // This loop's counts fresh (the asking connection as writing), so a person
                // sees their own connection; the other loops' are from their last sweep.
                self.shared.stats.loop_conns(self.index).store(self.count_conns());
                let Some(paths) = &config.admin else { return respond(Response::error(404)) };
                respond(admin::respond(page, &head, paths, &self.shared.stats, &table, self.shared.tree.as_deref()))
            }
            Route::ServerOptions => {
                let head = ResponseHead::new(200).field("Allow", SERVER_METHODS).framing(Framing::Length(0));
                respond(Response { head, body: Vec::new() })
            }
            Route::NotAllowed => Decision::Respond { response: Response::error(405), close: true },
            Route::FailClosed { mount, missing } => {
                tracing::error!(plugin = %missing, "mount {mount:?}: middleware {missing:?} is not loaded; answering 500");
                respond(Response::error(500))
            }
        }
    }

    fn submit(&mut self, job: Job) {
        self.send_job(job);
    }

    /// A call that may run on this loop's thread ([`super::inline::eligible`]) skips its
    /// application's gate: the gate's limits share out worker threads, and the call takes
    /// none (nor does it wait: it runs after this turn). A stopped application still refuses.
    fn admit(&mut self, mut job: Box<CallJob>) -> Admission {
        if self.shared.config.inline_timeout.is_some() && super::inline::eligible(&job) {
            let gate = &job.route.app.gate;
            if let Err(why) = gate.admit_ungated() {
                return Admission::Refused(why);
            }
            job.gated = false;
            self.inline.push(job);
            return Admission::Sent;
        }
        super::handler::admit_gated(self, job)
    }

    fn body_pipe(&self, id: ConnId, expect_continue: bool) -> Arc<BodyPipe> {
        Arc::new(BodyPipe::new(id, self.notifier.clone(), self.shared.config.body_timeout, expect_continue))
    }

    fn pump_later(&mut self, token: usize) {
        self.ready.push(token);
    }

    fn flush_later(&mut self, token: usize) {
        self.flush_again.push(token);
    }

    fn scratch(&mut self) -> &mut Vec<u8> {
        &mut self.scratch
    }

    fn served(&mut self) {
        self.shared.stats.loop_conns(self.index).served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn responded(&mut self, status: u16) {
        self.shared.stats.loop_conns(self.index).responded(status);
    }
}

/// The health check's answer (`--health-path`): `200 ok` while serving, `503 draining` and
/// a closed connection once shutting down; `GET` and `HEAD` only.
fn health(head: &RequestHead, draining: bool) -> Decision {
    if !matches!(head.method(), "GET" | "HEAD") {
        return Decision::Respond { response: Response::error(405).field("Allow", "GET, HEAD"), close: true };
    }
    let (code, body) = if draining { (503, "draining\n") } else { (200, "ok\n") };
    let response =
        Response::page(code, "text/plain; charset=utf-8", body.as_bytes().to_vec()).field("Cache-Control", "no-store");
    Decision::Respond { response, close: draining }
}
