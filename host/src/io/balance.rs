//! Connections per event loop, shared by all of them. Every loop accepts from the same
//! listening sockets; the one that accepts places the connection on the least-loaded loop
//! (itself on a tie), so connections spread evenly however the kernel wakes the loops. It is
//! also the server-wide `--max-connections` count.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The connection count of each event loop.
pub struct Balance {
    loads: Box<[AtomicUsize]>,
    /// Accepting stopped (the cap, or an accept error such as EMFILE): the next loop that
    /// closes a connection resumes it.
    paused: AtomicBool,
}

impl Balance {
    /// For `loops` event loops.
    pub fn new(loops: usize) -> Balance {
        Balance { loads: (0..loops.max(1)).map(|_| AtomicUsize::new(0)).collect(), paused: AtomicBool::new(false) }
    }

    /// Open connections over all loops.
    pub fn total(&self) -> usize {
        self.loads.iter().map(|l| l.load(Ordering::SeqCst)).sum()
    }

    /// The least-loaded loop, `me` on a tie.
    pub fn pick(&self, me: usize) -> usize {
        let mut best = (self.loads[me].load(Ordering::SeqCst), me);
        for (i, l) in self.loads.iter().enumerate() {
            let n = l.load(Ordering::SeqCst);
            if n < best.0 {
                best = (n, i);
            }
        }
        best.1
    }

    /// Counts a connection placed on loop `i`.
    pub fn add(&self, i: usize) {
        self.loads[i].fetch_add(1, Ordering::SeqCst);
    }

    /// Counts a connection of loop `i` gone.
    pub fn remove(&self, i: usize) {
        self.loads[i].fetch_sub(1, Ordering::SeqCst);
    }

    /// Tries to take one more connection under `cap`. When the cap is reached, marks
    /// accepting as paused and returns `false`; the paused flag is checked again after being
    /// set, since a loop that closed a connection in between saw it unset and did not resume.
    pub fn room(&self, cap: usize) -> bool {
        if self.total() < cap {
            return true;
        }
        self.paused.store(true, Ordering::SeqCst);
        if self.total() >= cap {
            return false;
        }
        self.paused.store(false, Ordering::SeqCst);
        true
    }

    /// Marks accepting as paused (an accept error such as EMFILE): resumed when a connection
    /// closes.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Whether accepting was paused, clearing the mark (the caller resumes accepting).
    pub fn take_paused(&self) -> bool {
        self.paused.swap(false, Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_loaded_loop_takes_the_connection_and_the_cap_pauses() {
        let b = Balance::new(3);
        b.add(0);
        b.add(0);
        b.add(2);
        assert_eq!(b.pick(0), 1);
        assert_eq!(b.pick(2), 1);
        b.add(1);
        assert_eq!(b.pick(1), 1, "a tie keeps it on the loop that accepted");
        assert!(b.room(5) && !b.room(4));
        assert!(b.take_paused() && !b.take_paused());
        b.remove(0);
        assert!(b.room(4));
    }
}
