//! Loading one plugin file: the only module that opens shared libraries.
//!
//! Steps, each one refusing the file with a [`LoadError`] (and never the whole server):
//! 1. Copy the file to a private copy at a unique path in the cache directory, in the kernel
//!    (`copy_file_range`: no plugin passes through the heap), and stat the source before and
//!    after: a file still being written is refused ([`LoadError::Unstable`]); install plugins
//!    with a temporary name and `rename`. glibc returns the already-loaded library for a path
//!    (or inode) it has seen, so reloading "the same file" needs a new path; and the server
//!    never maps a file someone may overwrite in place (that crashed the host in the research
//!    prototype).
//! 2. Check the copy's ELF program headers against its length ([`check_elf_in`], reading only
//!    the headers): `dlopen` of a truncated library kills the process with SIGBUS inside glibc.
//! 4. `dlopen` the copy and check its root module (`lib_header_from_path`, then
//!    `portico_api::compat::init_root_module`: `RootModule::load_from_file` caches one module
//!    per type for the whole process and would return the first plugin for every file). The
//!    check covers the `portico-api` version (same 0.minor) and every type layout reachable
//!    from the root module, in both directions of growth: a plugin built against an earlier
//!    0.2.x is checked as a prefix of ours, a later one as an extension (see that module).
//! 5. Refuse plugins built with `panic = "abort"`.
//! 6. Unlink the copy (its mapping stays valid).
//!
//! The library is never unloaded: see [`super`].
//!
//! The host crate is `#![forbid(unsafe_code)]`: the unsafety of `dlopen` (running the
//! library's initializers, trusting its symbols) is inside abi_stable's
//! `lib_header_from_path`, and the unchecked initialization after the swapped layout check is
//! inside `portico_api::compat`, next to the types whose growth it relies on.
//! What no check can catch is a plugin's own memory-unsafe code.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use abi_stable::library::{LibraryError, lib_header_from_path};
use portico_api::abi::PluginMod_Ref;
use thiserror::Error;

/// What identifies a version of a plugin file on disk: if any of these change, SIGHUP
/// reloads it. Nanosecond mtime plus size plus inode catches a rebuild within the same second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file (a `rename`d install has a new one).
    pub ino: u64,
    /// Length in bytes.
    pub len: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
}

impl Fingerprint {
    /// The fingerprint of a file's metadata.
    pub fn of(meta: &fs::Metadata) -> Self {
        Fingerprint {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }
}

/// What this process tells every plugin's [`portico_api::abi::Setup`] besides its table: one
/// set per process, fixed at start ([`set_facts`]).
#[derive(Debug, Clone)]
pub struct Facts {
    /// The directory relative paths in a plugin's table are relative to: the configuration
    /// file's, or the working directory.
    pub config_dir: PathBuf,
    /// Worker threads in this process.
    pub worker_threads: usize,
    /// Processes that each load the plugins (`1` for `--workers 0`).
    pub worker_processes: usize,
}

static FACTS: std::sync::OnceLock<Facts> = std::sync::OnceLock::new();

/// Fixes this process's [`Facts`]; the first call wins (a process has one configuration file).
pub fn set_facts(facts: Facts) {
    let _ = FACTS.set(facts);
}

/// This process's [`Facts`]: as set, or the working directory, one thread, one process.
pub fn facts() -> Facts {
    FACTS.get().cloned().unwrap_or_else(|| Facts {
        config_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        worker_threads: 1,
        worker_processes: 1,
    })
}

impl Facts {
    /// The facts of a process run with `args` and `config` (`--workers 0` is one process).
    pub fn of(args: &crate::settings::Args, config: Option<&crate::settings::file::Loaded>) -> Facts {
        Facts {
            config_dir: crate::settings::file::config_dir(config),
            worker_threads: args.worker_threads(),
            worker_processes: args.worker_processes().max(1),
        }
    }

    /// Calls `f` with a [`portico_api::abi::Setup`] of `config` and these facts.
    fn setup<R>(&self, config: &str, f: impl FnOnce(&portico_api::abi::Setup<'_>) -> R) -> R {
        use abi_stable::std_types::{RSlice, RStr};
        use portico_api::abi::{Field, Setup};
        let dir = self.config_dir.to_string_lossy();
        let (threads, processes) = (self.worker_threads.to_string(), self.worker_processes.to_string());
        let extra = [Field::new("worker_threads", &threads), Field::new("worker_processes", &processes)];
        f(&Setup {
            config: RStr::from_str(config),
            config_dir: RStr::from_str(&dir),
            extra: RSlice::from_slice(&extra),
        })
    }
}

/// One loaded version of a plugin.
pub struct Plugin {
    /// The route name: `NAME` from `NAME.so` or `libNAME.so`; `/NAME.py` runs it.
    pub name: String,
    /// The name the plugin gives itself in its root module.
    pub module_name: String,
    /// The version the plugin gives itself.
    pub version: String,
    /// The checked root module.
    pub module: PluginMod_Ref,
    /// The file it was loaded from.
    pub source: PathBuf,
    /// The source file's fingerprint when loaded.
    pub fingerprint: Fingerprint,
    /// Load generation, unique in this process (the first load is 1).
    pub generation: u64,
    /// The configuration its `init` was given (TOML text; empty when none).
    pub config: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// How many times this process has loaded a plugin of this name, this version included
    /// (1 at the first load; the registry counts on from the version it replaces).
    pub loads: u64,
    /// Whether the host may call it on an event loop: it promised it never blocks
    /// (`PluginMod::never_blocks`, 0.2.2) and has not broken the promise since this copy was
    /// loaded (see [`Plugin::inline`]).
    never_blocks: AtomicBool,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Why a plugin file was refused. The previous version, if any, keeps serving.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Reading the file or writing the private copy failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The I/O error.
        source: io::Error,
    },
    /// The file changed while it was read: still being written (install with `rename`).
    #[error("file changed while being read (still being written? install with a temporary name and rename)")]
    Unstable,
    /// Not a loadable ELF shared library for this machine, or truncated.
    #[error("not a loadable shared library: {0}")]
    NotElf(String),
    /// `dlopen` refused the file (missing dependency or symbol, wrong architecture).
    #[error("dlopen failed: {0}")]
    Open(String),
    /// The file is a shared library but not a Portico plugin (no root module symbol).
    #[error("not a portico plugin (no root module): {0}")]
    NotAPlugin(String),
    /// Built against an incompatible `portico-api` (version or type layout). The summary is
    /// one line; the full abi_stable report is logged at debug level.
    #[error("built against an incompatible portico-api: {summary}")]
    Incompatible {
        /// The final error lines of abi_stable's report, joined.
        summary: String,
        /// abi_stable's full report (hundreds of lines; its `Debug` shows only the length).
        full: Report,
    },
    /// The plugin's `init` refused to start (its configuration, a resource it needs).
    #[error("init failed: {0}")]
    Init(String),
    /// Built with `panic = "abort"`: its first panic would abort the server.
    #[error("built with panic = \"abort\"; portico plugins must unwind so the SDK can turn a panic into a 500")]
    PanicAbort,
    /// Its test load in a child process failed (a crash or hang in `init`, or any error
    /// above, seen from the child).
    #[error("test load in a child process failed: {0}")]
    Probe(String),
}

/// abi_stable's full layout report: kept for the debug log, elided from `Debug`.
pub struct Report(pub String);

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<abi_stable report, {} lines>", self.0.lines().count())
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The message of an `init` refusal in a [`LoadError`]'s text (`init failed: MSG` → `MSG`):
/// a refusal reaches the checker, the master and `portico install` from a child process as
/// text, and is placed at its `[plugin.NAME]` table's line by its message.
pub fn init_refusal(text: &str) -> Option<&str> {
    text.strip_prefix("init failed: ")
}

impl LoadError {
    /// Whether loading the same bytes again would fail the same way (so an unchanged file is
    /// not retried on every SIGHUP).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            LoadError::NotElf(_)
                | LoadError::NotAPlugin(_)
                | LoadError::Incompatible { .. }
                | LoadError::PanicAbort
                | LoadError::Probe(_)
        )
    }
}

/// Checks that `data` is an ELF shared object whose loadable segments lie inside the file.
///
/// # Errors
/// [`LoadError::NotElf`] naming the first problem found.
pub fn check_elf(data: &[u8]) -> Result<(), LoadError> {
    check_elf_in(data, data.len() as u64)
}

/// [`check_elf`] over any of `object`'s readers (a file through a `ReadCache` reads only the
/// headers), for a file of `len` bytes.
///
/// # Errors
/// As [`check_elf`].
pub fn check_elf_in<'a, R: object::ReadRef<'a>>(data: R, len: u64) -> Result<(), LoadError> {
    use object::elf::{ET_DYN, PT_DYNAMIC, PT_LOAD, PT_TLS};
    use object::read::elf::{FileHeader, ProgramHeader};
    let bad = |m: &str| LoadError::NotElf(m.to_owned());
    if len < 64 || data.read_bytes_at(0, 4).ok() != Some(&b"\x7fELF"[..]) {
        return Err(bad("no ELF header"));
    }
    let header = object::elf::FileHeader64::<object::Endianness>::parse(data).map_err(|e| bad(&e.to_string()))?;
    let endian = header.endian().map_err(|e| bad(&e.to_string()))?;
    if header.e_type(endian) != ET_DYN {
        return Err(bad("not a shared object (ET_DYN)"));
    }
    let native = if cfg!(target_arch = "x86_64") {
        object::elf::EM_X86_64
    } else if cfg!(target_arch = "aarch64") {
        object::elf::EM_AARCH64
    } else {
        header.e_machine(endian)
    };
    if header.e_machine(endian) != native {
        return Err(bad("built for another architecture"));
    }
    let phdrs = header.program_headers(endian, data).map_err(|e| bad(&format!("program headers: {e}")))?;
    let mut has_dynamic = false;
    for ph in phdrs {
        let kind = ph.p_type(endian);
        if matches!(kind, PT_LOAD | PT_DYNAMIC | PT_TLS) {
            let end = ph.p_offset(endian).checked_add(ph.p_filesz(endian));
            if end.is_none_or(|end| end > len) {
                return Err(bad("truncated: a loadable segment ends past the end of the file"));
            }
        }
        has_dynamic |= kind == PT_DYNAMIC;
    }
    if !has_dynamic {
        return Err(bad("no dynamic section (a static executable?)"));
    }
    Ok(())
}

/// One line from abi_stable's report: each distinct `Error:` paragraph (the error and its
/// `Expected:` / `Found:` lines, whitespace collapsed), or the report's first line.
fn summarize(report: &str) -> String {
    let mut found: Vec<String> = Vec::new();
    let mut lines = report.lines().map(str::trim).peekable();
    while let Some(line) = lines.next() {
        let Some(first) = line.strip_prefix("Error:") else { continue };
        let mut para = first.trim().to_owned();
        while let Some(next) = lines.peek().filter(|l| !l.is_empty() && !l.starts_with("Error:")) {
            para.push(' ');
            para.push_str(next);
            lines.next();
        }
        // The nesting count that follows ("0 error(s)inside: <other>") differs per type.
        if let Some(at) = para.find(" error(s)inside") {
            para.truncate(para[..at].rfind(' ').unwrap_or(at));
        }
        // A version mismatch, reported once per type: said once, as for the root module.
        if let Some(versions) = para.strip_prefix("incompatible package versions Expected: ")
            && let Some((expected, found_version)) = versions.split_once(" Found: ")
        {
            para = format!("expected portico-api {expected}, found {found_version}");
        }
        if !found.contains(&para) {
            found.push(para);
        }
    }
    let summary =
        if found.is_empty() { report.trim().lines().next().unwrap_or("").to_owned() } else { found.join("; ") };
    if summary.len() > 400 { format!("{}…", &summary[..summary.floor_char_boundary(400)]) } else { summary }
}

fn classify(err: LibraryError) -> LoadError {
    use std::error::Error as _;
    match err {
        LibraryError::OpenError { err, .. } => {
            let detail = err.source().map(ToString::to_string).unwrap_or_else(|| err.to_string());
            LoadError::Open(detail)
        }
        LibraryError::GetSymbolError { err, .. } => {
            let detail = err.source().map(ToString::to_string).unwrap_or_else(|| err.to_string());
            LoadError::NotAPlugin(detail)
        }
        LibraryError::IncompatibleVersionNumber { expected_version, actual_version, .. } => {
            let full = format!("expected portico-api {expected_version}, found {actual_version}");
            LoadError::Incompatible { summary: full.clone(), full: Report(full) }
        }
        other => {
            let full = other.to_string();
            LoadError::Incompatible { summary: summarize(&full), full: Report(full) }
        }
    }
}

/// Loads the plugin at `source` under the route name `name`, through a private copy in
/// `cache_dir` named after `generation`.
///
/// # Errors
/// A [`LoadError`]; nothing of the file is used then.
pub fn load(name: &str, source: &Path, cache_dir: &Path, generation: u64, config: &str) -> Result<Plugin, LoadError> {
    load_with(name, source, Some(cache_dir), generation, config)
}

/// Loads the plugin at `source` where it is, without a private copy: for files nobody
/// rewrites and that this process loads once, such as a generation's snapshot in a worker
/// (the master made those copies). Saves copying every plugin in every worker.
///
/// # Errors
/// As [`load`].
pub fn load_in_place(name: &str, source: &Path, generation: u64, config: &str) -> Result<Plugin, LoadError> {
    load_with(name, source, None, generation, config)
}

fn load_with(
    name: &str,
    source: &Path,
    cache_dir: Option<&Path>,
    generation: u64,
    config: &str,
) -> Result<Plugin, LoadError> {
    let io = |what| move |source| LoadError::Io { what, source };
    let before = fs::metadata(source).map_err(io("stat plugin file"))?;
    let fingerprint = Fingerprint::of(&before);
    let Some(cache_dir) = cache_dir else {
        let file = fs::File::open(source).map_err(io("open plugin file"))?;
        check_elf_in(&object::ReadCache::new(&file), before.len())?;
        drop(file);
        let module = lib_header_from_path(source).and_then(portico_api::compat::init_root_module).map_err(classify)?;
        return finish(name, module, source, fingerprint, generation, config);
    };
    fs::create_dir_all(cache_dir).map_err(io("create plugin cache directory"))?;
    let copy = cache_dir.join(format!("{name}-{}-{generation}{}", std::process::id(), std::env::consts::DLL_SUFFIX));
    // create_new: never truncate a file someone else (another server sharing the directory)
    // may be loading.
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&copy)
        .map_err(io("create private copy"))?;
    // Copied in the kernel (`copy_file_range`), never through this process's heap: a plugin
    // of many megabytes costs no memory to load but its mapping.
    let copied =
        fs::File::open(source).and_then(|mut from| std::io::copy(&mut from, &mut file)).map_err(io("copy plugin file"));
    let after = fs::metadata(source).map_err(io("stat plugin file"));
    let checked = match (copied, after) {
        (Err(e), _) | (_, Err(e)) => Err(e),
        (Ok(n), Ok(after)) if fingerprint != Fingerprint::of(&after) || n != before.len() => Err(LoadError::Unstable),
        // Only the headers are read, through a small cache.
        (Ok(n), Ok(_)) => check_elf_in(&object::ReadCache::new(&file), n),
    };
    drop(file);
    if let Err(e) = checked {
        let _ = fs::remove_file(&copy);
        return Err(e);
    }
    let loaded = lib_header_from_path(&copy).and_then(portico_api::compat::init_root_module);
    // The mapping outlives the path; the copy's disk space is held until exit.
    if let Err(e) = fs::remove_file(&copy) {
        tracing::warn!(file = %copy.display(), "could not remove the private copy: {e}");
    }
    let module = loaded.map_err(classify)?;
    finish(name, module, source, fingerprint, generation, config)
}

/// The checks and set-up after a successful open: `panic = "unwind"`, then `setup` or `init`.
fn finish(
    name: &str,
    module: PluginMod_Ref,
    source: &Path,
    fingerprint: Fingerprint,
    generation: u64,
    config: &str,
) -> Result<Plugin, LoadError> {
    if !module.panic_unwind() {
        return Err(LoadError::PanicAbort);
    }
    // Its `[plugin.NAME]` table, once, before any request (a fresh copy is loaded when the
    // table changes, so a plugin's statics always match its configuration): through `setup`
    // (0.2.1) when the plugin has it, else `init`.
    let configured = match (module.setup(), module.init()) {
        (Some(abi_stable::std_types::RSome(setup)), _) => facts().setup(config, |s| setup(s)),
        (_, abi_stable::std_types::RSome(init)) => init(abi_stable::std_types::RStr::from_str(config)),
        _ => abi_stable::std_types::ROk(()),
    };
    if let abi_stable::std_types::RErr(e) = configured {
        return Err(LoadError::Init(e.into_string()));
    }
    Ok(Plugin {
        name: name.to_owned(),
        module_name: module.name().as_str().to_owned(),
        version: module.version().as_str().to_owned(),
        module,
        source: source.to_owned(),
        fingerprint,
        generation,
        config: config.to_owned(),
        loaded_at: SystemTime::now(),
        loads: 1,
        never_blocks: AtomicBool::new(module.never_blocks().unwrap_or(false)),
    })
}

impl Plugin {
    /// Whether a call may run on the event loop that read the request: the plugin promised
    /// it never blocks and has kept the promise.
    pub fn inline(&self) -> bool {
        self.never_blocks.load(Ordering::Relaxed)
    }

    /// The plugin broke its promise (a call on an event loop ran past `--inline-timeout`):
    /// its calls go to worker threads from now on, for this loaded copy. `true` the first
    /// time (the caller logs it).
    pub fn broke_promise(&self) -> bool {
        self.never_blocks.swap(false, Ordering::Relaxed)
    }

    /// Whether the plugin exports a middleware entry point (PEP 3333 middleware).
    pub fn is_middleware(&self) -> bool {
        self.module.middleware().is_some()
    }

    /// Whether the plugin has a `serves_script` hook (0.2.1).
    pub fn has_scripts(&self) -> bool {
        matches!(self.module.serves_script(), Some(abi_stable::std_types::RSome(_)))
    }

    /// Whether the plugin serves `/NAME.py` for `name` (its `serves_script` hook; `false`
    /// without one).
    pub fn serves_script(&self, name: &str) -> bool {
        match self.module.serves_script() {
            Some(abi_stable::std_types::RSome(serves)) => serves(abi_stable::std_types::RStr::from_str(name)),
            _ => false,
        }
    }
}

/// Removes private copies (`NAME-PID-GEN.so`) left behind by processes that no longer run
/// (a crash between copy and unlink). Other files, and copies of live processes, are kept.
pub fn clean_cache(cache_dir: &Path) {
    let Ok(entries) = fs::read_dir(cache_dir) else { return };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(stem) = file_name.to_str().and_then(|n| n.strip_suffix(std::env::consts::DLL_SUFFIX)) else {
            continue;
        };
        let mut parts = stem.rsplitn(3, '-');
        let (Some(generation), Some(pid), Some(_name)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let (Ok(_), Ok(pid)) = (generation.parse::<u64>(), pid.parse::<u32>()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The route name a file gives: `NAME` for `NAME.so` or `libNAME.so` (this platform's
/// library suffix: `.dylib`, `.dll` elsewhere). `None` for other files and for hidden ones
/// (`.NAME.so.tmp` installs). A leading `lib` is always taken as the prefix, so
/// `library.so` serves `/rary.py`: name such a plugin `library.so` → `liblibrary.so`.
pub fn route_name(file_name: &str) -> Option<&str> {
    if file_name.starts_with('.') {
        return None;
    }
    let stem = file_name.strip_suffix(std::env::consts::DLL_SUFFIX)?;
    let stem = stem.strip_prefix("lib").filter(|s| !s.is_empty()).unwrap_or(stem);
    let valid = !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    valid.then_some(stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_init_refusal_is_found_in_its_text() {
        let text = LoadError::Init("allow[0]: bad".into()).to_string();
        assert_eq!(init_refusal(&text), Some("allow[0]: bad"));
        assert_eq!(init_refusal(&LoadError::PanicAbort.to_string()), None);
    }

    #[test]
    fn route_names() {
        assert_eq!(route_name("ctime.so"), Some("ctime"));
        assert_eq!(route_name("libctime.so"), Some("ctime"));
        assert_eq!(route_name(".ctime.so.tmp"), None);
        assert_eq!(route_name("ctime.txt"), None);
        assert_eq!(route_name("a b.so"), None);
    }

    #[test]
    fn elf_check_refuses_junk_and_truncation() {
        assert!(check_elf(b"hello").is_err());
        let me = fs::read("/proc/self/exe").unwrap();
        // This test binary is itself ET_DYN (PIE) and passes whole.
        assert!(check_elf(&me).is_ok());
        // Cut inside the first loadable segment (it starts at offset 0 and spans more than a
        // page): dlopen of this would SIGBUS, so it must be refused before.
        assert!(matches!(check_elf(&me[..4096]), Err(LoadError::NotElf(m)) if m.contains("truncated")));
    }

    #[test]
    fn summary_is_one_line() {
        let report = "a\nb\n  Error:mismatched type\nExpected:\n    RSlice<'a>\nFound:\n    RStr<'a>\n\nmore\nError:mismatched type\nExpected:\n RSlice<'a>\nFound:\n RStr<'a>\n";
        assert_eq!(summarize(report), "mismatched type Expected: RSlice<'a> Found: RStr<'a>");
    }
}
