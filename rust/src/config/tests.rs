//! Unit tests for configuration reading and validation: one per rule, each
//! asserting the exact message.

use super::*;
use serde_json::json;

const SRC: &str = "networks.yaml";

fn file(v: Value) -> Result<FileConfig, ConfigError> {
    FileConfig::from_value(&v, SRC)
}

fn net(v: Value) -> Result<NetworkConfig, ConfigError> {
    NetworkConfig::from_value(&v, SRC, "lab")
}

/// The problems reading a single network `lab` with the given keys.
fn problems(v: Value) -> Vec<String> {
    net(v).expect_err("should be refused").lines().map(String::from).collect()
}

fn one(v: Value) -> String {
    let p = problems(v);
    assert_eq!(p.len(), 1, "{p:#?}");
    p.into_iter().next().unwrap()
}

const PFX: &str = "networks.yaml: network \"lab\": ";

#[test]
fn empty_entry_gets_lima_defaults() {
    assert_eq!(net(json!({})).unwrap(), NetworkConfig::lima_default());
    assert_eq!(net(json!({"subnet": null, "mtu": null})).unwrap(), NetworkConfig::lima_default());
}

#[test]
fn host_mode_defaults_to_no_router_advertisement() {
    let cfg = net(json!({"mode": "host"})).unwrap();
    assert_eq!(cfg, NetworkConfig::lima_default_for(Mode::Host));
    assert!(!cfg.router_advertisement);
    assert!(net(json!({"mode": "host", "routerAdvertisement": true})).unwrap().router_advertisement);
}

#[test]
fn builtins_and_defaults() {
    let f = file(json!({})).unwrap();
    assert_eq!(f, FileConfig::default());
    assert_eq!(f.network("shared").unwrap().subnet.map(|s| s.to_string()).as_deref(), Some("192.168.107.1/24"));
    let host = f.network("host").unwrap();
    assert_eq!((host.mode, host.router_advertisement), (Mode::Host, false));
    assert_eq!(f.broker.idle_timeout, 120);
    assert_eq!(f.broker.allowed_users, vec!["root"]);
    assert_eq!(f.broker.allowed_groups, vec!["vmnet-rs"]);
    assert_eq!(f.broker.socket, "/run/vmnet-rs/broker.sock");
    assert_eq!(f.broker.mach_service, "io.github.vmnet-rs.broker");
}

#[test]
fn redefining_a_builtin_replaces_it() {
    let f = file(json!({"vmnet": {"shared": {"subnet": "192.168.200.0/24", "mtu": 9000}}})).unwrap();
    let shared = f.network("shared").unwrap();
    assert_eq!(shared.subnet.map(|s| s.to_string()).as_deref(), Some("192.168.200.1/24"));
    assert_eq!(shared.mtu, 9000);
    assert_eq!(f.network("host"), Some(&NetworkConfig::builtin_host()));
}

#[test]
fn lima_keys_are_ignored_at_the_top() {
    let f = file(json!({
        "paths": {"socketVMNet": "/opt/socket_vmnet/bin/socket_vmnet"},
        "group": "everyone",
        "networks": {"bridged": {"mode": "bridged", "interface": "en0"}},
        "vmnet": {"shared": {"mode": "shared", "subnet": "192.168.107.0/24"}}
    }))
    .unwrap();
    assert_eq!(f, FileConfig::default());
}

#[test]
fn subnet_network_address_is_normalised_first_host_kept() {
    assert_eq!(net(json!({"subnet": "10.9.0.0/16"})).unwrap().subnet.map(|s| s.to_string()).as_deref(), Some("10.9.0.1/16"));
    assert_eq!(net(json!({"subnet": "10.9.0.1/16"})).unwrap().subnet.map(|s| s.to_string()).as_deref(), Some("10.9.0.1/16"));
}

#[test]
fn subnet_other_host_address_is_refused() {
    assert_eq!(
        one(json!({"subnet": "192.168.50.7/24"})),
        format!("{PFX}key \"subnet\": \"192.168.50.7/24\" is neither the network address nor its first host; use \"192.168.50.0/24\" (the gateway is then the first host)")
    );
}

#[test]
fn bad_cidr() {
    assert_eq!(
        one(json!({"subnet": "192.168.50/24"})),
        format!("{PFX}key \"subnet\": \"192.168.50/24\" is not an IPv4 subnet; use a network address and prefix length like \"192.168.107.0/24\"")
    );
}

#[test]
fn subnet_too_small_or_too_large() {
    assert_eq!(
        one(json!({"subnet": "192.168.50.0/30"})),
        format!("{PFX}key \"subnet\": \"192.168.50.0/30\" is too small: a /30 leaves no room for the gateway, DHCP and VMs; use a prefix length of 8..29 (/24 is usual)")
    );
    assert!(net(json!({"subnet": "192.168.50.0/29"})).is_ok());
    assert_eq!(
        one(json!({"subnet": "10.0.0.0/7"})),
        format!("{PFX}key \"subnet\": \"10.0.0.0/7\" is too large: /7; use a prefix length of 8..29 (/24 is usual)")
    );
}

#[test]
fn subnet_must_be_private() {
    assert_eq!(
        one(json!({"subnet": "8.8.8.0/24"})),
        format!("{PFX}key \"subnet\": \"8.8.8.0/24\" is not a private (RFC 1918) range; use one inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16")
    );
    assert_eq!(
        one(json!({"subnet": "192.168.0.0/15"})),
        format!("{PFX}key \"subnet\": \"192.168.0.0/15\" reaches outside the private (RFC 1918) ranges; use one inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16")
    );
}

#[test]
fn mtu_range() {
    assert_eq!(one(json!({"mtu": 70000})), format!("{PFX}key \"mtu\": 70000 is out of range; use 1280..9000"));
    assert_eq!(one(json!({"mtu": 1279})), format!("{PFX}key \"mtu\": 1279 is out of range; use 1280..9000"));
    assert_eq!(one(json!({"mtu": -1})), format!("{PFX}key \"mtu\": -1 is out of range; use 1280..9000"));
    assert_eq!(net(json!({"mtu": 0})).unwrap().mtu, 1500);
    assert_eq!(net(json!({"mtu": 9000})).unwrap().mtu, 9000);
    assert_eq!(net(json!({"mtu": 1280})).unwrap().mtu, 1280);
}

#[test]
fn wrong_types() {
    assert_eq!(one(json!({"mtu": "big"})), format!("{PFX}key \"mtu\": \"big\" is a string; use an integer in 1280..9000"));
    assert_eq!(one(json!({"mtu": 1500.5})), format!("{PFX}key \"mtu\": 1500.5 is a decimal number; use an integer in 1280..9000"));
    assert_eq!(one(json!({"dhcp": "yes"})), format!("{PFX}key \"dhcp\": \"yes\" is a string; use true or false"));
    assert_eq!(one(json!({"nat44": 1})), format!("{PFX}key \"nat44\": 1 is an integer; use true or false"));
    assert_eq!(one(json!({"mode": 3})), format!("{PFX}key \"mode\": 3 is an integer; use \"shared\" or \"host\""));
    assert_eq!(one(json!({"mode": "bridged"})), format!("{PFX}key \"mode\": \"bridged\" is not a mode vmnet-rs offers; use \"shared\" or \"host\""));
    assert_eq!(
        one(json!({"subnet": ["192.168.1.0/24"]})),
        format!("{PFX}key \"subnet\": [\"192.168.1.0/24\"] is a list; use a network address and prefix length like \"192.168.107.0/24\"")
    );
    assert_eq!(
        one(json!({"portForwarding": {"protocol": "tcp"}})),
        format!("{PFX}key \"portForwarding\": {{\"protocol\":\"tcp\"}} is a mapping; use a list of mappings with protocol, externalPort, internalAddress and internalPort")
    );
    assert_eq!(
        problems(json!("shared")),
        vec!["networks.yaml: network \"lab\": \"shared\" is a string; use a mapping of settings such as mode and subnet".to_string()]
    );
}

#[test]
fn unknown_keys_suggest_the_closest() {
    let all = "allowed keys: mode, dhcp, dnsProxy, mtu, nat44, nat66, routerAdvertisement, subnet, ipv6Prefix, portForwarding, dhcpReservations, addresses, externalInterface, domain, isolation, offload, endpoints, allowedUsers, allowedGroups";
    assert_eq!(one(json!({"mtuu": 1500})), format!("{PFX}key \"mtuu\": unknown key (did you mean \"mtu\"?); {all}"));
    assert_eq!(one(json!({"dns_proxy": true})), format!("{PFX}key \"dns_proxy\": unknown key (did you mean \"dnsProxy\"?); {all}"));
    assert_eq!(one(json!({"routerAdvertisment": true})), format!("{PFX}key \"routerAdvertisment\": unknown key (did you mean \"routerAdvertisement\"?); {all}"));
    assert_eq!(one(json!({"colour": "blue"})), format!("{PFX}key \"colour\": unknown key; {all}"));
}

#[test]
fn several_problems_are_all_reported() {
    let p = problems(json!({"mtu": 1, "dhcp": 2, "bogus": 3}));
    assert_eq!(p.len(), 3, "{p:#?}");
}

#[test]
fn an_unreadable_key_is_reported_once() {
    // The subnet is the wrong type; the reservation that depends on it is not
    // reported again as "no subnet".
    assert_eq!(
        problems(json!({"subnet": 24, "dhcpReservations": [{"mac": "52:54:00:00:00:01", "address": "192.168.50.9"}]})),
        vec![format!("{PFX}key \"subnet\": 24 is an integer; use a network address and prefix length like \"192.168.107.0/24\"")]
    );
    assert_eq!(
        problems(json!({"mode": "bridge", "externalInterface": "en0"})),
        vec![format!("{PFX}key \"mode\": \"bridge\" is not a mode vmnet-rs offers; use \"shared\" or \"host\"")]
    );
}

#[test]
fn an_unknown_key_does_not_hide_mode_checks() {
    let p = problems(json!({"bogus": 1, "mode": "host", "externalInterface": "en0"}));
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(p[1].contains("externalInterface needs mode"), "{p:#?}");
}

#[test]
fn overlapping_subnets() {
    let err = file(json!({"vmnet": {
        "a": {"subnet": "10.1.0.0/16"},
        "b": {"subnet": "10.1.5.0/24"},
    }}))
    .unwrap_err();
    assert_eq!(
        err.message,
        "networks.yaml: network \"b\": key \"subnet\": \"10.1.5.0/24\" overlaps 10.1.0.0/16 of network \"a\"; give each network its own subnet"
    );
}

#[test]
fn overlap_with_a_builtin_is_reported_on_the_users_network() {
    let err = file(json!({"vmnet": {"lab": {"subnet": "192.168.108.0/24"}}})).unwrap_err();
    assert_eq!(
        err.message,
        "networks.yaml: network \"lab\": key \"subnet\": \"192.168.108.0/24\" overlaps 192.168.108.1/24 of built-in network \"host\" (redefine it under vmnet to move it); give each network its own subnet"
    );
}

#[test]
fn overlapping_ipv6_prefixes() {
    let err = file(json!({"vmnet": {
        "a": {"ipv6Prefix": "fd00:1::/64", "subnet": "10.1.0.0/24"},
        "b": {"ipv6Prefix": "fd00:1:0:0::/64", "subnet": "10.2.0.0/24"},
    }}))
    .unwrap_err();
    assert_eq!(
        err.message,
        "networks.yaml: network \"b\": key \"ipv6Prefix\": \"fd00:1:0:0::/64\" overlaps fd00:1::/64 of network \"a\"; give each network its own prefix"
    );
}

#[test]
fn ipv6_prefix_rules() {
    assert_eq!(net(json!({"ipv6Prefix": "FD00:0:0:1::/64"})).unwrap().ipv6_prefix.map(|s| s.to_string()).as_deref(), Some("fd00:0:0:1::/64"));
    assert_eq!(
        one(json!({"ipv6Prefix": "2001:db8::/64"})),
        format!("{PFX}key \"ipv6Prefix\": \"2001:db8::/64\" is not a unique local /64; use a /64 inside fc00::/7, like \"fd00:1:2:3::/64\"")
    );
    assert_eq!(
        one(json!({"ipv6Prefix": "fd00::/48"})),
        format!("{PFX}key \"ipv6Prefix\": \"fd00::/48\" is not a unique local /64; use a /64 inside fc00::/7, like \"fd00:1:2:3::/64\"")
    );
    assert_eq!(
        one(json!({"ipv6Prefix": "fd00::1/64"})),
        format!("{PFX}key \"ipv6Prefix\": \"fd00::1/64\" has bits set after the prefix length; use \"fd00::/64\"")
    );
    assert_eq!(
        one(json!({"ipv6Prefix": "fd00::"})),
        format!("{PFX}key \"ipv6Prefix\": \"fd00::\" is not an IPv6 prefix; use a unique local /64 like \"fd00:1:2:3::/64\"")
    );
}

fn with_reservation(mac: &str, address: &str) -> Value {
    json!({"subnet": "192.168.50.0/24", "dhcpReservations": [{"mac": mac, "address": address}]})
}

#[test]
fn reservations_are_normalised() {
    let cfg = net(with_reservation("52-54-00-AB-CD-EF", "192.168.50.10")).unwrap();
    assert_eq!(cfg.dhcp_reservations, vec![DhcpReservation { mac: "52:54:00:ab:cd:ef".parse().unwrap(), address: "192.168.50.10".parse().unwrap() }]);
    assert_eq!(cfg.reservations(), vec![([0x52, 0x54, 0, 0xab, 0xcd, 0xef], Ipv4Addr::new(192, 168, 50, 10))]);
}

#[test]
fn reservation_outside_subnet_or_on_gateway() {
    assert_eq!(
        one(with_reservation("52:54:00:00:00:01", "192.168.51.10")),
        format!("{PFX}key \"dhcpReservations[0].address\": \"192.168.51.10\" is outside the subnet 192.168.50.1/24; use an address from 192.168.50.2 to 192.168.50.254")
    );
    assert_eq!(
        one(with_reservation("52:54:00:00:00:01", "192.168.50.1")),
        format!("{PFX}key \"dhcpReservations[0].address\": \"192.168.50.1\" is the gateway (the host's own address); use an address from 192.168.50.2 to 192.168.50.254")
    );
    assert_eq!(
        one(with_reservation("52:54:00:00:00:01", "192.168.50.255")),
        format!("{PFX}key \"dhcpReservations[0].address\": \"192.168.50.255\" is the broadcast address; use an address from 192.168.50.2 to 192.168.50.254")
    );
    assert_eq!(
        one(with_reservation("52:54:00:00:00:01", "192.168.50.x")),
        format!("{PFX}key \"dhcpReservations[0].address\": \"192.168.50.x\" is not an IPv4 address; use one inside the subnet")
    );
}

#[test]
fn reservation_needs_subnet_and_dhcp() {
    assert_eq!(
        one(json!({"dhcpReservations": [{"mac": "52:54:00:00:00:01", "address": "192.168.50.9"}]})),
        format!("{PFX}key \"dhcpReservations[0].address\": \"192.168.50.9\" cannot be reserved: the network has no subnet; set \"subnet\" so the address range is fixed")
    );
    assert_eq!(
        one(json!({"dhcp": false, "subnet": "192.168.50.0/24", "dhcpReservations": [{"mac": "52:54:00:00:00:01", "address": "192.168.50.9"}]})),
        format!("{PFX}key \"dhcpReservations\": is set but dhcp is false; reservations need dhcp: true")
    );
}

#[test]
fn bad_mac() {
    assert_eq!(
        one(with_reservation("52:54:00:00:01", "192.168.50.9")),
        format!("{PFX}key \"dhcpReservations[0].mac\": \"52:54:00:00:01\" is not a MAC address; use six hex pairs like \"52:54:00:12:34:56\"")
    );
    assert_eq!(
        one(with_reservation("01:00:5e:00:00:01", "192.168.50.9")),
        format!("{PFX}key \"dhcpReservations[0].mac\": \"01:00:5e:00:00:01\" is not a unicast MAC address; use one whose first byte is even, like \"52:54:00:12:34:56\"")
    );
}

#[test]
fn duplicate_reservations() {
    let p = problems(json!({"subnet": "192.168.50.0/24", "dhcpReservations": [
        {"mac": "52:54:00:00:00:01", "address": "192.168.50.9"},
        {"mac": "52:54:00:00:00:01", "address": "192.168.50.9"},
    ]}));
    assert_eq!(p, vec![
        format!("{PFX}key \"dhcpReservations[1].mac\": \"52:54:00:00:00:01\" is already reserved by dhcpReservations[0]; give each MAC one reservation"),
        format!("{PFX}key \"dhcpReservations[1].address\": \"192.168.50.9\" is already reserved by dhcpReservations[0]; give each reservation its own address"),
    ]);
}

#[test]
fn reservation_missing_and_unknown_keys() {
    let p = problems(json!({"subnet": "192.168.50.0/24", "dhcpReservations": [{"mack": "52:54:00:00:00:01"}]}));
    assert_eq!(p, vec![
        format!("{PFX}key \"dhcpReservations[0].mack\": unknown key (did you mean \"mac\"?); allowed keys: mac, address"),
        format!("{PFX}key \"dhcpReservations[0].mac\": missing; use a MAC address like \"52:54:00:12:34:56\""),
        format!("{PFX}key \"dhcpReservations[0].address\": missing; use an IPv4 address inside the subnet"),
    ]);
}

fn forward(pf: Value) -> Value {
    json!({"subnet": "192.168.50.0/24", "ipv6Prefix": "fd00:50::/64", "portForwarding": [pf]})
}

#[test]
fn port_forward_defaults_and_family() {
    let cfg = net(forward(json!({"protocol": "tcp", "externalPort": 2222, "internalAddress": "192.168.50.10"}))).unwrap();
    assert_eq!(cfg.port_forwarding, vec![PortForward {
        protocol: Protocol::Tcp,
        external_port: 2222,
        internal_address: "192.168.50.10".parse().unwrap(),
        internal_port: 2222,
        address_family: AddressFamily::Ipv4,
    }]);
    let cfg = net(forward(json!({"protocol": "udp", "externalPort": 53, "internalAddress": "FD00:50::0010", "internalPort": 5353}))).unwrap();
    assert_eq!(cfg.port_forwarding[0].address_family, AddressFamily::Ipv6);
    assert_eq!(cfg.port_forwarding[0].internal_address.to_string(), "fd00:50::10");
}

#[test]
fn port_range() {
    assert_eq!(
        one(forward(json!({"protocol": "tcp", "externalPort": 70000, "internalAddress": "192.168.50.10"}))),
        format!("{PFX}key \"portForwarding[0].externalPort\": 70000 is out of range; use 1..65535")
    );
    assert_eq!(
        one(forward(json!({"protocol": "tcp", "externalPort": 22, "internalPort": 0, "internalAddress": "192.168.50.10"}))),
        format!("{PFX}key \"portForwarding[0].internalPort\": 0 is out of range; use 1..65535")
    );
}

#[test]
fn port_forward_address_checks() {
    assert_eq!(
        one(forward(json!({"protocol": "tcp", "externalPort": 22, "internalAddress": "192.168.9.10"}))),
        format!("{PFX}key \"portForwarding[0].internalAddress\": \"192.168.9.10\" is outside the subnet 192.168.50.1/24; use a VM's address from 192.168.50.2 to 192.168.50.254")
    );
    assert_eq!(
        one(forward(json!({"protocol": "tcp", "externalPort": 22, "internalAddress": "192.168.50.10", "addressFamily": "ipv6"}))),
        format!("{PFX}key \"portForwarding[0].internalAddress\": \"192.168.50.10\" is not an IPv6 address; use a VM's address inside ipv6Prefix (or set addressFamily: ipv4)")
    );
    assert_eq!(
        one(forward(json!({"protocol": "sctp", "externalPort": 22, "internalAddress": "192.168.50.10"}))),
        format!("{PFX}key \"portForwarding[0].protocol\": \"sctp\" is not a protocol; use \"tcp\" or \"udp\"")
    );
}

#[test]
fn duplicate_external_ports() {
    let p = problems(json!({"subnet": "192.168.50.0/24", "portForwarding": [
        {"protocol": "tcp", "externalPort": 8080, "internalAddress": "192.168.50.10"},
        {"protocol": "udp", "externalPort": 8080, "internalAddress": "192.168.50.10"},
        {"protocol": "tcp", "externalPort": 8080, "internalAddress": "192.168.50.11", "internalPort": 80},
    ]}));
    assert_eq!(p, vec![format!(
        "{PFX}key \"portForwarding[2].externalPort\": 8080 tcp/ipv4 is already forwarded by portForwarding[0]; forward each host port once"
    )]);
    let err = file(json!({"vmnet": {
        "a": {"subnet": "10.1.0.0/24", "portForwarding": [{"protocol": "tcp", "externalPort": 80, "internalAddress": "10.1.0.5"}]},
        "b": {"subnet": "10.2.0.0/24", "portForwarding": [{"protocol": "tcp", "externalPort": 80, "internalAddress": "10.2.0.5"}]},
    }}))
    .unwrap_err();
    assert_eq!(
        err.message,
        "networks.yaml: network \"b\": key \"portForwarding[0].externalPort\": 80 tcp/ipv4 is already forwarded by network \"a\" portForwarding[0]; forward each host port once"
    );
}

#[test]
fn port_forwarding_needs_shared_mode() {
    assert_eq!(
        one(json!({"mode": "host", "subnet": "192.168.50.0/24", "portForwarding": [{"protocol": "tcp", "externalPort": 22, "internalAddress": "192.168.50.10"}]})),
        format!("{PFX}key \"portForwarding\": is set but mode is \"host\"; port forwarding needs mode \"shared\" (in host mode the host reaches VMs directly)")
    );
}

#[test]
fn external_interface_only_in_shared_mode() {
    assert_eq!(net(json!({"externalInterface": "en0"})).unwrap().external_interface.as_deref(), Some("en0"));
    assert_eq!(
        one(json!({"mode": "host", "externalInterface": "en0"})),
        format!("{PFX}key \"externalInterface\": \"en0\" is set but mode is \"host\"; externalInterface needs mode \"shared\" (remove it or change the mode)")
    );
    assert_eq!(
        one(json!({"externalInterface": "a very long name"})),
        format!("{PFX}key \"externalInterface\": \"a very long name\" is not an interface name; use 1 to 15 letters, digits, \"-\", \"_\" or \".\", like \"en0\"")
    );
}

#[test]
fn domain_is_a_dns_domain() {
    assert_eq!(net(json!({"domain": "lab.vmnet.internal"})).unwrap().domain(), Some("lab.vmnet.internal"));
    assert_eq!(net(json!({})).unwrap().domain(), None);
    for bad in ["Lab.internal", "a..b", "-a.internal", "", "a b"] {
        let msg = one(json!({"domain": bad}));
        assert!(msg.starts_with(&format!("{PFX}key \"domain\": ")) && msg.contains("is not a DNS domain"), "{bad}: {msg}");
    }
}

#[test]
fn network_names() {
    let err = file(json!({"vmnet": {"bad name": {}}})).unwrap_err();
    assert_eq!(
        err.message,
        "networks.yaml: network \"bad name\": invalid network name; use 1 to 63 letters, digits, \"-\", \"_\" or \".\", starting with a letter or digit"
    );
}

#[test]
fn top_level_errors() {
    assert_eq!(
        file(json!({"vmnett": {}})).unwrap_err().message,
        "networks.yaml: key \"vmnett\": unknown key (did you mean \"vmnet\"?); allowed keys: vmnet, broker (Lima's paths, group, networks are read and ignored)"
    );
    assert_eq!(
        file(json!([1])).unwrap_err().message,
        "networks.yaml: the file holds a list; use a mapping with a \"vmnet\" section of networks (and optionally \"broker\")"
    );
    assert_eq!(
        file(json!({"vmnet": ["shared"]})).unwrap_err().message,
        "networks.yaml: key \"vmnet\": [\"shared\"] is a list; use a mapping of network names to their settings"
    );
    assert_eq!(
        FileConfig::from_json("{", SRC).unwrap_err().message,
        "networks.yaml: not valid JSON: EOF while parsing an object at line 1 column 1"
    );
}

#[test]
fn broker_settings() {
    let f = file(json!({"broker": {"idleTimeout": 30, "allowedUsers": ["alice", 1000], "allowedGroups": [], "clientNetworks": "restricted", "maxPortsPerUser": 8, "socket": "/tmp/b.sock", "machService": "com.example.vmnet"}})).unwrap();
    assert_eq!(f.broker, BrokerSettings {
        idle_timeout: 30,
        allowed_users: vec!["alice".into(), "1000".into()],
        allowed_groups: vec![],
        client_networks: ClientNetworks::Restricted,
        max_ports_per_user: 8,
        socket: "/tmp/b.sock".into(),
        mach_service: "com.example.vmnet".into(),
        endpoint_dir: String::new(),
        data_dir: String::new(),
        repair: RepairSettings::default(),
    });
    assert_eq!(file(json!({"broker": {"idleTimeout": 0}})).unwrap().broker.idle_timeout, 0);
    let err = file(json!({"broker": {"idleTimeout": -1, "allowedUsers": "root", "socket": "relative.sock", "machService": "no spaces allowed", "idle": 1}})).unwrap_err();
    let p: Vec<&str> = err.lines().collect();
    assert_eq!(p, vec![
        "networks.yaml: broker: key \"idle\": unknown key (did you mean \"idleTimeout\"?); allowed keys: idleTimeout, allowedUsers, allowedGroups, clientNetworks, maxPortsPerUser, socket, machService, endpointDir, dataDir, repair",
        "networks.yaml: broker: key \"idleTimeout\": -1 is out of range; use 0..4294967295 (seconds; 0 never times out)",
        "networks.yaml: broker: key \"allowedUsers\": \"root\" is a string; use a list of user names or numeric ids",
        "networks.yaml: broker: key \"socket\": \"relative.sock\" is not an absolute path of at most 107 bytes; use one like \"/run/vmnet-rs/broker.sock\"",
        "networks.yaml: broker: key \"machService\": \"no spaces allowed\" is not a Mach service name; use a reverse-DNS name like \"io.github.vmnet-rs.broker\"",
    ]);
}

#[test]
fn lima_request_json_takes_defaults() {
    // Lima's Go struct omits unset fields; some versions send empty strings.
    let cfg = NetworkConfig::from_lima_json(r#"{"mode":"host","subnet":"192.168.108.0/24","routerAdvertisement":false}"#, "request", "host").unwrap();
    assert_eq!(cfg, NetworkConfig::builtin_host());
    let cfg = NetworkConfig::from_lima_json(r#"{"mode":"","subnet":"","mtu":0,"dhcp":null}"#, "request", "x").unwrap();
    assert_eq!(cfg, NetworkConfig::lima_default());
    let err = NetworkConfig::from_lima_json(r#"{"mtu":65536}"#, "request", "x").unwrap_err();
    assert_eq!(err.message, "request: network \"x\": key \"mtu\": 65536 is out of range; use 1280..9000");
}

#[test]
fn json_round_trip_is_lossless() {
    let f = file(json!({
        "broker": {"idleTimeout": 60},
        "vmnet": {"lab": {
            "subnet": "10.20.0.0/16", "ipv6Prefix": "fd00:20::/64", "mtu": 9000, "offload": true,
            "isolation": true, "externalInterface": "en1",
            "portForwarding": [{"protocol": "tcp", "externalPort": 2222, "internalAddress": "10.20.0.5", "internalPort": 22}],
            "dhcpReservations": [{"mac": "52:54:00:00:00:05", "address": "10.20.0.5"}],
        }}
    }))
    .unwrap();
    let text = f.to_json();
    let again = FileConfig::from_json(&text, "again").unwrap();
    assert_eq!(again, f);
    assert_eq!(again.to_json(), text);
    let lab = f.network("lab").unwrap();
    assert_eq!(NetworkConfig::from_json(&lab.to_json(), "x", "lab").unwrap(), *lab);
}

#[test]
fn differences_name_each_key() {
    let a = NetworkConfig::builtin_shared();
    assert!(a.differences(&a).is_empty());
    let b = NetworkConfig { mtu: 9000, subnet: None, ..a.clone() };
    assert_eq!(a.differences(&b), vec![
        "mtu: 1500 != 9000".to_string(),
        "subnet: \"192.168.107.1/24\" != null".to_string(),
    ]);
}

#[test]
fn validated_checks_code_built_configs() {
    let bad = NetworkConfig { mtu: 100, ..NetworkConfig::builtin_shared() };
    assert_eq!(
        bad.validated("code", "x").unwrap_err().message,
        "code: network \"x\": key \"mtu\": 100 is out of range; use 1280..9000"
    );
    let ok = NetworkConfig { subnet: Some("10.0.0.0/24".parse().unwrap()), ..NetworkConfig::builtin_shared() };
    assert_eq!(ok.validated("code", "x").unwrap().subnet.map(|s| s.to_string()).as_deref(), Some("10.0.0.1/24"));
}

#[test]
fn did_you_mean_only_when_close() {
    assert_eq!(read::did_you_mean("sbnet", NETWORK_KEYS), Some("subnet"));
    assert_eq!(read::did_you_mean("NAT44", NETWORK_KEYS), Some("nat44"));
    assert_eq!(read::did_you_mean("zzz", NETWORK_KEYS), None);
}

/// A small deterministic generator of JSON values built from the config's
/// own keys and plausible-but-wrong values, for the no-panic test below.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }

    fn value(&mut self, depth: u32) -> Value {
        const STRINGS: &[&str] = &[
            "", "shared", "host", "tcp", "udp", "ipv4", "ipv6", "192.168.1.0/24", "10.0.0.1/8", "10.0.0.7",
            "192.168.1.300", "fd00::/64", "fd00::1", "::/0", "0.0.0.0/0", "255.255.255.255/32", "52:54:00:00:00:01",
            "ff:ff:ff:ff:ff:ff", "en0", "/run/x.sock", "a.b", "\u{0}", "é",
        ];
        let all_keys: Vec<&str> = NETWORK_KEYS
            .iter()
            .chain(PORT_FORWARD_KEYS)
            .chain(DHCP_RESERVATION_KEYS)
            .chain(BROKER_KEYS)
            .chain(TOP_KEYS)
            .copied()
            .collect();
        match self.next() % if depth == 0 { 5 } else { 7 } {
            0 => Value::Null,
            1 => Value::Bool(self.next().is_multiple_of(2)),
            2 => json!([0i64, 1, 22, 1280, 1500, 9000, 65535, 65536, -1, i64::MAX][(self.next() % 10) as usize]),
            3 => json!(self.next() as f64 / 7.0),
            4 => Value::String(self.pick(STRINGS).to_string()),
            5 => Value::Array((0..self.next() % 4).map(|_| self.value(depth - 1)).collect()),
            _ => Value::Object(
                (0..self.next() % 6).map(|_| (self.pick(&all_keys).to_string(), self.value(depth - 1))).collect(),
            ),
        }
    }
}

#[test]
fn arbitrary_input_never_panics_and_accepted_input_is_stable() {
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let network = g.value(3);
        if let Ok(cfg) = NetworkConfig::from_value(&network, SRC, "n") {
            accepted += 1;
            let again = NetworkConfig::from_json(&cfg.to_json(), SRC, "n").expect("normalised output reads back");
            assert_eq!(again, cfg);
        }
        let _ = NetworkConfig::from_lima_json(&network.to_string(), SRC, "n");
        let doc = json!({"vmnet": {"a": network, "b": g.value(3)}, "broker": g.value(2)});
        if let Ok(f) = FileConfig::from_value(&doc, SRC) {
            assert_eq!(FileConfig::from_json(&f.to_json(), SRC).unwrap(), f);
        }
    }
    assert!(accepted > 0, "the generator should produce some valid networks");
}

#[test]
fn endpoints_key_and_endpoint_dir() {
    assert_eq!(NetworkConfig::builtin_shared().endpoints, vec![EndpointKind::Stream, EndpointKind::Datagram]);
    let f = file(json!({"vmnet": {"lab": {"endpoints": ["datagram"]}, "off": {"endpoints": []}}, "broker": {"endpointDir": "/run/x"}})).unwrap();
    assert_eq!(f.networks["lab"].endpoints, vec![EndpointKind::Datagram]);
    assert!(f.networks["off"].endpoints.is_empty());
    assert_eq!(f.broker.endpoint_dir, "/run/x");
    // Not a difference between two configurations of one network.
    assert!(f.networks["off"].differences(&NetworkConfig { endpoints: EndpointKind::all(), ..f.networks["off"].clone() }).is_empty());
    let err = file(json!({"vmnet": {"lab": {"endpoints": ["stream", "stream", "tcp", 1]}}, "broker": {"endpointDir": "relative"}})).unwrap_err();
    let p: Vec<&str> = err.lines().collect();
    assert_eq!(p, vec![
        "networks.yaml: broker: key \"endpointDir\": \"relative\" is not an absolute path of at most 90 bytes (socket paths under it are limited to 104); use one like \"/run/vmnet-rs\", or leave it out for the default",
        "networks.yaml: network \"lab\": key \"endpoints[1]\": \"stream\" is listed twice; list each kind once",
        "networks.yaml: network \"lab\": key \"endpoints[2]\": \"tcp\" is not an endpoint kind; use \"stream\" or \"datagram\"",
        "networks.yaml: network \"lab\": key \"endpoints[3]\": 1 is an integer; use \"stream\" or \"datagram\"",
    ]);
    let err = file(json!({"vmnet": {"lab": {"endpoints": "stream"}}})).unwrap_err();
    assert_eq!(err.message, "networks.yaml: network \"lab\": key \"endpoints\": \"stream\" is a string; use a list of \"stream\" and \"datagram\" (or [] for none)");
}

#[test]
fn data_dir_key() {
    let f = file(json!({"broker": {"dataDir": "/srv/vmnet-rs"}})).unwrap();
    assert_eq!(f.broker.data_dir, "/srv/vmnet-rs");
    let err = file(json!({"broker": {"dataDir": "var/lib"}})).unwrap_err();
    assert_eq!(err.to_string(), "networks.yaml: broker: key \"dataDir\": \"var/lib\" is not an absolute path; use one like \"/var/lib/vmnet-rs\", or leave it out for the default");
}

#[test]
fn client_networks_quota_and_network_access() {
    let d = FileConfig::default().broker;
    assert_eq!(d.client_networks, ClientNetworks::default_for(std::env::consts::OS));
    assert_eq!(ClientNetworks::default_for("macos"), ClientNetworks::Any);
    assert_eq!(ClientNetworks::default_for("linux"), ClientNetworks::None);
    assert_eq!(d.max_ports_per_user, DEFAULT_MAX_PORTS_PER_USER);
    let err = file(json!({"broker": {"clientNetworks": "some", "maxPortsPerUser": 0}})).unwrap_err();
    let p: Vec<&str> = err.lines().collect();
    assert_eq!(p, vec![
        "networks.yaml: broker: key \"clientNetworks\": \"some\" is not a choice; use one of none, restricted, any",
        "networks.yaml: broker: key \"maxPortsPerUser\": 0 is out of range; use 1..65535 (ports one user may hold at once)",
    ]);
    let f = file(json!({"vmnet": {"lab": {"mode": "host", "allowedUsers": ["alice"], "allowedGroups": [42]}}})).unwrap();
    let lab = &f.networks["lab"];
    assert_eq!(lab.allowed_users, Some(vec!["alice".to_string()]));
    assert_eq!(lab.allowed_groups, Some(vec!["42".to_string()]));
    assert!(lab.has_own_access() && !f.networks["shared"].has_own_access());
    // Who may use a network is not a difference in what the network is.
    let open = NetworkConfig { allowed_users: None, allowed_groups: None, ..lab.clone() };
    assert!(lab.differences(&open).is_empty());
    assert_eq!(NetworkConfig::from_json(&lab.to_json(), SRC, "lab").unwrap(), *lab);
    let err = file(json!({"vmnet": {"lab": {"allowedUsers": "alice", "allowedGroups": ["bad name"]}}})).unwrap_err();
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(err.message.contains("network \"lab\": key \"allowedUsers\""), "{err}");
}

#[test]
fn a_network_entry_with_every_key_commented_out_takes_the_defaults() {
    // Lima's template has `debug:` with only comments under it: null in YAML.
    let cfg = FileConfig::from_value(&json!({ "vmnet": { "debug": null } }), "t.yaml").unwrap();
    assert_eq!(cfg.networks["debug"], NetworkConfig::lima_default());
}

#[test]
fn broker_repair_setting() {
    let f = file(json!({"broker": {"repair": {"pieces": ["table", "address"], "limit": 3, "window": 10}}})).unwrap();
    assert_eq!(f.broker.repair, RepairSettings { pieces: vec!["table".into(), "address".into()], limit: 3, window: 10 });
    assert!(f.broker.repair.repairs("table") && !f.broker.repair.repairs("dnsmasq"));
    assert!(file(json!({"broker": {"repair": {"pieces": "none"}}})).unwrap().broker.repair.pieces.is_empty());
    assert_eq!(file(json!({"broker": {}})).unwrap().broker.repair, RepairSettings::default());
    let err = file(json!({"broker": {"repair": {"pieces": ["tabel"], "limit": 0, "windw": 5}}})).unwrap_err().message;
    assert!(err.contains("broker: key \"repair.windw\": unknown key"), "{err}");
    assert!(err.contains("key \"repair.pieces[0]\": \"tabel\" is not a piece; use one of bridge, address, table, forwarding, dnsmasq"), "{err}");
    assert!(err.contains("key \"repair.limit\": 0 is out of range"), "{err}");
}

#[test]
fn addresses_is_platform_unless_the_broker_is_asked_and_needs_dhcp() {
    assert_eq!(net(json!({})).unwrap().addresses(), Addresses::Platform);
    let b = net(json!({"addresses": "broker"})).unwrap();
    assert_eq!(b.addresses(), Addresses::Broker);
    assert!(b.to_json().contains("\"addresses\":\"broker\""));
    assert_eq!(NetworkConfig::from_json(&b.to_json(), "x", "lab").unwrap(), b);
    assert_eq!(one(json!({"addresses": "dnsmasq"})), format!("{PFX}key \"addresses\": \"dnsmasq\" is not who may hand out addresses; use \"platform\" or \"broker\""));
    assert_eq!(one(json!({"addresses": true})), format!("{PFX}key \"addresses\": true is a boolean; use \"platform\" or \"broker\""));
    assert_eq!(
        one(json!({"addresses": "broker", "dhcp": false})),
        format!("{PFX}key \"addresses\": is \"broker\" but dhcp is false; the broker's port hands out addresses, so set dhcp: true or addresses: \"platform\"")
    );
    assert_eq!(
        one(json!({"addresses": "broker", "isolation": true})),
        format!("{PFX}key \"addresses\": is \"broker\" but isolation is true; isolation would cut the VMs off from the broker's port too, so use one or the other")
    );
}
