//! Static files under the docroot: resolution that never leaves it, validators and
//! conditional requests, ranges, precompressed siblings, directory indexes, and the
//! [`Response`] (head plus body pieces) the event loop writes.
//!
//! | module | owns |
//! |---|---|
//! | [`resolve`] | the path policy: request path → file under the docroot, or a refusal |
//! | [`cache`] | the open-file cache: resolutions, validators, inline bytes or descriptors |
//! | [`conditional`] | entity tags and RFC 9110 §13 preconditions |
//! | [`ranges`] | RFC 9110 §14 range plans and `multipart/byteranges` framing |
//! | [`encoding`] | `Accept-Encoding` negotiation for `.br`/`.gz` siblings |
//! | [`listing`] | directory listings (only with `--dir-listing`) |
//! | [`app`] | the docroot as an application, for mounts that put middleware in front of it |
//!
//! [`StaticFiles::serve`] runs on the event loop; every file system call it makes is a
//! metadata call or a read of at most [`cache::INLINE_MAX`] bytes, and a hot file costs none
//! while its cache entry is fresh. Large bodies are sent later, as the socket drains, with
//! `sendfile` from the cached descriptor ([`Piece::File`]).

pub(crate) mod app;
pub(crate) mod cache;
pub mod conditional;
pub mod encoding;
pub(crate) mod listing;
pub mod ranges;
pub(crate) mod resolve;

use std::borrow::Cow;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::http::outgoing::{Piece, Response};
use crate::http::request::RequestHead;
use crate::http::response::{Fields, Framing, ResponseHead};
use crate::settings::Args;
use cache::{Content, FileCache, FileEntry, Lookup, Representation};
use conditional::{Conditions, Precondition};
use ranges::Plan;

/// How static files are served (from the command line).
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// `Cache-Control` value for file responses (200, 206, 304), if any.
    pub cache_control: Option<String>,
    /// Serve an HTML listing for a directory without `index.html` (otherwise 404).
    pub dir_listing: bool,
    /// Follow symlinks whose target lies outside the docroot (otherwise 404).
    pub allow_symlinks_outside: bool,
    /// How long a cache entry is trusted before the file system is asked again.
    pub cache_valid: Duration,
    /// Most cache entries per event loop.
    pub cache_entries: NonZeroUsize,
}

impl Options {
    /// The options the command line asks for.
    pub fn from_args(args: &Args) -> Options {
        Options {
            cache_control: args.cache_control.clone().filter(|v| !v.is_empty()),
            dir_listing: args.dir_listing,
            allow_symlinks_outside: args.allow_symlinks_outside,
            cache_valid: Duration::from_millis(args.file_cache_valid_ms),
            cache_entries: NonZeroUsize::new(args.file_cache_entries).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

/// The request fields static serving looks at. List fields received on several lines are
/// joined with `, ` (RFC 9110 §5.3); a singleton field received twice is ignored.
#[derive(Default)]
struct Asked<'a> {
    if_match: Option<Cow<'a, [u8]>>,
    if_none_match: Option<Cow<'a, [u8]>>,
    if_modified_since: Option<&'a [u8]>,
    if_unmodified_since: Option<&'a [u8]>,
    if_range: Option<&'a [u8]>,
    range: Option<&'a [u8]>,
    accept_encoding: Option<Cow<'a, [u8]>>,
}

impl<'a> Asked<'a> {
    fn of(head: &'a RequestHead) -> Asked<'a> {
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
        let mut f = Asked::default();
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

/// Static file serving for one event loop (or, behind a mount's middleware, for the workers).
pub struct StaticFiles {
    options: Options,
    cache: FileCache,
}

/// `Content-Type` of the pages the server writes itself.
const TEXT: &str = "text/plain; charset=utf-8";

impl StaticFiles {
    /// Serving from `root`, the canonical docroot.
    pub(crate) fn new(root: PathBuf, options: Options) -> StaticFiles {
        let cache = FileCache::new(root, &options);
        StaticFiles { options, cache }
    }

    /// Answers a request for the static path `decoded` (percent-decoded). For a `HEAD` request
    /// the body is left out (the head is what `GET` would get). `allowed` says whether the
    /// file (or listed directory) a path resolved to, by its canonical path, may be served on
    /// this route: a file fenced off for another route is a 404, whatever path or link
    /// reached it (see `crate::routing::Fence`).
    pub fn serve(&mut self, head: &RequestHead, decoded: &[u8], allowed: &dyn Fn(&Path) -> bool) -> Response {
        let method = head.method();
        if method != "GET" && method != "HEAD" {
            return Response::error(405).field("Allow", "GET, HEAD");
        }
        match self.cache.lookup(decoded) {
            Lookup::File(entry) if !allowed(&entry.real) => self.not_found(),
            Lookup::File(entry) => file(head, &entry),
            Lookup::DirRedirect => {
                let parts = crate::http::target::split(head.target(), head.form);
                let mut location = parts.path.to_vec();
                location.push(b'/');
                if !parts.query.is_empty() {
                    location.push(b'?');
                    location.extend_from_slice(parts.query);
                }
                Response::page(301, TEXT, b"301 Moved Permanently\n".to_vec()).field("Location", location)
            }
            Lookup::DirNoIndex(dir) if self.options.dir_listing && allowed(&dir) => {
                match listing::render(&dir, &String::from_utf8_lossy(decoded)) {
                    Ok(page) => Response::page(200, "text/html; charset=utf-8", page),
                    Err(e) => {
                        tracing::warn!("listing {}: {e}", dir.display());
                        self.not_found()
                    }
                }
            }
            Lookup::DirNoIndex(_) | Lookup::Missing => self.not_found(),
        }
    }

    /// A 404 whose body is the docroot's `404.html` when there is one (through the cache).
    pub fn not_found(&mut self) -> Response {
        let page = match self.cache.lookup(b"/404.html") {
            Lookup::File(entry) => match &entry.identity.content {
                Content::Inline(bytes) => Some(Arc::clone(bytes)),
                Content::File(_) => None, // a 404 page over 64 KiB: not worth sending
            },
            _ => None,
        };
        match page {
            Some(bytes) => {
                let len = bytes.len();
                let head = ResponseHead::new(404)
                    .field("Content-Type", "text/html; charset=utf-8")
                    .framing(Framing::Length(len as u64));
                Response { head, body: vec![Piece::Shared(bytes, 0..len)] }
            }
            None => Response::error(404),
        }
    }
}

/// The answer for a regular file: validators and preconditions (RFC 9110 §13), then the
/// whole file, one range, several ranges or a 416 (§14).
fn file(head: &RequestHead, entry: &FileEntry) -> Response {
    let head_only = head.is_head();
    let fields = Asked::of(head);
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
    match conditional::evaluate(&conditions, &rep.etag, rep.modified) {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            // The fields every answer about this representation carries (RFC 9110 §15.4.5).
            let mut h = ResponseHead::new(304);
            h.fields.append(&rep.validator_fields);
            h.fields.append(&entry.common_fields);
            return Response { head: h, body: Vec::new() };
        }
        Precondition::Failed => return Response::error(412),
    }
    // Range handling is defined for GET only (RFC 9110 §14.2).
    let plan = match fields.range {
        Some(range) if !head_only => match fields.if_range {
            Some(v) if !conditional::if_range(v, &rep.etag, rep.modified) => Plan::Full,
            _ => ranges::plan(range, rep.len),
        },
        _ => Plan::Full,
    };
    // Content-Type first, then the representation's fields, as every answer below has them.
    let representation = |code: u16, content_type: &str, len: u64| {
        let mut h = ResponseHead::new(code);
        h.fields = Fields::with_capacity(128 + rep.validator_fields.len() + entry.common_fields.len());
        h.fields.push("Content-Type", content_type.as_bytes());
        h.framing = Framing::Length(len);
        h.fields.append(&rep.validator_fields);
        h.fields.push("Accept-Ranges", b"bytes");
        h.fields.append(&entry.common_fields);
        if let Some(c) = coding {
            h.fields.push("Content-Encoding", c.token().as_bytes());
        }
        h
    };
    match plan {
        Plan::Full => {
            let body = if head_only { Vec::new() } else { vec![slice(rep, 0, rep.len)] };
            Response { head: representation(200, &entry.content_type, rep.len), body }
        }
        Plan::Single(r) => {
            let n = r.end() - r.start() + 1;
            let mut h = representation(206, &entry.content_type, n);
            h.fields.push("Content-Range", format!("bytes {}-{}/{}", r.start(), r.end(), rep.len).as_bytes());
            Response { head: h, body: vec![slice(rep, *r.start(), n)] }
        }
        Plan::Multi(list) => {
            let boundary = ranges::boundary();
            let mut body = Vec::with_capacity(list.len() * 2 + 1);
            let mut total = 0u64;
            for (i, r) in list.iter().enumerate() {
                let part_head = ranges::part_head(&boundary, i == 0, &entry.content_type, r, rep.len);
                let n = r.end() - r.start() + 1;
                total += part_head.len() as u64 + n;
                body.push(Piece::Owned(part_head));
                body.push(slice(rep, *r.start(), n));
            }
            let end = ranges::closing(&boundary);
            total += end.len() as u64;
            body.push(Piece::Owned(end));
            let content_type = format!("multipart/byteranges; boundary={boundary}");
            Response { head: representation(206, &content_type, total), body }
        }
        Plan::Unsatisfiable => Response::error(416).field("Content-Range", format!("bytes */{}", rep.len)),
    }
}

/// `len` bytes of `rep` from `offset`, as a body piece.
fn slice(rep: &Representation, offset: u64, len: u64) -> Piece {
    match &rep.content {
        Content::Inline(bytes) => Piece::Shared(Arc::clone(bytes), offset as usize..(offset + len) as usize),
        Content::File(file) => Piece::File { file: Arc::clone(file), offset, len },
    }
}
