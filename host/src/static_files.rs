//! Static files under the docroot: path resolution that never leaves it, and the response
//! head (Content-Type from the extension, Content-Length, Last-Modified).
//!
//! Resolution, in order: the decoded path must be absolute, without NUL or backslash, and
//! without `.` or `..` segments or empty segments (`//`); hidden segments (`.git`, `.env`)
//! are refused; the joined path is canonicalized and must still lie under the canonical
//! docroot (which refuses symlinks pointing outside it). `/` and `/dir/` serve
//! `index.html`; `/dir` redirects to `/dir/`. Anything refused is a 404, so a probe learns
//! nothing about what exists outside.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::http::response;

/// What to send for a static request.
pub struct StaticResponse {
    /// Status code.
    pub status: u16,
    /// Head bytes (and the body, for small files and error pages).
    pub bytes: Vec<u8>,
    /// A file body still to send: the open file and its length in bytes.
    pub file: Option<(File, u64)>,
    /// Payload length in bytes, for the access log.
    pub body_len: u64,
}

/// Files up to this many bytes are read into the response at once; larger ones are sent in
/// pieces as the socket drains. 64 KiB.
const INLINE_MAX: u64 = 64 * 1024;

/// Validates a decoded request path and maps it to a path under `root`.
/// `None` if the path is not acceptable.
fn resolve(root: &Path, decoded: &[u8]) -> Option<PathBuf> {
    let path = std::str::from_utf8(decoded).ok()?;
    if !path.starts_with('/') || path.contains('\0') || path.contains('\\') {
        return None;
    }
    let mut out = root.to_path_buf();
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if !trimmed.is_empty() {
        for seg in trimmed.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." || seg.starts_with('.') {
                return None;
            }
            out.push(seg);
        }
    }
    Some(out)
}

/// Serves `decoded` (a decoded request path) from `root` (canonical docroot).
pub fn serve(
    root: &Path,
    decoded: &[u8],
    raw_path: &[u8],
    version: &str,
    head_only: bool,
    close: bool,
) -> StaticResponse {
    let Some(mut path) = resolve(root, decoded) else { return not_found(root, version, head_only, close) };
    let Ok(mut meta) = fs::metadata(&path) else { return not_found(root, version, head_only, close) };
    if meta.is_dir() {
        if !decoded.ends_with(b"/") {
            let mut location = raw_path.to_vec();
            location.push(b'/');
            return redirect(&location, version, head_only, close);
        }
        path.push("index.html");
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => meta = m,
            _ => return not_found(root, version, head_only, close),
        }
    }
    // Symlinks are followed only while the target stays inside the docroot.
    match fs::canonicalize(&path) {
        Ok(real) if real.starts_with(root) => {}
        _ => return not_found(root, version, head_only, close),
    }
    let Ok(file) = File::open(&path) else { return not_found(root, version, head_only, close) };
    let len = meta.len();
    let mime = mime_guess::from_path(&path).first_or_octet_stream();
    let mut head = Vec::with_capacity(256);
    response::start_head(&mut head, version, 200);
    if mime.type_() == mime_guess::mime::TEXT || mime.subtype() == "javascript" || mime.subtype() == "json" {
        let _ = write!(head, "Content-Type: {mime}; charset=utf-8\r\n");
    } else {
        let _ = write!(head, "Content-Type: {mime}\r\n");
    }
    let _ = write!(head, "Content-Length: {len}\r\n");
    if let Ok(modified) = meta.modified() {
        let _ = write!(head, "Last-Modified: {}\r\n", httpdate::fmt_http_date(modified));
    }
    response::finish_head(&mut head, version, close);
    if head_only {
        return StaticResponse { status: 200, bytes: head, file: None, body_len: 0 };
    }
    if len <= INLINE_MAX {
        // Exactly `len` bytes, in one read for a small file (read_to_end would stat and seek).
        let mut file = file;
        let start = head.len();
        head.resize(start + len as usize, 0);
        if std::io::Read::read_exact(&mut file, &mut head[start..]).is_ok() {
            return StaticResponse { status: 200, bytes: head, file: None, body_len: len };
        }
        // The file shrank under us: a 404 rather than a wrong length.
        return not_found(root, version, head_only, close);
    }
    StaticResponse { status: 200, bytes: head, file: Some((file, len)), body_len: len }
}

fn redirect(location: &[u8], version: &str, head_only: bool, close: bool) -> StaticResponse {
    let body = b"301 Moved Permanently\n";
    let fields = [("Location", location)];
    let bytes = response::simple(version, 301, &fields, "text/plain; charset=utf-8", body, close, head_only);
    StaticResponse { status: 301, bytes, file: None, body_len: body.len() as u64 }
}

/// A 404 whose body is the docroot's `404.html` when there is one.
pub fn not_found(root: &Path, version: &str, head_only: bool, close: bool) -> StaticResponse {
    let (body, ctype) = match fs::read(root.join("404.html")) {
        Ok(b) => (b, "text/html; charset=utf-8"),
        Err(_) => (b"404 Not Found\n".to_vec(), "text/plain; charset=utf-8"),
    };
    let bytes = response::simple(version, 404, &[], ctype, &body, close, head_only);
    StaticResponse { status: 404, bytes, file: None, body_len: body.len() as u64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_refuses_escapes() {
        let root = Path::new("/srv/html");
        assert_eq!(resolve(root, b"/a/b.txt"), Some(PathBuf::from("/srv/html/a/b.txt")));
        assert_eq!(resolve(root, b"/"), Some(PathBuf::from("/srv/html")));
        for bad in [&b"/../x"[..], b"/a/../../x", b"/a//b", b"/.git/config", b"/a\\..\\b", b"/a\0", b"x", b"/\xff"] {
            assert_eq!(resolve(root, bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
