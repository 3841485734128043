use super::*;
use portico_api::status;
use portico_api::testing::{TestRequest, TestResponse};

fn headers(toml: &str) -> Headers {
    Headers::from_toml(toml).unwrap_or_else(|e| panic!("{toml}: {e}"))
}

fn app(environ: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>) -> Body {
    match environ.path_info().as_ref() {
        "/panic" => panic!("app broke"),
        "/missing" => {
            sr.start(status::NOT_FOUND, &[("Content-Type", "text/plain")]);
            Body::from("nope\n")
        }
        _ => {
            sr.start(
                status::OK,
                &[
                    ("Content-Type", "text/html"),
                    ("x-frame-options", "SAMEORIGIN"),
                    ("X-Powered-By", "portico-api"),
                    ("Set-Cookie", "a=1"),
                    ("Set-Cookie", "b=2"),
                ],
            );
            Body::from("<p>hi</p>\n")
        }
    }
}

const SECURITY: &str = r#"
add = { "X-Frame-Options" = "DENY", "X-Content-Type-Options" = "nosniff" }
remove = ["X-Powered-By"]
"#;

fn through(h: &Headers, path: &str) -> TestResponse {
    TestRequest::get(path).call_middleware(h, &app)
}

#[test]
fn adds_replaces_and_removes() {
    let r = through(&headers(SECURITY), "/");
    assert_eq!(r.status, "200 OK");
    assert_eq!(r.header_all("X-Frame-Options"), ["DENY"], "the app's SAMEORIGIN is replaced: {r:?}");
    assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(r.header("X-Powered-By"), None);
    assert_eq!(r.header_all("Set-Cookie"), ["a=1", "b=2"], "other fields kept, repeats and order too");
    assert_eq!(r.header("Content-Type"), Some("text/html"));
    assert_eq!(r.text(), "<p>hi</p>\n");
}

#[test]
fn error_responses_of_the_app_get_the_fields_too() {
    let h = headers(SECURITY);
    let r = through(&h, "/missing");
    assert_eq!((r.code(), r.header("X-Frame-Options")), (404, Some("DENY")));
    let r = through(&h, "/panic");
    assert_eq!((r.code(), r.header("X-Frame-Options")), (500, Some("DENY")));
    assert!(r.log.iter().any(|l| l.contains("app broke")));
}

#[test]
fn sub_table_form() {
    let h = headers(
        r#"
[add]
"Referrer-Policy" = "no-referrer"
Content-Security-Policy = "default-src 'self'"
"#,
    );
    let r = through(&h, "/");
    assert_eq!(r.header("Referrer-Policy"), Some("no-referrer"));
    assert_eq!(r.header("Content-Security-Policy"), Some("default-src 'self'"));
}

#[test]
fn empty_config_passes_through() {
    let h = headers("");
    assert_eq!(h, Headers::default());
    let r = through(&h, "/");
    assert_eq!(r.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(r.header("X-Powered-By"), Some("portico-api"));
}

#[test]
fn config_errors_name_the_key() {
    let cases = [
        (r#"add = { "X Frame" = "DENY" }"#, r#"add."X Frame": not a field name"#),
        (r#"add = { "" = "x" }"#, r#"add."": not a field name"#),
        (
            "add = { \"X-A\" = \"a\\r\\nSet-Cookie: evil=1\" }",
            r#"add."X-A": value contains the control character '\r'"#,
        ),
        (r#"add = { "X-A" = "a\u0000" }"#, r#"add."X-A": value contains the control character '\0'"#),
        (r#"add = { "X-A" = " padded" }"#, r#"add."X-A": value has leading or trailing whitespace"#),
        (r#"add = { "Connection" = "close" }"#, r#"add."Connection": the host writes this field"#),
        (r#"add = { "content-length" = "0" }"#, r#"add."content-length": the host writes this field"#),
        (r#"add = { "X-A" = "1", "x-a" = "2" }"#, r#"add."x-a": the same field as add."X-A""#),
        (r#"add = { "X-A" = 1 }"#, "invalid type: integer `1`, expected a string"),
        (r#"remove = ["Server", "Bad Name"]"#, r#"remove[1] ("Bad Name"): not a field name"#),
        (r#"adds = {}"#, "unknown field `adds`"),
        ("add = {", "line 1 of [plugin.headers]"),
    ];
    for (toml, expected) in cases {
        let err = Headers::from_toml(toml).expect_err(toml);
        assert!(err.contains(expected), "{toml}\n got: {err}\nwant: {expected}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
}

#[test]
fn tab_is_allowed_inside_a_value() {
    let h = headers("add = { \"X-A\" = \"a\\tb\" }");
    assert_eq!(through(&h, "/").header("X-A"), Some("a\tb"));
}

#[test]
fn the_exported_entry_points() {
    // init is not called here: the default configuration does nothing.
    let root = crate::portico_root_module();
    assert!(root.init().is_some() && root.middleware().is_some());
    let r = TestRequest::get("/").call_plugin_middleware(root, &app);
    assert_eq!((r.code(), r.header("X-Powered-By")), (200, Some("portico-api")));
    let r = TestRequest::get("/").call_plugin(root);
    assert_eq!(r.code(), 404);
}

#[test]
fn the_exported_init_refuses_bad_config() {
    // Only failing configurations: a successful init would set this test binary's fields.
    let root = crate::portico_root_module();
    let init = root.init().expect("headers exports init");
    let err = init(abi_stable::std_types::RStr::from_str("add = { \"X-A\" = \"a\\nb\" }")).into_result().unwrap_err();
    assert!(err.as_str().starts_with(r#"add."X-A": value contains the control character '\n'"#), "{err}");
}
