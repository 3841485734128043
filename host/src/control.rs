//! The control channel between the master process and one worker process: a Unix stream
//! socket pair made by the master, the worker's end passed as its last inherited descriptor
//! (named `portico-control` in `LISTEN_FDNAMES`). One JSON object per line, each way.
//!
//! The worker says when it is ready and when it wants to be replaced; the master asks it for
//! its counters (the status page's totals across the tree). End of input on either side means
//! the other process is gone: a worker whose master is gone drains and exits.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A worker's message to the master.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum ToMaster {
    /// Listening, plugins loaded and initialised: the worker serves.
    Ready {
        /// Its plugins, `NAME VERSION` each.
        plugins: Vec<String>,
    },
    /// The worker asks to be replaced gracefully (`--max-requests`, the memory ceiling, too
    /// many abandoned calls): the master starts a replacement, then stops this one.
    Retire {
        /// Why, for the log and the status page.
        reason: String,
    },
    /// The answer to [`ToWorker::Report`].
    Report(WorkerReport),
    /// The worker serves the status page and asks for the whole tree.
    TreeRequest {
        /// Echoed in the answer.
        id: u64,
    },
}

/// The master's message to a worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum ToWorker {
    /// Send a [`ToMaster::Report`] now.
    Report,
    /// The answer to [`ToMaster::TreeRequest`]: the tree as JSON.
    Tree {
        /// The request's id.
        id: u64,
        /// What the status page shows about the process tree (`crate::master`'s record).
        tree: serde_json::Value,
    },
}

/// A worker's counters, as the master adds them up.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerReport {
    /// Requests answered, every kind.
    pub requests: u64,
    /// Resident memory, bytes.
    pub rss_bytes: Option<u64>,
    /// Open connections.
    pub connections: u64,
    /// Responses by status class (1xx…5xx), every kind.
    #[serde(default)]
    pub responses: Vec<u64>,
    /// The docroot's responses by status class.
    #[serde(default)]
    pub static_responses: Vec<u64>,
    /// Per plugin: requests, responses by class (1xx…5xx), latency sum in seconds, and the
    /// histogram's buckets.
    pub plugins: Vec<PluginTotals>,
}

/// One plugin's counters in one worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PluginTotals {
    /// Route name.
    pub name: String,
    /// Requests answered.
    pub requests: u64,
    /// Responses by status class, 1xx to 5xx.
    pub classes: Vec<u64>,
    /// Application calls running now.
    pub in_flight: u64,
    /// Sum of latencies, seconds.
    pub sum_seconds: f64,
    /// Requests per latency bucket.
    pub buckets: Vec<u64>,
}

/// Writes one message as a line.
///
/// # Errors
/// As `write(2)` (the other side is gone: `BrokenPipe`).
pub fn send<T: Serialize>(to: &Mutex<UnixStream>, msg: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(io::Error::other)?;
    line.push(b'\n');
    to.lock().unwrap_or_else(|e| e.into_inner()).write_all(&line)
}

/// Reads messages until end of input, handing each to `f`; lines that do not parse are
/// logged and skipped. Returns at end of input or on a read error.
pub fn read_all<T: for<'de> Deserialize<'de>>(from: UnixStream, mut f: impl FnMut(T)) {
    for line in BufReader::new(from).lines() {
        let Ok(line) = line else { return };
        match serde_json::from_str(&line) {
            Ok(msg) => f(msg),
            Err(e) => tracing::warn!("control channel: unreadable message ({e})"),
        }
    }
}

/// Splits complete lines off `buf` (the master's non-blocking reads) and parses each.
pub fn take_lines<T: for<'de> Deserialize<'de>>(buf: &mut Vec<u8>) -> Vec<T> {
    let mut out = Vec::new();
    while let Some(end) = buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buf.drain(..=end).collect();
        match serde_json::from_slice(&line[..end]) {
            Ok(msg) => out.push(msg),
            Err(e) => tracing::warn!("control channel: unreadable message ({e})"),
        }
    }
    out
}

/// A worker's way to ask the master for the whole tree (the status page): the request goes out
/// on the control socket, the answer comes back through the worker's control thread
/// ([`TreeLink::answered`]).
#[derive(Debug)]
pub struct TreeLink {
    to_master: Arc<Mutex<UnixStream>>,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, crossbeam_channel::Sender<serde_json::Value>>>,
}

impl TreeLink {
    /// A link writing to `to_master`.
    pub fn new(to_master: Arc<Mutex<UnixStream>>) -> TreeLink {
        TreeLink { to_master, next: AtomicU64::new(1), waiting: Mutex::new(HashMap::new()) }
    }

    /// Asks the master and waits at most `timeout` for the tree; `None` if it does not answer.
    pub fn ask(&self, timeout: Duration) -> Option<serde_json::Value> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        let answer =
            send(&self.to_master, &ToMaster::TreeRequest { id }).ok().and_then(|()| rx.recv_timeout(timeout).ok());
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        answer
    }

    /// The master's answer to request `id`.
    pub fn answered(&self, id: u64, tree: serde_json::Value) {
        if let Some(tx) = self.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
            let _ = tx.send(tree);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let msgs = [ToMaster::Ready { plugins: vec!["hello 1.0".into()] }, ToMaster::TreeRequest { id: 7 }];
        let mut buf = Vec::new();
        for m in &msgs {
            buf.extend(serde_json::to_vec(m).unwrap());
            buf.push(b'\n');
        }
        buf.extend(b"{\"msg\":\"re");
        let got: Vec<ToMaster> = take_lines(&mut buf);
        assert_eq!(got, msgs);
        assert_eq!(buf, b"{\"msg\":\"re");
    }
}
