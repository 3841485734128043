//! A connection's read buffer: how it grows for a read, and how it shrinks when a request is
//! whole, so what a connection holds is bounded by what it is doing, not by the largest
//! request it ever read.
//!
//! - An empty buffer reads into the event loop's scratch and keeps only what came: an idle
//!   connection holds no buffer, and a read that finds nothing allocates nothing.
//! - A non-empty one reads into its spare capacity, never cleared first (a 16 KiB stack
//!   buffer cleared per read was most of a small request's instructions, measured with
//!   callgrind), growing by at most [`READ_CHUNK`] at a time.
//! - [`release`]: once a request has left for its application with its whole body, the
//!   buffer gives its room back (a 60 KB head left it that large); a queued request then
//!   holds its parsed head and its body only (measured with `scripts/memory`).

use std::io;

use super::Transport;

/// Most bytes the read buffer grows by for one `read` call. 16 KiB.
pub const READ_CHUNK: usize = 16 * 1024;
/// Spare room below which the read buffer grows before a `read`. 1 KiB.
const READ_MIN: usize = 1024;

/// One `read(2)` from `sock` onto the end of `buf` (see the module docs for where it goes):
/// the bytes read, and whether that was less than there was room for (a short read).
///
/// # Errors
/// As `read(2)`; `WouldBlock` when nothing is there.
pub fn read_once(sock: &impl Transport, buf: &mut Vec<u8>, scratch: &mut Vec<u8>) -> io::Result<(usize, bool)> {
    if buf.is_empty() {
        scratch.clear();
        scratch.reserve(READ_CHUNK); // allocates once: `clear` keeps the capacity
        let room = scratch.capacity();
        let n = sock.read_into(scratch)?;
        buf.extend_from_slice(&scratch[..n]);
        return Ok((n, n < room));
    }
    if buf.capacity() - buf.len() < READ_MIN {
        buf.reserve(buf.len().clamp(4 * READ_MIN, READ_CHUNK));
    }
    let room = buf.capacity() - buf.len();
    let n = sock.read_into(buf)?;
    Ok((n, n < room))
}

/// Gives back the room `buf` does not use: all of it when it is empty, else what exceeds its
/// bytes (pipelined input) by more than [`READ_CHUNK`].
pub fn release(buf: &mut Vec<u8>) {
    if buf.is_empty() {
        *buf = Vec::new();
    } else if buf.capacity() > buf.len() + READ_CHUNK {
        buf.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_frees_an_empty_buffer_and_trims_a_large_one() {
        let mut empty = Vec::with_capacity(200_000);
        release(&mut empty);
        assert_eq!(empty.capacity(), 0);
        let mut pipelined = Vec::with_capacity(200_000);
        pipelined.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        release(&mut pipelined);
        assert!(pipelined.capacity() < READ_CHUNK, "{}", pipelined.capacity());
        assert_eq!(pipelined, b"GET / HTTP/1.1\r\n\r\n");
    }
}
