//! A validated [`NetworkConfig`] as the ordered `vmnet_network_configuration_*`
//! calls ([`Step`]) `vmnet/apple.rs` replays, and what a live network
//! reports in `NetworkState` form ([`network_state`]).

use super::*;

/// One `vmnet_network_configuration_*` call, in the order it is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `vmnet_network_configuration_create(mode, &status)`.
    Create {
        mode: u32,
    },
    /// `..._set_external_interface(name)`; shared mode only.
    SetExternalInterface(String),
    DisableNat44,
    DisableNat66,
    DisableDhcp,
    DisableDnsProxy,
    DisableRouterAdvertisement,
    /// `..._set_ipv4_subnet(&first_host, &mask)`: the first host address
    /// (x.y.z.1), never the network address (`.0` is accepted at first but
/// breaks VZ and DHCP later; docs/macos.md).
    SetIpv4Subnet {
        first_host: Ipv4Addr,
        mask: Ipv4Addr,
    },
    /// `..._set_ipv6_prefix(&prefix, len)`.
    SetIpv6Prefix {
        prefix: Ipv6Addr,
        len: u8,
    },
    /// `..._set_mtu(mtu)`.
    SetMtu(u32),
    /// `..._add_port_forwarding_rule(protocol, family, internal_port,
    /// external_port, &internal_address)`: internal port first.
    AddPortForwardingRule {
        protocol: u8,
        family: u8,
        internal_port: u16,
        external_port: u16,
        internal_address: IpAddr,
    },
    /// `..._add_dhcp_reservation(&mac, &address)`.
    AddDhcpReservation {
        mac: [u8; 6],
        address: Ipv4Addr,
    },
}

impl Step {
    /// The C function this step calls (for error messages).
    pub fn function(&self) -> &'static str {
        match self {
            Step::Create { .. } => "vmnet_network_configuration_create",
            Step::SetExternalInterface(_) => "vmnet_network_configuration_set_external_interface",
            Step::DisableNat44 => "vmnet_network_configuration_disable_nat44",
            Step::DisableNat66 => "vmnet_network_configuration_disable_nat66",
            Step::DisableDhcp => "vmnet_network_configuration_disable_dhcp",
            Step::DisableDnsProxy => "vmnet_network_configuration_disable_dns_proxy",
            Step::DisableRouterAdvertisement => "vmnet_network_configuration_disable_router_advertisement",
            Step::SetIpv4Subnet { .. } => "vmnet_network_configuration_set_ipv4_subnet",
            Step::SetIpv6Prefix { .. } => "vmnet_network_configuration_set_ipv6_prefix",
            Step::SetMtu(_) => "vmnet_network_configuration_set_mtu",
            Step::AddPortForwardingRule { .. } => "vmnet_network_configuration_add_port_forwarding_rule",
            Step::AddDhcpReservation { .. } => "vmnet_network_configuration_add_dhcp_reservation",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Create { mode } => write!(f, "{}({})", self.function(), mode_name(*mode)),
            Step::SetExternalInterface(name) => write!(f, "{}({name:?})", self.function()),
            Step::SetIpv4Subnet { first_host, mask } => write!(f, "{}({first_host}, {mask})", self.function()),
            Step::SetIpv6Prefix { prefix, len } => write!(f, "{}({prefix}/{len})", self.function()),
            Step::SetMtu(mtu) => write!(f, "{}({mtu})", self.function()),
            Step::AddPortForwardingRule { protocol, internal_port, external_port, internal_address, .. } => write!(
                f,
                "{}({} host port {external_port} -> {internal_address} port {internal_port})",
                self.function(),
                if *protocol == IPPROTO_TCP { "tcp" } else { "udp" }
            ),
            Step::AddDhcpReservation { mac, address } => {
                write!(f, "{}({} -> {address})", self.function(), format_mac(mac))
            }
            _ => write!(f, "{}()", self.function()),
        }
    }
}

fn mode_name(mode: u32) -> &'static str {
    match mode {
        VMNET_HOST_MODE => "VMNET_HOST_MODE",
        VMNET_SHARED_MODE => "VMNET_SHARED_MODE",
        _ => "unknown mode",
    }
}


/// The vmnet calls that realise `config`, in order. `config` is a
/// configuration the validator accepted (`config::NetworkConfig::from_*`),
/// so every value is in range and well-formed: nothing is judged again
/// here, and a value that still fails to parse is left to the platform.
pub fn configuration_steps(config: &NetworkConfig) -> Vec<Step> {
    let mode = match config.mode() {
        Mode::Shared => VMNET_SHARED_MODE,
        Mode::Host => VMNET_HOST_MODE,
    };
    let mut steps = vec![Step::Create { mode }];
    if let Some(name) = config.external_interface() {
        steps.push(Step::SetExternalInterface(name.to_owned()));
    }
    if !config.nat44() {
        steps.push(Step::DisableNat44);
    }
    if !config.nat66() {
        steps.push(Step::DisableNat66);
    }
    // With `addresses: broker` the broker's own port is the DHCP server
    // (broker/service.rs; docs/macos.md says why vmnet's is off), and the
    // reservations are its fixed entries, not bootpd's.
    let broker_addresses = config.addresses() == crate::config::Addresses::Broker;
    if !config.dhcp() || broker_addresses {
        steps.push(Step::DisableDhcp);
    }
    if !config.dns_proxy() {
        steps.push(Step::DisableDnsProxy);
    }
    if !config.router_advertisement() {
        steps.push(Step::DisableRouterAdvertisement);
    }
    if let Some(subnet) = config.subnet() {
        steps.push(Step::SetIpv4Subnet { first_host: subnet.gateway(), mask: subnet.netmask() });
    }
    if let Some(p) = config.ipv6_prefix() {
        steps.push(Step::SetIpv6Prefix { prefix: p.addr(), len: p.prefix_len() });
    }
    steps.push(Step::SetMtu(config.mtu()));
    for (rule, internal_address) in config.forwards() {
        let protocol = match rule.protocol {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        };
        let family = match internal_address {
            IpAddr::V4(_) => DARWIN_AF_INET,
            IpAddr::V6(_) => DARWIN_AF_INET6,
        };
        steps.push(Step::AddPortForwardingRule {
            protocol,
            family,
            internal_port: rule.internal_port,
            external_port: rule.external_port,
            internal_address,
        });
    }
    if !broker_addresses {
        for (mac, address) in config.reservations() {
            steps.push(Step::AddDhcpReservation { mac, address });
        }
    }
    steps
}

/// What a live network reports, in `NetworkState` form: the gateway (first
/// host) with its prefix length, and the IPv6 prefix if any.
pub fn network_state(subnet: Ipv4Addr, mask: Ipv4Addr, ipv6: Option<(Ipv6Addr, u8)>) -> Result<NetworkState, Error> {
    let mask_bits = u32::from(mask);
    let prefix_len = mask_bits.leading_ones();
    if mask_bits.count_ones() != prefix_len {
        return Err(Error::Params(format!("vmnet reported a non-contiguous mask {mask}")));
    }
    let network = u32::from(subnet) & mask_bits;
    let gateway = Ipv4Addr::from(network + 1);
    let ipv6_prefix = match ipv6 {
        Some((prefix, len)) if len > 0 && !prefix.is_unspecified() => Some(format!("{prefix}/{len}")),
        _ => None,
    };
    Ok(NetworkState { subnet: format!("{gateway}/{prefix_len}"), ipv6_prefix, device: String::new() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(v: serde_json::Value) -> NetworkConfig {
        NetworkConfig::test(v)
    }

    const MTU: Step = Step::SetMtu(1500);

    #[test]
    fn defaults_are_create_and_mtu() {
        assert_eq!(configuration_steps(&cfg(json!({}))), vec![Step::Create { mode: VMNET_SHARED_MODE }, MTU]);
        let host = cfg(json!({"mode": "host", "routerAdvertisement": true}));
        assert_eq!(configuration_steps(&host), vec![Step::Create { mode: VMNET_HOST_MODE }, MTU]);
    }

    #[test]
    fn each_false_flag_maps_to_its_disable_call() {
        let cases = [
            ("nat44", Step::DisableNat44),
            ("nat66", Step::DisableNat66),
            ("dhcp", Step::DisableDhcp),
            ("dnsProxy", Step::DisableDnsProxy),
            ("routerAdvertisement", Step::DisableRouterAdvertisement),
        ];
        for (key, step) in cases {
            let c = cfg(json!({ key: false }));
            assert_eq!(configuration_steps(&c), vec![Step::Create { mode: VMNET_SHARED_MODE }, step, MTU]);
        }
    }

    #[test]
    fn full_config_in_call_order() {
        let c = cfg(json!({
            "mtu": 9000,
            "nat66": false,
            "subnet": "192.168.107.0/24",
            "ipv6Prefix": "fd00:1:2:3::/64",
            "externalInterface": "en0",
            "portForwarding": [{"protocol": "tcp", "externalPort": 2222, "internalAddress": "192.168.107.10", "internalPort": 22}],
            "dhcpReservations": [{"mac": "52:54:00:12:34:56", "address": "192.168.107.20"}],
        }));
        let steps = configuration_steps(&c);
        assert_eq!(
            steps,
            vec![
                Step::Create { mode: VMNET_SHARED_MODE },
                Step::SetExternalInterface("en0".into()),
                Step::DisableNat66,
                Step::SetIpv4Subnet {
                    first_host: Ipv4Addr::new(192, 168, 107, 1),
                    mask: Ipv4Addr::new(255, 255, 255, 0)
                },
                Step::SetIpv6Prefix { prefix: "fd00:1:2:3::".parse().unwrap(), len: 64 },
                Step::SetMtu(9000),
                Step::AddPortForwardingRule {
                    protocol: IPPROTO_TCP,
                    family: DARWIN_AF_INET,
                    internal_port: 22,
                    external_port: 2222,
                    internal_address: "192.168.107.10".parse().unwrap(),
                },
                Step::AddDhcpReservation {
                    mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                    address: Ipv4Addr::new(192, 168, 107, 20)
                },
            ]
        );
        assert_eq!(
            steps[6].to_string(),
            "vmnet_network_configuration_add_port_forwarding_rule(tcp host port 2222 -> 192.168.107.10 port 22)"
        );
    }

    #[test]
    fn subnet_is_normalised_to_first_host() {
        for text in ["192.168.107.0/24", "192.168.107.1/24"] {
            let c = cfg(json!({ "subnet": text }));
            assert_eq!(
                configuration_steps(&c)[1],
                Step::SetIpv4Subnet {
                    first_host: Ipv4Addr::new(192, 168, 107, 1),
                    mask: Ipv4Addr::new(255, 255, 255, 0)
                },
                "{text}"
            );
        }
        let c = cfg(json!({"subnet": "10.20.0.0/16"}));
        assert_eq!(
            configuration_steps(&c)[1],
            Step::SetIpv4Subnet { first_host: Ipv4Addr::new(10, 20, 0, 1), mask: Ipv4Addr::new(255, 255, 0, 0) }
        );
    }

    #[test]
    fn ipv6_prefix_is_the_configs() {
        let c = cfg(json!({"ipv6Prefix": "fd12:3456:789a:1::/64"}));
        assert_eq!(
            configuration_steps(&c)[1],
            Step::SetIpv6Prefix { prefix: "fd12:3456:789a:1::".parse().unwrap(), len: 64 }
        );
    }

    #[test]
    fn mtu_is_the_configs() {
        assert_eq!(configuration_steps(&cfg(json!({"mtu": 9000})))[1], Step::SetMtu(9000));
    }

    #[test]
    fn port_forward_v6_udp() {
        let c = cfg(json!({
            "ipv6Prefix": "fd00::/64",
            "portForwarding": [{"protocol": "udp", "externalPort": 5353, "internalAddress": "fd00::10", "internalPort": 53, "addressFamily": "ipv6"}],
        }));
        assert_eq!(
            configuration_steps(&c).last().unwrap(),
            &Step::AddPortForwardingRule {
                protocol: IPPROTO_UDP,
                family: DARWIN_AF_INET6,
                internal_port: 53,
                external_port: 5353,
                internal_address: "fd00::10".parse().unwrap(),
            }
        );
    }

    #[test]
    fn reservations_follow_the_forwards() {
        let c = cfg(json!({
            "subnet": "192.168.107.1/24",
            "portForwarding": [{"protocol": "tcp", "externalPort": 2222, "internalAddress": "192.168.107.10", "internalPort": 22}],
            "dhcpReservations": [{"mac": "52:54:00:00:00:0a", "address": "192.168.107.3"}],
        }));
        let steps = configuration_steps(&c);
        assert!(matches!(steps[steps.len() - 2], Step::AddPortForwardingRule { .. }), "{steps:?}");
        assert_eq!(
            steps.last().unwrap(),
            &Step::AddDhcpReservation { mac: [0x52, 0x54, 0, 0, 0, 0x0a], address: Ipv4Addr::new(192, 168, 107, 3) }
        );
    }

    #[test]
    fn broker_addresses_turn_vmnet_dhcp_off_and_keep_reservations_for_the_broker() {
        let c = cfg(json!({
            "subnet": "192.168.107.1/24",
            "addresses": "broker",
            "dhcpReservations": [{"mac": "52:54:00:00:00:0a", "address": "192.168.107.3"}],
        }));
        let steps = configuration_steps(&c);
        assert!(steps.contains(&Step::DisableDhcp), "{steps:?}");
        assert!(!steps.iter().any(|s| matches!(s, Step::AddDhcpReservation { .. })), "{steps:?}");
        assert!(!steps.contains(&Step::DisableDnsProxy), "vmnet's DNS proxy stays for the host's names: {steps:?}");
    }

    #[test]
    fn state_reports_gateway_and_prefix() {
        let s = network_state(Ipv4Addr::new(192, 168, 64, 1), Ipv4Addr::new(255, 255, 255, 0), None).unwrap();
        assert_eq!(s.subnet, "192.168.64.1/24");
        assert_eq!(s.ipv6_prefix, None);
        let s = network_state(
            Ipv4Addr::new(10, 1, 0, 0),
            Ipv4Addr::new(255, 255, 0, 0),
            Some(("fd9b:1:2:3::".parse().unwrap(), 64)),
        )
        .unwrap();
        assert_eq!(s.subnet, "10.1.0.1/16");
        assert_eq!(s.ipv6_prefix.as_deref(), Some("fd9b:1:2:3::/64"));
        assert_eq!(
            network_state(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(255, 0, 255, 0), None).unwrap_err().to_string(),
            "interface parameters: vmnet reported a non-contiguous mask 255.0.255.0"
        );
        let s =
            network_state(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(255, 0, 0, 0), Some((Ipv6Addr::UNSPECIFIED, 0)))
                .unwrap();
        assert_eq!(s.ipv6_prefix, None);
    }

    #[test]
    fn steps_describe_themselves_for_error_messages() {
        let cases = [
            (Step::Create { mode: VMNET_HOST_MODE }, "vmnet_network_configuration_create(VMNET_HOST_MODE)"),
            (Step::SetExternalInterface("en0".into()), "vmnet_network_configuration_set_external_interface(\"en0\")"),
            (Step::DisableDhcp, "vmnet_network_configuration_disable_dhcp()"),
            (
                Step::SetIpv4Subnet { first_host: Ipv4Addr::new(10, 0, 0, 1), mask: Ipv4Addr::new(255, 0, 0, 0) },
                "vmnet_network_configuration_set_ipv4_subnet(10.0.0.1, 255.0.0.0)",
            ),
            (
                Step::SetIpv6Prefix { prefix: "fd00::".parse().unwrap(), len: 64 },
                "vmnet_network_configuration_set_ipv6_prefix(fd00::/64)",
            ),
            (Step::SetMtu(9000), "vmnet_network_configuration_set_mtu(9000)"),
            (
                Step::AddDhcpReservation { mac: [2, 0, 0, 0, 0, 1], address: Ipv4Addr::new(10, 0, 0, 9) },
                "vmnet_network_configuration_add_dhcp_reservation(02:00:00:00:00:01 -> 10.0.0.9)",
            ),
        ];
        for (step, text) in cases {
            assert_eq!(step.to_string(), text);
        }
        let e = status_error(Step::SetMtu(9000).to_string(), Status::InvalidArgument).to_string();
        assert!(
            e.starts_with("vmnet_network_configuration_set_mtu(9000) failed: VMNET_INVALID_ARGUMENT (1003)"),
            "{e}"
        );
        assert_eq!(status_io_error("vmnet_write", Status::PacketTooBig).kind(), std::io::ErrorKind::InvalidInput);
        assert_eq!(status_io_error("vmnet_read", Status::Failure).kind(), std::io::ErrorKind::Other);
    }

}
