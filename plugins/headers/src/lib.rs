//! `headers`: a middleware that sets response header fields on every response of the
//! application behind it (security headers, say), and can remove others.
//!
//! List it as middleware in a mount's pipeline. For each response of the next application
//! (its own error responses included; not the host's own answers, such as the `500` for an
//! application that broke the protocol), it removes the fields named in `remove`, then
//! every field named in `add` (a same-named field the application set is replaced, names
//! compared case-insensitively), then appends the `add` fields. Mounted alone (as a plain
//! application) it answers `404 Not Found`, with its fields.
//!
//! ## Configuration (`[plugin.headers]`)
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `add` | table of name = value | `{}` | fields to set, in name order |
//! | `remove` | list of names | `[]` | fields of the application's response to drop |
//!
//! Checked at load, so a bad entry stops the plugin from loading with a message naming it:
//! a name must be a token (RFC 9110 §5.6.2); a value must have no control characters but
//! tab (so no CR, LF or NUL) and no leading or trailing whitespace; hop-by-hop fields
//! (`Connection`, `Transfer-Encoding`, ...) and `Content-Length` belong to the host and are
//! refused in `add`; a name may appear once in `add` (case-insensitively). `remove = ["Server"]`
//! drops an application's own `Server` field; the host then writes its own, as it does for
//! `Date`. Unknown keys are refused.
//!
//! ```toml
//! [plugin.headers]
//! add = { "X-Frame-Options" = "DENY", "X-Content-Type-Options" = "nosniff" }
//! remove = ["X-Powered-By"]
//!
//! # or, as a sub-table:
//! # [plugin.headers.add]
//! # "Referrer-Policy" = "no-referrer"
//! ```

use std::collections::BTreeMap;
use std::sync::OnceLock;

use portico_api::{Body, Environ, Next, StartResponse, export_app};
use serde::Deserialize;

/// The configuration `init` parsed; read when the middleware is built, on the first request.
static CONFIG: OnceLock<Headers> = OnceLock::new();

/// Fields only the host may write: hop-by-hop (RFC 9110 §7.6.1) and the framing.
const HOST_FIELDS: &[&str] = &[
    "Connection",
    "Keep-Alive",
    "Proxy-Connection",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
    "Content-Length",
];

/// The `[plugin.headers]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// The middleware: fields to add and names to remove, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    add: Vec<(String, String)>,
    remove: Vec<String>,
}

impl Headers {
    /// Parses the `[plugin.headers]` table (TOML text; empty means nothing to do).
    ///
    /// # Errors
    /// Malformed TOML, an unknown key, or a bad entry; the message names it, e.g.
    /// `add."X-Bad": value contains a control character (CR, LF, NUL...)`.
    pub fn from_toml(text: &str) -> Result<Headers, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let mut add: Vec<(String, String)> = Vec::with_capacity(raw.add.len());
        for (name, value) in raw.add {
            check_name(&name).map_err(|e| format!("add.{name:?}: {e}"))?;
            check_value(&value).map_err(|e| format!("add.{name:?}: {e}"))?;
            if let Some((first, _)) = add.iter().find(|(n, _)| n.eq_ignore_ascii_case(&name)) {
                return Err(format!("add.{name:?}: the same field as add.{first:?} (names are case-insensitive)"));
            }
            add.push((name, value));
        }
        for (i, name) in raw.remove.iter().enumerate() {
            if !is_token(name) {
                return Err(format!("remove[{i}] ({name:?}): {NOT_A_NAME}"));
            }
        }
        Ok(Headers { add, remove: raw.remove })
    }

    /// Applies the configuration to a response's fields.
    pub fn edit(&self, fields: &mut Vec<(String, String)>) {
        fields.retain(|(name, _)| {
            let named = |n: &String| n.eq_ignore_ascii_case(name);
            !self.remove.iter().any(named) && !self.add.iter().any(|(n, _)| named(n))
        });
        fields.extend(self.add.iter().cloned());
    }
}

const NOT_A_NAME: &str = "not a field name (a token: letters, digits, !#$%&'*+-.^_`|~)";

/// RFC 9110 §5.6.2 `token`, what a field name is.
fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_name(name: &str) -> Result<(), String> {
    if !is_token(name) {
        return Err(NOT_A_NAME.to_owned());
    }
    if HOST_FIELDS.iter().any(|f| f.eq_ignore_ascii_case(name)) {
        return Err("the host writes this field; a plugin may not".to_owned());
    }
    Ok(())
}

fn check_value(value: &str) -> Result<(), String> {
    if let Some(c) = value.chars().find(|&c| c.is_ascii_control() && c != '\t') {
        return Err(format!("value contains the control character {c:?} (no CR, LF, NUL...)"));
    }
    if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
        return Err("value has leading or trailing whitespace".to_owned());
    }
    Ok(())
}

/// A TOML or schema error as one line, with the line of the table it is about.
fn toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().replace('\n', " ");
    let Some(span) = err.span() else { return message };
    let start = span.start.min(text.len());
    let number = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let shown: String = line.chars().take(80).collect();
    format!("line {number} of [plugin.headers] (`{shown}`): {message}")
}

impl portico_api::Middleware for Headers {
    fn call(&self, environ: &mut Environ<'_>, sr: &mut StartResponse<'_, '_>, next: &Next<'_>) -> Body {
        if self.add.is_empty() && self.remove.is_empty() {
            return next.call(environ, sr);
        }
        next.call_with_headers(environ, sr, |_status, fields| self.edit(fields))
    }
}

/// Parses and keeps the configuration; runs once per loaded copy of the plugin.
fn init(config: &str) -> Result<(), String> {
    let headers = Headers::from_toml(config)?;
    CONFIG.set(headers).map_err(|_| "headers: init called twice".to_owned())
}

export_app!(
    name: "headers",
    version: env!("CARGO_PKG_VERSION"),
    middleware: CONFIG.get().cloned().unwrap_or_default(),
    init: init,
    never_blocks: true,
);

#[cfg(test)]
mod tests;
