//! Static files: the index, Content-Type by extension, the 404 page, HEAD, percent-decoding,
//! a large file, and traversal attempts that must never leave the docroot.

mod support;

use std::time::Duration;

use support::{Server, ServerBuilder, parse_response, raw_until_close, request_bytes, show, split_head};

const INDEX: &str = "<!doctype html>\n<html><head><title>portico test</title></head><body>test index</body></html>\n";
const NOT_FOUND_PAGE: &str = "<!doctype html>\n<html><body>test 404 page</body></html>\n";
const CSS: &str = "body { color: #333; }\n";
const JSON: &str = "{\"ok\": true}\n";
const PAGE: &str = "<html><body>a page in a subdirectory</body></html>\n";
const TEXT: &str = "plain text\n";

/// A 1x1 PNG: binary bytes, including NUL and bytes above 0x7F.
fn png() -> Vec<u8> {
    let hex = "89504e470d0a1a0a0000000d4948445200000001000000010806000000\
               1f15c4890000000d49444154789c636000000000050001a5f645400000\
               000049454e44ae426082";
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect()
}

/// The test site: a docroot of known files, only the hello plugin.
fn site() -> ServerBuilder {
    Server::builder()
        .plugins(&["hello"])
        .docroot_file("index.html", INDEX)
        .docroot_file("404.html", NOT_FOUND_PAGE)
        .docroot_file("assets/style.css", CSS)
        .docroot_file("assets/data.json", JSON)
        .docroot_file("img/pixel.png", png())
        .docroot_file("docs/page.html", PAGE)
        .docroot_file("notes.txt", TEXT)
        .docroot_file("with space.txt", "spaced\n")
        .docroot_file("sub/inner.txt", "inner\n")
}

#[track_caller]
fn assert_content_type(r: &support::Response, prefix: &str) {
    let ct = r.header("Content-Type").unwrap_or_else(|| panic!("no Content-Type in {}", r.summary()));
    assert!(
        ct.to_ascii_lowercase().starts_with(prefix),
        "Content-Type {ct:?} should start with {prefix:?} in {}",
        r.summary()
    );
}

#[test]
fn root_serves_index_html() {
    let server = site().start();
    for path in ["/", "/index.html"] {
        let r = server.get(path);
        assert_eq!(r.status_line, "HTTP/1.1 200 OK", "GET {path}: {}", r.summary());
        assert_content_type(&r, "text/html");
        assert_eq!(r.text(), INDEX, "GET {path}");
        assert_eq!(r.header("Content-Length"), Some(INDEX.len().to_string().as_str()), "GET {path}");
    }
}

#[test]
fn default_docroot_is_the_repos_html_dir() {
    let server = Server::builder().plugins(&["hello"]).start();
    let r = server.get("/");
    assert_eq!(
        r.status_line,
        "HTTP/1.1 200 OK",
        "GET / with a copy of the repo's html/ (which should hold index.html): {}",
        r.summary()
    );
    assert_content_type(&r, "text/html");
    assert!(r.text().to_ascii_lowercase().contains("<html"), "index is not HTML: {}", r.summary());
    let r = server.get("/no-such-page-in-the-repo.html");
    assert_eq!(r.status_line, "HTTP/1.1 404 Not Found", "{}", r.summary());
    assert!(
        r.text().to_ascii_lowercase().contains("<html"),
        "the 404 body should be the repo's html/404.html: {}",
        r.summary()
    );
}

#[test]
fn content_type_follows_the_extension() {
    let server = site().start();
    let cases: [(&str, &str, Vec<u8>); 5] = [
        ("/assets/style.css", "text/css", CSS.into()),
        ("/assets/data.json", "application/json", JSON.into()),
        ("/img/pixel.png", "image/png", png()),
        ("/docs/page.html", "text/html", PAGE.into()),
        ("/notes.txt", "text/plain", TEXT.into()),
    ];
    for (path, content_type, body) in cases {
        let r = server.get(path);
        assert_eq!(r.status_line, "HTTP/1.1 200 OK", "GET {path}: {}", r.summary());
        assert_content_type(&r, content_type);
        assert_eq!(r.body, body, "GET {path}: body differs");
        assert_eq!(r.header("Content-Length"), Some(body.len().to_string().as_str()), "GET {path}");
    }
}

#[test]
fn missing_file_is_404_with_the_404_page() {
    let server = site().start();
    for path in ["/no-such-file.html", "/assets/missing.css", "/deep/er/nothing"] {
        let r = server.get(path);
        assert_eq!(r.status_line, "HTTP/1.1 404 Not Found", "GET {path}: {}", r.summary());
        assert_eq!(r.text(), NOT_FOUND_PAGE, "GET {path}: the body should be docroot/404.html");
        assert_content_type(&r, "text/html");
    }
}

#[test]
fn missing_file_without_a_404_page_is_still_404() {
    let server = Server::builder().plugins(&["hello"]).docroot_file("index.html", INDEX).start();
    let r = server.get("/nothing-here.txt");
    assert_eq!(r.status_line, "HTTP/1.1 404 Not Found", "{}", r.summary());
}

#[test]
fn head_gives_the_get_headers_without_a_body() {
    let server = site().start();
    for (path, status_line) in
        [("/assets/style.css", "HTTP/1.1 200 OK"), ("/", "HTTP/1.1 200 OK"), ("/missing.txt", "HTTP/1.1 404 Not Found")]
    {
        let get = server.get(path);
        let reply = raw_until_close(server.addr(), &request_bytes("HEAD", path, true), Duration::from_secs(5));
        assert!(
            reply.closed,
            "HEAD {path} with Connection: close: server kept the connection open; got {}",
            show(&reply.bytes)
        );
        let (head, rest) = split_head(&reply.bytes);
        assert!(rest.is_empty(), "HEAD {path}: {} body bytes after the head: {}", rest.len(), show(&reply.bytes));
        let r = parse_response(&reply.bytes, true);
        assert_eq!(r.status_line, status_line, "HEAD {path}: {head}");
        assert_eq!(r.header("Content-Length"), get.header("Content-Length"), "HEAD {path} vs GET: {head}");
        assert_eq!(r.header("Content-Type"), get.header("Content-Type"), "HEAD {path} vs GET: {head}");
    }
    let r = server.get("/assets/style.css");
    assert_eq!(r.header("Content-Length"), Some(CSS.len().to_string().as_str()));
}

#[test]
fn percent_encoded_paths_and_query_strings() {
    let server = site().start();
    let r = server.get("/with%20space.txt");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{}", r.summary());
    assert_eq!(r.text(), "spaced\n");
    let r = server.get("/index.html?x=1&y=%2F");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "a query string on a static file: {}", r.summary());
    assert_eq!(r.text(), INDEX);
    // An encoded slash may be decoded (200 with the file) or refused (400/404), nothing else.
    let r = server.get("/assets%2Fstyle.css");
    match r.status {
        200 => assert_eq!(r.text(), CSS, "{}", r.summary()),
        400 | 404 => {}
        _ => panic!("GET /assets%2Fstyle.css: {}{}", r.summary(), server.context()),
    }
}

#[test]
fn large_file_is_served_whole_and_the_connection_stays_usable() {
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let server = site().docroot_file("big.bin", big.clone()).start();
    let mut conn = server.connect();
    conn.send(&request_bytes("GET", "/big.bin", false));
    let r = conn.read_response();
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert_eq!(r.header("Content-Length"), Some(big.len().to_string().as_str()));
    assert!(r.complete, "body cut short at {} of {} bytes{}", r.body.len(), big.len(), server.context());
    assert!(r.body == big, "large file body differs (got {} bytes)", r.body.len());
    conn.send(&request_bytes("GET", "/notes.txt", false));
    let r = conn.read_response();
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "second request after the large file: {}", r.summary());
    assert_eq!(r.text(), TEXT);
}

#[test]
fn traversal_never_escapes_the_docroot() {
    let server = site().start();
    let marker = server.secret_marker().to_owned();
    let targets: &[&[u8]] = &[
        b"/../Cargo.toml",
        b"/../secret.txt",
        b"/%2e%2e/Cargo.toml",
        b"/%2e%2e/secret.txt",
        b"/%2E%2E/secret.txt",
        b"/.%2e/secret.txt",
        b"/%2e./secret.txt",
        b"/..%2fCargo.toml",
        b"/..%2Fsecret.txt",
        b"/..%5csecret.txt",
        b"/a/%2e%2e/%2e%2e/secret",
        b"/sub/%2e%2e/%2e%2e/secret",
        b"/sub/.%2e/.%2e/secret.txt",
        b"/sub/../../secret.txt",
        b"/sub/..%2f..%2fsecret.txt",
        b"/html/../../x",
        b"/./../secret.txt",
        b"/%00",
        b"/index.html%00",
        b"/%00/../secret.txt",
        b"/secret.txt%00.html",
        b"//etc/passwd",
        b"///etc/passwd",
        b"/%2fetc%2fpasswd",
        b"/%2F..%2Fsecret.txt",
        b"/../plugins/hello.so",
        b"/\0",
        b"/sub\\..\\..\\secret.txt",
        b"secret.txt",
        b"../secret.txt",
        b"http://127.0.0.1/../secret.txt",
        b"http://127.0.0.1/%2e%2e/secret.txt",
    ];
    let mut failures = Vec::new();
    for target in targets {
        let mut request = b"GET ".to_vec();
        request.extend_from_slice(target);
        request.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        let reply = raw_until_close(server.addr(), &request, Duration::from_secs(5));
        let text = String::from_utf8_lossy(&reply.bytes);
        let shown = String::from_utf8_lossy(target);
        if text.contains(&marker) || text.contains("root:x:0:0") || reply.bytes.windows(4).any(|w| w == b"\x7fELF") {
            failures.push(format!("{shown:?}: LEAKED a file outside the docroot: {}", show(&reply.bytes)));
            continue;
        }
        if reply.bytes.is_empty() {
            failures.push(format!("{shown:?}: no response at all (closed: {})", reply.closed));
            continue;
        }
        let status_line = text.lines().next().unwrap_or_default().to_owned();
        if !(status_line.starts_with("HTTP/1.1 400 ") || status_line.starts_with("HTTP/1.1 404 ")) {
            failures.push(format!("{shown:?}: status {status_line:?}, want 400 or 404"));
        }
    }
    assert!(failures.is_empty(), "traversal attempts:\n{}{}", failures.join("\n"), server.context());
    let r = server.get("/");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "server still serving after the traversal attempts");
}
