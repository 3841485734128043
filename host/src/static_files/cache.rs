//! The open-file cache: what a request path resolved to, kept for a short validity so a hot
//! file costs no system call at all (nginx's `open_file_cache`).
//!
//! An entry holds the resolution ([`Lookup`]): a file's representations (the file and its
//! precompressed `.br`/`.gz` siblings) with their validators and either their bytes (files up
//! to [`INLINE_MAX`], while the cache holds less than its inline budget) or an open
//! descriptor (larger files, sent with `sendfile`); or a redirect, a directory, a miss.
//!
//! Freshness: an entry younger than the validity is used as is. An older file entry is
//! revalidated with one `stat` per watched path (the file as asked, so a retargeted symlink is
//! noticed, and each sibling name, present or not): if device, inode, size and mtime (in
//! nanoseconds) are unchanged it is trusted for another period, otherwise it is looked up
//! again. Misses, redirects and directories are always looked up again once stale. With a
//! validity of zero every request revalidates, so a rewritten file is seen by the next
//! request.
//!
//! Bounds, per event loop: at most `entries` entries (least recently used evicted; each may
//! hold up to three descriptors), and at most [`INLINE_BUDGET`] bytes of file contents.
//! A failure that may be transient (open failed, out of descriptors) is answered but not
//! kept.
//!
//! One cache per event loop: no locks.

use std::fs::{self, File, Metadata, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lru::LruCache;

use super::conditional;
use super::encoding::Coding;
use super::resolve::{self, Resolved};
use crate::http::response::Fields;

/// Files up to this many bytes are kept in memory and sent with the head in one write. 64 KiB.
pub const INLINE_MAX: u64 = 64 * 1024;
/// Most file bytes one cache (one event loop) keeps in memory. 32 MiB.
pub const INLINE_BUDGET: usize = 32 * 1024 * 1024;

/// A file's bytes, or an open descriptor to send them from.
#[derive(Debug, Clone)]
pub enum Content {
    /// The whole file.
    Inline(Arc<[u8]>),
    /// An open file, read with explicit offsets (shared by every response that sends it).
    File(Arc<File>),
}

/// One representation of a resource: the file itself or a precompressed sibling.
#[derive(Debug)]
pub struct Representation {
    /// Length in bytes.
    pub len: u64,
    /// Strong entity tag, quoted (see [`conditional`]).
    pub etag: String,
    /// Modification time in whole seconds (what `Last-Modified` says).
    pub modified: SystemTime,
    /// `Last-Modified` and `ETag` field lines, ready to copy into a head.
    pub validator_fields: Fields,
    /// The bytes or the descriptor.
    pub content: Content,
}

/// A regular file and its precompressed siblings.
#[derive(Debug)]
pub struct FileEntry {
    /// The file's canonical path (what static mounts are fenced by).
    pub real: PathBuf,
    /// `Content-Type` value from the name asked for (with `charset=utf-8` for text).
    pub content_type: String,
    /// The file itself.
    pub identity: Representation,
    /// `NAME.br`, when it exists and is a regular file inside the docroot.
    pub br: Option<Representation>,
    /// `NAME.gz`, likewise.
    pub gzip: Option<Representation>,
    /// The field lines every answer about this file carries, 304 included (RFC 9110
    /// §15.4.5): `Cache-Control` when configured, `Vary: Accept-Encoding` when it has
    /// variants. Made once, at load.
    pub common_fields: Fields,
}

impl FileEntry {
    /// Whether the resource has precompressed variants (then every response varies on
    /// `Accept-Encoding`).
    pub fn has_variants(&self) -> bool {
        self.br.is_some() || self.gzip.is_some()
    }

    /// The representation for `coding` (`None` = the file itself).
    pub fn variant(&self, coding: Option<Coding>) -> &Representation {
        match coding {
            Some(Coding::Br) => self.br.as_ref().unwrap_or(&self.identity),
            Some(Coding::Gzip) => self.gzip.as_ref().unwrap_or(&self.identity),
            None => &self.identity,
        }
    }
}

/// What a request path resolved to.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A regular file.
    File(Arc<FileEntry>),
    /// A directory asked for without its trailing `/`.
    DirRedirect,
    /// A directory without `index.html` (its canonical path, for a listing).
    DirNoIndex(PathBuf),
    /// Nothing to serve.
    Missing,
}

/// What identifies a file's contents for revalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(m: &Metadata) -> Stamp {
        Stamp { dev: m.dev(), ino: m.ino(), len: m.len(), mtime: m.mtime(), mtime_nsec: m.mtime_nsec() }
    }

    fn at(path: &Path) -> Option<Stamp> {
        fs::metadata(path).ok().filter(Metadata::is_file).map(|m| Stamp::of(&m))
    }
}

struct Slot {
    /// False for a failure that may be transient (open failed, EMFILE): answered, not kept.
    keep: bool,
    lookup: Lookup,
    checked: Instant,
    /// Paths whose stamps must be unchanged for the entry to stay valid; empty = look up again.
    watch: Vec<(PathBuf, Option<Stamp>)>,
    inline_bytes: usize,
}

/// The per-thread cache.
pub struct FileCache {
    root: PathBuf,
    allow_outside: bool,
    cache_control: Option<String>,
    valid: Duration,
    map: LruCache<Vec<u8>, Slot>,
    inline_bytes: usize,
}

impl FileCache {
    /// A cache over canonical docroot `root` with `options` (symlink policy, validity, size,
    /// `Cache-Control`).
    pub fn new(root: PathBuf, options: &super::Options) -> FileCache {
        FileCache {
            root,
            allow_outside: options.allow_symlinks_outside,
            cache_control: options.cache_control.clone(),
            valid: options.cache_valid,
            map: LruCache::new(options.cache_entries),
            inline_bytes: 0,
        }
    }

    /// The resolution of `decoded` (a percent-decoded request path), from the cache when fresh.
    pub fn lookup(&mut self, decoded: &[u8]) -> Lookup {
        let now = Instant::now();
        if let Some(slot) = self.map.get_mut(decoded) {
            if now.duration_since(slot.checked) < self.valid {
                return slot.lookup.clone();
            }
            if !slot.watch.is_empty() && slot.watch.iter().all(|(p, s)| Stamp::at(p) == *s) {
                slot.checked = now;
                return slot.lookup.clone();
            }
        }
        let mut slot = self.load(decoded);
        slot.checked = now;
        let lookup = slot.lookup.clone();
        if !slot.keep {
            if let Some(old) = self.map.pop(decoded) {
                self.inline_bytes -= old.inline_bytes;
            }
            return lookup;
        }
        self.inline_bytes += slot.inline_bytes;
        if let Some((_, old)) = self.map.push(decoded.to_vec(), slot) {
            self.inline_bytes -= old.inline_bytes;
        }
        lookup
    }

    fn load(&self, decoded: &[u8]) -> Slot {
        let slot = |lookup| Slot { keep: true, lookup, checked: Instant::now(), watch: Vec::new(), inline_bytes: 0 };
        let (asked, real, meta) = match resolve::resolve(&self.root, decoded, self.allow_outside) {
            Resolved::Missing => return slot(Lookup::Missing),
            Resolved::DirRedirect => return slot(Lookup::DirRedirect),
            Resolved::DirNoIndex(dir) => return slot(Lookup::DirNoIndex(dir)),
            Resolved::File { asked, real, meta } => (asked, real, meta),
        };
        let mut budget = INLINE_BUDGET.saturating_sub(self.inline_bytes);
        let mut inline_bytes = 0;
        let Some(identity) = open(&real, &meta, "", &mut budget, &mut inline_bytes) else {
            // Changed between stat and open, or out of descriptors: this request gets a 404,
            // the next one looks again.
            return Slot { keep: false, ..slot(Lookup::Missing) };
        };
        let mut watch = vec![(asked.clone(), Some(Stamp::of(&meta)))];
        let mut sibling = |coding: Coding, tag: &str| {
            let mut name = asked.clone().into_os_string();
            name.push(coding.suffix());
            let path = PathBuf::from(name);
            let found = resolve::canonical_inside(&self.root, &path, self.allow_outside)
                .and_then(|real| fs::metadata(&real).ok().filter(Metadata::is_file).map(|m| (real, m)));
            let stamp = found.as_ref().map(|(_, m)| Stamp::of(m));
            let rep = found.and_then(|(real, m)| open(&real, &m, tag, &mut budget, &mut inline_bytes));
            // A sibling that exists but could not be opened is watched as absent, so the next
            // revalidation sees it and looks again.
            watch.push((path, if rep.is_some() { stamp } else { None }));
            rep
        };
        let br = sibling(Coding::Br, "-br");
        let gzip = sibling(Coding::Gzip, "-gz");
        let mut common_fields = Fields::new();
        if let Some(cc) = &self.cache_control {
            common_fields.push("Cache-Control", cc.as_bytes());
        }
        if br.is_some() || gzip.is_some() {
            common_fields.push("Vary", b"Accept-Encoding");
        }
        let entry = FileEntry { real, content_type: content_type(&asked), identity, br, gzip, common_fields };
        Slot { keep: true, lookup: Lookup::File(Arc::new(entry)), checked: Instant::now(), watch, inline_bytes }
    }
}

/// Opens a regular file and describes it. Non-blocking open, so a file swapped for a FIFO
/// between `stat` and `open` cannot stall the event loop; the descriptor is checked again.
/// `None` when it cannot be opened or changed since `meta` was taken.
fn open(real: &Path, meta: &Metadata, suffix: &str, budget: &mut usize, used: &mut usize) -> Option<Representation> {
    let file =
        OpenOptions::new().read(true).custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32).open(real).ok()?;
    let fmeta = file.metadata().ok().filter(Metadata::is_file)?;
    if Stamp::of(&fmeta) != Stamp::of(meta) {
        return None;
    }
    let len = fmeta.len();
    let etag = conditional::etag(fmeta.mtime(), fmeta.mtime_nsec(), len, suffix);
    let modified = conditional::last_modified(fmeta.mtime());
    let mut validator_fields = Fields::new();
    validator_fields.push("Last-Modified", httpdate::fmt_http_date(modified).as_bytes());
    validator_fields.push("ETag", etag.as_bytes());
    let content = if len <= INLINE_MAX && (len as usize) <= *budget {
        let mut bytes = vec![0u8; len as usize];
        std::io::Read::read_exact(&mut &file, &mut bytes).ok()?;
        *budget -= bytes.len();
        *used += bytes.len();
        Content::Inline(bytes.into())
    } else {
        Content::File(Arc::new(file))
    };
    Some(Representation { len, etag, modified, validator_fields, content })
}

/// `Content-Type` from the name's extension (mime_guess); text types, JavaScript and JSON
/// are declared UTF-8.
fn content_type(asked: &Path) -> String {
    let mime = mime_guess::from_path(asked).first_or_octet_stream();
    if mime.type_() == mime_guess::mime::TEXT || mime.subtype() == "javascript" || mime.subtype() == "json" {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    }
}
