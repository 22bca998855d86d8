//! Network and broker configuration: the typed model and its validation.
//!
//! Python parses YAML into these shapes and hands them over as JSON; this
//! module validates them again before any network is made, so a broker fed
//! by any client (Lima sends its `networks.yaml` entry as JSON) applies the
//! same rules. Field names are Lima's camelCase keys.
//!
//! The file format, as JSON or YAML (see `docs/config.md`):
//! `{"vmnet": {<name>: <network>}, "broker": {...}}`; Lima's other top-level
//! keys (`paths`, `group`, `networks`) are accepted and ignored, so Lima's
//! `networks.yaml` reads unchanged. Absent network keys take Lima's defaults,
//! and the built-in `shared` and `host` networks exist unless redefined.
//!
//! Invariants of a value returned by any `from_*` constructor here: every
//! rule below holds, and addresses are held as types (`Ipv4Subnet` as
//! gateway/prefix, `Ipv6Prefix`, `MacAddr`, `IpAddr`), so two equal
//! configurations compare equal and serialise to the same JSON (each address
//! in its printed form). Backends read these types and parse nothing. Pure
//! code; any thread.
//!
//! Every limit (names, subnets, MTUs, ports, MACs) is in `config/limits.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod addr;
mod limits;
mod problem;
mod read;
#[cfg(test)]
mod tests;

pub use addr::{format_mac, parse_mac, Ipv4Subnet, Ipv6Prefix, MacAddr, SubnetError};
pub use limits::*;
pub use problem::{PathPart, Problem, Section};

pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 120;
pub const DEFAULT_SOCKET: &str = "/run/vmnet-rs/broker.sock";
/// The domain under which every network's VM names live unless its
/// `domain` key says otherwise: `<name>.<network>.vmnet.internal`
/// (`.internal` is reserved for private use).
pub const BASE_DOMAIN: &str = "vmnet.internal";
pub const DEFAULT_MACH_SERVICE: &str = "io.github.vmnet-rs.broker";
pub const DEFAULT_ALLOWED_USERS: &[&str] = &["root"];
pub const DEFAULT_ALLOWED_GROUPS: &[&str] = &["vmnet-rs"];

/// The keys of a network entry, in the order they are documented and printed.
pub const NETWORK_KEYS: &[&str] = &[
    "mode",
    "dhcp",
    "dnsProxy",
    "mtu",
    "nat44",
    "nat66",
    "routerAdvertisement",
    "subnet",
    "ipv6Prefix",
    "portForwarding",
    "dhcpReservations",
    "addresses",
    "externalInterface",
    "domain",
    "isolation",
    "offload",
    "endpoints",
    "allowedUsers",
    "allowedGroups",
];
/// Network keys that say who may use a network, not what it is: they take
/// no part in [`NetworkConfig::differences`].
pub const ACCESS_KEYS: &[&str] = &["allowedUsers", "allowedGroups"];
pub const PORT_FORWARD_KEYS: &[&str] =
    &["protocol", "externalPort", "internalAddress", "internalPort", "addressFamily"];
pub const DHCP_RESERVATION_KEYS: &[&str] = &["mac", "address"];
pub const BROKER_KEYS: &[&str] = &[
    "idleTimeout",
    "allowedUsers",
    "allowedGroups",
    "clientNetworks",
    "maxPortsPerUser",
    "socket",
    "machService",
    "endpointDir",
    "dataDir",
    "repair",
];
/// Keys of the broker's `repair:` mapping.
pub const REPAIR_KEYS: &[&str] = &["pieces", "limit", "window"];
/// The pieces of a live Linux network the broker watches and can put back
/// (docs/linux.md, "When the host changes under a network").
pub const REPAIR_PIECES: &[&str] = &["bridge", "address", "table", "forwarding", "dnsmasq"];
/// Removals of one piece within the window after which it is left alone.
pub const DEFAULT_REPAIR_LIMIT: u32 = 5;
/// The window, in seconds (also how long a piece is then left alone).
pub const DEFAULT_REPAIR_WINDOW_SECS: u64 = 60;
/// Most ports (relays, TAPs) one non-root user may hold at once, by default.
pub const DEFAULT_MAX_PORTS_PER_USER: u32 = 64;
/// Largest `maxPortsPerUser` accepted.
pub const MAX_PORTS_PER_USER_MAX: u32 = 65535;
/// Top-level keys vmnet-rs reads.
pub const TOP_KEYS: &[&str] = &["vmnet", "broker"];
/// Top-level keys of Lima's `networks.yaml` that vmnet-rs accepts and ignores.
pub const IGNORED_TOP_KEYS: &[&str] = &["paths", "group", "networks"];

/// How a network reaches the outside world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// NAT to the host's default route (vmnet `VMNET_SHARED_MODE`).
    Shared,
    /// VMs and the host only (vmnet `VMNET_HOST_MODE`).
    Host,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Shared => "shared",
            Mode::Host => "host",
        })
    }
}

/// One network, with every default filled in.
///
/// Built only by the validator (`from_json`, `from_value`,
/// `from_lima_json`; it has no `Deserialize`) and as the built-ins; its
/// fields are private and read through accessors, so every value a backend
/// (`vmnet::create_network`) sees has passed the validator, and none is
/// judged again.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    mode: Mode,
    dhcp: bool,
    dns_proxy: bool,
    mtu: u32,
    nat44: bool,
    nat66: bool,
    router_advertisement: bool,
    /// Gateway (first host) address and prefix length, serialised as
    /// `192.168.107.1/24`; `None` lets the platform choose.
    subnet: Option<Ipv4Subnet>,
    /// IPv6 prefix, serialised as `fd00:1:2:3::/64`; `None` lets the
    /// platform choose.
    ipv6_prefix: Option<Ipv6Prefix>,
    port_forwarding: Vec<PortForward>,
    dhcp_reservations: Vec<DhcpReservation>,
    /// Who answers DHCP and DNS on the network: the platform (vmnet's
    /// bootpd and DNS proxy; dnsmasq on Linux) or the broker's own port.
    addresses: Addresses,
    /// Shared mode only: the host interface to NAT through.
    external_interface: Option<String>,
    /// The DNS domain of the network's VM names (`<name>.<domain>`); `None`:
    /// `<network>.vmnet.internal` (docs/config.md, "Names and addresses").
    domain: Option<String>,
    /// Block VM-to-VM traffic on this network.
    isolation: bool,
    /// TSO and checksum offload for every interface on the network.
    offload: bool,
    /// The socket paths the broker offers for this network
    /// (docs/endpoints.md); a broker-side setting, never a difference
    /// between two configurations of one network.
    endpoints: Vec<EndpointKind>,
    /// Users who may use this network (names or numeric uids). Naming this
    /// or `allowed_groups` replaces both of the broker's lists (the unnamed
    /// one is empty); naming neither: the broker's (`policy::network_access`).
    allowed_users: Option<Vec<String>>,
    /// Groups whose members may use this network; as `allowed_users`.
    allowed_groups: Option<Vec<String>>,
}

/// Who hands out addresses and answers names on a network (`addresses`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Addresses {
    /// vmnet's DHCP server and DNS proxy (macOS); dnsmasq (Linux).
    #[default]
    Platform,
    /// The broker's own port on the network (`broker::service`): vmnet's
    /// DHCP is off (macOS), no dnsmasq runs (Linux).
    Broker,
}

impl Addresses {
    pub fn as_str(self) -> &'static str {
        match self {
            Addresses::Platform => "platform",
            Addresses::Broker => "broker",
        }
    }
}

impl fmt::Display for Addresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind of socket path a network is offered on (docs/endpoints.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    /// SOCK_STREAM, 4-byte big-endian length + frame (QEMU `-netdev stream`, socket_vmnet).
    Stream,
    /// SOCK_DGRAM, one frame per datagram (vfkit, krunkit `unixgram`, QEMU `-netdev dgram`).
    Datagram,
}

impl EndpointKind {
    pub const ALL: [EndpointKind; 2] = [EndpointKind::Stream, EndpointKind::Datagram];

    /// Both kinds, the default of the `endpoints` key.
    pub fn all() -> Vec<EndpointKind> {
        Self::ALL.to_vec()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Stream => "stream",
            EndpointKind::Datagram => "datagram",
        }
    }

    pub fn parse(name: &str) -> Option<EndpointKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The socket file's suffix and the activation name's: `stream`, `dgram`.
    pub fn suffix(self) -> &'static str {
        match self {
            EndpointKind::Stream => "stream",
            EndpointKind::Datagram => "dgram",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressFamily {
    Ipv4,
    Ipv6,
}

impl fmt::Display for AddressFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressFamily::Ipv4 => "ipv4",
            AddressFamily::Ipv6 => "ipv6",
        })
    }
}

/// A port on the host forwarded to an address and port inside the network.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortForward {
    pub protocol: Protocol,
    pub external_port: u16,
    /// Of `address_family`'s family (the validator holds them together).
    pub internal_address: IpAddr,
    pub internal_port: u16,
    pub address_family: AddressFamily,
}

/// A fixed IPv4 address for one MAC address.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DhcpReservation {
    pub mac: MacAddr,
    pub address: Ipv4Addr,
}

/// Whether callers other than the broker's owner (root, or the broker's
/// own user) may create networks the configuration does not define.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientNetworks {
    /// Only configured networks (the Linux default: a root broker serving others).
    None,
    /// Networks without host ports below 1024, without `externalInterface`,
    /// on a subnet that collides with nothing.
    Restricted,
    /// Any network a caller describes (the macOS default: a per-user agent,
    /// Lima's behaviour).
    Any,
}

impl ClientNetworks {
    pub const NAMES: &'static [&'static str] = &["none", "restricted", "any"];

    pub fn parse(text: &str) -> Option<ClientNetworks> {
        match text {
            "none" => Some(ClientNetworks::None),
            "restricted" => Some(ClientNetworks::Restricted),
            "any" => Some(ClientNetworks::Any),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClientNetworks::None => "none",
            ClientNetworks::Restricted => "restricted",
            ClientNetworks::Any => "any",
        }
    }

    /// The default for a platform (`std::env::consts::OS`): `any` on macOS,
    /// where the broker is a per-user agent; `none` elsewhere.
    pub fn default_for(os: &str) -> ClientNetworks {
        if os == "macos" {
            ClientNetworks::Any
        } else {
            ClientNetworks::None
        }
    }
}

impl fmt::Display for ClientNetworks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The broker's own settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerSettings {
    /// Seconds a network with no lease (and then the broker) stays up.
    pub idle_timeout: u64,
    /// Linux: users allowed to call the broker (names or numeric uids).
    pub allowed_users: Vec<String>,
    /// Linux: groups whose members may call the broker.
    pub allowed_groups: Vec<String>,
    /// Who may create networks the configuration does not define.
    pub client_networks: ClientNetworks,
    /// Most ports one non-root user may hold across all its connections.
    pub max_ports_per_user: u32,
    /// Linux: the broker's Unix socket.
    pub socket: String,
    /// macOS: the broker's Mach service name.
    pub mach_service: String,
    /// Where the per-network endpoint sockets go (docs/endpoints.md);
    /// empty: the platform default (Linux: the broker socket's directory;
    /// macOS: `~/Library/Application Support/vmnet-rs/endpoints`).
    pub endpoint_dir: String,
    /// Where the address records live (they outlast a reboot); empty: the
    /// default of `broker::launch::data_dir`.
    pub data_dir: String,
    /// Linux: which pieces of a live network are put back when the host
    /// removes them, and when to stop (another program manages them).
    #[serde(default)]
    pub repair: RepairSettings,
}

/// The broker's `repair:` setting (docs/config.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepairSettings {
    /// The pieces put back when they go (of [`REPAIR_PIECES`]); the others
    /// are only reported. Empty: report only.
    pub pieces: Vec<String>,
    /// A piece removed more than this many times within `window` seconds is
    /// left alone for `window` seconds.
    pub limit: u32,
    pub window: u64,
}

impl Default for RepairSettings {
    fn default() -> Self {
        RepairSettings { pieces: REPAIR_PIECES.iter().map(|s| s.to_string()).collect(), limit: DEFAULT_REPAIR_LIMIT, window: DEFAULT_REPAIR_WINDOW_SECS }
    }
}

impl RepairSettings {
    /// Whether `piece` is put back when it goes.
    pub fn repairs(&self, piece: &str) -> bool {
        self.pieces.iter().any(|p| p == piece)
    }
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            idle_timeout: DEFAULT_IDLE_TIMEOUT_SECS,
            allowed_users: DEFAULT_ALLOWED_USERS.iter().map(|s| s.to_string()).collect(),
            allowed_groups: DEFAULT_ALLOWED_GROUPS.iter().map(|s| s.to_string()).collect(),
            client_networks: ClientNetworks::default_for(std::env::consts::OS),
            max_ports_per_user: DEFAULT_MAX_PORTS_PER_USER,
            socket: DEFAULT_SOCKET.to_string(),
            mach_service: DEFAULT_MACH_SERVICE.to_string(),
            endpoint_dir: String::new(),
            data_dir: String::new(),
            repair: RepairSettings::default(),
        }
    }
}

/// A configuration that cannot be used, with where and why.
///
/// `message` holds one problem per line, each naming the source, the
/// network, the key, what was wrong and what is allowed; `problems` holds
/// the same as structured values (empty for an error raised outside the
/// validator, e.g. by a platform that refuses a value).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct ConfigError {
    pub message: String,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// An error with a message only (no structured problems).
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError { message: message.into(), problems: Vec::new() }
    }

    fn from_problems(problems: Vec<Problem>) -> Self {
        let message = problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n");
        ConfigError { message, problems }
    }

    /// The individual problems, one per line of `message`.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.message.lines()
    }
}

fn parse_json(text: &str, source: &str) -> Result<Value, ConfigError> {
    serde_json::from_str(text)
        .map_err(|e| ConfigError::new(format!("{source}: not valid JSON: {e}")))
}

impl NetworkConfig {
    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn dhcp(&self) -> bool {
        self.dhcp
    }

    pub fn dns_proxy(&self) -> bool {
        self.dns_proxy
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    pub fn nat44(&self) -> bool {
        self.nat44
    }

    pub fn nat66(&self) -> bool {
        self.nat66
    }

    pub fn router_advertisement(&self) -> bool {
        self.router_advertisement
    }

    /// Gateway (first host) address and prefix length; `None`: the platform chooses.
    pub fn subnet(&self) -> Option<Ipv4Subnet> {
        self.subnet
    }

    /// `None`: the platform chooses.
    pub fn ipv6_prefix(&self) -> Option<Ipv6Prefix> {
        self.ipv6_prefix
    }

    pub fn port_forwarding(&self) -> &[PortForward] {
        &self.port_forwarding
    }

    pub fn dhcp_reservations(&self) -> &[DhcpReservation] {
        &self.dhcp_reservations
    }

    pub fn addresses(&self) -> Addresses {
        self.addresses
    }

    pub fn external_interface(&self) -> Option<&str> {
        self.external_interface.as_deref()
    }

    /// The `domain` key as written (`None`: the default, which depends on
    /// the network's name: `broker::records::default_domain`).
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    /// The DNS domain of network `network`'s VM names: the `domain` key,
    /// else `<network>.vmnet.internal`.
    pub fn dns_domain(&self, network: &str) -> String {
        self.domain.clone().unwrap_or_else(|| format!("{network}.{BASE_DOMAIN}"))
    }

    pub fn isolation(&self) -> bool {
        self.isolation
    }

    pub fn offload(&self) -> bool {
        self.offload
    }

    pub fn endpoints(&self) -> &[EndpointKind] {
        &self.endpoints
    }

    pub fn allowed_users(&self) -> Option<&[String]> {
        self.allowed_users.as_deref()
    }

    pub fn allowed_groups(&self) -> Option<&[String]> {
        self.allowed_groups.as_deref()
    }

    /// This configuration with what a platform chose where it leaves the
    /// choice to the platform (subnet, IPv6 prefix, external interface):
    /// facts of a live network, not settings to judge.
    pub fn with_chosen(&self, subnet: Option<Ipv4Subnet>, ipv6_prefix: Option<Ipv6Prefix>, external_interface: Option<&str>) -> NetworkConfig {
        let mut c = self.clone();
        c.subnet = c.subnet.or(subnet);
        c.ipv6_prefix = c.ipv6_prefix.or(ipv6_prefix);
        if c.external_interface.is_none() {
            c.external_interface = external_interface.map(str::to_owned);
        }
        c
    }


    /// Lima's defaults for an entry with no keys: shared mode, DHCP, DNS
    /// proxy, NAT44, NAT66 and router advertisement on, MTU 1500, subnet and
    /// IPv6 prefix chosen by the platform; no forwards, no reservations,
    /// isolation and offload off.
    pub fn lima_default() -> Self {
        Self::lima_default_for(Mode::Shared)
    }

    /// Lima's defaults for an entry that gives only its mode: as
    /// [`lima_default`](Self::lima_default), with router advertisement off
    /// in host mode (Lima's `host`; vmnet ignores it there anyway).
    pub fn lima_default_for(mode: Mode) -> Self {
        NetworkConfig {
            mode,
            dhcp: true,
            dns_proxy: true,
            mtu: DEFAULT_MTU,
            nat44: true,
            nat66: true,
            router_advertisement: mode == Mode::Shared,
            subnet: None,
            ipv6_prefix: None,
            port_forwarding: Vec::new(),
            dhcp_reservations: Vec::new(),
            addresses: Addresses::Platform,
            external_interface: None,
            domain: None,
            isolation: false,
            offload: false,
            endpoints: EndpointKind::all(),
            allowed_users: None,
            allowed_groups: None,
        }
    }

    /// The built-in `shared` network: Lima's, 192.168.107.0/24 with NAT.
    pub fn builtin_shared() -> Self {
        NetworkConfig { subnet: Some(builtin_subnet("192.168.107.1/24")), ..Self::lima_default() }
    }

    /// The built-in `host` network: Lima's, 192.168.108.0/24 host-only,
    /// router advertisement off.
    pub fn builtin_host() -> Self {
        NetworkConfig { subnet: Some(builtin_subnet("192.168.108.1/24")), ..Self::lima_default_for(Mode::Host) }
    }

    /// Reads one network entry (absent keys take Lima's defaults), validates
    /// and normalises it. `source` and `name` only label error messages.
    pub fn from_json(text: &str, source: &str, name: &str) -> Result<Self, ConfigError> {
        Self::from_value(&parse_json(text, source)?, source, name)
    }

    pub fn from_value(value: &Value, source: &str, name: &str) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let cfg = read::read_network(&mut read::Scope::network(source, name, &mut problems), value);
        match cfg {
            Some(cfg) if problems.is_empty() => Ok(cfg),
            _ => Err(ConfigError::from_problems(problems)),
        }
    }

    /// Reads the `Configuration` JSON a Lima client sends (its
    /// `networks.yaml` entry, Go `omitempty` style): besides absent keys,
    /// `null`, an empty `mode` or `subnet`, and an `mtu` of 0 mean "unset"
    /// and take Lima's defaults.
    pub fn from_lima_json(text: &str, source: &str, name: &str) -> Result<Self, ConfigError> {
        let mut value = parse_json(text, source)?;
        if let Value::Object(map) = &mut value {
            map.retain(|key, v| match (key.as_str(), &*v) {
                (_, Value::Null) => false,
                ("mode" | "subnet", Value::String(s)) => !s.is_empty(),
                _ => true,
            });
        }
        Self::from_value(&value, source, name)
    }

    /// Checks a configuration built in code, returning its normalised form.
    pub fn validated(&self, source: &str, name: &str) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let cfg = read::check_network(&mut read::Scope::network(source, name, &mut problems), read::Draft::of(self), read::Unreadable::default());
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::from_problems(problems))
        }
    }

    /// Compact JSON with every key present (unset optional keys as `null`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a NetworkConfig always serialises")
    }

    /// One `key: mine != theirs` line per key that differs, values as JSON,
    /// keys in documented order, the access keys (who may use it) left out.
    /// Empty when the two are equal.
    pub fn differences(&self, other: &NetworkConfig) -> Vec<String> {
        let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
            (serde_json::to_value(self), serde_json::to_value(other))
        else {
            return vec!["configurations cannot be compared".to_string()];
        };
        NETWORK_KEYS
            .iter()
            .filter(|key| **key != "endpoints")
            .filter(|key| !ACCESS_KEYS.contains(key))
            .filter_map(|key| {
                let (x, y) = (a.get(*key)?, b.get(*key)?);
                (x != y).then(|| format!("{key}: {x} != {y}"))
            })
            .collect()
    }


    /// Whether the network names its own users or groups.
    pub fn has_own_access(&self) -> bool {
        self.allowed_users.is_some() || self.allowed_groups.is_some()
    }

    /// The port forwards with their internal addresses.
    pub fn forwards(&self) -> Vec<(&PortForward, IpAddr)> {
        self.port_forwarding.iter().map(|f| (f, f.internal_address)).collect()
    }

    /// The DHCP reservations as (MAC, address) pairs.
    pub fn reservations(&self) -> Vec<([u8; 6], Ipv4Addr)> {
        self.dhcp_reservations.iter().map(|r| (r.mac.octets(), r.address)).collect()
    }
}

#[cfg(test)]
impl NetworkConfig {
    /// A configuration for a test, through the validator; panics on a problem.
    pub(crate) fn test(value: Value) -> NetworkConfig {
        NetworkConfig::from_value(&value, "test", "t").unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A built-in network's subnet (a constant that parses).
fn builtin_subnet(text: &str) -> Ipv4Subnet {
    Ipv4Subnet::parse(text, SUBNET_PREFIX_MIN, SUBNET_PREFIX_MAX).expect("a built-in subnet parses")
}

/// A whole configuration file: the broker's settings and every network,
/// built-ins included. Serialises as `{"broker": ..., "vmnet": {...}}`, the
/// same shape as the file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FileConfig {
    pub broker: BrokerSettings,
    #[serde(rename = "vmnet")]
    pub networks: BTreeMap<String, NetworkConfig>,
}

impl Default for FileConfig {
    /// The embedded defaults: the broker's default settings and the built-in
    /// `shared` and `host` networks.
    fn default() -> Self {
        let mut networks = BTreeMap::new();
        networks.insert("shared".to_string(), NetworkConfig::builtin_shared());
        networks.insert("host".to_string(), NetworkConfig::builtin_host());
        FileConfig { broker: BrokerSettings::default(), networks }
    }
}

impl FileConfig {
    /// Reads a whole file given as JSON, validates it and fills in defaults
    /// and built-ins. Every problem found is reported, one per line;
    /// `source` (usually the file name) starts each.
    pub fn from_json(text: &str, source: &str) -> Result<Self, ConfigError> {
        Self::from_value(&parse_json(text, source)?, source)
    }

    pub fn from_value(value: &Value, source: &str) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let (broker, networks) = read::read_file(source, value, &mut problems);
        if problems.is_empty() {
            Ok(FileConfig { broker, networks })
        } else {
            Err(ConfigError::from_problems(problems))
        }
    }

    /// Compact JSON in the file's shape, every default present.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a FileConfig always serialises")
    }

    pub fn network(&self, name: &str) -> Option<&NetworkConfig> {
        self.networks.get(name)
    }
}
