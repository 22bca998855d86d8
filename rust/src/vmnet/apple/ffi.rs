//! Raw vmnet.framework and CoreFoundation declarations.
//!
//! Written from the macOS 26 SDK header `vmnet/vmnet.h` (signatures as in
//! platform-facts §1, checked against the 26.1 SDK header, and Apple's vmnet
//! reference; symbol names checked against MacOSX26.0.sdk `vmnet.tbd`) and
//! `CoreFoundation/CFBase.h`. Only public API is declared: the `.tbd`
//! exports more (`vmnet_network_get_mode`, `_get_mtu`, ...) that are private
//! and not used. Safe wrappers live in `vmnet/apple.rs` and
//! `vmnet/apple/interface.rs`.
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
// whose Objective-C type encoding is `^{vmnet_network=}` (platform-facts §2):
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

// vmnet/vmnet.h: network configuration and network (macOS 26.0).
#[link(name = "vmnet", kind = "framework")]
extern "C" {
    /// +1, release with `CFRelease`.
    pub fn vmnet_network_configuration_create(
        mode: vmnet_mode_t,
        status: *mut vmnet_return_t,
    ) -> vmnet_network_configuration_ref;
    pub fn vmnet_network_configuration_set_external_interface(
        configuration: vmnet_network_configuration_ref,
        interface_name: *const c_char,
    ) -> vmnet_return_t;
    pub fn vmnet_network_configuration_disable_nat44(configuration: vmnet_network_configuration_ref);
    pub fn vmnet_network_configuration_disable_nat66(configuration: vmnet_network_configuration_ref);
    pub fn vmnet_network_configuration_disable_dhcp(configuration: vmnet_network_configuration_ref);
    pub fn vmnet_network_configuration_disable_dns_proxy(configuration: vmnet_network_configuration_ref);
    pub fn vmnet_network_configuration_disable_router_advertisement(configuration: vmnet_network_configuration_ref);
    pub fn vmnet_network_configuration_set_ipv4_subnet(
        configuration: vmnet_network_configuration_ref,
        subnet_addr: *const libc::in_addr,
        subnet_mask: *const libc::in_addr,
    ) -> vmnet_return_t;
    pub fn vmnet_network_configuration_set_ipv6_prefix(
        configuration: vmnet_network_configuration_ref,
        prefix: *const libc::in6_addr,
        len: u8,
    ) -> vmnet_return_t;
    /// Internal port first; ports in host byte order.
    pub fn vmnet_network_configuration_add_port_forwarding_rule(
        configuration: vmnet_network_configuration_ref,
        protocol: u8,
        address_family: libc::sa_family_t,
        internal_port: u16,
        external_port: u16,
        internal_address: *const c_void,
    ) -> vmnet_return_t;
    pub fn vmnet_network_configuration_add_dhcp_reservation(
        configuration: vmnet_network_configuration_ref,
        client: *const ether_addr,
        reservation: *const libc::in_addr,
    ) -> vmnet_return_t;
    pub fn vmnet_network_configuration_set_mtu(
        configuration: vmnet_network_configuration_ref,
        mtu: u32,
    ) -> vmnet_return_t;

    /// +1, release with `CFRelease`.
    pub fn vmnet_network_create(
        configuration: vmnet_network_configuration_ref,
        status: *mut vmnet_return_t,
    ) -> vmnet_network_ref;
    pub fn vmnet_network_get_ipv4_subnet(
        network: vmnet_network_ref,
        subnet: *mut libc::in_addr,
        mask: *mut libc::in_addr,
    );
    pub fn vmnet_network_get_ipv6_prefix(network: vmnet_network_ref, prefix: *mut libc::in6_addr, prefix_len: *mut u8);
    /// +1 XPC object, release with `xpc_release`.
    pub fn vmnet_network_copy_serialization(network: vmnet_network_ref, status: *mut vmnet_return_t) -> xpc_object_t;
    /// +1, release with `CFRelease`; a process-local object.
    pub fn vmnet_network_create_with_serialization(
        serialization: xpc_object_t,
        status: *mut vmnet_return_t,
    ) -> vmnet_network_ref;
}

// vmnet/vmnet.h: interfaces (start_with_network 26.0; the rest 10.10).
#[link(name = "vmnet", kind = "framework")]
extern "C" {
    /// Retains `network`; the start block runs on `queue`.
    pub fn vmnet_interface_start_with_network(
        network: vmnet_network_ref,
        interface_desc: xpc_object_t,
        queue: *const DispatchQueue,
        start_block: &StartBlock,
    ) -> interface_ref;
    /// Non-NULL queue and block turn events on; NULL and NULL turn them off.
    pub fn vmnet_interface_set_event_callback(
        interface: interface_ref,
        event_mask: interface_event_t,
        queue: *const DispatchQueue,
        callback: *const EventBlock,
    ) -> vmnet_return_t;
    /// `pktcnt`: array size in, packets read out (may be 0).
    pub fn vmnet_read(interface: interface_ref, packets: *mut vmpktdesc, pktcnt: *mut c_int) -> vmnet_return_t;
    /// `pktcnt`: packets to write in, packets written out.
    pub fn vmnet_write(interface: interface_ref, packets: *mut vmpktdesc, pktcnt: *mut c_int) -> vmnet_return_t;
    /// Asynchronous; the stop block runs on `queue`.
    pub fn vmnet_stop_interface(
        interface: interface_ref,
        queue: *const DispatchQueue,
        stop_block: &StopBlock,
    ) -> vmnet_return_t;
}

// vmnet/vmnet.h: dictionary keys, `extern const char * const`.
#[link(name = "vmnet", kind = "framework")]
extern "C" {
    /// desc, bool (10.15).
    pub static vmnet_allocate_mac_address_key: *const c_char;
    /// desc, bool (11.0).
    pub static vmnet_enable_tso_key: *const c_char;
    /// desc, bool (11.0).
    pub static vmnet_enable_isolation_key: *const c_char;
    /// desc, bool (12.0).
    pub static vmnet_enable_checksum_offload_key: *const c_char;
    /// desc, bool (15.4); not used: not listed for `start_with_network`.
    pub static vmnet_enable_virtio_header_key: *const c_char;
    /// param, string (10.10).
    pub static vmnet_mac_address_key: *const c_char;
    /// param, uint64 (10.10).
    pub static vmnet_mtu_key: *const c_char;
    /// param, uint64 (10.10).
    pub static vmnet_max_packet_size_key: *const c_char;
    /// param, uint64 (15.0).
    pub static vmnet_read_max_packets_key: *const c_char;
    /// param, uint64 (15.0).
    pub static vmnet_write_max_packets_key: *const c_char;
    /// event, uint64 (10.10).
    pub static vmnet_estimated_packets_available_key: *const c_char;
}

// CoreFoundation/CFBase.h.
#[link(name = "CoreFoundation", kind = "framework")]
extern "C" {
    pub fn CFRelease(cf: *const c_void);
}
