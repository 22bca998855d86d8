//! The relay loop: one thread per adaptor moving frames both ways between
//! the VM socket and the interface (see `adaptor.rs` for why one thread).
//!
//! Each turn: `poll` the wake pipe, the VM socket (POLLIN unless a
//! vm->host batch is pending; POLLOUT while a host->vm batch is pending) and
//! the interface (POLLIN unless a host->vm batch is pending), then move at
//! most one batch per direction. A pending batch makes the poll time out
//! after [`RETRY_DELAY_US`]; each such wait is counted, and after
//! [`RETRY_BUDGET`] waits in a row without progress the batch is dropped.
//! After such a drop the VM counts as stuck until it takes a byte again:
//! meanwhile a batch it cannot take at once is dropped at once. What
//! cannot be dropped (the rest of a stream frame partly sent) waits for
//! POLLOUT alone, with no timer.
//!
//! Ends on: the wake pipe (stop), the VM closing (EOF, ECONNRESET, EPIPE,
//! ECONNREFUSED), a stream framing error, an interface read error or an
//! interface fd reporting POLLERR/POLLHUP (a TAP whose device was deleted).
//! On the way out it stops the interface and drops every fd it owns.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::counters::Counters;
use super::socket;
use super::vm_datagram::{DatagramReader, DatagramWriter};
use super::vm_shared::{AddressedWriter, Inbox, InboxReader, SharedEnd};
use super::vm_stream::{StreamEnd, StreamReader, StreamWriter};
use super::{EndReason, Kind, Stats, BATCH_FRAMES, RETRY_BUDGET, RETRY_DELAY_US};
use crate::vmnet::Interface;

/// Receives at most this many times from a VM end found closed while
/// sending (each receive takes up to a batch): enough for any socket buffer
/// these relays set, and a bound on the work done for a dead peer.
const DRAIN_RECEIVES_MAX: usize = 64;

/// State shared between the relay thread and its [`super::Adaptor`].
pub(crate) struct Shared {
    pub(crate) host_to_vm: Counters,
    pub(crate) vm_to_host: Counters,
    pub(crate) running: AtomicBool,
    /// The source MAC of the first frame the VM sent, with bit 48 set once
    /// known (0: none seen yet).
    vm_mac: AtomicU64,
    end: Mutex<Option<EndReason>>,
    ended: Condvar,
    /// The interface's name in the host ([`Interface::device`]), set as the
    /// relay starts.
    device: std::sync::OnceLock<String>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            host_to_vm: Counters::default(),
            vm_to_host: Counters::default(),
            running: AtomicBool::new(true),
            vm_mac: AtomicU64::new(0),
            end: Mutex::new(None),
            ended: Condvar::new(),
            device: std::sync::OnceLock::new(),
        }
    }
}

impl Shared {
    pub(crate) fn stats(&self) -> Stats {
        Stats { host_to_vm: self.host_to_vm.snapshot(), vm_to_host: self.vm_to_host.snapshot() }
    }

    /// The VM's MAC, once a frame from it was passed on.
    pub(crate) fn vm_mac(&self) -> Option<[u8; 6]> {
        let v = self.vm_mac.load(Ordering::Relaxed);
        (v != 0).then(|| {
            let b = v.to_be_bytes();
            [b[2], b[3], b[4], b[5], b[6], b[7]]
        })
    }

    /// Records the source MAC of `frame` (an Ethernet frame) if none is yet.
    fn note_vm_mac(&self, frame: &[u8]) {
        if self.vm_mac.load(Ordering::Relaxed) == 0 && frame.len() >= 12 {
            let mut b = [0u8; 8];
            b[2..].copy_from_slice(&frame[6..12]);
            self.vm_mac.store(u64::from_be_bytes(b) | 1 << 48, Ordering::Relaxed);
        }
    }

    /// The interface's name in the host, once the relay started.
    pub(crate) fn device(&self) -> Option<&str> {
        self.device.get().map(String::as_str)
    }

    pub(crate) fn end_reason(&self) -> Option<EndReason> {
        self.end.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records the first end reason and wakes waiters.
    pub(crate) fn finish(&self, reason: EndReason) {
        let mut end = self.end.lock().unwrap_or_else(|e| e.into_inner());
        if end.is_none() {
            *end = Some(reason);
        }
        self.running.store(false, Ordering::Release);
        self.ended.notify_all();
    }

    pub(crate) fn wait_ended(&self, timeout: Duration) -> bool {
        let end = self.end.lock().unwrap_or_else(|e| e.into_inner());
        let (end, _) = self.ended.wait_timeout_while(end, timeout, |e| e.is_none()).unwrap_or_else(|e| e.into_inner());
        end.is_some()
    }
}

enum VmReader {
    Datagram(DatagramReader),
    Stream(StreamReader),
    /// A client of a shared socket: frames the endpoint's demux handed over.
    Inbox(InboxReader),
}

impl VmReader {
    fn has_pending(&self) -> bool {
        match self {
            VmReader::Datagram(r) => r.has_pending(),
            VmReader::Stream(r) => r.has_pending(),
            VmReader::Inbox(r) => r.has_pending(),
        }
    }

    fn pending_count(&self) -> usize {
        match self {
            VmReader::Datagram(r) => r.pending_count(),
            VmReader::Stream(r) => r.pending_count(),
            VmReader::Inbox(r) => r.pending_count(),
        }
    }

    fn pending(&self, limit: usize) -> Vec<&[u8]> {
        match self {
            VmReader::Datagram(r) => r.pending(limit),
            VmReader::Stream(r) => r.pending(limit),
            VmReader::Inbox(r) => r.pending(limit),
        }
    }

    fn consume(&mut self, n: usize) {
        match self {
            VmReader::Datagram(r) => r.consume(n),
            VmReader::Stream(r) => r.consume(n),
            VmReader::Inbox(r) => r.consume(n),
        }
    }

    /// Frames (or a framing error) already read but not yet made pending.
    fn has_buffered(&self) -> bool {
        match self {
            VmReader::Datagram(_) | VmReader::Inbox(_) => false,
            VmReader::Stream(r) => r.has_buffered(),
        }
    }
}

enum VmWriter {
    Datagram(DatagramWriter),
    Stream(StreamWriter),
    /// A client of a shared socket: sends addressed to it (`fd` unused).
    Addressed(AddressedWriter),
}

impl VmWriter {
    fn send(&mut self, fd: std::os::fd::RawFd, frames: &[&[u8]]) -> io::Result<usize> {
        match self {
            VmWriter::Datagram(w) => w.send(fd, frames),
            VmWriter::Stream(w) => w.send(fd, frames),
            VmWriter::Addressed(w) => w.send(frames),
        }
    }

    /// Frames at the front that must not be dropped (a partly sent stream frame).
    fn undroppable(&self) -> usize {
        match self {
            VmWriter::Stream(w) if w.in_frame() => 1,
            _ => 0,
        }
    }
}

/// Errors from sending to the VM that mean it closed its end.
fn is_vm_closed(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ECONNREFUSED) | Some(libc::ECONNRESET) | Some(libc::EPIPE) | Some(libc::ENOTCONN)
    )
}

/// Errors that mean "no room now": flow control, not failure.
fn is_full(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock || matches!(err.raw_os_error(), Some(libc::ENOBUFS) | Some(libc::EINTR))
}

/// Interface write errors that mean the interface is gone (a TAP whose
/// device was deleted reports EBADFD; EIO/ENXIO/ENODEV on detached devices).
fn is_interface_gone(err: &io::Error) -> bool {
    #[cfg(target_os = "linux")]
    if err.raw_os_error() == Some(libc::EBADFD) {
        return true;
    }
    matches!(err.raw_os_error(), Some(libc::ENXIO) | Some(libc::ENODEV) | Some(libc::EBADF) | Some(libc::EPIPE))
}

pub(crate) struct Relay {
    iface: Box<dyn Interface>,
    vm: OwnedFd,
    wake: OwnedFd,
    kind: Kind,
    shared: Arc<Shared>,
    send_limit: usize,
    /// A client of a shared socket (its duplicate of the socket, its
    /// address, its inbox): `vm` is then its inbox's wake fd.
    shared_end: Option<(OwnedFd, Vec<u8>, Arc<Inbox>)>,
}

/// Rate limit for per-frame error logs: the first few, then every 1000th.
fn should_log(count: u64) -> bool {
    count < 5 || count.is_multiple_of(1000)
}

struct HostToVm {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    count: usize,
    next: usize,
    stalls: u32,
    /// A batch was dropped after the whole retry budget without the VM
    /// taking a byte: until it takes one again, what it cannot take at
    /// once is dropped at once (a VM that stopped reading costs one
    /// wake-up per batch, not [`RETRY_BUDGET`]).
    stuck: bool,
    writer: VmWriter,
}

impl HostToVm {
    fn has_pending(&self) -> bool {
        self.next < self.count
    }
}

impl Relay {
    /// `send_limit`: the VM socket's send buffer as granted (`SO_SNDBUF`).
    pub(crate) fn new(iface: Box<dyn Interface>, vm: OwnedFd, wake: OwnedFd, kind: Kind, shared: Arc<Shared>, send_limit: usize) -> Self {
        Relay { iface, vm, wake, kind, shared, send_limit, shared_end: None }
    }

    /// A relay for one client of a shared datagram socket
    /// ([`super::vm_shared`]): its VM fd is the inbox's wake pipe.
    pub(crate) fn new_shared(iface: Box<dyn Interface>, end: SharedEnd, wake: OwnedFd, shared: Arc<Shared>, send_limit: usize) -> Self {
        let SharedEnd { socket, addr, inbox, readable } = end;
        Relay { iface, vm: readable, wake, kind: Kind::DatagramNext, shared, send_limit, shared_end: Some((socket, addr, inbox)) }
    }

    /// Runs until the relay ends, then releases everything. A panic in the
    /// loop (a bug, never a VM's doing) ends this relay like any other
    /// internal error: the interface is stopped, every fd closed and the
    /// end recorded, so the port's lease is released as for a VM that left
    /// rather than left looking alive; no other port is touched.
    pub(crate) fn run(mut self) {
        if let Some(name) = self.iface.device() {
            let _ = self.shared.device.set(name.to_owned());
        }
        let reason = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.relay())) {
            Ok(reason) => reason,
            Err(panic) => {
                let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
                EndReason::Internal(format!("the relay panicked: {}", what.as_deref().unwrap_or("(no message)")))
            }
        };
        match &reason {
            EndReason::Stopped | EndReason::VmClosed => log::info!("adaptor ({}): ended: {reason}", self.kind.as_str()),
            _ => log::warn!("adaptor ({}): ended: {reason}", self.kind.as_str()),
        }
        if let Err(e) = self.iface.stop() {
            log::warn!("adaptor ({}): stopping the interface: {e}", self.kind.as_str());
        }
        let Relay { iface, vm, wake, shared, .. } = self;
        drop(iface);
        drop(vm);
        drop(wake);
        shared.finish(reason);
    }

    fn relay(&mut self) -> EndReason {
        let info = self.iface.info().clone();
        let max_frame = info.max_frame_bytes.max(super::MIN_FRAME_BYTES);
        let read_batch = BATCH_FRAMES.min(info.read_max_frames.max(1));
        let write_batch = BATCH_FRAMES.min(info.write_max_frames.max(1));
        let batched = self.kind == Kind::DatagramNext;
        let mut reader = match self.kind {
            Kind::Stream => VmReader::Stream(StreamReader::new(write_batch, max_frame)),
            _ => VmReader::Datagram(DatagramReader::new(batched, write_batch, max_frame)),
        };
        let mut h2v = HostToVm {
            bufs: vec![vec![0u8; max_frame]; read_batch],
            lens: vec![0; read_batch],
            count: 0,
            next: 0,
            stalls: 0,
            stuck: false,
            writer: match self.kind {
                Kind::Stream => VmWriter::Stream(StreamWriter::new()),
                _ => VmWriter::Datagram(DatagramWriter::new(batched, self.send_limit)),
            },
        };
        if let Some((socket, addr, inbox)) = self.shared_end.take() {
            reader = VmReader::Inbox(InboxReader::new(Arc::clone(&inbox), self.vm.as_raw_fd()));
            h2v.writer = match AddressedWriter::new(socket, &addr, inbox, self.send_limit) {
                Ok(w) => VmWriter::Addressed(w),
                Err(e) => return EndReason::Internal(format!("the client's address: {e}")),
            };
        }
        let mut v2h_stalls = 0u32;
        let vm_fd = self.vm.as_raw_fd();
        let iface_fd = self.iface.readable_fd();
        let delay = Duration::from_micros(RETRY_DELAY_US);

        loop {
            let h2v_pending = h2v.has_pending();
            let v2h_pending = reader.has_pending();
            let mut vm_events = 0;
            if !v2h_pending {
                vm_events |= libc::POLLIN;
            }
            if h2v_pending {
                vm_events |= libc::POLLOUT;
            }
            let mut fds = [
                libc::pollfd { fd: self.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: vm_fd, events: vm_events, revents: 0 },
                libc::pollfd { fd: iface_fd, events: if h2v_pending { 0 } else { libc::POLLIN }, revents: 0 },
            ];
            // Frames already read from a stream need no poll to be ready,
            // nor do frames the interface holds from its last read.
            let v2h_buffered = !v2h_pending && reader.has_buffered();
            let iface_held = !h2v_pending && self.iface.has_held_frames();
            // Only a partly sent stream frame left for the VM: nothing of it
            // may be dropped, so a retry timer would only spin (every 50 us
            // for as long as the VM reads nothing); room on the socket
            // (POLLOUT) wakes the loop instead.
            let h2v_droppable = h2v_pending && h2v.count - h2v.next > h2v.writer.undroppable();
            let timeout = if v2h_buffered || iface_held {
                Some(Duration::ZERO)
            } else if h2v_droppable || v2h_pending {
                Some(delay)
            } else {
                None
            };
            if h2v_pending {
                self.shared.host_to_vm.add_wait();
                h2v.stalls += 1;
            }
            if v2h_pending {
                self.shared.vm_to_host.add_wait();
                v2h_stalls += 1;
            }
            if let Err(e) = socket::poll(&mut fds, timeout) {
                return EndReason::Internal(format!("poll: {e}"));
            }
            if fds[0].revents != 0 {
                return EndReason::Stopped;
            }
            if fds[2].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                return EndReason::Interface("the interface reported an error or went away".into());
            }
            let vm_ready = v2h_buffered || fds[1].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
            let iface_ready = iface_held || fds[2].revents & libc::POLLIN != 0;

            // vm -> host
            if v2h_pending || vm_ready {
                if !v2h_pending {
                    match self.receive_from_vm(&mut reader) {
                        Ok(()) => {}
                        Err(end) => return end,
                    }
                }
                if let Err(end) = self.write_to_interface(&mut reader, write_batch, &mut v2h_stalls) {
                    return end;
                }
            }

            // host -> vm
            if !h2v.has_pending() && iface_ready {
                let n = {
                    let mut slices: Vec<&mut [u8]> = h2v.bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
                    match self.iface.read_frames(&mut slices, &mut h2v.lens) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => 0,
                        Err(e) => return EndReason::Interface(format!("read from the interface: {e}")),
                    }
                };
                let dropped = self.iface.take_read_dropped();
                if dropped > 0 {
                    self.shared.host_to_vm.add_malformed(dropped);
                }
                // A zero-frame read (vmnet may return 0) just waits for the next poll.
                let n = n.min(h2v.bufs.len());
                // Never pass on an empty or header-less frame (a stream peer
                // would take a zero length as a protocol error).
                let mut kept = 0;
                for i in 0..n {
                    if h2v.lens[i] >= super::MIN_FRAME_BYTES {
                        h2v.bufs.swap(i, kept);
                        h2v.lens.swap(i, kept);
                        kept += 1;
                    } else {
                        self.shared.host_to_vm.add_runts(1);
                    }
                }
                h2v.count = kept;
                h2v.next = 0;
                h2v.stalls = 0;
            }
            if h2v.has_pending() {
                if let Err(end) = self.write_to_vm(&mut h2v) {
                    if matches!(end, EndReason::VmClosed) {
                        self.drain_closed_vm(&mut reader, write_batch, &mut v2h_stalls);
                    }
                    return end;
                }
            }
        }
    }

    /// The VM's end was found closed while sending to it: what it sent
    /// before closing is still queued. Passes on its whole frames and counts
    /// a frame cut short by the close as an error, as when the close is seen
    /// on the read side first. Bounded: the queue ends at the close.
    fn drain_closed_vm(&mut self, reader: &mut VmReader, write_batch: usize, stalls: &mut u32) {
        for _ in 0..DRAIN_RECEIVES_MAX {
            if !reader.has_pending() && self.receive_from_vm(reader).is_err() {
                return;
            }
            if self.write_to_interface(reader, write_batch, stalls).is_err() {
                return;
            }
        }
    }

    /// Fills the reader with frames from the VM (one receive).
    fn receive_from_vm(&mut self, reader: &mut VmReader) -> Result<(), EndReason> {
        let fd = self.vm.as_raw_fd();
        let counters = &self.shared.vm_to_host;
        match reader {
            VmReader::Datagram(r) => match r.receive(fd) {
                Ok(got) => {
                    counters.add_malformed(got.rejected as u64);
                    if got.rejected > 0 {
                        let errors = counters.snapshot().errors;
                        if should_log(errors) {
                            log::warn!("[vm->host] skipped {} malformed datagram(s) (truncated or shorter than an Ethernet header; {errors} so far)", got.rejected);
                        }
                    }
                    Ok(())
                }
                Err(e) if is_full(&e) => Ok(()),
                Err(e) if is_vm_closed(&e) => Err(EndReason::VmClosed),
                Err(e) => Err(EndReason::Internal(format!("receive from the VM socket: {e}"))),
            },
            VmReader::Inbox(r) => match r.receive() {
                Ok(got) => {
                    counters.add_malformed(got.rejected as u64);
                    Ok(())
                }
                Err(_) => Ok(()),
            },
            VmReader::Stream(r) => match r.receive(fd) {
                Ok(_) => Ok(()),
                Err(StreamEnd::Closed { partial }) => {
                    if partial {
                        counters.add_malformed(1);
                        log::warn!("[vm->host] the VM closed the stream inside a frame");
                    }
                    Err(EndReason::VmClosed)
                }
                Err(StreamEnd::Protocol(m)) => {
                    counters.add_malformed(1);
                    Err(EndReason::Protocol(m))
                }
                Err(StreamEnd::Io(e)) => Err(EndReason::Internal(format!("read from the VM socket: {e}"))),
            },
        }
    }

    /// Writes pending vm->host frames to the interface until done, refused
    /// or out of budget.
    fn write_to_interface(&mut self, reader: &mut VmReader, write_batch: usize, stalls: &mut u32) -> Result<(), EndReason> {
        let counters = &self.shared.vm_to_host;
        while reader.has_pending() {
            let frames = reader.pending(write_batch);
            // Before the write, so whoever sees the frame can see its MAC.
            if let Some(first) = frames.first() {
                self.shared.note_vm_mac(first);
            }
            match self.iface.write_frames(&frames) {
                Ok(n) if n > 0 => {
                    let n = n.min(frames.len());
                    let bytes: usize = frames[..n].iter().map(|f| f.len()).sum();
                    // Taken, but some refused once the batch ran (a TAP
                    // through io_uring): counted as refused, not delivered.
                    let (refused, refused_bytes) = self.iface.last_write_refused();
                    let refused = refused.min(n);
                    counters.add_batch((n - refused) as u64, bytes.saturating_sub(refused_bytes) as u64);
                    counters.add_refused(refused as u64);
                    reader.consume(n);
                    *stalls = 0;
                }
                Ok(_) => break,
                Err(e) if is_full(&e) => break,
                Err(e) if is_interface_gone(&e) => return Err(EndReason::Interface(format!("write to the interface: {e}"))),
                Err(e) => {
                    // One bad frame: count it, skip it, go on.
                    counters.add_refused(1);
                    let errors = counters.snapshot().errors;
                    if should_log(errors) {
                        log::warn!("[vm->host] interface refused a {}-byte frame: {e} ({errors} errors so far)", frames[0].len());
                    }
                    reader.consume(1);
                }
            }
        }
        if reader.has_pending() && *stalls >= RETRY_BUDGET {
            let n = reader.pending_count();
            counters.add_drops(n as u64);
            reader.consume(n);
            *stalls = 0;
        }
        Ok(())
    }

    /// Sends pending host->vm frames until done, refused or out of budget.
    fn write_to_vm(&mut self, h2v: &mut HostToVm) -> Result<(), EndReason> {
        let counters = &self.shared.host_to_vm;
        let fd = self.vm.as_raw_fd();
        while h2v.has_pending() {
            let frames: Vec<&[u8]> = (h2v.next..h2v.count).map(|i| &h2v.bufs[i][..h2v.lens[i]]).collect();
            match h2v.writer.send(fd, &frames) {
                Ok(n) => {
                    let n = n.min(frames.len());
                    let bytes: usize = frames[..n].iter().map(|f| f.len()).sum();
                    counters.add_batch(n as u64, bytes as u64);
                    h2v.next += n;
                    // Partial progress inside a stream frame also counts as progress.
                    h2v.stalls = 0;
                    h2v.stuck = false;
                    if n == 0 {
                        break;
                    }
                }
                Err(e) if is_full(&e) => break,
                Err(e) if is_vm_closed(&e) => return Err(EndReason::VmClosed),
                Err(e) => {
                    // e.g. EMSGSIZE: a frame the socket cannot carry.
                    counters.add_error();
                    let errors = counters.snapshot().errors;
                    if should_log(errors) {
                        log::warn!("[host->vm] could not send a {}-byte frame: {e} ({errors} errors so far)", frames[0].len());
                    }
                    if h2v.writer.undroppable() > 0 {
                        return Err(EndReason::Internal(format!("send to the VM socket inside a frame: {e}")));
                    }
                    h2v.next += 1;
                }
            }
        }
        if h2v.has_pending() && (h2v.stalls >= RETRY_BUDGET || h2v.stuck) {
            let keep = h2v.writer.undroppable();
            let drop_from = h2v.next + keep;
            counters.add_drops((h2v.count - drop_from) as u64);
            h2v.count = drop_from;
            h2v.stuck |= h2v.stalls >= RETRY_BUDGET;
            h2v.stalls = 0;
        }
        Ok(())
    }
}
