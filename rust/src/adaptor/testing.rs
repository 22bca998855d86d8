//! A test double for [`Interface`] that records what is written. Frames
//! "from the network" come from one end of a SOCK_SEQPACKET socketpair
//! (`vmnet::SeqpacketPort`, the test hub's kind of port: one frame per
//! packet, pollable, like a TAP fd) whose other end the test keeps; frames written to the interface
//! land in an unbounded in-memory list (so the test never has to keep up).
//! Writes can be refused on demand to exercise the retry budget, and a frame
//! marked [`PANIC_MARK`] makes the write panic. Closing the
//! test's end makes the interface report that it went away.

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::vmnet::{Error, Interface, InterfaceInfo, SeqpacketPort};

pub(crate) struct PairInterface {
    /// Reads come from here (a hub port's kind of interface).
    port: SeqpacketPort,
    /// Frames written to the interface, in order.
    pub(crate) written: Arc<Mutex<Vec<Vec<u8>>>>,
    /// While set, writes fail with WouldBlock.
    pub(crate) refuse_writes: Arc<AtomicBool>,
    /// Number of `stop` calls seen.
    pub(crate) stops: Arc<AtomicUsize>,
    /// Frames whose first byte is [`REFUSED_MARK`] are taken by a write
    /// but reported refused afterwards, as a TAP batch through io_uring
    /// reports a frame the kernel refused: (frames, bytes) of the last write.
    refused: (usize, usize),
}

/// First byte of a frame the double takes but then reports refused.
pub(crate) const REFUSED_MARK: u8 = 0xbd;
/// First byte of a frame whose write makes the double panic (a bug in the
/// relay's path, for the test that the relay survives one).
pub(crate) const PANIC_MARK: u8 = 0xbe;

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

/// Makes the interface and the test's end ("the network"), blocking.
pub(crate) fn pair_interface(max_frame_bytes: usize) -> (PairInterface, OwnedFd) {
    let (ours, theirs) = crate::vmnet::seqpacket_pair(false).unwrap();
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
        port: SeqpacketPort::new(ours, info),
        written: Arc::new(Mutex::new(Vec::new())),
        refuse_writes: Arc::new(AtomicBool::new(false)),
        stops: Arc::new(AtomicUsize::new(0)),
        refused: (0, 0),
    };
    (iface, theirs)
}

impl Interface for PairInterface {
    fn info(&self) -> &InterfaceInfo {
        self.port.info()
    }

    fn readable_fd(&self) -> RawFd {
        self.port.readable_fd()
    }

    fn read_frames(&mut self, bufs: &mut [&mut [u8]], lens: &mut [usize]) -> io::Result<usize> {
        // Closing the test's end ("the network") reads as EPIPE: gone.
        self.port.read_frames(bufs, lens)
    }

    fn write_frames(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        if self.refuse_writes.load(Ordering::Relaxed) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        assert!(frames.iter().all(|f| f.first() != Some(&PANIC_MARK)), "a frame marked to panic");
        let mut written = self.written.lock().unwrap();
        let (refused, ok): (Vec<&[u8]>, Vec<&[u8]>) = frames.iter().partition(|f| f.first() == Some(&REFUSED_MARK));
        self.refused = (refused.len(), refused.iter().map(|f| f.len()).sum());
        written.extend(ok.iter().map(|f| f.to_vec()));
        Ok(frames.len())
    }

    fn last_write_refused(&self) -> (usize, usize) {
        self.refused
    }

    fn stop(&mut self) -> Result<(), Error> {
        self.stops.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
