//! A timer for push streams: [`wake_at`] wakes a `std::task::Waker` at an instant, so a
//! [`Body::poll_fn`](crate::Body::poll_fn) that waits for a time (a heartbeat, a long poll's
//! deadline, a paced generator) holds no thread.
//!
//! One thread per loaded copy of the plugin, started on first use, sleeps until the earliest
//! deadline (`Condvar::wait_timeout`); plugins are never unloaded, so it lives as long as the
//! server. Resolution is the operating system's sleep granularity (about 1 ms on Linux); a
//! waker is woken at or after its instant, never before.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::task::Waker;
use std::time::{Duration, Instant};

/// Wakes `waker` at `deadline` (at once if it has passed). Cheap: one heap push under a
/// lock, and a notification when it becomes the earliest deadline.
pub fn wake_at(deadline: Instant, waker: Waker) {
    let timer = TIMER.get_or_init(start);
    let mut heap = timer.heap.lock().unwrap_or_else(PoisonError::into_inner);
    let earliest = heap.peek().is_none_or(|e| deadline < e.deadline);
    heap.push(Entry { deadline, waker });
    drop(heap);
    if earliest {
        timer.changed.notify_one();
    }
}

/// Wakes `waker` after `delay`.
pub fn wake_after(delay: Duration, waker: Waker) {
    wake_at(Instant::now() + delay, waker);
}

struct Timer {
    heap: Mutex<BinaryHeap<Entry>>,
    changed: Condvar,
}

static TIMER: OnceLock<Timer> = OnceLock::new();

fn start() -> Timer {
    std::thread::Builder::new()
        .name("portico-api timer".to_owned())
        .spawn(run)
        .expect("the SDK timer thread could not start");
    Timer { heap: Mutex::new(BinaryHeap::new()), changed: Condvar::new() }
}

fn run() {
    let timer = TIMER.wait();
    let mut due = Vec::new();
    loop {
        let mut heap = timer.heap.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        while heap.peek().is_some_and(|e| e.deadline <= now) {
            due.extend(heap.pop().map(|e| e.waker));
        }
        if due.is_empty() {
            heap = match heap.peek().map(|e| e.deadline - now) {
                Some(wait) => timer.changed.wait_timeout(heap, wait).unwrap_or_else(PoisonError::into_inner).0,
                None => timer.changed.wait(heap).unwrap_or_else(PoisonError::into_inner),
            };
            drop(heap);
            continue;
        }
        drop(heap);
        // Wakers run plugin or host code: outside the lock.
        for waker in due.drain(..) {
            waker.wake();
        }
    }
}

/// A deadline in the min-heap: the earliest on top (those due are woken together, so the order
/// among equal deadlines does not matter).
struct Entry {
    deadline: Instant,
    waker: Waker,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        other.deadline.cmp(&self.deadline)
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Records its name and the time it was woken.
    struct Mark(&'static str, Arc<Mutex<Vec<(&'static str, Instant)>>>);

    impl std::task::Wake for Mark {
        fn wake(self: Arc<Self>) {
            self.1.lock().unwrap().push((self.0, Instant::now()));
        }
    }

    #[test]
    fn wakers_are_woken_at_or_after_their_deadline_in_deadline_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        wake_at(start + Duration::from_millis(60), Waker::from(Arc::new(Mark("later", Arc::clone(&log)))));
        wake_at(start + Duration::from_millis(20), Waker::from(Arc::new(Mark("sooner", Arc::clone(&log)))));
        wake_at(start, Waker::from(Arc::new(Mark("now", Arc::clone(&log)))));
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.lock().unwrap().len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let log = log.lock().unwrap();
        let names: Vec<_> = log.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["now", "sooner", "later"]);
        assert!(log[1].1 >= start + Duration::from_millis(20));
        assert!(log[2].1 >= start + Duration::from_millis(60));
    }
}
