//! Starting one worker process: this same binary, exec'd with the master's own arguments, the
//! listening sockets at descriptors 3, 4, … and its control socket last, described by
//! `LISTEN_FDS` / `LISTEN_FDNAMES` (no `LISTEN_PID`: the child's pid is unknown before `fork`;
//! the worker's parser accepts its absence). The `command-fds` crate maps the descriptors in
//! the child between `fork` and `exec` (moving sources out of the target range first, and
//! clearing close-on-exec on identity mappings); the master's own copies stay close-on-exec, so
//! they reach no other child.
//!
//! A failed `exec` can be reported by `spawn` as success when std's error pipe lands on a
//! target descriptor (the process-model research, T5): the master treats a worker that exits
//! before saying "ready" as a failed start, whatever `spawn` returned.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use command_fds::{CommandFdExt, FdMapping};

use crate::listeners::{CONTROL_NAME, Listener, UPGRADE_NAME};

/// The environment variable that makes the binary a worker; its value is the generation.
pub const WORKER_ENV: &str = "PORTICO_WORKER_GENERATION";
/// The plugins directory a worker loads from (its generation's snapshot).
pub const SNAPSHOT_ENV: &str = "PORTICO_WORKER_SNAPSHOT";
/// The directory a worker makes its private copies of the plugins in.
pub const CACHE_ENV: &str = "PORTICO_WORKER_CACHE";

/// A started worker process.
#[derive(Debug)]
pub struct Spawned {
    /// The process (reaped with `try_wait` once `pidfd` is readable).
    pub child: Child,
    /// A pidfd: readable when the process has exited.
    pub pidfd: OwnedFd,
    /// The master's end of the control socket.
    pub control: UnixStream,
}

/// Starts `exe ARGV…` (named `arg0` in `ps`) as a worker of `generation` serving
/// `listeners`, loading plugins from `snapshot` with private copies in `cache`.
///
/// # Errors
/// Duplicating a descriptor, making the socket pair, `fork`/`exec`, or `pidfd_open` failed.
pub fn spawn(
    exe: &Path,
    arg0: &Path,
    argv: &[OsString],
    listeners: &[Listener],
    generation: u64,
    snapshot: &Path,
    cache: &Path,
) -> io::Result<Spawned> {
    let mut env = vec![
        (WORKER_ENV, OsString::from(generation.to_string())),
        (SNAPSHOT_ENV, snapshot.as_os_str().to_owned()),
        (CACHE_ENV, cache.as_os_str().to_owned()),
    ];
    let config = snapshot.join(super::generation::CONFIG_COPY);
    if config.is_file() {
        env.push((crate::settings::file::CONFIG_COPY_ENV, config.into_os_string()));
    }
    exec(exe, arg0, argv, listeners, CONTROL_NAME, &env)
}

/// Starts `exe ARGV…` as a new master serving `listeners` (SIGUSR2, binary upgrade); it says
/// "ready" on the returned socket once its first generation serves.
///
/// # Errors
/// As [`spawn`].
pub fn spawn_master(exe: &Path, argv: &[OsString], listeners: &[Listener]) -> io::Result<Spawned> {
    exec(exe, exe, argv, listeners, UPGRADE_NAME, &[])
}

/// `exe ARGV…` with `listeners` at 3, 4, … and one end of a new socket pair after them, named
/// `last` in `LISTEN_FDNAMES`; the other end is returned.
fn exec(
    exe: &Path,
    arg0: &Path,
    argv: &[OsString],
    listeners: &[Listener],
    last: &str,
    env: &[(&str, OsString)],
) -> io::Result<Spawned> {
    let (ours, theirs) = UnixStream::pair()?;
    let mut maps = Vec::with_capacity(listeners.len() + 1);
    let mut names = Vec::with_capacity(listeners.len() + 1);
    for (i, l) in listeners.iter().enumerate() {
        maps.push(FdMapping { parent_fd: l.try_clone()?.into_fd(), child_fd: 3 + i as i32 });
        names.push(l.kind());
    }
    maps.push(FdMapping { parent_fd: OwnedFd::from(theirs), child_fd: 3 + listeners.len() as i32 });
    names.push(last);
    let mut cmd = Command::new(exe);
    cmd.arg0(arg0)
        .args(argv)
        .env_remove("LISTEN_PID")
        .env("LISTEN_FDS", maps.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    cmd.fd_mappings(maps).map_err(io::Error::other)?;
    let child = cmd.spawn()?;
    // Dropping the command closes the master's copies of what was mapped.
    drop(cmd);
    let pidfd =
        rustix::process::pidfd_open(rustix::process::Pid::from_child(&child), rustix::process::PidfdFlags::empty())?;
    Ok(Spawned { child, pidfd, control: ours })
}
