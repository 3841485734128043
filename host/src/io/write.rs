//! A connection's write queue: response pieces waiting for the socket, written in as few
//! system calls as the data allows — consecutive in-memory pieces gathered into one `writev`,
//! file pieces with `sendfile(2)` (zero copy), and a head that precedes a file sent with
//! `MSG_MORE` so both leave in the same segments (nginx's `tcp_nopush`).

use std::collections::VecDeque;
use std::io;

use super::Transport;
use crate::http::outgoing::Piece;

/// Most file bytes one `sendfile` call sends (or one read + write, without sendfile). 1 MiB.
const FILE_CHUNK: usize = 1024 * 1024;
/// Most queued pieces gathered into one `writev`.
const WRITEV_MAX: usize = 8;

/// A piece and how much of it has been written.
#[derive(Debug)]
struct Queued {
    piece: Piece,
    done: u64,
}

impl Queued {
    /// The in-memory bytes still to send (empty for a file piece).
    fn rest(&self) -> &[u8] {
        self.piece.bytes().map_or(&[][..], |b| &b[self.done as usize..])
    }

    fn remaining(&self) -> u64 {
        self.piece.len() - self.done
    }
}

/// What [`WriteQueue::write_to`] achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written.
    Drained,
    /// The socket would block; readiness will say when to go on.
    Blocked,
    /// `share` bytes were written and more is queued: let other connections have a turn.
    ShareUsed,
    /// A file piece's file ended before its promised length (it shrank after its
    /// `Content-Length` was sent): the response cannot be completed.
    FileShrank,
    /// The peer is gone (a write error, or a write of 0 bytes).
    Failed,
}

/// Output queued for one connection.
#[derive(Debug, Default)]
pub struct WriteQueue {
    queue: VecDeque<Queued>,
    /// In-memory bytes queued (file pieces cost no memory and are not counted).
    memory: usize,
}

impl WriteQueue {
    /// Queues `piece` (an empty one is dropped).
    pub fn push(&mut self, piece: Piece) {
        if piece.is_empty() {
            return;
        }
        if let Some(b) = piece.bytes() {
            self.memory += b.len();
        }
        self.queue.push_back(Queued { piece, done: 0 });
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// In-memory bytes queued, in bytes: what the stream high-water mark compares with.
    pub fn memory(&self) -> usize {
        self.memory
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.queue.clear();
        self.memory = 0;
    }

    /// Writes to `sock` until the queue is empty, the socket would block, or about `share`
    /// bytes have gone out. Returns what happened and the bytes written.
    pub fn write_to<S: Transport>(&mut self, sock: &S, share: usize) -> (Flushed, usize) {
        let mut sent = 0;
        loop {
            let Some(front) = self.queue.front() else { return (Flushed::Drained, sent) };
            if sent >= share {
                return (Flushed::ShareUsed, sent);
            }
            let result = if let Piece::File { file, offset, .. } = &front.piece {
                sock.send_file(file, offset + front.done, front.remaining())
            } else {
                let mut slices = [io::IoSlice::new(&[]); WRITEV_MAX];
                let mut n = 0;
                let mut file_next = false;
                for q in self.queue.iter().take(WRITEV_MAX) {
                    if matches!(q.piece, Piece::File { .. }) {
                        file_next = true;
                        break;
                    }
                    slices[n] = io::IoSlice::new(q.rest());
                    n += 1;
                }
                sock.write_more(&slices[..n], file_next)
            };
            match result {
                Ok(0) if matches!(front.piece, Piece::File { .. }) => return (Flushed::FileShrank, sent),
                Ok(0) => return (Flushed::Failed, sent),
                Ok(n) => {
                    sent += n;
                    self.advance(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (Flushed::Blocked, sent),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The client went away mid-response.
                Err(_) => return (Flushed::Failed, sent),
            }
        }
    }

    /// Marks `n` bytes as written, from the front.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.queue.front_mut() else { return };
            let take = (n as u64).min(front.remaining());
            if front.piece.bytes().is_some() {
                self.memory -= take as usize;
            }
            front.done += take;
            n -= take as usize;
            if front.remaining() == 0 {
                self.queue.pop_front();
            }
        }
    }
}

/// Writes `slices` with one `writev`. When file bytes follow (`more`), Linux is told so with
/// `MSG_MORE`, so a response head and the start of its file leave in the same segments instead
/// of a small packet of head alone.
///
/// # Errors
/// As `sendmsg(2)` / `writev(2)`; `WouldBlock` when the socket buffer is full.
pub(super) fn write_gathered<S: Transport>(sock: &S, slices: &[io::IoSlice<'_>], more: bool) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    if more {
        use rustix::net::{SendAncillaryBuffer, SendFlags, sendmsg};
        let flags = SendFlags::MORE | SendFlags::NOSIGNAL;
        return sendmsg(sock.as_fd(), slices, &mut SendAncillaryBuffer::default(), flags).map_err(io::Error::from);
    }
    let _ = more;
    sock.write_vectored(slices)
}

/// Sends up to `remaining` bytes of `file` from byte `offset` to the socket with one
/// `sendfile(2)`: the bytes go from the page cache to the socket without passing through this
/// process, so a large file costs no memory here. Without `sendfile` (not Linux):
/// [`read_then_write`] a chunk.
///
/// # Errors
/// As `sendfile(2)` (else `pread(2)` and `write(2)`); `WouldBlock` when the socket buffer is
/// full. `Ok(0)` means the file ended before `offset + remaining` (it shrank).
pub(super) fn send_file<S: Transport>(
    sock: &S,
    file: &std::fs::File,
    offset: u64,
    remaining: u64,
) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        let mut off = offset;
        let count = remaining.min(FILE_CHUNK as u64) as usize;
        rustix::fs::sendfile(sock.as_fd(), file, Some(&mut off), count).map_err(io::Error::from)
    }
    #[cfg(not(target_os = "linux"))]
    read_then_write(sock, file, offset, remaining, FILE_CHUNK)
}

/// File bytes for a transport that cannot take them by `sendfile(2)` (TLS, or no
/// `sendfile`): one positioned read of at most `max` bytes (straight into the buffer's spare
/// capacity, nothing zero-filled first) and one write of what was read. `Ok(0)` when the file
/// ended before `offset + remaining`.
///
/// # Errors
/// As `pread(2)` and [`Transport::write_vectored`].
pub(super) fn read_then_write<S: Transport>(
    sock: &S,
    file: &std::fs::File,
    offset: u64,
    remaining: u64,
    max: usize,
) -> io::Result<usize> {
    let mut buf = Vec::with_capacity(usize::try_from(remaining).unwrap_or(usize::MAX).min(max));
    let n = rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), offset).map_err(io::Error::from)?;
    if n == 0 {
        return Ok(0);
    }
    sock.write_vectored(&[io::IoSlice::new(&buf)])
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use super::*;

    fn pair() -> (mio::net::UnixStream, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (mio::net::UnixStream::from_std(a), b)
    }

    #[test]
    fn memory_and_file_pieces_go_out_in_order() {
        let (ours, mut theirs) = pair();
        let dir = std::env::temp_dir().join(format!("portico-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::File::create(&path).unwrap().write_all(b"0123456789").unwrap();
        let file = Arc::new(std::fs::File::open(&path).unwrap());
        let mut q = WriteQueue::default();
        q.push(Piece::Owned(b"head|".to_vec()));
        q.push(Piece::Owned(Vec::new()));
        q.push(Piece::File { file, offset: 2, len: 5 });
        q.push(Piece::Static(b"|tail"));
        assert_eq!(q.memory(), 10);
        assert_eq!(q.write_to(&ours, usize::MAX), (Flushed::Drained, 15));
        assert!(q.is_empty() && q.memory() == 0);
        let mut got = [0u8; 15];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"head|23456|tail");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_socket_blocks_and_a_share_yields() {
        let (ours, mut theirs) = pair();
        let mut q = WriteQueue::default();
        q.push(Piece::Owned(vec![7u8; 4 << 20]));
        let (first, n) = q.write_to(&ours, usize::MAX);
        assert_eq!(first, Flushed::Blocked, "4 MiB do not fit a socket buffer");
        assert_eq!(q.memory(), (4 << 20) - n);
        let mut sink = vec![0u8; 1 << 20];
        let _ = theirs.read(&mut sink).unwrap();
        let (second, m) = q.write_to(&ours, 1);
        assert!(m >= 1 && second == Flushed::ShareUsed, "{second:?} after {m}");
        drop(theirs);
        let mut last = Flushed::Blocked;
        for _ in 0..4 {
            last = q.write_to(&ours, usize::MAX).0;
        }
        assert_eq!(last, Flushed::Failed, "a peer that is gone fails the write");
    }
}
