//! Per-direction counters, written by the relay thread and read by anyone.
//!
//! The relay adds once per batch (not per frame) with relaxed atomics: the
//! counters are statistics, and a reader may see one direction a batch ahead
//! of the other.

use std::sync::atomic::{AtomicU64, Ordering};

use super::DirectionStats;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    batches: AtomicU64,
    drops: AtomicU64,
    waits: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    /// One batch that delivered `packets` frames of `bytes` in total.
    pub(crate) fn add_batch(&self, packets: u64, bytes: u64) {
        if packets == 0 {
            return;
        }
        self.packets.fetch_add(packets, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_drops(&self, n: u64) {
        if n > 0 {
            self.drops.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn add_wait(&self) {
        self.waits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            drops: self.drops.load(Ordering::Relaxed),
            waits: self.waits.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_batches_are_not_counted() {
        let c = Counters::default();
        c.add_batch(0, 0);
        c.add_batch(3, 180);
        c.add_drops(0);
        c.add_drops(2);
        c.add_wait();
        c.add_error();
        let s = c.snapshot();
        assert_eq!(s, DirectionStats { packets: 3, bytes: 180, batches: 1, drops: 2, waits: 1, errors: 1 });
    }
}
