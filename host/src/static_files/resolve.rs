//! From a decoded request path to a file or directory under the docroot, and the policy that
//! keeps every answer inside it.
//!
//! Rules, in order (each refusal is [`Resolved::Missing`], answered 404, so a probe learns
//! nothing about what exists):
//! 1. The path is UTF-8 (an overlong or invalid sequence such as `%c0%ae` is refused), starts
//!    with `/`, and holds no NUL and no backslash.
//! 2. No segment is empty (`//`), `.` or `..`, and no segment starts with `.` (dotfiles such as
//!    `.git/` or `.env`) — except `.well-known`, which RFC 8615 reserves for exactly this use.
//! 3. The joined path is canonicalized (every symlink resolved) and must still lie under the
//!    canonical docroot, unless the operator allowed symlinks that leave it.
//! 4. Only regular files are served, and only without a trailing `/`; a directory is a
//!    redirect (no trailing `/`), its `index.html`, or a listing when enabled.

use std::fs::{self, Metadata};
use std::path::{Path, PathBuf};

/// What a path names.
#[derive(Debug)]
pub enum Resolved {
    /// A regular file: the name it was asked by (for its media type) and its canonical path.
    File {
        /// The docroot-joined path as asked (`dir/index.html` for a directory index).
        asked: PathBuf,
        /// The canonical path (symlinks resolved), what is opened and checked again.
        real: PathBuf,
        /// Its metadata (from `stat` of `real`).
        meta: Metadata,
    },
    /// A directory asked for without the trailing `/`: redirect to add it.
    DirRedirect,
    /// A directory (asked with `/`) without an `index.html`; its canonical path.
    DirNoIndex(PathBuf),
    /// Nothing to serve (does not exist, refused by the policy, or not a regular file).
    Missing,
}

/// Checks `decoded` against rules 1 and 2 and joins it to `root`.
/// `None` if the path is refused.
pub fn join(root: &Path, decoded: &[u8]) -> Option<PathBuf> {
    let path = std::str::from_utf8(decoded).ok()?;
    if !path.starts_with('/') || path.contains('\0') || path.contains('\\') {
        return None;
    }
    let mut out = root.to_path_buf();
    let trimmed = &path[1..];
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if !trimmed.is_empty() {
        for seg in trimmed.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." || (seg.starts_with('.') && seg != ".well-known") {
                return None;
            }
            out.push(seg);
        }
    }
    Some(out)
}

/// Rule 3: the canonical form of `path`, if it exists and stays under `root` (or the
/// operator allows leaving it).
pub fn canonical_inside(root: &Path, path: &Path, allow_outside: bool) -> Option<PathBuf> {
    let real = fs::canonicalize(path).ok()?;
    (allow_outside || real.starts_with(root)).then_some(real)
}

/// Resolves `decoded` (a percent-decoded request path) under `root` (the canonical docroot).
pub fn resolve(root: &Path, decoded: &[u8], allow_outside: bool) -> Resolved {
    let Some(asked) = join(root, decoded) else { return Resolved::Missing };
    let Some(real) = canonical_inside(root, &asked, allow_outside) else { return Resolved::Missing };
    let Ok(meta) = fs::metadata(&real) else { return Resolved::Missing };
    if meta.is_dir() {
        if !decoded.ends_with(b"/") {
            return Resolved::DirRedirect;
        }
        let index = asked.join("index.html");
        return match canonical_inside(root, &index, allow_outside) {
            Some(real_index) => match fs::metadata(&real_index) {
                Ok(m) if m.is_file() => Resolved::File { asked: index, real: real_index, meta: m },
                _ => Resolved::DirNoIndex(real),
            },
            None => Resolved::DirNoIndex(real),
        };
    }
    if !meta.is_file() || decoded.ends_with(b"/") {
        // FIFOs, sockets, devices: never opened (opening a FIFO would block the event loop).
        // `/file.txt/` is not the file (its relative links would resolve elsewhere), as
        // open(2) says with ENOTDIR.
        return Resolved::Missing;
    }
    Resolved::File { asked, real, meta }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_refuses_escapes_and_dotfiles() {
        let root = Path::new("/srv/html");
        assert_eq!(join(root, b"/a/b.txt"), Some(PathBuf::from("/srv/html/a/b.txt")));
        assert_eq!(join(root, b"/"), Some(PathBuf::from("/srv/html")));
        assert_eq!(join(root, b"/.well-known/x"), Some(PathBuf::from("/srv/html/.well-known/x")));
        for bad in [
            &b"/../x"[..],
            b"/a/../../x",
            b"/a//b",
            b"//etc/passwd",
            b"/.git/config",
            b"/a/.env",
            b"/a\\..\\b",
            b"/a\0",
            b"x",
            b"/\xc0\xae\xc0\xae/x",
            b"/.",
        ] {
            assert_eq!(join(root, bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
