//! Middleware: PEP 3333 §"Middleware: Components that Play Both Sides".
//!
//! A middleware plugin is handed, besides the request, the next application of the mount's
//! pipeline ([`Next`]): the host implements it, calling the next middleware or the final
//! application. A middleware may answer by itself (a filter refusing a request), call the
//! next application with its own `start_response` ([`Next::call`]), or with one that edits
//! the status and fields on the way out ([`Next::call_with_headers`]), and may wrap the body
//! it gets back ([`Body::map_chunks`]).

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::sabi_types::{RMut, RRef};
use abi_stable::std_types::{ROption, RResult, RSlice, RStr, RString};

use crate::abi::{self, Body, Environ, Field, NextApplication, NextApplication_TO, StartResponse_TO};
use crate::sdk::{StartResponse, guard, status};

/// A Portico middleware: like an [`Application`](crate::Application), and handed the next
/// application of the pipeline.
///
/// Implemented for every `Fn(&mut Environ, &mut StartResponse, &Next) -> Body` that is
/// `Send + Sync`, so a plain function or a closure is a middleware. Exported with
/// [`export_app!`](crate::export_app)'s `middleware:` form. The host calls it from several
/// worker threads at once.
///
/// ```
/// use portico_api::{Body, Environ, Middleware, Next, StartResponse, status};
///
/// /// Refuses requests without an `X-Api-Key`; passes the others on unchanged.
/// fn require_key(environ: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>, next: &Next<'_>) -> Body {
///     if environ.header("X-Api-Key").is_none() {
///         sr.start(status::FORBIDDEN, &[("Content-Type", "text/plain")]);
///         return Body::from("missing X-Api-Key\n");
///     }
///     next.call(environ, sr)
/// }
/// # fn is_middleware(_: &dyn Middleware) {}
/// # is_middleware(&require_key);
/// ```
pub trait Middleware: Send + Sync + 'static {
    /// Handles one request: either answers it (calls `start_response`, returns a body) or
    /// hands it to `next`, returning (or wrapping) the body `next` returns.
    fn call(&self, environ: &mut Environ<'_>, start_response: &mut StartResponse<'_, '_>, next: &Next<'_>) -> Body;
}

impl<F> Middleware for F
where
    F: Fn(&mut Environ<'_>, &mut StartResponse<'_, '_>, &Next<'_>) -> Body + Send + Sync + 'static,
{
    fn call(&self, environ: &mut Environ<'_>, start_response: &mut StartResponse<'_, '_>, next: &Next<'_>) -> Body {
        self(environ, start_response, next)
    }
}

/// The next application of the pipeline, as a [`Middleware`] sees it.
///
/// Wraps the host's [`abi::NextApplication`] object. Calling it runs the rest of the pipeline
/// (the next middleware, and in the end the application) on this thread, and returns its
/// body; the response's status and fields reach the host through the `start_response` handed
/// on.
pub struct Next<'a> {
    inner: NextApplication_TO<'a, RRef<'a, ()>>,
}

impl<'a> Next<'a> {
    /// Wraps the host's next-application object. [`export_app!`](crate::export_app) does
    /// this; a plugin author needs it only to call a middleware by hand.
    pub fn new(inner: NextApplication_TO<'a, RRef<'a, ()>>) -> Self {
        Next { inner }
    }

    /// Calls the next application with this middleware's own `start_response`: its status
    /// and fields go to the host unchanged. Afterwards [`StartResponse::called`] says whether
    /// the next application called it successfully.
    pub fn call(&self, environ: &mut Environ<'_>, start_response: &mut StartResponse<'_, '_>) -> Body {
        let mut forward = Forward { outer: start_response.raw_mut(), started: false };
        let body = self.inner.call(environ, StartResponse_TO::from_ptr(RMut::new(&mut forward), TD_Opaque));
        let body = from_next(environ, body);
        if forward.started {
            start_response.mark_called();
        }
        body
    }

    /// Calls the next application with a `start_response` that lets `edit` change its
    /// status line and fields before they go on to `start_response` (with the next
    /// application's `exc_info`, if any). `edit` runs once per `start_response` call of the
    /// next application (twice when it retries with `exc_info` after a failure).
    ///
    /// The status is the whole line (`"200 OK"`); fields are `(name, value)` pairs in order,
    /// repeats kept; names keep their case, so compare them with `eq_ignore_ascii_case`.
    ///
    /// ```
    /// # use portico_api::{Body, Environ, Next, StartResponse};
    /// fn no_sniff(environ: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>, next: &Next<'_>) -> Body {
    ///     next.call_with_headers(environ, sr, |_status, fields| {
    ///         fields.retain(|(name, _)| !name.eq_ignore_ascii_case("X-Content-Type-Options"));
    ///         fields.push(("X-Content-Type-Options".into(), "nosniff".into()));
    ///     })
    /// }
    /// ```
    ///
    /// Failures are contained: if `edit` panics, or the next application sends a field that
    /// is not UTF-8 (this method edits text), the next application's `start_response` call
    /// is refused, and once it returns its body is dropped, the reason is logged through
    /// `wsgi.errors`, and the response becomes `500 Internal Server Error` (through
    /// `exc_info`). A status or field that `edit` makes invalid is refused by the host,
    /// which answers `500` and logs why.
    pub fn call_with_headers<F>(
        &self,
        environ: &mut Environ<'_>,
        start_response: &mut StartResponse<'_, '_>,
        edit: F,
    ) -> Body
    where
        F: FnMut(&mut String, &mut Vec<(String, String)>),
    {
        let mut editor = Edit { outer: start_response.raw_mut(), edit, started: false, failure: None };
        let body = self.inner.call(environ, StartResponse_TO::from_ptr(RMut::new(&mut editor), TD_Opaque));
        let body = from_next(environ, body);
        let Edit { started, failure, .. } = editor;
        if let Some(why) = failure {
            // The body belongs to a response that will not be sent. A plugin's stream drop is
            // fenced on its own side; fence ours too in case this is a foreign stream.
            let _ = guard::fenced(move || drop(body));
            let line = format!("middleware: {why}");
            environ.log(&line);
            let _ = start_response.start_with_exc_info(
                status::INTERNAL_SERVER_ERROR,
                &[("Content-Type", "text/plain; charset=utf-8")],
                &line,
            );
            return Body::from("Internal Server Error\n");
        }
        if started {
            start_response.mark_called();
        }
        body
    }
}

/// The `start_response` [`Next::call`] hands on: forwards every call unchanged and records
/// whether one succeeded. Runs no plugin code that could panic.
struct Forward<'r, 'a, 'b> {
    outer: &'r mut StartResponse_TO<'a, RMut<'b, ()>>,
    started: bool,
}

impl abi::StartResponse for Forward<'_, '_, '_> {
    fn start_response(
        &mut self,
        status: RStr<'_>,
        headers: RSlice<'_, Field<'_>>,
        exc_info: ROption<RStr<'_>>,
    ) -> RResult<(), RString> {
        let verdict = self.outer.start_response(status, headers, exc_info);
        if verdict.is_ok() {
            self.started = true;
        }
        verdict
    }
}

/// The `start_response` [`Next::call_with_headers`] hands on.
struct Edit<'r, 'a, 'b, F> {
    outer: &'r mut StartResponse_TO<'a, RMut<'b, ()>>,
    edit: F,
    started: bool,
    /// Why a call was refused on our side (the edit panicked, a field was not UTF-8); once
    /// set, every later call is refused too.
    failure: Option<String>,
}

impl<F> abi::StartResponse for Edit<'_, '_, '_, F>
where
    F: FnMut(&mut String, &mut Vec<(String, String)>),
{
    fn start_response(
        &mut self,
        status: RStr<'_>,
        headers: RSlice<'_, Field<'_>>,
        exc_info: ROption<RStr<'_>>,
    ) -> RResult<(), RString> {
        if let Some(why) = &self.failure {
            return RResult::RErr(RString::from(why.as_str()));
        }
        let edit = &mut self.edit;
        // Everything that runs plugin code (the edit) or could panic (allocation aside) is
        // inside the fence: this method is called across `extern "C"` by the next
        // application, and a panic must not unwind through it.
        let edited = guard::fenced(|| -> Result<(String, Vec<(String, String)>), String> {
            let mut line = status.as_str().to_owned();
            let mut fields = Vec::with_capacity(headers.len() + 4);
            for field in headers.iter() {
                let name = std::str::from_utf8(field.name.as_slice())
                    .map_err(|_| "a field name of the next application is not UTF-8".to_owned())?;
                let value = std::str::from_utf8(field.value.as_slice()).map_err(|_| {
                    format!("the value of field '{name}' of the next application is not UTF-8 (header edits are text)")
                })?;
                fields.push((name.to_owned(), value.to_owned()));
            }
            edit(&mut line, &mut fields);
            Ok((line, fields))
        });
        let (line, fields) = match edited {
            Ok(Ok(edited)) => edited,
            Ok(Err(why)) => return self.fail(why),
            Err(panic) => return self.fail(format!("editing the response fields panicked: {panic}")),
        };
        let raw: Vec<Field<'_>> = fields.iter().map(|(n, v)| Field::new(n, v)).collect();
        let verdict = self.outer.start_response(RStr::from_str(&line), RSlice::from_slice(&raw), exc_info);
        if verdict.is_ok() {
            self.started = true;
        }
        verdict
    }
}

impl<F> Edit<'_, '_, '_, F> {
    fn fail(&mut self, why: String) -> RResult<(), RString> {
        let verdict = RResult::RErr(RString::from(why.as_str()));
        self.failure = Some(why);
        verdict
    }
}

/// The next application of a middleware plugin the host called as a plain application:
/// answers `404 Not Found` (see [`guard::run_middleware_as_app`]).
pub(crate) struct NotFoundNext;

impl NextApplication for NotFoundNext {
    fn call(&self, _environ: &mut Environ<'_>, start_response: StartResponse_TO<'_, RMut<'_, ()>>) -> abi::Body_NE {
        // Called through a vtable (`extern "C"`): fenced, though nothing here panics.
        let mut sr = StartResponse::new(start_response);
        guard::fenced(|| {
            sr.start(status::NOT_FOUND, &[("Content-Type", "text/plain; charset=utf-8")]);
            Body::from("Not Found\n")
        })
        .unwrap_or(Body::Empty)
        .into_abi()
    }
}

/// The next application's body as this SDK's [`Body`]. A body of a kind newer than this
/// plugin's `portico-api` (from a newer plugin behind it) cannot be wrapped or forwarded by
/// this SDK: it is dropped, logged, and becomes a body that fails, so the host closes the
/// connection after the head (whatever status the next application set).
fn from_next(environ: &mut Environ<'_>, body: abi::Body_NE) -> Body {
    match Body::from_abi(body) {
        Ok(body) => body,
        Err(unknown) => {
            let why = format!("middleware: the next application returned {unknown}");
            environ.log(&why);
            Body::try_stream(std::iter::once(Err(why)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestRequest;

    fn app(environ: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>) -> Body {
        if environ.path_info() == "/panic" {
            panic!("app panicked on purpose");
        }
        sr.start(status::OK, &[("Content-Type", "text/plain"), ("X-Frame-Options", "SAMEORIGIN")]);
        Body::from(format!("app saw {}\n", environ.path_info()))
    }

    fn streaming_app(_: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>) -> Body {
        sr.start(status::OK, &[]);
        Body::stream(vec![b"a".to_vec(), Vec::new(), b"b".to_vec()])
    }

    fn pass(environ: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>, next: &Next<'_>) -> Body {
        assert!(!sr.called());
        let body = next.call(environ, sr);
        assert!(sr.called(), "the next app's start_response is seen through the forwarder");
        body
    }

    #[test]
    fn next_call_passes_through() {
        let r = TestRequest::get("/x").call_middleware(&pass, &app);
        assert_eq!(r.status, "200 OK");
        assert_eq!(r.header("X-Frame-Options"), Some("SAMEORIGIN"));
        assert_eq!(r.text(), "app saw /x\n");
        assert_eq!(r.start_calls, 1);
        assert!(r.errors.is_empty() && r.log.is_empty(), "{r:?}");
    }

    #[test]
    fn middleware_answers_by_itself() {
        let refuse = |_: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>, _: &Next<'_>| {
            sr.start(status::FORBIDDEN, &[]);
            Body::from("no\n")
        };
        let r = TestRequest::get("/").call_middleware(&refuse, &app);
        assert_eq!((r.code(), r.text().as_str()), (403, "no\n"));
    }

    fn add_header(environ: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>, next: &Next<'_>) -> Body {
        let body = next.call_with_headers(environ, sr, |status, fields| {
            assert_eq!(status, "200 OK");
            fields.retain(|(n, _)| !n.eq_ignore_ascii_case("x-frame-options"));
            fields.push(("X-Frame-Options".into(), "DENY".into()));
        });
        assert!(sr.called());
        body
    }

    #[test]
    fn call_with_headers_edits_fields() {
        let r = TestRequest::get("/y").call_middleware(&add_header, &app);
        assert_eq!(r.status, "200 OK");
        assert_eq!(r.header_all("x-frame-options"), ["DENY"]);
        assert_eq!(r.header("Content-Type"), Some("text/plain"));
        assert_eq!(r.text(), "app saw /y\n");
    }

    #[test]
    fn call_with_headers_can_change_the_status() {
        let teapot = |environ: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>, next: &Next<'_>| {
            next.call_with_headers(environ, sr, |status, _| *status = "418 I'm a teapot".into())
        };
        let r = TestRequest::get("/").call_middleware(&teapot, &app);
        assert_eq!(r.status, "418 I'm a teapot");
    }

    #[test]
    fn call_with_headers_sees_the_exc_info_retry() {
        // The app panics: its fence re-calls start_response with exc_info through our edit.
        let r = TestRequest::get("/panic").call_middleware(&add_header_any_status, &app);
        assert_eq!(r.code(), 500);
        assert_eq!(r.header("X-Frame-Options"), Some("DENY"));
        assert!(r.exc_info.as_deref().is_some_and(|e| e.contains("app panicked on purpose")), "{r:?}");
        assert!(r.log.iter().any(|l| l.contains("app panicked on purpose")), "{r:?}");
    }

    fn add_header_any_status(environ: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>, next: &Next<'_>) -> Body {
        next.call_with_headers(environ, sr, |_, fields| fields.push(("X-Frame-Options".into(), "DENY".into())))
    }

    #[test]
    fn a_panicking_edit_becomes_a_500_and_a_log_line() {
        let bad = |environ: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>, next: &Next<'_>| {
            next.call_with_headers(environ, sr, |_, _| panic!("edit exploded"))
        };
        let r = TestRequest::get("/").call_middleware(&bad, &app);
        assert_eq!(r.code(), 500, "{r:?}");
        assert_eq!(r.start_calls, 1, "the app's own call never reached the host");
        assert_eq!(r.text(), "Internal Server Error\n");
        assert!(r.log.iter().any(|l| l.contains("edit exploded")), "{r:?}");
    }

    #[test]
    fn a_non_utf8_field_is_refused_not_mangled() {
        fn raw_app(_: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>) -> Body {
            let field = Field { name: RSlice::from_slice(b"X-Latin"), value: RSlice::from_slice(b"caf\xe9") };
            let verdict =
                sr.raw_mut().start_response(RStr::from_str("200 OK"), RSlice::from_slice(&[field]), ROption::RNone);
            assert!(verdict.is_err());
            Body::from("body\n")
        }
        let r = TestRequest::get("/").call_middleware(&add_header_any_status, &raw_app);
        assert_eq!(r.code(), 500, "{r:?}");
        assert!(r.log.iter().any(|l| l.contains("X-Latin") && l.contains("not UTF-8")), "{r:?}");
    }

    #[test]
    fn a_panicking_middleware_is_a_500() {
        let bad = |environ: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>, next: &Next<'_>| {
            let _ = next.call(environ, sr);
            panic!("middleware exploded after next");
        };
        let r = TestRequest::get("/").call_middleware(&bad, &app);
        assert_eq!(r.code(), 500);
        assert_eq!(r.start_calls, 2, "the 500 replaced the app's 200 through exc_info");
        assert!(r.log.iter().any(|l| l.contains("middleware panicked: middleware exploded")), "{r:?}");
    }

    #[test]
    fn alone_the_next_app_is_404() {
        let r = TestRequest::get("/").call_middleware_alone(&add_header_any_status);
        assert_eq!(r.code(), 404);
        assert_eq!(r.header("X-Frame-Options"), Some("DENY"));
        assert_eq!(r.text(), "Not Found\n");
    }

    #[test]
    fn wrapping_the_body_of_the_next_app() {
        let upper = |environ: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>, next: &Next<'_>| {
            next.call(environ, sr).map_chunks(|b| Ok::<_, String>(b.to_ascii_uppercase()))
        };
        assert_eq!(TestRequest::get("/q").call_middleware(&upper, &app).text(), "APP SAW /Q\n");
        assert_eq!(TestRequest::get("/").call_middleware(&upper, &streaming_app).text(), "AB");
    }

    #[test]
    fn into_chunks_of_each_body() {
        let collect = |b: Body| b.into_chunks().collect::<Result<Vec<_>, _>>().unwrap();
        assert!(collect(Body::Empty).is_empty());
        assert!(collect(Body::from(Vec::new())).is_empty());
        assert_eq!(collect(Body::from("s")), [b"s".to_vec()]);
        assert_eq!(collect(Body::from(b"v".to_vec())), [b"v".to_vec()]);
        assert_eq!(collect(Body::stream(vec![b"1".to_vec(), vec![], b"2".to_vec()])), [b"1".to_vec(), b"2".to_vec()]);
        let failing = Body::try_stream(vec![Ok(b"1".to_vec()), Err("boom")]);
        let chunks: Vec<_> = failing.into_chunks().collect();
        assert_eq!(chunks.len(), 2);
        assert!(chunks[1].as_ref().is_err_and(|e| e.contains("boom")));
    }
}
