//! Raw vmnet.framework and CoreFoundation declarations.
//!
//! Written from the macOS 26 SDK header `vmnet/vmnet.h` (checked against
//! the 26.1 SDK header and Apple's vmnet reference; symbol names checked against MacOSX26.0.sdk `vmnet.tbd`) and
//! `CoreFoundation/CFBase.h`. Only public API is declared: the `.tbd`
//! exports more (`vmnet_network_get_mode`, `_get_mtu`, ...) that are private
//! and not used. vmnet is not linked: its functions and keys are resolved
//! once at run time ([`vmnet`]), so the library still loads where vmnet
//! lacks them and the first use says "needs macOS 26". Safe wrappers live
//! in `vmnet/apple.rs` and `vmnet/apple/interface.rs`.
#![allow(non_camel_case_types, non_upper_case_globals, dead_code)]

use std::ffi::{c_char, c_int, c_void};

use block2::Block;
use dispatch2::DispatchQueue;
use objc2::encode::{Encoding, RefEncode};

use crate::xpc::apple::ffi::xpc_object_t;

/// `struct vmnet_network` (opaque; `vmnet_network_ref` points to it).
#[repr(C)]
pub struct vmnet_network {
    _opaque: [u8; 0],
}
/// `struct vmnet_network_configuration` (opaque).
#[repr(C)]
pub struct vmnet_network_configuration {
    _opaque: [u8; 0],
}
/// `struct vmnet_interface` (opaque; `interface_ref` points to it).
#[repr(C)]
pub struct vmnet_interface {
    _opaque: [u8; 0],
}

// SAFETY: `vmnet_network_ref` is a pointer to the C struct `vmnet_network`,
// whose Objective-C type encoding is `^{vmnet_network=}` (VZ header
// `VZVmnetNetworkDeviceAttachment.h` takes a `vmnet_network_ref`):
// needed to pass it to `-[VZVmnetNetworkDeviceAttachment initWithNetwork:]`.
unsafe impl RefEncode for vmnet_network {
    const ENCODING_REF: Encoding = Encoding::Pointer(&Encoding::Struct("vmnet_network", &[]));
}

pub type vmnet_network_ref = *mut vmnet_network;
pub type vmnet_network_configuration_ref = *mut vmnet_network_configuration;
pub type interface_ref = *mut vmnet_interface;
pub type vmnet_return_t = u32;
pub type vmnet_mode_t = u32;
pub type interface_event_t = u32;

/// `struct vmpktdesc`: declared (and its layout tested) in `mapping`.
pub type vmpktdesc = crate::vmnet::mapping::VmPktDesc;

/// `ether_addr_t` (net/ethernet.h `struct ether_addr`), absent from libc.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ether_addr {
    pub octet: [u8; 6],
}

/// Start block: `void (^)(vmnet_return_t status, xpc_object_t _Nullable interface_param)`.
pub type StartBlock = Block<dyn Fn(vmnet_return_t, xpc_object_t)>;
/// Event block: `void (^)(interface_event_t event_mask, xpc_object_t event)`.
pub type EventBlock = Block<dyn Fn(interface_event_t, xpc_object_t)>;
/// Stop block: `void (^)(vmnet_return_t status)`.
pub type StopBlock = Block<dyn Fn(vmnet_return_t)>;

crate::xpc::apple::dynamic::dynamic_functions! {
    /// vmnet/vmnet.h, resolved at run time from vmnet.framework so the
    /// library loads on any macOS (`xpc/apple/dynamic.rs`):
    /// `vmnet_network_*` and `vmnet_interface_start_with_network` are
    /// macOS 26.0; the interface I/O calls 10.10.
    pub struct Functions, needs "vmnet networks need macOS 26 or later" {
        /// +1, release with `CFRelease`.
        fn vmnet_network_configuration_create(mode: vmnet_mode_t, status: *mut vmnet_return_t)
            -> vmnet_network_configuration_ref;
        fn vmnet_network_configuration_set_external_interface(
            configuration: vmnet_network_configuration_ref,
            interface_name: *const c_char,
        ) -> vmnet_return_t;
        fn vmnet_network_configuration_disable_nat44(configuration: vmnet_network_configuration_ref);
        fn vmnet_network_configuration_disable_nat66(configuration: vmnet_network_configuration_ref);
        fn vmnet_network_configuration_disable_dhcp(configuration: vmnet_network_configuration_ref);
        fn vmnet_network_configuration_disable_dns_proxy(configuration: vmnet_network_configuration_ref);
        fn vmnet_network_configuration_disable_router_advertisement(configuration: vmnet_network_configuration_ref);
        fn vmnet_network_configuration_set_ipv4_subnet(
            configuration: vmnet_network_configuration_ref,
            subnet_addr: *const libc::in_addr,
            subnet_mask: *const libc::in_addr,
        ) -> vmnet_return_t;
        fn vmnet_network_configuration_set_ipv6_prefix(
            configuration: vmnet_network_configuration_ref,
            prefix: *const libc::in6_addr,
            len: u8,
        ) -> vmnet_return_t;
        /// Internal port first; ports in host byte order.
        fn vmnet_network_configuration_add_port_forwarding_rule(
            configuration: vmnet_network_configuration_ref,
            protocol: u8,
            address_family: crate::darwin_shim::sa_family_t,
            internal_port: u16,
            external_port: u16,
            internal_address: *const c_void,
        ) -> vmnet_return_t;
        fn vmnet_network_configuration_add_dhcp_reservation(
            configuration: vmnet_network_configuration_ref,
            client: *const ether_addr,
            reservation: *const libc::in_addr,
        ) -> vmnet_return_t;
        fn vmnet_network_configuration_set_mtu(configuration: vmnet_network_configuration_ref, mtu: u32)
            -> vmnet_return_t;

        /// +1, release with `CFRelease`.
        fn vmnet_network_create(configuration: vmnet_network_configuration_ref, status: *mut vmnet_return_t)
            -> vmnet_network_ref;
        fn vmnet_network_get_ipv4_subnet(network: vmnet_network_ref, subnet: *mut libc::in_addr, mask: *mut libc::in_addr);
        fn vmnet_network_get_ipv6_prefix(network: vmnet_network_ref, prefix: *mut libc::in6_addr, prefix_len: *mut u8);
        /// +1 XPC object, release with `xpc_release`.
        fn vmnet_network_copy_serialization(network: vmnet_network_ref, status: *mut vmnet_return_t) -> xpc_object_t;
        /// +1, release with `CFRelease`; a process-local object.
        fn vmnet_network_create_with_serialization(serialization: xpc_object_t, status: *mut vmnet_return_t)
            -> vmnet_network_ref;

        /// Retains `network`; the start block runs on `queue`.
        fn vmnet_interface_start_with_network(
            network: vmnet_network_ref,
            interface_desc: xpc_object_t,
            queue: *const DispatchQueue,
            start_block: &StartBlock,
        ) -> interface_ref;
        /// Non-NULL queue and block turn events on; NULL and NULL turn them off.
        fn vmnet_interface_set_event_callback(
            interface: interface_ref,
            event_mask: interface_event_t,
            queue: *const DispatchQueue,
            callback: *const EventBlock,
        ) -> vmnet_return_t;
        /// `pktcnt`: array size in, packets read out (may be 0).
        fn vmnet_read(interface: interface_ref, packets: *mut vmpktdesc, pktcnt: *mut c_int) -> vmnet_return_t;
        /// `pktcnt`: packets to write in, packets written out.
        fn vmnet_write(interface: interface_ref, packets: *mut vmpktdesc, pktcnt: *mut c_int) -> vmnet_return_t;
        /// Asynchronous; the stop block runs on `queue`.
        fn vmnet_stop_interface(interface: interface_ref, queue: *const DispatchQueue, stop_block: &StopBlock)
            -> vmnet_return_t;
    }
}

/// vmnet/vmnet.h dictionary keys (`extern const char * const`), read from
/// the exported symbols; never hard-coded.
pub struct Keys {
    /// desc, bool (10.15).
    pub allocate_mac_address: *const c_char,
    /// desc, bool (11.0).
    pub enable_tso: *const c_char,
    /// desc, bool (11.0).
    pub enable_isolation: *const c_char,
    /// desc, bool (12.0).
    pub enable_checksum_offload: *const c_char,
    /// param, string (10.10).
    pub mac_address: *const c_char,
    /// param, uint64 (10.10).
    pub mtu: *const c_char,
    /// param, uint64 (10.10).
    pub max_packet_size: *const c_char,
    /// param, uint64 (15.0); NULL where absent.
    pub read_max_packets: *const c_char,
    /// param, uint64 (15.0); NULL where absent.
    pub write_max_packets: *const c_char,
}

/// vmnet's functions and keys.
pub struct Vmnet {
    pub f: Functions,
    pub keys: Keys,
}

// SAFETY: function pointers and pointers to constant C strings in a loaded
// framework; never written after loading.
unsafe impl Send for Vmnet {}
// SAFETY: see `Send`.
unsafe impl Sync for Vmnet {}

/// # Safety
/// `handle` is a live `dlopen` handle of vmnet.framework.
unsafe fn key(handle: *mut c_void, name: &std::ffi::CStr) -> *const c_char {
    // SAFETY: caller's contract; the symbol is a `const char * const`
    // variable, so its address points at the key pointer.
    unsafe {
        match crate::xpc::apple::dynamic::symbol(handle, name) {
            Some(p) => *(p as *const *const c_char),
            None => std::ptr::null(),
        }
    }
}

fn load() -> Result<Vmnet, String> {
    let handle = crate::xpc::apple::dynamic::open_framework(crate::darwin_shim::VMNET_FRAMEWORK)?;
    // SAFETY: a live handle; the signatures are the SDK's (declared above).
    let f = unsafe { Functions::load(handle)? };
    // SAFETY: as above.
    let keys = unsafe {
        Keys {
            allocate_mac_address: key(handle, c"vmnet_allocate_mac_address_key"),
            enable_tso: key(handle, c"vmnet_enable_tso_key"),
            enable_isolation: key(handle, c"vmnet_enable_isolation_key"),
            enable_checksum_offload: key(handle, c"vmnet_enable_checksum_offload_key"),
            mac_address: key(handle, c"vmnet_mac_address_key"),
            mtu: key(handle, c"vmnet_mtu_key"),
            max_packet_size: key(handle, c"vmnet_max_packet_size_key"),
            read_max_packets: key(handle, c"vmnet_read_max_packets_key"),
            write_max_packets: key(handle, c"vmnet_write_max_packets_key"),
        }
    };
    for (name, ptr) in [
        ("vmnet_allocate_mac_address_key", keys.allocate_mac_address),
        ("vmnet_enable_tso_key", keys.enable_tso),
        ("vmnet_enable_isolation_key", keys.enable_isolation),
        ("vmnet_enable_checksum_offload_key", keys.enable_checksum_offload),
        ("vmnet_mac_address_key", keys.mac_address),
        ("vmnet_mtu_key", keys.mtu),
        ("vmnet_max_packet_size_key", keys.max_packet_size),
    ] {
        if ptr.is_null() {
            return Err(format!("{name} is missing: vmnet networks need macOS 26 or later"));
        }
    }
    Ok(Vmnet { f, keys })
}

/// vmnet, loaded once; the error names what is missing.
pub fn vmnet() -> Result<&'static Vmnet, crate::vmnet::Error> {
    static TABLE: std::sync::OnceLock<Result<Vmnet, String>> = std::sync::OnceLock::new();
    TABLE
        .get_or_init(load)
        .as_ref()
        .map_err(|detail| crate::vmnet::Error::Platform { op: "load vmnet.framework".into(), source: detail.clone().into() })
}

// CoreFoundation/CFBase.h (in the model build, the model library has it).
#[cfg_attr(target_os = "macos", link(name = "CoreFoundation", kind = "framework"))]
extern "C" {
    pub fn CFRelease(cf: *const c_void);
}
