//! The Linux view of a network configuration: addresses worked out and the
//! rules only Linux has checked before anything is created.
//!
//! Pure code, run by the thread that creates the network. A [`Plan`] is built
//! from a configuration the validator accepted (`config::NetworkConfig::from_*`:
//! every value in range and well-formed, forwards unique, reservations
//! unique); nothing of that is judged again here. What is checked is what
//! depends on this host: the subnet the backend chose (reservations and IPv4
//! forward targets must be client addresses of it) and the namespace's routes
//! (the subnet and IPv6 prefix must overlap none).

use std::net::{IpAddr, Ipv4Addr};

use crate::config::{format_mac, Ipv4Subnet, Ipv6Prefix, Mode, NetworkConfig, Protocol, SUBNET_PREFIX_MAX, SUBNET_PREFIX_MIN};

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

    fn overlaps_v6(&self, net: &Ipv6Prefix) -> bool {
        let IpAddr::V6(dst) = self.dst else { return false };
        if self.prefix == 0 {
            return false;
        }
        let p = self.prefix.min(net.prefix_len());
        let mask = if p == 0 { 0 } else { u128::MAX << (128 - u32::from(p)) };
        u128::from(dst) & mask == u128::from(net.addr()) & mask
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
    pub v6: Option<Ipv6Prefix>,
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
    /// The DNS domain of the network's VM names (`alpha.<domain>`).
    pub domain: String,
    pub forwards: Vec<Forward>,
}

impl Plan {
    /// The plan of the validated `config` (with `v4` standing for
    /// `config.subnet`, so the caller can fill in a chosen one), checked
    /// against `v4` and `routes`, the routes of the namespace the network
    /// will live in.
    pub fn new(name: &str, config: &NetworkConfig, v4: Ipv4Subnet, routes: &[Route]) -> Result<Plan, PlanError> {
        let fail = |message: String| PlanError { network: name.to_string(), message };
        let v6 = config.ipv6_prefix();
        let reservations: Vec<(String, Ipv4Addr)> = config.reservations().into_iter().map(|(mac, ip)| (format_mac(&mac), ip)).collect();
        if let Some((mac, ip)) = reservations.iter().find(|(_, ip)| !v4.is_client_address(*ip)) {
            return Err(fail(format!("DHCP reservation {ip} for {mac} is not a client address of subnet {v4}")));
        }
        let forwards: Vec<Forward> = config
            .forwards()
            .into_iter()
            .map(|(f, internal)| Forward { protocol: f.protocol, external_port: f.external_port, internal, internal_port: f.internal_port })
            .collect();
        if let Some(f) = forwards.iter().find(|f| matches!(f.internal, IpAddr::V4(ip) if !v4.is_client_address(ip))) {
            return Err(fail(format!("port forward {}: {} is not a client address of subnet {v4}", f.external_port, f.internal)));
        }

        if let Some(route) = routes.iter().find(|r| r.overlaps_v4(&v4)) {
            return Err(fail(format!("subnet {} of network {name:?} overlaps route {}; choose another subnet", v4, route.describe())));
        }
        if let Some(p) = &v6 {
            if let Some(route) = routes.iter().find(|r| r.overlaps_v6(p)) {
                return Err(fail(format!("ipv6Prefix {p} of network {name:?} overlaps route {}; choose another prefix", route.describe())));
            }
        }

        Ok(Plan {
            name: name.to_string(),
            mode: config.mode(),
            v4,
            v6,
            mtu: config.mtu(),
            // The broker's own port answers DHCP and DNS on such a network
            // (broker/service.rs); dnsmasq keeps only router advertisements.
            dhcp: config.dhcp() && config.addresses() == crate::config::Addresses::Platform,
            dns_proxy: config.dns_proxy() && config.addresses() == crate::config::Addresses::Platform,
            router_advertisement: config.router_advertisement(),
            nat44: config.nat44(),
            nat66: config.nat66(),
            isolation: config.isolation(),
            external_interface: config.external_interface().map(str::to_owned),
            reservations,
            domain: config.dns_domain(name),
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
pub fn route_conflict(config: &NetworkConfig, routes: &[Route]) -> Option<String> {
    if let Some(v4) = config.subnet() {
        if let Some(r) = routes.iter().find(|r| r.overlaps_v4(&v4)) {
            return Some(r.describe());
        }
    }
    if let Some(v6) = config.ipv6_prefix() {
        if let Some(r) = routes.iter().find(|r| r.overlaps_v6(&v6)) {
            return Some(r.describe());
        }
    }
    None
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
    use serde_json::json;

    /// A test configuration on 10.77.0.0/24, `extra` keys added.
    pub fn config_with(extra: serde_json::Value) -> NetworkConfig {
        let mut v = json!({"subnet": "10.77.0.1/24"});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        NetworkConfig::test(v)
    }


    fn plan(c: &NetworkConfig) -> Result<Plan, PlanError> {
        Plan::new("t", c, c.subnet().unwrap(), &[])
    }

    fn route(s: &str, dev: &str) -> Route {
        let (a, p) = s.split_once('/').unwrap();
        Route { dst: a.parse().unwrap(), prefix: p.parse().unwrap(), dev: dev.into() }
    }

    #[test]
    fn good_config_plans() {
        let c = config_with(json!({
            "dhcpReservations": [{"mac": "52:54:00:AA:BB:01", "address": "10.77.0.50"}],
            "portForwarding": [{"protocol": "tcp", "externalPort": 8080, "internalAddress": "10.77.0.50", "internalPort": 80}],
        }));
        let p = plan(&c).unwrap();
        assert_eq!(p.reservations, vec![("52:54:00:aa:bb:01".to_string(), Ipv4Addr::new(10, 77, 0, 50))]);
        assert_eq!(p.forwards.len(), 1);
    }

    #[test]
    fn addresses_outside_the_chosen_subnet_are_refused() {
        // The validator cannot know a subnet the backend chooses; the plan does.
        let other = "10.78.0.1/24".parse().unwrap();
        let c = config_with(json!({"dhcpReservations": [{"mac": "52:54:00:aa:bb:01", "address": "10.77.0.5"}]}));
        assert!(Plan::new("t", &c, other, &[]).unwrap_err().message.contains("not a client address"));
        let c = config_with(json!({"portForwarding": [{"protocol": "tcp", "externalPort": 80, "internalAddress": "10.77.0.9", "internalPort": 80}]}));
        assert!(Plan::new("t", &c, other, &[]).unwrap_err().message.contains("not a client address"));
    }

    #[test]
    fn overlapping_route_is_named() {
        let c = NetworkConfig::test(json!({"subnet": "10.0.0.1/24"}));
        let routes = [route("0.0.0.0/0", "eth0"), route("192.168.1.0/24", "eth1"), route("10.0.0.0/16", "eth9")];
        let e = Plan::new("x", &c, c.subnet().unwrap(), &routes).unwrap_err();
        assert_eq!(e.to_string(), "network \"x\": subnet 10.0.0.1/24 of network \"x\" overlaps route 10.0.0.0/16 dev eth9; choose another subnet");
        // A more specific route inside the subnet overlaps too.
        let e = Plan::new("x", &c, c.subnet().unwrap(), &[route("10.0.0.128/25", "eth3")]).unwrap_err();
        assert!(e.message.contains("10.0.0.128/25 dev eth3"));
        assert!(Plan::new("x", &c, c.subnet().unwrap(), &[route("10.0.1.0/24", "eth3")]).is_ok());
    }

    #[test]
    fn auto_subnet_skips_used_ones() {
        assert_eq!(choose_subnet(&[]).map(|s| s.to_string()).as_deref(), Some("192.168.64.1/24"));
        let docker = [route("172.17.0.0/16", "docker0")];
        let c = |s: &str| NetworkConfig::test(json!({"subnet": s}));
        assert_eq!(route_conflict(&c("172.17.3.1/24"), &docker), Some("172.17.0.0/16 dev docker0".into()));
        assert_eq!(route_conflict(&c("10.3.0.1/24"), &docker), None);
        assert_eq!(choose_subnet(&[route("192.168.64.0/23", "br0")]).map(|s| s.to_string()).as_deref(), Some("192.168.66.1/24"));
        assert_eq!(choose_subnet(&[route("192.168.0.0/16", "br0")]), None);
    }
}
