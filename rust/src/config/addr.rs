//! Address types used by the configuration: IPv4 subnets, IPv6 prefixes and
//! MAC addresses, parsed from and printed to the strings stored in
//! `NetworkConfig`.
//!
//! Pure functions, no I/O; any thread. Parsers return `Err(reason)` where the
//! reason is a short phrase the validator places after the offending value.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// An IPv4 subnet held as its gateway (first host) address and prefix length,
/// the form vmnet's `vmnet_network_configuration_set_ipv4_subnet` wants.
///
/// Invariant: `prefix` is in `1..=30` and `gateway` is the network address + 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Subnet {
    gateway: Ipv4Addr,
    prefix: u8,
}

/// How a subnet string failed to parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubnetError {
    /// Not `a.b.c.d/n` at all.
    Syntax,
    /// The prefix length is outside the allowed range.
    Prefix(u8),
    /// A host address other than the network address or the first host.
    HostAddress { network: Ipv4Addr, prefix: u8 },
}

impl Ipv4Subnet {
    /// Parses `a.b.c.d/n`. The network address (`.0/24`) is normalised to the
    /// first host (`.1/24`); the first host is kept; any other host address
    /// is refused, because vmnet always puts the gateway on the first host and
    /// a user writing `.5/24` would get something other than they asked for.
    pub fn parse(text: &str, min_prefix: u8, max_prefix: u8) -> Result<Self, SubnetError> {
        let (addr, prefix) = text.split_once('/').ok_or(SubnetError::Syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| SubnetError::Syntax)?;
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SubnetError::Syntax);
        }
        let prefix: u8 = prefix.parse().map_err(|_| SubnetError::Syntax)?;
        if prefix > 32 {
            return Err(SubnetError::Syntax);
        }
        if prefix < min_prefix || prefix > max_prefix || prefix > 30 || prefix == 0 {
            return Err(SubnetError::Prefix(prefix));
        }
        let mask = mask_bits(prefix);
        let network = u32::from(addr) & mask;
        let first = network + 1;
        let bits = u32::from(addr);
        if bits != network && bits != first {
            return Err(SubnetError::HostAddress { network: Ipv4Addr::from(network), prefix });
        }
        Ok(Ipv4Subnet { gateway: Ipv4Addr::from(first), prefix })
    }

    /// The gateway: the first host address, where the host sits.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix))
    }

    /// The network address (all host bits zero).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway) - 1)
    }

    /// The broadcast address (all host bits one).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) | !mask_bits(self.prefix))
    }

    /// The addresses a DHCP server may hand out: from the gateway + 1 to the
    /// broadcast - 1, both inclusive.
    pub fn dhcp_range(&self) -> (Ipv4Addr, Ipv4Addr) {
        (
            Ipv4Addr::from(u32::from(self.gateway) + 1),
            Ipv4Addr::from(u32::from(self.broadcast()) - 1),
        )
    }

    /// Whether `addr` lies inside the subnet (network and broadcast included).
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask_bits(self.prefix) == u32::from(self.network())
    }

    /// `10.0.0.0/24`: the network address and prefix length.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network(), self.prefix)
    }

    /// A usable client address: inside, and neither the network, broadcast
    /// nor gateway address.
    pub fn is_client_address(&self, addr: Ipv4Addr) -> bool {
        self.contains(addr) && addr != self.network() && addr != self.broadcast() && addr != self.gateway
    }

    /// Whether the two subnets share any address.
    pub fn overlaps(&self, other: &Ipv4Subnet) -> bool {
        let shorter = self.prefix.min(other.prefix);
        let mask = mask_bits(shorter);
        u32::from(self.network()) & mask == u32::from(other.network()) & mask
    }
}

impl fmt::Display for SubnetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubnetError::Syntax => write!(f, "is not ADDRESS/PREFIX, e.g. 192.168.107.0/24"),
            SubnetError::Prefix(p) => write!(f, "has the prefix length /{p}, outside the allowed range"),
            SubnetError::HostAddress { network, prefix } => {
                write!(f, "is neither the network address nor its first host; use {network}/{prefix}")
            }
        }
    }
}

/// `gateway/prefix`, e.g. `10.0.0.1/24` (the form configs store).
impl fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.gateway, self.prefix)
    }
}

/// A subnet as a configuration writes it, within the configuration's limits
/// ([`SUBNET_PREFIX_MIN`](super::SUBNET_PREFIX_MIN)..[`SUBNET_PREFIX_MAX`](super::SUBNET_PREFIX_MAX)).
impl std::str::FromStr for Ipv4Subnet {
    type Err = SubnetError;
    fn from_str(text: &str) -> Result<Self, SubnetError> {
        Ipv4Subnet::parse(text, super::limits::SUBNET_PREFIX_MIN, super::limits::SUBNET_PREFIX_MAX)
    }
}

impl std::str::FromStr for Ipv6Prefix {
    type Err = PrefixError;
    fn from_str(text: &str) -> Result<Self, PrefixError> {
        Ipv6Prefix::parse(text)
    }
}

impl std::str::FromStr for MacAddr {
    type Err = &'static str;
    fn from_str(text: &str) -> Result<Self, &'static str> {
        MacAddr::parse(text).ok_or("not six hex pairs separated by \":\" or \"-\"")
    }
}

/// The three address types serialise as their printed form (the JSON shape
/// configs and Python read).
macro_rules! serialize_as_text {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serialize_as_text!(Ipv4Subnet, Ipv6Prefix, MacAddr);

fn mask_bits(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// Whether `addr` is in an RFC 1918 private range.
pub fn is_private_v4(addr: Ipv4Addr) -> bool {
    addr.is_private()
}

/// An IPv6 prefix, e.g. `fd00:1:2:3::/64`.
///
/// Invariant: no bits set after `len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Prefix {
    addr: Ipv6Addr,
    len: u8,
}

/// How an IPv6 prefix string failed to parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrefixError {
    Syntax,
    /// Bits set after the prefix length; carries the masked prefix.
    HostBits(Ipv6Prefix),
}

impl Ipv6Prefix {
    pub fn parse(text: &str) -> Result<Self, PrefixError> {
        let (addr, len) = text.split_once('/').ok_or(PrefixError::Syntax)?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| PrefixError::Syntax)?;
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PrefixError::Syntax);
        }
        let len: u8 = len.parse().map_err(|_| PrefixError::Syntax)?;
        if len > 128 {
            return Err(PrefixError::Syntax);
        }
        let masked = Ipv6Prefix { addr: Ipv6Addr::from(u128::from(addr) & mask128(len)), len };
        if masked.addr != addr {
            return Err(PrefixError::HostBits(masked));
        }
        Ok(masked)
    }

    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The host's own address on the network: the prefix's `::1`.
    pub fn gateway(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr) + 1)
    }

    /// `fd00:1:2:3::/64`.
    pub fn cidr(&self) -> String {
        self.to_string()
    }

    /// The gateway with the prefix length: `fd00:1:2:3::1/64`.
    pub fn gateway_cidr(&self) -> String {
        format!("{}/{}", self.gateway(), self.len)
    }

    /// Whether the prefix is inside fc00::/7 (unique local addresses).
    pub fn is_unique_local(&self) -> bool {
        self.addr.segments()[0] & 0xfe00 == 0xfc00
    }

    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) & mask128(self.len) == u128::from(self.addr)
    }

    pub fn overlaps(&self, other: &Ipv6Prefix) -> bool {
        let mask = mask128(self.len.min(other.len));
        u128::from(self.addr) & mask == u128::from(other.addr) & mask
    }
}

impl fmt::Display for Ipv6Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

/// A MAC address: the one type for parsing, printing and making them
/// (config, broker protocol, platform plans, adaptors). Printed lower case,
/// colon separated (`52:54:00:ab:cd:01`), the form configs and replies use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// What a user writes: six pairs of hex digits separated by `:` or `-`
    /// (one separator kind throughout).
    pub fn parse(text: &str) -> Option<MacAddr> {
        Self::parse_octets(text, 2..=2)
    }

    /// What a platform reports: as [`parse`](Self::parse), with one or two
    /// hex digits per octet (vmnet prints `be:d0:74:5c:e:5d`) and surrounding
    /// white space allowed.
    pub fn parse_reported(text: &str) -> Option<MacAddr> {
        Self::parse_octets(text.trim(), 1..=2)
    }

    fn parse_octets(text: &str, digits: std::ops::RangeInclusive<usize>) -> Option<MacAddr> {
        let sep = if text.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = text.split(sep);
        for byte in out.iter_mut() {
            let part = parts.next()?;
            if !digits.contains(&part.len()) || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            *byte = u8::from_str_radix(part, 16).ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(MacAddr(out))
    }

    /// A random locally administered unicast address (for a VM that asked
    /// for none). Reads /dev/urandom; without it, the clock and the pid.
    pub fn random() -> MacAddr {
        use std::io::Read;
        let mut mac = [0u8; 6];
        let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut mac));
        if read.is_err() || mac == [0; 6] {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            mac.copy_from_slice(&(nanos ^ u128::from(std::process::id()) << 64).to_le_bytes()[..6]);
        }
        MacAddr(mac).local_unicast()
    }

    /// The same address with the locally administered bit set and the
    /// multicast bit cleared.
    pub fn local_unicast(self) -> MacAddr {
        let mut m = self.0;
        m[0] = (m[0] & 0xfe) | 0x02;
        MacAddr(m)
    }

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

/// `MacAddr::parse` as octets (the form interfaces carry).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    MacAddr::parse(text).map(|m| m.0)
}

/// `MacAddr`'s printed form of `mac`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    MacAddr(*mac).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_address_becomes_first_host() {
        let s = Ipv4Subnet::parse("192.168.107.0/24", 8, 29).unwrap();
        assert_eq!(s.to_string(), "192.168.107.1/24");
        assert_eq!(s.network(), Ipv4Addr::new(192, 168, 107, 0));
        assert_eq!(s.broadcast(), Ipv4Addr::new(192, 168, 107, 255));
        assert_eq!(s.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(
            s.dhcp_range(),
            (Ipv4Addr::new(192, 168, 107, 2), Ipv4Addr::new(192, 168, 107, 254))
        );
    }

    #[test]
    fn first_host_is_kept_other_hosts_refused() {
        assert_eq!(Ipv4Subnet::parse("10.1.0.1/16", 8, 29).unwrap().to_string(), "10.1.0.1/16");
        assert_eq!(
            Ipv4Subnet::parse("192.168.107.5/24", 8, 29),
            Err(SubnetError::HostAddress { network: Ipv4Addr::new(192, 168, 107, 0), prefix: 24 })
        );
    }

    #[test]
    fn bad_subnets() {
        for bad in ["", "192.168.1.0", "192.168.1/24", "192.168.1.0/", "192.168.1.0/33", "x/24", "192.168.1.0/+4", "1.2.3.4/024"] {
            assert_eq!(Ipv4Subnet::parse(bad, 8, 29), Err(SubnetError::Syntax), "{bad}");
        }
        assert_eq!(Ipv4Subnet::parse("192.168.1.0/30", 8, 29), Err(SubnetError::Prefix(30)));
        assert_eq!(Ipv4Subnet::parse("10.0.0.0/7", 8, 29), Err(SubnetError::Prefix(7)));
    }

    #[test]
    fn overlap_and_contains() {
        let a = Ipv4Subnet::parse("192.168.0.0/16", 8, 29).unwrap();
        let b = Ipv4Subnet::parse("192.168.107.0/24", 8, 29).unwrap();
        let c = Ipv4Subnet::parse("192.168.108.0/24", 8, 29).unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!b.overlaps(&c));
        assert!(b.contains(Ipv4Addr::new(192, 168, 107, 200)));
        assert!(!b.contains(Ipv4Addr::new(192, 168, 108, 1)));
    }

    #[test]
    fn ipv6_prefixes() {
        let p = Ipv6Prefix::parse("fd00:0001:0002:0003::/64").unwrap();
        assert_eq!(p.to_string(), "fd00:1:2:3::/64");
        assert!(p.is_unique_local());
        assert!(p.contains("fd00:1:2:3::42".parse().unwrap()));
        assert!(!Ipv6Prefix::parse("2001:db8::/64").unwrap().is_unique_local());
        assert!(matches!(Ipv6Prefix::parse("fd00::1/64"), Err(PrefixError::HostBits(m)) if m.to_string() == "fd00::/64"));
        assert_eq!(Ipv6Prefix::parse("fd00::/129"), Err(PrefixError::Syntax));
        assert_eq!(Ipv6Prefix::parse("fd00::"), Err(PrefixError::Syntax));
        let a = Ipv6Prefix::parse("fd00::/8").unwrap();
        assert!(!Ipv6Prefix::parse("fd00:1:2:4::/64").unwrap().overlaps(&p));
        assert!(a.overlaps(&p));
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("52:54:00:AB:cd:01"), Some([0x52, 0x54, 0, 0xab, 0xcd, 1]));
        assert_eq!(parse_mac("52-54-00-ab-cd-01"), Some([0x52, 0x54, 0, 0xab, 0xcd, 1]));
        for bad in ["", "52:54:00:ab:cd", "52:54:00:ab:cd:01:02", "52:54:00:ab:cd:1", "52:54-00:ab:cd:01", "zz:54:00:ab:cd:01"] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(format_mac(&[0x52, 0x54, 0, 0xab, 0xcd, 1]), "52:54:00:ab:cd:01");
        // As a platform reports them: one hex digit per octet is fine.
        assert_eq!(MacAddr::parse_reported(" 0:1:a:ff:10:2\n"), Some(MacAddr([0, 1, 0xa, 0xff, 0x10, 2])));
        assert_eq!(MacAddr::parse("0:1:a:ff:10:2"), None);
        for bad in ["00:11:22:33:44", "00:11:22:33:44:55:66", "000:11:22:33:44:55", "00:11:22:33:44:zz"] {
            assert_eq!(MacAddr::parse_reported(bad), None, "{bad}");
        }
    }

    #[test]
    fn random_macs_are_locally_administered_unicast_and_differ() {
        let macs: std::collections::HashSet<MacAddr> = (0..32).map(|_| MacAddr::random()).collect();
        assert_eq!(macs.len(), 32);
        for m in macs {
            assert!(m.is_locally_administered() && !m.is_multicast(), "{m}");
            assert_eq!(MacAddr::parse(&m.to_string()), Some(m));
        }
        assert!(MacAddr([0x01, 0, 0x5e, 0, 0, 1]).is_multicast());
        assert_eq!(MacAddr([0xff; 6]).local_unicast(), MacAddr([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]));
    }
}
