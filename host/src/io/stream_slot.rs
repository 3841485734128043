//! Where a streamed response body is between pulls: [`StreamSlot`], one per response, owned
//! by its connection.
//!
//! ```text
//!  Parked ── take_for_pull ──► Pulling ── returned(chunk) ──► Parked | Waiting | None
//!                                 │ woken (StreamReady came before the chunk)
//!  Waiting ── woken ──► Parked    ▼ returned(waiting chunk) ──► Parked
//! ```
//!
//! Invariant: a `Waiting` stream is held by no worker and is pulled again only after its
//! plugin's wake (`crate::exchange::stream_wake`); a wake that races ahead of the chunk that
//! says "waiting" is remembered in `Pulling { woken }`, so none is lost.

use crate::exchange::StreamState;

/// A streamed response body: parked here between pulls (ready to pull), waiting here for its
/// plugin's wake (a push stream that answered `Pending`), or being pulled by a worker.
pub(super) enum StreamSlot {
    /// No stream (none, or it ended).
    None,
    /// Ready for the next pull.
    Parked(Box<StreamState>),
    /// Answered `Pending`: held without a worker until its plugin wakes it.
    Waiting(Box<StreamState>),
    /// A worker has it; `woken`: a wake arrived meanwhile.
    Pulling { woken: bool },
}

impl StreamSlot {
    /// A slot for a response's stream, if it has one.
    pub fn new(stream: Option<Box<StreamState>>) -> StreamSlot {
        stream.map_or(StreamSlot::None, StreamSlot::Parked)
    }

    /// A worker handed the stream back (or `None`: it ended); `waiting`: it answered
    /// `Pending`. Returns whether it now waits for a wake.
    pub fn returned(&mut self, stream: Option<Box<StreamState>>, waiting: bool) -> bool {
        let waiting = waiting && !matches!(self, StreamSlot::Pulling { woken: true });
        *self = match stream {
            Some(s) if waiting => StreamSlot::Waiting(s),
            Some(s) => StreamSlot::Parked(s),
            None => StreamSlot::None,
        };
        self.is_waiting()
    }

    /// Its plugin woke it (`StreamReady`). A wake of a stream that is not waiting (an earlier
    /// response's, or one already due) changes nothing.
    pub fn woken(&mut self) {
        match std::mem::replace(self, StreamSlot::None) {
            StreamSlot::Waiting(s) => *self = StreamSlot::Parked(s),
            StreamSlot::Pulling { .. } => *self = StreamSlot::Pulling { woken: true },
            other => *self = other,
        }
    }

    /// The stream, for a worker to pull, if it is ready.
    pub fn take_for_pull(&mut self) -> Option<Box<StreamState>> {
        match std::mem::replace(self, StreamSlot::Pulling { woken: false }) {
            StreamSlot::Parked(s) => Some(s),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The stream, for a worker to drop (the connection is closing), unless a worker has it.
    pub fn take_to_close(&mut self) -> Option<Box<StreamState>> {
        match std::mem::replace(self, StreamSlot::None) {
            StreamSlot::Parked(s) | StreamSlot::Waiting(s) => Some(s),
            other => {
                *self = other;
                None
            }
        }
    }

    /// Whether the response's body is complete (no stream left).
    pub fn is_none(&self) -> bool {
        matches!(self, StreamSlot::None)
    }

    /// Whether the stream waits for its plugin.
    pub fn is_waiting(&self) -> bool {
        matches!(self, StreamSlot::Waiting(_))
    }
}
