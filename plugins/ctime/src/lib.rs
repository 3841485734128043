//! `ctime`: the current time as `text/plain`, the classic WSGI tutorial application
//! (`time.ctime()`), here in IMF-fixdate (RFC 9110 §5.6.7).

use std::time::SystemTime;

use portico_api::{Body, Environ, StartResponse, export_app, status};

fn ctime(_environ: &mut Environ<'_>, start_response: &mut StartResponse<'_, '_>) -> Body {
    start_response.start(status::OK, &[("Content-Type", "text/plain; charset=utf-8")]);
    Body::from(format!("{}\n", httpdate::fmt_http_date(SystemTime::now())))
}

export_app!(name: "ctime", version: env!("CARGO_PKG_VERSION"), app: ctime, never_blocks: true);
