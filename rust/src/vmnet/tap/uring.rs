//! A minimal io_uring, used to batch TAP reads and writes: the kernel has no
//! batched TAP call, so one `io_uring_enter` carrying many `READ`/`WRITE`
//! operations on the (non-blocking) TAP fd stands in for one syscall per
//! frame.
//!
//! Declarations follow `include/uapi/linux/io_uring.h` (struct
//! `io_uring_params`, `io_sqring_offsets`, `io_cqring_offsets`,
//! `io_uring_sqe`, `io_uring_cqe`, the `IORING_*` constants); syscall numbers
//! from `asm/unistd.h` via libc. No crate: the subset needed is small.
//!
//! Owned by one [`super::Tap`], used from the thread that drives it (the
//! relay thread); `&mut self` everywhere, so submissions never interleave.
//! Invariants: every submitted operation is waited for before `run`
//! returns, so no buffer pointer outlives the call; every operation carries
//! RWF_NOWAIT, so a would-block one completes at once with `-EAGAIN`
//! instead of being parked, and operations run inline in submission order.
//! A file without IOCB_NOWAIT support answers `-EOPNOTSUPP`; the caller
//! then falls back to one syscall per frame.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

const IORING_OP_READ: u8 = 22;
const IORING_OP_WRITE: u8 = 23;
const IORING_ENTER_GETEVENTS: u32 = 1 << 0;
const IORING_FEAT_SINGLE_MMAP: u32 = 1 << 0;
const IORING_OFF_SQ_RING: libc::off_t = 0;
const IORING_OFF_CQ_RING: libc::off_t = 0x800_0000;
const IORING_OFF_SQES: libc::off_t = 0x1000_0000;
/// RWF_NOWAIT (`include/uapi/linux/fs.h`): fail with EAGAIN instead of
/// waiting. io_uring would otherwise park a would-block read on a pollable
/// fd until data came, O_NONBLOCK or not.
const RWF_NOWAIT: u32 = 0x0000_0008;
/// IORING_SETUP_SUBMIT_ALL (5.18): keep submitting after one SQE fails.
const IORING_SETUP_SUBMIT_ALL: u32 = 1 << 7;
/// IORING_SETUP_COOP_TASKRUN (5.19): no IPI to run completion work.
const IORING_SETUP_COOP_TASKRUN: u32 = 1 << 8;

#[repr(C)]
#[derive(Default)]
struct SqringOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags: u32,
    dropped: u32,
    array: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct CqringOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    overflow: u32,
    cqes: u32,
    flags: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct Params {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: SqringOffsets,
    cq_off: CqringOffsets,
}

const _: () = assert!(std::mem::size_of::<Params>() == 120);

#[repr(C)]
struct Sqe {
    opcode: u8,
    flags: u8,
    ioprio: u16,
    fd: i32,
    off: u64,
    addr: u64,
    len: u32,
    rw_flags: u32,
    user_data: u64,
    buf_index: u16,
    personality: u16,
    splice_fd_in: i32,
    addr3: u64,
    pad2: u64,
}

const _: () = assert!(std::mem::size_of::<Sqe>() == 64);

#[repr(C)]
struct Cqe {
    user_data: u64,
    res: i32,
    flags: u32,
}

const _: () = assert!(std::mem::size_of::<Cqe>() == 16);

/// One mmap'd region, unmapped on drop.
struct Map {
    ptr: *mut u8,
    len: usize,
}

impl Map {
    fn new(fd: RawFd, len: usize, offset: libc::off_t) -> io::Result<Map> {
        // SAFETY: maps `len` bytes of the io_uring fd at a documented offset;
        // the result is checked before use.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_POPULATE, fd, offset) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Map { ptr: ptr.cast(), len })
    }

    /// A pointer `offset` bytes in.
    fn at<T>(&self, offset: u32) -> *mut T {
        debug_assert!((offset as usize) < self.len);
        // SAFETY: offsets come from the kernel's io_uring_params and lie
        // inside the mapping.
        unsafe { self.ptr.add(offset as usize).cast() }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// What one operation does.
#[derive(Clone, Copy)]
pub(crate) enum Op {
    Read { buf: *mut u8, len: usize },
    Write { buf: *const u8, len: usize },
}

pub(crate) struct Uring {
    // Field order: the maps go before the fd closes.
    sq_ring: Map,
    cq_ring: Option<Map>,
    sqes: Map,
    fd: OwnedFd,
    sq_tail: *const AtomicU32,
    sq_mask: u32,
    sq_array: *mut u32,
    cq_head: *const AtomicU32,
    cq_tail: *const AtomicU32,
    cq_mask: u32,
    cqes_off: u32,
    entries: u32,
}

// SAFETY: the raw pointers point into mappings this value owns; it is moved
// between threads as a whole and used through &mut self only.
unsafe impl Send for Uring {}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring").field("fd", &self.fd.as_raw_fd()).field("entries", &self.entries).finish()
    }
}

fn setup(entries: u32, flags: u32) -> io::Result<(OwnedFd, Params)> {
    let mut p = Params { flags, ..Params::default() };
    // SAFETY: io_uring_setup reads and writes one io_uring_params.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, entries, &mut p as *mut Params) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new io_uring fd owned by nobody else.
    Ok((unsafe { OwnedFd::from_raw_fd(fd as RawFd) }, p))
}

impl Uring {
    /// A ring for up to `entries` operations per call (rounded up to a power
    /// of two by the kernel). Fails where io_uring is missing or forbidden
    /// (ENOSYS, EPERM under seccomp or `kernel.io_uring_disabled`).
    pub(crate) fn new(entries: u32) -> io::Result<Uring> {
        let (fd, p) = match setup(entries, IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => setup(entries, 0)?,
            Err(e) => return Err(e),
        };
        let raw = fd.as_raw_fd();
        let sq_len = p.sq_off.array as usize + p.sq_entries as usize * std::mem::size_of::<u32>();
        let cq_len = p.cq_off.cqes as usize + p.cq_entries as usize * std::mem::size_of::<Cqe>();
        let single = p.features & IORING_FEAT_SINGLE_MMAP != 0;
        let sq_ring = Map::new(raw, if single { sq_len.max(cq_len) } else { sq_len }, IORING_OFF_SQ_RING)?;
        let cq_ring = if single { None } else { Some(Map::new(raw, cq_len, IORING_OFF_CQ_RING)?) };
        let sqes = Map::new(raw, p.sq_entries as usize * std::mem::size_of::<Sqe>(), IORING_OFF_SQES)?;
        let cq = cq_ring.as_ref().unwrap_or(&sq_ring);
        // SAFETY: ring_mask offsets point at u32s inside the rings.
        let (sq_mask, cq_mask) = unsafe { (*sq_ring.at::<u32>(p.sq_off.ring_mask), *cq.at::<u32>(p.cq_off.ring_mask)) };
        let ring = Uring {
            sq_tail: sq_ring.at(p.sq_off.tail),
            sq_mask,
            sq_array: sq_ring.at(p.sq_off.array),
            cq_head: cq.at(p.cq_off.head),
            cq_tail: cq.at(p.cq_off.tail),
            cq_mask,
            cqes_off: p.cq_off.cqes,
            entries: p.sq_entries,
            sq_ring,
            cq_ring,
            sqes,
            fd,
        };
        Ok(ring)
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
        if n == 0 {
            return Ok(());
        }
        // SAFETY: sq_tail points at the SQ tail; only this thread writes it.
        let mut tail = unsafe { (*self.sq_tail).load(Ordering::Relaxed) };
        for (i, op) in ops[..n].iter().enumerate() {
            let index = tail & self.sq_mask;
            let (opcode, addr, len) = match *op {
                Op::Read { buf, len } => (IORING_OP_READ, buf as u64, len),
                Op::Write { buf, len } => (IORING_OP_WRITE, buf as u64, len),
            };
            let sqe = Sqe {
                opcode,
                flags: 0,
                ioprio: 0,
                fd,
                // -1: use (and advance) the file position, as read/write do;
                // a TAP has none.
                off: u64::MAX,
                addr,
                len: len as u32,
                rw_flags: RWF_NOWAIT,
                user_data: i as u64,
                buf_index: 0,
                personality: 0,
                splice_fd_in: 0,
                addr3: 0,
                pad2: 0,
            };
            // SAFETY: index < sq_entries; the SQE slot and the array entry
            // belong to us until the tail store below publishes them.
            unsafe {
                std::ptr::write(self.sqes.at::<Sqe>(0).add(index as usize), sqe);
                std::ptr::write(self.sq_array.add(index as usize), index);
            }
            tail = tail.wrapping_add(1);
        }
        // SAFETY: publishes the SQEs written above (release pairs with the
        // kernel's acquire of the tail).
        unsafe { (*self.sq_tail).store(tail, Ordering::Release) };

        let mut submitted = false;
        let mut seen = 0usize;
        while seen < n {
            let to_submit = if submitted { 0 } else { n as u32 };
            // SAFETY: io_uring_enter on our ring; no signal mask.
            let r = unsafe {
                libc::syscall(libc::SYS_io_uring_enter, self.fd.as_raw_fd(), to_submit, (n - seen) as u32, IORING_ENTER_GETEVENTS, std::ptr::null::<libc::c_void>(), 0usize)
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    submitted = true;
                    continue;
                }
                if !submitted {
                    return Err(e);
                }
            }
            submitted = true;
            // SAFETY: cq_head/cq_tail point at the CQ ring's indices; the
            // acquire load pairs with the kernel's release of the tail.
            let (mut head, ctail) = unsafe { ((*self.cq_head).load(Ordering::Relaxed), (*self.cq_tail).load(Ordering::Acquire)) };
            while head != ctail {
                let cq = self.cq_ring.as_ref().unwrap_or(&self.sq_ring);
                // SAFETY: entries between head and tail are completed CQEs.
                let cqe = unsafe { std::ptr::read(cq.at::<Cqe>(self.cqes_off).add((head & self.cq_mask) as usize)) };
                if let Some(slot) = results.get_mut(cqe.user_data as usize) {
                    *slot = cqe.res;
                }
                head = head.wrapping_add(1);
                seen += 1;
            }
            // SAFETY: hands the consumed CQEs back to the kernel.
            unsafe { (*self.cq_head).store(head, Ordering::Release) };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_run_in_order_on_a_nonblocking_fd() {
        let mut ring = match Uring::new(8) {
            Ok(r) => r,
            // Not a failure of this code: the host forbids io_uring.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => return,
            Err(e) => panic!("io_uring_setup: {e}"),
        };
        let mut fds = [-1; 2];
        // SAFETY: socketpair writes two descriptors.
        assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK, 0, fds.as_mut_ptr()) }, 0);
        // SAFETY: both fds are new and ours.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let frames: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + i as usize]).collect();
        let ops: Vec<Op> = frames.iter().map(|f| Op::Write { buf: f.as_ptr(), len: f.len() }).collect();
        let mut res = vec![0; 8];
        // SAFETY: frames outlive the call.
        unsafe { ring.run(a.as_raw_fd(), &ops, &mut res).unwrap() };
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
}
