//! A VM end on a socket that other VMs share: the datagram endpoint
//! (docs/endpoints.md). Every client sends to one bound socket; replies must
//! come *from* that socket (a client that connect()ed to it takes nothing
//! else), so each client's relay sends on its own duplicate of the shared
//! socket, addressed to the client ([`AddressedWriter`]). What clients send
//! arrives on the shared socket too; the endpoint's demux reads it in
//! batches and hands each client's frames to that client's [`Inbox`], which
//! its relay drains ([`InboxReader`]) and writes to the interface. No
//! socketpair, no extra system call per frame: a frame is copied once in
//! memory on its way in, and nothing is copied on its way out.
//!
//! Backpressure to one client, without holding up the others: on Linux the
//! shared socket is blocking with a send timeout of [`SEND_WAIT`]. A send to
//! a client whose queue is full (`net.unix.max_dgram_qlen` datagrams for a
//! client that did not connect to the endpoint) sleeps in the kernel until
//! that one client reads, and only this client's relay sleeps
//! (docs/platform-facts: the kernel waits on that peer). On macOS, where
//! XNU appends to the receiver's own buffer and fails a full one with
//! ENOBUFS instead of waiting, a full client is retried after a sleep of
//! [`SEND_WAIT`] (docs/macos.md lists what to check there). Either way the
//! relay counts one wait per [`SEND_WAIT`] and drops the rest of a batch
//! after [`super::RETRY_BUDGET`] of them, as every relay does.
//!
//! Threads: the endpoint thread pushes into an [`Inbox`]; the client's relay
//! thread takes from it and sends. The inbox is a mutex over a reused set of
//! buffers (swapped out whole by the relay) plus a pipe that wakes the relay
//! when the inbox goes from empty to not empty.
//!
//! Invariants: an inbox never holds more than [`INBOX_FRAMES`] frames or
//! [`INBOX_BYTES`] bytes; a
//! frame refused by a full inbox is reported to the pusher, which counts it
//! on the port; no buffer is allocated per frame once the inbox is warm.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::batch_io;
use super::MIN_FRAME_BYTES;
use crate::sys;

/// Frames an inbox holds for its relay, and their bytes at most; more are
/// dropped and counted. About what a socketpair between the two would
/// queue (the design this replaced), so a burst the relay absorbed then is
/// absorbed now.
pub const INBOX_FRAMES: usize = 1024;
pub const INBOX_BYTES: usize = 4 << 20;
/// How long one send to a full client waits before the relay counts a wait
/// (Linux: the shared socket's `SO_SNDTIMEO`; macOS: the sleep between
/// tries). With [`super::RETRY_BUDGET`] waits per batch, a client that
/// stops reading costs its relay at most 50 ms per batch, then its frames
/// are dropped and counted.
pub const SEND_WAIT: Duration = Duration::from_millis(5);
/// Linux: bytes sent to a client since it last sent anything, past which
/// the client may be one that stopped reading while connected to the
/// endpoint (whose queue the kernel does not cap): while the endpoint
/// socket's send budget is more than half used, such a client gets no more
/// (its frames wait and are dropped as for a full client), so it cannot
/// take the budget every other client sends from (docs/endpoints.md, *Who
/// pays for a queue*).
pub const UNHEARD_BYTES: usize = 1 << 20;

struct Queue {
    bufs: Vec<Vec<u8>>,
    len: usize,
    bytes: usize,
}

/// Frames from one client on their way to its relay.
pub struct Inbox {
    queue: Mutex<Queue>,
    wake_tx: OwnedFd,
    /// Bytes sent to the client since it last sent anything.
    unheard: AtomicUsize,
}

impl Inbox {
    /// A new inbox and the read end of its wake pipe (for the relay,
    /// in [`SharedEnd::readable`]).
    pub fn new() -> io::Result<(Arc<Inbox>, OwnedFd)> {
        let (wake_rx, wake_tx) = sys::pipe()?;
        Ok((Arc::new(Inbox { queue: Mutex::new(Queue { bufs: Vec::new(), len: 0, bytes: 0 }), wake_tx, unheard: AtomicUsize::new(0) }), wake_rx))
    }

    /// Queues a copy of `frame`. `Err(())` when the inbox is full (the frame
    /// is not queued: count it); `Ok(true)` when the inbox was empty, so its
    /// relay must be woken ([`Inbox::wake`]) once the batch is pushed.
    #[allow(clippy::result_unit_err)]
    pub fn push(&self, frame: &[u8]) -> Result<bool, ()> {
        match self.push_all([frame]) {
            (0, was_empty) => Ok(was_empty),
            _ => Err(()),
        }
    }

    /// Queues a copy of each of `frames`, in order, under one lock; each
    /// that finds the inbox full is not queued. Returns how many were not
    /// (count them) and whether the inbox went from empty to not empty, so
    /// its relay must be woken ([`Inbox::wake`]) once the batch is pushed.
    pub fn push_all<'a>(&self, frames: impl IntoIterator<Item = &'a [u8]>) -> (usize, bool) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = q.len == 0;
        let mut refused = 0;
        for frame in frames {
            if q.len >= INBOX_FRAMES || q.bytes + frame.len() > INBOX_BYTES {
                refused += 1;
                continue;
            }
            let i = q.len;
            if q.bufs.len() == i {
                q.bufs.push(Vec::new());
            }
            let b = &mut q.bufs[i];
            b.clear();
            b.extend_from_slice(frame);
            q.len += 1;
            q.bytes += frame.len();
        }
        (refused, was_empty && q.len > 0)
    }

    /// The client sent something (it is alive and reading, or at least
    /// running): see [`UNHEARD_BYTES`].
    pub fn heard(&self) {
        if self.unheard.load(Ordering::Relaxed) != 0 {
            self.unheard.store(0, Ordering::Relaxed);
        }
    }

    /// Wakes the relay (a full pipe already wakes it).
    pub fn wake(&self) {
        let byte = 1u8;
        // SAFETY: writes one byte from a valid local to our pipe.
        let _ = unsafe { libc::write(self.wake_tx.as_raw_fd(), (&byte as *const u8).cast(), 1) };
    }

    /// Empties the wake pipe `wake_rx`, then swaps the queued frames into `bufs`
    /// (whose old buffers become the inbox's spares). Returns how many.
    fn take(&self, wake_rx: RawFd, bufs: &mut Vec<Vec<u8>>) -> usize {
        let mut drain = [0u8; 64];
        // SAFETY: reads into a local buffer of its length; the pipe is non-blocking.
        while unsafe { libc::read(wake_rx, drain.as_mut_ptr().cast(), drain.len()) } == drain.len() as isize {}
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut q.bufs, bufs);
        let n = q.len;
        q.len = 0;
        q.bytes = 0;
        n
    }
}

/// A client's end of a shared datagram socket, handed to its relay.
pub struct SharedEnd {
    /// A duplicate of the shared (endpoint) socket: the same socket, so
    /// sends on it come from the endpoint's address.
    pub socket: OwnedFd,
    /// The client's address (`sun_path` bytes; a leading NUL is abstract).
    pub addr: Vec<u8>,
    pub inbox: Arc<Inbox>,
    /// The read end of the inbox's wake pipe: the relay polls it.
    pub readable: OwnedFd,
}

/// The relay's side of an [`Inbox`].
pub(crate) struct InboxReader {
    inbox: Arc<Inbox>,
    /// The inbox's wake pipe (the relay polls the same fd).
    wake_rx: RawFd,
    bufs: Vec<Vec<u8>>,
    /// Indices into `bufs` of the frames of the last take.
    valid: Vec<usize>,
    next: usize,
}

/// The outcome of one take.
#[derive(Debug)]
pub(crate) struct Taken {
    /// Frames skipped as shorter than an Ethernet header.
    pub(crate) rejected: usize,
}

impl InboxReader {
    pub(crate) fn new(inbox: Arc<Inbox>, wake_rx: RawFd) -> Self {
        InboxReader { inbox, wake_rx, bufs: Vec::new(), valid: Vec::with_capacity(INBOX_FRAMES), next: 0 }
    }

    pub(crate) fn has_pending(&self) -> bool {
        self.next < self.valid.len()
    }

    /// Takes what the inbox holds. `WouldBlock` when it is empty.
    /// Precondition: nothing pending.
    pub(crate) fn receive(&mut self) -> io::Result<Taken> {
        debug_assert!(!self.has_pending());
        self.valid.clear();
        self.next = 0;
        let n = self.inbox.take(self.wake_rx, &mut self.bufs);
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut rejected = 0;
        for i in 0..n {
            if self.bufs[i].len() < MIN_FRAME_BYTES {
                rejected += 1;
            } else {
                self.valid.push(i);
            }
        }
        Ok(Taken { rejected })
    }

    pub(crate) fn pending(&self, limit: usize) -> Vec<&[u8]> {
        self.valid[self.next..].iter().take(limit).map(|&i| self.bufs[i].as_slice()).collect()
    }

    pub(crate) fn pending_count(&self) -> usize {
        self.valid.len() - self.next
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.next = (self.next + n).min(self.valid.len());
    }
}

/// Sends frames to one client from the shared socket.
pub(crate) struct AddressedWriter {
    socket: OwnedFd,
    inbox: Arc<Inbox>,
    addr: libc::sockaddr_un,
    addr_len: libc::socklen_t,
    /// The shared socket's send limit (macOS checks each datagram against it).
    send_limit: usize,
}

impl AddressedWriter {
    pub(crate) fn new(socket: OwnedFd, addr: &[u8], inbox: Arc<Inbox>, send_limit: usize) -> io::Result<Self> {
        let (addr, addr_len) = sys::sockaddr_un(addr)?;
        Ok(AddressedWriter { socket, inbox, addr, addr_len, send_limit })
    }

    /// Linux: whether this client has been sent [`UNHEARD_BYTES`] without
    /// a word back while the shared socket's send budget is more than half
    /// used (`SIOCOUTQ`: the bytes of every datagram still queued at any
    /// client). Asked only past the byte count, so a client that talks
    /// costs nothing here.
    fn hoarding(&self) -> bool {
        #[cfg(target_os = "linux")]
        if self.inbox.unheard.load(Ordering::Relaxed) > UNHEARD_BYTES {
            let mut queued: libc::c_int = 0;
            // SAFETY: SIOCOUTQ writes one int.
            if unsafe { libc::ioctl(self.socket.as_raw_fd(), libc::TIOCOUTQ, &mut queued) } == 0 {
                return queued as usize > self.send_limit / 2;
            }
        }
        false
    }

    /// Sends leading frames; returns how many the client took. A client
    /// gone (its socket closed or its path removed) is `ECONNREFUSED`,
    /// whatever the kernel said, so the relay ends as for a closed VM end.
    pub(crate) fn send(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        if self.hoarding() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let r = batch_io::send_batch_to(self.socket.as_raw_fd(), &self.addr, self.addr_len, frames, self.send_limit, SEND_WAIT);
        if let Ok(n) = &r {
            let bytes: usize = frames[..*n].iter().map(|f| f.len()).sum();
            self.inbox.unheard.fetch_add(bytes, Ordering::Relaxed);
        }
        match r {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTCONN) | Some(libc::EPERM)) => {
                Err(io::Error::from_raw_os_error(libc::ECONNREFUSED))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inbox_holds_up_to_its_limit_and_wakes_once_per_fill() {
        let (inbox, wake_rx) = Inbox::new().unwrap();
        assert_eq!(inbox.push(&[1u8; 60]), Ok(true), "the first frame finds it empty");
        assert_eq!(inbox.push(&[2u8; 60]), Ok(false));
        for _ in 2..INBOX_FRAMES {
            assert!(inbox.push(&[3u8; 60]).is_ok());
        }
        assert_eq!(inbox.push(&[4u8; 60]), Err(()), "full: refused, to be counted");
        let (big, _rx) = Inbox::new().unwrap();
        let frame = vec![6u8; 65_550];
        let fit = INBOX_BYTES / frame.len();
        for _ in 0..fit {
            assert!(big.push(&frame).is_ok());
        }
        assert_eq!(big.push(&frame), Err(()), "full by bytes before frames");
        inbox.wake();
        let mut r = InboxReader::new(Arc::clone(&inbox), wake_rx.as_raw_fd());
        let got = r.receive().unwrap();
        assert_eq!(got.rejected, 0);
        assert_eq!(r.pending_count(), INBOX_FRAMES);
        assert_eq!(r.pending(2), vec![&[1u8; 60][..], &[2u8; 60][..]]);
        r.consume(INBOX_FRAMES);
        assert_eq!(r.receive().unwrap_err().kind(), io::ErrorKind::WouldBlock, "taken whole");
        assert_eq!(inbox.push(&[5u8; 10]), Ok(true), "empty again after the take");
        let got = r.receive().unwrap();
        assert_eq!((got.rejected, r.pending_count()), (1, 0), "a runt is skipped and counted");
        // A batch under one lock: what does not fit is refused frame by
        // frame (a smaller one after a refused larger one still fits).
        let (batch, _rx) = Inbox::new().unwrap();
        for _ in 0..fit - 1 {
            assert!(batch.push(&frame).is_ok());
        }
        let small = [7u8; 60];
        assert_eq!(batch.push_all([&frame[..], &frame[..], &small[..]]), (1, false), "one refused, not woken: it was not empty");
        let (empty, _rx) = Inbox::new().unwrap();
        assert_eq!(empty.push_all([&small[..], &small[..]]), (0, true));
        assert_eq!(empty.push_all(std::iter::empty()), (0, false));
    }
}
