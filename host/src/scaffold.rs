//! `portico new NAME [--middleware] [--api-path DIR]`: writes a plugin crate in `./NAME/` that
//! builds and is served as it is.
//!
//! The crate: `Cargo.toml` (a `cdylib` depending on `portico-api` by path — the source tree
//! this binary was built from, or `--api-path` —, with the release profile that keeps plugins
//! small and unwinding), `src/lib.rs` (an application, or with `--middleware` a middleware,
//! with unit tests on the SDK's `testing` module), `README.md` (build, test, install) and
//! `.gitignore`. The templates are `host/templates/plugin/*.in`, compiled into the binary.

use std::path::{Path, PathBuf};

use clap::Parser;

use crate::settings::args::parse_subcommand;

/// `portico new`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "portico new",
    about = "Make a plugin crate in ./NAME/: Cargo.toml, src/lib.rs with unit tests, README.md.",
    after_help = "Then: cd NAME && cargo test && cargo build --release, and install \
                  target/release/libNAME.so with `portico install`."
)]
struct NewArgs {
    /// The plugin's name: what `/NAME.py` and mounts call it, and its crate's name (ASCII
    /// letters, digits, `_` and `-`, starting with a letter, not with `lib`).
    name: String,
    /// A middleware (an app that wraps the next application) instead of an application.
    #[arg(long)]
    middleware: bool,
    /// The `portico-api` source directory the crate depends on (default: the one in the source
    /// tree this portico was built from).
    #[arg(long, value_name = "DIR")]
    api_path: Option<PathBuf>,
}

const CARGO_TOML: &str = include_str!("../templates/plugin/Cargo.toml.in");
const APP: &str = include_str!("../templates/plugin/app.rs.in");
const MIDDLEWARE: &str = include_str!("../templates/plugin/middleware.rs.in");
const README: &str = include_str!("../templates/plugin/README.md.in");

/// The `portico-api` this binary was built with, in its source tree.
fn built_api_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("plugin-api")
}

/// Whether `name` can be a plugin's name and a crate's.
fn valid_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name.len() <= 64
        // `libNAME.so` is NAME's file: a `library` plugin would be served as `rary`.
        && !name.starts_with("lib")
}

/// Runs `portico new ARGS...` (`args` without the `new` word); the process exit status: 0
/// written, 1 the crate could not be written, 2 a bad command line.
pub fn run(args: Vec<std::ffi::OsString>) -> i32 {
    let args: NewArgs = match parse_subcommand("portico new", args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match write_crate(&args) {
        Ok(dir) => {
            let lib = args.name.replace('-', "_");
            println!("made {} ({})", dir.display(), if args.middleware { "middleware" } else { "application" });
            println!("next: cd {} && cargo test && cargo build --release", args.name);
            println!("then: portico install target/release/lib{lib}.so --plugins DIR [--pid-file FILE]");
            0
        }
        Err(e) => {
            eprintln!("portico new: error: {e}");
            if e.starts_with("invalid") { 2 } else { 1 }
        }
    }
}

/// Writes the crate; its directory, or why not (one line).
fn write_crate(args: &NewArgs) -> Result<PathBuf, String> {
    let name = &args.name;
    if !valid_name(name) {
        return Err(format!(
            "invalid plugin name {name:?}: ASCII letters, digits, '_' and '-', starting with a letter (not `lib`)"
        ));
    }
    let api = args.api_path.clone().unwrap_or_else(built_api_path);
    let api = std::fs::canonicalize(&api)
        .ok()
        .filter(|p| p.join("Cargo.toml").is_file())
        .ok_or_else(|| format!("no portico-api crate at {} (give its directory with --api-path DIR)", api.display()))?;
    let dir = std::env::current_dir().map_err(|e| format!("the current directory: {e}"))?.join(name);
    if dir.exists() {
        return Err(format!("{} exists already; nothing written", dir.display()));
    }
    let lib = name.replace('-', "_");
    let kind = if args.middleware { "middleware" } else { "application" };
    let usage = if args.middleware {
        format!(
            "\nA middleware runs where a mount lists it, in the server's portico.toml:\n\n```toml\n\
             [[mount]]\nprefix = \"/api\"\napp = \"hello\"\nmiddleware = [\"{name}\"]\n```\n"
        )
    } else {
        format!("\nOnce installed, `curl http://127.0.0.1:8000/{name}.py/more` runs it with PATH_INFO `/more`.\n")
    };
    // A TOML string, escaped as TOML wants (a path may hold quotes or backslashes).
    let api_path = toml::Value::String(api.display().to_string()).to_string();
    let fill = |template: &str| {
        template
            .replace("{{crate}}", name)
            .replace("{{lib}}", &lib)
            .replace("{{name}}", name)
            .replace("{{kind}}", kind)
            .replace("\"{{api_path}}\"", &api_path)
            .replace("{{usage}}", &usage)
    };
    let files = [
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/lib.rs", fill(if args.middleware { MIDDLEWARE } else { APP })),
        ("README.md", fill(README)),
        (".gitignore", "/target\n".to_owned()),
    ];
    std::fs::create_dir_all(dir.join("src")).map_err(|e| format!("making {}: {e}", dir.display()))?;
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plugin_and_crate_names() {
        for ok in ["hello", "my-app", "a1_b"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "1st", "a b", "a/b", "../x", "é", "-x", "library"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_templates_have_every_placeholder_filled() {
        for t in [CARGO_TOML, APP, MIDDLEWARE, README] {
            let left = t
                .replace("{{crate}}", "")
                .replace("{{lib}}", "")
                .replace("{{name}}", "")
                .replace("{{kind}}", "")
                .replace("\"{{api_path}}\"", "")
                .replace("{{usage}}", "");
            assert!(!left.contains("{{"), "an unknown placeholder in:\n{t}");
        }
        assert!(CARGO_TOML.contains("\"{{api_path}}\""));
    }
}
