//! The Linux view of a network configuration: addresses worked out and every
//! Linux-specific rule checked before anything is created.
//!
//! Pure code, run by the thread that creates the network. A [`Plan`] is only
//! built from a configuration it has fully checked, so everything after it
//! (links, nftables, dnsmasq) can trust its addresses: the gateway is a host
//! address of the subnet, the DHCP range lies inside the subnet and excludes
//! the gateway, reservations and port-forward targets lie inside the subnet
//! (or IPv6 prefix), and no two forwards claim the same external port.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::{self, format_mac, parse_mac, AddressFamily, Ipv4Subnet, Mode, NetworkConfig, Protocol, SUBNET_PREFIX_MAX, SUBNET_PREFIX_MIN};

/// Subnets tried, in order, when the configuration leaves the choice to us:
/// `192.168.<N>.1/24` for N in this range.
pub const AUTO_SUBNET_THIRD_OCTETS: std::ops::RangeInclusive<u8> = 64..=254;

/// Why a configuration cannot be realised on Linux.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("network {network:?}: {message}")]
pub struct PlanError {
    pub network: String,
    pub message: String,
}

/// An IPv6 prefix; the host side takes its `::1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V6Prefix {
    pub network: Ipv6Addr,
    pub prefix: u8,
}

impl V6Prefix {
    pub fn parse(s: &str) -> Result<V6Prefix, String> {
        let (addr, len) = s.split_once('/').ok_or_else(|| format!("IPv6 prefix {s:?} needs a length, e.g. fd00:1:2:3::/64"))?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| format!("IPv6 prefix {s:?}: {addr:?} is not an IPv6 address"))?;
        let prefix: u8 = len.parse().map_err(|_| format!("IPv6 prefix {s:?}: {len:?} is not a prefix length"))?;
        if !(8..=126).contains(&prefix) {
            return Err(format!("IPv6 prefix {s:?}: length must be 8 to 126"));
        }
        let p = V6Prefix { network: Ipv6Addr::from(u128::from(addr) & Self::mask_bits(prefix)), prefix };
        if p.network != addr {
            return Err(format!("IPv6 prefix {s:?} has host bits set; did you mean {}?", p.cidr()));
        }
        Ok(p)
    }

    fn mask_bits(prefix: u8) -> u128 {
        u128::MAX << (128 - u32::from(prefix))
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & Self::mask_bits(self.prefix) == u128::from(self.network)
    }

    pub fn gateway(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.network) + 1)
    }

    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }

    pub fn gateway_cidr(&self) -> String {
        format!("{}/{}", self.gateway(), self.prefix)
    }
}

/// A route of the current namespace (from `ip -j route`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix: u8,
    pub dev: String,
}

impl Route {
    /// `10.0.0.0/16 dev eth9`
    pub fn describe(&self) -> String {
        format!("{}/{} dev {}", self.dst, self.prefix, self.dev)
    }

    fn overlaps_v4(&self, net: &Ipv4Subnet) -> bool {
        let IpAddr::V4(dst) = self.dst else { return false };
        if self.prefix == 0 {
            return false; // a default route overlaps everything by design
        }
        let p = self.prefix.min(net.prefix());
        let mask = u32::MAX << (32 - u32::from(p));
        u32::from(dst) & mask == u32::from(net.network()) & mask
    }

    fn overlaps_v6(&self, net: &V6Prefix) -> bool {
        let IpAddr::V6(dst) = self.dst else { return false };
        if self.prefix == 0 {
            return false;
        }
        let p = self.prefix.min(net.prefix);
        let mask = V6Prefix::mask_bits(p);
        u128::from(dst) & mask == u128::from(net.network) & mask
    }
}

/// One port forward, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub protocol: Protocol,
    pub external_port: u16,
    pub internal: IpAddr,
    pub internal_port: u16,
}

/// Everything the backend needs, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    pub mode: Mode,
    pub v4: Ipv4Subnet,
    pub v6: Option<V6Prefix>,
    pub mtu: u32,
    pub dhcp: bool,
    pub dns_proxy: bool,
    pub router_advertisement: bool,
    pub nat44: bool,
    pub nat66: bool,
    pub isolation: bool,
    pub external_interface: Option<String>,
    /// `(mac, address)`, MAC in lower-case colon form.
    pub reservations: Vec<(String, Ipv4Addr)>,
    pub forwards: Vec<Forward>,
}

impl Plan {
    /// Checks `config` (with `v4` standing for `config.subnet`, so the
    /// caller can fill in a chosen one) against Linux's rules and `routes`,
    /// the routes of the namespace the network will live in.
    pub fn new(name: &str, config: &NetworkConfig, v4: Ipv4Subnet, routes: &[Route]) -> Result<Plan, PlanError> {
        let fail = |message: String| PlanError { network: name.to_string(), message };
        if !config::valid_network_name(name) {
            return Err(fail(format!("invalid network name; {}", config::NETWORK_NAME_RULE)));
        }
        let v6 = config.ipv6_prefix.as_deref().map(V6Prefix::parse).transpose().map_err(fail)?;
        if !config::valid_mtu(config.mtu) {
            return Err(fail(format!("mtu {} is out of range {} to {}", config.mtu, config::MTU_MIN, config::MTU_MAX)));
        }
        if let (Some(p), true) = (&v6, config.router_advertisement) {
            if p.prefix != 64 {
                return Err(fail(format!("router advertisements need a /64 prefix for address autoconfiguration; ipv6Prefix is {}", p.cidr())));
            }
        }
        if config.mode == Mode::Host && config.external_interface.is_some() {
            return Err(fail("externalInterface only applies to shared mode; remove it or use mode: shared".into()));
        }
        if let Some(ext) = &config.external_interface {
            if ext.is_empty() || ext.len() > 15 || !ext.chars().all(|c| c.is_ascii_graphic() && c != '/' && c != '"') {
                return Err(fail(format!("externalInterface {ext:?} is not a valid interface name")));
            }
        }

        let mut reservations = Vec::new();
        let mut macs = HashSet::new();
        let mut addrs = HashSet::new();
        for r in &config.dhcp_reservations {
            let mac = parse_mac(&r.mac).ok_or_else(|| fail(format!("DHCP reservation MAC {:?} is not of the form aa:bb:cc:dd:ee:ff", r.mac)))?;
            if !config::usable_mac(&mac) {
                return Err(fail(format!("DHCP reservation MAC {} is a multicast or all-zero address", r.mac)));
            }
            let ip: Ipv4Addr = r.address.parse().map_err(|_| fail(format!("DHCP reservation address {:?} is not an IPv4 address", r.address)))?;
            if !v4.is_client_address(ip) {
                return Err(fail(format!("DHCP reservation {} for {} is not a client address of subnet {}", ip, r.mac, v4)));
            }
            let mac = format_mac(&mac);
            if !macs.insert(mac.clone()) {
                return Err(fail(format!("MAC {mac} has two DHCP reservations")));
            }
            if !addrs.insert(ip) {
                return Err(fail(format!("address {ip} is reserved for two MACs")));
            }
            reservations.push((mac, ip));
        }

        let mut forwards = Vec::new();
        let mut ports = HashSet::new();
        if config.mode == Mode::Host && !config.port_forwarding.is_empty() {
            return Err(fail("port forwarding needs mode: shared (a host network does not forward)".into()));
        }
        for f in &config.port_forwarding {
            let internal: IpAddr = f.internal_address.parse().map_err(|_| fail(format!("port forward {}: internal address {:?} is not an IP address", f.external_port, f.internal_address)))?;
            match (f.address_family, internal) {
                (AddressFamily::Ipv4, IpAddr::V4(ip)) => {
                    if !v4.is_client_address(ip) {
                        return Err(fail(format!("port forward {}: {} is not a client address of subnet {}", f.external_port, ip, v4)));
                    }
                }
                (AddressFamily::Ipv6, IpAddr::V6(ip)) => match &v6 {
                    Some(p) if p.contains(ip) && ip != p.gateway() => {}
                    Some(p) => return Err(fail(format!("port forward {}: {} is not a client address of prefix {}", f.external_port, ip, p.cidr()))),
                    None => return Err(fail(format!("port forward {}: an IPv6 forward needs ipv6Prefix", f.external_port))),
                },
                _ => return Err(fail(format!("port forward {}: internal address {} does not match addressFamily", f.external_port, internal))),
            }
            if !config::valid_port(f.external_port) || !config::valid_port(f.internal_port) {
                return Err(fail(format!(
                    "port forward {} -> {}: ports must be {} to {}",
                    f.external_port,
                    f.internal_port,
                    config::PORT_MIN,
                    config::PORT_MAX
                )));
            }
            if !ports.insert((f.protocol == Protocol::Tcp, f.address_family == AddressFamily::Ipv4, f.external_port)) {
                return Err(fail(format!("external port {} is forwarded twice", f.external_port)));
            }
            forwards.push(Forward { protocol: f.protocol, external_port: f.external_port, internal, internal_port: f.internal_port });
        }

        if let Some(route) = routes.iter().find(|r| r.overlaps_v4(&v4)) {
            return Err(fail(format!("subnet {} of network {name:?} overlaps route {}; choose another subnet", v4, route.describe())));
        }
        if let Some(p) = &v6 {
            if let Some(route) = routes.iter().find(|r| r.overlaps_v6(p)) {
                return Err(fail(format!("ipv6Prefix {} of network {name:?} overlaps route {}; choose another prefix", p.cidr(), route.describe())));
            }
        }

        Ok(Plan {
            name: name.to_string(),
            mode: config.mode,
            v4,
            v6,
            mtu: config.mtu,
            dhcp: config.dhcp,
            dns_proxy: config.dns_proxy,
            router_advertisement: config.router_advertisement,
            nat44: config.nat44,
            nat66: config.nat66,
            isolation: config.isolation,
            external_interface: config.external_interface.clone(),
            reservations,
            forwards,
        })
    }

    /// Whether traffic is forwarded out of the network (shared mode).
    pub fn forwards_out(&self) -> bool {
        self.mode == Mode::Shared
    }
}

/// The first of `routes` that the subnet or IPv6 prefix of `config` overlaps,
/// described as `10.0.0.0/16 dev eth9`; `None` when nothing overlaps (or the
/// platform chooses the subnet).
pub fn route_conflict(config: &NetworkConfig, routes: &[Route]) -> Result<Option<String>, String> {
    if let Some(v4) = config.ipv4_subnet().map_err(|e| format!("subnet {:?} {e}", config.subnet.as_deref().unwrap_or("")))? {
        if let Some(r) = routes.iter().find(|r| r.overlaps_v4(&v4)) {
            return Ok(Some(r.describe()));
        }
    }
    if let Some(p) = &config.ipv6_prefix {
        let v6 = V6Prefix::parse(p)?;
        if let Some(r) = routes.iter().find(|r| r.overlaps_v6(&v6)) {
            return Ok(Some(r.describe()));
        }
    }
    Ok(None)
}

/// The first `192.168.N.1/24` that overlaps none of `routes`.
pub fn choose_subnet(routes: &[Route]) -> Option<Ipv4Subnet> {
    AUTO_SUBNET_THIRD_OCTETS
        .filter_map(|n| Ipv4Subnet::parse(&format!("192.168.{n}.1/24"), SUBNET_PREFIX_MIN, SUBNET_PREFIX_MAX).ok())
        .find(|s| !routes.iter().any(|r| r.overlaps_v4(s)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{DhcpReservation, PortForward};

    pub fn config() -> NetworkConfig {
        NetworkConfig { subnet: Some("10.77.0.1/24".into()), ..NetworkConfig::lima_default() }
    }

    fn plan(c: &NetworkConfig) -> Result<Plan, PlanError> {
        Plan::new("t", c, c.ipv4_subnet().unwrap().unwrap(), &[])
    }

    fn route(s: &str, dev: &str) -> Route {
        let (a, p) = s.split_once('/').unwrap();
        Route { dst: a.parse().unwrap(), prefix: p.parse().unwrap(), dev: dev.into() }
    }

    #[test]
    fn v6_prefix_math() {
        let p = V6Prefix::parse("fd00:1:2:3::/64").unwrap();
        assert_eq!(p.gateway_cidr(), "fd00:1:2:3::1/64");
        assert!(p.contains("fd00:1:2:3::99".parse().unwrap()));
        assert!(!p.contains("fd00:1:2:4::99".parse().unwrap()));
        let e = V6Prefix::parse("fd00:1:2:3::5/64").unwrap_err();
        assert!(e.contains("fd00:1:2:3::/64"), "{e}");
    }

    #[test]
    fn good_config_plans() {
        let mut c = config();
        c.dhcp_reservations = vec![DhcpReservation { mac: "52:54:00:AA:BB:01".into(), address: "10.77.0.50".into() }];
        c.port_forwarding = vec![PortForward { protocol: Protocol::Tcp, external_port: 8080, internal_address: "10.77.0.50".into(), internal_port: 80, address_family: AddressFamily::Ipv4 }];
        let p = plan(&c).unwrap();
        assert_eq!(p.reservations, vec![("52:54:00:aa:bb:01".to_string(), Ipv4Addr::new(10, 77, 0, 50))]);
        assert_eq!(p.forwards.len(), 1);
    }

    #[test]
    fn bad_configs_are_refused_with_reasons() {
        let mut c = config();
        c.dhcp_reservations = vec![DhcpReservation { mac: "52:54:00:aa:bb:01".into(), address: "10.78.0.5".into() }];
        assert!(plan(&c).unwrap_err().message.contains("not a client address"));
        c.dhcp_reservations = vec![DhcpReservation { mac: "nonsense".into(), address: "10.77.0.5".into() }];
        assert!(plan(&c).unwrap_err().message.contains("aa:bb:cc:dd:ee:ff"));
        c.dhcp_reservations = vec![
            DhcpReservation { mac: "52:54:00:aa:bb:01".into(), address: "10.77.0.5".into() },
            DhcpReservation { mac: "52:54:00:AA:BB:01".into(), address: "10.77.0.6".into() },
        ];
        assert!(plan(&c).unwrap_err().message.contains("two DHCP reservations"));

        let mut c = config();
        let fwd = PortForward { protocol: Protocol::Tcp, external_port: 80, internal_address: "10.77.0.9".into(), internal_port: 80, address_family: AddressFamily::Ipv4 };
        c.port_forwarding = vec![fwd.clone(), fwd.clone()];
        assert!(plan(&c).unwrap_err().message.contains("forwarded twice"));
        c.port_forwarding = vec![PortForward { address_family: AddressFamily::Ipv6, ..fwd.clone() }];
        assert!(plan(&c).unwrap_err().message.contains("does not match"));
        c.mode = Mode::Host;
        c.port_forwarding = vec![fwd];
        assert!(plan(&c).unwrap_err().message.contains("shared"));

        let mut c = config();
        c.mtu = 100;
        assert!(plan(&c).unwrap_err().message.contains("mtu"));
        c.mtu = 1000;
        c.ipv6_prefix = Some("fd00::/64".into());
        assert!(plan(&c).unwrap_err().message.contains("1280"));
        c.mtu = 1500;
        c.ipv6_prefix = Some("fd00::/48".into());
        assert!(plan(&c).unwrap_err().message.contains("/64"));
    }

    #[test]
    fn overlapping_route_is_named() {
        let c = NetworkConfig { subnet: Some("10.0.0.1/24".into()), ..config() };
        let routes = [route("0.0.0.0/0", "eth0"), route("192.168.1.0/24", "eth1"), route("10.0.0.0/16", "eth9")];
        let e = Plan::new("x", &c, c.ipv4_subnet().unwrap().unwrap(), &routes).unwrap_err();
        assert_eq!(e.to_string(), "network \"x\": subnet 10.0.0.1/24 of network \"x\" overlaps route 10.0.0.0/16 dev eth9; choose another subnet");
        // A more specific route inside the subnet overlaps too.
        let e = Plan::new("x", &c, c.ipv4_subnet().unwrap().unwrap(), &[route("10.0.0.128/25", "eth3")]).unwrap_err();
        assert!(e.message.contains("10.0.0.128/25 dev eth3"));
        assert!(Plan::new("x", &c, c.ipv4_subnet().unwrap().unwrap(), &[route("10.0.1.0/24", "eth3")]).is_ok());
    }

    #[test]
    fn auto_subnet_skips_used_ones() {
        assert_eq!(choose_subnet(&[]).map(|s| s.to_string()).as_deref(), Some("192.168.64.1/24"));
        let docker = [route("172.17.0.0/16", "docker0")];
        let c = |s: &str| NetworkConfig { subnet: Some(s.into()), ..NetworkConfig::lima_default() };
        assert_eq!(route_conflict(&c("172.17.3.1/24"), &docker), Ok(Some("172.17.0.0/16 dev docker0".into())));
        assert_eq!(route_conflict(&c("10.3.0.1/24"), &docker), Ok(None));
        assert_eq!(choose_subnet(&[route("192.168.64.0/23", "br0")]).map(|s| s.to_string()).as_deref(), Some("192.168.66.1/24"));
        assert_eq!(choose_subnet(&[route("192.168.0.0/16", "br0")]), None);
    }
}
