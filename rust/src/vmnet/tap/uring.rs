//! An io_uring used to batch TAP reads and writes: the kernel has no batched
//! TAP call, so one `io_uring_enter` carrying many `READ`/`WRITE` operations
//! on the (non-blocking) TAP fd stands in for one syscall per frame.
//!
//! Built on the `io-uring` crate; at start a `Probe` asks the kernel whether
//! it supports `IORING_OP_READ` and `IORING_OP_WRITE` (5.6+), so an old
//! kernel is found before any frame is handed to it.
//!
//! Owned by one [`super::Tap`], used from the thread that drives it (the
//! relay thread); `&mut self` everywhere, so submissions never interleave.
//!
//! Invariants:
//! - Every operation [`Uring::run`] queues is either completed before it
//!   returns or never reaches the kernel: no buffer pointer outlives the
//!   call, and no completion of one call is read as a result of the next.
//!   A failed `io_uring_enter` that consumed none of the queued entries
//!   leaves them in the submission ring, where the next call would submit
//!   them with their stale pointers; so the ring is then replaced by a new
//!   one (the old one, with its queued entries, is closed unsubmitted).
//! - Entries the kernel did not consume on one enter are submitted by the
//!   next: without `IORING_SETUP_SUBMIT_ALL` (before 5.18) a failure to
//!   prepare one entry ends that enter's submission with a completion for
//!   the failed entry, and the entries after it stay queued. Waiting only
//!   for completions of entries the kernel took keeps that from hanging.
//! - Every operation carries RWF_NOWAIT, so a would-block one completes at
//!   once with `-EAGAIN` instead of being parked, and operations run inline
//!   in submission order. A file without IOCB_NOWAIT support answers
//!   `-EOPNOTSUPP`; the caller then falls back to one syscall per frame.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types, IoUring, Probe};

/// RWF_NOWAIT (`include/uapi/linux/fs.h`): fail with EAGAIN instead of
/// waiting. io_uring would otherwise park a would-block read on a pollable
/// fd until data came, O_NONBLOCK or not.
const RWF_NOWAIT: i32 = 0x0000_0008;

/// What one operation does.
#[derive(Clone, Copy)]
pub(crate) enum Op {
    Read { buf: *mut u8, len: usize },
    Write { buf: *const u8, len: usize },
}

/// Whether the ring asks for `IORING_SETUP_SUBMIT_ALL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SubmitAll {
    /// Ask for it; fall back to a ring without it where the kernel refuses
    /// the flag (before 5.18).
    IfSupported,
    /// Never ask (what a kernel before 5.18 gives; used by tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Never,
}

pub(crate) struct Uring {
    ring: IoUring,
    entries: u32,
    submit_all: bool,
    /// Test hook: the next enter fails with this errno before the kernel
    /// sees the queued entries.
    #[cfg(test)]
    fail_next_enter: Option<i32>,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring").field("entries", &self.entries).field("submit_all", &self.submit_all).finish()
    }
}

fn build(entries: u32, submit_all: SubmitAll) -> io::Result<(IoUring, bool)> {
    if submit_all == SubmitAll::IfSupported {
        // COOP_TASKRUN (5.19): no IPI to run completion work.
        match IoUring::builder().setup_submit_all().setup_coop_taskrun().build(entries) {
            Ok(r) => return Ok((r, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((IoUring::new(entries)?, false))
}

impl Uring {
    /// A ring for up to `entries` operations per call (rounded up to a power
    /// of two by the kernel). Fails where io_uring is missing or forbidden
    /// (ENOSYS, EPERM under seccomp or `kernel.io_uring_disabled`), or where
    /// the kernel's probe lacks READ or WRITE (EOPNOTSUPP).
    pub(crate) fn new(entries: u32, submit_all: SubmitAll) -> io::Result<Uring> {
        let (ring, submit_all) = build(entries, submit_all)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in [(opcode::Read::CODE, "READ"), (opcode::Write::CODE, "WRITE")] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(io::ErrorKind::Unsupported, format!("the kernel's io_uring has no IORING_OP_{name}")));
            }
        }
        let entries = ring.params().sq_entries();
        Ok(Uring {
            ring,
            entries,
            submit_all,
            #[cfg(test)]
            fail_next_enter: None,
        })
    }

    /// Most operations per [`Uring::run`] call.
    pub(crate) fn capacity(&self) -> usize {
        self.entries as usize
    }

    /// Runs `ops` on `fd` in order and waits for all of them; `results[i]`
    /// gets operation i's result (bytes, or `-errno`).
    ///
    /// # Safety
    /// Every buffer in `ops` must be valid for its length (writable for
    /// reads) until this call returns.
    pub(crate) unsafe fn run(&mut self, fd: RawFd, ops: &[Op], results: &mut [i32]) -> io::Result<()> {
        let n = ops.len().min(self.capacity()).min(results.len());
        let entries: Vec<squeue::Entry> = ops[..n]
            .iter()
            .enumerate()
            .map(|(i, op)| {
                // offset -1: use (and advance) the file position, as
                // read/write do; a TAP has none.
                let e = match *op {
                    Op::Read { buf, len } => opcode::Read::new(types::Fd(fd), buf, len as u32).offset(u64::MAX).rw_flags(RWF_NOWAIT).build(),
                    Op::Write { buf, len } => opcode::Write::new(types::Fd(fd), buf, len as u32).offset(u64::MAX).rw_flags(RWF_NOWAIT).build(),
                };
                e.user_data(i as u64)
            })
            .collect();
        // SAFETY: the caller keeps every buffer valid until we return.
        unsafe { self.run_entries(&entries, &mut results[..n]) }
    }

    /// Queues `entries` (user_data = index into `results`), submits them
    /// and waits for every one the kernel took; see the module invariants.
    ///
    /// # Safety
    /// Whatever the entries point at stays valid until this call returns.
    unsafe fn run_entries(&mut self, entries: &[squeue::Entry], results: &mut [i32]) -> io::Result<()> {
        let n = entries.len();
        if n == 0 {
            return Ok(());
        }
        {
            let mut sq = self.ring.submission();
            debug_assert!(sq.is_empty(), "entries left queued by an earlier call");
            for e in entries {
                // SAFETY: the caller keeps the buffers valid until we return,
                // and we do not return before each queued entry completed
                // or the ring holding it is gone.
                if unsafe { sq.push(e) }.is_err() {
                    // n <= capacity and the queue was empty.
                    unreachable!("io_uring submission queue full");
                }
            }
        }
        let mut seen = 0usize;
        let mut taken_any = false;
        while seen < n {
            match self.enter() {
                Ok(_) => taken_any = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if !taken_any && self.ring.submission().len() == n => {
                    // Nothing reached the kernel: drop the ring with its
                    // queued entries so they are never submitted.
                    let (ring, _) = build(self.entries, if self.submit_all { SubmitAll::IfSupported } else { SubmitAll::Never })?;
                    self.ring = ring;
                    return Err(e);
                }
                // Some entries are in flight: their buffers must stay ours
                // until they complete, so keep waiting (EAGAIN and EBUSY are
                // transient by the kernel's own account).
                Err(_) => taken_any = true,
            }
            for cqe in self.ring.completion() {
                if let Some(slot) = results.get_mut(cqe.user_data() as usize) {
                    *slot = cqe.result();
                }
                seen += 1;
            }
        }
        Ok(())
    }

    /// One `io_uring_enter`: submits whatever is still queued and waits for
    /// one completion if there is nothing to submit.
    fn enter(&mut self) -> io::Result<usize> {
        #[cfg(test)]
        if let Some(errno) = self.fail_next_enter.take() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let queued = self.ring.submission().len();
        // With entries queued, submitting them is progress enough: a prep
        // failure may leave some queued with no completion to wait for.
        self.ring.submitter().submit_and_wait(if queued > 0 { 0 } else { 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// A ring, or a failure naming why: the TAP batching rests on io_uring,
    /// so a host that forbids it fails these tests instead of passing them
    /// untested.
    fn ring(submit_all: SubmitAll) -> Uring {
        match Uring::new(8, submit_all) {
            Ok(r) => r,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => {
                panic!("io_uring is unavailable here ({e}); the TAP batching rests on it, so its tests cannot pass without it")
            }
            Err(e) => panic!("io_uring_setup: {e}"),
        }
    }

    fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [-1; 2];
        // SAFETY: socketpair writes two descriptors.
        assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK, 0, fds.as_mut_ptr()) }, 0);
        // SAFETY: both fds are new and ours.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn write_ops(frames: &[Vec<u8>]) -> Vec<Op> {
        frames.iter().map(|f| Op::Write { buf: f.as_ptr(), len: f.len() }).collect()
    }

    #[test]
    fn reads_and_writes_run_in_order_on_a_nonblocking_fd() {
        let mut ring = ring(SubmitAll::IfSupported);
        let (a, b) = seqpacket_pair();
        let frames: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + i as usize]).collect();
        let mut res = vec![0; 8];
        // SAFETY: frames outlive the call.
        unsafe { ring.run(a.as_raw_fd(), &write_ops(&frames), &mut res).unwrap() };
        assert_eq!(&res[..5], &[10, 11, 12, 13, 14]);
        let mut bufs = vec![vec![0u8; 64]; 7];
        let ops: Vec<Op> = bufs.iter_mut().map(|b| Op::Read { buf: b.as_mut_ptr(), len: b.len() }).collect();
        // SAFETY: bufs outlive the call.
        unsafe { ring.run(b.as_raw_fd(), &ops, &mut res).unwrap() };
        for i in 0..5 {
            assert_eq!(res[i], frames[i].len() as i32);
            assert_eq!(&bufs[i][..frames[i].len()], frames[i].as_slice());
        }
        assert_eq!(res[5], -libc::EAGAIN);
        assert_eq!(res[6], -libc::EAGAIN);
    }

    #[test]
    fn a_failed_enter_leaves_nothing_queued_for_the_next_call() {
        let mut ring = ring(SubmitAll::IfSupported);
        let (a, b) = seqpacket_pair();
        let lost: Vec<Vec<u8>> = (0..3u8).map(|i| vec![0xee; 20 + i as usize]).collect();
        let mut res = vec![0; 8];
        ring.fail_next_enter = Some(libc::EBUSY);
        // SAFETY: `lost` outlives the call.
        let err = unsafe { ring.run(a.as_raw_fd(), &write_ops(&lost), &mut res) }.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
        drop(lost);
        // The next batch gets its own results, and only its frames arrive.
        let frames: Vec<Vec<u8>> = (0..2u8).map(|i| vec![i; 40 + i as usize]).collect();
        let mut res = vec![-999; 8];
        // SAFETY: frames outlive the call.
        unsafe { ring.run(a.as_raw_fd(), &write_ops(&frames), &mut res).unwrap() };
        assert_eq!(&res[..3], &[40, 41, -999]);
        let mut buf = [0u8; 128];
        let mut got = Vec::new();
        loop {
            // SAFETY: buf is a valid writable buffer.
            let r = unsafe { libc::read(b.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r < 0 {
                break;
            }
            got.push(buf[..r as usize].to_vec());
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn a_prep_failure_without_submit_all_does_not_hang() {
        let mut ring = ring(SubmitAll::Never);
        assert!(!ring.submit_all);
        let (a, b) = seqpacket_pair();
        let frames: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 30 + i as usize]).collect();
        // The middle write names no open fd: it fails with EBADF, which
        // ends that enter's submission. -1, not the number of an fd just
        // closed: another test's thread may be given that number again
        // before the ring runs (and would then be written to).
        let bad = -1;
        let fds = [a.as_raw_fd(), bad, a.as_raw_fd()];
        let entries: Vec<squeue::Entry> = frames
            .iter()
            .zip(fds)
            .enumerate()
            .map(|(i, (f, fd))| opcode::Write::new(types::Fd(fd), f.as_ptr(), f.len() as u32).offset(u64::MAX).build().user_data(i as u64))
            .collect();
        let mut res = vec![0; 3];
        // SAFETY: frames outlive the call.
        unsafe { ring.run_entries(&entries, &mut res).unwrap() };
        assert_eq!(res, [30, -libc::EBADF, 32]);
        let mut buf = [0u8; 64];
        // SAFETY: buf is a valid writable buffer.
        let r = unsafe { libc::read(b.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(r, 30);
    }
}
