//! One vmnet interface: a VM's port on a vmnet network, for the relay.
//!
//! Threads and queues:
//! - start and stop completions run on this interface's own serial queue;
//!   the calling thread waits for them on a channel with a timeout, never on
//!   that queue;
//! - the packets-available callback runs on a second serial queue and only
//!   writes one byte to a non-blocking pipe (coalesced by a flag), whose
//!   read end is [`Interface::readable_fd`];
//! - `read_frames` / `write_frames` run on the relay's thread.
//!
//! Ownership: the interface starts on a network deserialized for it alone
//! (`vmnet_network_create_with_serialization`), released after the stop
//! completes, so the broker's own network object is never released here.
//! `stop` unsets the event callback (NULL/NULL) before
//! `vmnet_stop_interface`, and is idempotent; drop calls it.

use std::ffi::{c_char, c_int};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{addr_of, null, null_mut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use block2::RcBlock;
use dispatch2::{DispatchQueue, DispatchRetained};

use super::ffi;
use super::CfRef;
use crate::config::NetworkConfig;
use crate::vmnet::mapping::{self, DescKey, PacketBatch, ParamKey, ParamValue, Params, StartOutcome, Status};
use crate::vmnet::{Error, Interface, InterfaceDesc, InterfaceInfo};
use crate::xpc::apple::ffi as xffi;
use crate::xpc::apple::object::{is_type, Object};

/// How long to wait for vmnet's start block. Starting usually takes well
/// under a second; a busy machine gets room.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait for the stop block (Lima raised its VZ stop wait from
/// 5 s to 15 s: shutdown is slower on macOS 26; docs/macos.md).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Wakes the relay: the write end of the pipe and a flag that coalesces
/// notifications until the reader drains.
struct Wakeup {
    write: OwnedFd,
    pending: AtomicBool,
}

impl Wakeup {
    fn notify(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            let byte = 1u8;
            // SAFETY: a valid fd and a one-byte buffer. A full pipe (EAGAIN)
            // already means "readable", so the result is ignored.
            unsafe { libc::write(self.write.as_raw_fd(), (&byte as *const u8).cast(), 1) };
        }
    }
}

/// What finishing a start yields: parameters, the wake-up pipe's read end
/// and writer, and the event queue and block.
type EventParts = (InterfaceInfo, OwnedFd, Arc<Wakeup>, DispatchRetained<DispatchQueue>, EventBlock);
type EventBlock = RcBlock<dyn Fn(ffi::interface_event_t, xffi::xpc_object_t)>;

/// A started vmnet interface.
pub struct VmnetInterface {
    v: &'static ffi::Vmnet,
    iface: ffi::interface_ref,
    /// The fresh network object this interface runs on; released after stop.
    network: Option<CfRef<ffi::vmnet_network>>,
    queue: DispatchRetained<DispatchQueue>,
    _event_queue: DispatchRetained<DispatchQueue>,
    _event_block: EventBlock,
    wakeup: Arc<Wakeup>,
    read_end: OwnedFd,
    info: InterfaceInfo,
    name: String,
    batch: PacketBatch,
}

// SAFETY: the raw interface ref and the descriptor scratch space are only
// used through `&mut self` (one thread at a time); vmnet's interface calls may
// be made from any thread; the queues and blocks are thread-safe objects.
unsafe impl Send for VmnetInterface {}

fn desc_key(keys: &ffi::Keys, key: DescKey) -> *const c_char {
    match key {
        DescKey::AllocateMacAddress => keys.allocate_mac_address,
        DescKey::EnableIsolation => keys.enable_isolation,
        DescKey::EnableTso => keys.enable_tso,
        DescKey::EnableChecksumOffload => keys.enable_checksum_offload,
    }
}

fn param_key(keys: &ffi::Keys, key: ParamKey) -> *const c_char {
    match key {
        ParamKey::MacAddress => keys.mac_address,
        ParamKey::Mtu => keys.mtu,
        ParamKey::MaxPacketSize => keys.max_packet_size,
        ParamKey::ReadMaxPackets => keys.read_max_packets,
        ParamKey::WriteMaxPackets => keys.write_max_packets,
    }
}

/// Copies the known parameters out of the borrowed `interface_param`.
///
/// # Safety
/// `params` must be a live XPC dictionary.
unsafe fn read_params(keys: &ffi::Keys, params: xffi::xpc_object_t) -> Params {
    let mut out = Params::new();
    for key in [
        ParamKey::MacAddress,
        ParamKey::Mtu,
        ParamKey::MaxPacketSize,
        ParamKey::ReadMaxPackets,
        ParamKey::WriteMaxPackets,
    ] {
        let k = param_key(keys, key);
        if k.is_null() {
            continue;
        }
        // SAFETY: (block) `params` is live (caller's contract); each getter is
        // used on an object of its own type.
        unsafe {
            let v = xffi::xpc_dictionary_get_value(params, k);
            if v.is_null() {
                continue;
            }
            if is_type(v, addr_of!(xffi::_xpc_type_string)) {
                let ptr = xffi::xpc_string_get_string_ptr(v);
                let len = xffi::xpc_string_get_length(v);
                let text = String::from_utf8_lossy(std::slice::from_raw_parts(ptr.cast::<u8>(), len)).into_owned();
                out.insert(key, ParamValue::String(text));
            } else if is_type(v, addr_of!(xffi::_xpc_type_uint64)) {
                out.insert(key, ParamValue::Uint(xffi::xpc_uint64_get_value(v)));
            } else if is_type(v, addr_of!(xffi::_xpc_type_int64)) {
                out.insert(key, ParamValue::Uint(xffi::xpc_int64_get_value(v).max(0) as u64));
            }
        }
    }
    out
}

fn nonblocking_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: `fds` has room for two fds.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe() just returned two fds we own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    for fd in [r.as_raw_fd(), w.as_raw_fd()] {
        // SAFETY: fcntl on fds we own.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // The event callback writes to this pipe from vmnet's queue; once the
    // relay is gone the read end is closed, and a late event would raise
    // SIGPIPE in whatever process embeds the library (a Python host
    // included). F_SETNOSIGPIPE (sys/fcntl.h) turns that into EPIPE, ignored.
    // SAFETY: fcntl on an fd we own.
    if unsafe { crate::darwin_shim::fcntl(w.as_raw_fd(), crate::darwin_shim::F_SETNOSIGPIPE, 1) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r, w))
}

/// A one-shot sender a block can own (blocks are `Fn`, so it is taken out
/// of a mutex on first call).
fn once_sender<T>(tx: SyncSender<T>) -> Mutex<Option<SyncSender<T>>> {
    Mutex::new(Some(tx))
}

fn send_once<T>(slot: &Mutex<Option<SyncSender<T>>>, value: T) {
    if let Some(tx) = slot.lock().ok().and_then(|mut g| g.take()) {
        let _ = tx.try_send(value);
    }
}

/// Stops `iface` and waits for the completion on `queue`.
fn stop_raw(v: &ffi::Vmnet, iface: ffi::interface_ref, queue: &DispatchQueue, name: &str) -> Result<(), Error> {
    // SAFETY: `iface` is a started interface; NULL/NULL unsets the callback.
    let unset = Status::from_raw(unsafe {
        (v.f.vmnet_interface_set_event_callback)(iface, mapping::VMNET_INTERFACE_PACKETS_AVAILABLE, null(), null())
    });
    if !unset.is_success() {
        log::warn!("{name}: unsetting the event callback failed: {unset}");
    }
    let (tx, rx) = sync_channel::<u32>(1);
    let slot = once_sender(tx);
    let block = RcBlock::new(move |status: ffi::vmnet_return_t| send_once(&slot, status));
    // SAFETY: `iface` is live and not used again by the caller; the queue is
    // live; vmnet copies the block.
    let status = Status::from_raw(unsafe { (v.f.vmnet_stop_interface)(iface, queue, &block) });
    if !status.is_success() {
        return Err(mapping::status_error(format!("vmnet_stop_interface({name})"), status));
    }
    match rx.recv_timeout(STOP_TIMEOUT) {
        Ok(raw) if Status::from_raw(raw).is_success() => Ok(()),
        Ok(raw) => {
            Err(mapping::status_error(format!("vmnet_stop_interface({name}) completion"), Status::from_raw(raw)))
        }
        Err(_) => Err(Error::Platform {
            op: format!("vmnet_stop_interface({name})"),
            source: format!(
                "no completion within {} s; the interface may linger until the broker exits",
                STOP_TIMEOUT.as_secs()
            )
            .into(),
        }),
    }
}

impl VmnetInterface {
    /// Starts an interface on the network whose serialization is
    /// `serialization`, described by `desc` and the network's settings.
    pub fn start(
        network_name: &str,
        serialization: &Object,
        desc: &InterfaceDesc,
        config: &NetworkConfig,
    ) -> Result<VmnetInterface, Error> {
        let v = ffi::vmnet()?;
        let name = format!("interface on {network_name}");
        let entries = mapping::interface_desc_entries(desc, config.isolation(), config.offload())?;

        let mut raw_status: ffi::vmnet_return_t = 0;
        // SAFETY: the serialization is a live XPC object; +1 or NULL.
        let network = unsafe {
            CfRef::from_owned((v.f.vmnet_network_create_with_serialization)(serialization.as_ptr(), &mut raw_status))
        }
        .ok_or_else(|| {
            mapping::status_error(
                format!("vmnet_network_create_with_serialization({network_name})"),
                Status::from_raw(raw_status),
            )
        })?;

        let xdesc = Object::empty_dictionary()
            .map_err(|e| Error::Platform { op: name.clone(), source: Box::new(e) })?;
        for (key, value) in entries {
            // SAFETY: a live dictionary and a key symbol exported by vmnet.
            unsafe { xffi::xpc_dictionary_set_bool(xdesc.as_ptr(), desc_key(&v.keys, key), value) };
        }

        let queue = DispatchQueue::new("vmnet-rs.interface", None);
        let (tx, rx) = sync_channel::<(u32, Params)>(1);
        let slot = once_sender(tx);
        let start_block = RcBlock::new(move |status: ffi::vmnet_return_t, params: xffi::xpc_object_t| {
            let parsed = std::panic::catch_unwind(|| {
                if params.is_null() {
                    Params::new()
                } else {
                    // SAFETY: vmnet passes a live dictionary for the block's
                    // duration; everything is copied out.
                    unsafe { read_params(&v.keys, params) }
                }
            })
            .unwrap_or_default();
            send_once(&slot, (status, parsed));
        });
        // SAFETY: network, description and queue are live; vmnet copies the
        // block and retains the network.
        let iface = unsafe {
            (v.f.vmnet_interface_start_with_network)(network.as_ptr(), xdesc.as_ptr(), &*queue, &start_block)
        };
        let (raw, params) = match rx.recv_timeout(START_TIMEOUT) {
            Ok(result) => result,
            Err(_) => {
                if !iface.is_null() {
                    let _ = stop_raw(v, iface, &queue, &name);
                }
                return Err(Error::Platform {
                    op: format!("vmnet_interface_start_with_network({network_name})"),
                    source: format!("no completion within {} s", START_TIMEOUT.as_secs()).into(),
                });
            }
        };
        match mapping::start_outcome(Status::from_raw(raw), !iface.is_null()) {
            StartOutcome::Started => {}
            StartOutcome::FailedStop(status) => {
                // vmnet handed back an interface object although the start
                // failed: stop it rather than leave it behind.
                if let Err(e) = stop_raw(v, iface, &queue, &name) {
                    log::warn!("{name}: stopping after the failed start: {e}");
                }
                return Err(mapping::status_error(format!("vmnet_interface_start_with_network({network_name})"), status));
            }
            StartOutcome::Failed(status) => {
                return Err(mapping::status_error(format!("vmnet_interface_start_with_network({network_name})"), status));
            }
        }

        let finish = || -> Result<EventParts, Error> {
            let info = mapping::parse_interface_params(&params, desc)?;
            let (read_end, write_end) = nonblocking_pipe().map_err(|e| Error::io("create the wake-up pipe", e))?;
            let wakeup = Arc::new(Wakeup { write: write_end, pending: AtomicBool::new(false) });
            let w = Arc::clone(&wakeup);
            let event_block = RcBlock::new(move |_mask: ffi::interface_event_t, _event: xffi::xpc_object_t| w.notify());
            let event_queue = DispatchQueue::new("vmnet-rs.interface.events", None);
            // SAFETY: `iface` is started; queue and block are live; vmnet
            // copies the block.
            let status = Status::from_raw(unsafe {
                (v.f.vmnet_interface_set_event_callback)(
                    iface,
                    mapping::VMNET_INTERFACE_PACKETS_AVAILABLE,
                    &*event_queue,
                    &*event_block,
                )
            });
            if !status.is_success() {
                return Err(mapping::status_error("vmnet_interface_set_event_callback", status));
            }
            // Read once now: packets queued before the callback was set
            // raised no event and would otherwise wait for the next arrival.
            wakeup.notify();
            Ok((info, read_end, wakeup, event_queue, event_block))
        };
        let (info, read_end, wakeup, event_queue, event_block) = match finish() {
            Ok(parts) => parts,
            Err(e) => {
                if let Err(stop) = stop_raw(v, iface, &queue, &name) {
                    log::warn!("{name}: {stop}");
                }
                return Err(e);
            }
        };
        log::info!(
            "{name} started: mac {} mtu {} max frame {}",
            crate::config::format_mac(&info.mac),
            info.mtu,
            info.max_frame_bytes
        );
        let batch = info.read_max_frames.max(info.write_max_frames);
        Ok(VmnetInterface {
            v,
            iface,
            network: Some(network),
            queue,
            _event_queue: event_queue,
            _event_block: event_block,
            wakeup,
            read_end,
            info,
            name,
            batch: PacketBatch::with_capacity(batch),
        })
    }

    fn drain_wakeups(&self) {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reading into a local buffer from our non-blocking fd.
            let n = unsafe { libc::read(self.read_end.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
        }
        self.wakeup.pending.store(false, Ordering::Release);
    }

    fn stopped_error(&self) -> io::Error {
        io::Error::new(io::ErrorKind::NotConnected, format!("{} is stopped", self.name))
    }
}

impl Interface for VmnetInterface {
    fn info(&self) -> &InterfaceInfo {
        &self.info
    }

    fn readable_fd(&self) -> RawFd {
        self.read_end.as_raw_fd()
    }

    fn read_frames(&mut self, bufs: &mut [&mut [u8]], lens: &mut [usize]) -> io::Result<usize> {
        if self.iface.is_null() {
            return Err(self.stopped_error());
        }
        // Clear the wake-up before reading, so packets that arrive after
        // the read signal again.
        self.drain_wakeups();
        let n = self.batch.prepare_read(bufs, self.info.max_frame_bytes, lens.len().min(self.info.read_max_frames))?;
        if n == 0 {
            return Ok(0);
        }
        let mut count = n as c_int;
        // SAFETY: the batch holds `n` descriptors, each pointing at one iovec
        // over a caller buffer that outlives the call.
        let status =
            Status::from_raw(unsafe { (self.v.f.vmnet_read)(self.iface, self.batch.as_mut_ptr(), &mut count) });
        if !status.is_success() {
            return Err(mapping::status_io_error("vmnet_read", status));
        }
        let count = self.batch.finish_read(count, lens);
        if count == n {
            // A full batch: more may be waiting, and vmnet may not signal
            // again for packets already queued [?].
            self.wakeup.notify();
        }
        Ok(count)
    }

    fn write_frames(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        if self.iface.is_null() {
            return Err(self.stopped_error());
        }
        let n = self.batch.prepare_write(frames, self.info.max_frame_bytes, self.info.write_max_frames)?;
        if n == 0 {
            return Ok(0);
        }
        let mut count = n as c_int;
        // SAFETY: as in `read_frames`; vmnet only reads the frames.
        let status =
            Status::from_raw(unsafe { (self.v.f.vmnet_write)(self.iface, self.batch.as_mut_ptr(), &mut count) });
        if !status.is_success() {
            return Err(mapping::status_io_error("vmnet_write", status));
        }
        match (count.max(0) as usize).min(n) {
            0 => Err(io::Error::new(io::ErrorKind::WouldBlock, "vmnet_write took no packets")),
            taken => Ok(taken),
        }
    }

    fn stop(&mut self) -> Result<(), Error> {
        if self.iface.is_null() {
            return Ok(());
        }
        let iface = self.iface;
        self.iface = null_mut();
        let result = stop_raw(self.v, iface, &self.queue, &self.name);
        // Our reference to the fresh network; vmnet holds its own while the
        // interface lingers, so releasing it here is safe either way.
        self.network = None;
        log::info!("{} stopped", self.name);
        result
    }
}

impl Drop for VmnetInterface {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::warn!("{e}");
        }
    }
}
