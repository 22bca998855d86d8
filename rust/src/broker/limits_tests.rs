//! Every limit of `config/limits.rs` (name length, subnet prefix, MTU,
//! ports, MACs) driven through the four places that judge it: the
//! configuration check, a broker request (the request's name, MAC and
//! network configuration), the Linux plan and the macOS mapping. At each
//! boundary all of them accept or all refuse.

use serde_json::json;

use super::{netconfig, protocol};
use crate::config::{
    self, DhcpReservation, FileConfig, NetworkConfig, PortForward, AddressFamily, Protocol, MTU_MAX, MTU_MIN,
    NETWORK_NAME_MAX, SUBNET_PREFIX_MAX, SUBNET_PREFIX_MIN,
};
use crate::vmnet::mapping;

/// What each judge said about one value: (judge, accepted).
type Verdicts = Vec<(&'static str, bool)>;

fn assert_agree(value: &str, expected: bool, verdicts: Verdicts) {
    for (judge, ok) in &verdicts {
        assert_eq!(*ok, expected, "{judge} {} {value}; all: {verdicts:?}", if *ok { "accepts" } else { "refuses" });
    }
}

/// A configuration built in code, not validated: what a platform gets.
fn raw(subnet: &str) -> NetworkConfig {
    NetworkConfig { subnet: Some(subnet.to_string()), ..NetworkConfig::lima_default() }
}

fn config_accepts(entry: serde_json::Value, name: &str) -> bool {
    FileConfig::from_value(&json!({ "vmnet": { name: entry } }), "limits.yaml").is_ok()
}

fn request_accepts(entry: &serde_json::Value, name: &str) -> bool {
    protocol::check_network_name(name).is_ok() && netconfig::parse_json(entry.to_string().as_bytes(), name, true).is_ok()
}

#[cfg(target_os = "linux")]
fn linux_accepts(name: &str, cfg: &NetworkConfig) -> bool {
    // As the Linux backend does: the typed subnet first, then the plan.
    match cfg.ipv4_subnet() {
        Ok(Some(v4)) => crate::vmnet::linux::plan::Plan::new(name, cfg, v4, &[]).is_ok(),
        _ => false,
    }
}

#[cfg(not(target_os = "linux"))]
fn linux_accepts(_name: &str, _cfg: &NetworkConfig) -> bool {
    unreachable!("judged only on Linux")
}

fn macos_accepts(cfg: &NetworkConfig) -> bool {
    mapping::configuration_steps(cfg).is_ok()
}

fn judge(name: &str, entry: serde_json::Value, cfg: &NetworkConfig) -> Verdicts {
    let mut v = vec![
        ("config check", config_accepts(entry.clone(), name)),
        ("broker request", request_accepts(&entry, name)),
        ("macOS mapping", macos_accepts(cfg)),
    ];
    if cfg!(target_os = "linux") {
        v.push(("Linux plan", linux_accepts(name, cfg)));
    }
    v
}

#[test]
fn name_length() {
    let cfg = raw("10.0.0.1/24");
    let entry = json!({ "subnet": "10.0.0.0/24" });
    for (name, ok) in [
        ("a".repeat(NETWORK_NAME_MAX), true),
        ("a".repeat(NETWORK_NAME_MAX + 1), false),
        (String::new(), false),
        ("a".to_string(), true),
        ("-lab".to_string(), false),
        ("lab/x".to_string(), false),
    ] {
        // vmnet networks have no name; the mapping never sees it.
        let mut v = vec![
            ("config check", config_accepts(entry.clone(), &name)),
            ("broker request", request_accepts(&entry, &name)),
        ];
        if cfg!(target_os = "linux") {
            v.push(("Linux plan", linux_accepts(&name, &cfg)));
        }
        assert_agree(&format!("name {name:?}"), ok, v);
    }
}

#[test]
fn subnet_prefix() {
    for (prefix, ok) in [
        (SUBNET_PREFIX_MIN - 1, false),
        (SUBNET_PREFIX_MIN, true),
        (24, true),
        (SUBNET_PREFIX_MAX, true),
        (SUBNET_PREFIX_MAX + 1, false),
    ] {
        let entry = json!({ "subnet": format!("10.0.0.0/{prefix}") });
        let v = judge("lab", entry, &raw(&format!("10.0.0.1/{prefix}")));
        assert_agree(&format!("prefix /{prefix}"), ok, v);
    }
}

#[test]
fn mtu() {
    for (mtu, ok) in [(MTU_MIN - 1, false), (MTU_MIN, true), (1500, true), (MTU_MAX, true), (MTU_MAX + 1, false)] {
        let entry = json!({ "subnet": "10.0.0.0/24", "mtu": mtu });
        let v = judge("lab", entry, &NetworkConfig { mtu, ..raw("10.0.0.1/24") });
        assert_agree(&format!("mtu {mtu}"), ok, v);
    }
}

#[test]
fn ports() {
    for (port, ok) in [(0u16, false), (config::PORT_MIN, true), (8080, true), (config::PORT_MAX, true)] {
        let entry = json!({ "subnet": "10.0.0.0/24", "portForwarding": [
            { "protocol": "tcp", "externalPort": port, "internalAddress": "10.0.0.5", "internalPort": port }
        ] });
        let cfg = NetworkConfig {
            port_forwarding: vec![PortForward {
                protocol: Protocol::Tcp,
                external_port: port,
                internal_address: "10.0.0.5".into(),
                internal_port: port,
                address_family: AddressFamily::Ipv4,
            }],
            ..raw("10.0.0.1/24")
        };
        assert_agree(&format!("port {port}"), ok, judge("lab", entry, &cfg));
    }
    // One past the largest port does not fit the typed value; the two text judges refuse it.
    let entry = json!({ "subnet": "10.0.0.0/24", "portForwarding": [
        { "protocol": "tcp", "externalPort": 65536, "internalAddress": "10.0.0.5" }
    ] });
    assert_agree("port 65536", false, vec![
        ("config check", config_accepts(entry.clone(), "lab")),
        ("broker request", request_accepts(&entry, "lab")),
    ]);
}

#[test]
fn macs() {
    for (mac, ok) in [
        ("52:54:00:12:34:56", true),
        ("02:00:00:00:00:01", true),
        ("01:00:5e:00:00:01", false),
        ("00:00:00:00:00:00", false),
        ("52:54:00:12:34", false),
    ] {
        let entry = json!({ "subnet": "10.0.0.0/24", "dhcpReservations": [{ "mac": mac, "address": "10.0.0.5" }] });
        let cfg = NetworkConfig {
            dhcp_reservations: vec![DhcpReservation { mac: mac.into(), address: "10.0.0.5".into() }],
            ..raw("10.0.0.1/24")
        };
        let mut v = judge("lab", entry, &cfg);
        // A VM's MAC in an open request.
        v.push(("open request mac", protocol::parse_mac(mac).is_ok()));
        assert_agree(&format!("mac {mac}"), ok, v);
    }
}
