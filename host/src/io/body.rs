//! A request body being read off a connection ([`BodyIn`]): decoded by its framing and sent to
//! its sink — collected whole before the call (request buffering, the default:
//! [`crate::exchange::spool`]), or pushed to the running application's pipe (a mount with
//! `request_buffering = false`: [`crate::exchange::body_pipe`]) — with the clocks that end a
//! body arriving too slowly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::exchange::body_pipe::BodyPipe;
use crate::exchange::spool::{Buffered, Spool};
use crate::http::decode::Decoder;
use crate::http::error::RequestError;
use crate::settings::Config;

/// A request body being read off the socket.
pub struct BodyIn {
    decoder: Decoder,
    sink: Sink,
    /// Decoded bytes of one `feed`, reused from feed to feed for a spooled body.
    decoded: Vec<u8>,
    /// Bytes on the wire so far, framing included.
    received: u64,
    /// When the client began sending it (or was told to, with a `100 Continue`).
    started: Instant,
}

/// Where a body being read goes.
enum Sink {
    /// Request buffering: collected here; the application is called once it is whole.
    Spool(Spool),
    /// Streamed: pushed to the running application's pipe.
    Pipe(Arc<BodyPipe>),
}

/// What [`BodyIn::feed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of the input used (the rest belongs to the next request).
    pub used: usize,
    /// The body is complete.
    pub done: bool,
    /// The application may be called now: a buffered body is whole; a streamed one has its
    /// first `--body-buffer-size` bytes here.
    pub ready: bool,
}

impl BodyIn {
    /// A body collected whole before the call.
    pub fn buffered(decoder: Decoder) -> BodyIn {
        BodyIn { decoder, sink: Sink::Spool(Spool::new()), decoded: Vec::new(), received: 0, started: Instant::now() }
    }

    /// A body streamed to the application through `pipe`.
    pub fn streamed(decoder: Decoder, pipe: Arc<BodyPipe>) -> BodyIn {
        BodyIn { decoder, sink: Sink::Pipe(pipe), decoded: Vec::new(), received: 0, started: Instant::now() }
    }

    /// Decodes `input` into the sink.
    ///
    /// # Errors
    /// Malformed chunked framing (400), over `--max-body` counting framing bytes (413), a
    /// temporary file that cannot be written (500).
    pub fn feed(&mut self, input: &[u8], cfg: &Config) -> Result<Fed, RequestError> {
        let data = &mut self.decoded;
        data.clear();
        let (used, done) = self.decoder.decode(input, data).map_err(|e| {
            tracing::debug!("chunked body: {e}");
            RequestError::BadRequest("malformed chunked body")
        })?;
        // Bytes on the wire, framing included: a chunked body's sizes, extensions and CRLFs
        // count toward the limit too.
        self.received += used as u64;
        if self.received > cfg.max_body {
            return Err(RequestError::ContentTooLarge { limit: cfg.max_body });
        }
        let ready = match &mut self.sink {
            Sink::Spool(spool) => {
                spool.push(data, cfg.body_buffer, &cfg.body_temp_dir).map_err(|e| {
                    tracing::error!("request body: temporary file in {}: {e}", cfg.body_temp_dir.display());
                    RequestError::Internal("the request body could not be stored")
                })?;
                done
            }
            Sink::Pipe(pipe) => {
                pipe.push(std::mem::take(data));
                if done {
                    pipe.finish();
                }
                done || pipe.buffered() >= cfg.body_buffer
            }
        };
        Ok(Fed { used, done, ready })
    }

    /// The complete body: what a buffered body's application reads (`None` for a streamed
    /// one, already in its pipe).
    ///
    /// # Errors
    /// The temporary file could not be rewound (500).
    pub fn finish(self) -> Result<Option<Buffered>, RequestError> {
        match self.sink {
            Sink::Spool(spool) => spool.finish().map(Some).map_err(|e| {
                tracing::error!("request body: rewinding its temporary file: {e}");
                RequestError::Internal("the request body could not be stored")
            }),
            Sink::Pipe { .. } => Ok(None),
        }
    }

    /// The body will not be completed: the application reading it sees an error.
    pub fn fail(self, why: &str) {
        if let Sink::Pipe(pipe) = self.sink {
            pipe.fail(why);
        }
    }

    /// Whether reading stops for now: a streamed body's pipe is full (the worker asks to
    /// resume when it has read).
    pub fn hold_back(&self) -> bool {
        matches!(&self.sink, Sink::Pipe(pipe) if pipe.full_then_pause())
    }

    /// The client starts sending now (it had a `100 Continue`): the clocks count from here.
    pub fn restart_clocks(&mut self) {
        self.started = Instant::now();
    }

    /// Whether the client is the one we wait for: not while the pipe is full (we hold back
    /// reading) nor before a `100 Continue` the client waits for.
    pub fn waiting_on_client(&self) -> bool {
        match &self.sink {
            Sink::Spool(_) => true,
            Sink::Pipe(pipe) => !pipe.is_paused() && !pipe.awaiting_continue(),
        }
    }

    /// Whether a buffered body is arriving slower than `min_rate` bytes a second on average
    /// after `grace` (mod_reqtimeout's rule: `grace` plus a second per `min_rate` bytes). A
    /// streamed body goes at its application's pace and has only the gap between reads.
    pub fn too_slow(&self, now: Instant, grace: Duration, min_rate: u64) -> bool {
        if min_rate == 0 || !matches!(self.sink, Sink::Spool(_)) {
            return false;
        }
        let allowed = grace.saturating_add(Duration::from_secs_f64(self.received as f64 / min_rate as f64));
        now.saturating_duration_since(self.started) > allowed
    }
}
