//! `portico check`: validates the configuration and test-loads every plugin in a child
//! process, so a plugin that crashes while loading is reported instead of killing the checker.

mod support;

use std::path::Path;
use std::process::Command;

use support::TempDir;

/// A plugins directory with `names`, a docroot, and `portico.toml` with `config` appended to
/// a `[server]` table pointing at them. Returns the config path.
fn setup(dir: &TempDir, names: &[&str], config: &str) -> std::path::PathBuf {
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    std::fs::create_dir_all(dir.path().join("docroot")).expect("docroot");
    for name in names {
        support::install_file(&support::plugin(name), &plugins.join(format!("{name}.so")));
    }
    let path = dir.path().join("portico.toml");
    let text = format!("[server]\ndocroot = \"docroot\"\nplugins = \"plugins\"\n\n{config}");
    support::install_bytes(text.as_bytes(), &path);
    path
}

fn check(config: &Path) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portico"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PORTICO_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd.arg("check").arg("--config").arg(config).output().expect("running portico check");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

const PIPELINE: &str = "[[mount]]\nprefix = \"/api\"\napp = \"dispatch\"\nmiddleware = [\"ip_filter\", \"headers\"]\n";

#[test]
fn a_good_configuration_passes() {
    let dir = TempDir::new("portico-check");
    let config = setup(&dir, &["dispatch", "ip_filter", "headers", "hello"], PIPELINE);
    let (code, out) = check(&config);
    assert_eq!(code, 0, "{out}");
    for needle in ["ok: plugin dispatch", "(middleware)", "ok: mount /api → dispatch", "all good"] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn a_plugin_refusing_its_settings_is_reported_once_and_not_again_as_missing_from_its_mount() {
    let dir = TempDir::new("portico-check");
    let config = setup(
        &dir,
        &["dispatch", "ip_filter", "headers"],
        &format!("{PIPELINE}\n[plugin.ip_filter]\nallow = [\"10.0.0.0/33\"]\n"),
    );
    let (code, out) = check(&config);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("plugin ip_filter refused [plugin.ip_filter] in its init") && out.contains("10.0.0.0/33"),
        "{out}"
    );
    // One mistake, one error (issue 15): the mount that uses it is not called a second one.
    assert_eq!(out.lines().filter(|l| l.starts_with("error:")).count(), 1, "{out}");
}

#[test]
fn a_plugin_that_crashes_while_loading_does_not_take_the_checker_down() {
    let dir = TempDir::new("portico-check");
    let config = setup(&dir, &["fixture", "hello"], "[plugin.fixture]\ncrash = true\n");
    let (code, out) = check(&config);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error: plugin fixture") && out.contains("crashed while loading"), "{out}");
    assert!(out.contains("ok: plugin hello"), "the checker went on after the crash:\n{out}");
    assert!(out.contains("problems found"), "{out}");
}

#[test]
fn a_file_that_does_not_parse_exits_2_with_its_line() {
    let dir = TempDir::new("portico-check");
    let config = setup(&dir, &["hello"], "[[mount]]\nprefix = \"/x\"\napp = \n");
    let (code, out) = check(&config);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("line 7"), "{out}");
}

#[test]
fn the_annotated_example_configuration_checks_clean() {
    let dir = TempDir::new("portico-check");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    for name in ["dispatch", "ip_filter", "headers", "hello"] {
        support::install_file(&support::plugin(name), &plugins.join(format!("{name}.so")));
    }
    let example = support::workspace_root().join("portico.example.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_portico"))
        .arg("check")
        .arg("--config")
        .arg(&example)
        .arg("--plugins")
        .arg(&plugins)
        .output()
        .expect("running portico check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "portico.example.toml must stay valid:\n{text}");
    assert!(text.contains("ok: mount /api → dispatch (middleware: ip_filter, headers)"), "{text}");
}

#[test]
fn print_config_output_is_a_configuration_check_accepts() {
    // Nested plugin tables, mounts, a static mount, an unset setting: all must survive the
    // round trip, and the printed file must mean the same wherever it is saved.
    let dir = TempDir::new("portico-check");
    let config = setup(
        &dir,
        &["dispatch", "ip_filter", "headers", "hello"],
        &format!(
            "{PIPELINE}\n[[mount]]\nprefix = \"/files\"\nstatic = true\nmiddleware = [\"headers\"]\n\n\
             [plugin.headers]\nadd = {{ X-Frame-Options = \"DENY\", Referrer-Policy = \"no-referrer\" }}\n"
        ),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portico"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PORTICO_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd.arg("--config").arg(&config).arg("--print-config").output().expect("running --print-config");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(printed.contains("[plugin.headers.add]\n"), "a nested table stays inside its plugin's:\n{printed}");
    assert!(printed.contains("\n# cache_control = \"\"  # unset\n"), "an unset setting is a comment:\n{printed}");
    assert!(printed.contains("prefix = \"/files\"\nstatic = true\n"), "{printed}");
    // Every long flag but --config and --print-config is a line, set or commented.
    let help = Command::new(env!("CARGO_BIN_EXE_portico")).arg("--help").output().expect("running --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-'))
        .filter(|w| !w.is_empty() && !["config", "print-config", "help", "version"].contains(w))
        .collect();
    assert!(flags.len() > 15, "{help}");
    for flag in flags {
        let key = flag.replace('-', "_");
        let listed =
            printed.lines().any(|l| l.starts_with(&format!("{key} = ")) || l.starts_with(&format!("# {key} = ")));
        assert!(listed, "--{flag} is missing from --print-config:\n{printed}");
    }
    // Saved elsewhere, it is read back as the same configuration.
    let other = TempDir::new("portico-check-printed");
    let copy = other.path().join("printed.toml");
    support::install_bytes(printed.as_bytes(), &copy);
    let (code, text) = check(&copy);
    assert_eq!(code, 0, "the printed configuration is refused:\n{text}\n---\n{printed}");
    for needle in ["ok: mount /api → dispatch", "ok: mount /files → the docroot", "all good"] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}
