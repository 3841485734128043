//! Static files under the docroot: resolution that never leaves it, validators and
//! conditional requests, ranges, precompressed siblings, directory indexes, and the response
//! (head plus body parts) the I/O thread writes.
//!
//! | module | owns |
//! |---|---|
//! | [`resolve`] | the path policy: request path → file under the docroot, or a refusal |
//! | [`cache`] | the open-file cache: resolutions, validators, inline bytes or descriptors |
//! | [`conditional`] | entity tags and RFC 9110 §13 preconditions |
//! | [`ranges`] | RFC 9110 §14 range plans and `multipart/byteranges` framing |
//! | [`encoding`] | `Accept-Encoding` negotiation for `.br`/`.gz` siblings |
//! | [`listing`] | directory listings (only with `--dir-listing`) |
//!
//! [`StaticFiles::serve`] runs on the I/O thread; every file system call it makes is a
//! metadata call or a read of at most [`cache::INLINE_MAX`] bytes, and a hot file costs none
//! while its cache entry is fresh. Large bodies are sent later, as the socket drains, with
//! `sendfile` from the cached descriptor ([`Part::File`]).

pub mod cache;
pub mod conditional;
pub mod encoding;
pub mod listing;
pub mod ranges;
pub mod resolve;

use std::borrow::Cow;
use std::fs::File;
use std::io::Write;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::http::request::RequestHead;
use crate::http::response;
use cache::{Content, FileCache, FileEntry, Lookup, Representation};
use conditional::{Conditions, Precondition};
use ranges::Plan;

/// How static files are served (from the command line).
#[derive(Debug, Clone)]
pub struct Options {
    /// `Cache-Control` value for file responses (200, 206, 304), if any.
    pub cache_control: Option<String>,
    /// Serve an HTML listing for a directory without `index.html` (otherwise 404).
    pub dir_listing: bool,
    /// Follow symlinks whose target lies outside the docroot (otherwise 404).
    pub allow_symlinks_outside: bool,
    /// How long a cache entry is trusted before the file system is asked again.
    pub cache_valid: Duration,
    /// Most cache entries per I/O thread.
    pub cache_entries: NonZeroUsize,
}

/// A piece of a response body.
#[derive(Debug)]
pub enum Part {
    /// A range of shared bytes (a cached file).
    Shared(Arc<[u8]>, Range<usize>),
    /// Bytes made for this response (multipart delimiters, a listing).
    Owned(Vec<u8>),
    /// `len` bytes of an open file from byte `offset`.
    File {
        /// The file (shared with the cache and other responses; read with explicit offsets).
        file: Arc<File>,
        /// First byte to send.
        offset: u64,
        /// Bytes to send.
        len: u64,
    },
}

/// What to send for a static request.
#[derive(Debug)]
pub struct StaticResponse {
    /// Status code.
    pub status: u16,
    /// The head (for responses the server makes up, such as errors, the body too).
    pub head: Vec<u8>,
    /// Body parts still to send after the head.
    pub body: Vec<Part>,
    /// Payload length in bytes, for the access log.
    pub body_len: u64,
}

impl StaticResponse {
    /// A response made whole by [`response::simple`]; `body_len` is what it carries unless
    /// `head_only` (then 0, for the access log).
    fn simple(status: u16, bytes: Vec<u8>, body_len: u64, head_only: bool) -> StaticResponse {
        StaticResponse { status, head: bytes, body: Vec::new(), body_len: if head_only { 0 } else { body_len } }
    }
}

/// The request fields static serving looks at. List fields received on several lines are
/// joined with `, ` (RFC 9110 §5.3); a singleton field received twice is ignored.
#[derive(Default)]
struct Fields<'a> {
    if_match: Option<Cow<'a, [u8]>>,
    if_none_match: Option<Cow<'a, [u8]>>,
    if_modified_since: Option<&'a [u8]>,
    if_unmodified_since: Option<&'a [u8]>,
    if_range: Option<&'a [u8]>,
    range: Option<&'a [u8]>,
    accept_encoding: Option<Cow<'a, [u8]>>,
}

impl<'a> Fields<'a> {
    fn of(head: &'a RequestHead) -> Fields<'a> {
        fn list<'a>(slot: &mut Option<Cow<'a, [u8]>>, v: &'a [u8]) {
            *slot = Some(match slot.take() {
                None => Cow::Borrowed(v),
                Some(prev) => {
                    let mut joined = prev.into_owned();
                    joined.extend_from_slice(b", ");
                    joined.extend_from_slice(v);
                    Cow::Owned(joined)
                }
            });
        }
        fn single<'a>(slot: &mut Option<&'a [u8]>, seen: &mut bool, v: &'a [u8]) {
            *slot = if *seen { None } else { Some(v) };
            *seen = true;
        }
        let mut f = Fields::default();
        let mut seen = [false; 4];
        for (n, v) in &head.fields {
            let name = head.slice(n);
            let value = head.slice(v);
            // Only names starting with `i`, `r` or `a` matter: a quick filter for the common case.
            match name.first().map(u8::to_ascii_lowercase) {
                Some(b'i' | b'r' | b'a') => {}
                _ => continue,
            }
            if name.eq_ignore_ascii_case(b"if-match") {
                list(&mut f.if_match, value);
            } else if name.eq_ignore_ascii_case(b"if-none-match") {
                list(&mut f.if_none_match, value);
            } else if name.eq_ignore_ascii_case(b"accept-encoding") {
                list(&mut f.accept_encoding, value);
            } else if name.eq_ignore_ascii_case(b"if-modified-since") {
                single(&mut f.if_modified_since, &mut seen[0], value);
            } else if name.eq_ignore_ascii_case(b"if-unmodified-since") {
                single(&mut f.if_unmodified_since, &mut seen[1], value);
            } else if name.eq_ignore_ascii_case(b"if-range") {
                single(&mut f.if_range, &mut seen[2], value);
            } else if name.eq_ignore_ascii_case(b"range") {
                single(&mut f.range, &mut seen[3], value);
            }
        }
        f
    }
}

/// Static file serving for one I/O thread.
pub struct StaticFiles {
    options: Options,
    cache: FileCache,
}

impl StaticFiles {
    /// Serving from `root`, the canonical docroot.
    pub fn new(root: PathBuf, options: Options) -> StaticFiles {
        let cache = FileCache::new(root, &options);
        StaticFiles { options, cache }
    }

    /// Answers a request for the static path `decoded` (percent-decoded). `close` says the
    /// connection closes after this response.
    pub fn serve(&mut self, head: &RequestHead, decoded: &[u8], close: bool) -> StaticResponse {
        let version = head.version.as_str();
        let head_only = head.is_head();
        let method = head.method();
        if method != "GET" && method != "HEAD" {
            let body = response::error_body(405);
            let fields: [(&str, &[u8]); 1] = [("Allow", b"GET, HEAD")];
            let bytes = response::simple(version, 405, &fields, "text/plain; charset=utf-8", &body, close, false);
            return StaticResponse::simple(405, bytes, body.len() as u64, head_only);
        }
        match self.cache.lookup(decoded) {
            Lookup::File(entry) => self.file(head, &entry, close),
            Lookup::DirRedirect => {
                let parts = crate::http::target::split(head.target(), head.form);
                let mut location = parts.path.to_vec();
                location.push(b'/');
                if !parts.query.is_empty() {
                    location.push(b'?');
                    location.extend_from_slice(parts.query);
                }
                let body = b"301 Moved Permanently\n";
                let fields = [("Location", &location[..])];
                let bytes =
                    response::simple(version, 301, &fields, "text/plain; charset=utf-8", body, close, head_only);
                StaticResponse::simple(301, bytes, body.len() as u64, head_only)
            }
            Lookup::DirNoIndex(dir) if self.options.dir_listing => {
                match listing::render(&dir, &String::from_utf8_lossy(decoded)) {
                    Ok(page) => {
                        let bytes =
                            response::simple(version, 200, &[], "text/html; charset=utf-8", &page, close, head_only);
                        StaticResponse::simple(200, bytes, page.len() as u64, head_only)
                    }
                    Err(e) => {
                        tracing::warn!("listing {}: {e}", dir.display());
                        self.not_found(version, head_only, close)
                    }
                }
            }
            Lookup::DirNoIndex(_) | Lookup::Missing => self.not_found(version, head_only, close),
        }
    }

    /// A 404 whose body is the docroot's `404.html` when there is one (through the cache).
    pub fn not_found(&mut self, version: &str, head_only: bool, close: bool) -> StaticResponse {
        let page = match self.cache.lookup(b"/404.html") {
            Lookup::File(entry) => match &entry.identity.content {
                Content::Inline(bytes) => Some(Arc::clone(bytes)),
                Content::File(_) => None, // a 404 page over 64 KiB: not worth sending
            },
            _ => None,
        };
        let (body, ctype): (&[u8], _) = match &page {
            Some(bytes) => (bytes, "text/html; charset=utf-8"),
            None => (b"404 Not Found\n", "text/plain; charset=utf-8"),
        };
        let bytes = response::simple(version, 404, &[], ctype, body, close, head_only);
        StaticResponse::simple(404, bytes, body.len() as u64, head_only)
    }

    fn file(&self, head: &RequestHead, entry: &FileEntry, close: bool) -> StaticResponse {
        let version = head.version.as_str();
        let head_only = head.is_head();
        let fields = Fields::of(head);
        let coding = if entry.has_variants() {
            encoding::negotiate(fields.accept_encoding.as_deref(), entry.br.is_some(), entry.gzip.is_some())
        } else {
            None
        };
        let rep = entry.variant(coding);
        let conditions = Conditions {
            if_match: fields.if_match.as_deref(),
            if_none_match: fields.if_none_match.as_deref(),
            if_modified_since: fields.if_modified_since,
            if_unmodified_since: fields.if_unmodified_since,
        };
        // Fields every answer about this representation carries (RFC 9110 §15.4.5 for 304).
        let shared = &entry.common_fields;
        match conditional::evaluate(&conditions, &rep.etag, rep.modified) {
            Precondition::Proceed => {}
            Precondition::NotModified => {
                let mut out = Vec::with_capacity(256);
                response::start_head(&mut out, version, 304);
                out.extend_from_slice(rep.validator_fields.as_bytes());
                out.extend_from_slice(shared.as_bytes());
                response::finish_head(&mut out, version, close);
                return StaticResponse::simple(304, out, 0, true);
            }
            Precondition::Failed => {
                let body = response::error_body(412);
                let bytes = response::simple(version, 412, &[], "text/plain; charset=utf-8", &body, close, head_only);
                return StaticResponse::simple(412, bytes, body.len() as u64, head_only);
            }
        }
        // Range handling is defined for GET only (RFC 9110 §14.2).
        let plan = match fields.range {
            Some(range) if !head_only => match fields.if_range {
                Some(v) if !conditional::if_range(v, &rep.etag, rep.modified) => Plan::Full,
                _ => ranges::plan(range, rep.len),
            },
            _ => Plan::Full,
        };
        let mut out = Vec::with_capacity(320);
        let encoding_field = coding.map(|c| format!("Content-Encoding: {}\r\n", c.token()));
        let representation_fields = |out: &mut Vec<u8>| {
            out.extend_from_slice(rep.validator_fields.as_bytes());
            out.extend_from_slice(b"Accept-Ranges: bytes\r\n");
            out.extend_from_slice(shared.as_bytes());
            if let Some(e) = &encoding_field {
                out.extend_from_slice(e.as_bytes());
            }
        };
        match plan {
            Plan::Full => {
                response::start_head(&mut out, version, 200);
                let _ = write!(out, "Content-Type: {}\r\nContent-Length: {}\r\n", entry.content_type, rep.len);
                representation_fields(&mut out);
                response::finish_head(&mut out, version, close);
                let body = if head_only { Vec::new() } else { vec![slice(rep, 0, rep.len)] };
                StaticResponse { status: 200, head: out, body, body_len: if head_only { 0 } else { rep.len } }
            }
            Plan::Single(r) => {
                let n = r.end() - r.start() + 1;
                response::start_head(&mut out, version, 206);
                let _ = write!(
                    out,
                    "Content-Type: {}\r\nContent-Length: {n}\r\nContent-Range: bytes {}-{}/{}\r\n",
                    entry.content_type,
                    r.start(),
                    r.end(),
                    rep.len
                );
                representation_fields(&mut out);
                response::finish_head(&mut out, version, close);
                StaticResponse { status: 206, head: out, body: vec![slice(rep, *r.start(), n)], body_len: n }
            }
            Plan::Multi(list) => {
                let boundary = ranges::boundary();
                let mut body = Vec::with_capacity(list.len() * 2 + 1);
                let mut total = 0u64;
                for (i, r) in list.iter().enumerate() {
                    let part_head = ranges::part_head(&boundary, i == 0, &entry.content_type, r, rep.len);
                    let n = r.end() - r.start() + 1;
                    total += part_head.len() as u64 + n;
                    body.push(Part::Owned(part_head));
                    body.push(slice(rep, *r.start(), n));
                }
                let end = ranges::closing(&boundary);
                total += end.len() as u64;
                body.push(Part::Owned(end));
                response::start_head(&mut out, version, 206);
                let _ = write!(
                    out,
                    "Content-Type: multipart/byteranges; boundary={boundary}\r\nContent-Length: {total}\r\n"
                );
                representation_fields(&mut out);
                response::finish_head(&mut out, version, close);
                StaticResponse { status: 206, head: out, body, body_len: total }
            }
            Plan::Unsatisfiable => {
                let body = response::error_body(416);
                let content_range = format!("bytes */{}", rep.len);
                let fields = [("Content-Range", content_range.as_bytes())];
                let bytes =
                    response::simple(version, 416, &fields, "text/plain; charset=utf-8", &body, close, head_only);
                StaticResponse::simple(416, bytes, body.len() as u64, head_only)
            }
        }
    }
}

/// `len` bytes of `rep` from `offset`, as a body part.
fn slice(rep: &Representation, offset: u64, len: u64) -> Part {
    match &rep.content {
        Content::Inline(bytes) => Part::Shared(Arc::clone(bytes), offset as usize..(offset + len) as usize),
        Content::File(file) => Part::File { file: Arc::clone(file), offset, len },
    }
}
