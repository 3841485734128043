//! Escaping text the server writes for others to read: HTML for its own pages ([`html`]),
//! and log lines ([`controls`]) so that nothing a client or a plugin sends can start a line
//! of its own or drive a terminal.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Escapes text for HTML element content and quoted attribute values.
pub fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes control characters for a log line: CR, LF and HTAB as `\r`, `\n`, `\t`, every
/// other C0 or C1 control and DEL as `\xHH` (`\u{HH}` for C1), as nginx escapes its logs.
/// Everything else, UTF-8 included, is kept: the line stays readable, and a message can
/// neither end the line it is on nor start one that looks like the server's own.
pub fn controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:X}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_stays_one_line() {
        let forged = "x\n2026-11-29T00:00:00Z ERROR portico: FAKE\r\u{1b}[31mred\u{7f}\u{85}";
        assert_eq!(controls(forged), "x\\n2026-11-29T00:00:00Z ERROR portico: FAKE\\r\\x1B[31mred\\x7F\\u{85}");
        assert!(matches!(controls("plain µs text"), Cow::Borrowed(_)));
    }

    #[test]
    fn html_escapes_markup() {
        assert_eq!(html("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }
}
