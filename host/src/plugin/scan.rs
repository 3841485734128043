//! Finding the plugin files of a directory ([`plugin_files`]) and, between scans, which of
//! them may have changed ([`Scan`]): an inotify(7) watch on the directory, so a SIGHUP
//! `stat`s only the files named in its events instead of every file (a thousand plugins are
//! a thousand `stat`s, 2–3 ms on the 2-core test machine).
//!
//! The watch is trusted only where it sees every change; anything else gives a full scan
//! (every file `stat`ed, as without a watch):
//! - the directory is on a local filesystem ([`LOCAL`]): a network or FUSE filesystem raises
//!   no event for a change made elsewhere;
//! - the path still names the directory watched (same device and inode): a directory
//!   swapped behind the path, or a symbolic link to it re-pointed, is scanned whole, and
//!   watched anew;
//! - the kernel's event queue did not overflow (`IN_Q_OVERFLOW`), and the directory was not
//!   removed, moved or unmounted.
//!
//! A file that is a symbolic link, or has more than one hard link, can change without an
//! event in this directory (through its target, or its other name): it is `stat`ed on every
//! scan.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

use super::loader::{self, Fingerprint};

/// Filesystems whose every change raises an inotify event here (`statfs(2)`'s `f_type`):
/// ext2/3/4, XFS, Btrfs, tmpfs, overlayfs, F2FS, ZFS, bcachefs.
pub const LOCAL: [i64; 8] =
    [0xEF53, 0x5846_5342, 0x9123_683E, 0x0102_1994, 0x794C_7630, 0xF2F5_2010, 0x2FC1_2FC1, 0xCA45_1A4E];

/// One plugin file of a directory listing, and what the last scan found of it.
#[derive(Debug, Clone)]
struct Listed {
    /// The route name.
    name: String,
    /// Its path in the directory.
    path: PathBuf,
    /// The directory entry is a symbolic link (its target may change without an event here).
    symlink: bool,
    /// What the last `stat` found (`None`: not `stat`ed yet, or it failed).
    seen: Option<Seen>,
}

/// What a scan found of a file: its fingerprint, and whether it must be `stat`ed on every
/// scan (a symbolic link, or a file with another hard link).
#[derive(Debug, Clone, Copy)]
struct Seen {
    fingerprint: Fingerprint,
    every_scan: bool,
}

/// What the last scan of a directory saw, so the next `stat`s only what may have changed.
/// One per plugins directory; the caller serialises scans.
#[derive(Debug, Default)]
pub struct Scan {
    watch: Option<Watch>,
    listing: Vec<Listed>,
}

impl Scan {
    /// The plugin files of `dir` now, by route name, in order, each with its fingerprint
    /// (files that cannot be `stat`ed are left out). `watch`: keep an inotify watch on
    /// `dir` between calls (not for a generation's snapshot, which nobody changes).
    ///
    /// Between two calls with nothing changed, this costs one read of the watch and one
    /// `stat` of the directory: no listing, no hashing of a thousand paths.
    pub fn files(&mut self, dir: &Path, watch: bool) -> Vec<(&str, &Path, Fingerprint)> {
        let changes = match self.watch.as_mut() {
            Some(w) => w.changes(dir),
            None => Changes::All,
        };
        let (relist, names) = match changes {
            Changes::All => {
                // Watched before the listing, so no change after it is missed.
                self.watch = if watch { Watch::new(dir) } else { None };
                self.listing.clear();
                (true, None)
            }
            Changes::Some { listing, names } => (listing, Some(names)),
        };
        if relist {
            let mut fresh = list(dir);
            if names.is_some() && !self.listing.is_empty() {
                // What was seen of the files still there carries over.
                let seen: HashMap<&Path, Seen> =
                    self.listing.iter().filter_map(|e| e.seen.map(|s| (e.path.as_path(), s))).collect();
                for entry in &mut fresh {
                    entry.seen = seen.get(entry.path.as_path()).copied();
                }
            }
            self.listing = fresh;
        }
        let mut statted = 0usize;
        for entry in &mut self.listing {
            let fresh = match (&names, entry.seen) {
                (Some(names), Some(s)) if !s.every_scan => {
                    names.is_empty() || !entry.path.file_name().is_some_and(|n| names.contains(n))
                }
                _ => false,
            };
            if !fresh {
                statted += 1;
                entry.seen = fs::metadata(&entry.path).ok().map(|meta| Seen {
                    fingerprint: Fingerprint::of(&meta),
                    every_scan: entry.symlink || meta.nlink() > 1,
                });
            }
        }
        tracing::debug!(
            dir = %dir.display(),
            "plugins scan: {} files, {statted} stat'ed ({})",
            self.listing.len(),
            match (&names, relist) {
                (None, _) => "a full scan",
                (Some(_), true) => "watched, listed again",
                (Some(_), false) => "watched",
            }
        );
        self.listing.iter().filter_map(|e| e.seen.map(|s| (e.name.as_str(), e.path.as_path(), s.fingerprint))).collect()
    }
}

/// What changed in a watched directory since the last look.
#[derive(Debug)]
enum Changes {
    /// Unknown: look at every file.
    All,
    /// Only these.
    Some {
        /// A plugin file was created, removed or renamed: list the directory again.
        listing: bool,
        /// Names of entries whose contents or metadata may have changed.
        names: HashSet<OsString>,
    },
}

/// An inotify watch on one directory (non-blocking, closed on exec).
#[derive(Debug)]
struct Watch {
    fd: OwnedFd,
    /// The device and inode of the directory watched.
    id: (u64, u64),
}

impl Watch {
    /// A watch on `dir`, or `None` where a watch would not see every change (not a local
    /// filesystem) or cannot be had (`EMFILE` past `fs.inotify.max_user_instances`, …):
    /// then every scan is a full one.
    fn new(dir: &Path) -> Option<Watch> {
        // `f_type` is a C `long`: 32 bits on some targets.
        #[allow(clippy::unnecessary_cast)]
        let local = rustix::fs::statfs(dir).map(|s| LOCAL.contains(&(s.f_type as i64)));
        if !matches!(local, Ok(true)) {
            tracing::debug!(dir = %dir.display(), "plugins directory not watched: not a local filesystem ({local:?})");
            return None;
        }
        let mask = WatchFlags::ATTRIB
            | WatchFlags::MODIFY
            | WatchFlags::CLOSE_WRITE
            | WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::MOVED_FROM
            | WatchFlags::MOVED_TO
            | WatchFlags::DELETE_SELF
            | WatchFlags::MOVE_SELF
            | WatchFlags::ONLYDIR;
        // The directory's identity before and after: one swapped in between is not watched.
        let before = identity(dir)?;
        let watched = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)
            .and_then(|fd| inotify::add_watch(&fd, dir, mask).map(|_| fd));
        match watched {
            Ok(fd) if identity(dir) == Some(before) => Some(Watch { fd, id: before }),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(dir = %dir.display(), "plugins directory not watched: {e}");
                None
            }
        }
    }

    /// The changes queued since the last call, or [`Changes::All`] when they cannot be
    /// known (an overflowed queue, the directory gone or replaced, a read error).
    fn changes(&mut self, dir: &Path) -> Changes {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut events = inotify::Reader::new(&self.fd, &mut buf);
        let (mut all, mut listing, mut names) = (false, false, HashSet::new());
        loop {
            match events.next() {
                Ok(event) => {
                    let flags = event.events();
                    let lost = ReadFlags::QUEUE_OVERFLOW
                        | ReadFlags::IGNORED
                        | ReadFlags::DELETE_SELF
                        | ReadFlags::MOVE_SELF
                        | ReadFlags::UNMOUNT;
                    if flags.intersects(lost) {
                        all = true;
                    }
                    let Some(name) = event.file_name() else { continue };
                    let name = OsStr::from_bytes(name.to_bytes());
                    let renamed = ReadFlags::CREATE | ReadFlags::DELETE | ReadFlags::MOVED_FROM | ReadFlags::MOVED_TO;
                    if flags.intersects(renamed) && name.to_str().and_then(loader::route_name).is_some() {
                        listing = true;
                    }
                    names.insert(name.to_owned());
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), "reading the plugins directory's watch: {e}");
                    all = true;
                    break;
                }
            }
        }
        if all || identity(dir) != Some(self.id) {
            return Changes::All;
        }
        Changes::Some { listing, names }
    }
}

/// The device and inode of the directory `dir` names now (following symbolic links).
fn identity(dir: &Path) -> Option<(u64, u64)> {
    fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

fn is_plain(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| !n.starts_with("lib"))
}

/// Plugin files in `dir` by route name (`NAME.so` or `libNAME.so`; `NAME.so` wins), in order.
pub fn plugin_files(dir: &Path) -> Vec<(String, PathBuf)> {
    list(dir).into_iter().map(|l| (l.name, l.path)).collect()
}

/// [`plugin_files`], each marked whether it is a symbolic link.
fn list(dir: &Path) -> Vec<Listed> {
    let mut found: HashMap<String, Listed> = HashMap::new();
    let Ok(entries) = fs::read_dir(dir) else {
        tracing::warn!(dir = %dir.display(), "plugins directory cannot be read");
        return Vec::new();
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else { continue };
        let Some(name) = loader::route_name(file_name) else { continue };
        // The directory entry's type, without a `stat` (one less per file a scan: a thousand
        // plugins are a thousand `stat`s already); a symbolic link is followed.
        let (is_file, symlink) = match entry.file_type() {
            Ok(t) if t.is_symlink() => (entry.path().is_file(), true),
            Ok(t) => (t.is_file(), false),
            Err(_) => (entry.path().is_file(), true),
        };
        if !is_file {
            continue;
        }
        let plain = !file_name.starts_with("lib");
        match found.get(name) {
            Some(existing) if !plain || is_plain(&existing.path) => {
                tracing::warn!(plugin = name, ignored = %entry.path().display(), kept = %existing.path.display(), "two files give the same plugin name");
            }
            _ => {
                found
                    .insert(name.to_owned(), Listed { name: name.to_owned(), path: entry.path(), symlink, seen: None });
            }
        }
    }
    let mut v: Vec<_> = found.into_values().collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("portico-scan-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn versions(files: &[(&str, &Path, Fingerprint)]) -> Vec<(String, u64)> {
        files.iter().map(|(n, _, f)| (n.to_string(), f.len)).collect()
    }

    #[test]
    fn a_watched_scan_sees_writes_renames_and_removals() {
        let d = dir("watched");
        fs::write(d.join("a.so"), "1").unwrap();
        fs::write(d.join("b.so"), "22").unwrap();
        let mut scan = Scan::default();
        assert_eq!(versions(&scan.files(&d, true)), [("a".into(), 1), ("b".into(), 2)]);
        assert!(scan.watch.is_some(), "{} is on a local filesystem", d.display());
        // Written in place, added by rename, removed.
        fs::write(d.join("a.so"), "333").unwrap();
        fs::write(d.join(".c.tmp"), "4444").unwrap();
        fs::rename(d.join(".c.tmp"), d.join("c.so")).unwrap();
        fs::remove_file(d.join("b.so")).unwrap();
        assert_eq!(versions(&scan.files(&d, true)), [("a".into(), 3), ("c".into(), 4)]);
        // Nothing changed: the same answer, from what was seen.
        assert_eq!(versions(&scan.files(&d, true)), [("a".into(), 3), ("c".into(), 4)]);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn an_unwatched_scan_stats_every_file() {
        let d = dir("unwatched");
        fs::write(d.join("a.so"), "1").unwrap();
        let mut scan = Scan::default();
        assert_eq!(versions(&scan.files(&d, false)), [("a".into(), 1)]);
        assert!(scan.watch.is_none());
        fs::write(d.join("a.so"), "22").unwrap();
        assert_eq!(versions(&scan.files(&d, false)), [("a".into(), 2)]);
        let _ = fs::remove_dir_all(&d);
    }
}
