//! Reading configuration JSON into the typed model, and the checks that need
//! the values themselves (ranges, addresses, cross-references).
//!
//! Every function here appends problems to a [`Scope`] instead of stopping at
//! the first, so one run reports every mistake in a file. Each is a
//! structured [`Problem`] (`problem.rs`) printed as
//! `<source>: network "<name>": key "<key>": <value> is <what>; use <allowed>`;
//! the messages given to [`Scope::key`] are written `<what>; <allowed>`. This
//! is the only validator: the Python loader (`vmnet_rs/config.py`) checks no
//! rule itself and places each problem on its YAML line by the problem's key
//! path. Pure functions; any thread.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{Map, Value};

use super::addr::{self, Ipv4Subnet, Ipv6Prefix, MacAddr, PrefixError, SubnetError};
use super::limits::{usable_mac, valid_mtu, valid_network_name, valid_port, NETWORK_NAME_RULE, PORT_MAX, PORT_MIN};
use super::problem::{key_parts, quote, PathPart, Problem, Section};
use super::{
    AddressFamily, Addresses, BrokerSettings, DhcpReservation, EndpointKind, Mode, NetworkConfig, PortForward, Protocol,
    BROKER_KEYS, REPAIR_KEYS, REPAIR_PIECES, RepairSettings, ClientNetworks, DEFAULT_MTU, MAX_PORTS_PER_USER_MAX, DHCP_RESERVATION_KEYS, IGNORED_TOP_KEYS, IPV6_PREFIX_LEN, MTU_MAX,
    MTU_MIN, NETWORK_KEYS, PORT_FORWARD_KEYS, SUBNET_PREFIX_MAX, SUBNET_PREFIX_MIN, TOP_KEYS,
};

/// Where problems are being found (source, section, network) and the list
/// they go to.
pub(super) struct Scope<'p> {
    source: String,
    section: Section,
    network: Option<String>,
    problems: &'p mut Vec<Problem>,
}

impl<'p> Scope<'p> {
    pub(super) fn top(source: &str, problems: &'p mut Vec<Problem>) -> Self {
        Scope { source: source.to_string(), section: Section::Top, network: None, problems }
    }

    pub(super) fn network(source: &str, name: &str, problems: &'p mut Vec<Problem>) -> Self {
        Scope { source: source.to_string(), section: Section::Network, network: Some(name.to_string()), problems }
    }

    pub(super) fn broker(source: &str, problems: &'p mut Vec<Problem>) -> Self {
        Scope { source: source.to_string(), section: Section::Broker, network: None, problems }
    }

    /// The path of the scope itself from the document's root.
    fn root(&self) -> Vec<PathPart> {
        match self.section {
            Section::Top => Vec::new(),
            Section::Broker => vec![PathPart::Key("broker".into())],
            Section::Network => vec![
                PathPart::Key("vmnet".into()),
                PathPart::Key(self.network.clone().unwrap_or_default()),
            ],
        }
    }

    fn push(&mut self, key: Option<String>, path: Vec<PathPart>, message: &str, hint: Option<&str>) {
        // Every message here reads "<what is wrong>; <what is allowed>"; the
        // allowed part never holds "; " (a quoted value in the first may).
        let (what, allowed) = match message.rsplit_once("; ") {
            Some((what, allowed)) => (what.to_string(), Some(allowed.to_string())),
            None => (message.to_string(), None),
        };
        self.problems.push(Problem {
            source: self.source.clone(),
            section: self.section,
            network: self.network.clone(),
            key,
            path,
            what,
            allowed,
            hint: hint.map(str::to_string),
        });
    }

    /// A problem with one key (`key` may be a path like `portForwarding[0].externalPort`).
    pub(super) fn key(&mut self, key: &str, message: impl Display) {
        let mut path = self.root();
        path.extend(key_parts(key));
        self.push(Some(key.to_string()), path, &message.to_string(), None);
    }

    /// A key the section does not know, under `parent` (e.g. `portForwarding[0].`):
    /// the key is kept whole in the path, the closest known one is the hint.
    pub(super) fn unknown_key(&mut self, parent: &str, key: &str, known: &[&str], allowed: String) {
        let mut path = self.root();
        path.extend(key_parts(parent));
        path.push(PathPart::Key(key.to_string()));
        let hint = did_you_mean(key, known);
        self.problems.push(Problem {
            source: self.source.clone(),
            section: self.section,
            network: self.network.clone(),
            key: Some(format!("{parent}{key}")),
            path,
            what: "unknown key".to_string(),
            allowed: Some(allowed),
            hint: hint.map(str::to_string),
        });
    }

    /// A problem with the scope as a whole.
    pub(super) fn whole(&mut self, message: impl Display) {
        let path = self.root();
        self.push(None, path, &message.to_string(), None);
    }

    fn count(&self) -> usize {
        self.problems.len()
    }
}

/// A value as it appears in messages: compact JSON, cut at 60 characters.
pub(super) fn show(value: &Value) -> String {
    let text = serde_json::to_string(value).unwrap_or_default();
    if text.chars().count() > 60 {
        let cut: String = text.chars().take(57).collect();
        format!("{cut}...")
    } else {
        text
    }
}

/// `a string`, `a decimal number`, ...
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a decimal number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// `"big" is a string`, `1.5 is a decimal number`, ...
fn is_kind(value: &Value) -> String {
    format!("{} is {}", show(value), kind(value))
}

/// The closest known key to an unknown one, if any is close. Keys are
/// compared with case, `_` and `-` ignored; a key is close within an edit
/// distance of a third of its length, or when it starts with the unknown
/// key (three characters or more). The nearest wins, the first on a tie.
pub(super) fn did_you_mean<'k>(unknown: &str, known: &[&'k str]) -> Option<&'k str> {
    let norm = |s: &str| -> Vec<char> {
        s.chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_lowercase).collect()
    };
    let u = norm(unknown);
    let mut best: Option<(usize, &'k str)> = None;
    for k in known {
        let kn = norm(k);
        let d = edit_distance(&u, &kn);
        let score = if d <= (kn.len() / 3).max(1) {
            d
        } else if u.len() >= 3 && kn.starts_with(&u) {
            1000 + kn.len() - u.len()
        } else {
            continue;
        };
        if best.is_none_or(|(b, _)| score < b) {
            best = Some((score, k));
        }
    }
    best.map(|(_, k)| k)
}

fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Reports every key of `map` not in `known`; `path` prefixes nested keys.
fn check_keys(scope: &mut Scope<'_>, map: &Map<String, Value>, known: &[&str], path: &str) {
    for key in map.keys() {
        if !known.contains(&key.as_str()) {
            scope.unknown_key(path, key, known, format!("allowed keys: {}", known.join(", ")));
        }
    }
}

/// A key's value; `null` counts as absent (so `subnet:` with no value in YAML
/// means "not set", like leaving the key out).
fn get<'v>(map: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn read_bool(scope: &mut Scope<'_>, map: &Map<String, Value>, path: &str, key: &str, default: bool) -> bool {
    match get(map, key) {
        None => default,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            scope.key(&format!("{path}{key}"), format!("{}; use true or false", is_kind(v)));
            default
        }
    }
}

fn read_string(scope: &mut Scope<'_>, map: &Map<String, Value>, path: &str, key: &str, allowed: &str) -> Option<String> {
    match get(map, key) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            scope.key(&format!("{path}{key}"), format!("{}; use {allowed}", is_kind(v)));
            None
        }
    }
}

/// An integer in `0..=max`; other values are reported with `allowed`.
fn read_uint(
    scope: &mut Scope<'_>,
    map: &Map<String, Value>,
    path: &str,
    key: &str,
    max: u64,
    allowed: &str,
) -> Option<u64> {
    let v = get(map, key)?;
    match v {
        Value::Number(n) if n.is_u64() && n.as_u64().is_some_and(|x| x <= max) => n.as_u64(),
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            scope.key(&format!("{path}{key}"), format!("{} is out of range; use {allowed}", show(v)));
            None
        }
        _ => {
            scope.key(&format!("{path}{key}"), format!("{}; use an integer in {allowed}", is_kind(v)));
            None
        }
    }
}

fn read_list<'v>(scope: &mut Scope<'_>, map: &'v Map<String, Value>, key: &str, allowed: &str) -> &'v [Value] {
    match get(map, key) {
        None => &[],
        Some(Value::Array(items)) => items,
        Some(v) => {
            scope.key(key, format!("{}; use a list of {allowed}", is_kind(v)));
            &[]
        }
    }
}

fn mtu_allowed() -> String {
    format!("{MTU_MIN}..{MTU_MAX}")
}

fn port_allowed() -> String {
    format!("{PORT_MIN}..{PORT_MAX}")
}

/// Reads one network entry, filling Lima's defaults for absent keys, then
/// checks and normalises it. `None` if anything was wrong (all reported).
pub(super) fn read_network(scope: &mut Scope<'_>, value: &Value) -> Option<NetworkConfig> {
    let before = scope.count();
    let Value::Object(map) = value else {
        scope.whole(format!("{}; use a mapping of settings such as mode and subnet", is_kind(value)));
        return None;
    };
    check_keys(scope, map, NETWORK_KEYS, "");
    let n = scope.count();
    let mode = match get(map, "mode") {
        None => Mode::Shared,
        Some(Value::String(s)) if s == "shared" => Mode::Shared,
        Some(Value::String(s)) if s == "host" => Mode::Host,
        Some(v @ Value::String(_)) => {
            scope.key("mode", format!("{} is not a mode vmnet-rs offers; use \"shared\" or \"host\"", show(v)));
            Mode::Shared
        }
        Some(v) => {
            scope.key("mode", format!("{}; use \"shared\" or \"host\"", is_kind(v)));
            Mode::Shared
        }
    };
    // Read in documented order, so problems come in the order of the docs.
    let mut unreadable = Unreadable { mode: scope.count() > n, ..Unreadable::default() };
    let n = scope.count();
    let dhcp = read_bool(scope, map, "", "dhcp", true);
    unreadable.dhcp = scope.count() > n;
    let dns_proxy = read_bool(scope, map, "", "dnsProxy", true);
    let mtu = read_uint(scope, map, "", "mtu", u64::from(u32::MAX), &mtu_allowed()).map_or(DEFAULT_MTU, |m| m as u32);
    let nat44 = read_bool(scope, map, "", "nat44", true);
    let nat66 = read_bool(scope, map, "", "nat66", true);
    let router_advertisement = read_bool(scope, map, "", "routerAdvertisement", mode == Mode::Shared);
    let n = scope.count();
    let subnet = read_string(scope, map, "", "subnet", "a network address and prefix length like \"192.168.107.0/24\"");
    unreadable.subnet = scope.count() > n;
    let n = scope.count();
    let ipv6_prefix = read_string(scope, map, "", "ipv6Prefix", "a unique local /64 like \"fd00:1:2:3::/64\"");
    unreadable.ipv6_prefix = scope.count() > n;
    let addresses = match get(map, "addresses") {
        None => Addresses::Platform,
        Some(Value::String(s)) if s == "platform" => Addresses::Platform,
        Some(Value::String(s)) if s == "broker" => Addresses::Broker,
        Some(v @ Value::String(_)) => {
            scope.key("addresses", format!("{} is not who may hand out addresses; use \"platform\" or \"broker\"", show(v)));
            Addresses::Platform
        }
        Some(v) => {
            scope.key("addresses", format!("{}; use \"platform\" or \"broker\"", is_kind(v)));
            Addresses::Platform
        }
    };
    let external_interface = read_string(scope, map, "", "externalInterface", "a host interface name like \"en0\"");
    let domain = read_string(scope, map, "", "domain", "a DNS domain like \"lab.vmnet.internal\"");
    if let Some(d) = &domain {
        if !super::limits::valid_domain(d) {
            scope.key("domain", format!(
                "{} is not a DNS domain; use lower-case labels of letters, digits and \"-\" joined by \".\", at most {} characters, like \"lab.vmnet.internal\"",
                quote(d),
                super::limits::DOMAIN_MAX_LEN
            ));
        }
    }
    let cfg = NetworkConfig {
        mode,
        dhcp,
        dns_proxy,
        mtu,
        nat44,
        nat66,
        router_advertisement,
        subnet: None,
        ipv6_prefix: None,
        port_forwarding: Vec::new(),
        dhcp_reservations: Vec::new(),
        addresses,
        external_interface,
        domain: domain.filter(|d| super::limits::valid_domain(d)),
        isolation: read_bool(scope, map, "", "isolation", false),
        offload: read_bool(scope, map, "", "offload", false),
        endpoints: read_endpoints(scope, map),
        allowed_users: read_accounts(scope, map, "allowedUsers", "user"),
        allowed_groups: read_accounts(scope, map, "allowedGroups", "group"),
    };
    let mut draft = Draft { cfg, subnet, ipv6_prefix, forwards: Vec::new(), reservations: Vec::new() };
    let items = read_list(scope, map, "portForwarding", "mappings with protocol, externalPort, internalAddress and internalPort");
    for (i, item) in items.iter().enumerate() {
        if let Some(pf) = read_port_forward(scope, i, item) {
            draft.forwards.push(pf);
        }
    }
    let items = read_list(scope, map, "dhcpReservations", "mappings with mac and address");
    for (i, item) in items.iter().enumerate() {
        if let Some(r) = read_reservation(scope, i, item) {
            draft.reservations.push(r);
        }
    }
    let cfg = check_network(scope, draft, unreadable);
    (scope.count() == before).then_some(cfg)
}

/// A network entry as read, before its address values are parsed: every
/// other setting typed in `cfg` (whose address fields are still empty), the
/// addresses as written, so problems quote them as the user wrote them.
pub(super) struct Draft {
    pub cfg: NetworkConfig,
    pub subnet: Option<String>,
    pub ipv6_prefix: Option<String>,
    pub forwards: Vec<ForwardText>,
    /// (mac, address) as written.
    pub reservations: Vec<(String, String)>,
}

/// A port forward as read, its internal address as written.
pub(super) struct ForwardText {
    protocol: Protocol,
    external_port: u16,
    internal_address: String,
    internal_port: u16,
    address_family: AddressFamily,
}

impl Draft {
    /// A configuration built in code, printed back into its draft (the
    /// printed forms parse to the same values), to be checked again.
    pub(super) fn of(cfg: &NetworkConfig) -> Draft {
        let forwards = cfg
            .port_forwarding
            .iter()
            .map(|f| ForwardText {
                protocol: f.protocol,
                external_port: f.external_port,
                internal_address: f.internal_address.to_string(),
                internal_port: f.internal_port,
                address_family: f.address_family,
            })
            .collect();
        let reservations = cfg.dhcp_reservations.iter().map(|r| (r.mac.to_string(), r.address.to_string())).collect();
        Draft {
            cfg: NetworkConfig { subnet: None, ipv6_prefix: None, port_forwarding: Vec::new(), dhcp_reservations: Vec::new(), ..cfg.clone() },
            subnet: cfg.subnet.map(|s| s.to_string()),
            ipv6_prefix: cfg.ipv6_prefix.map(|p| p.to_string()),
            forwards,
            reservations,
        }
    }
}

const ENDPOINTS_ALLOWED: &str = "a list of \"stream\" and \"datagram\" (or [] for none)";

/// The `endpoints` list: each kind at most once, in the order of
/// [`EndpointKind::ALL`]; absent means both.
fn read_endpoints(scope: &mut Scope<'_>, map: &Map<String, Value>) -> Vec<EndpointKind> {
    let Some(v) = get(map, "endpoints") else { return EndpointKind::all() };
    let Value::Array(items) = v else {
        scope.key("endpoints", format!("{}; use {ENDPOINTS_ALLOWED}", is_kind(v)));
        return EndpointKind::all();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::String(s) => match EndpointKind::parse(s) {
                Some(k) if out.contains(&k) => scope.key(&format!("endpoints[{i}]"), format!("{} is listed twice; list each kind once", quote(s))),
                Some(k) => out.push(k),
                None => scope.key(&format!("endpoints[{i}]"), format!("{} is not an endpoint kind; use \"stream\" or \"datagram\"", quote(s))),
            },
            other => scope.key(&format!("endpoints[{i}]"), format!("{}; use \"stream\" or \"datagram\"", is_kind(other))),
        }
    }
    out.sort();
    out
}

/// Keys whose values could not be read, so checks that depend on them
/// (and would only repeat the problem in other words) are skipped.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Unreadable {
    pub mode: bool,
    pub dhcp: bool,
    pub subnet: bool,
    pub ipv6_prefix: bool,
}

fn read_port_forward(scope: &mut Scope<'_>, i: usize, item: &Value) -> Option<ForwardText> {
    let path = format!("portForwarding[{i}].");
    let Value::Object(map) = item else {
        scope.key(&format!("portForwarding[{i}]"), format!("{}; use a mapping with protocol, externalPort, internalAddress and internalPort", is_kind(item)));
        return None;
    };
    let before = scope.count();
    check_keys(scope, map, PORT_FORWARD_KEYS, &path);
    let protocol = match get(map, "protocol") {
        Some(Value::String(s)) if s == "tcp" => Some(Protocol::Tcp),
        Some(Value::String(s)) if s == "udp" => Some(Protocol::Udp),
        Some(v @ Value::String(_)) => {
            scope.key(&format!("{path}protocol"), format!("{} is not a protocol; use \"tcp\" or \"udp\"", show(v)));
            None
        }
        Some(v) => {
            scope.key(&format!("{path}protocol"), format!("{}; use \"tcp\" or \"udp\"", is_kind(v)));
            None
        }
        None => {
            scope.key(&format!("{path}protocol"), "missing; use \"tcp\" or \"udp\"");
            None
        }
    };
    let external = read_uint(scope, map, &path, "externalPort", u64::from(PORT_MAX), &port_allowed());
    if get(map, "externalPort").is_none() {
        scope.key(&format!("{path}externalPort"), format!("missing; use the host port to forward, {}", port_allowed()));
    }
    let internal_address = read_string(scope, map, &path, "internalAddress", "the VM's address, like \"192.168.107.10\"");
    if get(map, "internalAddress").is_none() {
        scope.key(&format!("{path}internalAddress"), "missing; use the VM's address, like \"192.168.107.10\"");
    }
    let internal = read_uint(scope, map, &path, "internalPort", u64::from(PORT_MAX), &port_allowed()).or(external);
    let family = match get(map, "addressFamily") {
        None => None,
        Some(Value::String(s)) if s == "ipv4" => Some(AddressFamily::Ipv4),
        Some(Value::String(s)) if s == "ipv6" => Some(AddressFamily::Ipv6),
        Some(v @ Value::String(_)) => {
            scope.key(&format!("{path}addressFamily"), format!("{} is not an address family; use \"ipv4\" or \"ipv6\"", show(v)));
            None
        }
        Some(v) => {
            scope.key(&format!("{path}addressFamily"), format!("{}; use \"ipv4\" or \"ipv6\"", is_kind(v)));
            None
        }
    };
    if scope.count() > before {
        return None;
    }
    let internal_address = internal_address?;
    let address_family = family.unwrap_or(if internal_address.contains(':') {
        AddressFamily::Ipv6
    } else {
        AddressFamily::Ipv4
    });
    Some(ForwardText {
        protocol: protocol?,
        external_port: external? as u16,
        internal_address,
        internal_port: internal? as u16,
        address_family,
    })
}

fn read_reservation(scope: &mut Scope<'_>, i: usize, item: &Value) -> Option<(String, String)> {
    let path = format!("dhcpReservations[{i}].");
    let Value::Object(map) = item else {
        scope.key(&format!("dhcpReservations[{i}]"), format!("{}; use a mapping with mac and address", is_kind(item)));
        return None;
    };
    let before = scope.count();
    check_keys(scope, map, DHCP_RESERVATION_KEYS, &path);
    let mac = read_string(scope, map, &path, "mac", "a MAC address like \"52:54:00:12:34:56\"");
    if get(map, "mac").is_none() {
        scope.key(&format!("{path}mac"), "missing; use a MAC address like \"52:54:00:12:34:56\"");
    }
    let address = read_string(scope, map, &path, "address", "an IPv4 address inside the subnet");
    if get(map, "address").is_none() {
        scope.key(&format!("{path}address"), "missing; use an IPv4 address inside the subnet");
    }
    if scope.count() > before {
        return None;
    }
    Some((mac?, address?))
}

/// Checks the values of a network entry and parses its addresses into the
/// configuration it returns (the subnet held as its first host, an MTU of 0,
/// Lima's "unset", as the default). The returned value is only meaningful
/// when no problem was added to `scope`.
pub(super) fn check_network(scope: &mut Scope<'_>, draft: Draft, unreadable: Unreadable) -> NetworkConfig {
    let Draft { mut cfg, subnet: subnet_text, ipv6_prefix: prefix_text, forwards, reservations } = draft;
    if cfg.mtu == 0 {
        cfg.mtu = DEFAULT_MTU;
    }
    if !valid_mtu(cfg.mtu) {
        scope.key("mtu", format!("{} is out of range; use {}", cfg.mtu, mtu_allowed()));
    }

    let subnet = subnet_text.as_deref().and_then(|text| {
        let problem = match Ipv4Subnet::parse(text, SUBNET_PREFIX_MIN, SUBNET_PREFIX_MAX) {
            Ok(s) if !addr::is_private_v4(s.network()) => {
                "is not a private (RFC 1918) range; use one inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16".to_string()
            }
            Ok(s) if !addr::is_private_v4(s.broadcast()) => {
                "reaches outside the private (RFC 1918) ranges; use one inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16".to_string()
            }
            Ok(s) => return Some(s),
            Err(SubnetError::Syntax) => {
                "is not an IPv4 subnet; use a network address and prefix length like \"192.168.107.0/24\"".to_string()
            }
            Err(SubnetError::Prefix(p)) if p > SUBNET_PREFIX_MAX => format!(
                "is too small: a /{p} leaves no room for the gateway, DHCP and VMs; use a prefix length of {SUBNET_PREFIX_MIN}..{SUBNET_PREFIX_MAX} (/24 is usual)"
            ),
            Err(SubnetError::Prefix(p)) => {
                format!("is too large: /{p}; use a prefix length of {SUBNET_PREFIX_MIN}..{SUBNET_PREFIX_MAX} (/24 is usual)")
            }
            Err(SubnetError::HostAddress { network, prefix }) => format!(
                "is neither the network address nor its first host; use \"{network}/{prefix}\" (the gateway is then the first host)"
            ),
        };
        scope.key("subnet", format!("{} {problem}", quote(text)));
        None
    });
    cfg.subnet = subnet;

    let prefix = prefix_text.as_deref().and_then(|text| {
        let problem = match Ipv6Prefix::parse(text) {
            Ok(p) if p.prefix_len() != IPV6_PREFIX_LEN || !p.is_unique_local() => {
                "is not a unique local /64; use a /64 inside fc00::/7, like \"fd00:1:2:3::/64\"".to_string()
            }
            Ok(p) => return Some(p),
            Err(PrefixError::Syntax) => "is not an IPv6 prefix; use a unique local /64 like \"fd00:1:2:3::/64\"".to_string(),
            Err(PrefixError::HostBits(masked)) => format!("has bits set after the prefix length; use \"{masked}\""),
        };
        scope.key("ipv6Prefix", format!("{} {problem}", quote(text)));
        None
    });
    cfg.ipv6_prefix = prefix;

    if let Some(name) = &cfg.external_interface {
        if cfg.mode != Mode::Shared && !unreadable.mode {
            scope.key("externalInterface", format!(
                "{} is set but mode is \"{}\"; externalInterface needs mode \"shared\" (remove it or change the mode)",
                quote(name), cfg.mode
            ));
        } else if !valid_interface_name(name) {
            scope.key("externalInterface", format!(
                "{} is not an interface name; use 1 to 15 letters, digits, \"-\", \"_\" or \".\", like \"en0\"",
                quote(name)
            ));
        }
    }

    if !forwards.is_empty() && cfg.mode != Mode::Shared && !unreadable.mode {
        scope.key("portForwarding", format!(
            "is set but mode is \"{}\"; port forwarding needs mode \"shared\" (in host mode the host reaches VMs directly)",
            cfg.mode
        ));
    }
    let mut seen_ports: HashMap<(Protocol, AddressFamily, u16), usize> = HashMap::new();
    for (i, pf) in forwards.iter().enumerate() {
        let path = format!("portForwarding[{i}].");
        for (key, port) in [("externalPort", pf.external_port), ("internalPort", pf.internal_port)] {
            if !valid_port(port) {
                scope.key(&format!("{path}{key}"), format!("0 is out of range; use {}", port_allowed()));
            }
        }
        if let Some(addr) = check_internal_address(scope, &path, pf, subnet.as_ref(), prefix.as_ref(), unreadable) {
            cfg.port_forwarding.push(PortForward {
                protocol: pf.protocol,
                external_port: pf.external_port,
                internal_address: addr,
                internal_port: pf.internal_port,
                address_family: pf.address_family,
            });
        }
        let k = (pf.protocol, pf.address_family, pf.external_port);
        if let Some(first) = seen_ports.get(&k) {
            scope.key(&format!("{path}externalPort"), format!(
                "{} {}/{} is already forwarded by portForwarding[{first}]; forward each host port once",
                pf.external_port, pf.protocol, pf.address_family
            ));
        } else {
            seen_ports.insert(k, i);
        }
    }

    if cfg.addresses == Addresses::Broker && !cfg.dhcp && !unreadable.dhcp {
        scope.key("addresses", "is \"broker\" but dhcp is false; the broker's port hands out addresses, so set dhcp: true or addresses: \"platform\"");
    }
    if cfg.addresses == Addresses::Broker && cfg.isolation {
        scope.key("addresses", "is \"broker\" but isolation is true; isolation would cut the VMs off from the broker's port too, so use one or the other");
    }
    if !reservations.is_empty() && !cfg.dhcp && !unreadable.dhcp {
        scope.key("dhcpReservations", "is set but dhcp is false; reservations need dhcp: true");
    }
    let mut seen_macs: HashMap<[u8; 6], usize> = HashMap::new();
    let mut seen_addrs: HashMap<Ipv4Addr, usize> = HashMap::new();
    for (i, (mac_text, address_text)) in reservations.iter().enumerate() {
        let path = format!("dhcpReservations[{i}].");
        let mac = match MacAddr::parse(mac_text) {
            None => {
                scope.key(&format!("{path}mac"), format!(
                    "{} is not a MAC address; use six hex pairs like \"52:54:00:12:34:56\"",
                    quote(mac_text)
                ));
                None
            }
            Some(mac) if !usable_mac(&mac.octets()) => {
                scope.key(&format!("{path}mac"), format!(
                    "{} is not a unicast MAC address; use one whose first byte is even, like \"52:54:00:12:34:56\"",
                    quote(mac_text)
                ));
                None
            }
            Some(mac) => {
                if let Some(first) = seen_macs.get(&mac.octets()) {
                    scope.key(&format!("{path}mac"), format!(
                        "{} is already reserved by dhcpReservations[{first}]; give each MAC one reservation",
                        quote(&mac.to_string())
                    ));
                } else {
                    seen_macs.insert(mac.octets(), i);
                }
                Some(mac)
            }
        };
        let key = format!("{path}address");
        let Ok(a) = address_text.parse::<Ipv4Addr>() else {
            scope.key(&key, format!("{} is not an IPv4 address; use one inside the subnet", quote(address_text)));
            continue;
        };
        if let Some(mac) = mac {
            cfg.dhcp_reservations.push(DhcpReservation { mac, address: a });
        }
        let address = a.to_string();
        match &subnet {
            None if subnet_text.is_none() && !unreadable.subnet => scope.key(&key, format!(
                "{} cannot be reserved: the network has no subnet; set \"subnet\" so the address range is fixed",
                quote(&address)
            )),
            None => {} // the subnet itself is wrong, and already reported
            Some(s) => {
                if let Some(why) = host_address_problem(s, a) {
                    scope.key(&key, format!("{} {why}; use an address from {} to {}", quote(&address), s.dhcp_range().0, s.dhcp_range().1));
                } else if let Some(first) = seen_addrs.get(&a) {
                    scope.key(&key, format!(
                        "{} is already reserved by dhcpReservations[{first}]; give each reservation its own address",
                        quote(&address)
                    ));
                } else {
                    seen_addrs.insert(a, i);
                }
            }
        }
    }
    cfg
}

/// Why `a` cannot be a VM's address in `s`, if it cannot.
fn host_address_problem(s: &Ipv4Subnet, a: Ipv4Addr) -> Option<String> {
    if !s.contains(a) {
        Some(format!("is outside the subnet {s}"))
    } else if a == s.gateway() {
        Some("is the gateway (the host's own address)".to_string())
    } else if a == s.network() {
        Some("is the network address".to_string())
    } else if a == s.broadcast() {
        Some("is the broadcast address".to_string())
    } else {
        None
    }
}

fn check_internal_address(
    scope: &mut Scope<'_>,
    path: &str,
    pf: &ForwardText,
    subnet: Option<&Ipv4Subnet>,
    prefix: Option<&Ipv6Prefix>,
    unreadable: Unreadable,
) -> Option<IpAddr> {
    let key = format!("{path}internalAddress");
    let text = &pf.internal_address;
    match pf.address_family {
        AddressFamily::Ipv4 => {
            let Ok(a) = text.parse::<Ipv4Addr>() else {
                scope.key(&key, format!("{} is not an IPv4 address; use a VM's address inside the subnet (or set addressFamily: ipv6)", quote(text)));
                return None;
            };
            match subnet {
                Some(s) => {
                    if let Some(why) = host_address_problem(s, a) {
                        scope.key(&key, format!("{} {why}; use a VM's address from {} to {}", quote(text), s.dhcp_range().0, s.dhcp_range().1));
                        return None;
                    }
                }
                None => {
                    if !unreadable.subnet {
                        scope.key(&key, format!(
                            "{} cannot be checked: the network has no valid subnet; set \"subnet\" so VM addresses are fixed",
                            quote(text)
                        ));
                    }
                    return None;
                }
            }
            Some(IpAddr::V4(a))
        }
        AddressFamily::Ipv6 => {
            let Ok(a) = text.parse::<Ipv6Addr>() else {
                scope.key(&key, format!("{} is not an IPv6 address; use a VM's address inside ipv6Prefix (or set addressFamily: ipv4)", quote(text)));
                return None;
            };
            match prefix {
                Some(p) if !p.contains(a) => {
                    scope.key(&key, format!("{} is outside the ipv6Prefix {p}; use a VM's address inside it", quote(text)));
                    None
                }
                Some(_) => Some(IpAddr::V6(a)),
                None => {
                    if !unreadable.ipv6_prefix {
                        scope.key(&key, format!(
                            "{} cannot be checked: the network has no valid ipv6Prefix; set \"ipv6Prefix\" so VM addresses are fixed",
                            quote(text)
                        ));
                    }
                    None
                }
            }
        }
    }
}

fn valid_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Reads the `broker:` section, defaults filled in.
pub(super) fn read_broker(scope: &mut Scope<'_>, value: Option<&Value>) -> BrokerSettings {
    let mut b = BrokerSettings::default();
    let map = match value {
        None | Some(Value::Null) => return b,
        Some(Value::Object(map)) => map,
        Some(v) => {
            scope.whole(format!("{}; use a mapping with keys such as idleTimeout and socket", is_kind(v)));
            return b;
        }
    };
    check_keys(scope, map, BROKER_KEYS, "");
    if let Some(t) = read_uint(scope, map, "", "idleTimeout", u64::from(u32::MAX), "0..4294967295 (seconds; 0 never times out)") {
        b.idle_timeout = t;
    }
    if let Some(users) = read_accounts(scope, map, "allowedUsers", "user") {
        b.allowed_users = users;
    }
    if let Some(groups) = read_accounts(scope, map, "allowedGroups", "group") {
        b.allowed_groups = groups;
    }
    match get(map, "clientNetworks") {
        None => {}
        Some(Value::String(s)) => match ClientNetworks::parse(s) {
            Some(c) => b.client_networks = c,
            None => scope.key("clientNetworks", format!(
                "{} is not a choice; use one of {}",
                quote(s),
                ClientNetworks::NAMES.join(", ")
            )),
        },
        Some(v) => scope.key("clientNetworks", format!("{}; use one of {}", is_kind(v), ClientNetworks::NAMES.join(", "))),
    }
    let ports_allowed = format!("1..{MAX_PORTS_PER_USER_MAX} (ports one user may hold at once)");
    match read_uint(scope, map, "", "maxPortsPerUser", u64::from(MAX_PORTS_PER_USER_MAX), &ports_allowed) {
        Some(0) => scope.key("maxPortsPerUser", format!("0 is out of range; use {ports_allowed}")),
        Some(n) => b.max_ports_per_user = n as u32,
        None => {}
    }
    if let Some(s) = read_string(scope, map, "", "socket", "an absolute path like \"/run/vmnet-rs/broker.sock\"") {
        if !s.starts_with('/') || s.len() > 107 || s.contains('\0') {
            scope.key("socket", format!(
                "{} is not an absolute path of at most 107 bytes; use one like \"/run/vmnet-rs/broker.sock\"",
                quote(&s)
            ));
        }
        b.socket = s;
    }
    if let Some(s) = read_string(scope, map, "", "machService", "a reverse-DNS name like \"io.github.vmnet-rs.broker\"") {
        let ok = (1..=128).contains(&s.len())
            && s.contains('.')
            && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-' || c == b'_');
        if !ok {
            scope.key("machService", format!(
                "{} is not a Mach service name; use a reverse-DNS name like \"io.github.vmnet-rs.broker\"",
                quote(&s)
            ));
        }
        b.mach_service = s;
    }
    if let Some(s) = read_string(scope, map, "", "endpointDir", "an absolute directory like \"/run/vmnet-rs\"") {
        if !s.is_empty() && (!s.starts_with('/') || s.len() > 90 || s.contains('\0')) {
            scope.key("endpointDir", format!(
                "{} is not an absolute path of at most 90 bytes (socket paths under it are limited to 104); use one like \"/run/vmnet-rs\", or leave it out for the default",
                quote(&s)
            ));
        }
        b.endpoint_dir = s;
    }
    if let Some(s) = read_string(scope, map, "", "dataDir", "an absolute directory like \"/var/lib/vmnet-rs\"") {
        if !s.is_empty() && (!s.starts_with('/') || s.contains('\0')) {
            scope.key("dataDir", format!(
                "{} is not an absolute path; use one like \"/var/lib/vmnet-rs\", or leave it out for the default",
                quote(&s)
            ));
        }
        b.data_dir = s;
    }
    if let Some(r) = read_repair(scope, get(map, "repair")) {
        b.repair = r;
    }
    b
}

/// Reads `broker: repair:` (`pieces`: `all`, `none` or a list of
/// [`REPAIR_PIECES`]; `limit`; `window` in seconds); `None` when absent.
fn read_repair(scope: &mut Scope<'_>, value: Option<&Value>) -> Option<RepairSettings> {
    let map = match value? {
        Value::Object(map) => map,
        v => {
            scope.key("repair", format!("{}; use a mapping with keys {}", is_kind(v), REPAIR_KEYS.join(", ")));
            return None;
        }
    };
    check_keys(scope, map, REPAIR_KEYS, "repair.");
    let mut r = RepairSettings::default();
    let choices = format!("all, none, or a list of {}", REPAIR_PIECES.join(", "));
    match get(map, "pieces") {
        None => {}
        Some(Value::String(s)) if s == "all" => {}
        Some(Value::String(s)) if s == "none" => r.pieces.clear(),
        Some(Value::Array(items)) => {
            r.pieces.clear();
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) if REPAIR_PIECES.contains(&s.as_str()) => r.pieces.push(s.clone()),
                    v => scope.key(&format!("repair.pieces[{i}]"), format!("{} is not a piece; use one of {}", show(v), REPAIR_PIECES.join(", "))),
                }
            }
        }
        Some(v) => scope.key("repair.pieces", format!("{} is not a choice; use {choices}", show(v))),
    }
    match read_uint(scope, map, "repair.", "limit", 1000, "1..1000 (removals in the window before a piece is left alone)") {
        Some(0) => scope.key("repair.limit", "0 is out of range; use 1..1000 (or pieces: none to turn repairs off)"),
        Some(n) => r.limit = n as u32,
        None => {}
    }
    match read_uint(scope, map, "repair.", "window", 86_400, "1..86400 (seconds)") {
        Some(0) => scope.key("repair.window", "0 is out of range; use 1..86400 (seconds)"),
        Some(n) => r.window = n,
        None => {}
    }
    Some(r)
}

/// Reads a list of user or group names (or numeric ids); `None` when the
/// key is absent or wrong (the problem is reported).
fn read_accounts(scope: &mut Scope<'_>, map: &Map<String, Value>, key: &str, what: &str) -> Option<Vec<String>> {
    let v = get(map, key)?;
    let Value::Array(items) = v else {
        scope.key(key, format!("{}; use a list of {what} names or numeric ids", is_kind(v)));
        return None;
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::String(s) if valid_account_name(s) => out.push(s.clone()),
            Value::Number(n) if n.as_u64().is_some_and(|x| x <= u64::from(u32::MAX)) => out.push(n.to_string()),
            Value::String(s) => scope.key(&format!("{key}[{i}]"), format!(
                "{} is not a {what} name; use letters, digits, \"_\", \"-\" or \".\" (up to 32), or a numeric id",
                quote(s)
            )),
            other => scope.key(&format!("{key}[{i}]"), format!("{}; use a {what} name or numeric id", is_kind(other))),
        }
    }
    Some(out)
}

fn valid_account_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && !s.starts_with('-')
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.')
}

/// Reads a whole file: `vmnet:` networks (built-ins added unless redefined),
/// `broker:`, Lima's other top-level keys ignored; then checks what spans
/// networks (overlapping subnets and prefixes, host ports forwarded twice).
pub(super) fn read_file(
    source: &str,
    value: &Value,
    problems: &mut Vec<Problem>,
) -> (BrokerSettings, BTreeMap<String, NetworkConfig>) {
    let mut networks = BTreeMap::new();
    let Value::Object(top) = value else {
        Scope::top(source, problems).whole(format!(
            "the file holds {}; use a mapping with a \"vmnet\" section of networks (and optionally \"broker\")",
            kind(value)
        ));
        return (BrokerSettings::default(), networks);
    };
    {
        let mut scope = Scope::top(source, problems);
        for key in top.keys() {
            if !TOP_KEYS.contains(&key.as_str()) && !IGNORED_TOP_KEYS.contains(&key.as_str()) {
                scope.unknown_key("", key, TOP_KEYS, format!(
                    "allowed keys: {} (Lima's {} are read and ignored)",
                    TOP_KEYS.join(", "),
                    IGNORED_TOP_KEYS.join(", ")
                ));
            }
        }
    }
    let broker = read_broker(&mut Scope::broker(source, problems), top.get("broker"));
    let mut defined = Vec::new();
    // Each network's subnet and prefix as the user wrote them, for messages.
    let mut written: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    match top.get("vmnet") {
        None | Some(Value::Null) => {}
        Some(Value::Object(entries)) => {
            for (name, entry) in entries {
                let mut scope = Scope::network(source, name, problems);
                if !valid_network_name(name) {
                    scope.whole(format!("invalid network name; {NETWORK_NAME_RULE}"));
                    continue;
                }
                defined.push(name.clone());
                // An entry whose keys are all commented out (Lima's template
                // has one, `debug:`) is null in YAML: every default.
                let empty = Value::Object(Map::new());
                let entry = if entry.is_null() { &empty } else { entry };
                let text = |key: &str| entry.get(key).and_then(Value::as_str).map(str::to_owned);
                written.insert(name.clone(), (text("subnet"), text("ipv6Prefix")));
                if let Some(cfg) = read_network(&mut scope, entry) {
                    networks.insert(name.clone(), cfg);
                }
            }
        }
        Some(v) => Scope::top(source, problems).key("vmnet", format!(
            "{}; use a mapping of network names to their settings",
            is_kind(v)
        )),
    }
    for (name, cfg) in [("shared", NetworkConfig::builtin_shared()), ("host", NetworkConfig::builtin_host())] {
        if !defined.iter().any(|d| d == name) {
            networks.insert(name.to_string(), cfg);
        }
    }
    check_across(source, &networks, &written, problems);
    (broker, networks)
}

/// Checks between networks: subnets and IPv6 prefixes must not overlap, and
/// a host port (per protocol and family) may be forwarded by one network only.
/// `written` holds each network the file defines, with its subnet and prefix
/// as written (messages quote them so); the others are built-ins.
pub(super) fn check_across(
    source: &str,
    networks: &BTreeMap<String, NetworkConfig>,
    written: &BTreeMap<String, (Option<String>, Option<String>)>,
    problems: &mut Vec<Problem>,
) {
    let builtin = |n: &str| !written.contains_key(n);
    let as_written = |n: &str, subnet: bool, parsed: String| {
        written.get(n).and_then(|(s, p)| if subnet { s.clone() } else { p.clone() }).unwrap_or(parsed)
    };
    let label = |n: &str| {
        if builtin(n) {
            format!("built-in network {} (redefine it under vmnet to move it)", quote(n))
        } else {
            format!("network {}", quote(n))
        }
    };
    let list: Vec<(&String, &NetworkConfig)> = networks.iter().collect();
    for (j, (name_b, b)) in list.iter().enumerate() {
        for (name_a, a) in &list[..j] {
            // Report on the network the user wrote; between two of theirs, on the later one.
            let (here, there, here_cfg, there_cfg) = if builtin(name_b) && !builtin(name_a) {
                (name_a, name_b, a, b)
            } else {
                (name_b, name_a, b, a)
            };
            if let (Some(x), Some(y)) = (subnet_of(here_cfg), subnet_of(there_cfg)) {
                if x.overlaps(&y) {
                    Scope::network(source, here, problems).key("subnet", format!(
                        "{} overlaps {} of {}; give each network its own subnet",
                        quote(&as_written(here, true, x.to_string())),
                        as_written(there, true, y.to_string()),
                        label(there)
                    ));
                }
            }
            if let (Some(x), Some(y)) = (prefix_of(here_cfg), prefix_of(there_cfg)) {
                if x.overlaps(&y) {
                    Scope::network(source, here, problems).key("ipv6Prefix", format!(
                        "{} overlaps {} of {}; give each network its own prefix",
                        quote(&as_written(here, false, x.to_string())),
                        as_written(there, false, y.to_string()),
                        label(there)
                    ));
                }
            }
        }
    }
    let mut seen: HashMap<(Protocol, AddressFamily, u16), (&str, usize)> = HashMap::new();
    for (name, cfg) in networks {
        for (i, pf) in cfg.port_forwarding.iter().enumerate() {
            let k = (pf.protocol, pf.address_family, pf.external_port);
            match seen.get(&k) {
                Some((first, j)) if *first != name.as_str() => {
                    Scope::network(source, name, problems).key(&format!("portForwarding[{i}].externalPort"), format!(
                        "{} {}/{} is already forwarded by network {} portForwarding[{j}]; forward each host port once",
                        pf.external_port, pf.protocol, pf.address_family, quote(first)
                    ));
                }
                Some(_) => {} // within one network: reported by check_network
                None => {
                    seen.insert(k, (name.as_str(), i));
                }
            }
        }
    }
}

fn subnet_of(cfg: &NetworkConfig) -> Option<Ipv4Subnet> {
    cfg.subnet
}

fn prefix_of(cfg: &NetworkConfig) -> Option<Ipv6Prefix> {
    cfg.ipv6_prefix
}
