//! Bakes the directory of the libpython this plugin links into its `RUNPATH`, so the loader
//! finds that library and not a distribution's of the same soname (a mixed interpreter:
//! shared/research/python-bridge.md §1), and records the Python it was built against, whose
//! prefix the interpreter starts from when no `venv` is configured.

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    let config = pyo3_build_config::get();
    let exe = config.executable().unwrap_or_default();
    println!("cargo:rustc-env=WSGI_BUILT_PYTHON={exe}");
    println!("cargo:rustc-env=WSGI_BUILT_PYTHON_VERSION={}", config.version());
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
