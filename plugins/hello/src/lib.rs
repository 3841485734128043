//! `hello`: the smallest Portico application. `GET /hello.py` answers `Hello, world!`.
//! Its body is static data, so a request allocates nothing in the plugin.

use portico_api::{Body, Environ, StartResponse, export_app, status};

fn hello(_environ: &mut Environ<'_>, start_response: &mut StartResponse<'_, '_>) -> Body {
    start_response.start(status::OK, &[("Content-Type", "text/plain; charset=utf-8")]);
    Body::from("Hello, world!\n")
}

export_app!(name: "hello", version: env!("CARGO_PKG_VERSION"), app: hello, never_blocks: true);
