//! Directory listings, served only when the operator asks for them (`--dir-listing`).
//!
//! An HTML page with one link per entry, sorted by name, directories first and marked with a
//! trailing `/`. Dotfiles and names that are not UTF-8 are not listed (they are not served
//! either). Names are
//! HTML-escaped in the text and percent-encoded in the links, so a file named
//! `<script>.html` or `a b&c` cannot inject markup.

use std::fmt::Write;
use std::path::Path;

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::escape::html as escape;

/// Bytes percent-encoded in a path segment of a link (RFC 3986 §3.3: anything that is not
/// `pchar`, plus `/` inside a name).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// The listing page of directory `dir`, shown as `url_path` (the decoded request path).
///
/// # Errors
/// The directory could not be read.
pub fn render(dir: &Path, url_path: &str) -> std::io::Result<Vec<u8>> {
    let mut entries: Vec<(bool, String)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        // A name that is not UTF-8 could never be requested (see `resolve`): not listed.
        let Ok(name) = entry.file_name().into_string() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        entries.push((!is_dir, name));
    }
    entries.sort();
    let title = escape(url_path);
    let mut html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n\
         <body><h1>Index of {title}</h1>\n<ul>\n"
    );
    if url_path != "/" {
        html.push_str("<li><a href=\"../\">../</a></li>\n");
    }
    for (is_file, name) in &entries {
        let slash = if *is_file { "" } else { "/" };
        let _ = writeln!(
            html,
            "<li><a href=\"{}{slash}\">{}{slash}</a></li>",
            utf8_percent_encode(name, SEGMENT),
            escape(name)
        );
    }
    html.push_str("</ul>\n</body></html>\n");
    Ok(html.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_names() {
        assert_eq!(escape("<a href='x'>&\""), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;");
        assert_eq!(utf8_percent_encode("a b#?.html", SEGMENT).to_string(), "a%20b%23%3F.html");
    }
}
