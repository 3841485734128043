//! The event loops: the only code that touches client sockets.
//!
//! | module | owns |
//! |---|---|
//! | [`event_loop`] | one mio loop per `--io-threads`: accept, the connection table, completions from workers, timeouts' sweep, drain on shutdown |
//! | [`balance`] | placing each accepted connection on the least-loaded event loop; the `--max-connections` count |
//! | [`dispatch`] | what answers a parsed request: a static file, an admin page or a server-made answer here, or a job for a worker |
//! | [`inline`] | the thread that drives a loop's turns and runs the calls of plugins that promised never to block, and its hand-over to a fresh thread when one breaks the promise |
//! | [`handler`] | what a connection and its event loop say to each other: the [`handler::Handler`] trait, a request's [`handler::Decision`] |
//! | [`conn`] | the per-connection state machine (HTTP/1.1 keep-alive, pipelining, request bodies, 100-continue, lingering close, timeouts) |
//! | [`read_buf`] | a connection's read buffer: growing for a read, shrinking once a request is whole |
//! | [`stream_slot`] | where a streamed response body is between pulls: parked, waiting for its plugin's wake, or with a worker |
//! | [`write`](mod@write) | a connection's write queue: `writev` of in-memory pieces, `sendfile` of file pieces |
//!
//! Invariants:
//! - **A worker never waits on a socket**: a request reaches the pool only once its head and
//!   its whole body have arrived (request buffering: [`crate::exchange::spool`]); only on a
//!   mount that opts out do bodies flow through a [`crate::exchange::body_pipe::BodyPipe`]
//!   the event loop fills while the application runs.
//! - A connection lives on one event loop for its whole life ([`crate::exchange::ConnId`]).
//! - One request at a time per connection: a pipelined request is parsed only after the
//!   previous response has been written, so responses go out in order (RFC 9112 §9.3.2).
//! - After any framing error the connection is closed once the error response is written.

pub mod balance;
pub mod body;
pub mod conn;
pub mod dispatch;
pub mod event_loop;
pub mod handler;
pub mod inline;
pub mod read_buf;
pub mod stream_slot;
pub mod write;

use std::io;
use std::os::fd::AsFd;

/// What a connection runs over: a stream socket the event loop polls ([`crate::listeners::Stream`]:
/// TCP or a Unix stream socket; a bare Unix socket pair in the state machine's unit tests).
pub trait Transport: AsFd + mio::event::Source {
    /// Reads into the spare capacity of `buf` (which must have some), extending it by what
    /// was read; `Ok(0)` at end of input. Nothing is cleared or copied first.
    ///
    /// # Errors
    /// As `read(2)`; `WouldBlock` when nothing is there.
    fn read_into(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        rustix::io::read(self.as_fd(), rustix::buffer::spare_capacity(buf)).map_err(io::Error::from)
    }

    /// Writes `bufs` with one `writev(2)`.
    ///
    /// # Errors
    /// As `writev(2)`; `WouldBlock` when the socket buffer is full.
    fn write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize>;

    /// Shuts down the writing half (a FIN to the peer).
    ///
    /// # Errors
    /// As `shutdown(2)`.
    fn shutdown_write(&self) -> io::Result<()>;

    /// Writes `bufs`; `more`: file bytes follow (see [`write::write_gathered`]).
    ///
    /// # Errors
    /// As [`Transport::write_vectored`].
    fn write_more(&self, bufs: &[io::IoSlice<'_>], more: bool) -> io::Result<usize>
    where
        Self: Sized,
    {
        write::write_gathered(self, bufs, more)
    }

    /// Sends up to `remaining` bytes of `file` from `offset` (`sendfile(2)` on a plain
    /// socket); `Ok(0)` when the file ended early.
    ///
    /// # Errors
    /// As `sendfile(2)`; `WouldBlock` when the socket buffer is full.
    fn send_file(&self, file: &std::fs::File, offset: u64, remaining: u64) -> io::Result<usize>
    where
        Self: Sized,
    {
        write::send_file(self, file, offset, remaining)
    }

    /// Sends bytes the transport holds back (TLS records the socket did not take); `Ok(true)`
    /// when none is left. A plain socket holds none.
    ///
    /// # Errors
    /// As `write(2)`.
    fn flush_pending(&self) -> io::Result<bool> {
        Ok(true)
    }

    /// Whether bytes the transport holds back still wait for the socket (a response is not
    /// out until they are).
    fn pending(&self) -> bool {
        false
    }

    /// Whether a read that returned less than there was room for means the socket has nothing
    /// more for now (true of a stream socket, epoll(7): the next bytes bring a new edge); not
    /// of TLS, whose reads give plaintext from records the session holds.
    fn short_read_drains(&self) -> bool {
        true
    }
}

/// mio's stream sockets read and write through `&Self`; `shutdown` takes `&self`.
macro_rules! transport {
    ($($stream:ty),*) => {$(
        impl Transport for $stream {
            fn write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
                io::Write::write_vectored(&mut &*self, bufs)
            }
            fn shutdown_write(&self) -> io::Result<()> {
                self.shutdown(std::net::Shutdown::Write)
            }
        }
    )*};
}

transport!(mio::net::TcpStream, mio::net::UnixStream);

/// Plain TCP and Unix sockets as above; TLS through its session ([`crate::tls::TlsStream`]).
impl Transport for crate::listeners::Stream {
    fn read_into(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            crate::listeners::Stream::Tls(t) => t.read_into(buf),
            _ => rustix::io::read(self.as_fd(), rustix::buffer::spare_capacity(buf)).map_err(io::Error::from),
        }
    }
    // Writing goes through here only: a TLS stream's socket is never written to directly.
    fn write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            crate::listeners::Stream::Tcp(s) => s.write_vectored(bufs),
            crate::listeners::Stream::Unix(s) => s.write_vectored(bufs),
            crate::listeners::Stream::Tls(t) => t.write_vectored(bufs),
        }
    }
    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            crate::listeners::Stream::Tcp(s) => s.shutdown_write(),
            crate::listeners::Stream::Unix(s) => s.shutdown_write(),
            crate::listeners::Stream::Tls(t) => t.shutdown_write(),
        }
    }
    fn write_more(&self, bufs: &[io::IoSlice<'_>], more: bool) -> io::Result<usize> {
        match self {
            crate::listeners::Stream::Tls(t) => t.write_vectored(bufs),
            _ => write::write_gathered(self, bufs, more),
        }
    }
    fn send_file(&self, file: &std::fs::File, offset: u64, remaining: u64) -> io::Result<usize> {
        match self {
            crate::listeners::Stream::Tls(t) => {
                // Records still waiting first: a chunk read now could not be taken anyway.
                if !t.flush_pending()? {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                write::read_then_write(self, file, offset, remaining, crate::tls::BUFFER_LIMIT)
            }
            _ => write::send_file(self, file, offset, remaining),
        }
    }
    fn flush_pending(&self) -> io::Result<bool> {
        match self {
            crate::listeners::Stream::Tls(t) => t.flush_pending(),
            _ => Ok(true),
        }
    }
    fn short_read_drains(&self) -> bool {
        !matches!(self, crate::listeners::Stream::Tls(_))
    }
    fn pending(&self) -> bool {
        match self {
            crate::listeners::Stream::Tls(t) => t.pending(),
            _ => false,
        }
    }
}
