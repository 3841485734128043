//! The `portico` binary: parses the command line, sets up logging, runs the server.

#![forbid(unsafe_code)]

use anyhow::Context;
use portico::master::{self, spawn};
use portico::settings::args::LogFormat;
use portico::settings::{file as config_file, print};
use portico::{access_log, listeners};
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::prelude::*;

/// jemalloc, with its background purging thread, not glibc's malloc: memory a burst of requests
/// used goes back to the system within seconds. Measured with `scripts/memory` (1,000 queued
/// requests with 60 KB heads, then every client closes): 10 s after, glibc still held the peak
/// (72 MiB; buffers below its mmap threshold stay in its arenas), jemalloc was back within 1–5 MiB of
/// the start (three runs). Plugins keep their own allocator: every buffer crosses the boundary with
/// its own vtable (`RVec`, `RBox`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Runs [`run`]; a start-up error is one plain line (the cause chain, never a backtrace) and
/// exit status 2 when the configuration is at fault, 1 otherwise.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("portico: error: {line}");
            let config = e.chain().any(|c| c.downcast_ref::<config_file::ConfigError>().is_some());
            std::process::ExitCode::from(if config { 2 } else { 1 })
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut argv = std::env::args_os();
    match argv.nth(1) {
        Some(a) if a == "check" => std::process::exit(portico::check::run(argv.collect())),
        Some(a) if a == "new" => std::process::exit(portico::scaffold::run(argv.collect())),
        Some(a) if a == "install" => std::process::exit(portico::install::run(argv.collect())),
        _ => {}
    }
    // Before any thread exists: taking the sockets removes `LISTEN_*` from the environment.
    let inherited = listeners::inherited();
    let worker_of = std::env::var(spawn::WORKER_ENV).ok();
    let (mut args, config) = match config_file::parse_args(std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("portico: {e}");
            std::process::exit(2);
        }
    };
    if args.print_config {
        print!("{}", print::render(&args, config.as_ref()));
        return Ok(());
    }

    // Every line says which process wrote it: the master, or which worker.
    let who = match &worker_of {
        Some(generation) => format!("worker {} g{generation}", std::process::id()),
        None if args.worker_processes() > 0 => format!("master {}", std::process::id()),
        None => String::new(),
    };
    // Colours only for a person at a terminal, and never with NO_COLOR set (no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let level = EnvFilter::try_new(&args.log_level).context("invalid --log-level")?;
    let not_access = filter_fn(|m| m.target() != access_log::TARGET);
    let error_log = match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_timer(Tagged(who.clone()))
            .with_writer(std::io::stderr)
            .with_filter(level)
            .with_filter(not_access)
            .boxed(),
        // The process tag becomes a field of the JSON object, not text before the time.
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(TagWriter::make(&who))
            .with_filter(level)
            .with_filter(not_access)
            .boxed(),
    };
    access_log::set_format(args.access_log_format.parse().map_err(anyhow::Error::msg)?);
    let (access_writer, _guard) = match args.access_log.as_str() {
        "off" => (None, None),
        "-" => {
            let (w, g) = tracing_appender::non_blocking(std::io::stdout());
            (Some(w), Some(g))
        }
        path => {
            let file = access_log::LogFile::open(path.into()).with_context(|| format!("opening access log {path}"))?;
            let (w, g) = tracing_appender::non_blocking(file);
            (Some(w), Some(g))
        }
    };
    let access_layer = access_writer.map(|w| {
        tracing_subscriber::fmt::layer()
            .with_writer(w)
            .without_time()
            .with_level(false)
            .with_target(false)
            .with_ansi(false)
            .with_filter(filter_fn(|m| m.target() == access_log::TARGET))
    });
    tracing_subscriber::registry().with(error_log).with(access_layer).init();

    let inherited = inherited?;
    match (worker_of, inherited.control) {
        (Some(_), Some(control)) => {
            // A worker process: the master chose its plugins (a generation's snapshot).
            if let Some(dir) = std::env::var_os(spawn::SNAPSHOT_ENV) {
                args.plugins = dir.into();
            }
            if let Some(dir) = std::env::var_os(spawn::CACHE_ENV) {
                args.cache_dir = Some(dir.into());
            }
            portico::server::run_worker(args, config, inherited.listeners, control)
        }
        _ if args.worker_processes() == 0 => portico::server::run(args, config, inherited.listeners),
        _ => master::run(args, config, inherited.listeners, inherited.upgrade),
    }
}

/// The JSON error log's writer: each event's object gets a first key `"process"` (`master
/// 41`, `worker 57 g3`) when there are several processes. The fmt layer writes one whole
/// object per `write`.
struct TagWriter {
    prefix: std::sync::Arc<[u8]>,
}

impl TagWriter {
    fn make(who: &str) -> impl for<'a> tracing_subscriber::fmt::MakeWriter<'a> + 'static {
        let prefix: std::sync::Arc<[u8]> = if who.is_empty() {
            std::sync::Arc::from(&b"{"[..])
        } else {
            format!("{{\"process\":{},", serde_json::Value::from(who)).into_bytes().into()
        };
        move || TagWriter { prefix: std::sync::Arc::clone(&prefix) }
    }
}

impl std::io::Write for TagWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        match buf.strip_prefix(b"{") {
            Some(rest) => {
                let mut line = Vec::with_capacity(self.prefix.len() + rest.len());
                line.extend_from_slice(&self.prefix);
                line.extend_from_slice(rest);
                err.write_all(&line)?;
            }
            None => err.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The error log's time stamp, followed by who wrote the line (`master 41`, `worker 57 g3`).
struct Tagged(String);

impl tracing_subscriber::fmt::time::FormatTime for Tagged {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        tracing_subscriber::fmt::time::SystemTime.format_time(w)?;
        if self.0.is_empty() { Ok(()) } else { write!(w, " {}", self.0) }
    }
}
