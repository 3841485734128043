//! Middleware pipelines from the configuration file, with the example plugins: `ip_filter`
//! (allow/deny by REMOTE_ADDR, trusted proxies), `headers` (adds response fields) and
//! `dispatch` (the SDK router), alone and stacked.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{Server, TempDir};

fn config(dir: &TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("portico.toml");
    support::install_bytes(text.as_bytes(), &path);
    path
}

fn start(dir: &TempDir, text: &str) -> Server {
    let path = config(dir, text);
    Server::builder()
        .plugins(&["dispatch", "ip_filter", "headers", "hello"])
        .args(["--config".as_ref(), path.as_os_str()])
        .start()
}

fn get_with(server: &Server, path: &str, fields: &[(&str, &str)]) -> support::Response {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: portico.test\r\nConnection: close\r\n");
    for (n, v) in fields {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    server.request(req.as_bytes())
}

const STACK: &str = r#"
[[mount]]
prefix = "/api"
app = "dispatch"
middleware = ["ip_filter", "headers"]

[plugin.headers]
add = { "X-Frame-Options" = "DENY", "X-Content-Type-Options" = "nosniff" }
"#;

#[test]
fn a_stacked_pipeline_filters_adds_headers_and_dispatches() {
    let dir = TempDir::new("portico-pipeline");
    let server = start(&dir, &format!("{STACK}\n[plugin.ip_filter]\nallow = [\"127.0.0.0/8\"]\n"));
    for (path, body) in
        [("/api/dog", "This is dog!\n"), ("/api/cat", "This is cat!\n"), ("/api/hello/ann", "Hello, ann!\n")]
    {
        let r = server.get(path);
        assert_eq!((r.status, r.text().as_str()), (200, body), "{}", r.summary());
        assert_eq!(r.header("X-Frame-Options"), Some("DENY"), "{}", r.summary());
        assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"), "{}", r.summary());
    }
    let r = server.get("/api/bird");
    assert_eq!(r.status, 404, "{}", r.summary());
    assert_eq!(r.header("X-Frame-Options"), Some("DENY"), "headers wraps every answer of the app: {}", r.summary());
    let r = server.request(b"POST /api/dog HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 405, "{}", r.summary());
    assert_eq!(r.header("Allow"), Some("GET, HEAD"), "{}", r.summary());
    // The pipeline's plugins are reachable only through the mount.
    assert_eq!(server.get("/dispatch.py/dog").status, 404);
    assert_eq!(server.get("/ip_filter.py").status, 404);
    // A plugin outside every mount keeps its /NAME.py.
    assert_eq!(server.get("/hello.py").text(), "Hello, world!\n");
}

#[test]
fn ip_filter_refuses_by_remote_addr_never_by_the_host_field() {
    let dir = TempDir::new("portico-pipeline");
    let server = start(&dir, &format!("{STACK}\n[plugin.ip_filter]\ndeny = [\"127.0.0.1/32\"]\n"));
    // Our address is 127.0.0.1: denied, whatever Host or X-Forwarded-For claim (no trusted
    // proxy is configured, so forwarding fields are not believed).
    for fields in [&[][..], &[("X-Forwarded-For", "198.51.100.7")][..], &[("Forwarded", "for=198.51.100.7")][..]] {
        let r = get_with(&server, "/api/dog", fields);
        assert_eq!(r.status, 403, "{fields:?}: {}", r.summary());
        assert_ne!(r.text(), "This is dog!\n");
    }
    let mut req = b"GET /api/dog HTTP/1.1\r\nHost: 10.0.0.1\r\nConnection: close\r\n\r\n".to_vec();
    assert_eq!(server.request(&req).status, 403, "a Host field never lets a client through");
    req = b"GET /api/dog HTTP/1.1\r\nHost: 127.0.0.2\r\nConnection: close\r\n\r\n".to_vec();
    assert_eq!(server.request(&req).status, 403);
    server.wait_for_log("ip_filter", Duration::from_secs(5));
}

#[test]
fn ip_filter_refusals_cannot_forge_or_flood_the_log() {
    let dir = TempDir::new("portico-pipeline");
    let server = start(&dir, &format!("{STACK}\n[plugin.ip_filter]\ndeny = [\"127.0.0.1/32\"]\n"));
    let mark = server.log_mark();
    let r = server.get("/api/x%0A2026-11-29T00:00:00Z%20ERROR%20portico:%20FAKE");
    assert_eq!(r.status, 403);
    for _ in 0..50 {
        assert_eq!(server.get("/api/dog").status, 403);
    }
    let line = server.wait_for_line(mark, &["ip_filter: refused"], Duration::from_secs(5));
    assert!(line.contains(r#""/x\n2026-11-29T00:00:00Z ERROR portico: FAKE""#), "{line:?}");
    let text = server.stderr_text();
    assert!(!text.lines().any(|l| l.starts_with("2026-11-29T00:00:00Z ERROR portico: FAKE")), "{text}");
    let refusals = text.lines().filter(|l| l.contains("ip_filter: refused")).count();
    assert!(refusals < 5, "51 refusals in well under a second made {refusals} lines:\n{text}");
    // The refusals not logged are counted on the next line written (a second later).
    let summary = support::poll_until(Duration::from_secs(5), Duration::from_millis(100), || {
        assert_eq!(server.get("/api/dog").status, 403);
        server.stderr_text().lines().find(|l| l.contains("more refused")).map(str::to_owned)
    });
    let summary = summary.unwrap_or_else(|| panic!("no line counts the unlogged refusals:\n{}", server.stderr_text()));
    let counted: u64 = summary
        .split("(and ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {summary:?}"));
    assert!(counted >= 50 - refusals as u64, "{counted} counted of the 50 after the first: {summary:?}");
}

#[test]
fn ip_filter_believes_forwarding_fields_only_from_trusted_proxies() {
    let rules = "deny = [\"203.0.113.0/24\", \"2001:db8::/32\"]\ntrusted_proxies = [\"127.0.0.1\"]";
    let dir = TempDir::new("portico-pipeline");
    let server = start(&dir, &format!("{STACK}\n[plugin.ip_filter]\n{rules}\nproxy_header = \"x-forwarded-for\"\n"));
    for (fields, status) in [
        (&[][..], 200),
        (&[("X-Forwarded-For", "203.0.113.9")][..], 403),
        (&[("X-Forwarded-For", "203.0.113.9, 127.0.0.1")][..], 403),
        (&[("X-Forwarded-For", "198.51.100.1")][..], 200),
        (&[("X-Forwarded-For", "203.0.113.9, 198.51.100.1")][..], 200),
        // The proxy writes X-Forwarded-For: a client's own Forwarded field is not believed.
        (&[("X-Forwarded-For", "203.0.113.9"), ("Forwarded", "for=198.51.100.1")][..], 403),
    ] {
        let r = get_with(&server, "/api/dog", fields);
        assert_eq!(r.status, status, "{fields:?}: {}", r.summary());
    }
    drop(server);
    let dir = TempDir::new("portico-pipeline");
    let server = start(&dir, &format!("{STACK}\n[plugin.ip_filter]\n{rules}\nproxy_header = \"forwarded\"\n"));
    for (fields, status) in [
        (&[("Forwarded", "for=\"[2001:db8::1]:4711\"")][..], 403),
        (&[("Forwarded", "for=198.51.100.1;proto=http")][..], 200),
        (&[("Forwarded", "for=unknown")][..], 403),
        (&[("Forwarded", "for=203.0.113.9"), ("X-Forwarded-For", "198.51.100.1")][..], 403),
    ] {
        let r = get_with(&server, "/api/dog", fields);
        assert_eq!(r.status, status, "{fields:?}: {}", r.summary());
    }
}

#[test]
fn headers_alone_wraps_an_application() {
    let dir = TempDir::new("portico-pipeline");
    let server = start(
        &dir,
        "[[mount]]\nprefix = \"/h\"\napp = \"hello\"\nmiddleware = [\"headers\"]\n\n\
         [plugin.headers]\nadd = { \"Strict-Transport-Security\" = \"max-age=63072000\" }\n",
    );
    let r = server.get("/h");
    assert_eq!(r.text(), "Hello, world!\n", "{}", r.summary());
    assert_eq!(r.header("Strict-Transport-Security"), Some("max-age=63072000"), "{}", r.summary());
}

#[test]
fn a_bad_cidr_stops_the_server_with_the_plugins_message() {
    let dir = TempDir::new("portico-pipeline");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    for name in ["dispatch", "ip_filter"] {
        support::install_file(&support::plugin(name), &plugins.join(format!("{name}.so")));
    }
    let path = config(
        &dir,
        "[[mount]]\nprefix = \"/api\"\napp = \"dispatch\"\nmiddleware = [\"ip_filter\"]\n\n\
         [plugin.ip_filter]\nallow = [\"10.0.0.0/33\"]\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_portico"))
        .arg("--config")
        .arg(&path)
        .args(["--bind", "127.0.0.1:0", "--access-log", "off", "--plugins"])
        .arg(&plugins)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("--docroot")
        .arg(dir.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("running portico");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a mount whose middleware refused its settings must not start: {stderr}");
    assert!(stderr.contains("10.0.0.0/33"), "the plugin's reason is shown: {stderr}");
    assert!(
        stderr.contains("portico.toml:7:1: plugin ip_filter refused [plugin.ip_filter] in its init"),
        "the line of the refused setting is shown: {stderr}"
    );
}

fn start_static(dir: &TempDir, text: &str) -> Server {
    let path = config(dir, text);
    let big: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
    Server::builder()
        .plugins(&["ip_filter", "headers", "hello"])
        .docroot_file("private/note.txt", "private note\n")
        .docroot_file("private/big.bin", big)
        .docroot_file("public.txt", "public\n")
        .args(["--config".as_ref(), path.as_os_str()])
        .start()
}

#[test]
fn a_static_mount_puts_middleware_in_front_of_the_docroot() {
    let dir = TempDir::new("portico-pipeline");
    let server = start_static(
        &dir,
        "[[mount]]\nprefix = \"/private\"\nstatic = true\nmiddleware = [\"headers\"]\n\n\
         [plugin.headers]\nadd = { \"X-Robots-Tag\" = \"noindex\" }\n",
    );
    let r = server.get("/private/note.txt");
    assert_eq!((r.status, r.text().as_str()), (200, "private note\n"), "{}", r.summary());
    assert_eq!(r.header("X-Robots-Tag"), Some("noindex"), "{}", r.summary());
    assert!(r.header("Content-Type").is_some_and(|v| v.starts_with("text/plain")), "{}", r.summary());
    let etag = r.header("ETag").expect("ETag through the pipeline").to_owned();
    // Validators and ranges behave as without the mount.
    let r = get_with(&server, "/private/note.txt", &[("If-None-Match", &etag)]);
    assert_eq!(r.status, 304, "{}", r.summary());
    let r = get_with(&server, "/private/note.txt", &[("Range", "bytes=0-6")]);
    assert_eq!((r.status, r.text().as_str()), (206, "private"), "{}", r.summary());
    assert_eq!(r.header("Content-Range"), Some("bytes 0-6/13"), "{}", r.summary());
    // A large file streams through the pipeline intact.
    let r = server.get("/private/big.bin");
    let want: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
    assert!(r.status == 200 && r.body == want, "{} ({} bytes)", r.summary(), r.body.len());
    assert_eq!(r.header("X-Robots-Tag"), Some("noindex"));
    let r = server.request(b"HEAD /private/note.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, r.body.len()), (200, 0), "{}", r.summary());
    assert_eq!(server.get("/private/none.txt").status, 404);
    // Outside the mount: the plain static path, without the middleware.
    let r = server.get("/public.txt");
    assert_eq!((r.status, r.header("X-Robots-Tag")), (200, None), "{}", r.summary());
}

#[test]
fn a_static_mount_behind_ip_filter_refuses_before_any_file_is_read() {
    let dir = TempDir::new("portico-pipeline");
    let server = start_static(
        &dir,
        "[[mount]]\nprefix = \"/private\"\nstatic = true\nmiddleware = [\"ip_filter\"]\n\n\
         [plugin.ip_filter]\ndeny = [\"127.0.0.1/32\"]\n",
    );
    let r = server.get("/private/note.txt");
    assert_eq!(r.status, 403, "{}", r.summary());
    assert!(!r.text().contains("private note"), "{}", r.summary());
    assert_eq!(server.get("/public.txt").text(), "public\n");
}

#[test]
fn a_static_mount_protects_its_files_not_only_its_urls() {
    // html/alias -> private, and private/public -> ../public: the file decides, not the path.
    let dir = TempDir::new("portico-pipeline");
    let path = config(
        &dir,
        "[[mount]]\nprefix = \"/private\"\nstatic = true\nmiddleware = [\"ip_filter\"]\n\n\
         [plugin.ip_filter]\ndeny = [\"127.0.0.1/32\"]\n",
    );
    let server = Server::builder()
        .plugins(&["ip_filter"])
        .docroot_file("private/note.txt", "private note\n")
        .docroot_file("open/readme.txt", "open\n")
        .before_start(|root| {
            let docroot = root.join("docroot");
            std::os::unix::fs::symlink("private", docroot.join("alias")).expect("alias symlink");
            std::os::unix::fs::symlink("private/note.txt", docroot.join("note-link.txt")).expect("file symlink");
            std::os::unix::fs::symlink("../open", docroot.join("private").join("open")).expect("inner symlink");
        })
        .args(["--config".as_ref(), path.as_os_str()])
        .start();
    assert_eq!(server.get("/private/note.txt").status, 403, "through the mount: ip_filter refuses");
    for around in ["/alias/note.txt", "/note-link.txt"] {
        let r = server.get(around);
        assert_eq!(r.status, 404, "{around} reached a fenced file around its mount: {}", r.summary());
        assert!(!r.text().contains("private note"), "{}", r.summary());
    }
    // A file outside the fence stays public, even when a link inside the fenced directory
    // leads to it (through the mount it still meets the middleware first).
    assert_eq!(server.get("/open/readme.txt").text(), "open\n");
    assert_eq!(server.get("/private/open/readme.txt").status, 403);
}
