//! The datagram wire format on the VM socket: one Ethernet frame per
//! datagram, no header. Used by the `datagram` (one call per frame) and
//! `datagram_next` (batched calls) kinds. Runs on the relay thread.
//!
//! Invariants: a datagram that was truncated (larger than the interface's
//! maximum frame) or shorter than an Ethernet header is counted as an error
//! and skipped, never passed on; a zero-length datagram is such a frame, not
//! an end of file (datagram sockets have none).

use std::io;
use std::os::fd::RawFd;

use super::batch_io;
use super::MIN_FRAME_BYTES;

/// Frames received from the VM and not yet written to the interface.
pub(crate) struct DatagramReader {
    batched: bool,
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    /// Indices into `bufs` of the valid frames of the last receive.
    valid: Vec<usize>,
    next: usize,
}

/// The outcome of one receive.
pub(crate) struct Received {
    /// Datagrams skipped as malformed (truncated, too short).
    pub(crate) rejected: usize,
}

impl DatagramReader {
    pub(crate) fn new(batched: bool, batch_frames: usize, max_frame_bytes: usize) -> Self {
        DatagramReader {
            batched,
            bufs: vec![vec![0u8; batch_io::receive_buffer_len(max_frame_bytes)]; batch_frames],
            lens: vec![0; batch_frames],
            truncated: vec![false; batch_frames],
            valid: Vec::with_capacity(batch_frames),
            next: 0,
        }
    }

    pub(crate) fn has_pending(&self) -> bool {
        self.next < self.valid.len()
    }

    /// Receives a batch. `WouldBlock` when nothing is waiting.
    /// Precondition: nothing pending.
    pub(crate) fn receive(&mut self, fd: RawFd) -> io::Result<Received> {
        debug_assert!(!self.has_pending());
        self.valid.clear();
        self.next = 0;
        let n = if self.batched {
            batch_io::recv_batch(fd, &mut self.bufs, &mut self.lens, &mut self.truncated)?
        } else {
            batch_io::recv_each(fd, &mut self.bufs, &mut self.lens, &mut self.truncated)?
        };
        let mut rejected = 0;
        for i in 0..n {
            if self.truncated[i] || self.lens[i] < MIN_FRAME_BYTES {
                rejected += 1;
            } else {
                self.valid.push(i);
            }
        }
        Ok(Received { rejected })
    }

    /// The pending frames, oldest first (at most `limit`).
    pub(crate) fn pending(&self, limit: usize) -> Vec<&[u8]> {
        self.valid[self.next..].iter().take(limit).map(|&i| &self.bufs[i][..self.lens[i]]).collect()
    }

    pub(crate) fn pending_count(&self) -> usize {
        self.valid.len() - self.next
    }

    /// Marks the first `n` pending frames done (written or dropped).
    pub(crate) fn consume(&mut self, n: usize) {
        self.next = (self.next + n).min(self.valid.len());
    }
}

/// Sends frames to the VM, one datagram each.
pub(crate) struct DatagramWriter {
    batched: bool,
    /// The VM socket's send limit as granted when the adaptor set it.
    send_limit: usize,
}

impl DatagramWriter {
    pub(crate) fn new(batched: bool, send_limit: usize) -> Self {
        DatagramWriter { batched, send_limit }
    }

    /// Sends leading frames; returns how many the kernel took.
    pub(crate) fn send(&mut self, fd: RawFd, frames: &[&[u8]]) -> io::Result<usize> {
        if self.batched {
            batch_io::send_batch(fd, frames, self.send_limit)
        } else {
            batch_io::send_each(fd, frames)
        }
    }
}
