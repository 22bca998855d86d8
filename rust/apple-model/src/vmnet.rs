//! vmnet.framework (vmnet/vmnet.h, macOS 26 SDK): network configurations,
//! networks, their serialization, interfaces, `vmnet_read`/`vmnet_write`,
//! the packets-available event and stop. Configurations and networks are
//! CoreFoundation objects (`cf.rs`).
//!
//! A network is a switch: a frame written on one interface goes to the
//! interface with its destination MAC, or to every other one for a
//! broadcast, multicast or unknown address; isolated interfaces exchange
//! nothing. What vmnet itself does beyond that (DHCP, NAT, DNS, the host's
//! side of the bridge, pacing, sleep) is not modelled (docs/macos.md).
//!
//! Threads and queues, as vmnet.h states them: the start block, event
//! callback and stop block run on the queue passed with them; `vmnet_read`
//! and `vmnet_write` run on the caller's thread. Ownership: configurations
//! and networks are +1 from `*_create*`, released with `CFRelease`; a
//! serialization is a +1 XPC object; an interface holds its own reference
//! to its network until it is stopped; an interface is invalid after
//! `vmnet_stop_interface`, and any later use aborts.

use std::collections::{HashMap, VecDeque};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use block2::Block;

use crate::control::called;
use crate::dispatch;
use crate::misuse;
use crate::object::{self, Kind, Ptr};
use crate::cf::{cf, new_cf, Cf};
use crate::session::Kept;

const VMNET_SUCCESS: u32 = 1000;
const VMNET_FAILURE: u32 = 1001;
const VMNET_INVALID_ARGUMENT: u32 = 1003;
const VMNET_PACKET_TOO_BIG: u32 = 1006;
const VMNET_HOST_MODE: u32 = 1000;
const VMNET_SHARED_MODE: u32 = 1001;
const VMNET_INTERFACE_PACKETS_AVAILABLE: u32 = 1 << 0;
/// Frames an interface keeps unread before vmnet drops new ones.
const RX_QUEUE: usize = 1024;
/// `vmnet_read_max_packets_key` / `_write_` as the model reports them.
const MAX_PACKETS: u64 = 64;

/// An `extern const char * const` key (vmnet.h).
#[repr(transparent)]
pub struct Key(*const c_char);
// SAFETY: points at a static C string, never written.
unsafe impl Sync for Key {}

macro_rules! keys {
    ($($name:ident = $text:literal),* $(,)?) => {
        $( #[no_mangle] pub static $name: Key = Key($text.as_ptr()); )*
    };
}

keys! {
    vmnet_allocate_mac_address_key = c"vmnet_allocate_mac_address",
    vmnet_enable_tso_key = c"vmnet_enable_tso",
    vmnet_enable_isolation_key = c"vmnet_enable_isolation",
    vmnet_enable_checksum_offload_key = c"vmnet_enable_checksum_offload",
    vmnet_mac_address_key = c"vmnet_mac_address",
    vmnet_mtu_key = c"vmnet_mtu",
    vmnet_max_packet_size_key = c"vmnet_max_packet_size",
    vmnet_read_max_packets_key = c"vmnet_read_max_packets",
    vmnet_write_max_packets_key = c"vmnet_write_max_packets",
    vmnet_estimated_packets_available_key = c"vmnet_estimated_packets_available",
}

/// `struct vmpktdesc` (vmnet.h).
#[repr(C)]
pub struct VmPktDesc {
    pub vm_pkt_size: usize,
    pub vm_pkt_iov: *mut libc::iovec,
    pub vm_pkt_iovcnt: u32,
    pub vm_flags: u32,
}

#[derive(Clone, Default)]
pub struct Config {
    mode: u32,
    subnet: Option<(u32, u32)>,
    prefix: Option<([u8; 16], u8)>,
    mtu: u32,
}

/// One network: its settings and the interfaces on it.
pub struct Switch {
    id: u64,
    subnet: (u32, u32),
    prefix: ([u8; 16], u8),
    mtu: u32,
    ports: Mutex<Vec<Arc<Port>>>,
}

/// An interface's event block and the queue it runs on (one reference).
type EventCallback = (Arc<Kept<dyn Fn(u32, Ptr)>>, usize);

struct Port {
    mac: [u8; 6],
    isolated: bool,
    max_packet: usize,
    rx: Mutex<VecDeque<Vec<u8>>>,
    event: Mutex<Option<EventCallback>>,
}

fn switches() -> &'static Mutex<HashMap<u64, Weak<Switch>>> {
    static S: OnceLock<Mutex<HashMap<u64, Weak<Switch>>>> = OnceLock::new();
    S.get_or_init(|| Mutex::new(HashMap::new()))
}

struct Iface {
    port: Arc<Port>,
    network: Arc<Switch>,
}

fn ifaces() -> &'static Mutex<HashMap<usize, &'static Iface>> {
    static I: OnceLock<Mutex<HashMap<usize, &'static Iface>>> = OnceLock::new();
    I.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Live vmnet objects, for the leak report.
pub fn live() -> Vec<String> {
    let mut out = Vec::new();
    for _ in ifaces().lock().unwrap_or_else(|e| e.into_inner()).values() {
        out.push("vmnet interface (not stopped)".to_owned());
    }
    out
}

fn config<'a>(ptr: *mut c_void, api: &str) -> &'a Mutex<Config> {
    match &cf(ptr, api).cf {
        Cf::Config(c) => c,
        _ => misuse(api, "not a network configuration"),
    }
}

fn network(ptr: *const c_void, api: &str) -> Arc<Switch> {
    match &cf(ptr, api).cf {
        Cf::Network(s) => Arc::clone(s),
        _ => misuse(api, "not a network"),
    }
}

fn iface(ptr: *mut c_void, api: &str) -> &'static Iface {
    match ifaces().lock().unwrap_or_else(|e| e.into_inner()).get(&(ptr as usize)) {
        Some(i) => i,
        None => misuse(api, "the interface is not started or was stopped (vmnet.h: invalid after vmnet_stop_interface)"),
    }
}

fn set_status(status: *mut u32, value: u32) {
    if !status.is_null() {
        // SAFETY: the caller's status out-pointer.
        unsafe { *status = value };
    }
}

/// vmnet.h `vmnet_network_configuration_create`: +1, host or shared mode.
#[no_mangle]
pub extern "C" fn vmnet_network_configuration_create(mode: u32, status: *mut u32) -> *mut c_void {
    called("vmnet_network_configuration_create");
    if mode != VMNET_HOST_MODE && mode != VMNET_SHARED_MODE {
        set_status(status, VMNET_INVALID_ARGUMENT);
        return std::ptr::null_mut();
    }
    set_status(status, VMNET_SUCCESS);
    new_cf(Cf::Config(Mutex::new(Config { mode, mtu: 1500, ..Config::default() })))
}

#[no_mangle]
pub extern "C" fn vmnet_network_configuration_set_external_interface(cfg: *mut c_void, name: *const c_char) -> u32 {
    called("vmnet_network_configuration_set_external_interface");
    let c = config(cfg, "vmnet_network_configuration_set_external_interface");
    if name.is_null() || c.lock().unwrap_or_else(|e| e.into_inner()).mode != VMNET_SHARED_MODE {
        return VMNET_INVALID_ARGUMENT;
    }
    VMNET_SUCCESS
}

macro_rules! disable {
    ($($name:ident),*) => {
        $(
            /// vmnet.h: turns a service of the network off (not modelled
            /// beyond being accepted on a live configuration).
            #[no_mangle]
            pub extern "C" fn $name(cfg: *mut c_void) {
                called(stringify!($name));
                config(cfg, stringify!($name));
            }
        )*
    };
}

disable!(
    vmnet_network_configuration_disable_nat44,
    vmnet_network_configuration_disable_nat66,
    vmnet_network_configuration_disable_dhcp,
    vmnet_network_configuration_disable_dns_proxy,
    vmnet_network_configuration_disable_router_advertisement
);

fn contiguous(mask: u32) -> bool {
    mask != 0 && (!mask).wrapping_add(1) & !mask == 0 && mask.leading_ones() + mask.trailing_zeros() == 32
}

/// vmnet.h `vmnet_network_configuration_set_ipv4_subnet`: a contiguous
/// mask of /8 to /30 and an RFC 1918 address; else INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn vmnet_network_configuration_set_ipv4_subnet(
    cfg: *mut c_void,
    subnet_addr: *const libc::in_addr,
    subnet_mask: *const libc::in_addr,
) -> u32 {
    called("vmnet_network_configuration_set_ipv4_subnet");
    let c = config(cfg, "vmnet_network_configuration_set_ipv4_subnet");
    // SAFETY: the caller passes two in_addr.
    let (a, m) = unsafe { (u32::from_be((*subnet_addr).s_addr), u32::from_be((*subnet_mask).s_addr)) };
    let private = a >> 24 == 10 || a >> 20 == 0xac1 || a >> 16 == 0xc0a8;
    if !contiguous(m) || !(8..=30).contains(&m.count_ones()) || !private {
        return VMNET_INVALID_ARGUMENT;
    }
    c.lock().unwrap_or_else(|e| e.into_inner()).subnet = Some((a, m));
    VMNET_SUCCESS
}

#[no_mangle]
pub extern "C" fn vmnet_network_configuration_set_ipv6_prefix(cfg: *mut c_void, prefix: *const libc::in6_addr, len: u8) -> u32 {
    called("vmnet_network_configuration_set_ipv6_prefix");
    let c = config(cfg, "vmnet_network_configuration_set_ipv6_prefix");
    if len != 64 {
        return VMNET_INVALID_ARGUMENT;
    }
    // SAFETY: the caller passes an in6_addr.
    let p = unsafe { (*prefix).s6_addr };
    c.lock().unwrap_or_else(|e| e.into_inner()).prefix = Some((p, len));
    VMNET_SUCCESS
}

#[no_mangle]
pub extern "C" fn vmnet_network_configuration_add_port_forwarding_rule(
    cfg: *mut c_void,
    protocol: u8,
    address_family: u8,
    _internal_port: u16,
    _external_port: u16,
    internal_address: *const c_void,
) -> u32 {
    called("vmnet_network_configuration_add_port_forwarding_rule");
    config(cfg, "vmnet_network_configuration_add_port_forwarding_rule");
    let proto_ok = protocol == libc::IPPROTO_TCP as u8 || protocol == libc::IPPROTO_UDP as u8;
    // Darwin's AF_INET (2) and AF_INET6 (30), sys/socket.h.
    let family_ok = address_family == 2 || address_family == 30;
    if !proto_ok || !family_ok || internal_address.is_null() {
        return VMNET_INVALID_ARGUMENT;
    }
    VMNET_SUCCESS
}

#[no_mangle]
pub extern "C" fn vmnet_network_configuration_add_dhcp_reservation(
    cfg: *mut c_void,
    client: *const [u8; 6],
    reservation: *const libc::in_addr,
) -> u32 {
    called("vmnet_network_configuration_add_dhcp_reservation");
    config(cfg, "vmnet_network_configuration_add_dhcp_reservation");
    if client.is_null() || reservation.is_null() {
        return VMNET_INVALID_ARGUMENT;
    }
    VMNET_SUCCESS
}

#[no_mangle]
pub extern "C" fn vmnet_network_configuration_set_mtu(cfg: *mut c_void, mtu: u32) -> u32 {
    called("vmnet_network_configuration_set_mtu");
    let c = config(cfg, "vmnet_network_configuration_set_mtu");
    if !(1280..=16384).contains(&mtu) {
        return VMNET_INVALID_ARGUMENT;
    }
    c.lock().unwrap_or_else(|e| e.into_inner()).mtu = mtu;
    VMNET_SUCCESS
}

/// vmnet.h `vmnet_network_create`: +1. Without a subnet, vmnet's default
/// 192.168.64.0/24 (the model reports the network address's first host).
#[no_mangle]
pub extern "C" fn vmnet_network_create(cfg: *mut c_void, status: *mut u32) -> *mut c_void {
    called("vmnet_network_create");
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let c = config(cfg, "vmnet_network_create").lock().unwrap_or_else(|e| e.into_inner()).clone();
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut prefix = [0u8; 16];
    prefix[0] = 0xfd;
    prefix[7] = id as u8;
    let sw = Arc::new(Switch {
        id,
        subnet: c.subnet.unwrap_or((0xc0a8_4001, 0xffff_ff00)),
        prefix: c.prefix.unwrap_or((prefix, 64)),
        mtu: c.mtu,
        ports: Mutex::new(Vec::new()),
    });
    switches().lock().unwrap_or_else(|e| e.into_inner()).insert(id, Arc::downgrade(&sw));
    set_status(status, VMNET_SUCCESS);
    new_cf(Cf::Network(sw))
}

#[no_mangle]
pub extern "C" fn vmnet_network_get_ipv4_subnet(net: *mut c_void, subnet: *mut libc::in_addr, mask: *mut libc::in_addr) {
    called("vmnet_network_get_ipv4_subnet");
    let sw = network(net, "vmnet_network_get_ipv4_subnet");
    // SAFETY: the caller's out-pointers.
    unsafe {
        (*subnet).s_addr = sw.subnet.0.to_be();
        (*mask).s_addr = sw.subnet.1.to_be();
    }
}

#[no_mangle]
pub extern "C" fn vmnet_network_get_ipv6_prefix(net: *mut c_void, prefix: *mut libc::in6_addr, len: *mut u8) {
    called("vmnet_network_get_ipv6_prefix");
    let sw = network(net, "vmnet_network_get_ipv6_prefix");
    // SAFETY: the caller's out-pointers.
    unsafe {
        (*prefix).s6_addr = sw.prefix.0;
        *len = sw.prefix.1;
    }
}

/// The key of the model's serialization (a dictionary naming the network).
const SERIAL_KEY: &CStr = c"vmnet-model-network";

/// vmnet.h `vmnet_network_copy_serialization`: a +1 XPC dictionary.
#[no_mangle]
pub extern "C" fn vmnet_network_copy_serialization(net: *mut c_void, status: *mut u32) -> Ptr {
    called("vmnet_network_copy_serialization");
    let sw = network(net, "vmnet_network_copy_serialization");
    let d = object::create(Kind::Dictionary(Mutex::new(object::Dictionary::default())));
    let v = object::create(Kind::Uint64(sw.id));
    object::dict_set(d, SERIAL_KEY.as_ptr(), v, "vmnet_network_copy_serialization");
    object::release(v, "vmnet_network_copy_serialization");
    set_status(status, VMNET_SUCCESS);
    d
}

/// vmnet.h `vmnet_network_create_with_serialization`: +1, the same
/// network; INVALID_ARGUMENT for a serialization of no live network.
#[no_mangle]
pub extern "C" fn vmnet_network_create_with_serialization(serialization: Ptr, status: *mut u32) -> *mut c_void {
    called("vmnet_network_create_with_serialization");
    let v = object::dict_get(serialization, SERIAL_KEY.as_ptr(), "vmnet_network_create_with_serialization");
    let id = if v.is_null() {
        None
    } else {
        match object::get(v, "vmnet_network_create_with_serialization").kind {
            Kind::Uint64(id) => Some(id),
            _ => None,
        }
    };
    let sw = id.and_then(|id| switches().lock().unwrap_or_else(|e| e.into_inner()).get(&id).and_then(Weak::upgrade));
    match sw {
        Some(sw) => {
            set_status(status, VMNET_SUCCESS);
            new_cf(Cf::Network(sw))
        }
        None => {
            set_status(status, VMNET_INVALID_ARGUMENT);
            std::ptr::null_mut()
        }
    }
}

fn desc_bool(desc: Ptr, key: &Key) -> bool {
    let v = object::dict_get(desc, key.0, "vmnet_interface_start_with_network");
    !v.is_null() && matches!(object::get(v, "vmnet_interface_start_with_network").kind, Kind::Bool(true))
}

/// vmnet.h `vmnet_interface_start_with_network`: the interface at once;
/// the start block later, on `queue`, with the status and the interface's
/// parameters (borrowed by the block).
#[no_mangle]
pub extern "C" fn vmnet_interface_start_with_network(
    net: *mut c_void,
    interface_desc: Ptr,
    queue: *const c_void,
    start_block: &Block<dyn Fn(u32, Ptr)>,
) -> *mut c_void {
    const API: &str = "vmnet_interface_start_with_network";
    called(API);
    if queue.is_null() {
        misuse(API, "NULL queue (vmnet.h: the queue the start block runs on)");
    }
    let sw = network(net, API);
    static NEXT_MAC: AtomicU64 = AtomicU64::new(1);
    let n = NEXT_MAC.fetch_add(1, Ordering::Relaxed);
    let mac = [0x02, 0x76, 0x6d, (n >> 16) as u8, (n >> 8) as u8, n as u8];
    let tso = desc_bool(interface_desc, &vmnet_enable_tso_key);
    let max_packet = if tso { 65_550 } else { sw.mtu as usize + 14 };
    let port = Arc::new(Port {
        mac,
        isolated: desc_bool(interface_desc, &vmnet_enable_isolation_key),
        max_packet,
        rx: Mutex::new(VecDeque::new()),
        event: Mutex::new(None),
    });
    sw.ports.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::clone(&port));
    let i: &'static Iface = Box::leak(Box::new(Iface { port, network: Arc::clone(&sw) }));
    let addr = i as *const Iface as usize;
    ifaces().lock().unwrap_or_else(|e| e.into_inner()).insert(addr, i);

    let params = object::create(Kind::Dictionary(Mutex::new(object::Dictionary::default())));
    let text = mac.iter().map(|b| format!("{b:x}")).collect::<Vec<_>>().join(":");
    let entries = [
        (&vmnet_mac_address_key, Kind::String(std::ffi::CString::new(text).unwrap_or_default())),
        (&vmnet_mtu_key, Kind::Uint64(sw.mtu.into())),
        (&vmnet_max_packet_size_key, Kind::Uint64(max_packet as u64)),
        (&vmnet_read_max_packets_key, Kind::Uint64(MAX_PACKETS)),
        (&vmnet_write_max_packets_key, Kind::Uint64(MAX_PACKETS)),
    ];
    for (k, v) in entries {
        let v = object::create(v);
        object::dict_set(params, k.0, v, API);
        object::release(v, API);
    }
    let block = Arc::new(Kept(start_block.copy()));
    let q = queue as usize;
    dispatch::retain(q, API);
    let params = params as usize;
    dispatch::submit(q, move || {
        block.0.call((VMNET_SUCCESS, params as Ptr));
        object::release(params as Ptr, API);
        dispatch::release(q, API);
    });
    addr as *mut c_void
}

/// vmnet.h `vmnet_interface_set_event_callback`: a queue and a block turn
/// the event on, NULL and NULL off; one without the other is invalid.
#[no_mangle]
pub extern "C" fn vmnet_interface_set_event_callback(
    interface: *mut c_void,
    event_mask: u32,
    queue: *const c_void,
    callback: *const Block<dyn Fn(u32, Ptr)>,
) -> u32 {
    const API: &str = "vmnet_interface_set_event_callback";
    called(API);
    let i = iface(interface, API);
    if event_mask & !VMNET_INTERFACE_PACKETS_AVAILABLE != 0 || queue.is_null() != callback.is_null() {
        return VMNET_INVALID_ARGUMENT;
    }
    let new = if queue.is_null() {
        None
    } else {
        dispatch::retain(queue as usize, API);
        // SAFETY: a live block (vmnet.h); copied here.
        Some((Arc::new(Kept(unsafe { &*callback }.copy())), queue as usize))
    };
    let old = std::mem::replace(&mut *i.port.event.lock().unwrap_or_else(|e| e.into_inner()), new);
    if let Some((_, q)) = old {
        dispatch::release(q, API);
    }
    VMNET_SUCCESS
}

/// Delivers one frame written on `from` to the ports it is for.
fn switch_frame(sw: &Switch, from: &Port, frame: &[u8]) {
    let dst: [u8; 6] = frame[..6].try_into().unwrap_or([0xff; 6]);
    let ports: Vec<Arc<Port>> = sw.ports.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let known = ports.iter().any(|p| p.mac == dst);
    for p in ports {
        if std::ptr::eq(&*p, from) || ((from.isolated || p.isolated) && p.mac != from.mac) {
            continue;
        }
        if dst[0] & 1 == 0 && known && p.mac != dst {
            continue;
        }
        let count = {
            let mut rx = p.rx.lock().unwrap_or_else(|e| e.into_inner());
            if rx.len() >= RX_QUEUE {
                continue;
            }
            rx.push_back(frame.to_vec());
            rx.len()
        };
        let event = p.event.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((block, q)) = event {
            dispatch::retain(q, "vmnet event");
            dispatch::submit(q, move || {
                let ev = object::create(Kind::Dictionary(Mutex::new(object::Dictionary::default())));
                let n = object::create(Kind::Uint64(count as u64));
                object::dict_set(ev, vmnet_estimated_packets_available_key.0, n, "vmnet event");
                object::release(n, "vmnet event");
                block.0.call((VMNET_INTERFACE_PACKETS_AVAILABLE, ev));
                object::release(ev, "vmnet event");
                dispatch::release(q, "vmnet event");
            });
        }
    }
}

/// The one iovec of a descriptor (multi-iovec packets are refused, as
/// vmnet does).
///
/// # Safety
/// `d` is a caller's descriptor whose buffer outlives `'a` and is not
/// otherwise borrowed.
unsafe fn one_iov<'a>(d: &VmPktDesc) -> Option<&'a mut [u8]> {
    if d.vm_pkt_iovcnt != 1 || d.vm_pkt_iov.is_null() {
        return None;
    }
    // SAFETY: caller's contract: one iovec over a buffer of its length.
    unsafe {
        let iov = &*d.vm_pkt_iov;
        Some(std::slice::from_raw_parts_mut(iov.iov_base.cast::<u8>(), iov.iov_len))
    }
}

/// vmnet.h `vmnet_read`: up to `*pktcnt` frames; `*pktcnt` becomes how
/// many were read (0 when none wait).
#[no_mangle]
pub extern "C" fn vmnet_read(interface: *mut c_void, packets: *mut VmPktDesc, pktcnt: *mut c_int) -> u32 {
    const API: &str = "vmnet_read";
    called(API);
    let i = iface(interface, API);
    // SAFETY: the caller's count.
    let want = unsafe { *pktcnt }.max(0) as usize;
    let mut n = 0;
    while n < want {
        // SAFETY: `packets` holds `*pktcnt` descriptors.
        let d = unsafe { &mut *packets.add(n) };
        // SAFETY: as above.
        let Some(buf) = (unsafe { one_iov(d) }) else {
            return VMNET_INVALID_ARGUMENT;
        };
        let mut rx = i.port.rx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(frame) = rx.pop_front() else { break };
        if frame.len() > buf.len().min(d.vm_pkt_size) {
            rx.push_front(frame);
            return VMNET_PACKET_TOO_BIG;
        }
        buf[..frame.len()].copy_from_slice(&frame);
        d.vm_pkt_size = frame.len();
        d.vm_flags = 0;
        n += 1;
    }
    // SAFETY: the caller's count.
    unsafe { *pktcnt = n as c_int };
    VMNET_SUCCESS
}

/// vmnet.h `vmnet_write`: the frames in order; `*pktcnt` becomes how many
/// were taken. A frame over the interface's max packet size is
/// PACKET_TOO_BIG.
#[no_mangle]
pub extern "C" fn vmnet_write(interface: *mut c_void, packets: *mut VmPktDesc, pktcnt: *mut c_int) -> u32 {
    const API: &str = "vmnet_write";
    called(API);
    let i = iface(interface, API);
    // SAFETY: the caller's count.
    let want = unsafe { *pktcnt }.max(0) as usize;
    for n in 0..want {
        // SAFETY: `packets` holds `*pktcnt` descriptors.
        let d = unsafe { &*packets.add(n) };
        // SAFETY: as above.
        let Some(buf) = (unsafe { one_iov(d) }) else {
            // SAFETY: the caller's count.
            unsafe { *pktcnt = n as c_int };
            return VMNET_INVALID_ARGUMENT;
        };
        if d.vm_pkt_size > i.port.max_packet || d.vm_pkt_size > buf.len() || d.vm_pkt_size < 14 {
            // SAFETY: as above.
            unsafe { *pktcnt = n as c_int };
            return if d.vm_pkt_size < 14 { VMNET_INVALID_ARGUMENT } else { VMNET_PACKET_TOO_BIG };
        }
        switch_frame(&i.network, &i.port, &buf[..d.vm_pkt_size]);
    }
    VMNET_SUCCESS
}

/// vmnet.h `vmnet_stop_interface`: the interface is invalid from now on;
/// the stop block runs on `queue`.
#[no_mangle]
pub extern "C" fn vmnet_stop_interface(interface: *mut c_void, queue: *const c_void, stop_block: &Block<dyn Fn(u32)>) -> u32 {
    const API: &str = "vmnet_stop_interface";
    called(API);
    if queue.is_null() {
        return VMNET_INVALID_ARGUMENT;
    }
    let Some(i) = ifaces().lock().unwrap_or_else(|e| e.into_inner()).remove(&(interface as usize)) else {
        misuse(API, "the interface is not started or was already stopped (vmnet.h)");
    };
    i.network.ports.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| !Arc::ptr_eq(p, &i.port));
    if let Some((_, q)) = i.port.event.lock().unwrap_or_else(|e| e.into_inner()).take() {
        dispatch::release(q, API);
    }
    // The interface's reference to its network goes with it.
    // SAFETY: `i` was leaked by start and is no longer reachable.
    drop(unsafe { Box::from_raw(i as *const Iface as *mut Iface) });
    let block = Arc::new(Kept(stop_block.copy()));
    let q = queue as usize;
    dispatch::retain(q, API);
    dispatch::submit(q, move || {
        block.0.call((VMNET_SUCCESS,));
        dispatch::release(q, API);
    });
    let _ = VMNET_FAILURE;
    VMNET_SUCCESS
}
