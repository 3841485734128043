//! A hostile docroot: requests that try to leave it (dot-segments in every encoding, encoded
//! slashes and backslashes, NUL, overlong UTF-8, absolute-form targets, `//`), symlinks that
//! lead out of it (404 unless `--allow-symlinks-outside`) or stay inside (followed), broken and
//! looping symlinks, special files, and dotfiles (404, except `/.well-known/`, RFC 8615).
//!
//! Everything is built at test time in the harness's temp dir: symlinks, a FIFO and a file
//! outside the docroot holding a unique marker (`outside/secret.txt`), beside the harness's own
//! marker files (`secret`, `secret.txt`, `passwd`, ...). No response body may ever contain a
//! marker; every refused request is a 400 or a 404, and a 404's body is the docroot's 404.html.

mod support;

use std::fs;
use std::os::unix::fs::{FileTypeExt, symlink};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{Server, parse_response, raw_until_close, show};

const INDEX: &str = "<!doctype html>\n<html><body>hostile docroot index</body></html>\n";
const NOT_FOUND_PAGE: &str = "<!doctype html>\n<html><body>hostile docroot 404 page</body></html>\n";
const A_FILE: &str = "a/file.txt inside the docroot\n";
const INSIDE: &str = "inside-target.txt: the target of symlinks that stay inside\n";
const TOKEN: &str = "acme-challenge-token-content\n";
const LITERAL: &str = "the file literally named %2e%2e/secret inside the docroot\n";
/// The contents of every dotfile in the docroot: never served.
const DOTFILE_MARKER: &str = "DOTFILE-CONTENT-NEVER-SERVED";

/// A marker unique to this test process and call, for the file outside the docroot.
fn outside_marker() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("TRAVERSAL-OUTSIDE-{}-{}-{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The hostile docroot and its surroundings, given the temp root dir.
fn build_hostile(root: &Path, marker: &str) {
    let docroot = root.join("docroot");
    let outside = root.join("outside");
    fs::create_dir_all(&outside).expect("creating outside/");
    fs::write(outside.join("secret.txt"), format!("{marker}\n")).expect("writing outside/secret.txt");
    let links: [(&str, &Path); 13] = [
        ("link-out", &root.join("secret")),
        ("link-out-rel", Path::new("../secret")),
        ("dir-out", &outside),
        ("dir-out-rel", Path::new("../outside")),
        ("up", Path::new("..")),
        ("link-devzero", Path::new("/dev/zero")),
        ("link-in", Path::new("inside-target.txt")),
        ("link-in-abs", &docroot.join("inside-target.txt")),
        ("dir-in", Path::new("a")),
        ("sub/link-up-in", Path::new("../inside-target.txt")),
        ("loop", Path::new("loop")),
        ("dangling", Path::new("no-such-target.txt")),
        ("sub/link-dir-out", &outside),
    ];
    for (name, target) in links {
        let link = docroot.join(name);
        symlink(target, &link).unwrap_or_else(|e| panic!("symlink {} -> {}: {e}", link.display(), target.display()));
    }
    let fifo = docroot.join("fifo");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("no NUL in the temp path");
    // SAFETY: mkfifo(3) reads a NUL-terminated path, which `c_path` owns for the whole call.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo {}: {}", fifo.display(), std::io::Error::last_os_error());
}

/// Starts a server on the hostile docroot with extra `args`; returns it and the markers no
/// response may contain.
fn hostile(args: &[&str]) -> (Server, Vec<String>) {
    let marker = outside_marker();
    let hook_marker = marker.clone();
    let server = Server::builder()
        .plugins(&[])
        .docroot_file("index.html", INDEX)
        .docroot_file("404.html", NOT_FOUND_PAGE)
        .docroot_file("a/file.txt", A_FILE)
        .docroot_file("inside-target.txt", INSIDE)
        .docroot_file("sub/visible.txt", "visible\n")
        .docroot_file(".env", format!("SECRET_KEY={DOTFILE_MARKER}\n"))
        .docroot_file(".git/config", format!("[core]\n# {DOTFILE_MARKER}\n"))
        .docroot_file(".git/HEAD", format!("ref: refs/heads/{DOTFILE_MARKER}\n"))
        .docroot_file("sub/.hidden", format!("{DOTFILE_MARKER}\n"))
        .docroot_file(".well-known/acme-challenge/token", TOKEN)
        .docroot_file("%2e%2e/secret", LITERAL)
        .args(args.iter().copied())
        .before_start(move |root| build_hostile(root, &hook_marker))
        .start();
    let markers = vec![server.secret_marker().to_owned(), marker, DOTFILE_MARKER.to_owned(), "root:x:0:".to_owned()];
    (server, markers)
}

/// What one raw request got.
struct Outcome {
    status_line: String,
    status: u16,
    bytes: Vec<u8>,
}

/// Sends `GET target HTTP/1.1` (the target exactly as given) with `Connection: close`.
fn send(server: &Server, target: &[u8]) -> Outcome {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let reply = raw_until_close(server.addr(), &request, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&reply.bytes);
    let status_line = text.lines().next().unwrap_or_default().to_owned();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Outcome { status_line, status, bytes: reply.bytes }
}

/// Whether `bytes` contain one of `markers`.
fn leaked<'m>(bytes: &[u8], markers: &'m [String]) -> Option<&'m str> {
    let text = String::from_utf8_lossy(bytes);
    markers.iter().find(|m| text.contains(m.as_str())).map(String::as_str)
}

/// The request must be refused (400 or 404, `allowed` says which), leak nothing, and a 404
/// must carry the 404 page. `Err` describes the failure.
fn check_refused(server: &Server, markers: &[String], target: &[u8], allowed: &[u16]) -> Result<(), String> {
    let out = send(server, target);
    if let Some(m) = leaked(&out.bytes, markers) {
        return Err(format!("LEAKED {m:?}: {}", show(&out.bytes)));
    }
    if out.bytes.is_empty() {
        return Err("no response at all".to_owned());
    }
    if !allowed.contains(&out.status) {
        return Err(format!("status {:?}, want one of {allowed:?}: {}", out.status_line, show(&out.bytes)));
    }
    if out.status == 404 {
        let r = parse_response(&out.bytes, false);
        if r.body != NOT_FOUND_PAGE.as_bytes() {
            return Err(format!("a 404 whose body is not the docroot's 404.html: {}", show(&out.bytes)));
        }
    }
    Ok(())
}

/// Runs `check_refused` on every case; panics with every failure, each named.
fn check_table(server: &Server, markers: &[String], cases: &[(&str, &[u8])], allowed: &[u16]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(name, target)| {
            check_refused(server, markers, target, allowed)
                .err()
                .map(|e| format!("{name} ({:?}): {e}", String::from_utf8_lossy(target)))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        server.context()
    );
    let r = server.get("/");
    assert_eq!((r.status, r.text()), (200, INDEX.to_owned()), "the server after the hostile requests: {}", r.summary());
}

/// Requests that try to climb out of the docroot by their path alone.
const TRAVERSAL: &[(&str, &[u8])] = &[
    ("dot-dot", b"/../secret"),
    ("dot-dot below a directory", b"/a/../../secret"),
    ("encoded dot-dot", b"/%2e%2e/secret"),
    ("upper-case encoded dot-dots", b"/%2E%2E/%2e%2e/secret"),
    ("half-encoded dot-dot", b"/.%2e/secret"),
    ("dot-dot and an encoded slash", b"/..%2fsecret"),
    ("encoded dot-dot and slash", b"/%2e%2e%2fsecret"),
    ("encoded slashes around dot-dots", b"/a%2f..%2f..%2fsecret"),
    ("dot-dot and an encoded backslash", b"/..%5csecret"),
    ("dot-dot and a raw backslash", b"/..\\secret"),
    ("encoded NUL", b"/%00"),
    ("NUL before an extension", b"/index.html%00.txt"),
    ("overlong UTF-8 dots", b"/%c0%ae%c0%ae/secret"),
    ("overlong UTF-8 slash", b"/%c0%af"),
    ("overlong UTF-8 slash between dot-dots", b"/..%c0%af..%c0%afsecret"),
    ("absolute-form dot-dot", b"http://127.0.0.1/../secret"),
    ("absolute-form encoded dot-dot", b"http://127.0.0.1/%2e%2e/secret"),
    ("double slash to /etc", b"//etc/passwd"),
    ("encoded slashes to /etc", b"/%2fetc%2fpasswd"),
    ("dot-dot to the outside directory", b"/../outside/secret.txt"),
    ("dot-dot below a symlink inside", b"/dir-in/../../secret"),
    ("dot-dot below a symlink out", b"/dir-out/../secret"),
    ("double-encoded dot-dots", b"/%252e%252e/%252e%252e/secret"),
    ("dot-dot after a dotfile exception", b"/.well-known/../../secret"),
];

#[test]
fn traversal_never_leaves_the_docroot() {
    let (server, markers) = hostile(&[]);
    check_table(&server, &markers, TRAVERSAL, &[400, 404]);
}

/// `--allow-symlinks-outside` is about symlinks only: dot-segments and the rest stay refused.
#[test]
fn traversal_never_leaves_the_docroot_with_allow_symlinks_outside() {
    let (server, markers) = hostile(&["--allow-symlinks-outside"]);
    check_table(&server, &markers, TRAVERSAL, &[400, 404]);
}

const SYMLINKS_OUT: &[(&str, &[u8])] = &[
    ("absolute symlink to a file outside", b"/link-out"),
    ("relative symlink to a file outside", b"/link-out-rel"),
    ("absolute symlink to a directory outside", b"/dir-out/secret.txt"),
    ("relative symlink to a directory outside", b"/dir-out-rel/secret.txt"),
    ("symlink to the docroot's parent", b"/up/secret"),
    ("symlink to a directory outside, in a subdirectory", b"/sub/link-dir-out/secret.txt"),
    ("the outside directory itself", b"/dir-out/"),
    ("symlink to /dev/zero", b"/link-devzero"),
];

#[test]
fn symlinks_leading_out_are_404_by_default() {
    let (server, markers) = hostile(&[]);
    check_table(&server, &markers, SYMLINKS_OUT, &[404]);
}

#[test]
fn symlinks_leading_out_are_followed_with_allow_symlinks_outside() {
    let (server, markers) = hostile(&["--allow-symlinks-outside"]);
    let (harness_marker, own_marker) = (&markers[0], &markers[1]);
    for (path, marker) in [
        ("/link-out", harness_marker),
        ("/link-out-rel", harness_marker),
        ("/up/secret", harness_marker),
        ("/dir-out/secret.txt", own_marker),
        ("/dir-out-rel/secret.txt", own_marker),
        ("/sub/link-dir-out/secret.txt", own_marker),
    ] {
        let r = server.get(path);
        assert_eq!(r.status, 200, "GET {path} with --allow-symlinks-outside: {}{}", r.summary(), server.context());
        assert_eq!(r.text(), format!("{marker}\n"), "GET {path} with --allow-symlinks-outside: {}", r.summary());
    }
}

#[test]
fn symlinks_inside_the_docroot_are_followed() {
    let (server, _) = hostile(&[]);
    for (path, body) in
        [("/link-in", INSIDE), ("/link-in-abs", INSIDE), ("/sub/link-up-in", INSIDE), ("/dir-in/file.txt", A_FILE)]
    {
        let r = server.get(path);
        assert_eq!((r.status, r.text()), (200, body.to_owned()), "GET {path}: {}{}", r.summary(), server.context());
    }
    let r = server.get("/dir-in");
    assert_eq!((r.status, r.header("Location")), (301, Some("/dir-in/")), "GET /dir-in: {}", r.summary());
}

#[test]
fn broken_and_looping_symlinks_are_404() {
    let (server, markers) = hostile(&[]);
    let cases: &[(&str, &[u8])] =
        &[("self loop", b"/loop"), ("below a self loop", b"/loop/x"), ("dangling", b"/dangling")];
    check_table(&server, &markers, cases, &[404]);
}

/// Opening a FIFO for reading blocks until a writer comes: a server that tried would hang.
#[test]
fn a_fifo_in_the_docroot_is_404_and_blocks_nothing() {
    let (server, markers) = hostile(&[]);
    let started = Instant::now();
    let result = check_refused(&server, &markers, b"/fifo", &[404]);
    let took = started.elapsed();
    assert!(result.is_ok(), "GET /fifo: {}{}", result.unwrap_err(), server.context());
    assert!(took < Duration::from_secs(2), "GET /fifo took {took:?}{}", server.context());
    let r = server.get("/index.html");
    assert_eq!(r.status, 200, "the server after GET /fifo: {}", r.summary());
}

/// Interpretation: following symlinks out is about where files live, not about serving what
/// is not a regular file; a symlink to `/dev/zero` must not stream an endless body.
#[test]
fn a_symlink_to_a_device_is_not_served_even_with_allow_symlinks_outside() {
    let (server, _) = hostile(&["--allow-symlinks-outside"]);
    let mut conn = server.connect();
    conn.send(b"GET /link-devzero HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let head = conn.read_head().unwrap_or_else(|e| panic!("GET /link-devzero: {e}{}", server.context()));
    assert_eq!(head.status, 404, "GET /link-devzero: {:?} {:?}{}", head.status_line, head.headers, server.context());
    drop(conn);
    assert_eq!(server.get("/").status, 200);
}

#[test]
fn dotfiles_are_404() {
    let (server, markers) = hostile(&[]);
    let cases: &[(&str, &[u8])] = &[
        ("/.env", b"/.env"),
        ("/.git/config", b"/.git/config"),
        ("/.git/HEAD", b"/.git/HEAD"),
        ("/.git/", b"/.git/"),
        ("/.git", b"/.git"),
        ("/sub/.hidden", b"/sub/.hidden"),
        ("encoded dot of /.env", b"/%2eenv"),
        ("encoded dot of /sub/.hidden", b"/sub/%2ehidden"),
        ("encoded dot of /.git/config", b"/%2Egit/config"),
    ];
    check_table(&server, &markers, cases, &[404]);
}

/// RFC 8615: `/.well-known/` is the one dot-directory that is served.
#[test]
fn well_known_is_served() {
    let (server, _) = hostile(&[]);
    let r = server.get("/.well-known/acme-challenge/token");
    assert_eq!((r.status, r.text()), (200, TOKEN.to_owned()), "{}{}", r.summary(), server.context());
}

/// `%25` decodes to a literal `%` once: `/%252e%252e/secret` is the file named `%2e%2e/secret`
/// inside the docroot, never `../secret`.
#[test]
fn percent_decoding_happens_once() {
    let (server, markers) = hostile(&[]);
    let out = send(&server, b"/%252e%252e/secret");
    assert_eq!(leaked(&out.bytes, &markers), None, "{}", show(&out.bytes));
    let r = parse_response(&out.bytes, false);
    assert_eq!((r.status, r.text()), (200, LITERAL.to_owned()), "{}{}", r.summary(), server.context());
}

/// A sanity check of the fixture itself: the outside files really hold the markers and the
/// symlinks really resolve there, so the tests above would see a leak.
#[test]
fn the_fixture_is_what_the_tests_assume() {
    let (server, markers) = hostile(&[]);
    let root = server.root_dir();
    let docroot = server.docroot();
    assert_eq!(fs::read_to_string(docroot.join("link-out")).expect("link-out"), format!("{}\n", markers[0]));
    assert_eq!(fs::read_to_string(docroot.join("dir-out/secret.txt")).expect("dir-out"), format!("{}\n", markers[1]));
    assert_eq!(fs::read_to_string(root.join("secret")).expect("secret"), format!("{}\n", markers[0]));
    assert!(fs::symlink_metadata(docroot.join("fifo")).expect("fifo").file_type().is_fifo(), "fifo is not a FIFO");
}
