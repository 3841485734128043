//! A small request router: method + path pattern → handler, matched against `PATH_INFO`.
//!
//! ```
//! use portico_api::{Body, Environ, Params, Router, StartResponse, status};
//!
//! fn user(_: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>, params: &Params) -> Body {
//!     sr.start(status::OK, &[("Content-Type", "text/plain; charset=utf-8")]);
//!     Body::from(format!("user {}\n", params.get("id").unwrap_or_default()))
//! }
//!
//! let router = Router::new()
//!     .route("GET", "/users/{id}", user)
//!     .route("DELETE", "/users/{id}", |_: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>, _: &Params| {
//!         sr.start(status::NO_CONTENT, &[]);
//!         Body::Empty
//!     });
//! // `router` is an `Application`: `export_app!(name: "users", version: "1", app: router)`.
//! # let _ = router;
//! ```

use std::fmt;

use crate::abi::{Body, Environ};
use crate::sdk::{Application, StartResponse, status};

/// A route's handler: an application that also gets the path's `{param}` values.
///
/// Implemented for every `Fn(&mut Environ, &mut StartResponse, &Params) -> Body` that is
/// `Send + Sync`.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request the router matched to this handler's route.
    fn call(&self, environ: &mut Environ<'_>, start_response: &mut StartResponse<'_, '_>, params: &Params) -> Body;
}

impl<F> Handler for F
where
    F: Fn(&mut Environ<'_>, &mut StartResponse<'_, '_>, &Params) -> Body + Send + Sync + 'static,
{
    fn call(&self, environ: &mut Environ<'_>, start_response: &mut StartResponse<'_, '_>, params: &Params) -> Body {
        self(environ, start_response, params)
    }
}

/// The values of a matched route's `{param}` segments, by name.
///
/// Values are segments of `PATH_INFO`, so already percent-decoded (`%20` is a space); a
/// `%2F` in the request is a `/` in `PATH_INFO` and so separates segments (it cannot be part
/// of a parameter). Invalid UTF-8 has become U+FFFD.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// The value of parameter `name`, if the route has it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// `(name, value)` pairs in the order of the pattern.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The number of parameters.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether the route has no parameters.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// Routes requests by `REQUEST_METHOD` and `PATH_INFO` to [`Handler`]s; an [`Application`].
///
/// Matching rules:
/// - A pattern is a path starting with `/`; each `/`-separated segment is either literal text,
///   matched exactly (case-sensitive), or `{name}`, matching any non-empty segment whose
///   value the handler reads from [`Params`]. Paths match whole: `/dog` is not `/dog/`, and
///   no pattern matches a prefix. An empty `PATH_INFO` is `/`.
/// - When several patterns match a path, the most specific wins: comparing segment by
///   segment, a literal beats a `{param}` at the first place they differ (`/users/me` before
///   `/users/{id}`). Among equals, the route registered first wins.
/// - Methods are compared case-sensitively (RFC 9110 §9.1). `HEAD` is answered by the `GET`
///   route where no `HEAD` route is registered; the handler sees `REQUEST_METHOD` `HEAD` and
///   may skip building the body (the host sends no body for `HEAD` either way, and gives the
///   `Content-Length` that `GET` would have).
/// - A path some pattern matches, with a method none of them has: `405 Method Not Allowed`,
///   with `Allow` listing the methods of every matching pattern in registration order
///   (`HEAD` right after `GET` when `GET` is there). `OPTIONS` is not answered automatically:
///   register it if you want it.
/// - A path no pattern matches: `404 Not Found`.
#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
}

struct Route {
    method: String,
    pattern: Pattern,
    handler: Box<dyn Handler>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.routes.iter().map(|r| format!("{} {}", r.method, r.pattern.source))).finish()
    }
}

/// What [`Router::resolve`] found for a method and a path.
pub enum Match<'r> {
    /// A route matched: its handler, the path's parameters and the pattern (as registered).
    Found {
        /// The route's handler.
        handler: &'r dyn Handler,
        /// The values of the pattern's `{param}` segments.
        params: Params,
        /// The matching pattern, as given to [`Router::route`].
        pattern: &'r str,
    },
    /// Some pattern matches the path, but not with this method: the methods that would do,
    /// for the `Allow` field.
    MethodNotAllowed {
        /// The allowed methods, in registration order, `HEAD` after `GET`.
        allow: Vec<&'r str>,
    },
    /// No pattern matches the path.
    NotFound,
}

impl fmt::Debug for Match<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::Found { params, pattern, .. } => {
                f.debug_struct("Found").field("pattern", pattern).field("params", params).finish_non_exhaustive()
            }
            Match::MethodNotAllowed { allow } => f.debug_struct("MethodNotAllowed").field("allow", allow).finish(),
            Match::NotFound => f.write_str("NotFound"),
        }
    }
}

impl Router {
    /// A router with no routes (every request is a 404).
    pub fn new() -> Self {
        Router::default()
    }

    /// Adds a route: requests with `method` whose `PATH_INFO` matches `pattern` go to
    /// `handler`. See [`Router`] for the matching rules.
    ///
    /// # Panics
    /// If `method` is not an HTTP token (RFC 9110 §5.6.2), or `pattern` does not start with
    /// `/`, has a segment with `{` or `}` that is not a whole `{name}` (name: ASCII letters,
    /// digits, `_`), or uses a name twice. Routes are written by the plugin's author, so a
    /// bad one is a bug: when the router is built in [`export_app!`](crate::export_app),
    /// the panic is caught and logged, and every request gets a 500.
    pub fn route(mut self, method: &str, pattern: &str, handler: impl Handler) -> Self {
        assert!(is_token(method), "route method {method:?} is not an HTTP token");
        let pattern = Pattern::parse(pattern).unwrap_or_else(|why| panic!("route pattern {pattern:?}: {why}"));
        self.routes.push(Route { method: method.to_owned(), pattern, handler: Box::new(handler) });
        self
    }

    /// Finds the route for `method` and `path` (a `PATH_INFO`; empty is `/`), by the rules
    /// given on [`Router`].
    pub fn resolve(&self, method: &str, path: &str) -> Match<'_> {
        let segments = split(path);
        let mut best: Option<(&Route, Vec<&str>, bool)> = None;
        let mut methods: Vec<&str> = Vec::new();
        for route in &self.routes {
            let Some(values) = route.pattern.matches(&segments) else { continue };
            if !methods.contains(&route.method.as_str()) {
                methods.push(&route.method);
            }
            let exact = route.method == method;
            let head_as_get = method == "HEAD" && route.method == "GET";
            if !(exact || head_as_get) {
                continue;
            }
            let better = match &best {
                None => true,
                Some((current, _, current_exact)) => match route.pattern.specificity_cmp(&current.pattern) {
                    std::cmp::Ordering::Greater => true,
                    std::cmp::Ordering::Less => false,
                    std::cmp::Ordering::Equal => exact && !current_exact,
                },
            };
            if better {
                best = Some((route, values, exact));
            }
        }
        if let Some((route, values, _)) = best {
            let pairs = route.pattern.names().zip(values).map(|(n, v)| (n.to_owned(), v.to_owned())).collect();
            return Match::Found { handler: &*route.handler, params: Params { pairs }, pattern: &route.pattern.source };
        }
        if methods.is_empty() {
            return Match::NotFound;
        }
        if let Some(i) = methods.iter().position(|m| *m == "GET")
            && !methods.contains(&"HEAD")
        {
            methods.insert(i + 1, "HEAD");
        }
        Match::MethodNotAllowed { allow: methods }
    }
}

impl Application for Router {
    fn call(&self, environ: &mut Environ<'_>, start_response: &mut StartResponse<'_, '_>) -> Body {
        let path = environ.path_info().into_owned();
        match self.resolve(environ.method(), &path) {
            Match::Found { handler, params, .. } => handler.call(environ, start_response, &params),
            Match::MethodNotAllowed { allow } => {
                let allow = allow.join(", ");
                start_response.start(
                    status::METHOD_NOT_ALLOWED,
                    &[("Allow", &allow), ("Content-Type", "text/plain; charset=utf-8")],
                );
                Body::from("Method Not Allowed\n")
            }
            Match::NotFound => {
                start_response.start(status::NOT_FOUND, &[("Content-Type", "text/plain; charset=utf-8")]);
                Body::from("Not Found\n")
            }
        }
    }
}

/// A path's segments: `/` and `` are none, `/a/b/` is `["a", "b", ""]`.
fn split(path: &str) -> Vec<&str> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    if rest.is_empty() { Vec::new() } else { rest.split('/').collect() }
}

/// RFC 9110 §5.6.2 `token`.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

enum Segment {
    Literal(String),
    Param(String),
}

struct Pattern {
    source: String,
    segments: Vec<Segment>,
}

impl Pattern {
    fn parse(source: &str) -> Result<Pattern, String> {
        if !source.starts_with('/') {
            return Err("must start with '/'".to_owned());
        }
        let mut segments = Vec::new();
        for (i, seg) in split(source).into_iter().enumerate() {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(format!("segment {} ({seg:?}): a parameter name is ASCII letters, digits, '_'", i + 1));
                }
                if segments.iter().any(|s| matches!(s, Segment::Param(n) if n == name)) {
                    return Err(format!("parameter {{{name}}} appears twice"));
                }
                segments.push(Segment::Param(name.to_owned()));
            } else if seg.contains(['{', '}']) {
                return Err(format!("segment {} ({seg:?}): a parameter is a whole segment, '{{name}}'", i + 1));
            } else {
                segments.push(Segment::Literal(seg.to_owned()));
            }
        }
        Ok(Pattern { source: source.to_owned(), segments })
    }

    /// The parameter values if the path's segments match.
    fn matches<'p>(&self, path: &[&'p str]) -> Option<Vec<&'p str>> {
        if path.len() != self.segments.len() {
            return None;
        }
        let mut values = Vec::new();
        for (seg, part) in self.segments.iter().zip(path) {
            match seg {
                Segment::Literal(lit) if lit == part => {}
                Segment::Param(_) if !part.is_empty() => values.push(*part),
                _ => return None,
            }
        }
        Some(values)
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(n) => Some(n.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// `Greater` when `self` is more specific: a literal where `other` has a parameter, at
    /// the first segment where they differ in kind. Both must match the same path (so have
    /// as many segments).
    fn specificity_cmp(&self, other: &Pattern) -> std::cmp::Ordering {
        let kinds = |p: &Pattern| p.segments.iter().map(|s| matches!(s, Segment::Literal(_))).collect::<Vec<_>>();
        kinds(self).cmp(&kinds(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler(_: &mut Environ<'_>, _: &mut StartResponse<'_, '_>, _: &Params) -> Body {
        Body::Empty
    }

    fn router() -> Router {
        Router::new()
            .route("GET", "/", handler)
            .route("GET", "/dog", handler)
            .route("GET", "/hello/{name}", handler)
            .route("GET", "/users/{id}", handler)
            .route("DELETE", "/users/{id}", handler)
            .route("GET", "/users/me", handler)
            .route("PUT", "/users/{id}/pets/{pet}", handler)
            .route("HEAD", "/head-only", handler)
    }

    fn found(m: Match<'_>) -> (String, Vec<(String, String)>) {
        match m {
            Match::Found { pattern, params, .. } => {
                (pattern.to_owned(), params.iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect())
            }
            other => panic!("expected a match, got {other:?}"),
        }
    }

    fn allow(m: Match<'_>) -> Vec<String> {
        match m {
            Match::MethodNotAllowed { allow } => allow.into_iter().map(str::to_owned).collect(),
            other => panic!("expected 405, got {other:?}"),
        }
    }

    #[test]
    fn exact_paths() {
        let r = router();
        assert_eq!(found(r.resolve("GET", "/dog")).0, "/dog");
        assert_eq!(found(r.resolve("GET", "/")).0, "/");
        assert_eq!(found(r.resolve("GET", "")).0, "/", "empty PATH_INFO is /");
        assert!(matches!(r.resolve("GET", "/dog/"), Match::NotFound), "no trailing-slash folding");
        assert!(matches!(r.resolve("GET", "/dogs"), Match::NotFound));
        assert!(matches!(r.resolve("GET", "/Dog"), Match::NotFound), "literals are case-sensitive");
        assert!(matches!(r.resolve("GET", "/dog/x"), Match::NotFound), "no prefix matching");
        assert!(matches!(r.resolve("GET", "//dog"), Match::NotFound));
    }

    #[test]
    fn params() {
        let r = router();
        let (pattern, params) = found(r.resolve("GET", "/hello/Ada Lovelace"));
        assert_eq!(pattern, "/hello/{name}");
        assert_eq!(params, vec![("name".to_owned(), "Ada Lovelace".to_owned())]);
        let (_, params) = found(r.resolve("PUT", "/users/7/pets/rex"));
        assert_eq!(params, vec![("id".into(), "7".into()), ("pet".into(), "rex".into())]);
        assert!(matches!(r.resolve("GET", "/hello/"), Match::NotFound), "a parameter is never empty");
        assert!(matches!(r.resolve("GET", "/hello"), Match::NotFound));
        assert!(matches!(r.resolve("GET", "/hello/a/b"), Match::NotFound));
    }

    #[test]
    fn params_accessors() {
        let r = router();
        let Match::Found { params, .. } = r.resolve("PUT", "/users/7/pets/rex") else { panic!() };
        assert_eq!(params.get("id"), Some("7"));
        assert_eq!(params.get("pet"), Some("rex"));
        assert_eq!(params.get("nope"), None);
        assert_eq!(params.len(), 2);
        assert!(!params.is_empty());
    }

    #[test]
    fn literal_beats_param_whatever_the_order() {
        let r = router();
        assert_eq!(found(r.resolve("GET", "/users/me")), ("/users/me".into(), vec![]));
        assert_eq!(found(r.resolve("GET", "/users/42")).0, "/users/{id}");
        // DELETE is only on the parameter route, which also matches `me`.
        assert_eq!(found(r.resolve("DELETE", "/users/me")).0, "/users/{id}");
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        let r = router();
        assert_eq!(allow(r.resolve("POST", "/dog")), ["GET", "HEAD"]);
        assert_eq!(allow(r.resolve("POST", "/users/42")), ["GET", "HEAD", "DELETE"]);
        assert_eq!(allow(r.resolve("POST", "/users/me")), ["GET", "HEAD", "DELETE"]);
        assert_eq!(allow(r.resolve("GET", "/head-only")), ["HEAD"]);
        assert_eq!(allow(r.resolve("get", "/dog")), ["GET", "HEAD"], "methods are case-sensitive");
    }

    #[test]
    fn head_falls_back_to_get() {
        let r = router();
        assert_eq!(found(r.resolve("HEAD", "/dog")).0, "/dog");
        assert_eq!(found(r.resolve("HEAD", "/hello/x")).1, vec![("name".into(), "x".into())]);
        assert_eq!(found(r.resolve("HEAD", "/head-only")).0, "/head-only");
        let r = Router::new().route("GET", "/x", handler).route("HEAD", "/x", handler);
        assert_eq!(allow(r.resolve("POST", "/x")), ["GET", "HEAD"], "HEAD is listed once");
    }

    #[test]
    fn empty_router_is_404() {
        assert!(matches!(Router::new().resolve("GET", "/"), Match::NotFound));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for (pattern, why) in [
            ("dog", "must start with '/'"),
            ("/a/{}", "parameter name"),
            ("/a/{b-c}", "parameter name"),
            ("/a/x{b}", "whole segment"),
            ("/a/{b", "whole segment"),
            ("/{a}/{a}", "twice"),
        ] {
            let err = Pattern::parse(pattern).err().unwrap_or_else(|| panic!("{pattern} accepted"));
            assert!(err.contains(why), "{pattern}: {err}");
        }
        assert!(std::panic::catch_unwind(|| Router::new().route("GET POST", "/", handler)).is_err());
        assert!(std::panic::catch_unwind(|| Router::new().route("GET", "nope", handler)).is_err());
    }
}
