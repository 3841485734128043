//! `dispatch`: path dispatch with the SDK's [`Router`], the classic WSGI tutorial's
//! example.
//!
//! | request | answer |
//! |---|---|
//! | `GET /dispatch.py/dog` | `This is dog!` |
//! | `GET /dispatch.py/cat` | `This is cat!` |
//! | `GET /dispatch.py/hello/{name}` | `Hello, {name}!` (`name` percent-decoded) |
//! | `HEAD` of any of these | the `GET` answer's head |
//! | another method on these paths (`POST /dog`) | `405 Method Not Allowed`, `Allow: GET, HEAD` |
//! | any other path | `404 Not Found` |
//!
//! Bodies are `text/plain; charset=utf-8`. No configuration: it takes no `init`, and a
//! `[plugin.dispatch]` table is ignored.

use portico_api::{Body, Environ, Params, Router, StartResponse, export_app, status};

fn text(start_response: &mut StartResponse<'_, '_>, body: impl Into<Body>) -> Body {
    start_response.start(status::OK, &[("Content-Type", "text/plain; charset=utf-8")]);
    body.into()
}

fn dog(_: &mut Environ<'_>, start_response: &mut StartResponse<'_, '_>, _: &Params) -> Body {
    text(start_response, "This is dog!\n")
}

fn cat(_: &mut Environ<'_>, start_response: &mut StartResponse<'_, '_>, _: &Params) -> Body {
    text(start_response, "This is cat!\n")
}

fn hello(_: &mut Environ<'_>, start_response: &mut StartResponse<'_, '_>, params: &Params) -> Body {
    let name = params.get("name").unwrap_or_default();
    text(start_response, format!("Hello, {name}!\n"))
}

/// The plugin's routes.
pub fn router() -> Router {
    Router::new().route("GET", "/dog", dog).route("GET", "/cat", cat).route("GET", "/hello/{name}", hello)
}

export_app!(name: "dispatch", version: env!("CARGO_PKG_VERSION"), app: router(), never_blocks: true);

#[cfg(test)]
mod tests {
    use portico_api::testing::{TestRequest, TestResponse};

    fn call(method: &str, path: &str) -> TestResponse {
        TestRequest::new(method, path).call_plugin(crate::portico_root_module())
    }

    #[test]
    fn animals() {
        let r = call("GET", "/dog");
        assert_eq!((r.status.as_str(), r.text().as_str()), ("200 OK", "This is dog!\n"));
        assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
        assert_eq!(call("GET", "/cat").text(), "This is cat!\n");
    }

    #[test]
    fn hello_name() {
        assert_eq!(call("GET", "/hello/Ada").text(), "Hello, Ada!\n");
        assert_eq!(call("GET", "/hello/Ada Lovelace").text(), "Hello, Ada Lovelace!\n");
        assert_eq!(call("GET", "/hello/").code(), 404);
        assert_eq!(call("GET", "/hello").code(), 404);
    }

    #[test]
    fn wrong_method_is_405() {
        let r = call("POST", "/dog");
        assert_eq!(r.code(), 405);
        assert_eq!(r.header("Allow"), Some("GET, HEAD"));
        assert_eq!(call("DELETE", "/hello/x").header("Allow"), Some("GET, HEAD"));
    }

    #[test]
    fn head_is_get() {
        let r = call("HEAD", "/cat");
        assert_eq!(r.code(), 200);
        // The host drops the body of a HEAD answer; the handler need not.
        assert_eq!(r.text(), "This is cat!\n");
    }

    #[test]
    fn anything_else_is_404() {
        for path in ["", "/", "/dog/", "/bird", "/dog/x", "/DOG"] {
            let r = call("GET", path);
            assert_eq!(r.code(), 404, "{path}");
            assert_eq!(r.text(), "Not Found\n");
        }
    }

    #[test]
    fn exports_no_middleware_and_no_init() {
        let root = crate::portico_root_module();
        assert!(root.middleware().is_none());
        assert!(root.init().is_none());
        assert!(root.panic_unwind());
    }
}
