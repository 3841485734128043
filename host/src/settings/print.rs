//! `portico --print-config`: the effective configuration as a configuration file.
//!
//! Every setting of [`Args`] is printed, in the order of `--help`: a set one as `key = value`,
//! an unset one as a commented line (`# cache_control = ""  # unset`). Paths are made
//! absolute, so the output means the same wherever it is saved; mounts and `[plugin.NAME]`
//! tables follow as written. The output is a valid file: `portico check --config` accepts it.

use std::collections::BTreeMap;

use clap::{CommandFactory, ValueHint};
use serde::Serialize;

use super::Args;
use super::file::{Loaded, is_setting, key_of};

/// The effective configuration, as a TOML document.
pub fn render(args: &Args, loaded: Option<&Loaded>) -> String {
    let mut out =
        String::from("# portico --print-config: the effective settings (flag > environment > file > default)\n");
    if let Some(l) = loaded {
        out.push_str(&format!("# from {}\n", l.path.display()));
    }
    out.push_str("\n[server]\n");
    let values = toml::Table::try_from(args).unwrap_or_default();
    let cmd = Args::command();
    for arg in cmd.get_arguments().filter(|a| is_setting(a)) {
        let key = key_of(arg);
        let path_like = matches!(arg.get_value_hint(), ValueHint::DirPath | ValueHint::FilePath);
        match values.get(&key) {
            Some(value) => {
                let value = match value {
                    toml::Value::String(s) if path_like && !matches!(s.as_str(), "-" | "off") => toml::Value::String(
                        std::path::absolute(s).map_or_else(|_| s.clone(), |p| p.to_string_lossy().into_owned()),
                    ),
                    v => v.clone(),
                };
                out.push_str(&format!("{key} = {value}\n"));
            }
            None => {
                let (example, note) = unset(args, &key);
                out.push_str(&format!("# {key} = {example}  # unset{note}\n"));
            }
        }
    }
    if let Some(l) = loaded {
        // One document, so nested plugin tables print as `[plugin.NAME.key]`.
        let doc = Rest {
            mount: l
                .file
                .mount
                .iter()
                .map(|m| MountOut {
                    prefix: m.prefix.get_ref(),
                    app: m.app.as_ref().map(|a| a.get_ref().as_str()),
                    static_files: m.static_files,
                    middleware: m.middleware.iter().map(|s| s.get_ref().as_str()).collect(),
                    request_buffering: m.request_buffering,
                    timeout: m.timeout.as_ref().map(|t| *t.get_ref()),
                    max_concurrency: m.max_concurrency.as_ref().map(|n| *n.get_ref()),
                    queue: m.queue,
                })
                .collect(),
            plugin: &l.file.plugin,
        };
        let text = toml::to_string(&doc).unwrap_or_default();
        if !text.trim().is_empty() {
            out.push('\n');
            out.push_str(&text);
        }
    }
    out
}

/// The mounts and plugin tables, in the file's format.
#[derive(Serialize)]
struct Rest<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    mount: Vec<MountOut<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    plugin: &'a BTreeMap<String, toml::Table>,
}

/// One `[[mount]]`, its keys in the order people write them.
#[derive(Serialize)]
struct MountOut<'a> {
    prefix: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    app: Option<&'a str>,
    #[serde(rename = "static", skip_serializing_if = "std::ops::Not::not")]
    static_files: bool,
    middleware: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_buffering: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrency: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<usize>,
}

/// What an unset setting stands for: the value it takes and a note.
fn unset(args: &Args, key: &str) -> (String, String) {
    match key {
        "threads" => (args.worker_threads().to_string(), ": 2 × cores, at least 4".to_owned()),
        "body_temp_dir" => {
            let dir = std::env::temp_dir().to_string_lossy().into_owned();
            (toml::Value::String(dir).to_string(), ": the system's temporary directory".to_owned())
        }
        "cache_dir" => {
            let dir = std::path::absolute(args.plugins.join(".cache")).unwrap_or_else(|_| args.plugins.join(".cache"));
            (toml::Value::String(dir.to_string_lossy().into_owned()).to_string(), ": PLUGINS/.cache".to_owned())
        }
        _ => ("\"\"".to_owned(), String::new()),
    }
}
