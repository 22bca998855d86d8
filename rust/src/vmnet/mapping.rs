//! Every decision the macOS backend makes that is not a foreign call, as
//! plain data, so it is compiled and tested on every OS. One file per
//! concern, re-exported here under one name: `mapping/steps.rs`,
//! `mapping/status.rs`, `mapping/interface.rs`, `mapping/packets.rs`; this
//! file holds the SDK's plain numbers and the mapping's error.
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

mod interface;
mod packets;
mod status;
mod steps;

pub use interface::*;
pub use packets::*;
pub use status::*;
pub use steps::*;

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

