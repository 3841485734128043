//! The plugin ABI grows within 0.2.x in both directions (issue 10, part 4): a plugin built
//! against a `portico-api` that gained a root-module field, a `BodyStream` method and a `Body`
//! variant runs in this host; a host built against that grown API runs this workspace's
//! plugins. The grown API is a generated copy of `plugin-api/` (see `support::GROWN_API`),
//! so these tests follow the real source as it changes.

mod support;

use std::process::Command;
use std::time::Duration;

use support::Server;

#[test]
fn a_plugin_built_against_a_grown_api_runs_in_this_host() {
    let grown = support::grown_plugin();
    let server = Server::builder().plugins(&["hello"]).plugin_file("grown.so", &grown).start();
    let r = server.get("/grown.py");
    assert_eq!((r.status, r.text()), (200, "grown plugin\n".to_owned()), "{}{}", r.summary(), server.context());
    let r = server.get("/grown.py/stream");
    assert_eq!((r.status, r.text()), (200, "one two\n".to_owned()), "{}", r.summary());
    // The variant this host does not know: a 500 and a line saying why, nothing worse.
    let r = server.get("/grown.py/variant");
    assert_eq!(r.status, 500, "{}", r.summary());
    server.wait_for_line(0, &["plugin grown", "does not", "know"], Duration::from_secs(5));
    assert_eq!(server.get("/hello.py").status, 200);
    server.assert_alive();
}

#[test]
fn a_host_built_against_a_grown_api_runs_plugins_built_against_this_one() {
    let host = support::grown_host();
    let plugins = [
        support::plugin("hello"),
        support::plugin("stream"),
        support::grown_plugin(),
        support::abi_next(),
        support::abi_old(),
    ];
    let out = Command::new(&host).args(&plugins).output().expect("running the grown host");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "grown host failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no line for {name} in:\n{text}"))
            .to_owned()
    };
    // This workspace's plugins (0.2.2, a prefix of the grown layout): loaded; the grown field reads as
    // absent; the grown method, called on an old plugin's stream, runs its default body.
    let hello = line("hello");
    assert!(hello.contains("loaded") && hello.contains("grown=None"), "{hello}");
    assert!(hello.contains("status=200 OK") && hello.contains(r#"body="Hello, world!\n""#), "{hello}");
    let stream = line("stream");
    assert!(stream.contains("grown=None") && stream.contains(r#"body="chunk 0\nchunk 1\n""#), "{stream}");
    assert!(stream.contains("grown_hint=7"), "the default body answers for an old stream: {stream}");
    // A plugin of its own layout sees the grown field.
    let grown = line("grown");
    assert!(grown.contains("grown=Some(Some(42))") && grown.contains(r#"body="grown plugin\n""#), "{grown}");
    // Other 0.minors stay refused.
    assert!(line("abi_next").contains("refused"), "{text}");
    assert!(line("abi_old").contains("refused"), "{text}");
}
