//! Finding the plugin files of a directory ([`plugin_files`]) and, between scans, which of
//! them may have changed ([`Scan`]): inotify(7) watches on the directory and on each plugin
//! file, so a SIGHUP `stat`s only the files named in their events instead of every file (a
//! thousand plugins are a thousand `stat`s: 1.9–3.0 ms for 1,001 files on the 2-core test
//! machine, timed by hand with a loop of `read_dir` and `metadata`).
//!
//! The directory's watch reports files created, removed, renamed, written or touched through
//! it; each file's own watch follows its inode, so a write or a new link through another
//! name (a hard link elsewhere) is reported too. The watches are trusted only where they see
//! every write and rename; anything else gives a full scan (every file listed and `stat`ed,
//! as without a watch):
//! - the directory is on a local filesystem ([`LOCAL`]): a network or FUSE filesystem raises
//!   no event for a change made elsewhere;
//! - the path still names the directory watched (same device and inode): a directory
//!   swapped behind the path, or a symbolic link to it re-pointed, is scanned whole, and
//!   watched anew;
//! - the kernel's event queue did not overflow (`IN_Q_OVERFLOW`), the directory was not
//!   removed, moved or unmounted, every file could be watched (`fs.inotify.max_user_watches`),
//!   and the directory could be listed.
//!
//! A plugin file that is a symbolic link is `stat`ed on every scan (its target may be
//! replaced by a rename elsewhere), and while the directory holds one, it is listed on every
//! scan too (a dangling link that comes to resolve, or stops, changes which files serve).
//! Not seen by any watch: a change through a shared writable mapping that is never closed.

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
const LOCAL: [u32; 8] =
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
    seen: Option<Fingerprint>,
}

/// A directory listing: its plugin files, and whether it holds a symbolic link with a plugin
/// file's name (resolving to a file or not).
#[derive(Debug, Default)]
struct Listing {
    files: Vec<Listed>,
    symlinks: bool,
}

/// What the last scan of a directory saw, so the next `stat`s only what may have changed.
/// One per plugins directory; the caller serialises scans.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    watch: Option<Watch>,
    listing: Listing,
    /// How many files the last scan `stat`ed (for the debug line and tests).
    statted: usize,
    /// A file could not be watched (`fs.inotify.max_user_watches`): no more watches.
    unwatchable: bool,
}

impl Scan {
    /// The plugin files of `dir` now, by route name, in order, each with its fingerprint
    /// (files that cannot be `stat`ed are left out). `watch`: keep inotify watches on `dir`
    /// and its plugin files between calls (not for a generation's snapshot, which nobody
    /// changes).
    ///
    /// Between two calls with nothing changed, this costs one read of the watch, one `stat`
    /// of the directory and one of each symbolic link (then a listing too): no hashing of a
    /// thousand paths.
    pub(crate) fn files(&mut self, dir: &Path, watch: bool) -> Vec<(&str, &Path, Fingerprint)> {
        let changes = match self.watch.as_mut() {
            Some(w) => w.changes(dir),
            None => Changes::All,
        };
        let (relist, names) = match changes {
            Changes::All => {
                // Watched before the listing, so no change after it is missed.
                self.watch = if watch && !self.unwatchable { Watch::new(dir) } else { None };
                self.listing = Listing::default();
                (true, None)
            }
            Changes::Some { listing, names } => (listing || self.listing.symlinks, Some(names)),
        };
        if relist {
            match list(dir) {
                Ok(mut fresh) => {
                    if names.is_some() {
                        // What was seen of the files still there carries over.
                        let seen: HashMap<&Path, Fingerprint> =
                            self.listing.files.iter().filter_map(|e| e.seen.map(|s| (e.path.as_path(), s))).collect();
                        for entry in &mut fresh.files {
                            entry.seen = seen.get(entry.path.as_path()).copied();
                        }
                    }
                    self.listing = fresh;
                }
                Err(e) => {
                    // As before watches: nothing serves from a directory that cannot be
                    // read; the next scan is a full one.
                    tracing::warn!(dir = %dir.display(), "plugins directory cannot be read: {e}");
                    self.watch = None;
                    self.listing = Listing::default();
                }
            }
        }
        let mut statted = 0usize;
        for entry in &mut self.listing.files {
            let fresh = match (&names, entry.seen) {
                (Some(names), Some(_)) if !entry.symlink => {
                    names.is_empty() || !entry.path.file_name().is_some_and(|n| names.contains(n))
                }
                _ => false,
            };
            if fresh {
                continue;
            }
            statted += 1;
            // The file's own watch first, then its `stat`: a write in between is reported. (A
            // symbolic link is `stat`ed on every scan: no watch for it.)
            if let Some(w) = self.watch.as_mut().filter(|_| !entry.symlink)
                && let Some(name) = entry.path.file_name()
            {
                w.watch_file(dir, name);
            }
            entry.seen = fs::metadata(&entry.path).ok().filter(fs::Metadata::is_file).map(|m| Fingerprint::of(&m));
        }
        if let Some(w) = self.watch.as_mut() {
            if relist {
                // Only a new listing can have lost names.
                w.forget_files_but(self.listing.files.iter().filter_map(|e| e.path.file_name()));
            }
            if !w.complete {
                // A file could not be watched: this scan's and every later one are full ones
                // (a new watch would hit the same limit).
                self.watch = None;
                self.unwatchable = true;
            }
        }
        self.statted = statted;
        tracing::debug!(
            dir = %dir.display(),
            "plugins scan: {} files, {statted} stat'ed ({})",
            self.listing.files.len(),
            match (&names, relist) {
                (None, _) => "a full scan",
                (Some(_), true) => "watched, listed again",
                (Some(_), false) => "watched",
            }
        );
        self.listing.files.iter().filter_map(|e| e.seen.map(|s| (e.name.as_str(), e.path.as_path(), s))).collect()
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

/// What a file's watch reports: writes, metadata (links, times, mode), and its inode being
/// renamed or freed.
const FILE_EVENTS: WatchFlags = WatchFlags::ATTRIB
    .union(WatchFlags::MODIFY)
    .union(WatchFlags::CLOSE_WRITE)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::MOVE_SELF);

/// inotify watches on one directory and on its plugin files (one inotify instance:
/// non-blocking, closed on exec).
#[derive(Debug)]
struct Watch {
    fd: OwnedFd,
    /// The device and inode of the directory watched.
    id: (u64, u64),
    /// The directory's watch descriptor.
    dir: i32,
    /// Each file watch, by descriptor: the names in the directory it was added through (one
    /// inode may have several).
    files: HashMap<i32, Vec<OsString>>,
    /// Each name's file watch.
    by_name: HashMap<OsString, i32>,
    /// Every file the last scan listed has its watch.
    complete: bool,
}

impl Watch {
    /// A watch on `dir`, or `None` where a watch would not see every change (not a local
    /// filesystem) or cannot be had (`EMFILE` past `fs.inotify.max_user_instances`, …):
    /// then every scan is a full one.
    fn new(dir: &Path) -> Option<Watch> {
        // `f_type` is a C `long` holding a 32-bit magic number.
        let local = rustix::fs::statfs(dir).map(|s| LOCAL.contains(&(s.f_type as u32)));
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
            .and_then(|fd| inotify::add_watch(&fd, dir, mask).map(|wd| (fd, wd)));
        match watched {
            Ok((fd, wd)) if identity(dir) == Some(before) => {
                Some(Watch { fd, id: before, dir: wd, files: HashMap::new(), by_name: HashMap::new(), complete: true })
            }
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(dir = %dir.display(), "plugins directory not watched: {e}");
                None
            }
        }
    }

    /// Watches the file `name` of `dir` (its inode, following a symbolic link), replacing
    /// the name's previous watch when the name now leads to another inode.
    fn watch_file(&mut self, dir: &Path, name: &OsStr) {
        let wd = match inotify::add_watch(&self.fd, dir.join(name), FILE_EVENTS) {
            Ok(wd) => wd,
            Err(rustix::io::Errno::NOENT) => return, // gone: the directory's watch says so
            Err(e) => {
                static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        dir = %dir.display(),
                        "cannot watch plugin file {}: {e} (fs.inotify.max_user_watches?): SIGHUP stats every plugin file",
                        name.to_string_lossy()
                    );
                }
                self.complete = false;
                return;
            }
        };
        match self.by_name.insert(name.to_owned(), wd) {
            Some(old) if old == wd => return,
            Some(old) => self.drop_name(old, name),
            None => {}
        }
        self.files.entry(wd).or_default().push(name.to_owned());
    }

    /// Forgets the file watches of names not in `listed` (removed from the directory).
    fn forget_files_but<'a>(&mut self, listed: impl Iterator<Item = &'a OsStr>) {
        if self.by_name.is_empty() {
            return;
        }
        let listed: HashSet<&OsStr> = listed.collect();
        if self.by_name.len() == listed.len() && self.by_name.keys().all(|n| listed.contains(n.as_os_str())) {
            return;
        }
        let gone: Vec<(OsString, i32)> = self
            .by_name
            .iter()
            .filter(|(n, _)| !listed.contains(n.as_os_str()))
            .map(|(n, wd)| (n.clone(), *wd))
            .collect();
        for (name, wd) in gone {
            self.by_name.remove(&name);
            self.drop_name(wd, &name);
        }
    }

    /// Takes `name` off watch `wd`, removing the watch once no name uses it.
    fn drop_name(&mut self, wd: i32, name: &OsStr) {
        let Some(names) = self.files.get_mut(&wd) else { return };
        names.retain(|n| n != name);
        if names.is_empty() {
            self.files.remove(&wd);
            // Already gone if the inode was freed (`IN_IGNORED` follows).
            let _ = inotify::remove_watch(&self.fd, wd);
        }
    }

    /// The changes queued since the last call, or [`Changes::All`] when they cannot be
    /// known (an overflowed queue, the directory gone or replaced, a read error).
    fn changes(&mut self, dir: &Path) -> Changes {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut events = inotify::Reader::new(&self.fd, &mut buf);
        let (mut all, mut listing, mut names) = (false, false, HashSet::new());
        let mut ignored = Vec::new();
        loop {
            match events.next() {
                Ok(event) => {
                    let flags = event.events();
                    if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                        all = true;
                    }
                    if event.wd() != self.dir {
                        // A file's watch: every name it was added through.
                        if let Some(files) = self.files.get(&event.wd()) {
                            names.extend(files.iter().cloned());
                        }
                        if flags.contains(ReadFlags::IGNORED) {
                            ignored.push(event.wd());
                        }
                        continue;
                    }
                    let lost = ReadFlags::IGNORED | ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF | ReadFlags::UNMOUNT;
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
        // The kernel removed these watches (the inode was freed): their names are `stat`ed,
        // and watched again, now.
        for wd in ignored {
            for name in self.files.remove(&wd).unwrap_or_default() {
                self.by_name.remove(&name);
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

/// Plugin files in `dir` by route name (`NAME.so` or `libNAME.so`; `NAME.so` wins), in order
/// (none, with a warning, when the directory cannot be read).
pub fn plugin_files(dir: &Path) -> Vec<(String, PathBuf)> {
    match list(dir) {
        Ok(l) => l.files.into_iter().map(|l| (l.name, l.path)).collect(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "plugins directory cannot be read: {e}");
            Vec::new()
        }
    }
}

/// [`plugin_files`], each marked whether it is a symbolic link.
///
/// # Errors
/// The directory cannot be read. (An entry that cannot be read is left out, as it always
/// was.)
fn list(dir: &Path) -> std::io::Result<Listing> {
    let mut found: HashMap<String, Listed> = HashMap::new();
    let mut symlinks = false;
    for entry in fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
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
        symlinks |= symlink;
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
    let mut files: Vec<_> = found.into_values().collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Listing { files, symlinks })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory whose `plugins/` holds `files` (name, contents); the plugins
    /// directory; a scan that has seen nothing yet.
    fn setup(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf, Scan) {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("plugins");
        fs::create_dir(&d).unwrap();
        for (name, contents) in files {
            fs::write(d.join(name), contents).unwrap();
        }
        (root, d, Scan::default())
    }

    /// Each file's route name and length, from a watched scan (the test directory must be on
    /// a local filesystem, or the scan is a full one and proves nothing).
    fn scan(s: &mut Scan, d: &Path) -> Vec<(String, u64)> {
        let files = scan_with(s, d, true);
        assert!(s.watch.is_some(), "{} is on a local filesystem", d.display());
        files
    }

    fn scan_with(s: &mut Scan, d: &Path, watch: bool) -> Vec<(String, u64)> {
        s.files(d, watch).iter().map(|(n, _, f)| (n.to_string(), f.len)).collect()
    }

    #[test]
    fn a_watched_scan_sees_writes_renames_and_removals_and_stats_nothing_else() {
        let (_root, d, mut s) = setup(&[("a.so", "1"), ("b.so", "22")]);
        assert_eq!(scan(&mut s, &d), [("a".into(), 1), ("b".into(), 2)]);
        assert_eq!(s.statted, 2);
        // Written in place, added by rename, removed.
        fs::write(d.join("a.so"), "333").unwrap();
        fs::write(d.join(".c.tmp"), "4444").unwrap();
        fs::rename(d.join(".c.tmp"), d.join("c.so")).unwrap();
        fs::remove_file(d.join("b.so")).unwrap();
        assert_eq!(scan(&mut s, &d), [("a".into(), 3), ("c".into(), 4)]);
        assert_eq!(s.statted, 2, "a.so and c.so");
        // Nothing changed: the same answer, from what was seen.
        assert_eq!(scan(&mut s, &d), [("a".into(), 3), ("c".into(), 4)]);
        assert_eq!(s.statted, 0);
    }

    #[test]
    fn a_write_through_a_hard_link_made_elsewhere_after_the_scan_is_seen() {
        let (root, d, mut s) = setup(&[("a.so", "1")]);
        assert_eq!(scan(&mut s, &d), [("a".into(), 1)]);
        let elsewhere = root.path().join("elsewhere.so");
        fs::hard_link(d.join("a.so"), &elsewhere).unwrap();
        assert_eq!(scan(&mut s, &d), [("a".into(), 1)]);
        fs::write(&elsewhere, "22").unwrap();
        assert_eq!(scan(&mut s, &d), [("a".into(), 2)]);
    }

    #[test]
    fn a_dangling_symbolic_link_that_comes_to_resolve_is_seen() {
        let (root, d, mut s) = setup(&[("libb.so", "1")]);
        let built = root.path().join("built.so");
        std::os::unix::fs::symlink(&built, d.join("b.so")).unwrap();
        assert_eq!(scan(&mut s, &d), [("b".into(), 1)], "libb.so while b.so dangles");
        fs::write(&built, "22").unwrap();
        assert_eq!(scan(&mut s, &d), [("b".into(), 2)], "b.so wins once it resolves");
        fs::remove_file(&built).unwrap();
        assert_eq!(scan(&mut s, &d), [("b".into(), 1)], "libb.so again");
    }

    #[test]
    fn an_unwatched_scan_stats_every_file() {
        let (_root, d, mut s) = setup(&[("a.so", "1"), ("b.so", "1")]);
        assert_eq!(scan_with(&mut s, &d, false), [("a".into(), 1), ("b".into(), 1)]);
        assert!(s.watch.is_none());
        fs::write(d.join("a.so"), "22").unwrap();
        assert_eq!(scan_with(&mut s, &d, false), [("a".into(), 2), ("b".into(), 1)]);
        assert_eq!(s.statted, 2);
    }
}
