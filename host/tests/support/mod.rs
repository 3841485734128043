//! Shared harness for the `portico` integration tests: builds the test plugins, starts the
//! real binary on `127.0.0.1:0` in a private temporary directory, and speaks HTTP/1.1 to it
//! over raw sockets.
//!
//! - [`ServerBuilder`] / [`Server`]: a temp dir with `docroot/`, `plugins/`, `cache/` and
//!   marker files *beside* the docroot (for traversal tests); the child process is spawned with
//!   `--bind 127.0.0.1:0 --access-log off`, ready once its stderr says `listening on
//!   http://127.0.0.1:PORT`, and killed on drop. Its stderr (and stdout) are drained by
//!   background threads into buffers that tests can wait on ([`Server::wait_for_log`]).
//! - Plugins ([`plugin`], [`fixture_v2`], [`abi_old`], [`abi_next`], [`grown_plugin`]) and the
//!   [`grown_host`] program: built once per test binary by a nested
//!   `cargo build` into `target/test-plugins` (a target dir of its own, so it never waits on
//!   the build lock of the `cargo test` that runs us), then copied to `target/test-plugins/staged/`.
//! - HTTP: [`Conn`] (one connection, several responses: keep-alive and pipelining),
//!   [`read_response`] (status line, fields, body by `Content-Length`, chunked or close),
//!   [`raw`] / [`raw_until_close`] (exact bytes in, bytes out), [`get`].
//!
//! Every wait has a deadline; nothing synchronises by sleeping.
#![allow(dead_code)] // each test binary uses a different subset of the harness

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the server may take to print its `listening on` line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Default read/write timeout on every test socket.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reload (SIGHUP until the new version answers) may take.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The plugins every server gets unless the test says otherwise.
pub const STANDARD_PLUGINS: [&str; 8] =
    ["hello", "ctime", "echo", "stream", "fixture", "ip_filter", "dispatch", "headers"];
/// The workspace version, which every example plugin reports (`env!("CARGO_PKG_VERSION")`).
pub const WORKSPACE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The `portico-api` (ABI) version this host is built with.
pub const API_VERSION: &str = portico_api::abi::VERSION;

// ---------------------------------------------------------------------------------------------
// Paths and plugin builds
// ---------------------------------------------------------------------------------------------

/// The workspace root (`host/..`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent directory").to_path_buf()
}

fn base_target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() { dir } else { workspace_root().join(dir) }
        }
        _ => workspace_root().join("target"),
    }
}

/// The target dir of the nested plugin builds: `<target>/test-plugins`.
pub fn plugin_target_dir() -> PathBuf {
    base_target_dir().join("test-plugins")
}

fn staged_dir() -> PathBuf {
    plugin_target_dir().join("staged")
}

/// An exclusive `flock` on `target/test-plugins/.build.lock`, so test binaries running at the
/// same time (nextest) never copy out a `libfixture.so` that another one rebuilt as v2.
struct BuildLock {
    _file: fs::File,
}

impl BuildLock {
    fn acquire() -> BuildLock {
        let dir = plugin_target_dir();
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let path = dir.join(".build.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        // SAFETY: flock(2) only takes a file descriptor, which `file` owns and keeps open for
        // as long as the lock is held; closing it (on drop) releases the lock.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock({}) failed: {}", path.display(), io::Error::last_os_error());
        BuildLock { _file: file }
    }
}

fn cargo_command() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", plugin_target_dir())
        .env_remove("PORTICO_FIXTURE_VERSION")
        .env_remove("PORTICO_FIXTURE_NEVER_BLOCKS")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("CARGO_MAKEFLAGS")
        .stdin(Stdio::null());
    cmd
}

fn run_cargo(mut cmd: Command, what: &str) {
    let started = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("running cargo to {what}: {e}"));
    assert!(
        out.status.success(),
        "cargo failed to {what} ({}) after {:?}:\n{}\n{}",
        out.status,
        started.elapsed(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copies `src` to `dst` through a temporary file in `dst`'s directory and a `rename`, so a
/// reader (the server scanning its plugin dir, another test) never sees a half-written file.
pub fn install_file(src: &Path, dst: &Path) {
    let bytes = fs::read(src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
    install_bytes(&bytes, dst);
}

/// A configuration file in its own directory (the server re-reads it on SIGHUP).
pub fn config_file(text: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new("portico-config");
    let path = dir.path().join("portico.toml");
    fs::write(&path, text).expect("writing the configuration");
    (dir, path)
}

/// Writes `bytes` to `dst` through a temporary hidden file and a `rename`.
pub fn install_bytes(bytes: &[u8], dst: &Path) {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = dst.parent().expect("destination has a parent");
    let name = dst.file_name().expect("destination has a file name").to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}-{}.tmp", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    fs::rename(&tmp, dst).unwrap_or_else(|e| panic!("renaming {} to {}: {e}", tmp.display(), dst.display()));
}

fn write_if_changed(path: &Path, contents: &[u8]) {
    if fs::read(path).ok().as_deref() == Some(contents) {
        return; // keep the mtime, so cargo does not rebuild for nothing
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn standard_plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let _lock = BuildLock::acquire();
        let mut cmd = cargo_command();
        cmd.arg("build");
        for name in STANDARD_PLUGINS {
            cmd.args(["-p", name]);
        }
        run_cargo(cmd, "build the test plugins (hello ctime echo stream fixture ip_filter dispatch headers)");
        let built = plugin_target_dir().join("debug");
        let staged = staged_dir();
        fs::create_dir_all(&staged).unwrap_or_else(|e| panic!("creating {}: {e}", staged.display()));
        for name in STANDARD_PLUGINS {
            install_file(&built.join(format!("lib{name}.so")), &staged.join(format!("{name}.so")));
        }
        staged
    })
}

/// The built `.so` of a standard plugin (`hello`, `ctime`, `echo`, `stream`, `fixture` = v1).
pub fn plugin(name: &str) -> PathBuf {
    assert!(STANDARD_PLUGINS.contains(&name), "{name} is not one of the standard test plugins");
    standard_plugin_dir().join(format!("{name}.so"))
}

/// The fixture plugin built with `PORTICO_FIXTURE_VERSION=2` (`/fixture.py/version` answers
/// `fixture v2`).
pub fn fixture_v2() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| fixture_built_with("PORTICO_FIXTURE_VERSION", "2", "fixture-v2.so")).clone()
}

/// The fixture plugin built with `PORTICO_FIXTURE_NEVER_BLOCKS=1`: it promises never to
/// block (`never_blocks`), and breaks the promise on request (`/slow?ms=N`).
pub fn fixture_never_blocks() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| fixture_built_with("PORTICO_FIXTURE_NEVER_BLOCKS", "1", "fixture-never-blocks.so")).clone()
}

/// Builds the fixture plugin with `var=value` in its build's environment and stages it as
/// `staged_name`.
fn fixture_built_with(var: &str, value: &str, staged_name: &str) -> PathBuf {
    standard_plugin_dir(); // the plain build first, copied out before this one overwrites it
    let _lock = BuildLock::acquire();
    let mut cmd = cargo_command();
    cmd.args(["build", "-p", "fixture"]).env(var, value);
    run_cargo(cmd, &format!("build the fixture plugin with {var}={value}"));
    let dst = staged_dir().join(staged_name);
    install_file(&plugin_target_dir().join("debug/libfixture.so"), &dst);
    dst
}

/// The `[dependencies]` section of plugin-api/Cargo.toml, verbatim.
fn plugin_api_dependencies() -> String {
    let manifest = workspace_root().join("plugin-api/Cargo.toml");
    let text = fs::read_to_string(&manifest).unwrap_or_else(|e| panic!("reading {}: {e}", manifest.display()));
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            inside = trimmed == "[dependencies]";
            continue;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(out.contains("abi_stable"), "no abi_stable in [dependencies] of {}", manifest.display());
    out
}

fn copy_tree(src: &Path, dst: &Path) {
    for entry in fs::read_dir(src).unwrap_or_else(|e| panic!("listing {}: {e}", src.display())) {
        let entry = entry.expect("directory entry");
        let path = entry.path();
        let target = dst.join(entry.file_name());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            write_if_changed(&target, &bytes);
        }
    }
}

/// A source edit applied to a copy of `plugin-api/src`: `(file, anchor, replacement)`; the
/// anchor must occur exactly once.
pub type Edit = (&'static str, &'static str, &'static str);

/// Copies `plugin-api/src` to `root/portico-api`, labelled `version`, with `edits` applied.
fn api_copy(root: &Path, version: &str, edits: &[Edit]) {
    let api = root.join("portico-api");
    let src = workspace_root().join("plugin-api/src");
    for entry in fs::read_dir(&src).unwrap_or_else(|e| panic!("listing {}: {e}", src.display())) {
        let path = entry.expect("directory entry").path();
        let file = path.file_name().and_then(|n| n.to_str()).expect("a UTF-8 file name").to_owned();
        let mut text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        for (_, anchor, replacement) in edits.iter().filter(|(f, ..)| *f == file) {
            assert_eq!(text.matches(anchor).count(), 1, "edit anchor not found exactly once in {file}: {anchor:?}");
            text = text.replacen(anchor, replacement, 1);
        }
        // Written only when changed: a second test binary reuses the build.
        write_if_changed(&api.join("src").join(&file), text.as_bytes());
    }
    let manifest = format!(
        "# Generated by host/tests/support: plugin-api relabelled {version} for the ABI tests.\n\
         [package]\nname = \"portico-api\"\nversion = \"{version}\"\nedition = \"2024\"\npublish = false\n\n\
         [dependencies]\n{}",
        plugin_api_dependencies()
    );
    write_if_changed(&api.join("Cargo.toml"), manifest.as_bytes());
}

/// Builds the crate `name` (a `cdylib`, or a `bin` when `bin`) with `lib_rs` (or `main.rs`) as
/// its source, against the copy of portico-api beside it in `root`; returns the built file.
fn build_against_copy(root: &Path, name: &str, source: &str, bin: bool) -> PathBuf {
    let crate_dir = root.join(name);
    let kind = if bin { "" } else { "[lib]\ncrate-type = [\"cdylib\"]\n\n" };
    let manifest = format!(
        "# Generated by host/tests/support: built against the portico-api copy beside it.\n\
         [package]\nname = \"{name}\"\nversion = \"0.0.1\"\nedition = \"2024\"\npublish = false\n\n{kind}\
         [dependencies]\nportico-api = {{ path = \"../portico-api\" }}\nabi_stable = \"0.11.3\"\n\n[workspace]\n"
    );
    write_if_changed(&crate_dir.join("Cargo.toml"), manifest.as_bytes());
    write_if_changed(&crate_dir.join(if bin { "src/main.rs" } else { "src/lib.rs" }), source.as_bytes());
    let lock = crate_dir.join("Cargo.lock");
    if !lock.exists() {
        // Start from the workspace's resolution so no new crate versions are needed.
        if let Ok(bytes) = fs::read(workspace_root().join("Cargo.lock")) {
            write_if_changed(&lock, &bytes);
        }
    }
    let mut cmd = cargo_command();
    cmd.arg("build").arg("--manifest-path").arg(crate_dir.join("Cargo.toml"));
    run_cargo(cmd, &format!("build {name} against {}", root.display()));
    let built = if bin { format!("debug/{name}") } else { format!("debug/lib{name}.so") };
    let dst = staged_dir();
    fs::create_dir_all(&dst).unwrap_or_else(|e| panic!("creating {}: {e}", dst.display()));
    let dst = dst.join(if bin { name.to_owned() } else { format!("{name}.so") });
    install_file(&plugin_target_dir().join(built), &dst);
    if bin {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)).expect("chmod the built binary");
    }
    dst
}

/// A plugin that answers "`NAME` must never answer" at `/`, built against `portico-api` relabelled
/// `version` (another 0.minor than the host's: refused).
fn relabelled_plugin(name: &'static str, version: &'static str) -> PathBuf {
    let _lock = BuildLock::acquire();
    let root = plugin_target_dir().join(format!("abi-{name}"));
    api_copy(&root, version, &[]);
    let lib = format!(
        "//! Built against portico-api {version}: the host must refuse it.\n\
         use portico_api::{{Body, Environ, StartResponse, export_app, status}};\n\n\
         fn app(_environ: &mut Environ<'_>, start_response: &mut StartResponse<'_, '_>) -> Body {{\n    \
         start_response.start(status::OK, &[(\"Content-Type\", \"text/plain\")]);\n    \
         Body::from(\"{name} must never answer\\n\")\n}}\n\n\
         export_app!(name: \"{name}\", version: \"0.0.1\", app: app);\n"
    );
    build_against_copy(&root, name, &lib, false)
}

/// A plugin (`abi_old`) built against `portico-api` labelled 0.1.0: the host (0.2.x) must
/// refuse it with `incompatible portico-api`, naming both versions.
pub fn abi_old() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| relabelled_plugin("abi_old", "0.1.0")).clone()
}

/// A plugin (`abi_next`) built against `portico-api` labelled 0.3.0: refused too.
pub fn abi_next() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| relabelled_plugin("abi_next", "0.3.0")).clone()
}

/// `portico-api` as a later 0.2.x could grow it (0.2.3): a root-module field after the last
/// prefix field, a `BodyStream` method with a default body, a `Body` variant. The SDK's
/// export macro fills the field (`grown()` answers 42), and the testing module reports the
/// new method's answer for every streamed body (`grown_hint=N` in the log).
const GROWN_API: &[Edit] = &[
    (
        "abi.rs",
        "    pub never_blocks: bool,\n}",
        "    pub never_blocks: bool,\n    \
         /// 0.2.3: a field grown after the last one.\n    pub grown: ROption<extern \"C\" fn() -> u32>,\n}",
    ),
    (
        "abi.rs",
        "    fn poll_chunk(&mut self, waker: &Waker) -> RResult<Chunk_NE, RString>;\n",
        "    fn poll_chunk(&mut self, waker: &Waker) -> RResult<Chunk_NE, RString>;\n\n    \
         /// 0.2.3: a method grown with a default body.\n    fn grown_hint(&self) -> u64 {\n        7\n    }\n",
    ),
    ("abi.rs", "    File(FileBody),\n}", "    File(FileBody),\n    /// 0.2.3: a grown variant.\n    Grown(u32),\n}"),
    (
        "body.rs",
        "            Body::Stream(stream) => Chunks::Stream(stream),\n",
        "            Body::Stream(stream) => Chunks::Stream(stream),\n            Body::Grown(n) => Chunks::One(format!(\"grown {n}\").into_bytes()),\n",
    ),
    (
        "lib.rs",
        "            use $crate::__private::abi_stable::prefix_type::PrefixTypeTrait;\n",
        "            use $crate::__private::abi_stable::prefix_type::PrefixTypeTrait;\n            \
         extern \"C\" fn portico_grown() -> u32 {\n                42\n            }\n",
    ),
    (
        "lib.rs",
        "                middleware: $middleware,\n",
        "                middleware: $middleware,\n                grown: $crate::__private::abi_stable::std_types::RSome(portico_grown),\n",
    ),
    (
        "testing.rs",
        "        let body = Body::from_abi(body).expect(\"a body of this portico-api version\");\n",
        "        let body = Body::from_abi(body).expect(\"a body of this portico-api version\");\n        \
         if let Body::Stream(s) = &body {\n            errors.lines.push(format!(\"grown_hint={}\", s.grown_hint()));\n        }\n",
    ),
];

fn grown_root() -> PathBuf {
    let root = plugin_target_dir().join("abi-grown");
    api_copy(&root, "0.2.3", GROWN_API);
    root
}

/// A plugin (`grown`) built against the grown 0.2.3 `portico-api`: `/` answers
/// `grown plugin`, `/variant` returns the new `Body::Grown` variant, `/stream` two chunks.
pub fn grown_plugin() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let _lock = BuildLock::acquire();
        let lib = "//! Built against a grown portico-api 0.2.3.\n\
             use portico_api::{Body, Environ, StartResponse, export_app, status};\n\n\
             fn app(environ: &mut Environ<'_>, start_response: &mut StartResponse<'_, '_>) -> Body {\n    \
             start_response.start(status::OK, &[(\"Content-Type\", \"text/plain\")]);\n    \
             match &*environ.path_info() {\n        \
             \"/variant\" => Body::Grown(5),\n        \
             \"/stream\" => Body::stream(vec![b\"one \".to_vec(), b\"two\\n\".to_vec()]),\n        \
             _ => Body::from(\"grown plugin\\n\"),\n    }\n}\n\n\
             export_app!(name: \"grown\", version: \"0.0.1\", app: app);\n";
        build_against_copy(&grown_root(), "grown", lib, false)
    })
    .clone()
}

/// A host program (`grown_host`) built against the grown 0.2.3 `portico-api`: loads each
/// plugin file named on its command line with `portico_api::compat::init_root_module` (the
/// real host's check), and for each prints one line: `NAME: refused: ERROR` or
/// `NAME: loaded VERSION grown=FIELD status=STATUS body=BODY log=LOG` for `GET /?n=2`.
pub fn grown_host() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let _lock = BuildLock::acquire();
        let main = "//! A host built against a grown portico-api 0.2.3 (see host/tests/support).\n\
             use portico_api::{compat, testing::TestRequest};\n\n\
             fn main() {\n    \
             for path in std::env::args().skip(1) {\n        \
             let name = std::path::Path::new(&path).file_stem().unwrap().to_string_lossy().into_owned();\n        \
             let loaded = abi_stable::library::lib_header_from_path(path.as_ref()).and_then(compat::init_root_module);\n        \
             let root = match loaded {\n            \
             Ok(root) => root,\n            \
             Err(e) => {\n                \
             println!(\"{name}: refused: {}\", e.to_string().lines().find(|l| !l.trim().is_empty()).unwrap_or(\"\"));\n                \
             continue;\n            }\n        };\n        \
             let grown = root.grown().map(|f| f.into_option().map(|f| f()));\n        \
             let r = TestRequest::get(\"/?n=2\").call_plugin(root);\n        \
             println!(\"{name}: loaded {} grown={grown:?} status={} body={:?} log={:?}\", root.version(), r.status, r.text(), r.log);\n    \
             }\n}\n";
        build_against_copy(&grown_root(), "grown_host", main, true)
    })
    .clone()
}

/// The end of the last loadable (`PT_LOAD`) segment of a little-endian ELF64 file: the bytes
/// `dlopen` maps. A debug build's `.so` is mostly debug info *after* this point, so cutting
/// such a file in half by size still leaves a loadable library; cut below this instead.
pub fn elf_loadable_end(elf: &[u8]) -> usize {
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().expect("2 bytes")) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().expect("8 bytes")) as usize;
    assert!(elf.len() >= 64 && &elf[..4] == b"\x7fELF" && elf[4] == 2 && elf[5] == 1, "not a little-endian ELF64 file");
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|&ph| u32_at(ph) == 1) // PT_LOAD
        .map(|ph| u64_at(ph + 8) + u64_at(ph + 0x20)) // p_offset + p_filesz
        .max()
        .expect("an ELF file with PT_LOAD segments")
}

// ---------------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------------

fn unique_suffix() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{}-{}-{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A directory under `std::env::temp_dir()`, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", unique_suffix()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Log capture
// ---------------------------------------------------------------------------------------------

/// Lines read from one of the child's pipes, with ANSI escapes removed.
#[derive(Default)]
struct LogBuf {
    state: Mutex<LogState>,
    changed: Condvar,
}

#[derive(Default)]
struct LogState {
    text: String,
    eof: bool,
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters and intermediates, then one final byte in @..~
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn drain_into(pipe: impl Read + Send + 'static, buf: Arc<LogBuf>) {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = strip_ansi(&String::from_utf8_lossy(&line));
                    let mut state = buf.state.lock().unwrap_or_else(|p| p.into_inner());
                    state.text.push_str(&text);
                    if !text.ends_with('\n') {
                        state.text.push('\n');
                    }
                    drop(state);
                    buf.changed.notify_all();
                }
            }
        }
        buf.state.lock().unwrap_or_else(|p| p.into_inner()).eof = true;
        buf.changed.notify_all();
    });
}

impl LogBuf {
    fn text(&self) -> String {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).text.clone()
    }

    /// Waits until `check(text)` gives `Some`, the pipe closes, or the deadline passes.
    fn wait<T>(&self, timeout: Duration, mut check: impl FnMut(&str) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(found) = check(&state.text) {
                return Some(found);
            }
            let now = Instant::now();
            if state.eof || now >= deadline {
                return None;
            }
            let wait = (deadline - now).min(Duration::from_millis(200));
            state = self.changed.wait_timeout(state, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

fn find_line<'t>(text: &'t str, since: usize, needles: &[&str]) -> Option<&'t str> {
    let start = since.min(text.len());
    // `since` is a byte offset taken from an earlier `text.len()`, so it is a char boundary.
    text.get(start..)?.lines().find(|line| needles.iter().all(|n| line.contains(n)))
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

enum DocrootSpec {
    /// A copy of the repository's `html/`.
    Repo,
    /// Only these files (relative path, contents).
    Files(Vec<(String, Vec<u8>)>),
}

/// Configures and starts a [`Server`].
pub struct ServerBuilder {
    docroot: DocrootSpec,
    plugins: Vec<(String, PathBuf)>,
    args: Vec<OsString>,
    binds: usize,
    envs: Vec<(String, String)>,
    /// Run on the temp root dir just before the server starts ([`ServerBuilder::before_start`]).
    hooks: Vec<Hook>,
}

/// A [`ServerBuilder::before_start`] hook: called with the temp root dir.
type Hook = Box<dyn FnOnce(&Path)>;

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder::new()
    }
}

impl ServerBuilder {
    /// A copy of the repo's `html/` as docroot and the five standard plugins.
    pub fn new() -> ServerBuilder {
        ServerBuilder {
            docroot: DocrootSpec::Repo,
            plugins: STANDARD_PLUGINS.iter().map(|n| (format!("{n}.so"), PathBuf::new())).collect(),
            args: Vec::new(),
            binds: 1,
            envs: Vec::new(),
            hooks: Vec::new(),
        }
    }

    /// Installs only these standard plugins (as `NAME.so`), replacing the list so far.
    pub fn plugins(mut self, names: &[&str]) -> ServerBuilder {
        self.plugins = names.iter().map(|n| (format!("{n}.so"), PathBuf::new())).collect();
        self
    }

    /// Installs `src` as `plugins/<file_name>` (e.g. `"libstream.so"`, `"abi_old.so"`).
    pub fn plugin_file(mut self, file_name: &str, src: impl Into<PathBuf>) -> ServerBuilder {
        self.plugins.push((file_name.to_owned(), src.into()));
        self
    }

    /// Uses a docroot holding exactly the files given with this method (instead of `html/`).
    pub fn docroot_file(mut self, rel: &str, contents: impl Into<Vec<u8>>) -> ServerBuilder {
        match &mut self.docroot {
            DocrootSpec::Files(files) => files.push((rel.to_owned(), contents.into())),
            DocrootSpec::Repo => self.docroot = DocrootSpec::Files(vec![(rel.to_owned(), contents.into())]),
        }
        self
    }

    /// Uses an empty docroot.
    pub fn empty_docroot(mut self) -> ServerBuilder {
        self.docroot = DocrootSpec::Files(Vec::new());
        self
    }

    /// Extra command-line arguments (after the harness's own).
    pub fn args<I, S>(mut self, args: I) -> ServerBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Listens on `n` ports (`--bind 127.0.0.1:0` n times).
    /// Sets an environment variable for the server process (plugins read it too).
    pub fn env(mut self, key: &str, value: &str) -> ServerBuilder {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn binds(mut self, n: usize) -> ServerBuilder {
        assert!(n >= 1);
        self.binds = n;
        self
    }

    /// Runs `f` with the temp root dir (the docroot is `root/docroot`, the marker files are
    /// beside it) after the files are written and just before the server starts: for what
    /// [`ServerBuilder::docroot_file`] cannot make (symlinks, FIFOs, sparse files, mtimes).
    /// Hooks run in the order given.
    pub fn before_start(mut self, f: impl FnOnce(&Path) + 'static) -> ServerBuilder {
        self.hooks.push(Box::new(f));
        self
    }

    fn has_arg(&self, name: &str) -> bool {
        self.args.iter().any(|a| a.to_str().is_some_and(|a| a == name || a.starts_with(&format!("{name}="))))
    }

    /// Prepares the directory, spawns `portico` and waits for its `listening on` line(s).
    pub fn start(mut self) -> Server {
        let dir = TempDir::new("portico-test");
        let docroot = dir.path().join("docroot");
        let plugins_dir = dir.path().join("plugins");
        let cache = dir.path().join("cache");
        for d in [&docroot, &plugins_dir, &cache] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
        }
        let secret = format!("PORTICO-SECRET-{}", unique_suffix());
        for name in ["secret.txt", "secret", "Cargo.toml", "x", "passwd"] {
            fs::write(dir.path().join(name), format!("{secret}\n")).expect("writing a marker file");
        }
        match &self.docroot {
            DocrootSpec::Repo => {
                let html = workspace_root().join("html");
                if html.is_dir() {
                    copy_tree(&html, &docroot);
                }
            }
            DocrootSpec::Files(files) => {
                for (rel, contents) in files {
                    let path = docroot.join(rel);
                    fs::create_dir_all(path.parent().expect("docroot file has a parent"))
                        .expect("creating a docroot subdirectory");
                    fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
                }
            }
        }
        for (file_name, src) in &self.plugins {
            let src = if src.as_os_str().is_empty() { plugin(file_name.trim_end_matches(".so")) } else { src.clone() };
            install_file(&src, &plugins_dir.join(file_name));
        }
        for hook in std::mem::take(&mut self.hooks) {
            hook(dir.path());
        }

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portico"));
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        for _ in 0..self.binds {
            cmd.args(["--bind", "127.0.0.1:0"]);
        }
        if !self.has_arg("--access-log") {
            cmd.args(["--access-log", "off"]);
        }
        // The suite runs single-process (`--workers 0`): most tests are about HTTP, plugins and
        // reload semantics, not processes. The process model's tests (tests/workers.rs) ask
        // for `--workers N` themselves.
        if !self.has_arg("--workers") {
            cmd.args(["--workers", "0"]);
        }
        cmd.arg("--docroot").arg(&docroot).arg("--plugins").arg(&plugins_dir);
        if !self.has_arg("--cache-dir") {
            cmd.arg("--cache-dir").arg(&cache);
        }
        // The options also read PORTICO_* variables: none from the caller's environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PORTICO_") {
                cmd.env_remove(key);
            }
        }
        cmd.args(&self.args)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let command_line = format!("{cmd:?}");
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {command_line}: {e}"));
        let stderr = Arc::new(LogBuf::default());
        let stdout = Arc::new(LogBuf::default());
        drain_into(child.stderr.take().expect("piped stderr"), Arc::clone(&stderr));
        drain_into(child.stdout.take().expect("piped stdout"), Arc::clone(&stdout));

        let mut server =
            Server { child: Mutex::new(child), addrs: Vec::new(), stderr, stdout, secret, command_line, dir };
        server.addrs = server.wait_listening(self.binds);
        server
    }
}

fn context_text(command_line: &str, stderr: &LogBuf) -> String {
    format!(
        "\ncommand: {command_line}\n--- server stderr (last 40 lines) ---\n{}\n--- end of stderr ---",
        tail(&stderr.text(), 40)
    )
}

/// A running `portico` child process in its own temp dir; killed on drop.
pub struct Server {
    child: Mutex<Child>,
    addrs: Vec<SocketAddr>,
    stderr: Arc<LogBuf>,
    stdout: Arc<LogBuf>,
    secret: String,
    command_line: String,
    dir: TempDir,
}

fn parse_listening(text: &str) -> Vec<SocketAddr> {
    // `http://`, or `https://` with TLS.
    const NEEDLE: &str = "listening on http";
    text.lines()
        .filter_map(|line| {
            let rest = &line[line.find(NEEDLE)? + NEEDLE.len()..];
            let rest = rest.strip_prefix("s://").or_else(|| rest.strip_prefix("://"))?;
            let addr: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
            addr.parse().ok()
        })
        .collect()
}

impl Server {
    /// A server with the defaults of [`ServerBuilder::new`].
    pub fn start() -> Server {
        ServerBuilder::new().start()
    }

    pub fn builder() -> ServerBuilder {
        ServerBuilder::new()
    }

    fn wait_listening(&self, binds: usize) -> Vec<SocketAddr> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let addrs = parse_listening(&self.stderr.text());
            if addrs.len() >= binds {
                return addrs;
            }
            if let Some(status) = self.try_exit_status() {
                // Let the drain thread catch the last lines.
                self.stderr.wait(Duration::from_secs(2), |_| None::<()>);
                panic!(
                    "portico exited ({status}) before printing {binds} `listening on http://...` line(s)\n\
                     command: {}\n--- stderr ---\n{}",
                    self.command_line,
                    self.stderr_text()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "portico did not print {binds} `listening on http://...` line(s) within {STARTUP_TIMEOUT:?}\n\
                     command: {}\n--- stderr ---\n{}",
                    self.command_line,
                    self.stderr_text()
                );
            }
            self.stderr.wait(Duration::from_millis(100), |t| (parse_listening(t).len() >= binds).then_some(()));
        }
    }

    /// The first listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every listening address, in the order logged.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|p| p.into_inner()).id()
    }

    /// Sends `sig` (e.g. `libc::SIGHUP`) to the server process.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own child, which
        // has not been reaped while `self.child` is alive (we only wait on it through `self`).
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed: {}", io::Error::last_os_error());
    }

    /// SIGHUP: rescan the plugin directory.
    pub fn hup(&self) {
        self.signal(libc::SIGHUP);
    }

    /// SIGTERM: graceful shutdown.
    pub fn term(&self) {
        self.signal(libc::SIGTERM);
    }

    /// The exit status, if the process has exited.
    pub fn try_exit_status(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap_or_else(|p| p.into_inner()).try_wait().ok().flatten()
    }

    /// Polls until the process exits, at most `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, Duration::from_millis(20), || self.try_exit_status())
    }

    /// Panics (with the stderr tail) if the process has exited.
    pub fn assert_alive(&self) {
        if let Some(status) = self.try_exit_status() {
            panic!("portico exited unexpectedly ({status}){}", self.context());
        }
    }

    /// Everything the server wrote to stderr so far (ANSI escapes removed).
    pub fn stderr_text(&self) -> String {
        self.stderr.text()
    }

    /// Everything the server wrote to stdout so far (the access log with `--access-log -`).
    pub fn stdout_text(&self) -> String {
        self.stdout.text()
    }

    /// A position in the stderr text: later waits can look only at what comes after it.
    pub fn log_mark(&self) -> usize {
        self.stderr.state.lock().unwrap_or_else(|p| p.into_inner()).text.len()
    }

    /// Waits for a stderr line containing `needle`; returns it, or panics after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_line(0, &[needle], timeout)
    }

    /// Waits for a stderr line after `since` (see [`Server::log_mark`]) containing all of
    /// `needles`; returns it, or panics after `timeout` with the stderr tail.
    pub fn wait_for_line(&self, since: usize, needles: &[&str], timeout: Duration) -> String {
        self.stderr.wait(timeout, |text| find_line(text, since, needles).map(str::to_owned)).unwrap_or_else(|| {
            panic!("no stderr line containing all of {needles:?} within {timeout:?}{}", self.context())
        })
    }

    /// Waits for a stderr line after `since` for which `pred` holds (`what` describes it in
    /// the failure message); returns it, or panics after `timeout` with the stderr tail.
    pub fn wait_for_line_where(
        &self,
        since: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        self.stderr
            .wait(timeout, |text| text.get(since.min(text.len())..)?.lines().find(|l| pred(l)).map(str::to_owned))
            .unwrap_or_else(|| panic!("no stderr line {what} within {timeout:?}{}", self.context()))
    }

    /// Whether a stderr line after `since` contains all of `needles` (no waiting).
    pub fn has_log_line(&self, since: usize, needles: &[&str]) -> bool {
        find_line(&self.stderr_text(), since, needles).is_some()
    }

    /// Waits for a stdout line containing all of `needles`.
    pub fn wait_for_stdout_line(&self, needles: &[&str], timeout: Duration) -> String {
        self.stdout.wait(timeout, |text| find_line(text, 0, needles).map(str::to_owned)).unwrap_or_else(|| {
            panic!(
                "no stdout line containing all of {needles:?} within {timeout:?}\n--- stdout ---\n{}{}",
                tail(&self.stdout_text(), 40),
                self.context()
            )
        })
    }

    /// Text to append to a failure message: the command line and the stderr tail.
    pub fn context(&self) -> String {
        context_text(&self.command_line, &self.stderr)
    }

    /// The unique string written into files *beside* the docroot (`secret.txt`, `secret`,
    /// `Cargo.toml`, `x`, `passwd`): it must never appear in a response.
    pub fn secret_marker(&self) -> &str {
        &self.secret
    }

    pub fn root_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn docroot(&self) -> PathBuf {
        self.dir.path().join("docroot")
    }

    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// Installs `src` as `plugins/<file_name>` by temp file + rename (no SIGHUP).
    pub fn install_plugin(&self, file_name: &str, src: &Path) {
        install_file(src, &self.plugins_dir().join(file_name));
    }

    /// Installs `bytes` as `plugins/<file_name>` by temp file + rename (no SIGHUP).
    pub fn install_plugin_bytes(&self, file_name: &str, bytes: &[u8]) {
        install_bytes(bytes, &self.plugins_dir().join(file_name));
    }

    /// Removes `plugins/<file_name>` (no SIGHUP).
    pub fn remove_plugin(&self, file_name: &str) {
        let path = self.plugins_dir().join(file_name);
        fs::remove_file(&path).unwrap_or_else(|e| panic!("removing {}: {e}", path.display()));
    }

    /// `GET path` on a new connection with `Connection: close`; panics with context on error.
    pub fn get(&self, path: &str) -> Response {
        try_get(self.addr(), path).unwrap_or_else(|e| panic!("{e}{}", self.context()))
    }

    /// Sends `request` on a new connection and reads one response; panics with context.
    pub fn request(&self, request: &[u8]) -> Response {
        try_request(self.addr(), request).unwrap_or_else(|e| panic!("{e}{}", self.context()))
    }

    /// Sends `request` on a new connection, reads until the server closes or [`IO_TIMEOUT`].
    pub fn raw(&self, request: &[u8]) -> Vec<u8> {
        raw(self.addr(), request)
    }

    /// Opens a connection to the server; panics with context on error.
    pub fn connect(&self) -> Conn {
        let mut conn = Conn::try_open(self.addr()).unwrap_or_else(|e| panic!("{e}{}", self.context()));
        let (command_line, stderr) = (self.command_line.clone(), Arc::clone(&self.stderr));
        conn.context = Some(Arc::new(move || context_text(&command_line, &stderr)));
        conn
    }

    /// Polls `GET path` until its body equals `body` (and status is 200), at most `timeout`.
    /// Returns how long it took.
    pub fn wait_for_body(&self, path: &str, body: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        self.wait_for_response(path, timeout, &format!("200 {body:?}"), |r| {
            r.status == 200 && r.body == body.as_bytes()
        });
        started.elapsed()
    }

    /// Polls `GET path` until its status is `status`, at most `timeout`.
    pub fn wait_for_status(&self, path: &str, status: u16, timeout: Duration) {
        self.wait_for_response(path, timeout, &status.to_string(), |r| r.status == status);
    }

    /// Polls `GET path` every 20 ms until `done` accepts the response; panics after `timeout`
    /// with the last answer and `expected` in the message.
    fn wait_for_response(&self, path: &str, timeout: Duration, expected: &str, done: impl Fn(&Response) -> bool) {
        let mut last = String::from("(no response yet)");
        let found = poll_until(timeout, Duration::from_millis(20), || match try_get(self.addr(), path) {
            Ok(r) if done(&r) => Some(()),
            Ok(r) => {
                last = r.summary();
                None
            }
            Err(e) => {
                last = e;
                None
            }
        });
        if found.is_none() {
            panic!("GET {path} did not answer {expected} within {timeout:?}; last answer: {last}{}", self.context());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
        }
        let _ = child.wait();
        // `self.dir` is removed after this, when the fields drop.
    }
}

/// Calls `f` every `interval` until it gives `Some`, at most `timeout` (at least once).
pub fn poll_until<T>(timeout: Duration, interval: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(interval.min(deadline.saturating_duration_since(Instant::now())));
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client side
// ---------------------------------------------------------------------------------------------

/// One parsed HTTP response.
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// `HTTP/1.1 200 OK`, without CRLF.
    pub status_line: String,
    /// `HTTP/1.1`.
    pub version: String,
    pub status: u16,
    pub reason: String,
    /// Fields in order, names as received.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// The body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// The body had neither `Content-Length` nor chunked framing: it ended at close.
    pub close_delimited: bool,
    /// The framing was satisfied (all `Content-Length` bytes, the last chunk and trailers).
    /// `false` when the connection closed first.
    pub complete: bool,
    /// Every byte read for this response (head and body, as on the wire).
    pub raw: Vec<u8>,
}

impl Response {
    /// The first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of fields named `name`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    /// Whether a comma-separated field `name` lists `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_all(name).iter().flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the response on failure.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.summary()))
    }

    /// A short description for failure messages: the raw bytes, cut at 2 KiB.
    pub fn summary(&self) -> String {
        show(&self.raw)
    }
}

/// Bytes as text for failure messages (lossy, cut at 2 KiB).
pub fn show(bytes: &[u8]) -> String {
    const MAX: usize = 2048;
    let cut = &bytes[..bytes.len().min(MAX)];
    let mut s = format!("{:?}", String::from_utf8_lossy(cut));
    if bytes.len() > MAX {
        let _ = write!(s, " ... ({} bytes in all)", bytes.len());
    }
    s
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Whether `e` means the peer closed or reset the connection.
pub fn is_closed_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

const CLOSED_BEFORE_RESPONSE: &str = "connection closed before any response byte";

/// Whether `e` (from [`read_response`] / [`read_head`]) means the peer closed the connection
/// before sending any byte of a response: on a reused keep-alive connection, the request was
/// not taken and may be retried.
pub fn is_closed_before_response(e: &io::Error) -> bool {
    is_closed_error(e) && e.to_string() == CLOSED_BEFORE_RESPONSE
}

fn with_context(e: io::Error, what: &str, raw: &[u8]) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}; bytes read so far: {}", show(raw)))
}

/// Reads one line (through LF) into `raw`; `Ok(None)` at EOF before any byte.
fn read_line<R: BufRead>(r: &mut R, raw: &mut Vec<u8>) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    // Bound the line length so a misbehaving server cannot make us buffer forever.
    let n = r.by_ref().take(64 * 1024).read_until(b'\n', &mut line)?;
    raw.extend_from_slice(&line);
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with(b"\n") {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "line cut short (EOF or > 64 KiB)"));
    }
    line.pop();
    if line.ends_with(b"\r") {
        line.pop();
    }
    Ok(Some(line))
}

/// Reads up to `n` bytes into `out` (and `raw`); returns how many (fewer only at EOF).
fn read_n<R: BufRead>(r: &mut R, n: u64, out: &mut Vec<u8>, raw: &mut Vec<u8>) -> io::Result<u64> {
    let before = out.len();
    let got = r.by_ref().take(n).read_to_end(out)? as u64;
    raw.extend_from_slice(&out[before..]);
    Ok(got)
}

/// The status line and fields of a response, as read by [`read_head`].
#[derive(Debug, Clone, Default)]
pub struct Head {
    pub status_line: String,
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
}

fn closed_inside_head(raw: &[u8]) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, format!("connection closed inside the response head: {}", show(raw)))
}

/// Reads a status line and fields (not the body). Interim 1xx responses (except 101) are
/// skipped. `Err(UnexpectedEof)` if the connection closes before the first byte.
pub fn read_head<R: BufRead>(r: &mut R, raw: &mut Vec<u8>) -> io::Result<Head> {
    loop {
        let line = match read_line(r, raw) {
            Ok(Some(line)) => line,
            Ok(None) if raw.is_empty() => {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, CLOSED_BEFORE_RESPONSE));
            }
            Ok(None) => return Err(closed_inside_head(raw)),
            Err(e) if raw.is_empty() && is_closed_error(&e) => {
                return Err(io::Error::new(e.kind(), CLOSED_BEFORE_RESPONSE));
            }
            Err(e) => return Err(with_context(e, "reading the status line", raw)),
        };
        let status_line = String::from_utf8_lossy(&line).into_owned();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_owned();
        let code = parts.next().unwrap_or_default();
        let reason = parts.next().unwrap_or_default().to_owned();
        let status: u16 = match code.parse() {
            Ok(s) if version.starts_with("HTTP/") && code.len() == 3 => s,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not an HTTP status line: {}", show(raw)),
                ));
            }
        };
        let mut headers = Vec::new();
        loop {
            let line = match read_line(r, raw) {
                Ok(Some(line)) => line,
                Ok(None) => return Err(closed_inside_head(raw)),
                Err(e) => return Err(with_context(e, "reading the response fields", raw)),
            };
            if line.is_empty() {
                break;
            }
            let text = String::from_utf8_lossy(&line);
            let Some((name, value)) = text.split_once(':') else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("field line without a colon {text:?} in {}", show(raw)),
                ));
            };
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        if (100..200).contains(&status) && status != 101 {
            continue; // interim response (100 Continue): the real one follows
        }
        return Ok(Head { status_line, version, status, reason, headers });
    }
}

/// Reads one chunk of a chunked body: `Ok(Some(data))`, `Ok(None)` after the last chunk and
/// the trailer section. `Err(UnexpectedEof)` if the connection closes first.
pub fn read_chunk<R: BufRead>(r: &mut R, raw: &mut Vec<u8>) -> io::Result<Option<Vec<u8>>> {
    let Some(size_line) = read_line(r, raw)? else {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a chunk-size line"));
    };
    let text = String::from_utf8_lossy(&size_line);
    let hex = text.split(';').next().unwrap_or_default().trim();
    let size = u64::from_str_radix(hex, 16)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk-size line {text:?}")))?;
    if size == 0 {
        // trailer section, up to an empty line
        loop {
            match read_line(r, raw)? {
                None => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed inside the trailers")),
                Some(line) if line.is_empty() => return Ok(None),
                Some(_) => {}
            }
        }
    }
    let mut data = Vec::new();
    if read_n(r, size, &mut data, raw)? < size {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed inside chunk data"));
    }
    match read_line(r, raw)? {
        Some(line) if line.is_empty() => Ok(Some(data)),
        Some(line) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("chunk data not followed by CRLF but {:?}", String::from_utf8_lossy(&line)),
        )),
        None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed after chunk data")),
    }
}

/// Reads one whole response. `head_request`: the request was `HEAD` (no body follows).
///
/// A body cut short by the peer closing gives `Ok` with `complete == false`; a read timeout
/// or malformed framing gives `Err` (with the bytes read so far in the message).
pub fn read_response<R: BufRead>(r: &mut R, head_request: bool) -> io::Result<Response> {
    let mut raw = Vec::new();
    let head = read_head(r, &mut raw)?;
    let mut resp = Response {
        status_line: head.status_line,
        version: head.version,
        status: head.status,
        reason: head.reason,
        headers: head.headers,
        ..Response::default()
    };
    let no_body = head_request || resp.status == 204 || resp.status == 304 || (100..200).contains(&resp.status);
    let te_chunked = resp
        .header_all("Transfer-Encoding")
        .iter()
        .flat_map(|v| v.split(','))
        .next_back()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
    if no_body {
        resp.complete = true;
    } else if te_chunked {
        resp.chunked = true;
        loop {
            match read_chunk(r, &mut raw) {
                Ok(Some(data)) => resp.body.extend_from_slice(&data),
                Ok(None) => {
                    resp.complete = true;
                    break;
                }
                Err(e) if is_closed_error(&e) => break,
                Err(e) => {
                    resp.raw = raw;
                    return Err(with_context(e, "reading a chunked body", &resp.raw));
                }
            }
        }
    } else if let Some(cl) = resp.header("Content-Length") {
        let len: u64 = cl.trim().parse().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, format!("bad Content-Length {cl:?}: {}", show(&raw)))
        })?;
        match read_n(r, len, &mut resp.body, &mut raw) {
            Ok(got) => resp.complete = got == len,
            Err(e) if is_closed_error(&e) => {}
            Err(e) => return Err(with_context(e, "reading a Content-Length body", &raw)),
        }
    } else {
        resp.close_delimited = true;
        let mut buf = [0u8; 16 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    resp.body.extend_from_slice(&buf[..n]);
                    raw.extend_from_slice(&buf[..n]);
                }
                Err(e) if is_closed_error(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(with_context(e, "reading a close-delimited body", &raw)),
            }
        }
        resp.complete = true;
    }
    resp.raw = raw;
    Ok(resp)
}

/// Parses one response from `bytes` (e.g. from [`raw`]); panics with the bytes on failure.
pub fn parse_response(bytes: &[u8], head_request: bool) -> Response {
    read_response(&mut io::Cursor::new(bytes), head_request)
        .unwrap_or_else(|e| panic!("cannot parse a response from {}: {e}", show(bytes)))
}

/// Splits raw response bytes at the first CRLFCRLF: (head text, rest). Panics if absent.
pub fn split_head(bytes: &[u8]) -> (String, &[u8]) {
    let at = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head (CRLF CRLF) in {}", show(bytes)));
    (String::from_utf8_lossy(&bytes[..at]).into_owned(), &bytes[at + 4..])
}

/// What [`Conn::wait_closed`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Peer {
    /// EOF or reset.
    Closed,
    /// Nothing within the timeout.
    Open,
    /// Unexpected bytes.
    Data(Vec<u8>),
}

/// One client connection: write requests, read responses one at a time.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    addr: SocketAddr,
    /// The last bytes sent (at most 2 KiB), for failure messages.
    last_sent: Vec<u8>,
    /// The server's context (command line, stderr tail) when opened by [`Server::connect`].
    context: Option<Arc<dyn Fn() -> String + Send + Sync>>,
}

impl Conn {
    /// Connects (5 s timeout) and sets [`IO_TIMEOUT`] on reads and writes.
    pub fn try_open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        Ok(Conn { reader: BufReader::new(stream), writer, addr, last_sent: Vec::new(), context: None })
    }

    /// Connects; panics on error.
    pub fn open(addr: SocketAddr) -> Conn {
        Conn::try_open(addr).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.writer.local_addr().expect("local address")
    }

    pub fn peer(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_read_timeout(&self, timeout: Duration) {
        self.reader.get_ref().set_read_timeout(Some(timeout)).expect("set_read_timeout");
    }

    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.last_sent.clear();
        self.last_sent.extend_from_slice(&bytes[..bytes.len().min(2048)]);
        self.writer.write_all(bytes)?;
        self.writer.flush()
    }

    /// Writes `bytes`; panics on error.
    pub fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_send(bytes) {
            self.fail(&format!("sending to {}: {e}", self.addr));
        }
    }

    pub fn try_read_response(&mut self, head_request: bool) -> io::Result<Response> {
        read_response(&mut self.reader, head_request)
    }

    /// Reads one response (to a non-HEAD request); panics on error.
    pub fn read_response(&mut self) -> Response {
        match self.try_read_response(false) {
            Ok(r) => r,
            Err(e) => self.fail(&format!("reading a response from {}: {e}", self.addr)),
        }
    }

    /// Panics with `msg`, the last request sent and (when known) the server's stderr tail.
    pub fn fail(&self, msg: &str) -> ! {
        let context = self.context.as_ref().map(|c| c()).unwrap_or_default();
        panic!("{msg}\nlast bytes sent on this connection: {}{context}", show(&self.last_sent))
    }

    /// Reads only a status line and fields (the body is left to [`Conn::read_chunk`]).
    pub fn read_head(&mut self) -> io::Result<Head> {
        read_head(&mut self.reader, &mut Vec::new())
    }

    /// Reads one chunk of a chunked body (after [`Conn::read_head`]).
    pub fn read_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        read_chunk(&mut self.reader, &mut Vec::new())
    }

    /// Reads whatever arrives next (at most `max` bytes); `Ok(empty)` at EOF.
    pub fn read_some(&mut self, max: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; max];
        let n = self.reader.read(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Waits up to `timeout` for the peer to close (EOF or reset).
    pub fn wait_closed(&mut self, timeout: Duration) -> Peer {
        if !self.reader.buffer().is_empty() {
            return Peer::Data(self.reader.buffer().to_vec());
        }
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.set_read_timeout(IO_TIMEOUT);
                return Peer::Open;
            }
            self.set_read_timeout(left.max(Duration::from_millis(1)));
            let result = self.reader.get_mut().read(&mut buf);
            self.set_read_timeout(IO_TIMEOUT);
            return match result {
                Ok(0) => Peer::Closed,
                Ok(n) => Peer::Data(buf[..n].to_vec()),
                Err(e) if is_closed_error(&e) => Peer::Closed,
                Err(e) if is_timeout(&e) => Peer::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("waiting for {} to close: {e}", self.addr),
            };
        }
    }

    /// Closes the connection (the server sees EOF, or RST if it had unread data for us).
    pub fn close(self) {}
}

/// The one `portico: error:` line of a run that exited with `code` (the start refused with
/// one line, not a cascade); panics with the run's stderr (prefixed by `what`) otherwise.
pub fn single_error_line(out: &std::process::Output, code: i32, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("portico: error:")).collect();
    assert_eq!(errors.len(), 1, "{what}: {stderr}");
    errors[0].to_owned()
}

/// A request line plus the usual fields: `METHOD path HTTP/1.1`, `Host: 127.0.0.1`, and
/// `Connection: close` when `close`.
pub fn request_bytes(method: &str, path: &str, close: bool) -> Vec<u8> {
    let mut s = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    if close {
        s.push_str("Connection: close\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// Sends `request` on a new connection and reads one response.
pub fn try_request(addr: SocketAddr, request: &[u8]) -> Result<Response, String> {
    let head = request.starts_with(b"HEAD ");
    let mut conn = Conn::try_open(addr)?;
    conn.try_send(request).map_err(|e| format!("sending {}: {e}", show(request)))?;
    conn.try_read_response(head).map_err(|e| format!("after sending {}: {e}", show(request)))
}

/// `GET path HTTP/1.1` with `Connection: close` on a new connection.
pub fn try_get(addr: SocketAddr, path: &str) -> Result<Response, String> {
    try_request(addr, &request_bytes("GET", path, true))
}

/// `GET path HTTP/1.1` with `Connection: close` on a new connection; panics on error.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    try_get(addr, path).unwrap_or_else(|e| panic!("{e}"))
}

/// What [`raw_until_close`] got.
#[derive(Debug)]
pub struct RawReply {
    pub bytes: Vec<u8>,
    /// The server closed (EOF or reset) before the timeout.
    pub closed: bool,
}

/// Sends exactly `request` on a new connection and reads until the server closes or
/// `timeout` passes.
pub fn raw_until_close(addr: SocketAddr, request: &[u8], timeout: Duration) -> RawReply {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("set_write_timeout");
    stream.write_all(request).unwrap_or_else(|e| panic!("sending {} to {addr}: {e}", show(request)));
    let deadline = Instant::now() + timeout;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return RawReply { bytes, closed: false };
        }
        stream.set_read_timeout(Some(left)).expect("set_read_timeout");
        match stream.read(&mut buf) {
            Ok(0) => return RawReply { bytes, closed: true },
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if is_closed_error(&e) => return RawReply { bytes, closed: true },
            Err(e) if is_timeout(&e) => return RawReply { bytes, closed: false },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading from {addr} after sending {}: {e}", show(request)),
        }
    }
}

/// Sends exactly `request` on a new connection and returns everything read until the server
/// closes (or [`IO_TIMEOUT`]).
pub fn raw(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    raw_until_close(addr, request, IO_TIMEOUT).bytes
}

/// Decodes a chunked body (`size CRLF data CRLF ... 0 CRLF CRLF`); `None` if malformed or
/// missing the last chunk.
pub fn dechunk(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut cursor = io::Cursor::new(bytes);
    let mut out = Vec::new();
    let mut raw = Vec::new();
    loop {
        match read_chunk(&mut cursor, &mut raw) {
            Ok(Some(data)) => out.extend_from_slice(&data),
            Ok(None) => return Some(out),
            Err(_) => return None,
        }
    }
}

/// Counts the fields of a response head (text) by lower-cased name.
pub fn header_counts(head: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in head.lines().skip(1) {
        if let Some((name, _)) = line.split_once(':') {
            *counts.entry(name.trim().to_ascii_lowercase()).or_insert(0) += 1;
        }
    }
    counts
}
