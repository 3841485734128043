//! A `[plugin.NAME]` table of the configuration file as its plugin sees it, and a plugin's
//! refusal of it placed at the file's own line.
//!
//! A plugin's `init` gets its table as TOML text. When the table is written the usual way (a
//! `[plugin.NAME]` header line and its keys below), that text is the table's own lines,
//! preceded by as many empty lines as come before them in the file: a line number in the
//! plugin's error (`line 12 of [plugin.ip_filter]`) is then the file's line. Any other way
//! of writing it (dotted keys, an inline table, a quoted header) gets toml's serialization
//! of the table instead, and errors point at the header (or line 1).
//!
//! A refusal is placed, in this order, at: the line its message names (`line N …`, the
//! SDK plugins' wording for TOML errors), the line of the key it starts with (`allow[0]: …`,
//! `deny: …`, the SDK plugins' wording for a bad value), else the table's header.

use super::file::{ConfigError, Loaded};

/// The table's body with its file line numbers (see the module docs), or `None` when it is
/// not written as a header and keys, or when the lines found do not parse to the table toml
/// read (a `[` inside a multi-line string, say).
fn raw_body(loaded: &Loaded, name: &str) -> Option<(usize, String)> {
    let table = loaded.file.plugin.get(name)?;
    let text = loaded.text();
    let header = format!("[plugin.{name}]");
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let at = lines.iter().position(|l| {
        let rest = l.trim_start().strip_prefix(header.as_str()).map(str::trim_start);
        rest.is_some_and(|r| r.is_empty() || r.starts_with('#'))
    })?;
    let end = lines[at + 1..].iter().position(|l| l.trim_start().starts_with('[')).map_or(lines.len(), |n| at + 1 + n);
    let mut body = "\n".repeat(at + 1);
    body.extend(lines[at + 1..end].iter().copied());
    let parsed: toml::Table = toml::from_str(&body).ok()?;
    (&parsed == table).then_some((at + 1, body))
}

impl Loaded {
    /// The `[plugin.NAME]` table as TOML text for the plugin's `init` (empty when there is
    /// none): its own lines, numbered as in the file, where it is written as a header and keys
    /// (the module docs say when not).
    pub fn plugin_config(&self, name: &str) -> String {
        if let Some((_, body)) = raw_body(self, name) {
            return body;
        }
        self.file.plugin.get(name).map(|t| toml::to_string(t).unwrap_or_default()).unwrap_or_default()
    }

    /// An error about the `[plugin.NAME]` table, at its header (line 1 if it has none).
    pub fn plugin_table_error(&self, name: &str, message: impl Into<String>) -> ConfigError {
        // A header starts its line (after blanks): not the same text in a comment or a string.
        let header = format!("[plugin.{name}]");
        let mut at = 0;
        let mut start = None;
        for line in self.text().split_inclusive('\n') {
            let indent = line.len() - line.trim_start().len();
            if line.trim_start().starts_with(&header) {
                start = Some(at + indent);
                break;
            }
            at += line.len();
        }
        let start = start.unwrap_or(0);
        self.error_at(start..start, message)
    }

    /// Plugin `name` refused its `[plugin.NAME]` table in `init` with `why`: the error at the
    /// line it is about (see the module docs). `None` when the file has no such table (the
    /// refusal is then not about this file).
    pub fn plugin_init_error(&self, name: &str, why: &str) -> Option<ConfigError> {
        self.file.plugin.get(name)?;
        let message = format!("plugin {name} refused [plugin.{name}] in its init: {why}");
        let Some((header_line, body)) = raw_body(self, name) else {
            return Some(self.plugin_table_error(name, message));
        };
        let last = body.lines().count();
        let named = why
            .strip_prefix("line ")
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| (header_line + 1..=last).contains(n));
        let key: String = why.chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')).collect();
        let keyed = (!key.is_empty() && why[key.len()..].starts_with(['[', ':', '.']))
            .then(|| {
                body.lines().enumerate().skip(header_line).find_map(|(i, l)| {
                    let rest = l.trim_start().strip_prefix(key.as_str())?;
                    rest.trim_start().starts_with(['=', '.']).then_some(i + 1)
                })
            })
            .flatten();
        let line = named.or(keyed).unwrap_or(header_line);
        let start: usize = self.text().split_inclusive('\n').take(line - 1).map(str::len).sum();
        let indent = self.text()[start..].len() - self.text()[start..].trim_start_matches([' ', '\t']).len();
        Some(self.error_at(start + indent..start + indent, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(text: &str) -> Loaded {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!("portico-plugin-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("t{n}.toml"));
        std::fs::write(&path, text).unwrap();
        Loaded::read(&path).unwrap()
    }

    const FILE: &str = "[server]\nbind = [\"127.0.0.1:8000\"]\n\n[plugin.ip_filter]   # the list\n# who\n\
                        deny = []\n  allow = [\"10.0.0.0/33\"]\n\n[plugin.headers]\nadd = { x = \"1\" }\n";

    #[test]
    fn a_table_keeps_its_file_line_numbers() {
        let c = loaded(FILE);
        let text = c.plugin_config("ip_filter");
        assert_eq!(text.lines().position(|l| l.contains("allow")), Some(6), "{text:?}");
        assert_eq!(toml::from_str::<toml::Table>(&text).unwrap(), c.file.plugin["ip_filter"]);
        assert_eq!(c.plugin_config("nothing"), "");
    }

    #[test]
    fn a_refusal_is_placed_at_its_key_or_its_named_line_or_the_header() {
        let c = loaded(FILE);
        let at = |why: &str| match c.plugin_init_error("ip_filter", why) {
            Some(ConfigError::Invalid { line, column, message, .. }) => (line, column, message),
            other => panic!("{other:?}"),
        };
        let (line, column, message) = at("allow[0]: invalid CIDR '10.0.0.0/33'");
        assert_eq!((line, column), (7, 3));
        assert_eq!(
            message,
            "plugin ip_filter refused [plugin.ip_filter] in its init: allow[0]: invalid CIDR '10.0.0.0/33'"
        );
        assert_eq!(at("deny: not a list").0, 6);
        assert_eq!(at("line 6 of [plugin.ip_filter] (`deny = []`): unknown field").0, 6);
        assert_eq!(at("line 99 of [plugin.ip_filter]: out of the table").0, 4);
        assert_eq!(at("something else").0, 4);
        assert!(c.plugin_init_error("hello", "no table").is_none());
    }

    #[test]
    fn other_ways_of_writing_a_table_get_its_serialization() {
        let c = loaded("plugin.ip_filter.allow = [\"10.0.0.0/8\"]\n");
        assert_eq!(c.plugin_config("ip_filter").trim(), "allow = [\"10.0.0.0/8\"]");
        match c.plugin_init_error("ip_filter", "allow[0]: bad") {
            Some(ConfigError::Invalid { line, .. }) => assert_eq!(line, 1),
            other => panic!("{other:?}"),
        }
    }
}
