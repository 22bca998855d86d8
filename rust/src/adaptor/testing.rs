//! A test double for [`Interface`]. Frames "from the network" come from one
//! end of a SOCK_SEQPACKET socketpair (one frame per packet, pollable, like a
//! TAP fd) whose other end the test keeps; frames written to the interface
//! land in an unbounded in-memory list (so the test never has to keep up).
//! Writes can be refused on demand to exercise the retry budget. Closing the
//! test's end makes the interface report that it went away.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::vmnet::{Error, Interface, InterfaceInfo};

pub(crate) struct PairInterface {
    fd: OwnedFd,
    info: InterfaceInfo,
    /// Frames written to the interface, in order.
    pub(crate) written: Arc<Mutex<Vec<Vec<u8>>>>,
    /// While set, writes fail with WouldBlock.
    pub(crate) refuse_writes: Arc<AtomicBool>,
    /// Number of `stop` calls seen.
    pub(crate) stops: Arc<AtomicUsize>,
}

/// The test's view of a [`PairInterface`] after it moved into an adaptor.
#[derive(Clone)]
pub(crate) struct Handles {
    pub(crate) written: Arc<Mutex<Vec<Vec<u8>>>>,
    pub(crate) refuse_writes: Arc<AtomicBool>,
    pub(crate) stops: Arc<AtomicUsize>,
}

impl PairInterface {
    pub(crate) fn handles(&self) -> Handles {
        Handles {
            written: Arc::clone(&self.written),
            refuse_writes: Arc::clone(&self.refuse_writes),
            stops: Arc::clone(&self.stops),
        }
    }
}

/// A blocking, close-on-exec SOCK_SEQPACKET pair: one frame per read or
/// write, as on a TAP fd. Panics if the pair cannot be made.
pub(crate) fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [-1; 2];
    // SAFETY: socketpair writes two descriptors into the array.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    assert_eq!(r, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Makes the interface and the test's end ("the network"), blocking.
pub(crate) fn pair_interface(max_frame_bytes: usize) -> (PairInterface, OwnedFd) {
    let (ours, theirs) = seqpacket_pair();
    crate::adaptor::socket::set_nonblocking(&ours).unwrap();
    crate::adaptor::socket::set_buffers(&ours, 4 << 20, 4 << 20).unwrap();
    crate::adaptor::socket::set_buffers(&theirs, 4 << 20, 4 << 20).unwrap();
    let info = InterfaceInfo {
        mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        mtu: 1500,
        max_frame_bytes,
        read_max_frames: 64,
        write_max_frames: 64,
        offload: false,
    };
    let iface = PairInterface {
        fd: ours,
        info,
        written: Arc::new(Mutex::new(Vec::new())),
        refuse_writes: Arc::new(AtomicBool::new(false)),
        stops: Arc::new(AtomicUsize::new(0)),
    };
    (iface, theirs)
}

impl Interface for PairInterface {
    fn info(&self) -> &InterfaceInfo {
        &self.info
    }

    fn readable_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn read_frames(&mut self, bufs: &mut [&mut [u8]], lens: &mut [usize]) -> io::Result<usize> {
        let mut n = 0;
        while n < bufs.len() {
            // SAFETY: bufs[n] is a valid writable buffer of its length.
            let r = unsafe { libc::recv(self.fd.as_raw_fd(), bufs[n].as_mut_ptr().cast(), bufs[n].len(), libc::MSG_DONTWAIT) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if n > 0 {
                    break;
                }
                return Err(e);
            }
            if r == 0 {
                // The test closed "the network": the interface is gone.
                if n > 0 {
                    break;
                }
                return Err(io::Error::from_raw_os_error(libc::EBADFD));
            }
            lens[n] = r as usize;
            n += 1;
        }
        Ok(n)
    }

    fn write_frames(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        if self.refuse_writes.load(Ordering::Relaxed) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut written = self.written.lock().unwrap();
        written.extend(frames.iter().map(|f| f.to_vec()));
        Ok(frames.len())
    }

    fn stop(&mut self) -> Result<(), Error> {
        self.stops.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
