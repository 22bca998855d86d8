//! Whether a vmnet network's host interface is still there (macOS), as
//! plain functions over `getifaddrs`-like entries so it is tested on every
//! OS.
//!
//! vmnet gives no liveness query for a network. Its host side is a bridge
//! interface (`bridge100`, ...) that holds the network's host (gateway)
//! address; when that interface disappears the network is useless, and
//! the broker drops it from its cache (as the system it implements does,
//! docs/macos.md). The interface is found by address, not by name: vmnet
//! picks the name. It exists only once a port was started, so a network
//! whose interface was never seen counts as alive.

use std::net::IpAddr;

/// One address of one host interface (a `struct ifaddrs` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    pub name: String,
    pub addr: IpAddr,
}

/// The gateway address in a network's state (`192.168.107.1/24`).
pub fn gateway_of(subnet: &str) -> Option<IpAddr> {
    subnet.split('/').next()?.trim().parse().ok()
}

/// The interface that holds `gateway`, if one does.
pub fn find_host_interface(entries: &[IfAddr], gateway: IpAddr) -> Option<&str> {
    entries.iter().find(|e| e.addr == gateway).map(|e| e.name.as_str())
}

/// Remembers the host interface once seen, and says when it is gone.
#[derive(Debug, Default)]
pub struct HostInterfaceWatch {
    seen: Option<String>,
}

impl HostInterfaceWatch {
    pub fn new() -> Self {
        HostInterfaceWatch::default()
    }

    /// The interface seen last, if any.
    pub fn seen(&self) -> Option<&str> {
        self.seen.as_deref()
    }

    /// Looks for `gateway` in `entries` (one `getifaddrs` reading); `false`
    /// once the interface that held it was seen before and no interface
    /// holds it now.
    pub fn observe(&mut self, entries: &[IfAddr], gateway: IpAddr) -> bool {
        match find_host_interface(entries, gateway) {
            Some(name) => {
                if self.seen.as_deref() != Some(name) {
                    self.seen = Some(name.to_owned());
                }
                true
            }
            None => self.seen.is_none(),
        }
    }
}

/// The first host interface address inside `subnet` (a network whose
/// subnet the host already uses elsewhere), as `en0 (192.168.107.5)`; vmnet
/// networks are checked before they are created, so none of them holds it.
pub fn subnet_collision(entries: &[IfAddr], subnet: &crate::config::Ipv4Subnet) -> Option<String> {
    entries.iter().find_map(|e| match e.addr {
        IpAddr::V4(a) if subnet.contains(a) => Some(format!("{} ({a})", e.name)),
        _ => None,
    })
}

/// What to report when the platform gave another subnet than the one asked
/// for (`vmnet_network_get_ipv4_subnet` read back after creation): `None`
/// when none was asked for or it was honoured.
pub fn subnet_changed(network: &str, asked: Option<crate::config::Ipv4Subnet>, got: &str) -> Option<String> {
    let asked = asked?;
    if asked.to_string() == got {
        return None;
    }
    Some(format!("network {network}: asked vmnet for subnet {asked}, vmnet chose {got} (the subnet may be in use on the host); VMs get addresses in {got}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_in_use_and_subnets_vmnet_changed_are_named() {
        let s: crate::config::Ipv4Subnet = "192.168.107.0/24".parse().unwrap();
        let entries = [entry("lo0", "127.0.0.1"), entry("en0", "fe80::1"), entry("en0", "192.168.107.5")];
        assert_eq!(subnet_collision(&entries, &s).as_deref(), Some("en0 (192.168.107.5)"));
        assert_eq!(subnet_collision(&entries[..2], &s), None);
        assert_eq!(subnet_changed("shared", Some(s), "192.168.107.1/24"), None);
        assert_eq!(subnet_changed("shared", None, "192.168.64.1/24"), None);
        let m = subnet_changed("shared", Some(s), "192.168.64.1/24").unwrap();
        assert!(m.starts_with("network shared: asked vmnet for subnet 192.168.107.1/24, vmnet chose 192.168.64.1/24"), "{m}");
    }

    fn entry(name: &str, addr: &str) -> IfAddr {
        IfAddr { name: name.into(), addr: addr.parse().unwrap() }
    }

    #[test]
    fn the_host_interface_is_the_one_holding_the_gateway() {
        let gw = gateway_of("192.168.107.1/24").unwrap();
        assert_eq!(gw, "192.168.107.1".parse::<IpAddr>().unwrap());
        // What getifaddrs lists on a Mac with two vmnet networks.
        let entries = vec![
            entry("lo0", "127.0.0.1"),
            entry("en0", "10.0.0.7"),
            entry("bridge100", "192.168.64.1"),
            entry("bridge101", "fe80::1"),
            entry("bridge101", "192.168.107.1"),
        ];
        assert_eq!(find_host_interface(&entries, gw), Some("bridge101"));
        assert_eq!(find_host_interface(&entries, gateway_of("192.168.200.1/24").unwrap()), None);
        assert_eq!(gateway_of("nonsense"), None);
    }

    #[test]
    fn a_network_is_gone_once_its_seen_interface_disappears() {
        let gw = gateway_of("192.168.107.1/24").unwrap();
        let mut watch = HostInterfaceWatch::new();
        let before = vec![entry("en0", "10.0.0.7")];
        assert!(watch.observe(&before, gw), "no port started yet: no bridge, still alive");
        let up = vec![entry("en0", "10.0.0.7"), entry("bridge101", "192.168.107.1")];
        assert!(watch.observe(&up, gw));
        assert_eq!(watch.seen(), Some("bridge101"));
        assert!(!watch.observe(&before, gw), "the bridge went: the network is gone");
        // Another name holding the address (vmnet made it again) is alive.
        assert!(watch.observe(&[entry("bridge102", "192.168.107.1")], gw));
        assert_eq!(watch.seen(), Some("bridge102"));
    }
}
