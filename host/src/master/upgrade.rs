//! SIGUSR2: upgrading the binary in place, as nginx does. The master starts the binary at its
//! own path again (the file an operator replaced) as a new master, with every listening socket
//! inherited and a socket to say "ready" on; the pid file moves to `FILE.oldbin` meanwhile.
//! When the new master's first generation serves, the old master drains its workers and exits
//! (the pid file then names the new master). If the new master exits, or is not ready in
//! time (its plugins' test loads and its workers' start, each up to `--worker-ready-timeout`),
//! or this master is told to shut down meanwhile, it is killed, the pid file moves back, and
//! the old master serves on (or shuts down).

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::{Master, cause, spawn};

/// The new master's pidfd.
pub(super) const PIDFD: Token = Token(usize::MAX - 1);
/// The new master's "ready" socket.
pub(super) const SOCKET: Token = Token(usize::MAX - 2);

/// A binary upgrade in progress.
pub(super) struct Upgrade {
    child: Child,
    pidfd: std::os::fd::OwnedFd,
    socket: mio::net::UnixStream,
    deadline: Instant,
}

/// `FILE.oldbin`: where the old master's pid file goes during an upgrade.
pub(super) fn oldbin(pid_file: &Path) -> PathBuf {
    let mut name = pid_file.as_os_str().to_owned();
    name.push(OsString::from(".oldbin"));
    PathBuf::from(name)
}

impl Master {
    /// SIGUSR2: starts the new master.
    pub(super) fn start_upgrade(&mut self) {
        if self.upgrade.is_some() || self.stopping.is_some() || !self.announced {
            tracing::warn!("SIGUSR2: the start, an upgrade or a shutdown is in progress; ignored");
            return;
        }
        if self.args.pid_file.as_deref().is_some_and(|p| oldbin(p).exists()) {
            tracing::warn!("SIGUSR2: the old master of an upgrade still runs (its .oldbin pid file exists); ignored");
            return;
        }
        if let Some(p) = &self.args.pid_file
            && let Err(e) = std::fs::rename(p, oldbin(p))
        {
            tracing::warn!("SIGUSR2: moving the pid file to {}: {e}", oldbin(p).display());
        }
        let started = spawn::spawn_master(&self.exe, &self.argv, &self.listeners).and_then(|s| {
            s.control.set_nonblocking(true)?;
            let mut socket = mio::net::UnixStream::from_std(s.control);
            let registry = self.poll.registry();
            registry.register(&mut SourceFd(&s.pidfd.as_raw_fd()), PIDFD, Interest::READABLE)?;
            registry.register(&mut socket, SOCKET, Interest::READABLE)?;
            Ok(Upgrade { child: s.child, pidfd: s.pidfd, socket, deadline: Instant::now() + self.upgrade_timeout() })
        });
        match started {
            Ok(u) => {
                tracing::info!("SIGUSR2: new master {} started from {}", u.child.id(), self.exe.display());
                self.upgrade = Some(u);
            }
            Err(e) => self.upgrade_failed(format!("starting {}: {e}", self.exe.display())),
        }
    }

    /// The new master test-loads its plugins (four at a time, each up to the ready timeout),
    /// then waits for its workers (up to the ready timeout).
    fn upgrade_timeout(&self) -> Duration {
        let plugins = crate::plugin::scan::plugin_files(&self.args.plugins).len() as u32;
        self.ready_timeout() * (plugins.div_ceil(4) + 1) + Duration::from_secs(5)
    }

    /// Shutting down during an upgrade: the new master is stopped, as if it had failed (its
    /// pid file and socket files are this master's to clean up).
    pub(super) fn abandon_upgrade(&mut self) {
        if let Some(u) = &mut self.upgrade {
            let _ = u.child.kill();
            self.upgrade_failed("this master is shutting down".to_owned());
        }
    }

    /// The deadline of the upgrade in progress.
    pub(super) fn upgrade_deadline(&self) -> Option<Instant> {
        self.upgrade.as_ref().map(|u| u.deadline)
    }

    /// An event on the new master's pidfd or socket, or the deadline passed (`token` `None`).
    pub(super) fn upgrade_event(&mut self, token: Option<Token>) {
        let Some(u) = &mut self.upgrade else { return };
        match token {
            Some(SOCKET) => {
                let mut buf = [0u8; 64];
                match (&u.socket).read(&mut buf) {
                    Ok(n) if buf[..n].starts_with(b"ready") => {
                        let pid = u.child.id();
                        tracing::info!("SIGUSR2: new master {pid} serves; this master drains and exits");
                        self.upgraded = true;
                        self.upgrade = None;
                        self.shutdown(rustix::process::Signal::TERM);
                    }
                    Ok(_) | Err(_) => {}
                }
            }
            Some(_) => {
                let status = u.child.try_wait().ok().flatten();
                if status.is_some() {
                    self.upgrade_failed(format!("the new master {}", cause(status)));
                }
            }
            None => {
                let _ = u.child.kill();
                self.upgrade_failed("the new master was not ready in time; killed".to_owned());
            }
        }
    }

    fn upgrade_failed(&mut self, why: String) {
        if let Some(mut u) = self.upgrade.take() {
            let registry = self.poll.registry();
            let _ = registry.deregister(&mut SourceFd(&u.pidfd.as_raw_fd()));
            let _ = registry.deregister(&mut u.socket);
            let _ = u.child.wait();
        }
        if let Some(p) = &self.args.pid_file {
            let _ = std::fs::rename(oldbin(p), p);
        }
        tracing::error!("SIGUSR2: binary upgrade failed, this master serves on: {why}");
        self.record.failed_generation(format!("binary upgrade: {why}"));
    }
}
