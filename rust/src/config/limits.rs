//! The one limit of each value a network is described by: names, subnets,
//! MTUs, ports and MACs. The configuration validator applies them (the
//! broker's requests go through it too); the macOS mapping and the Linux
//! plan take only configurations it accepted and judge nothing again.
//!
//! Why each limit is what it is:
//! - name: 1..=63 letters, digits, `-`, `_`, `.`, starting with a letter or
//!   digit. Names appear in socket paths, unit names, nftables tables and
//!   logs; Linux link names longer than the kernel's 15 bytes are hashed.
//! - subnet: prefix length 8..=29. A /29 is the smallest that leaves, after
//!   the network, gateway and broadcast addresses (vmnet also reserves
//!   those three), a DHCP range of five.
//! - MTU: 1280..=9000. 1280 is the IPv6 minimum (RA and NAT66 are on by
//!   default); 9000 is the usual jumbo frame, which Linux bridges and TAPs
//!   carry and vmnet accepts. 0 means "unset" (Lima) and becomes 1500.
//! - ports: 1..=65535 (0 is no port).
//! - MAC: six hex pairs, unicast (first byte even) and not all zero.

/// The MTU a network gets when none (or Lima's 0) is given.
pub const DEFAULT_MTU: u32 = 1500;
pub const MTU_MIN: u32 = 1280;
pub const MTU_MAX: u32 = 9000;
/// Shortest allowed IPv4 prefix length (largest subnet).
pub const SUBNET_PREFIX_MIN: u8 = 8;
/// Longest allowed IPv4 prefix length: a /29 leaves a DHCP range of five.
pub const SUBNET_PREFIX_MAX: u8 = 29;
/// The only IPv6 prefix length (the one SLAAC serves).
pub const IPV6_PREFIX_LEN: u8 = 64;
/// Longest network name, in bytes.
pub const NETWORK_NAME_MAX: usize = 63;
/// The network name rule as messages state it.
pub const NETWORK_NAME_RULE: &str =
    "use 1 to 63 letters, digits, \"-\", \"_\" or \".\", starting with a letter or digit";
pub const PORT_MIN: u16 = 1;
pub const PORT_MAX: u16 = 65535;

/// Whether `name` is a network name: 1 to [`NETWORK_NAME_MAX`] letters,
/// digits, `-`, `_`, `.`, starting with a letter or digit.
pub fn valid_network_name(name: &str) -> bool {
    (1..=NETWORK_NAME_MAX).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Whether a MAC can be a VM's: unicast (first byte even) and not all zero.
pub fn usable_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0 && *mac != [0; 6]
}

/// Whether an MTU is within [`MTU_MIN`]..=[`MTU_MAX`].
pub fn valid_mtu(mtu: u32) -> bool {
    (MTU_MIN..=MTU_MAX).contains(&mtu)
}

/// Whether an IPv4 prefix length is within [`SUBNET_PREFIX_MIN`]..=[`SUBNET_PREFIX_MAX`].
pub fn valid_subnet_prefix(prefix: u8) -> bool {
    (SUBNET_PREFIX_MIN..=SUBNET_PREFIX_MAX).contains(&prefix)
}

/// Whether a port number is within [`PORT_MIN`]..=[`PORT_MAX`].
pub fn valid_port(port: u16) -> bool {
    port >= PORT_MIN
}

/// Longest network `domain`: a name (63) and a dot must still fit in a DNS
/// name of 253 characters.
pub const DOMAIN_MAX_LEN: usize = 189;

/// A network's `domain`: lower-case DNS labels (letters, digits, `-`, not
/// at either end, 1-63 each) joined by dots.
pub fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= DOMAIN_MAX_LEN
        && d.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}
