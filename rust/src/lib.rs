//! vmnet-rs: named VM networks kept by a broker, and the packet relays
//! (adaptors) that join a VM's socket to its port on a network.
//!
//! This file only declares the layers (see ARCHITECTURE.md for who owns what)
//! and re-exports the public Rust API. The PyO3 module lives in `python.rs`
//! behind the `python` cargo feature.

pub mod adaptor;
pub mod broker;
pub mod config;
pub mod vmnet;
pub mod xpc;

#[cfg(feature = "python")]
mod python;
#[cfg(test)]
mod test_support;

pub use config::{BrokerSettings, ConfigError, Mode, NetworkConfig};

/// The crate version, also reported by the broker's `version` command.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
