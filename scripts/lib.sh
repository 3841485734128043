# shellcheck shell=bash
# Helpers shared by scripts/serve, scripts/test and scripts/bench. Source it, don't run it:
#
#     source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# The callers set `set -euo pipefail`. Sourcing defines ROOT (the repository root) and
# TARGET_DIR (cargo's target directory, $CARGO_TARGET_DIR if set), and nothing else runs.

if [[ -n "${_PORTICO_LIB_SH:-}" ]]; then
    return 0
fi
_PORTICO_LIB_SH=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in
    /*) ;;
    *) TARGET_DIR="$ROOT/$TARGET_DIR" ;;
esac

# The example plugins `scripts/serve` installs. `fixture` is test-only (host/tests load it
# themselves) and is never installed into a served plugins directory.
EXAMPLE_PLUGINS=(hello ctime echo stream dispatch ip_filter headers)

# ---------------------------------------------------------------------------------------
# messages
# ---------------------------------------------------------------------------------------

# step TEXT: a `==> TEXT` header, so a log shows where each stage starts.
step() {
    printf '\n==> %s\n' "$*"
}

# warn TEXT: to stderr, prefixed so it stands out in a CI log.
warn() {
    printf 'WARNING: %s\n' "$*" >&2
}

# die TEXT: print to stderr and exit 1.
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------
# tools
# ---------------------------------------------------------------------------------------

# ensure_rust: cargo must be on PATH (rustup's ~/.cargo/env is sourced if it is not).
ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
        # shellcheck source=/dev/null
        source "$HOME/.cargo/env"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        die "cargo not found. Portico needs a Rust toolchain (rust-version in Cargo.toml): install it with rustup (https://rustup.rs), then open a new shell or run 'source ~/.cargo/env'."
    fi
    # The host's allocator (tikv-jemalloc-sys) builds jemalloc from C: a C compiler (the cc
    # crate calls `cc`) and make.
    ensure_apt gcc:cc make
}

# ensure_rust_components COMPONENT...: rustfmt / clippy, added with rustup when missing.
ensure_rust_components() {
    local c probe
    for c in "$@"; do
        case "$c" in
            rustfmt) probe=(cargo fmt --version) ;;
            clippy) probe=(cargo clippy --version) ;;
            *) die "ensure_rust_components: unknown component '$c'" ;;
        esac
        if "${probe[@]}" >/dev/null 2>&1; then
            continue
        fi
        if command -v rustup >/dev/null 2>&1; then
            rustup component add "$c"
        else
            die "'${probe[*]}' does not work and rustup is not available to add the '$c' component."
        fi
    done
}

# _as_root CMD...: run CMD as root (directly if we are root, else through sudo).
_as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run '$*' and sudo is not installed"
    fi
}

_PORTICO_APT_UPDATED=0

# ensure_apt PKG[:BINARY]...: install the Debian packages whose binary (default: the
# package's name) is not on PATH. `apt-get update` runs once, and only if something is
# missing. Example: `ensure_apt wrk shellcheck python3`.
ensure_apt() {
    local spec pkg bin missing=()
    for spec in "$@"; do
        pkg="${spec%%:*}"
        bin="${spec#*:}"
        if ! command -v "$bin" >/dev/null 2>&1; then
            missing+=("$pkg")
        fi
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "missing: ${missing[*]} (no apt-get here: install them with your package manager)"
    echo "installing Debian packages: ${missing[*]}"
    if [[ "$_PORTICO_APT_UPDATED" -eq 0 ]]; then
        _as_root apt-get update -qq
        _PORTICO_APT_UPDATED=1
    fi
    _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# ensure_nginx: nginx on PATH (the benchmarks' baseline and load balancer), installed with
# apt if missing. Debian installs it in /usr/sbin, which an ordinary user's PATH may lack;
# `nginx` is the package with the binary on Debian 12 (`nginx-light` is a metapackage on
# top of it).
ensure_nginx() {
    if ! command -v nginx >/dev/null 2>&1 && [[ -x /usr/sbin/nginx ]]; then
        PATH="$PATH:/usr/sbin"
    fi
    ensure_apt nginx
    if ! command -v nginx >/dev/null 2>&1 && [[ -x /usr/sbin/nginx ]]; then
        PATH="$PATH:/usr/sbin"
    fi
    command -v nginx >/dev/null 2>&1 || die "nginx not found on PATH nor in /usr/sbin"
}

# ---------------------------------------------------------------------------------------
# building and installing
# ---------------------------------------------------------------------------------------

# build_all [--release]: build the whole workspace: host, plugin-api, every plugin
# (fixture included) and the hyper baseline. One cargo at a time.
# shellcheck disable=SC2120 # the argument is optional
build_all() {
    local args=(build --workspace)
    case "${1:-}" in
        "") ;;
        --release) args+=(--release) ;;
        *) die "build_all: unknown argument '$1' (only --release)" ;;
    esac
    (cd "$ROOT" && cargo "${args[@]}")
}

# Shared-library naming of the platform: cargo builds libNAME$DYLIB_EXT.
if [[ "$(uname -s)" == Darwin ]]; then
    DYLIB_EXT=.dylib
else
    DYLIB_EXT=.so
fi

# ---------------------------------------------------------------------------------------
# the wsgi plugin (plugins/wsgi: Python WSGI applications in an embedded CPython)
# ---------------------------------------------------------------------------------------

# The Python the wsgi plugin is built against: $PORTICO_PYTHON, else python3 on PATH, else
# Debian's /usr/bin/python3 (with python3-dev and python3-venv installed) — the first with a
# shared libpython (a static one cannot be embedded in a plugin) and the venv module.
WSGI_PYTHON=""
_python_usable() {
    "$1" - <<'PY' >/dev/null 2>&1
import os, sys, sysconfig, venv, ensurepip
libdir, lib = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
sys.exit(0 if sysconfig.get_config_var("Py_ENABLE_SHARED") == 1 and os.path.exists(os.path.join(libdir, lib)) else 1)
PY
}
find_wsgi_python() {
    local candidate
    for candidate in ${PORTICO_PYTHON:-} "$(command -v python3 || true)"; do
        if [[ -n "$candidate" ]] && _python_usable "$candidate"; then
            WSGI_PYTHON="$(command -v "$candidate")"
            return 0
        fi
    done
    if command -v apt-get >/dev/null 2>&1; then
        if ! dpkg -s python3-dev python3-venv >/dev/null 2>&1; then
            echo "installing Debian packages: python3-dev python3-venv"
            _as_root apt-get update -qq
            _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-dev python3-venv
        fi
        if _python_usable /usr/bin/python3; then
            WSGI_PYTHON=/usr/bin/python3
            return 0
        fi
    fi
    return 1
}

# build_wsgi [--release]: builds plugins/wsgi into $TARGET_DIR (libwsgi.so beside the other
# plugins) against find_wsgi_python's Python. With no usable Python: one clear line, and
# WSGI_BUILT stays 0 (everything else builds and is tested without it).
WSGI_BUILT=0
build_wsgi() {
    local args=(build --manifest-path "$ROOT/plugins/wsgi/Cargo.toml")
    [[ "${1:-}" == --release ]] && args+=(--release)
    if ! find_wsgi_python; then
        warn "wsgi plugin SKIPPED: no Python 3 with a shared libpython found (set PORTICO_PYTHON, or install python3-dev)"
        return 0
    fi
    echo "building the wsgi plugin against $WSGI_PYTHON ($("$WSGI_PYTHON" -c 'import sys; print(sys.version.split()[0])'))"
    (cd "$ROOT" && PYO3_PYTHON="$WSGI_PYTHON" CARGO_TARGET_DIR="$TARGET_DIR" cargo "${args[@]}")
    WSGI_BUILT=1
}

# make_wsgi_venv DIR REQUIREMENTS: a virtual environment at DIR made from $WSGI_PYTHON with
# the pinned packages of REQUIREMENTS (kept when it already has them).
make_wsgi_venv() {
    local dir="$1" requirements="$2" stamp
    stamp="$dir/.portico-requirements"
    if [[ -x "$dir/bin/python" ]] && cmp -s "$requirements" "$stamp" 2>/dev/null &&
        [[ "$("$dir/bin/python" -c 'import sys; print(sys._base_executable)' 2>/dev/null)" != "" ]]; then
        return 0
    fi
    rm -rf "$dir"
    "$WSGI_PYTHON" -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$stamp"
    echo "venv $dir: $("$dir/bin/pip" freeze --disable-pip-version-check | tr '\n' ' ')"
}

# install_plugins PROFILE DEST [NAME...]: install built plugins into the plugins directory
# DEST (created if missing). PROFILE is a cargo profile directory name (`debug`,
# `release`: taken under $TARGET_DIR) or a path to one. NAME defaults to the example
# plugins (not the test-only fixture).
#
# Each library is copied to DEST/.NAME.so.tmp and then renamed over DEST/NAME.so. The
# rename is atomic, and a running server keeps the old file it has mapped; copying over
# the live file instead would rewrite code under a running process.
install_plugins() {
    [[ $# -ge 2 ]] || die "usage: install_plugins PROFILE DEST [NAME...]"
    local profile_dir="$1" dest="$2" name src tmp
    shift 2
    local names=("${EXAMPLE_PLUGINS[@]}")
    if [[ $# -gt 0 ]]; then
        names=("$@")
    fi
    if [[ "$profile_dir" != */* ]]; then
        profile_dir="$TARGET_DIR/$profile_dir"
    fi
    mkdir -p "$dest"
    for name in "${names[@]}"; do
        src="$profile_dir/lib$name$DYLIB_EXT"
        [[ -f "$src" ]] || die "plugin '$name' not built: $src is missing (run build_all first)"
        tmp="$dest/.$name$DYLIB_EXT.tmp"
        cp "$src" "$tmp"
        mv -f "$tmp" "$dest/$name$DYLIB_EXT"
    done
    echo "installed plugins into $dest: ${names[*]}"
}

# ---------------------------------------------------------------------------------------
# ports and processes
# ---------------------------------------------------------------------------------------

# free_port: print a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_for_port HOST PORT TIMEOUT_SECS [PID]: poll until HOST:PORT accepts a TCP
# connection. Returns 1 on timeout, or at once if PID (the server) has exited.
wait_for_port() {
    local host="$1" port="$2" timeout="$3" pid="${4:-}"
    local deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
            return 0
        fi
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        sleep 0.1
    done
    return 1
}

# Cleanup on exit: processes this script started (by PID) and temp directories.
_CLEANUP_PIDS=()
_CLEANUP_DIRS=()

cleanup_pid() { _CLEANUP_PIDS+=("$1"); }
# forget_pid PID: a process already stopped and reaped is not stopped again at exit (its PID
# may have been reused by then).
forget_pid() {
    local pid kept=()
    for pid in ${_CLEANUP_PIDS[@]+"${_CLEANUP_PIDS[@]}"}; do
        [[ "$pid" == "$1" ]] || kept+=("$pid")
    done
    _CLEANUP_PIDS=(${kept[@]+"${kept[@]}"})
}
cleanup_dir() { _CLEANUP_DIRS+=("$1"); }

# stop_pid PID: SIGTERM, wait up to 5 s for it to drain, then SIGKILL.
stop_pid() {
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

_run_cleanup() {
    local pid dir
    for pid in ${_CLEANUP_PIDS[@]+"${_CLEANUP_PIDS[@]}"}; do
        stop_pid "$pid"
    done
    for dir in ${_CLEANUP_DIRS[@]+"${_CLEANUP_DIRS[@]}"}; do
        rm -rf -- "$dir"
    done
}

# install_cleanup_trap: run the cleanup on exit, and exit on INT/TERM (which runs it too).
install_cleanup_trap() {
    trap _run_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}
