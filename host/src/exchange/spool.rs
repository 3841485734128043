//! A request body read whole by the event loop before the application runs (request
//! buffering, nginx's default): [`Spool`] collects it — in memory up to a buffer size, beyond
//! it in an unlinked temporary file (nginx's `client_body_buffer_size` and
//! `client_body_temp_path`, Waitress's inbuf overflow) — and [`Buffered`] is what the
//! application's `wsgi.input` reads from, without ever waiting on the network.
//!
//! The temporary file is created with `tempfile` (`O_TMPFILE` where the file system has it,
//! else created and unlinked at once): no name is left behind, whatever happens to the
//! process, and its blocks are freed when the last descriptor closes.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// A body being collected.
#[derive(Debug)]
pub struct Spool {
    memory: Vec<u8>,
    file: Option<File>,
    len: u64,
}

impl Spool {
    /// An empty spool.
    pub fn new() -> Spool {
        Spool { memory: Vec::new(), file: None, len: 0 }
    }

    /// Appends `data`. Past `buffer` bytes in memory, the body moves to a temporary file in
    /// `dir` (the event loop's write to it is a page-cache write, as nginx's is).
    ///
    /// # Errors
    /// Creating or writing the temporary file failed (disk full, directory gone).
    pub fn push(&mut self, data: &[u8], buffer: usize, dir: &Path) -> io::Result<()> {
        self.len += data.len() as u64;
        if let Some(f) = &mut self.file {
            return f.write_all(data);
        }
        if self.memory.len() + data.len() <= buffer {
            self.memory.extend_from_slice(data);
            return Ok(());
        }
        let mut f = tempfile::tempfile_in(dir)?;
        f.write_all(&self.memory)?;
        f.write_all(data)?;
        self.memory = Vec::new();
        self.file = Some(f);
        Ok(())
    }

    /// Whether the body went to a file.
    #[cfg(test)]
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// The whole body, ready to be read from its start.
    ///
    /// # Errors
    /// Rewinding the temporary file failed.
    pub fn finish(self) -> io::Result<Buffered> {
        let source = match self.file {
            Some(mut f) => {
                f.seek(SeekFrom::Start(0))?;
                Source::File(f)
            }
            None => Source::Memory(self.memory, 0),
        };
        Ok(Buffered { source, len: self.len })
    }
}

impl Default for Spool {
    fn default() -> Spool {
        Spool::new()
    }
}

#[derive(Debug)]
enum Source {
    /// The bytes and how many were read.
    Memory(Vec<u8>, usize),
    File(File),
}

/// A complete request body, read by the application (`wsgi.input`).
#[derive(Debug)]
pub struct Buffered {
    source: Source,
    len: u64,
}

impl Buffered {
    /// Its length in bytes (the decoded length, for a chunked body).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads the next bytes into `buf`; `Ok(0)` at the end.
    ///
    /// # Errors
    /// Reading the temporary file failed.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.source {
            Source::Memory(bytes, pos) => {
                let n = (bytes.len() - *pos).min(buf.len());
                buf[..n].copy_from_slice(&bytes[*pos..*pos + n]);
                *pos += n;
                Ok(n)
            }
            Source::File(f) => f.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(mut b: Buffered) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            match b.read(&mut buf).unwrap() {
                0 => return out,
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    #[test]
    fn small_bodies_stay_in_memory_large_ones_go_to_an_unlinked_file() {
        let dir = std::env::temp_dir();
        let mut s = Spool::new();
        s.push(b"hello ", 16, &dir).unwrap();
        s.push(b"world", 16, &dir).unwrap();
        assert!(!s.spilled());
        assert_eq!(read_all(s.finish().unwrap()), b"hello world");

        let mut s = Spool::new();
        s.push(b"0123456789", 16, &dir).unwrap();
        s.push(b"abcdefghij", 16, &dir).unwrap();
        assert!(s.spilled(), "past 16 bytes");
        s.push(b"KLMNOP", 16, &dir).unwrap();
        let b = s.finish().unwrap();
        assert_eq!(b.len(), 26);
        assert_eq!(read_all(b), b"0123456789abcdefghijKLMNOP");
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let mut s = Spool::new();
        s.push(b"x", 0, Path::new("/nonexistent/portico")).unwrap_err();
    }
}
