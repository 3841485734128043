//! The request target (RFC 9112 §3.2): its form, its path and query, and percent-decoding
//! (RFC 3986 §2.1) of the path.

use std::borrow::Cow;

use percent_encoding::percent_decode;

use super::error::RequestError;

/// The four forms of request target (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query` (§3.2.1).
    Origin,
    /// `http://host/path?query` (§3.2.2).
    Absolute,
    /// `host:port`, only with CONNECT (§3.2.3).
    Authority,
    /// `*`, only with OPTIONS (§3.2.4).
    Asterisk,
}

/// Decides the target's form, refusing targets that fit none (400).
///
/// # Errors
/// [`RequestError::BadRequest`] for an empty target, `*` without OPTIONS, authority-form
/// without CONNECT, or a relative path.
pub fn classify(target: &[u8], is_options: bool, is_connect: bool) -> Result<TargetForm, RequestError> {
    if target.starts_with(b"/") {
        Ok(TargetForm::Origin)
    } else if target == b"*" {
        if is_options { Ok(TargetForm::Asterisk) } else { Err(RequestError::BadRequest("`*` target without OPTIONS")) }
    } else if is_connect {
        Ok(TargetForm::Authority)
    } else if scheme_len(target).is_some() {
        Ok(TargetForm::Absolute)
    } else {
        Err(RequestError::BadRequest("request target is not origin-, absolute-, authority- or asterisk-form"))
    }
}

/// Length of `scheme://` at the start of `target`, for `http` and `https` (any case).
fn scheme_len(target: &[u8]) -> Option<usize> {
    let lower = |n: usize| target.get(..n).map(|s| s.to_ascii_lowercase());
    if lower(7).as_deref() == Some(b"http://") {
        Some(7)
    } else if lower(8).as_deref() == Some(b"https://") {
        Some(8)
    } else {
        None
    }
}

/// A target split into its parts; all borrowed from the raw target, nothing decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts<'a> {
    /// The authority of an absolute-form target (`host:port`, userinfo removed).
    pub authority: Option<&'a [u8]>,
    /// The path, still percent-encoded; `/` when an absolute-form target has none.
    pub path: &'a [u8],
    /// The query after the first `?`, without the fragment.
    pub query: &'a [u8],
}

/// Splits a target of the given form. A fragment (`#...`), which a client should not send,
/// is dropped.
pub fn split(target: &[u8], form: TargetForm) -> Parts<'_> {
    let target = match target.iter().position(|&b| b == b'#') {
        Some(i) => &target[..i],
        None => target,
    };
    let (authority, rest): (Option<&[u8]>, &[u8]) = match form {
        TargetForm::Absolute => {
            let after = &target[scheme_len(target).unwrap_or(0)..];
            let end = after.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(after.len());
            let auth = &after[..end];
            let auth = match auth.iter().rposition(|&b| b == b'@') {
                Some(i) => &auth[i + 1..],
                None => auth,
            };
            (Some(auth), &after[end..])
        }
        TargetForm::Authority => (Some(target), &b""[..]),
        TargetForm::Origin | TargetForm::Asterisk => (None, target),
    };
    let (path, query) = match rest.iter().position(|&b| b == b'?') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let path = if path.is_empty() && form == TargetForm::Absolute { &b"/"[..] } else { path };
    Parts { authority, path, query }
}

/// Percent-decodes a path (RFC 3986 §2.1), `%2F` included, as WSGI's `PATH_INFO` is.
///
/// # Errors
/// [`RequestError::BadRequest`] when a `%` is not followed by two hex digits.
pub fn decode_path(raw: &[u8]) -> Result<Cow<'_, [u8]>, RequestError> {
    let mut i = 0;
    while let Some(off) = raw[i..].iter().position(|&b| b == b'%') {
        let p = i + off;
        match raw.get(p + 1..p + 3) {
            Some([a, b]) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => i = p + 3,
            _ => return Err(RequestError::BadRequest("malformed percent-encoding in path")),
        }
    }
    Ok(percent_decode(raw).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_form() {
        let p = split(b"/a/b?x=1&y#frag", TargetForm::Origin);
        assert_eq!((p.path, p.query, p.authority), (&b"/a/b"[..], &b"x=1&y"[..], None));
    }

    #[test]
    fn absolute_form() {
        let p = split(b"http://user@host:8080/echo.py/x?q", TargetForm::Absolute);
        assert_eq!((p.path, p.query, p.authority), (&b"/echo.py/x"[..], &b"q"[..], Some(&b"host:8080"[..])));
        assert_eq!(split(b"http://host", TargetForm::Absolute).path, b"/");
    }

    #[test]
    fn forms() {
        assert_eq!(classify(b"*", true, false), Ok(TargetForm::Asterisk));
        assert!(classify(b"*", false, false).is_err());
        assert!(classify(b"a/b", false, false).is_err());
        assert_eq!(classify(b"HTTP://h/", false, false), Ok(TargetForm::Absolute));
    }

    #[test]
    fn decoding() {
        assert_eq!(&*decode_path(b"/a%20b%2Fc").unwrap(), b"/a b/c");
        assert!(decode_path(b"/a%2").is_err());
        assert!(decode_path(b"/a%zz").is_err());
    }
}
