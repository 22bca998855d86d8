//! Network and broker configuration: the typed model and its validation.
//!
//! Python parses YAML into these shapes and hands them over as JSON; this
//! module validates them again before any network is made, so a broker fed
//! by any client (Lima sends its `networks.yaml` entry as JSON) applies the
//! same rules. Field names are Lima's camelCase keys.

use serde::{Deserialize, Serialize};

/// How a network reaches the outside world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// NAT to the host's default route (vmnet `VMNET_SHARED_MODE`).
    Shared,
    /// VMs and the host only (vmnet `VMNET_HOST_MODE`).
    Host,
}

/// One network, with every default filled in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkConfig {
    pub mode: Mode,
    pub dhcp: bool,
    pub dns_proxy: bool,
    pub mtu: u32,
    pub nat44: bool,
    pub nat66: bool,
    pub router_advertisement: bool,
    /// Gateway (first host) address and prefix length, e.g. `192.168.107.1/24`;
    /// `None` lets the platform choose.
    #[serde(default)]
    pub subnet: Option<String>,
    /// IPv6 prefix, e.g. `fd00:1:2:3::/64`; `None` lets the platform choose.
    #[serde(default)]
    pub ipv6_prefix: Option<String>,
    #[serde(default)]
    pub port_forwarding: Vec<PortForward>,
    #[serde(default)]
    pub dhcp_reservations: Vec<DhcpReservation>,
    /// Shared mode only: the host interface to NAT through.
    #[serde(default)]
    pub external_interface: Option<String>,
    /// Block VM-to-VM traffic on this network.
    #[serde(default)]
    pub isolation: bool,
    /// TSO and checksum offload for every interface on the network.
    #[serde(default)]
    pub offload: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressFamily {
    Ipv4,
    Ipv6,
}

/// A port on the host forwarded to an address and port inside the network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortForward {
    pub protocol: Protocol,
    pub external_port: u16,
    pub internal_address: String,
    pub internal_port: u16,
    pub address_family: AddressFamily,
}

/// A fixed IPv4 address for one MAC address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DhcpReservation {
    pub mac: String,
    pub address: String,
}

/// The broker's own settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BrokerSettings {
    /// Seconds a network with no lease (and then the broker) stays up.
    pub idle_timeout: u64,
    /// Linux: users allowed to call the broker (names or numeric uids).
    pub allowed_users: Vec<String>,
    /// Linux: groups whose members may call the broker.
    pub allowed_groups: Vec<String>,
    /// Linux: the broker's Unix socket.
    pub socket: String,
    /// macOS: the broker's Mach service name.
    pub mach_service: String,
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct ConfigError {
    pub message: String,
}
