//! The listening sockets, wherever they come from: bound from `--bind` (TCP, or a Unix stream
//! socket for `unix:PATH`), taken from systemd (socket activation: `LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`), or — in a worker process — inherited from the master at descriptors 3, 4,
//! … with the same variables (see `crate::master`). Parsing the variables and checking each
//! descriptor is a socket of the right kind is the `listenfd` crate's.
//!
//! Invariants: the process that binds a Unix socket's file removes it at exit, and no other
//! process does; a leftover socket file is replaced only when nothing answers on it.

use std::io;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::settings::bind::BindSpec;

/// The name a worker's control socket has in `LISTEN_FDNAMES` (always the last descriptor).
pub const CONTROL_NAME: &str = "portico-control";
/// The name of the socket a new master (SIGUSR2, binary upgrade) says "ready" on.
pub const UPGRADE_NAME: &str = "portico-upgrade";

/// What a process found at descriptors 3, 4, …
#[derive(Debug, Default)]
pub struct Inherited {
    /// Listening sockets (systemd's, or the master's).
    pub listeners: Vec<Listener>,
    /// A worker's control socket to its master.
    pub control: Option<UnixStream>,
    /// A new master's socket to the old one (binary upgrade).
    pub upgrade: Option<UnixStream>,
}

/// One listening socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP (IPv4 or IPv6).
    Tcp(TcpListener),
    /// A Unix stream socket; `path` is the socket file when known, `bound_here` whether this
    /// process made it (and so removes it at exit).
    Unix {
        /// The socket.
        sock: UnixListener,
        /// Its file, when it has one.
        path: Option<PathBuf>,
        /// Whether this process bound it.
        bound_here: bool,
    },
}

/// A `--bind` that could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// `bind(2)` or `listen(2)` failed.
    #[error("binding {spec}: {source}")]
    Bind {
        /// What was asked.
        spec: String,
        /// Why.
        source: io::Error,
    },
    /// A server already answers on this Unix socket (or this process may not connect to it).
    #[error("binding unix:{}: another server answers on it (or it cannot be checked); not replaced", path.display())]
    UnixInUse {
        /// The socket file.
        path: PathBuf,
    },
    /// The path exists and is not a socket.
    #[error("binding unix:{}: the path exists and is not a socket (not removed)", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Descriptors passed by systemd or the master were not listening sockets.
    #[error("inherited descriptor {index}: {source}")]
    Inherited {
        /// Its position (0 is descriptor 3).
        index: usize,
        /// Why it was refused.
        source: io::Error,
    },
}

impl Listener {
    /// `tcp` or `unix`: the name it is passed to a worker under.
    pub fn kind(&self) -> &'static str {
        match self {
            Listener::Tcp(_) => "tcp",
            Listener::Unix { .. } => "unix",
        }
    }

    /// [`Listener::describe`], with `https://` for a TCP listener when TLS is on.
    pub fn describe_as(&self, tls: bool) -> String {
        match (self, tls) {
            (Listener::Tcp(_), true) => self.describe().replacen("http://", "https://", 1),
            _ => self.describe(),
        }
    }

    /// For the log and the status page: `http://127.0.0.1:8000`, `unix:/run/portico.sock`.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("http://{a}"),
                Err(_) => "http://?".to_owned(),
            },
            Listener::Unix { path: Some(p), .. } => format!("unix:{}", p.display()),
            Listener::Unix { sock, .. } => {
                match sock.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_owned)) {
                    Some(p) => format!("unix:{}", p.display()),
                    None => "unix:(unnamed)".to_owned(),
                }
            }
        }
    }

    /// Another descriptor for the same socket (`dup`, close-on-exec).
    ///
    /// # Errors
    /// As `fcntl(F_DUPFD_CLOEXEC)`.
    pub fn try_clone(&self) -> io::Result<Listener> {
        Ok(match self {
            Listener::Tcp(l) => Listener::Tcp(l.try_clone()?),
            Listener::Unix { sock, path, .. } => {
                Listener::Unix { sock: sock.try_clone()?, path: path.clone(), bound_here: false }
            }
        })
    }

    /// The descriptor, to pass to a child.
    pub fn into_fd(self) -> OwnedFd {
        match self {
            Listener::Tcp(l) => l.into(),
            Listener::Unix { sock, .. } => sock.into(),
        }
    }

    /// Removes the socket file if this process made it (at exit).
    pub fn remove_file(&self) {
        if let Listener::Unix { path: Some(p), bound_here: true, .. } = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The sockets to serve: systemd's (`inherited`) when there are any, else every `--bind`.
///
/// # Errors
/// As [`bind`].
pub fn open(
    inherited: Vec<Listener>,
    specs: &[BindSpec],
    mode: u32,
    backlog: u32,
) -> Result<Vec<Listener>, ListenError> {
    if inherited.is_empty() {
        return bind(specs, mode, backlog);
    }
    for l in &inherited {
        tracing::info!(
            "inherited socket (systemd, or the master before a binary upgrade): {} (--bind ignored)",
            l.describe()
        );
    }
    Ok(inherited)
}

/// Binds every `--bind`, each with a queue of `backlog` connections not yet accepted
/// (`--backlog`; the kernel caps it at `net.core.somaxconn`); a Unix socket's file gets `mode`.
///
/// # Errors
/// The first that fails: [`ListenError`].
pub fn bind(specs: &[BindSpec], mode: u32, backlog: u32) -> Result<Vec<Listener>, ListenError> {
    specs.iter().map(|s| bind_one(s, mode, backlog)).collect()
}

/// `listen(2)` again on a listening socket with `backlog`: std's TCP `bind` listens with 128,
/// which a burst of new connections overflows (their handshakes are then dropped and retried
/// after a second); its Unix `bind` with the kernel's most (`net.core.somaxconn`). Linux (`inet_listen`, `unix_listen`) and the BSDs (`solisten`) take a
/// second `listen` on a listening socket as a change of its queue's length.
fn set_backlog(sock: &impl std::os::fd::AsFd, backlog: u32) -> io::Result<()> {
    Ok(rustix::net::listen(sock, i32::try_from(backlog).unwrap_or(i32::MAX))?)
}

fn bind_one(spec: &BindSpec, mode: u32, backlog: u32) -> Result<Listener, ListenError> {
    let err = |source| ListenError::Bind { spec: spec.to_string(), source };
    match spec {
        BindSpec::Tcp(addr) => {
            let sock = TcpListener::bind(addr).map_err(err)?;
            set_backlog(&sock, backlog).map_err(err)?;
            Ok(Listener::Tcp(sock))
        }
        BindSpec::Unix(path) => {
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if !meta.file_type().is_socket() {
                    return Err(ListenError::NotASocket { path: path.clone() });
                }
                match UnixStream::connect(path) {
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                    // Answering, or not ours to judge (no permission): left alone.
                    _ => return Err(ListenError::UnixInUse { path: path.clone() }),
                }
                // Nothing answers: a leftover of a server that did not remove it.
                tracing::info!("replacing the stale socket file {}", path.display());
                std::fs::remove_file(path).map_err(err)?;
            }
            let sock = UnixListener::bind(path).map_err(err)?;
            let made = set_backlog(&sock, backlog)
                .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)));
            let listener = Listener::Unix { sock, path: Some(path.clone()), bound_here: true };
            if let Err(e) = made {
                listener.remove_file();
                return Err(err(e));
            }
            Ok(listener)
        }
    }
}

/// The sockets in `LISTEN_FDS` (systemd's socket activation, or a master passing its
/// listeners to a worker), with their `LISTEN_FDNAMES`; empty when the variables are absent or
/// `LISTEN_PID` names another process. Must run before any thread starts (it removes the
/// variables from the environment). A worker's control socket ([`CONTROL_NAME`]) and a new
/// master's upgrade socket ([`UPGRADE_NAME`]) come back separately.
///
/// # Errors
/// A descriptor is not a listening TCP or Unix stream socket.
pub fn inherited() -> Result<Inherited, ListenError> {
    let names: Vec<String> =
        std::env::var("LISTEN_FDNAMES").map(|s| s.split(':').map(str::to_owned).collect()).unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    let mut found = Inherited::default();
    for index in 0..fds.len() {
        let bad = |source| ListenError::Inherited { index, source };
        let name = names.get(index).map(String::as_str).unwrap_or("");
        if name == CONTROL_NAME || name == UPGRADE_NAME {
            let unix = rustix::net::AddressFamily::UNIX.as_raw().into();
            let stream = rustix::net::SocketType::STREAM.as_raw() as i32;
            let sock = fds.take_custom::<UnixStream>(index, unix, stream, name).map_err(bad)?;
            if name == CONTROL_NAME {
                found.control = sock;
            } else {
                found.upgrade = sock;
            }
            continue;
        }
        if name != "unix"
            && let Some(l) = fds.take_tcp_listener(index).ok().flatten()
        {
            found.listeners.push(Listener::Tcp(l));
            continue;
        }
        match fds.take_unix_listener(index).map_err(bad)? {
            Some(sock) => found.listeners.push(Listener::Unix { sock, path: None, bound_here: false }),
            None => return Err(bad(io::Error::other("taken twice"))),
        }
    }
    Ok(found)
}

/// A listener in an event loop (mio, non-blocking).
#[derive(Debug)]
pub enum Accepting {
    /// TCP.
    Tcp(mio::net::TcpListener),
    /// A Unix stream socket.
    Unix(mio::net::UnixListener),
}

/// An accepted client connection's socket.
#[derive(Debug)]
pub enum Stream {
    /// TCP.
    Tcp(mio::net::TcpStream),
    /// A Unix stream socket: the client has no address (`REMOTE_ADDR` is empty).
    Unix(mio::net::UnixStream),
    /// TCP with TLS in front (`--tls-cert`).
    Tls(Box<crate::tls::TlsStream>),
}

impl Listener {
    /// The socket for an event loop: made non-blocking (a flag of the open file description
    /// that every process sharing the socket sees; Portico's processes all want it).
    ///
    /// # Errors
    /// As `fcntl(F_SETFL)`.
    pub fn into_accepting(self) -> io::Result<Accepting> {
        Ok(match self {
            Listener::Tcp(l) => {
                l.set_nonblocking(true)?;
                Accepting::Tcp(mio::net::TcpListener::from_std(l))
            }
            Listener::Unix { sock, .. } => {
                sock.set_nonblocking(true)?;
                Accepting::Unix(mio::net::UnixListener::from_std(sock))
            }
        })
    }
}

impl Accepting {
    /// Accepts one connection: the socket, and for TCP the client's and the local address
    /// (`None` for a Unix socket).
    ///
    /// # Errors
    /// As `accept4(2)`; `WouldBlock` when none is waiting.
    pub fn accept(&self) -> io::Result<(Stream, Option<(std::net::SocketAddr, std::net::SocketAddr)>)> {
        match self {
            Accepting::Tcp(l) => {
                let (sock, remote) = l.accept()?;
                let _ = sock.set_nodelay(true);
                let local = sock.local_addr().or_else(|_| l.local_addr())?;
                Ok((Stream::Tcp(sock), Some((remote, local))))
            }
            Accepting::Unix(l) => {
                let (sock, _) = l.accept()?;
                Ok((Stream::Unix(sock), None))
            }
        }
    }
}

macro_rules! either {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Stream::Tcp($s) => $e,
            Stream::Unix($s) => $e,
            Stream::Tls(t) => {
                let $s = t.tcp();
                $e
            }
        }
    };
}

impl std::os::fd::AsFd for Stream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        either!(self, s => s.as_fd())
    }
}

impl Stream {
    /// The socket itself, to register with a poll.
    fn socket(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
            Stream::Tls(t) => t.tcp_mut(),
        }
    }
}

impl mio::event::Source for Stream {
    fn register(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        self.socket().register(r, t, i)
    }
    fn reregister(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        self.socket().reregister(r, t, i)
    }
    fn deregister(&mut self, r: &mio::Registry) -> io::Result<()> {
        self.socket().deregister(r)
    }
}

impl mio::event::Source for Accepting {
    fn register(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        match self {
            Accepting::Tcp(l) => l.register(r, t, i),
            Accepting::Unix(l) => l.register(r, t, i),
        }
    }
    fn reregister(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        match self {
            Accepting::Tcp(l) => l.reregister(r, t, i),
            Accepting::Unix(l) => l.reregister(r, t, i),
        }
    }
    fn deregister(&mut self, r: &mio::Registry) -> io::Result<()> {
        match self {
            Accepting::Tcp(l) => l.deregister(r),
            Accepting::Unix(l) => l.deregister(r),
        }
    }
}
