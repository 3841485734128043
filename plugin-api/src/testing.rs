//! Calling an application or a middleware in-process, without a host: for plugins' unit
//! tests.
//!
//! The call goes through the same panic fence as [`export_app!`](crate::export_app)'s entry
//! points, and a stand-in for the host's `start_response` that keeps what it is given and
//! applies the host's basic checks (status line, field syntax, a second call only with
//! `exc_info`).
//!
//! ```
//! use portico_api::testing::TestRequest;
//! use portico_api::{Body, Environ, StartResponse, status};
//!
//! fn hello(_: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>) -> Body {
//!     sr.start(status::OK, &[("Content-Type", "text/plain")]);
//!     Body::from("hi\n")
//! }
//!
//! let response = TestRequest::get("/").call(&hello);
//! assert_eq!(response.status, "200 OK");
//! assert_eq!(response.header("content-type"), Some("text/plain"));
//! assert_eq!(response.text(), "hi\n");
//! ```

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::sabi_types::RMut;
use abi_stable::std_types::{ROption, RResult, RSlice, RSliceMut, RStr, RString};

use crate::abi::{
    self, Body, Body_NE, Environ, ErrorStream, ErrorStream_TO, Field, Input, Input_TO, NextApplication,
    NextApplication_TO, PluginMod_Ref, StartResponse_TO,
};
use crate::middleware::Middleware;
use crate::sdk::{Application, guard};

/// A request to run through an application in a test. Built with [`TestRequest::new`] and
/// the setters; defaults: `HTTP/1.1`, `REMOTE_ADDR` `127.0.0.1`, `SCRIPT_NAME` `/test.py`,
/// `SERVER_NAME` `localhost`, port 8080, no fields, no body.
#[derive(Debug, Clone)]
pub struct TestRequest {
    method: String,
    script_name: String,
    path_info: Vec<u8>,
    query: Vec<u8>,
    target: Vec<u8>,
    protocol: String,
    server_name: String,
    remote_addr: String,
    remote_port: u16,
    headers: Vec<(String, String)>,
    extra: Vec<(String, String)>,
    body: Vec<u8>,
}

/// What the application answered, as the host would have seen it.
#[derive(Debug, Clone, Default)]
pub struct TestResponse {
    /// The status line of the last accepted `start_response` call (`""` if none was).
    pub status: String,
    /// The fields of the last accepted `start_response` call.
    pub headers: Vec<(String, String)>,
    /// How many `start_response` calls were accepted (a second one needs `exc_info`).
    pub start_calls: usize,
    /// The `exc_info` of the last accepted call, if it had one.
    pub exc_info: Option<String>,
    /// The body, every chunk of a stream concatenated.
    pub body: Vec<u8>,
    /// The lines written to `wsgi.errors`.
    pub log: Vec<String>,
    /// `start_response` calls the stand-in host refused, and a stream's failure, each with
    /// the reason.
    pub errors: Vec<String>,
}

impl TestResponse {
    /// The status code (`0` if `start_response` was never accepted).
    pub fn code(&self) -> u16 {
        self.status.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0)
    }

    /// The value of the first field named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The values of every field named `name` (ASCII case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    /// The body as text (invalid UTF-8 becomes U+FFFD).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl TestRequest {
    /// A request with `method` for `target`, a path with an optional `?query` (the path
    /// part becomes `PATH_INFO` as given, not percent-decoded).
    pub fn new(method: &str, target: &str) -> Self {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        TestRequest {
            method: method.to_owned(),
            script_name: "/test.py".to_owned(),
            path_info: path.as_bytes().to_vec(),
            query: query.as_bytes().to_vec(),
            target: format!("/test.py{target}").into_bytes(),
            protocol: "HTTP/1.1".to_owned(),
            server_name: "localhost".to_owned(),
            remote_addr: "127.0.0.1".to_owned(),
            remote_port: 40000,
            headers: Vec::new(),
            extra: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `GET target`.
    pub fn get(target: &str) -> Self {
        TestRequest::new("GET", target)
    }

    /// Appends a request header field (repeats are kept, in order).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets `REMOTE_ADDR` (an IP address in text form).
    pub fn remote_addr(mut self, addr: &str) -> Self {
        self.remote_addr = addr.to_owned();
        self
    }

    /// Sets `SERVER_PROTOCOL` (`HTTP/1.0` or `HTTP/1.1`).
    pub fn protocol(mut self, protocol: &str) -> Self {
        self.protocol = protocol.to_owned();
        self
    }

    /// Adds an [`Environ::extra`] key.
    pub fn extra(mut self, name: &str, value: &str) -> Self {
        self.extra.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the request body (`wsgi.input`) and `CONTENT_LENGTH`.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Runs `app` as the host runs an exported application (inside the panic fence).
    pub fn call(&self, app: &dyn Application) -> TestResponse {
        self.run(|environ, sr| {
            let app: Result<&dyn Application, &str> = Ok(app);
            guard::run_with(environ, sr, app).into_abi()
        })
    }

    /// Runs `middleware` as the host runs an exported middleware, with `next` as the rest of
    /// the pipeline (run, in its turn, inside the fence like an exported application).
    pub fn call_middleware(&self, middleware: &dyn Middleware, next: &dyn Application) -> TestResponse {
        self.run(|environ, sr| {
            let next = AppNext { app: next };
            let next = NextApplication_TO::from_ptr(&next, TD_Opaque);
            guard::run_middleware_with(environ, sr, next, Ok(middleware)).into_abi()
        })
    }

    /// Runs `middleware` as the host runs a middleware plugin called as a plain application
    /// (see [`guard::run_middleware_as_app`]): its next application answers 404.
    pub fn call_middleware_alone(&self, middleware: &dyn Middleware) -> TestResponse {
        self.run(|environ, sr| guard::run_middleware_as_app_with(environ, sr, Ok(middleware)).into_abi())
    }

    /// Runs a plugin's own `application` entry point, as the host calls it: pass the root
    /// module [`export_app!`](crate::export_app) generated, `crate::portico_root_module()`.
    /// Its `init` is not called (call it yourself if the test needs one).
    pub fn call_plugin(&self, root: PluginMod_Ref) -> TestResponse {
        let application = root.application();
        self.run(|environ, sr| application(environ, sr))
    }

    /// Runs a plugin's own `middleware` entry point, as the host calls it for a plugin listed
    /// as middleware in a pipeline, with `next` as the rest of the pipeline.
    ///
    /// # Panics
    /// If the plugin exports no middleware entry point (it was not exported with
    /// `export_app!(…, middleware: …)`).
    pub fn call_plugin_middleware(&self, root: PluginMod_Ref, next: &dyn Application) -> TestResponse {
        let ROption::RSome(middleware) = root.middleware() else {
            panic!("plugin {} exports no middleware entry point", root.name());
        };
        self.run(|environ, sr| {
            let next = AppNext { app: next };
            middleware(environ, sr, NextApplication_TO::from_ptr(&next, TD_Opaque))
        })
    }

    fn run(&self, f: impl FnOnce(&mut Environ<'_>, StartResponse_TO<'_, RMut<'_, ()>>) -> Body_NE) -> TestResponse {
        let fields: Vec<Field<'_>> = self.headers.iter().map(|(n, v)| Field::new(n, v)).collect();
        let extra: Vec<Field<'_>> = self.extra.iter().map(|(n, v)| Field::new(n, v)).collect();
        let content_type = self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-type"));
        let mut input = TestInput { body: &self.body, pos: 0 };
        let mut errors = TestErrors::default();
        let mut host = TestStartResponse::default();
        let body = {
            let mut environ = Environ {
                request_method: RStr::from_str(&self.method),
                script_name: RStr::from_str(&self.script_name),
                path_info: RSlice::from_slice(&self.path_info),
                query_string: RSlice::from_slice(&self.query),
                request_target: RSlice::from_slice(&self.target),
                server_protocol: RStr::from_str(&self.protocol),
                server_name: RStr::from_str(&self.server_name),
                server_port: 8080,
                remote_addr: RStr::from_str(&self.remote_addr),
                remote_port: self.remote_port,
                url_scheme: RStr::from_str("http"),
                content_type: RSlice::from_slice(content_type.map_or(&b""[..], |(_, v)| v.as_bytes())),
                content_length: if self.body.is_empty() {
                    ROption::RNone
                } else {
                    ROption::RSome(self.body.len() as u64)
                },
                headers: RSlice::from_slice(&fields),
                extra: RSlice::from_slice(&extra),
                input: Input_TO::from_ptr(RMut::new(&mut input), TD_Opaque),
                errors: ErrorStream_TO::from_ptr(RMut::new(&mut errors), TD_Opaque),
            };
            f(&mut environ, StartResponse_TO::from_ptr(RMut::new(&mut host), TD_Opaque))
        };
        let mut response = host.response;
        // This SDK knows every variant of its own version.
        let body = Body::from_abi(body).expect("a body of this portico-api version");
        for chunk in body.into_chunks() {
            match chunk {
                Ok(bytes) => response.body.extend_from_slice(&bytes),
                Err(e) => response.errors.push(e),
            }
        }
        response.log = errors.lines;
        response
    }
}

/// The host's next application, for [`TestRequest::call_middleware`].
struct AppNext<'n> {
    app: &'n dyn Application,
}

impl NextApplication for AppNext<'_> {
    fn call(&self, environ: &mut Environ<'_>, start_response: StartResponse_TO<'_, RMut<'_, ()>>) -> Body_NE {
        guard::run_with(environ, start_response, Ok(self.app)).into_abi()
    }
}

struct TestInput<'b> {
    body: &'b [u8],
    pos: usize,
}

impl Input for TestInput<'_> {
    fn read(&mut self, mut buf: RSliceMut<'_, u8>) -> RResult<usize, RString> {
        let rest = &self.body[self.pos..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        RResult::ROk(n)
    }
}

#[derive(Default)]
struct TestErrors {
    lines: Vec<String>,
}

impl ErrorStream for TestErrors {
    fn write(&mut self, msg: RStr<'_>) {
        self.lines.push(msg.as_str().to_owned());
    }
}

#[derive(Default)]
struct TestStartResponse {
    response: TestResponse,
}

impl TestStartResponse {
    fn check(status: &str, headers: &[Field<'_>]) -> Result<(), String> {
        let b = status.as_bytes();
        if b.len() < 4 || !b[..3].iter().all(u8::is_ascii_digit) || b[3] != b' ' || b[0] == b'0' {
            return Err(format!("bad status line {status:?}"));
        }
        for f in headers {
            let name = std::str::from_utf8(f.name.as_slice()).map_err(|_| "field name is not UTF-8".to_owned())?;
            if !crate::router::is_token(name) {
                return Err(format!("field name {name:?} is not a token"));
            }
            if f.value.iter().any(|&c| c == b'\r' || c == b'\n' || c == 0) {
                return Err(format!("field {name}: value contains CR, LF or NUL"));
            }
        }
        Ok(())
    }
}

impl abi::StartResponse for TestStartResponse {
    fn start_response(
        &mut self,
        status: RStr<'_>,
        headers: RSlice<'_, Field<'_>>,
        exc_info: ROption<RStr<'_>>,
    ) -> RResult<(), RString> {
        let verdict = if self.response.start_calls > 0 && exc_info.is_none() {
            Err("start_response called twice without exc_info".to_owned())
        } else {
            Self::check(status.as_str(), headers.as_slice())
        };
        match verdict {
            Ok(()) => {
                let r = &mut self.response;
                r.start_calls += 1;
                r.status = status.as_str().to_owned();
                r.headers = headers
                    .iter()
                    .map(|f| (f.name_str().to_owned(), String::from_utf8_lossy(f.value.as_slice()).into_owned()))
                    .collect();
                r.exc_info = exc_info.into_option().map(|e| e.as_str().to_owned());
                RResult::ROk(())
            }
            Err(why) => {
                self.response.errors.push(why.clone());
                RResult::RErr(RString::from(why))
            }
        }
    }
}
