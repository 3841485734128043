//! The `[plugin.wsgi]` table: what the plugin serves and from which Python environment.
//!
//! ```toml
//! [plugin.wsgi]
//! app = "mysite.wsgi:application"   # Gunicorn's spelling; "module" alone means module:application
//! venv = "venv"                      # a virtual environment made from the Python the plugin was built with
//! pythonpath = ["."]                 # prepended to sys.path, first entry first
//! scripts = "scripts"                # GET /NAME.py runs the `application` of scripts/NAME.py
//! env = { DJANGO_SETTINGS_MODULE = "mysite.settings" }   # os.environ, before anything is imported
//! ```
//!
//! Relative paths are relative to the configuration file's directory (the host's
//! `Setup::config_dir`), like the server's own paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    app: Option<String>,
    venv: Option<String>,
    #[serde(default)]
    pythonpath: Vec<String>,
    scripts: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// The table with its paths made absolute and `app` split.
#[derive(Debug)]
pub struct Config {
    /// `module` and `callable` of `app` (`module:application` when only a module is given).
    pub app: Option<(String, String)>,
    /// The virtual environment, if one is configured.
    pub venv: Option<PathBuf>,
    /// Directories prepended to `sys.path`, in order.
    pub pythonpath: Vec<PathBuf>,
    /// The directory of `/NAME.py` scripts.
    pub scripts: Option<PathBuf>,
    /// Variables set in `os.environ` before the interpreter starts.
    pub env: BTreeMap<String, String>,
}

impl Config {
    /// Nothing to serve: no `app` and no `scripts` (the interpreter is then not started).
    pub fn is_empty(&self) -> bool {
        self.app.is_none() && self.scripts.is_none()
    }

    /// Parses the table (TOML text) with relative paths taken from `dir`.
    ///
    /// # Errors
    /// The TOML does not parse, has an unknown key, or `app` is malformed.
    pub fn parse(text: &str, dir: &Path) -> Result<Config, String> {
        let table: Table = toml::from_str(text).map_err(|e| format!("[plugin.wsgi]: {}", e.message()))?;
        let abs = |p: &str| if Path::new(p).is_absolute() { PathBuf::from(p) } else { dir.join(p) };
        let app = match &table.app {
            None => None,
            Some(spec) => Some(split_app(spec)?),
        };
        Ok(Config {
            app,
            venv: table.venv.as_deref().map(abs),
            pythonpath: table.pythonpath.iter().map(|p| abs(p)).collect(),
            scripts: table.scripts.as_deref().map(abs),
            env: table.env,
        })
    }
}

/// `package.module:callable` → (`package.module`, `callable`); `module` → (`module`,
/// `application`), as Gunicorn reads its APP_MODULE.
fn split_app(spec: &str) -> Result<(String, String), String> {
    let (module, callable) = spec.split_once(':').unwrap_or((spec, "application"));
    let ident = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|part| {
                part.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_alphanumeric() || c == '_')
            })
    };
    if !ident(module) || !ident(callable) {
        return Err(format!("[plugin.wsgi]: app = {spec:?} is not \"package.module:callable\""));
    }
    Ok((module.to_owned(), callable.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_spellings() {
        assert_eq!(split_app("a.b:app").unwrap(), ("a.b".into(), "app".into()));
        assert_eq!(split_app("mod").unwrap(), ("mod".into(), "application".into()));
        assert_eq!(split_app("mysite.wsgi:application.inner").unwrap().1, "application.inner");
        assert!(split_app("a b:c").is_err());
        assert!(split_app(":app").is_err());
        assert!(split_app("1mod").is_err());
    }

    #[test]
    fn paths_are_relative_to_the_config_dir() {
        let c =
            Config::parse("app = \"m\"\nvenv = \"v\"\npythonpath = [\"/abs\", \"rel\"]", Path::new("/etc/p")).unwrap();
        assert_eq!(c.venv.unwrap(), PathBuf::from("/etc/p/v"));
        assert_eq!(c.pythonpath, vec![PathBuf::from("/abs"), PathBuf::from("/etc/p/rel")]);
        assert!(Config::parse("", Path::new("/")).unwrap().is_empty());
        assert!(Config::parse("app = \"m\"\nvenvv = \"x\"", Path::new("/")).unwrap_err().contains("venvv"));
    }
}
