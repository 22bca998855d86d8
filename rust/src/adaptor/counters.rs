//! Per-direction counters, written by the relay thread and read by anyone.
//!
//! The relay adds once per batch (not per frame) with relaxed atomics: the
//! counters are statistics, and a reader may see one direction a batch ahead
//! of the other.
//!
//! `errors` counts every frame lost to an error; `malformed`, `runts` and
//! `refused` split out the causes known by name (the rest are I/O errors
//! on one frame, such as a frame the VM socket cannot carry). `drops` are
//! frames dropped under backpressure, not errors.

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
    malformed: AtomicU64,
    runts: AtomicU64,
    refused: AtomicU64,
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

    /// One frame lost to an error of no named cause.
    pub(crate) fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` malformed frames from the VM (a datagram cut short or without an
    /// Ethernet header, a stream frame with a bad length).
    pub(crate) fn add_malformed(&self, n: u64) {
        self.add_cause(&self.malformed, n);
    }

    /// `n` frames shorter than an Ethernet header read from the interface.
    pub(crate) fn add_runts(&self, n: u64) {
        self.add_cause(&self.runts, n);
    }

    /// `n` frames the interface refused to take.
    pub(crate) fn add_refused(&self, n: u64) {
        self.add_cause(&self.refused, n);
    }

    fn add_cause(&self, cause: &AtomicU64, n: u64) {
        if n > 0 {
            cause.fetch_add(n, Ordering::Relaxed);
            self.errors.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            drops: self.drops.load(Ordering::Relaxed),
            waits: self.waits.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            runts: self.runts.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
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
        assert_eq!(s, DirectionStats { packets: 3, bytes: 180, batches: 1, drops: 2, waits: 1, errors: 1, malformed: 0, runts: 0, refused: 0 });
    }

    #[test]
    fn each_cause_is_counted_apart_and_in_errors() {
        let c = Counters::default();
        c.add_malformed(2);
        c.add_runts(3);
        c.add_refused(4);
        c.add_refused(0);
        c.add_error();
        let s = c.snapshot();
        assert_eq!((s.malformed, s.runts, s.refused, s.errors), (2, 3, 4, 10));
        assert_eq!(s.drops, 0);
    }
}
