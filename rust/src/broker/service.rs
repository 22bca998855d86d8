//! The broker's own port on a network (`addresses: broker`): ARP for its
//! own address, a DHCPv4 server and a DNS server for the network's names,
//! answering from the broker's address records instead of vmnet's bootpd or
//! dnsmasq (docs/config.md, "addresses"; docs/macos.md says why vmnet's DHCP
//! is off for such a network).
//!
//! Split by concern: `frames` (Ethernet, IPv4, UDP and ARP through
//! etherparse), `dhcp` (DHCP messages through dhcproto), `dns` (DNS messages
//! through hickory-proto), `book` (the [`AddressBook`] the answers come
//! from, and an in-memory one), `port` (the thread that runs a [`Service`]
//! on an [`crate::vmnet::Interface`] and forwards other names upstream).
//! This file holds the pure part: [`Service::handle_frame`] takes one frame
//! and says what to send, so every answer is tested without a network.
//!
//! Invariants: no frame, however malformed, makes the service panic or
//! stop; a frame that cannot be read as what its addresses say (a DHCP
//! message on port 67, a DNS message on port 53 to the service address) is
//! dropped and counted in [`Counters`]. Frames not for the service (other
//! VMs' unicast, IPv6, other ports) are ignored and counted as such.
//! Single-threaded: a `Service` belongs to its port thread.

mod book;
mod dhcp;
mod dns;
mod frames;
pub mod port;
mod recorded;
mod shared;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

pub use book::{AddressBook, MemoryBook};
pub use shared::{SharedBook, WithState};
pub use port::{ServicePort, ServiceStatus};

use crate::config::{Ipv4Subnet, MacAddr};

/// The domain names of a network live under, unless the network says
/// otherwise: `<name>.<network>.vmnet.internal` (`.internal` is reserved
/// for private use).
pub const DEFAULT_DOMAIN_SUFFIX: &str = "vmnet.internal";
/// How long a DHCP lease lasts. Guests renew at half of it (T1), so a
/// broker that is gone for less than this costs no guest its address.
pub const LEASE_SECS: u32 = 3600;
/// TTL of the names the service answers for (short: a VM's address may
/// change when its record is released).
pub const NAME_TTL_SECS: u32 = 60;

/// Where the service sits on its network and what it hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSetup {
    pub network: String,
    /// The zone names are answered in, without a trailing dot
    /// (`shared.vmnet.internal`).
    pub domain: String,
    /// The network's subnet; its gateway is the router the leases name and
    /// `host.<domain>`.
    pub subnet: Ipv4Subnet,
    /// The gateway's IPv6 address, for `host.<domain>`'s AAAA.
    pub gateway_v6: Option<Ipv6Addr>,
    /// The service's own address (DHCP server identifier, the DNS server
    /// the leases name): [`service_address`].
    pub address: Ipv4Addr,
    /// The service port's MAC (the interface's).
    pub mac: [u8; 6],
}

impl ServiceSetup {
    /// The setup of network `network` with `subnet`: the domain
    /// `<network>.vmnet.internal`, the service at [`service_address`].
    pub fn new(network: &str, subnet: Ipv4Subnet, gateway_v6: Option<Ipv6Addr>, mac: [u8; 6]) -> ServiceSetup {
        ServiceSetup {
            network: network.into(),
            domain: format!("{network}.{DEFAULT_DOMAIN_SUFFIX}"),
            subnet,
            gateway_v6,
            address: service_address(subnet),
            mac,
        }
    }
}

/// The service's address on `subnet`: its last client address (the one
/// below the broadcast address), so the pool it leases from runs
/// unbroken from the gateway + 1 up to it. Fixed by the subnet, so a guest
/// that kept its lease across a broker restart still finds its server.
pub fn service_address(subnet: Ipv4Subnet) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.broadcast()) - 1)
}

/// The addresses the service may lease on `subnet`: gateway + 1 up to the
/// one below the service's, inclusive.
pub fn pool(subnet: Ipv4Subnet) -> (Ipv4Addr, Ipv4Addr) {
    (Ipv4Addr::from(u32::from(subnet.gateway()) + 1), Ipv4Addr::from(u32::from(service_address(subnet)) - 1))
}

/// What the service saw and did, per kind (`vmnet-rs status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Frames read from the port.
    pub frames: u64,
    /// Frames not for the service (other unicast, IPv6, other ports).
    pub ignored: u64,
    /// Frames whose Ethernet, IPv4, UDP or ARP headers do not parse.
    pub malformed_frames: u64,
    pub arp_replies: u64,
    pub dhcp_requests: u64,
    pub dhcp_offers: u64,
    pub dhcp_acks: u64,
    pub dhcp_naks: u64,
    pub dhcp_releases: u64,
    /// DHCP messages that do not parse or make no sense (no message type,
    /// no client address, a reply sent to the server).
    pub malformed_dhcp: u64,
    /// DHCP requests left unanswered because there is nothing to say (no
    /// free address, a request meant for another server, a relay).
    pub dhcp_unanswered: u64,
    pub dns_queries: u64,
    /// Queries answered from the network's names (found or not).
    pub dns_answered: u64,
    /// Queries sent to the host's resolvers.
    pub dns_forwarded: u64,
    /// Queries for other names answered with an error because no resolver
    /// was there or it did not answer in time.
    pub dns_failed: u64,
    /// DNS messages that do not parse or are not queries.
    pub malformed_dns: u64,
}

/// What to do after one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send this frame on the port.
    Frame(Vec<u8>),
    /// Ask the host's resolvers: `query` as the client sent it; the answer
    /// goes back to `client` ([`Service::upstream_answer`]).
    Forward { query: Vec<u8>, client: Client },
}

/// Who asked a forwarded DNS query, so its answer finds its way back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// The service of one network; see the module header.
pub struct Service<B: AddressBook> {
    setup: ServiceSetup,
    book: B,
    counters: Counters,
}

impl<B: AddressBook> Service<B> {
    pub fn new(setup: ServiceSetup, book: B) -> Self {
        Service { setup, book, counters: Counters::default() }
    }

    pub fn setup(&self) -> &ServiceSetup {
        &self.setup
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn book(&self) -> &B {
        &self.book
    }

    /// Handles one frame read from the port; see the module header.
    pub fn handle_frame(&mut self, frame: &[u8]) -> Option<Output> {
        self.counters.frames += 1;
        let inbound = match frames::parse(frame) {
            Ok(i) => i,
            Err(()) => {
                self.counters.malformed_frames += 1;
                return None;
            }
        };
        match inbound {
            frames::Inbound::ArpRequest { sender_mac, sender_ip, target_ip } if target_ip == self.setup.address => {
                self.counters.arp_replies += 1;
                Some(Output::Frame(frames::arp_reply(self.setup.mac, self.setup.address, sender_mac, sender_ip)))
            }
            frames::Inbound::Udp(u) if u.dst_port == dhcp::SERVER_PORT && self.for_us_or_broadcast(u.dst_mac, u.dst_ip) => {
                self.counters.dhcp_requests += 1;
                let reply = dhcp::answer(&self.setup, &mut self.book, &mut self.counters, u.payload)?;
                Some(Output::Frame(frames::udp_frame(
                    self.setup.mac,
                    reply.dst_mac,
                    self.setup.address,
                    reply.dst_ip,
                    dhcp::SERVER_PORT,
                    dhcp::CLIENT_PORT,
                    &reply.payload,
                )))
            }
            frames::Inbound::Udp(u) if u.dst_port == dns::PORT && u.dst_ip == self.setup.address && u.dst_mac == self.setup.mac => {
                self.counters.dns_queries += 1;
                let client = Client { mac: u.src_mac, ip: u.src_ip, port: u.src_port };
                match dns::answer(&self.setup, &self.book, u.payload) {
                    dns::Answer::Malformed => {
                        self.counters.malformed_dns += 1;
                        None
                    }
                    dns::Answer::Reply(payload) => {
                        self.counters.dns_answered += 1;
                        Some(self.dns_frame(client, &payload))
                    }
                    dns::Answer::Forward => {
                        self.counters.dns_forwarded += 1;
                        Some(Output::Forward { query: u.payload.to_vec(), client })
                    }
                }
            }
            _ => {
                self.counters.ignored += 1;
                None
            }
        }
    }

    /// The answer to a forwarded query, to send back to its client.
    pub fn upstream_answer(&mut self, client: Client, answer: &[u8]) -> Vec<u8> {
        frames::udp_frame(self.setup.mac, client.mac, self.setup.address, client.ip, dns::PORT, client.port, answer)
    }

    /// The error answer to a forwarded query that got none (`query` as the
    /// client sent it): SERVFAIL, or REFUSED when there is no resolver to
    /// ask. `None` when the query cannot be read back.
    pub fn upstream_failed(&mut self, client: Client, query: &[u8], no_resolver: bool) -> Option<Vec<u8>> {
        self.counters.dns_failed += 1;
        let payload = dns::error_reply(query, no_resolver)?;
        Some(self.upstream_answer(client, &payload))
    }

    fn dns_frame(&self, client: Client, payload: &[u8]) -> Output {
        Output::Frame(frames::udp_frame(self.setup.mac, client.mac, self.setup.address, client.ip, dns::PORT, client.port, payload))
    }

    fn for_us_or_broadcast(&self, mac: [u8; 6], ip: Ipv4Addr) -> bool {
        (mac == self.setup.mac || mac == frames::BROADCAST_MAC) && (ip == self.setup.address || ip == Ipv4Addr::BROADCAST || ip == self.setup.subnet.broadcast())
    }
}

/// A name as the service stores and compares it: lower case, no trailing
/// dot.
pub fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The record of one address the book holds (`status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BookEntry {
    pub mac: String,
    pub address: Ipv4Addr,
    pub name: Option<String>,
    pub leased: bool,
}

/// Whether `addr` is an address of `setup`'s network the book may answer
/// for.
fn on_network(setup: &ServiceSetup, addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => setup.subnet.contains(a),
        IpAddr::V6(_) => setup.gateway_v6.is_some(),
    }
}

/// A MAC from a DHCP message's `chaddr` (Ethernet only).
fn mac_of(chaddr: &[u8]) -> Option<MacAddr> {
    let bytes: [u8; 6] = chaddr.get(..6)?.try_into().ok()?;
    if chaddr.len() != 6 || bytes == [0; 6] || MacAddr(bytes).is_multicast() {
        return None;
    }
    Some(MacAddr(bytes))
}

/// Starts the service port of network `name` (`addresses: broker`) on the
/// live `network` made from `config`: a port like a VM's, the subnet the
/// platform reports, the book `book` makes for that subnet, and the
/// host's resolvers as upstreams when `dnsProxy` is on (Linux: the resolv
/// file the broker gives dnsmasq too, none unless set; macOS: the host's
/// `/etc/resolv.conf`).
pub fn start_on<B: AddressBook + 'static>(
    name: &str,
    network: &dyn crate::vmnet::Network,
    config: &crate::config::NetworkConfig,
    book: impl FnOnce(Ipv4Subnet) -> B,
) -> Result<ServicePort, crate::vmnet::Error> {
    let state = network.state();
    let Some(subnet) = state.ipv4_subnet() else {
        return Err(crate::vmnet::Error::Platform { op: format!("start the service port of network {name:?}"), source: format!("the network reports no usable IPv4 subnet ({:?})", state.subnet).into() });
    };
    let gateway_v6 = state.ipv6_prefix.as_deref().and_then(|p| crate::config::Ipv6Prefix::parse(p).ok()).map(|p| p.gateway());
    // A TAP's frames carry no virtio-net header unless asked; vmnet's
    // interfaces must match the network's offload setting.
    let desc = crate::vmnet::InterfaceDesc { mac: Some(service_mac(name)), isolation: false, offload: cfg!(target_os = "macos") && config.offload() };
    let iface = network.start_interface(&desc)?;
    let setup = ServiceSetup { domain: config.dns_domain(name), ..ServiceSetup::new(name, subnet, gateway_v6, iface.info().mac) };
    let book = book(subnet);
    let upstreams = if config.dns_proxy() { upstreams_file().map(|f| port::upstreams_from(&f, setup.address)).unwrap_or_default() } else { Vec::new() };
    ServicePort::start(iface, setup, book, upstreams).map_err(|e| crate::vmnet::Error::io(format!("start the service port of network {name:?}"), e))
}

/// The resolv.conf-style file naming the host's resolvers, if any.
fn upstreams_file() -> Option<std::path::PathBuf> {
    #[cfg(target_os = "linux")]
    return std::env::var_os(crate::vmnet::linux::RESOLV_FILE_ENV).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    #[cfg(not(target_os = "linux"))]
    return Some(std::path::PathBuf::from(super::launch::HOST_RESOLV_FILE));
}

/// The service port's MAC on network `name`: fixed by the name (FNV-1a),
/// locally administered unicast, so guests' ARP caches stay right across
/// broker restarts.
pub fn service_mac(name: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("vmnet-rs-service/{name}").bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x52, 0x54, b[2], b[3], b[4], b[5]]
}
