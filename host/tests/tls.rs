//! TLS (`--tls-cert` / `--tls-key`) with the tools an operator checks it with: certificates
//! made by `openssl req`, requests by `curl --cacert`, the handshake seen by
//! `openssl s_client` (TLS 1.3 and 1.2, ALPN `http/1.1`), and a certificate replaced and read
//! again on SIGHUP while a TLS connection stays open and keeps being answered.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{Server, TempDir};

/// A self-signed P-256 certificate for `localhost` and 127.0.0.1 named `cn`: (cert, key).
fn certificate(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={cn}"), "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("running openssl (scripts/test installs it)");
    assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// `curl --cacert CERT URL`: (HTTP status, body).
fn curl(ca: &Path, url: &str, extra: &[&str]) -> (String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(ca)
        .args(extra)
        .arg(url)
        .output()
        .expect("running curl (scripts/test installs it)");
    assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    let mut body = out.stdout;
    let at = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(&body[at + 1..]).into_owned();
    body.truncate(at);
    (code, body)
}

/// `openssl s_client` to `addr` with `flags`, its stdout once the connection is closed.
fn s_client(addr: std::net::SocketAddr, ca: &Path, flags: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-servername", "localhost", "-alpn", "http/1.1"])
        .arg("-CAfile")
        .arg(ca)
        .args(flags)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl s_client");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TLS client that reads `GET /slow.bin` (`Connection: close`) 8 KiB every 8 ms through an
/// 8 KiB receive buffer, and prints the body's length.
const SLOW_READER: &str = r#"
import socket, ssl, sys, time
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
sock.connect(("127.0.0.1", int(sys.argv[1])))
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(sock)
s.sendall(b"GET /slow.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
data = b""
while True:
    try:
        d = s.recv(8192)
    except ssl.SSLError as e:
        print("error", e); break
    if not d:
        break
    data += d
    time.sleep(0.008)
head, _, body = data.partition(b"\r\n\r\n")
print(head.split(b"\r\n")[0].decode(), len(body))
"#;

#[test]
fn tls_serves_plugins_and_files_and_says_https() {
    let dir = TempDir::new("portico-tls");
    let (cert, key) = certificate(dir.path(), "first");
    let big: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let server = Server::builder()
        .plugins(&["hello", "echo"])
        .docroot_file("big.bin", big.clone())
        .docroot_file("slow.bin", big.iter().cycle().take(3_000_000).copied().collect::<Vec<u8>>())
        .args(["--tls-cert".as_ref(), cert.as_os_str(), "--tls-key".as_ref(), key.as_os_str()])
        .start();
    let base = format!("https://localhost:{}", server.addr().port());
    let resolve = format!("localhost:{}:127.0.0.1", server.addr().port());
    let r = |path: &str| curl(&cert, &format!("{base}{path}"), &["--resolve", &resolve]);
    assert_eq!(r("/hello.py"), ("200".into(), b"Hello, world!\n".to_vec()));
    let (code, body) = r("/echo.py/x");
    assert_eq!(code, "200");
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["url_scheme"], "https", "wsgi.url_scheme over TLS: {j}");
    let (code, body) = r("/big.bin");
    assert_eq!(code, "200");
    assert!(body == big, "1.5 MB file over TLS: {} bytes back", body.len());
    // A `Connection: close` response of 3 MB read slowly through a small receive buffer
    // (~1 MB/s, past the 2 s a lingering close waits for input): every byte reaches the
    // client before the close (python3's ssl module as the client).
    let slow = Command::new("python3")
        .arg("-c")
        .arg(SLOW_READER)
        .arg(server.addr().port().to_string())
        .output()
        .expect("running python3");
    let said = String::from_utf8_lossy(&slow.stdout);
    assert!(slow.status.success(), "{said}{}", String::from_utf8_lossy(&slow.stderr));
    assert!(said.trim().ends_with(" 3000000"), "a slow reader got: {said}");
    // TLS 1.2 too.
    let (code, _) = curl(&cert, &format!("{base}/hello.py"), &["--resolve", &resolve, "--tls-max", "1.2"]);
    assert_eq!(code, "200");

    let v13 = s_client(server.addr(), &cert, &["-tls1_3"]);
    assert!(v13.contains("TLSv1.3") && v13.contains("ALPN protocol: http/1.1"), "{v13}");
    assert!(v13.contains("Verify return code: 0 (ok)"), "{v13}");
    let v12 = s_client(server.addr(), &cert, &["-tls1_2"]);
    assert!(v12.contains("TLSv1.2") && v12.contains("ALPN protocol: http/1.1"), "{v12}");

    // Plain HTTP to the TLS port is refused by the handshake; the server goes on.
    let plain = support::try_get(server.addr(), "/hello.py");
    assert!(plain.is_err() || plain.as_ref().is_ok_and(|r| r.status != 200), "{plain:?}");
    assert_eq!(r("/hello.py").0, "200");
    let (_, status) = r("/_portico/status?format=json");
    let j: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(j["setup"]["listeners"][0], format!("https://{}", server.addr()), "{j}");
}

#[test]
fn sighup_reads_a_new_certificate_and_an_open_connection_keeps_working() {
    let dir = TempDir::new("portico-tls-reload");
    let (first, first_key) = certificate(dir.path(), "first");
    let (cert, key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    std::fs::copy(&first, &cert).unwrap();
    std::fs::copy(&first_key, &key).unwrap();
    let server = Server::builder()
        .plugins(&["hello"])
        .args(["--tls-cert".as_ref(), cert.as_os_str(), "--tls-key".as_ref(), key.as_os_str()])
        .start();
    // A TLS connection that stays open across the reload: openssl s_client reading requests
    // from its stdin, its output lines read by a thread.
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &server.addr().to_string(), "-CAfile"])
        .arg(&first)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("running openssl s_client");
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = client.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stdin = client.stdin.take().unwrap();
    let mut ask = |what: &str| {
        stdin.write_all(b"GET /hello.py HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        stdin.flush().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("Hello, world!") => return,
                Ok(_) => {}
                Err(_) => panic!("no answer on the open TLS connection {what}{}", server.context()),
            }
        }
    };
    ask("before the reload");

    let (second, second_key) = certificate(dir.path(), "second");
    support::install_file(&second, &cert);
    support::install_file(&second_key, &key);
    let mark = server.log_mark();
    server.hup();
    server.wait_for_line(mark, &["TLS certificate", "read again"], Duration::from_secs(10));
    ask("after the reload");
    let _ = client.kill();
    let _ = client.wait();

    // New connections get the new certificate.
    let shown = s_client(server.addr(), &second, &[]);
    assert!(shown.contains("CN=second") || shown.contains("CN = second"), "{shown}");
    assert!(shown.contains("Verify return code: 0 (ok)"), "{shown}");

    // A broken certificate on SIGHUP: logged, the previous one keeps serving.
    std::fs::write(&cert, b"not a certificate").unwrap();
    let mark = server.log_mark();
    server.hup();
    server.wait_for_line(mark, &["TLS certificate not reloaded"], Duration::from_secs(10));
    assert!(s_client(server.addr(), &second, &[]).contains("Verify return code: 0 (ok)"));
}

#[test]
fn an_unusable_certificate_stops_the_start_with_one_line() {
    let dir = TempDir::new("portico-tls-bad");
    let (cert, _) = certificate(dir.path(), "first");
    let (_, other_key) = certificate(dir.path(), "other");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, b"junk").unwrap();
    for (c, k, needle) in [
        (&junk, &other_key, "--tls-cert"),
        (&cert, &junk, "--tls-key"),
        (&cert, &other_key, "--tls-cert and --tls-key"),
    ] {
        for workers in ["0", "1"] {
            let out = Command::new(env!("CARGO_BIN_EXE_portico"))
                .args(["--bind", "127.0.0.1:0", "--workers", workers, "--docroot"])
                .arg(support::workspace_root().join("html"))
                .arg("--tls-cert")
                .arg(c)
                .arg("--tls-key")
                .arg(k)
                .env("NO_COLOR", "1")
                .output()
                .unwrap();
            let error = support::single_error_line(&out, 1, &format!("--workers {workers}"));
            assert!(error.contains(needle), "{error}");
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_portico")).arg("--tls-cert").arg(&cert).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "--tls-cert needs --tls-key");
}
