//! Python WSGI applications through the `wsgi` plugin (issue 12): a real Flask application and
//! a real Django project served unchanged, PEP 3333 corner by corner, the tutorials'
//! `/NAME.py` scripts, reload, and a burst of slow Python requests beside `/hello.py` and a
//! static file. Every Flask and Django request also runs through `wsgiref.validate`
//! (`host/tests/wsgi/app/validated.py`).
//!
//! Needs the plugin and a venv with Flask and Django, which `scripts/test` builds
//! (`PORTICO_WSGI_PLUGIN`, default `target/debug/libwsgi.so`; `PORTICO_WSGI_VENV`, default
//! `target/wsgi-venv`). Where no Python with a shared libpython exists, `scripts/test` says
//! so and sets `PORTICO_SKIP_WSGI=1`; anything else missing fails these tests.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Server, TempDir};

/// The plugin and the venv, or `None` when scripts/test found no usable Python.
fn wsgi() -> Option<(PathBuf, PathBuf)> {
    if std::env::var_os("PORTICO_SKIP_WSGI").is_some_and(|v| v == "1") {
        eprintln!("PORTICO_SKIP_WSGI=1: no usable Python on this machine; wsgi test skipped");
        return None;
    }
    let target = support::workspace_root().join("target");
    let plugin = std::env::var_os("PORTICO_WSGI_PLUGIN").map_or(target.join("debug/libwsgi.so"), PathBuf::from);
    let venv = std::env::var_os("PORTICO_WSGI_VENV").map_or(target.join("wsgi-venv"), PathBuf::from);
    assert!(plugin.is_file(), "{} is missing: run scripts/test (it builds the wsgi plugin)", plugin.display());
    assert!(venv.join("bin/python").exists(), "{} is missing: run scripts/test (it makes the venv)", venv.display());
    Some((plugin, venv))
}

fn fixtures() -> PathBuf {
    support::workspace_root().join("host/tests/wsgi")
}

/// Copies the fixture directory `name` into `dir`.
fn copy_fixture(name: &str, dir: &Path) -> PathBuf {
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(fixtures().join(name)).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    to
}

/// A server with hello + wsgi and `config` (TOML) written to `dir/portico.toml`.
fn serve(plugin: &Path, dir: &TempDir, config: &str, extra: &[&str]) -> Server {
    let path = dir.path().join("portico.toml");
    std::fs::write(&path, config).unwrap();
    let mut args = vec!["--config".to_owned(), path.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    Server::builder()
        .plugins(&["hello"])
        .plugin_file("wsgi.so", plugin)
        .docroot_file("static.txt", "static file\n")
        .args(args)
        .start()
}

fn flask_config(venv: &Path, app: &Path, extra: &str) -> String {
    format!(
        "[plugin.wsgi]\napp = \"validated:application\"\nvenv = \"{}\"\npythonpath = [\"{}\"]\n\
         env = {{ PORTICO_TEST_APP = \"flaskapp:app\" }}\n{extra}\n\
         [[mount]]\nprefix = \"/shop\"\napp = \"wsgi\"\n",
        venv.display(),
        app.display()
    )
}

fn post(server: &Server, path: &str, content_type: &str, body: &[u8]) -> support::Response {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    server.request(&req)
}

/// SHA-256 of `data` in hex, by Python's hashlib (these tests need python3 anyway).
fn sha256_hex(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args(["-c", "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running python3");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
#[test]
fn a_flask_application_runs_unchanged_under_the_validator() {
    let Some((plugin, venv)) = wsgi() else { return };
    let dir = TempDir::new("wsgi-flask");
    let app = copy_fixture("app", dir.path());
    let server = serve(&plugin, &dir, &flask_config(&venv, &app, ""), &[]);

    let r = server.get("/shop/");
    assert_eq!(r.status, 200, "{}{}", r.summary(), server.context());
    assert_eq!(r.text(), "Hello from Flask at /shop/ <script>");
    // SCRIPT_NAME is the mount: url_for builds /shop/...; the query is ISO-8859-1 in the
    // environ and decoded by Werkzeug.
    let r = server.get("/shop/json?a=%C3%A9");
    let json = r.json();
    assert_eq!((json["a"].as_str(), json["url"].as_str()), (Some("é"), Some("/shop/json")), "{}", r.summary());
    assert_eq!(json["multiprocess"], false, "--workers 0 is one process");
    assert_eq!(json["multithread"], true);

    let r = post(&server, "/shop/form", "application/x-www-form-urlencoded", b"x=1&y=caf%C3%A9");
    assert_eq!((r.status, r.json()["y"].as_str().map(str::to_owned)), (200, Some("café".into())), "{}", r.summary());

    let file: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let boundary = "portico-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--{boundary}\r\n\
         Content-Disposition: form-data; name=\"file\"; filename=\"data.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let r = post(&server, "/shop/upload", &format!("multipart/form-data; boundary={boundary}"), &body);
    let json = r.json();
    assert_eq!(json["size"], 200_000, "{}", r.summary());
    assert_eq!(json["name"], "data.bin");
    assert_eq!(json["note"], "hi");
    assert_eq!(json["sha256"].as_str(), Some(sha256_hex(&file).as_str()), "the file arrived whole");

    let r = server.get("/shop/stream");
    assert_eq!((r.status, r.text()), (200, "chunk 0\nchunk 1\nchunk 2\n".to_owned()), "{}", r.summary());
    assert!(r.chunked, "a generator streams: {}", r.summary());

    let r = server.get("/shop/file");
    let source = std::fs::read_to_string(app.join("flaskapp.py")).unwrap();
    assert_eq!((r.status, r.text()), (200, source), "send_file");

    assert_eq!(server.get("/shop/missing").status, 404);
    assert_eq!(server.get("/shop/teapot").status, 418);
    let mark = server.log_mark();
    let r = server.get("/shop/boom");
    assert_eq!(r.status, 500, "{}", r.summary());
    server.wait_for_line(mark, &["RuntimeError: boom from a Flask view"], Duration::from_secs(5));
    // HEAD: Flask's headers, no body.
    let r = server.request(b"HEAD /shop/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, r.header("content-length")), (200, Some("13")), "{}", r.summary());
    assert_eq!(server.get("/hello.py").text(), "Hello, world!\n");
    assert_eq!(server.get("/static.txt").text(), "static file\n");
    server.assert_alive();
}

/// A Django project as `django-admin startproject` makes it, plus one view, migrated.
fn django_project(venv: &Path, dir: &Path) -> PathBuf {
    let project = dir.join("djproject");
    std::fs::create_dir_all(&project).unwrap();
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("running a Django command");
        assert!(out.status.success(), "{:?}: {}", cmd, String::from_utf8_lossy(&out.stderr));
    };
    run(Command::new(venv.join("bin/django-admin")).args(["startproject", "mysite"]).arg(&project));
    std::fs::write(
        project.join("mysite/views.py"),
        "from django.http import HttpResponse\nfrom django.urls import reverse\n\n\
         def hi(request):\n    return HttpResponse(f\"hi from Django, reverse={reverse('hi')}\")\n",
    )
    .unwrap();
    let urls = std::fs::read_to_string(project.join("mysite/urls.py")).unwrap();
    let urls = urls.replace(
        "urlpatterns = [",
        "from mysite import views\n\nurlpatterns = [\n    path(\"hi/\", views.hi, name=\"hi\"),",
    );
    std::fs::write(project.join("mysite/urls.py"), urls).unwrap();
    let settings = std::fs::read_to_string(project.join("mysite/settings.py")).unwrap();
    std::fs::write(
        project.join("mysite/settings.py"),
        settings.replace("ALLOWED_HOSTS = []", "ALLOWED_HOSTS = [\"*\"]"),
    )
    .unwrap();
    run(Command::new(venv.join("bin/python")).arg("manage.py").args(["migrate", "-v", "0"]).current_dir(&project));
    project
}

#[test]
fn a_django_project_runs_unchanged_with_its_admin_and_csrf() {
    let Some((plugin, venv)) = wsgi() else { return };
    let dir = TempDir::new("wsgi-django");
    let app = copy_fixture("app", dir.path());
    let project = django_project(&venv, dir.path());
    let config = format!(
        "[plugin.wsgi]\napp = \"validated:application\"\nvenv = \"{}\"\npythonpath = [\"{}\", \"{}\"]\n\
         env = {{ PORTICO_TEST_APP = \"mysite.wsgi:application\", DJANGO_SETTINGS_MODULE = \"mysite.settings\" }}\n\
         [[mount]]\nprefix = \"/dj\"\napp = \"wsgi\"\n",
        venv.display(),
        project.display(),
        app.display()
    );
    let server = serve(&plugin, &dir, &config, &[]);
    let r = server.get("/dj/hi/");
    assert_eq!(
        (r.status, r.text()),
        (200, "hi from Django, reverse=/dj/hi/".to_owned()),
        "{}{}",
        r.summary(),
        server.context()
    );
    let r = server.get("/dj/admin/");
    assert_eq!(r.status, 302, "{}", r.summary());
    assert_eq!(r.header("location"), Some("/dj/admin/login/?next=/dj/admin/"));
    let r = server.get("/dj/admin/login/");
    assert_eq!(r.status, 200, "{}", r.summary());
    // Django writes Set-Cookie with a leading space; the bridge strips it.
    let cookie =
        r.header_all("set-cookie").into_iter().find(|c| c.starts_with("csrftoken=")).expect("a csrftoken cookie");
    let token_cookie = cookie.split(';').next().unwrap().to_owned();
    let page = r.text();
    let token = page
        .split("name=\"csrfmiddlewaretoken\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF token in the login form")
        .to_owned();
    let login = |token: &str, cookie: Option<&str>| {
        let body = format!("csrfmiddlewaretoken={token}&username=nobody&password=wrong&next=/dj/admin/");
        let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
        let req = format!(
            "POST /dj/admin/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\n{cookie}Referer: http://127.0.0.1/dj/admin/login/\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        server.request(req.as_bytes())
    };
    let r = login(&token, Some(&token_cookie));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(r.text().contains("Please enter the correct username and password"), "{}", r.summary());
    assert_eq!(login("forged", None).status, 403, "no CSRF cookie: refused");
    assert_eq!(server.get("/dj/nope").status, 404);
    server.assert_alive();
}

fn scripts_config(venv: &Path, scripts: &Path, extra: &str) -> String {
    format!("[plugin.wsgi]\nvenv = \"{}\"\nscripts = \"{}\"\n{extra}", venv.display(), scripts.display())
}

#[test]
fn the_tutorials_scripts_answer_at_their_names_and_compiled_plugins_win() {
    let Some((plugin, venv)) = wsgi() else { return };
    let dir = TempDir::new("wsgi-scripts");
    let scripts = copy_fixture("scripts", dir.path());
    let server = serve(&plugin, &dir, &scripts_config(&venv, &scripts, ""), &[]);
    let r = server.get("/pytime.py");
    assert_eq!(r.status, 200, "{}{}", r.summary(), server.context());
    let text = r.text();
    assert!(
        text.ends_with(&format!(" {}\n", year())) && text.split_whitespace().count() == 5,
        "time.ctime(): {text:?}"
    );
    // The compiled hello wins, with a warning; the script is never run.
    assert_eq!(server.get("/hello.py").text(), "Hello, world!\n");
    server.wait_for_line(0, &["compiled plugin hello", "not the script"], Duration::from_secs(5));
    // By file path only: /os.py is not the standard library's os.
    assert_eq!(server.get("/os.py").status, 404);
    assert_eq!(server.get("/static.txt").text(), "static file\n");
    let r = server.get("/echo.py/a%20b?q=1");
    let json = r.json();
    assert_eq!((json["script_name"].as_str(), json["path_info"].as_str()), (Some("/echo.py"), Some("/a b")));
    assert_eq!(json["query_string"], "q=1");
    server.assert_alive();
}

fn year() -> i32 {
    let out = Command::new("date").arg("+%Y").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn scripts_pass_through_the_middleware_of_the_wsgi_mount() {
    let Some((plugin, venv)) = wsgi() else { return };
    let dir = TempDir::new("wsgi-filtered");
    let scripts = copy_fixture("scripts", dir.path());
    let config = scripts_config(
        &venv,
        &scripts,
        "[plugin.ip_filter]\nallow = [\"10.0.0.0/8\"]\n\n[[mount]]\nprefix = \"/py\"\napp = \"wsgi\"\nmiddleware = [\"ip_filter\"]\n",
    );
    let path = dir.path().join("portico.toml");
    std::fs::write(&path, config).unwrap();
    let server = Server::builder()
        .plugins(&["hello", "ip_filter"])
        .plugin_file("wsgi.so", &plugin)
        .args(["--config".to_owned(), path.display().to_string()])
        .start();
    assert_eq!(server.get("/pytime.py").status, 403, "the script is behind the mount's filter");
    assert_eq!(server.get("/py/anything").status, 403);
    assert_eq!(server.get("/hello.py").status, 200);
}

#[test]
fn pep_3333_corner_by_corner() {
    let Some((plugin, venv)) = wsgi() else { return };
    let dir = TempDir::new("wsgi-pep");
    let scripts = copy_fixture("scripts", dir.path());
    let server = serve(&plugin, &dir, &scripts_config(&venv, &scripts, ""), &[]);

    let req = b"GET /pep.py/environ?x=%20 HTTP/1.1\r\nHost: example.org:8080\r\nX-Multi: a\r\nX-Multi: b\r\n\
                X_Spoof: 1\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let r = server.request(req);
    let env = r.json();
    assert_eq!(
        (env["PATH_INFO"].as_str(), env["QUERY_STRING"].as_str()),
        (Some("/environ"), Some("x=%20")),
        "{}",
        r.summary()
    );
    assert_eq!(env["SCRIPT_NAME"], "/pep.py");
    assert_eq!(env["HTTP_X_MULTI"], "a, b", "repeats joined");
    assert!(env.get("HTTP_X_SPOOF").is_none(), "names with _ dropped: {env}");
    assert_eq!((env["CONTENT_TYPE"].as_str(), env["CONTENT_LENGTH"].as_str()), (Some("text/plain"), Some("0")));
    assert!(env.get("HTTP_CONTENT_TYPE").is_none() && env.get("HTTP_CONTENT_LENGTH").is_none());
    assert_eq!((env["SERVER_NAME"].as_str(), env["wsgi.url_scheme"].as_str()), (Some("example.org"), Some("http")));
    assert_eq!(env["REMOTE_ADDR"], "127.0.0.1");
    assert_eq!(env["wsgi.version"], serde_json::json!([1, 0]));
    assert_eq!(env["wsgi.input_terminated"], true);
    assert_eq!(env["portico.raw_headers"][1], serde_json::json!(["X-Multi", "a"]));
    // ISO-8859-1: the UTF-8 bytes of é arrive as two characters.
    let r = server.request(b"GET /pep.py/caf%C3%A9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 404);
    let r = server.get("/echo.py/caf%C3%A9");
    assert_eq!(r.json()["path_info"], "/caf\u{c3}\u{a9}");

    let r = post(&server, "/pep.py/input", "text/plain", b"line one\nline two\nthree");
    let json = r.json();
    assert_eq!((json["first"].as_str(), json["two"].as_str()), (Some("line one\n"), Some("li")), "{}", r.summary());
    assert_eq!(json["rest"], serde_json::json!(["ne two\n", "three"]));
    let r = post(&server, "/pep.py/iterate", "text/plain", b"a\nb\nc\n");
    assert_eq!(r.text(), "3 lines");

    let mark = server.log_mark();
    assert_eq!(server.get("/pep.py/errors").text(), "logged");
    server.wait_for_line(mark, &["line one"], Duration::from_secs(5));
    server.wait_for_line(mark, &["line two"], Duration::from_secs(5));
    server.wait_for_line(mark, &["\\x1B[31mred"], Duration::from_secs(5));
    assert!(!server.stderr_text().contains("\x1b[31mred"), "wsgi.errors is escaped");

    assert_eq!(server.get("/pep.py/write").text(), "written and returned");
    let r = server.get("/pep.py/generator");
    assert_eq!((r.status, r.header("x-late"), r.text()), (201, Some("yes"), "late head".to_owned()), "{}", r.summary());
    let r = server.get("/pep.py/exc-before");
    assert_eq!((r.status, r.text()), (500, "replaced".to_owned()), "exc_info before the head replaces it");
    // exc_info after the head: the body is cut and the connection closed.
    let raw = server.raw(b"GET /pep.py/exc-after HTTP/1.1\r\nHost: x\r\n\r\n");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200") && text.contains("partial") && !text.contains("never"), "{text}");
    assert!(!text.ends_with("0\r\n\r\n"), "no clean end of a chunked body: {text}");

    let r = server.get("/pep.py/write-exc");
    assert_eq!((r.status, r.text()), (500, "error page".to_owned()), "exc_info drops what write() gave");
    for (corner, error) in [
        ("/second-call", "AssertionError"),
        ("/bad-header", "ValueError"),
        ("/hop", "ValueError"),
        ("/str-body", "TypeError"),
        ("/raise", "KeyError"),
    ] {
        let mark = server.log_mark();
        let r = server.get(&format!("/pep.py{corner}"));
        assert_eq!(r.status, 500, "{corner}: {}", r.summary());
        assert!(r.header("injected").is_none());
        server.wait_for_line(mark, &[error], Duration::from_secs(5));
    }
    let r = server.get("/pep.py/space-header");
    assert_eq!(r.header("set-cookie"), Some("a=b; Path=/"), "surrounding whitespace stripped");

    let before: u32 = server.get("/pep.py/closed").text().parse().unwrap();
    assert_eq!(server.get("/pep.py/close").text(), "ab");
    let raw = server.raw(b"GET /pep.py/close-fail HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(String::from_utf8_lossy(&raw).contains("\r\n\r\n"), "a head, then the cut");
    let after: u32 = server.get("/pep.py/closed").text().parse().unwrap();
    assert_eq!(after, before + 2, "close() called after success and after a failure mid-body");

    assert_eq!(server.get("/pep.py/stash").text(), "stashed");
    let r = server.get("/pep.py/use-stashed");
    assert_eq!(r.text(), "start_response: RuntimeError\ninput: ValueError\nerrors: ValueError", "{}", r.summary());

    let r = server.get("/pep.py/file");
    let source = std::fs::read(scripts.join("pep.py")).unwrap();
    assert_eq!(r.body, source[3..], "file_wrapper from the file's position");
    assert_eq!(r.header("content-length"), Some(&*(source.len() - 3).to_string()));
    server.assert_alive();
}

#[test]
fn sighup_in_one_process_reimports_the_application_and_a_broken_edit_keeps_the_old_one() {
    let Some((plugin, venv)) = wsgi() else { return };
    let dir = TempDir::new("wsgi-reload");
    let app = copy_fixture("app", dir.path());
    let scripts = copy_fixture("scripts", dir.path());
    let config = flask_config(&venv, &app, &format!("scripts = \"{}\"", scripts.display()));
    let server = serve(&plugin, &dir, &config, &[]);
    assert_eq!(server.get("/shop/hello").text(), "Hello, World!");
    let edit = |from: &str, to: &str| {
        let path = app.join("flaskapp.py");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace(from, to)).unwrap();
    };
    edit("\"Hello, World!\"", "\"Hello, reloaded World!\"");
    std::fs::write(
        scripts.join("pytime.py"),
        "def application(e, s):\n    s(\"200 OK\", [])\n    return [b\"new script\"]\n",
    )
    .unwrap();
    let mark = server.log_mark();
    server.hup();
    server.wait_for_line(mark, &["plugin wsgi refreshed"], Duration::from_secs(10));
    assert_eq!(server.get("/shop/hello").text(), "Hello, reloaded World!");
    assert_eq!(server.get("/pytime.py").text(), "new script");
    edit("def hello():", "def hello(:");
    let mark = server.log_mark();
    server.hup();
    server.wait_for_line(mark, &["reload failed", "SyntaxError"], Duration::from_secs(10));
    assert_eq!(server.get("/shop/hello").text(), "Hello, reloaded World!", "the old application serves on");
    server.assert_alive();
}

#[test]
fn worker_processes_each_run_an_interpreter_and_a_generation_reload_loads_new_code() {
    let Some((plugin, venv)) = wsgi() else { return };
    let dir = TempDir::new("wsgi-workers");
    let app = copy_fixture("app", dir.path());
    let server = serve(&plugin, &dir, &flask_config(&venv, &app, ""), &["--workers", "2"]);
    let r = server.get("/shop/json");
    assert_eq!(r.json()["multiprocess"], true, "{}{}", r.summary(), server.context());
    let path = app.join("flaskapp.py");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"Hello, World!\"", "\"Hello, next generation!\"")).unwrap();
    server.hup();
    server.wait_for_body("/shop/hello", "Hello, next generation!", Duration::from_secs(30));
    server.assert_alive();
}

#[test]
fn a_burst_of_slow_python_requests_never_slows_hello_or_static_files() {
    let Some((plugin, venv)) = wsgi() else { return };
    let dir = TempDir::new("wsgi-burst");
    let app = copy_fixture("app", dir.path());
    let config = flask_config(&venv, &app, "")
        .replace("app = \"wsgi\"\n", "app = \"wsgi\"\nmax_concurrency = 12\nqueue = 64\ntimeout = 30\n");
    let server = serve(&plugin, &dir, &config, &["--threads", "16"]);
    assert_eq!(server.get("/shop/hello").status, 200, "{}", server.context());
    let addr = server.addr();
    let started = Instant::now();
    let slow: Vec<_> = (0..50)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = support::Conn::open(addr);
                c.set_read_timeout(Duration::from_secs(30));
                c.send(b"GET /shop/sleep?s=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                c.try_read_response(false).map(|r| r.status).unwrap_or(0)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut latencies = Vec::new();
    let mut conn = support::Conn::open(addr);
    conn.set_read_timeout(Duration::from_secs(5));
    while started.elapsed() < Duration::from_secs(3) {
        for path in ["/hello.py", "/static.txt"] {
            let t = Instant::now();
            conn.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
            let r = conn.try_read_response(false).expect("a response");
            latencies.push(t.elapsed());
            assert_eq!(r.status, 200);
        }
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let statuses: Vec<u16> = slow.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(statuses.iter().all(|&s| s == 200), "every slow request answered: {statuses:?}");
    eprintln!("{} fast requests during the burst, p99 {p99:?}", latencies.len());
    assert!(p99 < Duration::from_millis(10), "p99 of /hello.py and a static file: {p99:?}");
}

#[test]
fn a_segfault_inside_python_takes_only_its_worker_and_request() {
    let Some((plugin, venv)) = wsgi() else { return };
    let dir = TempDir::new("wsgi-crash");
    let scripts = copy_fixture("scripts", dir.path());
    let server = serve(&plugin, &dir, &scripts_config(&venv, &scripts, ""), &["--workers", "2"]);
    assert_eq!(server.get("/pytime.py").status, 200, "{}", server.context());
    let mark = server.log_mark();
    let mut crashing = support::Conn::open(server.addr());
    crashing.set_read_timeout(Duration::from_secs(10));
    crashing.send(b"GET /crash.py HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(crashing.try_read_response(false).is_err(), "the crashing request gets no response");
    server.wait_for_line(mark, &["SIGSEGV"], Duration::from_secs(10));
    for _ in 0..10 {
        assert_eq!(server.get("/pytime.py").status, 200, "the other worker and the replacement serve");
    }
    server.assert_alive();
}
