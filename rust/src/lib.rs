//! vmnet-rs: named VM networks kept by a broker, and the packet relays
//! (adaptors) that join a VM's socket to its port on a network.
//!
//! This file only declares the layers and re-exports the public Rust API
//! (docs/architecture.md is the whole map).
//! Dependencies run one way, from the top down:
//!
//! - `python` (PyO3 module, behind the `python` feature) and the
//!   `vmnet-rs-broker` executable: use everything below.
//! - `broker`: requests, leases, who may call (`broker::auth`, handed to the
//!   transports as an `xpc::peer_policy::PeerPolicy`), endpoints; uses
//!   `xpc`, `vmnet`, `adaptor`, `config`. Nothing below imports it.
//! - `xpc`: the message model (`Dict`) and its transports; knows no message's
//!   meaning and imports neither `vmnet` nor `broker`. The `Handler` it calls
//!   words every reply, also to what it could not decode or refused.
//! - `adaptor`: packet relays between a VM socket and a `vmnet::Interface`;
//!   imports no IPC.
//! - `vmnet`: the platform networks (macOS vmnet, Linux bridge/TAP/nftables/
//!   dnsmasq) and their interfaces; uses `config` and `xpc::Dict`.
//! - `config`: network and broker settings as read and checked, and the
//!   address types (IPv4 subnet, IPv6 prefix, MAC); imports no IPC.
//! - `sys`: the Unix socket and descriptor calls every layer shares
//!   (flags, socket options, `sockaddr_un`, sockets, pipes, peer
//!   credentials); imports nothing of the crate.

pub mod adaptor;
pub mod broker;
pub mod config;
pub mod sys;
#[cfg(any(apple_api, test))]
pub(crate) mod darwin_shim;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod vmnet;
pub mod xpc;

#[cfg(all(test, apple_api, not(target_os = "macos")))]
mod apple_model_tests;
#[cfg(feature = "python")]
mod python;
#[cfg(test)]
mod test_support;

pub use config::{BrokerSettings, ConfigError, Mode, NetworkConfig};

/// The crate version, also reported by the broker's `version` command.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
