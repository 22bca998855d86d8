//! Every decision the macOS backend makes that is not a foreign call, as
//! plain data, so it is compiled and tested on every OS.
//!
//! - [`configuration_steps`]: a [`NetworkConfig`] becomes the ordered list of
//!   `vmnet_network_configuration_*` calls ([`Step`]) that `vmnet/apple.rs`
//!   replays one by one.
//! - [`Status`]: `vmnet_return_t` as a Rust enum named after Apple's
//!   constants, with a hint per code; [`status_error`] turns one into a
//!   [`vmnet::Error`](super::Error) that says what was asked and what to do.
//! - [`interface_desc_entries`] / [`parse_interface_params`]: the interface
//!   description handed to `vmnet_interface_start_with_network` and the
//!   parameters its start block returns, as plain maps.
//! - [`network_state`]: what `vmnet_network_get_ipv4_subnet` /
//!   `_get_ipv6_prefix` report, in the `NetworkState` form.
//! - [`network_create_error`]: `VMNET_MEM_FAILURE` at network creation read
//!   as the missing virtualization entitlement; [`start_outcome`]: whether a
//!   failed interface start left an object to stop.
//! - [`VmPktDesc`] / [`PacketBatch`]: the packet descriptors `vmnet_read` /
//!   `vmnet_write` take.
//!
//! vmnet's own model only: XPC value tagging is `xpc::tagged`, the caller
//! rules (allowed users, Lima's serialization rule, the listener
//! requirement) are `broker::auth`.
//!
//! Pure functions, no threads, no state. The Apple facts behind them are
//! described in docs/macos.md.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::{format_mac, MacAddr, ConfigError, Mode, NetworkConfig, Protocol};

use super::{InterfaceDesc, InterfaceInfo, NetworkState};

// ---------------------------------------------------------------------------
// Constants from the SDK (vmnet/vmnet.h, sys/socket.h, netinet/in.h on macOS).
// They are plain numbers so the mapping can be tested anywhere.
// ---------------------------------------------------------------------------

/// `operating_modes_t` (vmnet/vmnet.h).
pub const VMNET_HOST_MODE: u32 = 1000;
pub const VMNET_SHARED_MODE: u32 = 1001;
/// `interface_event_t` (vmnet/vmnet.h).
pub const VMNET_INTERFACE_PACKETS_AVAILABLE: u32 = 1 << 0;
/// `AF_INET` / `AF_INET6` on Darwin (sys/socket.h): `AF_INET6` is 30 there,
/// not Linux's 10, so it is spelled out rather than taken from libc.
pub const DARWIN_AF_INET: u8 = 2;
pub const DARWIN_AF_INET6: u8 = 30;
/// `IPPROTO_TCP` / `IPPROTO_UDP` (netinet/in.h).
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Frame size vmnet uses without TSO at MTU 1500 (14-byte Ethernet header).
pub const DEFAULT_MAX_PACKET_BYTES: usize = 1514;
/// Used when the start parameters carry no read/write max packets (those keys
/// exist from macOS 15.0). Small enough that vmnet never answers
/// `VMNET_TOO_MANY_PACKETS`; 256 is the usual reported value [R].
pub const FALLBACK_MAX_PACKETS: usize = 64;
/// Upper bound on the batch we allocate descriptors for, whatever vmnet says.
pub const MAX_PACKETS_CAP: usize = 1024;
/// Largest frame we accept from the parameters: 65550 with TSO [R], plus
/// room for a virtio header.
pub const MAX_PACKET_BYTES_CAP: usize = 65_550 + 64;

// ---------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------

/// Why a configuration or parameter set cannot be mapped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{field}: {problem}")]
    Config { field: String, problem: String },
    #[error("interface parameters: {0}")]
    Params(String),
}

impl Error {
    fn config(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::Config { field: field.into(), problem: problem.into() }
    }
}

impl From<Error> for super::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Config { .. } => super::Error::Config(ConfigError::new(e.to_string())),
            other => super::Error::Platform { op: "vmnet".into(), source: Box::new(other) },
        }
    }
}

// ---------------------------------------------------------------------------
// vmnet_return_t.
// ---------------------------------------------------------------------------

/// `vmnet_return_t` (vmnet/vmnet.h), named after Apple's constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Success,
    Failure,
    MemFailure,
    InvalidArgument,
    SetupIncomplete,
    InvalidAccess,
    PacketTooBig,
    BufferExhausted,
    TooManyPackets,
    SharingServiceBusy,
    NotAuthorized,
    /// A code this build does not know (a newer SDK).
    Unknown(u32),
}

impl Status {
    pub const ALL: [Status; 11] = [
        Status::Success,
        Status::Failure,
        Status::MemFailure,
        Status::InvalidArgument,
        Status::SetupIncomplete,
        Status::InvalidAccess,
        Status::PacketTooBig,
        Status::BufferExhausted,
        Status::TooManyPackets,
        Status::SharingServiceBusy,
        Status::NotAuthorized,
    ];

    pub fn from_raw(code: u32) -> Status {
        match code {
            1000 => Status::Success,
            1001 => Status::Failure,
            1002 => Status::MemFailure,
            1003 => Status::InvalidArgument,
            1004 => Status::SetupIncomplete,
            1005 => Status::InvalidAccess,
            1006 => Status::PacketTooBig,
            1007 => Status::BufferExhausted,
            1008 => Status::TooManyPackets,
            1009 => Status::SharingServiceBusy,
            1010 => Status::NotAuthorized,
            other => Status::Unknown(other),
        }
    }

    pub fn raw(self) -> u32 {
        match self {
            Status::Success => 1000,
            Status::Failure => 1001,
            Status::MemFailure => 1002,
            Status::InvalidArgument => 1003,
            Status::SetupIncomplete => 1004,
            Status::InvalidAccess => 1005,
            Status::PacketTooBig => 1006,
            Status::BufferExhausted => 1007,
            Status::TooManyPackets => 1008,
            Status::SharingServiceBusy => 1009,
            Status::NotAuthorized => 1010,
            Status::Unknown(code) => code,
        }
    }

    pub fn is_success(self) -> bool {
        self == Status::Success
    }

    /// Apple's constant name.
    pub fn name(self) -> &'static str {
        match self {
            Status::Success => "VMNET_SUCCESS",
            Status::Failure => "VMNET_FAILURE",
            Status::MemFailure => "VMNET_MEM_FAILURE",
            Status::InvalidArgument => "VMNET_INVALID_ARGUMENT",
            Status::SetupIncomplete => "VMNET_SETUP_INCOMPLETE",
            Status::InvalidAccess => "VMNET_INVALID_ACCESS",
            Status::PacketTooBig => "VMNET_PACKET_TOO_BIG",
            Status::BufferExhausted => "VMNET_BUFFER_EXHAUSTED",
            Status::TooManyPackets => "VMNET_TOO_MANY_PACKETS",
            Status::SharingServiceBusy => "VMNET_SHARING_SERVICE_BUSY",
            Status::NotAuthorized => "VMNET_NOT_AUTHORIZED",
            Status::Unknown(_) => "VMNET_UNKNOWN_STATUS",
        }
    }

    /// What the code means and what to do about it.
    pub fn hint(self) -> &'static str {
        match self {
            Status::Success => "no error",
            Status::Failure => "vmnet failed for an unspecified reason; check the system log (log show --predicate 'subsystem == \"com.apple.vmnet\"') and retry",
            Status::MemFailure => "vmnet ran out of memory, or (when creating a network) this process lacks the com.apple.security.virtualization entitlement; see the entitlement check in docs/macos.md",
            Status::InvalidArgument => "vmnet refused a value; check the network configuration (subnet, prefix, MTU, port forwards, reservations) against docs/macos.md",
            Status::SetupIncomplete => "the interface or network is not fully set up yet; retry once the start has completed",
            Status::InvalidAccess => "permission denied; run the broker as the `vmnet-rs-broker` binary that `vmnet-rs install` signs with the virtualization entitlement",
            Status::PacketTooBig => "a frame is larger than the interface's max packet size; lower the guest MTU or enable offload on the network",
            Status::BufferExhausted => "vmnet's kernel buffers are full; the frame is dropped, retry later",
            Status::TooManyPackets => "more packets than the interface's read/write max packets in one call",
            Status::SharingServiceBusy => "another sharing service (Internet Sharing?) holds the network or its subnet; stop it or choose another subnet",
            Status::NotAuthorized => "needs the com.apple.security.virtualization entitlement; run the broker as the `vmnet-rs-broker` binary that `vmnet-rs install` signs",
            Status::Unknown(_) => "a status this build does not know; check the system log and update vmnet-rs",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.name(), self.raw(), self.hint())
    }
}

impl std::error::Error for Status {}

/// The backend error for a vmnet call `op` that returned `status`.
pub fn status_error(op: impl Into<String>, status: Status) -> super::Error {
    super::Error::Platform { op: op.into(), source: Box::new(status) }
}

/// What to do when vmnet refuses to create a network for want of the
/// entitlement.
pub const MISSING_ENTITLEMENT: &str = "this process lacks the com.apple.security.virtualization entitlement \
(without it vmnet answers VMNET_MEM_FAILURE, not VMNET_NOT_AUTHORIZED); run the broker as the signed \
`vmnet-rs-broker` binary: `vmnet-rs install` signs it, and `codesign -d --entitlements - \"$(command -v vmnet-rs-broker)\"` \
must list the entitlement";

/// The error for `vmnet_network_configuration_create` / `vmnet_network_create`
/// (`op`) returning `status`. Without `com.apple.security.virtualization`
/// vmnet answers `VMNET_MEM_FAILURE` (1002) there, not
/// `VMNET_NOT_AUTHORIZED` (measured on macOS 26.3), so at creation both
/// codes are reported as the missing entitlement.
pub fn network_create_error(op: impl Into<String>, status: Status) -> super::Error {
    match status {
        Status::MemFailure | Status::NotAuthorized => super::Error::Platform {
            op: op.into(),
            source: format!("{} ({}): {MISSING_ENTITLEMENT}", status.name(), status.raw()).into(),
        },
        other => status_error(op, other),
    }
}

/// What to do after `vmnet_interface_start_with_network` completed with
/// `status`, having returned an interface object or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartOutcome {
    Started,
    /// The start failed but vmnet handed back an interface object: stop it
    /// (`vmnet_stop_interface`) rather than forget it.
    FailedStop(Status),
    /// The start failed and there is nothing to stop.
    Failed(Status),
}

pub fn start_outcome(status: Status, returned_interface: bool) -> StartOutcome {
    match (status.is_success(), returned_interface) {
        (true, true) => StartOutcome::Started,
        // Success without an object is a failure vmnet did not name.
        (true, false) => StartOutcome::Failed(Status::Failure),
        (false, true) => StartOutcome::FailedStop(status),
        (false, false) => StartOutcome::Failed(status),
    }
}

/// The same as an `io::Error` for the data path; buffer exhaustion is flow
/// control (`WouldBlock`), everything else is an error naming the status.
pub fn status_io_error(op: &str, status: Status) -> std::io::Error {
    let kind = match status {
        Status::BufferExhausted => std::io::ErrorKind::WouldBlock,
        Status::InvalidArgument | Status::PacketTooBig | Status::TooManyPackets => std::io::ErrorKind::InvalidInput,
        Status::InvalidAccess | Status::NotAuthorized => std::io::ErrorKind::PermissionDenied,
        _ => std::io::ErrorKind::Other,
    };
    std::io::Error::new(kind, format!("{op} failed: {status}"))
}

// ---------------------------------------------------------------------------
// Configuration -> steps.
// ---------------------------------------------------------------------------

/// One `vmnet_network_configuration_*` call, in the order it is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `vmnet_network_configuration_create(mode, &status)`.
    Create {
        mode: u32,
    },
    /// `..._set_external_interface(name)`; shared mode only.
    SetExternalInterface(String),
    DisableNat44,
    DisableNat66,
    DisableDhcp,
    DisableDnsProxy,
    DisableRouterAdvertisement,
    /// `..._set_ipv4_subnet(&first_host, &mask)`: the first host address
    /// (x.y.z.1), never the network address (`.0` is accepted at first but
/// breaks VZ and DHCP later; docs/macos.md).
    SetIpv4Subnet {
        first_host: Ipv4Addr,
        mask: Ipv4Addr,
    },
    /// `..._set_ipv6_prefix(&prefix, len)`.
    SetIpv6Prefix {
        prefix: Ipv6Addr,
        len: u8,
    },
    /// `..._set_mtu(mtu)`.
    SetMtu(u32),
    /// `..._add_port_forwarding_rule(protocol, family, internal_port,
    /// external_port, &internal_address)`: internal port first.
    AddPortForwardingRule {
        protocol: u8,
        family: u8,
        internal_port: u16,
        external_port: u16,
        internal_address: IpAddr,
    },
    /// `..._add_dhcp_reservation(&mac, &address)`.
    AddDhcpReservation {
        mac: [u8; 6],
        address: Ipv4Addr,
    },
}

impl Step {
    /// The C function this step calls (for error messages).
    pub fn function(&self) -> &'static str {
        match self {
            Step::Create { .. } => "vmnet_network_configuration_create",
            Step::SetExternalInterface(_) => "vmnet_network_configuration_set_external_interface",
            Step::DisableNat44 => "vmnet_network_configuration_disable_nat44",
            Step::DisableNat66 => "vmnet_network_configuration_disable_nat66",
            Step::DisableDhcp => "vmnet_network_configuration_disable_dhcp",
            Step::DisableDnsProxy => "vmnet_network_configuration_disable_dns_proxy",
            Step::DisableRouterAdvertisement => "vmnet_network_configuration_disable_router_advertisement",
            Step::SetIpv4Subnet { .. } => "vmnet_network_configuration_set_ipv4_subnet",
            Step::SetIpv6Prefix { .. } => "vmnet_network_configuration_set_ipv6_prefix",
            Step::SetMtu(_) => "vmnet_network_configuration_set_mtu",
            Step::AddPortForwardingRule { .. } => "vmnet_network_configuration_add_port_forwarding_rule",
            Step::AddDhcpReservation { .. } => "vmnet_network_configuration_add_dhcp_reservation",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Create { mode } => write!(f, "{}({})", self.function(), mode_name(*mode)),
            Step::SetExternalInterface(name) => write!(f, "{}({name:?})", self.function()),
            Step::SetIpv4Subnet { first_host, mask } => write!(f, "{}({first_host}, {mask})", self.function()),
            Step::SetIpv6Prefix { prefix, len } => write!(f, "{}({prefix}/{len})", self.function()),
            Step::SetMtu(mtu) => write!(f, "{}({mtu})", self.function()),
            Step::AddPortForwardingRule { protocol, internal_port, external_port, internal_address, .. } => write!(
                f,
                "{}({} host port {external_port} -> {internal_address} port {internal_port})",
                self.function(),
                if *protocol == IPPROTO_TCP { "tcp" } else { "udp" }
            ),
            Step::AddDhcpReservation { mac, address } => {
                write!(f, "{}({} -> {address})", self.function(), format_mac(mac))
            }
            _ => write!(f, "{}()", self.function()),
        }
    }
}

fn mode_name(mode: u32) -> &'static str {
    match mode {
        VMNET_HOST_MODE => "VMNET_HOST_MODE",
        VMNET_SHARED_MODE => "VMNET_SHARED_MODE",
        _ => "unknown mode",
    }
}


/// The vmnet calls that realise `config`, in order. `config` is a
/// configuration the validator accepted (`config::NetworkConfig::from_*`),
/// so every value is in range and well-formed: nothing is judged again
/// here, and a value that still fails to parse is left to the platform.
pub fn configuration_steps(config: &NetworkConfig) -> Vec<Step> {
    let mode = match config.mode {
        Mode::Shared => VMNET_SHARED_MODE,
        Mode::Host => VMNET_HOST_MODE,
    };
    let mut steps = vec![Step::Create { mode }];
    if let Some(name) = &config.external_interface {
        steps.push(Step::SetExternalInterface(name.clone()));
    }
    if !config.nat44 {
        steps.push(Step::DisableNat44);
    }
    if !config.nat66 {
        steps.push(Step::DisableNat66);
    }
    if !config.dhcp {
        steps.push(Step::DisableDhcp);
    }
    if !config.dns_proxy {
        steps.push(Step::DisableDnsProxy);
    }
    if !config.router_advertisement {
        steps.push(Step::DisableRouterAdvertisement);
    }
    if let Ok(Some(subnet)) = config.ipv4_subnet() {
        steps.push(Step::SetIpv4Subnet { first_host: subnet.gateway(), mask: subnet.netmask() });
    }
    if let Some(p) = config.ipv6_prefix_parsed() {
        steps.push(Step::SetIpv6Prefix { prefix: p.addr(), len: p.prefix_len() });
    }
    if config.mtu != 0 {
        steps.push(Step::SetMtu(config.mtu));
    }
    for (rule, internal_address) in config.forwards() {
        let protocol = match rule.protocol {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        };
        let family = match internal_address {
            IpAddr::V4(_) => DARWIN_AF_INET,
            IpAddr::V6(_) => DARWIN_AF_INET6,
        };
        steps.push(Step::AddPortForwardingRule {
            protocol,
            family,
            internal_port: rule.internal_port,
            external_port: rule.external_port,
            internal_address,
        });
    }
    for (mac, address) in config.reservations() {
        steps.push(Step::AddDhcpReservation { mac, address });
    }
    steps
}

/// What a live network reports, in `NetworkState` form: the gateway (first
/// host) with its prefix length, and the IPv6 prefix if any.
pub fn network_state(subnet: Ipv4Addr, mask: Ipv4Addr, ipv6: Option<(Ipv6Addr, u8)>) -> Result<NetworkState, Error> {
    let mask_bits = u32::from(mask);
    let prefix_len = mask_bits.leading_ones();
    if mask_bits.count_ones() != prefix_len {
        return Err(Error::Params(format!("vmnet reported a non-contiguous mask {mask}")));
    }
    let network = u32::from(subnet) & mask_bits;
    let gateway = Ipv4Addr::from(network + 1);
    let ipv6_prefix = match ipv6 {
        Some((prefix, len)) if len > 0 && !prefix.is_unspecified() => Some(format!("{prefix}/{len}")),
        _ => None,
    };
    Ok(NetworkState { subnet: format!("{gateway}/{prefix_len}"), ipv6_prefix, device: String::new() })
}

// ---------------------------------------------------------------------------
// Interface description and parameters.
// ---------------------------------------------------------------------------

/// Interface description keys (vmnet/vmnet.h `vmnet_*_key`). The FFI side
/// maps each to the exported key symbol; no key string is written here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DescKey {
    AllocateMacAddress,
    EnableIsolation,
    EnableTso,
    EnableChecksumOffload,
}

/// The description for `vmnet_interface_start_with_network`, as (key, bool)
/// pairs. `network_offload` is the network's setting: every interface on one
/// network must agree on TSO/checksum offload, or the whole network degrades
/// (one member without TSO disables it bridge-wide; docs/macos.md), so a
/// mismatched request is refused.
pub fn interface_desc_entries(
    desc: &InterfaceDesc,
    network_isolation: bool,
    network_offload: bool,
) -> Result<Vec<(DescKey, bool)>, Error> {
    if desc.offload != network_offload {
        return Err(Error::config(
            "offload",
            format!(
                "the interface asks for offload {} but the network has offload {}; all interfaces on a network must agree (set offload in the network config)",
                desc.offload, network_offload
            ),
        ));
    }
    Ok(vec![
        // A caller-chosen MAC means vmnet must not allocate one; the guest
        // uses its own (reported ignored on 26.2 [R/?], harmless).
        (DescKey::AllocateMacAddress, desc.mac.is_none()),
        (DescKey::EnableIsolation, desc.isolation || network_isolation),
        (DescKey::EnableTso, network_offload),
        (DescKey::EnableChecksumOffload, network_offload),
    ])
}

/// Parameter keys the start block's `interface_param` dictionary carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ParamKey {
    MacAddress,
    Mtu,
    MaxPacketSize,
    ReadMaxPackets,
    WriteMaxPackets,
}

/// A value copied out of `interface_param` (the dictionary is borrowed and
/// only valid inside the block).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamValue {
    String(String),
    Uint(u64),
}

pub type Params = BTreeMap<ParamKey, ParamValue>;

fn param_uint(params: &Params, key: ParamKey) -> Result<Option<u64>, Error> {
    match params.get(&key) {
        None => Ok(None),
        Some(ParamValue::Uint(v)) => Ok(Some(*v)),
        Some(ParamValue::String(s)) => Err(Error::Params(format!("{key:?} is the string {s:?}, expected a number"))),
    }
}

/// Builds [`InterfaceInfo`] from the start parameters. A caller-chosen MAC
/// wins over the parameters (vmnet does not allocate one then).
pub fn parse_interface_params(params: &Params, desc: &InterfaceDesc) -> Result<InterfaceInfo, Error> {
    let mac = match desc.mac {
        Some(mac) => mac,
        None => match params.get(&ParamKey::MacAddress) {
            Some(ParamValue::String(s)) => MacAddr::parse_reported(s)
                .map(|m| m.0)
                .ok_or_else(|| Error::Params(format!("vmnet returned the MAC {s:?}, which does not parse")))?,
            Some(other) => return Err(Error::Params(format!("MacAddress is {other:?}, expected a string"))),
            None => return Err(Error::Params("vmnet allocated no MAC address (vmnet_mac_address_key missing)".into())),
        },
    };
    let mtu = param_uint(params, ParamKey::Mtu)?.unwrap_or(1500);
    if !(68..=65_535).contains(&mtu) {
        return Err(Error::Params(format!("MTU {mtu} is out of range")));
    }
    let max_frame_bytes = match param_uint(params, ParamKey::MaxPacketSize)? {
        Some(v) => usize::try_from(v).unwrap_or(usize::MAX),
        None => DEFAULT_MAX_PACKET_BYTES,
    };
    if !(60..=MAX_PACKET_BYTES_CAP).contains(&max_frame_bytes) {
        return Err(Error::Params(format!("max packet size {max_frame_bytes} is outside 60..={MAX_PACKET_BYTES_CAP}")));
    }
    let batch = |key| -> Result<usize, Error> {
        Ok(match param_uint(params, key)? {
            Some(0) => return Err(Error::Params(format!("{key:?} is 0"))),
            Some(v) => usize::try_from(v).unwrap_or(MAX_PACKETS_CAP).min(MAX_PACKETS_CAP),
            None => FALLBACK_MAX_PACKETS,
        })
    };
    Ok(InterfaceInfo {
        mac,
        mtu: mtu as u32,
        max_frame_bytes,
        read_max_frames: batch(ParamKey::ReadMaxPackets)?,
        write_max_frames: batch(ParamKey::WriteMaxPackets)?,
        offload: desc.offload,
    })
}

// ---------------------------------------------------------------------------
// Packet descriptors for vmnet_read / vmnet_write.
// ---------------------------------------------------------------------------

/// `struct vmpktdesc` (vmnet/vmnet.h): 24 bytes on LP64, fields at 0, 8, 16
/// and 20. Declared here, not in the Apple FFI module, so its layout and the
/// batch logic below are tested on every OS (`iovec` has the same layout on
/// Linux and macOS).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VmPktDesc {
    pub vm_pkt_size: usize,
    pub vm_pkt_iov: *mut libc::iovec,
    pub vm_pkt_iovcnt: u32,
    pub vm_flags: u32,
}

/// Scratch descriptors for one `vmnet_read` / `vmnet_write` call: one iovec
/// per packet (multi-iovec packets fail with `VMNET_INVALID_ARGUMENT`, as
/// QEMU reports), sizes reset to each buffer's full capacity before every
/// read, flags zero.
///
/// Invariant: after a `prepare_*` call, `descs[i].vm_pkt_iov` points at
/// `iovs[i]`, which points at the caller's buffer `i`; the pointers are only
/// valid until the caller's buffers go away, so they are used for exactly
/// one vmnet call and rebuilt by the next `prepare_*`.
#[derive(Debug, Default)]
pub struct PacketBatch {
    iovs: Vec<libc::iovec>,
    descs: Vec<VmPktDesc>,
}

impl PacketBatch {
    pub fn with_capacity(packets: usize) -> PacketBatch {
        PacketBatch { iovs: Vec::with_capacity(packets), descs: Vec::with_capacity(packets) }
    }

    fn link(&mut self) {
        self.descs.clear();
        for iov in self.iovs.iter_mut() {
            self.descs.push(VmPktDesc { vm_pkt_size: iov.iov_len, vm_pkt_iov: iov, vm_pkt_iovcnt: 1, vm_flags: 0 });
        }
    }

    /// Describes up to `limit` of `bufs` for a read; every buffer must hold
    /// `max_frame` bytes. Returns how many descriptors are ready.
    pub fn prepare_read(&mut self, bufs: &mut [&mut [u8]], max_frame: usize, limit: usize) -> std::io::Result<usize> {
        let n = bufs.len().min(limit);
        self.iovs.clear();
        for buf in bufs[..n].iter_mut() {
            if buf.len() < max_frame {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("read buffer of {} bytes is smaller than the max frame {max_frame}", buf.len()),
                ));
            }
            self.iovs.push(libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() });
        }
        self.link();
        Ok(n)
    }

    /// Describes up to `limit` of `frames` for a write; each must be
    /// 1..=`max_frame` bytes. Returns how many descriptors are ready.
    pub fn prepare_write(&mut self, frames: &[&[u8]], max_frame: usize, limit: usize) -> std::io::Result<usize> {
        let n = frames.len().min(limit);
        self.iovs.clear();
        for frame in &frames[..n] {
            if frame.is_empty() || frame.len() > max_frame {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("frame of {} bytes is outside 1..={max_frame}", frame.len()),
                ));
            }
            // vmnet only reads through this pointer on a write.
            self.iovs.push(libc::iovec { iov_base: frame.as_ptr() as *mut _, iov_len: frame.len() });
        }
        self.link();
        Ok(n)
    }

    /// The descriptor array for the vmnet call.
    pub fn as_mut_ptr(&mut self) -> *mut VmPktDesc {
        self.descs.as_mut_ptr()
    }

    pub fn descs(&self) -> &[VmPktDesc] {
        &self.descs
    }

    /// After a read: clamps vmnet's packet count to what was prepared
    /// (0 is a normal answer, not an error) and copies the sizes out.
    pub fn finish_read(&self, count: i32, lens: &mut [usize]) -> usize {
        let count = (count.max(0) as usize).min(self.descs.len()).min(lens.len());
        for (len, desc) in lens.iter_mut().zip(&self.descs[..count]) {
            *len = desc.vm_pkt_size;
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AddressFamily, DhcpReservation, PortForward};

    fn base() -> NetworkConfig {
        NetworkConfig { mtu: 0, ..NetworkConfig::lima_default() }
    }

    #[test]
    fn defaults_are_one_create_call() {
        assert_eq!(configuration_steps(&base()), vec![Step::Create { mode: VMNET_SHARED_MODE }]);
        let host = NetworkConfig { mode: Mode::Host, ..base() };
        assert_eq!(configuration_steps(&host), vec![Step::Create { mode: VMNET_HOST_MODE }]);
    }

    #[test]
    fn each_false_flag_maps_to_its_disable_call() {
        type Case = (fn(&mut NetworkConfig), Step);
        let cases: [Case; 5] = [
            (|c| c.nat44 = false, Step::DisableNat44),
            (|c| c.nat66 = false, Step::DisableNat66),
            (|c| c.dhcp = false, Step::DisableDhcp),
            (|c| c.dns_proxy = false, Step::DisableDnsProxy),
            (|c| c.router_advertisement = false, Step::DisableRouterAdvertisement),
        ];
        for (set, step) in cases {
            let mut c = base();
            set(&mut c);
            assert_eq!(configuration_steps(&c), vec![Step::Create { mode: VMNET_SHARED_MODE }, step]);
        }
    }

    #[test]
    fn full_config_in_call_order() {
        let c = NetworkConfig {
            mtu: 9000,
            nat66: false,
            subnet: Some("192.168.107.0/24".into()),
            ipv6_prefix: Some("fd00:1:2:3::/64".into()),
            external_interface: Some("en0".into()),
            port_forwarding: vec![PortForward {
                protocol: Protocol::Tcp,
                external_port: 2222,
                internal_address: "192.168.107.10".into(),
                internal_port: 22,
                address_family: AddressFamily::Ipv4,
            }],
            dhcp_reservations: vec![DhcpReservation {
                mac: "52:54:00:12:34:56".into(),
                address: "192.168.107.20".into(),
            }],
            ..base()
        };
        let steps = configuration_steps(&c);
        assert_eq!(
            steps,
            vec![
                Step::Create { mode: VMNET_SHARED_MODE },
                Step::SetExternalInterface("en0".into()),
                Step::DisableNat66,
                Step::SetIpv4Subnet {
                    first_host: Ipv4Addr::new(192, 168, 107, 1),
                    mask: Ipv4Addr::new(255, 255, 255, 0)
                },
                Step::SetIpv6Prefix { prefix: "fd00:1:2:3::".parse().unwrap(), len: 64 },
                Step::SetMtu(9000),
                Step::AddPortForwardingRule {
                    protocol: IPPROTO_TCP,
                    family: DARWIN_AF_INET,
                    internal_port: 22,
                    external_port: 2222,
                    internal_address: "192.168.107.10".parse().unwrap(),
                },
                Step::AddDhcpReservation {
                    mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                    address: Ipv4Addr::new(192, 168, 107, 20)
                },
            ]
        );
        assert_eq!(
            steps[6].to_string(),
            "vmnet_network_configuration_add_port_forwarding_rule(tcp host port 2222 -> 192.168.107.10 port 22)"
        );
    }

    #[test]
    fn subnet_is_normalised_to_first_host() {
        for text in ["192.168.107.0/24", "192.168.107.1/24"] {
            let c = NetworkConfig { subnet: Some(text.into()), ..base() };
            assert_eq!(
                configuration_steps(&c)[1],
                Step::SetIpv4Subnet {
                    first_host: Ipv4Addr::new(192, 168, 107, 1),
                    mask: Ipv4Addr::new(255, 255, 255, 0)
                },
                "{text}"
            );
        }
        let c = NetworkConfig { subnet: Some("10.20.0.0/16".into()), ..base() };
        assert_eq!(
            configuration_steps(&c)[1],
            Step::SetIpv4Subnet { first_host: Ipv4Addr::new(10, 20, 0, 1), mask: Ipv4Addr::new(255, 255, 0, 0) }
        );
    }

    #[test]
    fn ipv6_prefix_is_the_configs() {
        let c = NetworkConfig { ipv6_prefix: Some("fd12:3456:789a:1::/64".into()), ..base() };
        assert_eq!(
            configuration_steps(&c)[1],
            Step::SetIpv6Prefix { prefix: "fd12:3456:789a:1::".parse().unwrap(), len: 64 }
        );
    }

    #[test]
    fn mtu_is_set_when_given() {
        assert_eq!(configuration_steps(&NetworkConfig { mtu: 1500, ..base() })[1], Step::SetMtu(1500));
    }

    #[test]
    fn port_forward_v6_udp() {
        let rule = |family, addr: &str| PortForward {
            protocol: Protocol::Udp,
            external_port: 5353,
            internal_address: addr.into(),
            internal_port: 53,
            address_family: family,
        };
        let c = NetworkConfig { port_forwarding: vec![rule(AddressFamily::Ipv6, "fd00::10")], ..base() };
        assert_eq!(
            configuration_steps(&c)[1],
            Step::AddPortForwardingRule {
                protocol: IPPROTO_UDP,
                family: DARWIN_AF_INET6,
                internal_port: 53,
                external_port: 5353,
                internal_address: "fd00::10".parse().unwrap(),
            }
        );
    }

    #[test]
    fn reservations_follow_the_forwards() {
        let res = |mac: &str, addr: &str| DhcpReservation { mac: mac.into(), address: addr.into() };
        let with = |r, dhcp| NetworkConfig {
            subnet: Some("192.168.107.1/24".into()),
            dhcp,
            dhcp_reservations: vec![r],
            ..base()
        };
        let steps = configuration_steps(&with(res("52:54:00:00:00:0a", "192.168.107.3"), true));
        assert_eq!(
            steps.last().unwrap(),
            &Step::AddDhcpReservation { mac: [0x52, 0x54, 0, 0, 0, 0x0a], address: Ipv4Addr::new(192, 168, 107, 3) }
        );
    }

    #[test]
    fn status_codes_round_trip_and_have_names_and_hints() {
        for (i, status) in Status::ALL.iter().enumerate() {
            assert_eq!(status.raw(), 1000 + i as u32);
            assert_eq!(Status::from_raw(status.raw()), *status);
            assert!(status.name().starts_with("VMNET_"));
            assert!(!status.hint().is_empty());
        }
        assert_eq!(Status::from_raw(1009).name(), "VMNET_SHARING_SERVICE_BUSY");
        assert!(Status::SharingServiceBusy.hint().contains("Internet Sharing"));
        assert!(Status::NotAuthorized.hint().contains("com.apple.security.virtualization"));
        assert!(Status::NotAuthorized.hint().contains("vmnet-rs install"));
        assert!(Status::NotAuthorized.hint().contains("vmnet-rs-broker"));
        assert!(Status::MemFailure.hint().contains("entitlement"));
        assert_eq!(Status::from_raw(4242), Status::Unknown(4242));
        assert_eq!(Status::Unknown(4242).raw(), 4242);
        let e = status_error("vmnet_network_create", Status::SharingServiceBusy).to_string();
        assert!(e.starts_with("vmnet_network_create failed: VMNET_SHARING_SERVICE_BUSY (1009)"), "{e}");
        assert_eq!(status_io_error("vmnet_write", Status::BufferExhausted).kind(), std::io::ErrorKind::WouldBlock);
        assert_eq!(status_io_error("vmnet_read", Status::NotAuthorized).kind(), std::io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn mem_failure_at_network_creation_is_reported_as_the_missing_entitlement() {
        for status in [Status::MemFailure, Status::NotAuthorized] {
            let e = network_create_error("vmnet_network_create(shared)", status).to_string();
            assert!(e.starts_with(&format!("vmnet_network_create(shared) failed: {} ({})", status.name(), status.raw())), "{e}");
            assert!(e.contains("lacks the com.apple.security.virtualization entitlement"), "{e}");
            assert!(e.contains("vmnet-rs-broker") && e.contains("vmnet-rs install") && e.contains("codesign -d"), "{e}");
            assert!(!e.contains("out of memory"), "{e}");
        }
        let e = network_create_error("vmnet_network_create(shared)", Status::SharingServiceBusy).to_string();
        assert!(e.contains("Internet Sharing") && !e.contains("entitlement"), "{e}");
    }

    #[test]
    fn a_failed_start_that_returned_an_interface_is_stopped() {
        assert_eq!(start_outcome(Status::Success, true), StartOutcome::Started);
        assert_eq!(start_outcome(Status::Success, false), StartOutcome::Failed(Status::Failure));
        assert_eq!(start_outcome(Status::InvalidArgument, true), StartOutcome::FailedStop(Status::InvalidArgument));
        assert_eq!(start_outcome(Status::Failure, false), StartOutcome::Failed(Status::Failure));
    }

    #[test]
    fn desc_entries_follow_the_request_and_the_network() {
        let d = InterfaceDesc::default();
        assert_eq!(
            interface_desc_entries(&d, false, false).unwrap(),
            vec![
                (DescKey::AllocateMacAddress, true),
                (DescKey::EnableIsolation, false),
                (DescKey::EnableTso, false),
                (DescKey::EnableChecksumOffload, false),
            ]
        );
        let d = InterfaceDesc { mac: Some([2, 0, 0, 0, 0, 1]), isolation: false, offload: true };
        assert_eq!(
            interface_desc_entries(&d, true, true).unwrap(),
            vec![
                (DescKey::AllocateMacAddress, false),
                (DescKey::EnableIsolation, true),
                (DescKey::EnableTso, true),
                (DescKey::EnableChecksumOffload, true),
            ]
        );
        let e =
            interface_desc_entries(&InterfaceDesc { offload: true, ..Default::default() }, false, false).unwrap_err();
        assert!(e.to_string().contains("must agree"), "{e}");
    }

    #[test]
    fn params_parse_into_info() {
        let mut p = Params::new();
        p.insert(ParamKey::MacAddress, ParamValue::String("be:d0:74:5c:e:5d".into()));
        p.insert(ParamKey::Mtu, ParamValue::Uint(1500));
        p.insert(ParamKey::MaxPacketSize, ParamValue::Uint(65550));
        p.insert(ParamKey::ReadMaxPackets, ParamValue::Uint(256));
        p.insert(ParamKey::WriteMaxPackets, ParamValue::Uint(100_000));
        let desc = InterfaceDesc { offload: true, ..Default::default() };
        let info = parse_interface_params(&p, &desc).unwrap();
        assert_eq!(
            info,
            InterfaceInfo {
                mac: [0xbe, 0xd0, 0x74, 0x5c, 0x0e, 0x5d],
                mtu: 1500,
                max_frame_bytes: 65550,
                read_max_frames: 256,
                write_max_frames: MAX_PACKETS_CAP,
                offload: true,
            }
        );
        // A caller-chosen MAC wins; absent sizes fall back.
        let mut p2 = Params::new();
        p2.insert(ParamKey::Mtu, ParamValue::Uint(9000));
        let desc = InterfaceDesc { mac: Some([2, 1, 2, 3, 4, 5]), ..Default::default() };
        let info = parse_interface_params(&p2, &desc).unwrap();
        assert_eq!(info.mac, [2, 1, 2, 3, 4, 5]);
        assert_eq!(info.mtu, 9000);
        assert_eq!(info.max_frame_bytes, DEFAULT_MAX_PACKET_BYTES);
        assert_eq!(info.read_max_frames, FALLBACK_MAX_PACKETS);
    }

    #[test]
    fn bad_params_are_errors() {
        let d = InterfaceDesc::default();
        assert!(parse_interface_params(&Params::new(), &d).unwrap_err().to_string().contains("no MAC"));
        let mut p = Params::new();
        p.insert(ParamKey::MacAddress, ParamValue::String("nonsense".into()));
        assert!(parse_interface_params(&p, &d).is_err());
        p.insert(ParamKey::MacAddress, ParamValue::String("02:00:00:00:00:01".into()));
        p.insert(ParamKey::ReadMaxPackets, ParamValue::Uint(0));
        assert!(parse_interface_params(&p, &d).unwrap_err().to_string().contains("is 0"));
        p.insert(ParamKey::ReadMaxPackets, ParamValue::Uint(8));
        p.insert(ParamKey::MaxPacketSize, ParamValue::Uint(1 << 20));
        assert!(parse_interface_params(&p, &d).is_err());
        p.insert(ParamKey::MaxPacketSize, ParamValue::String("big".into()));
        assert!(parse_interface_params(&p, &d).unwrap_err().to_string().contains("expected a number"));
    }

    #[test]
    fn state_reports_gateway_and_prefix() {
        let s = network_state(Ipv4Addr::new(192, 168, 64, 1), Ipv4Addr::new(255, 255, 255, 0), None).unwrap();
        assert_eq!(s.subnet, "192.168.64.1/24");
        assert_eq!(s.ipv6_prefix, None);
        let s = network_state(
            Ipv4Addr::new(10, 1, 0, 0),
            Ipv4Addr::new(255, 255, 0, 0),
            Some(("fd9b:1:2:3::".parse().unwrap(), 64)),
        )
        .unwrap();
        assert_eq!(s.subnet, "10.1.0.1/16");
        assert_eq!(s.ipv6_prefix.as_deref(), Some("fd9b:1:2:3::/64"));
        assert_eq!(
            network_state(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(255, 0, 255, 0), None).unwrap_err().to_string(),
            "interface parameters: vmnet reported a non-contiguous mask 255.0.255.0"
        );
        let s =
            network_state(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(255, 0, 0, 0), Some((Ipv6Addr::UNSPECIFIED, 0)))
                .unwrap();
        assert_eq!(s.ipv6_prefix, None);
    }

    #[test]
    fn vmpktdesc_has_the_sdk_layout() {
        assert_eq!(std::mem::size_of::<VmPktDesc>(), 24);
        assert_eq!(std::mem::offset_of!(VmPktDesc, vm_pkt_size), 0);
        assert_eq!(std::mem::offset_of!(VmPktDesc, vm_pkt_iov), 8);
        assert_eq!(std::mem::offset_of!(VmPktDesc, vm_pkt_iovcnt), 16);
        assert_eq!(std::mem::offset_of!(VmPktDesc, vm_flags), 20);
    }

    #[test]
    fn read_batch_points_each_descriptor_at_its_buffer() {
        let mut storage = vec![vec![0u8; 2048]; 4];
        let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|b| b.as_mut_slice()).collect();
        let addrs: Vec<usize> = bufs.iter_mut().map(|b| b.as_mut_ptr() as usize).collect();
        let mut batch = PacketBatch::with_capacity(4);
        assert_eq!(batch.prepare_read(&mut bufs, 1514, 3).unwrap(), 3);
        assert_eq!(batch.descs().len(), 3);
        for (i, d) in batch.descs().iter().enumerate() {
            assert_eq!(d.vm_pkt_size, 2048);
            assert_eq!((d.vm_pkt_iovcnt, d.vm_flags), (1, 0));
            // SAFETY: the descriptor points into the batch's own iovecs.
            let iov = unsafe { &*d.vm_pkt_iov };
            assert_eq!(iov.iov_base as usize, addrs[i]);
            assert_eq!(iov.iov_len, 2048);
        }
        // Simulate vmnet shrinking sizes; the next prepare resets them.
        let ptr = batch.as_mut_ptr();
        // SAFETY: three prepared descriptors.
        unsafe { (*ptr.add(1)).vm_pkt_size = 60 };
        let mut lens = [0usize; 4];
        assert_eq!(batch.finish_read(2, &mut lens), 2);
        assert_eq!(&lens[..2], &[2048, 60]);
        assert_eq!(batch.finish_read(0, &mut lens), 0);
        assert_eq!(batch.finish_read(-1, &mut lens), 0);
        assert_eq!(batch.finish_read(99, &mut lens), 3);
        batch.prepare_read(&mut bufs, 1514, 8).unwrap();
        assert!(batch.descs().iter().all(|d| d.vm_pkt_size == 2048));
        assert_eq!(batch.descs().len(), 4);
    }

    #[test]
    fn batches_refuse_bad_sizes() {
        let mut small = vec![0u8; 100];
        let mut bufs: Vec<&mut [u8]> = vec![small.as_mut_slice()];
        let mut batch = PacketBatch::default();
        assert_eq!(batch.prepare_read(&mut bufs, 1514, 8).unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
        let big = vec![0u8; 2000];
        let frames: Vec<&[u8]> = vec![&[1, 2, 3], big.as_slice()];
        assert!(batch.prepare_write(&frames, 1514, 8).is_err());
        assert!(batch.prepare_write(&[&[][..]], 1514, 8).is_err());
        assert_eq!(batch.prepare_write(&frames, 1514, 1).unwrap(), 1);
        assert_eq!(batch.descs()[0].vm_pkt_size, 3);
        assert_eq!(batch.prepare_write(&frames, 4096, 8).unwrap(), 2);
        assert_eq!(batch.descs()[1].vm_pkt_size, 2000);
    }

    #[test]
    fn steps_describe_themselves_for_error_messages() {
        let cases = [
            (Step::Create { mode: VMNET_HOST_MODE }, "vmnet_network_configuration_create(VMNET_HOST_MODE)"),
            (Step::SetExternalInterface("en0".into()), "vmnet_network_configuration_set_external_interface(\"en0\")"),
            (Step::DisableDhcp, "vmnet_network_configuration_disable_dhcp()"),
            (
                Step::SetIpv4Subnet { first_host: Ipv4Addr::new(10, 0, 0, 1), mask: Ipv4Addr::new(255, 0, 0, 0) },
                "vmnet_network_configuration_set_ipv4_subnet(10.0.0.1, 255.0.0.0)",
            ),
            (
                Step::SetIpv6Prefix { prefix: "fd00::".parse().unwrap(), len: 64 },
                "vmnet_network_configuration_set_ipv6_prefix(fd00::/64)",
            ),
            (Step::SetMtu(9000), "vmnet_network_configuration_set_mtu(9000)"),
            (
                Step::AddDhcpReservation { mac: [2, 0, 0, 0, 0, 1], address: Ipv4Addr::new(10, 0, 0, 9) },
                "vmnet_network_configuration_add_dhcp_reservation(02:00:00:00:00:01 -> 10.0.0.9)",
            ),
        ];
        for (step, text) in cases {
            assert_eq!(step.to_string(), text);
        }
        let e = status_error(Step::SetMtu(9000).to_string(), Status::InvalidArgument).to_string();
        assert!(
            e.starts_with("vmnet_network_configuration_set_mtu(9000) failed: VMNET_INVALID_ARGUMENT (1003)"),
            "{e}"
        );
        assert_eq!(status_io_error("vmnet_write", Status::PacketTooBig).kind(), std::io::ErrorKind::InvalidInput);
        assert_eq!(status_io_error("vmnet_read", Status::Failure).kind(), std::io::ErrorKind::Other);
    }
}
