//! TLS (`--tls-cert` / `--tls-key`): the server's certificate configuration (rustls, TLS 1.2
//! and 1.3, ALPN `http/1.1`) and [`TlsStream`], a non-blocking TCP connection with a rustls
//! session in front of it, driven by the event loop like a plain socket.
//!
//! The connection state machine reads plaintext and writes plaintext through the
//! [`crate::io::Transport`] methods this type implements; records go to and come from the
//! socket inside those calls:
//! - a read takes what rustls has decrypted; when it has none, it reads records off the
//!   socket, processes them (and sends what the handshake answers), and tries again;
//!   `WouldBlock` when the socket has nothing more;
//! - a write first sends records still waiting, then hands rustls the plaintext (at most
//!   [`BUFFER_LIMIT`] bytes waiting to be sent: beyond that it is `WouldBlock`, and the
//!   socket's writable edge brings the connection back), then sends what it can;
//! - records left waiting when the socket was full go out on the next writable event
//!   ([`TlsStream::flush_pending`]);
//! - shutting down the writing half sends `close_notify` and shuts the TCP half down once
//!   every record is out.
//!
//! Files go out by a read into a buffer and an encrypted write, at most [`BUFFER_LIMIT`] at a
//! time (no `sendfile(2)` through TLS; see `crate::io::write::read_then_write`).

use std::cell::RefCell;
use std::io::{self, Write as _};
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Most encrypted bytes one connection keeps waiting for the socket before a write is
/// refused with `WouldBlock` (rustls's buffer limit). 64 KiB.
pub const BUFFER_LIMIT: usize = 64 * 1024;

/// A certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate chain file.
    #[error("--tls-cert {path}: {why}")]
    Cert {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// The private key file.
    #[error("--tls-key {path}: {why}")]
    Key {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// rustls refused the pair (a key that does not match the certificate, say).
    #[error("--tls-cert and --tls-key: {0}")]
    Pair(String),
}

/// The server configuration for `cert` (a PEM chain, leaf first) and `key` (a PEM private
/// key: PKCS#8, PKCS#1 or SEC1): TLS 1.2 and 1.3, ALPN `http/1.1`, no client certificates.
///
/// # Errors
/// A file that cannot be read, holds no certificate or key, or a key that does not match.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_err = |why: String| TlsError::Cert { path: cert.display().to_string(), why };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no PEM certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key { path: key.display().to_string(), why: e.to_string() })?;
    // ring rather than aws-lc-rs: it builds with the C compiler alone (no cmake, no
    // assembler). Deprecated for lacking post-quantum key exchange; the classical suites stay.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Pair(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Pair(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP connection with TLS in front (see the module docs).
pub struct TlsStream {
    tcp: mio::net::TcpStream,
    /// The session: the event loop is one thread, and the transport methods take `&self`.
    session: RefCell<ServerConnection>,
    /// `close_notify` is queued: shut the TCP half down once every record is out.
    shutdown: RefCell<bool>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream").field("tcp", &self.tcp).finish_non_exhaustive()
    }
}

fn would_block() -> io::Error {
    io::Error::from(io::ErrorKind::WouldBlock)
}

impl TlsStream {
    /// A new server session over an accepted connection.
    ///
    /// # Errors
    /// rustls could not start a session (it does not, with a valid configuration).
    pub fn new(tcp: mio::net::TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<TlsStream> {
        let mut session = ServerConnection::new(config).map_err(io::Error::other)?;
        session.set_buffer_limit(Some(BUFFER_LIMIT));
        Ok(TlsStream { tcp, session: RefCell::new(session), shutdown: RefCell::new(false) })
    }

    /// The TCP socket.
    pub fn tcp(&self) -> &mio::net::TcpStream {
        &self.tcp
    }

    /// The TCP socket, to register with a poll.
    pub fn tcp_mut(&mut self) -> &mut mio::net::TcpStream {
        &mut self.tcp
    }

    /// Sends the records waiting; `Ok(true)` when none is left (then a pending shutdown is
    /// done).
    ///
    /// # Errors
    /// As `write(2)`, but `WouldBlock` is `Ok(false)`.
    pub fn flush_pending(&self) -> io::Result<bool> {
        let mut session = self.session.borrow_mut();
        while session.wants_write() {
            match session.write_tls(&mut &self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if *self.shutdown.borrow() {
            let _ = self.tcp.shutdown(std::net::Shutdown::Write);
        }
        Ok(true)
    }

    /// Whether records wait for the socket.
    pub fn pending(&self) -> bool {
        self.session.borrow().wants_write()
    }

    /// Reads plaintext into the spare capacity of `buf` (see the module docs); `Ok(0)` at the
    /// end of input (`close_notify`, or the TCP connection's end).
    ///
    /// # Errors
    /// `WouldBlock` when nothing is there; `InvalidData` for a TLS error (the alert is sent).
    pub fn read_into(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            {
                let mut session = self.session.borrow_mut();
                let spare = buf.capacity() - buf.len();
                // Copied from rustls' buffer into the spare capacity, no zero-filling first.
                let mut reader = session.reader();
                match std::io::BufRead::fill_buf(&mut reader) {
                    Ok(chunk) => {
                        let n = chunk.len().min(spare);
                        buf.extend_from_slice(&chunk[..n]);
                        std::io::BufRead::consume(&mut reader, n);
                        // 0: `close_notify` came, the end of input.
                        return Ok(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
                match session.read_tls(&mut &self.tcp) {
                    Ok(0) => return Ok(0),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
                if let Err(e) = session.process_new_packets() {
                    drop(session);
                    let _ = self.flush_pending();
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
            // The handshake's answers, and anything else rustls wants sent.
            self.flush_pending()?;
        }
    }

    /// Encrypts as much of `bufs` as rustls takes and sends what the socket takes.
    ///
    /// # Errors
    /// `WouldBlock` while earlier records still wait for the socket.
    pub fn write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if !self.flush_pending()? {
            return Err(would_block());
        }
        let wanted: usize = bufs.iter().map(|b| b.len()).sum();
        let n = self.session.borrow_mut().writer().write_vectored(bufs)?;
        self.flush_pending()?;
        if n == 0 && wanted > 0 {
            return Err(would_block());
        }
        Ok(n)
    }

    /// Queues `close_notify`; the TCP writing half is shut down once every record is out.
    ///
    /// # Errors
    /// As `write(2)`.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.session.borrow_mut().send_close_notify();
        *self.shutdown.borrow_mut() = true;
        self.flush_pending().map(|_| ())
    }
}
