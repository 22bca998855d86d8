//! The service's answers, frame in, frame out: ARP, a DHCP exchange per
//! RFC 2131 state, DNS names, reverse names and forwarding, and a seeded
//! mutation test of malformed DHCP and DNS messages. Clients' frames are
//! built with the same libraries (dhcproto, hickory-proto, etherparse).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dhcproto::v4::{self, Decodable, Decoder, DhcpOption, Encodable, MessageType, OptionCode};
use hickory_proto::op::{Message as DnsMessage, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::frames::{self, Inbound, BROADCAST_MAC};
use super::*;

const CLIENT_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xa1];
const CLIENT_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xb2];
const SERVICE_MAC: [u8; 6] = [0x52, 0x54, 0, 0x5e, 0x77, 0x01];

fn setup() -> ServiceSetup {
    let subnet = Ipv4Subnet::parse("192.168.120.1/24", 8, 29).unwrap();
    ServiceSetup::new("shared", subnet, Some("fd00:120::1".parse().unwrap()), SERVICE_MAC)
}

fn service() -> Service<MemoryBook> {
    let s = setup();
    let book = MemoryBook::new(pool(s.subnet), &[]);
    Service::new(s, book)
}

fn dhcp_message(mac: [u8; 6], kind: MessageType, opts: Vec<DhcpOption>) -> v4::Message {
    let mut m = v4::Message::default();
    m.set_chaddr(&mac).set_xid(0x1234_5678);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    for o in opts {
        m.opts_mut().insert(o);
    }
    m
}

fn dhcp_frame(mac: [u8; 6], m: &v4::Message) -> Vec<u8> {
    let src = if m.ciaddr().is_unspecified() { Ipv4Addr::UNSPECIFIED } else { m.ciaddr() };
    frames::udp_frame(mac, BROADCAST_MAC, src, Ipv4Addr::BROADCAST, 68, 67, &m.to_vec().unwrap())
}

/// The DHCP reply in `out`, with the frame's destination MAC and IP.
fn dhcp_reply(out: Option<Output>) -> ([u8; 6], Ipv4Addr, v4::Message) {
    let Some(Output::Frame(f)) = out else { panic!("no frame: {out:?}") };
    let Ok(Inbound::Udp(u)) = frames::parse(&f) else { panic!("not UDP") };
    assert_eq!((u.src_port, u.dst_port, u.src_ip, u.src_mac), (67, 68, setup().address, SERVICE_MAC));
    (u.dst_mac, u.dst_ip, v4::Message::decode(&mut Decoder::new(u.payload)).unwrap())
}

/// DISCOVER then REQUEST (selecting); the ACK's address.
fn lease(s: &mut Service<MemoryBook>, mac: [u8; 6], hostname: &str) -> Ipv4Addr {
    let host = DhcpOption::Hostname(hostname.into());
    let (_, _, offer) = dhcp_reply(s.handle_frame(&dhcp_frame(mac, &dhcp_message(mac, MessageType::Discover, vec![host.clone()]))));
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    let req = dhcp_message(mac, MessageType::Request, vec![host, DhcpOption::RequestedIpAddress(offer.yiaddr()), DhcpOption::ServerIdentifier(setup().address)]);
    let (dst_mac, dst_ip, ack) = dhcp_reply(s.handle_frame(&dhcp_frame(mac, &req)));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!((dst_mac, dst_ip), (mac, ack.yiaddr()), "unicast to the client's new address");
    ack.yiaddr()
}

fn dns_query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = DnsMessage::query();
    m.metadata.id = 0x4242;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

fn dns_frame(payload: &[u8]) -> Vec<u8> {
    frames::udp_frame(CLIENT_B, SERVICE_MAC, Ipv4Addr::new(192, 168, 120, 9), setup().address, 40000, 53, payload)
}

fn dns_reply(out: Option<Output>) -> DnsMessage {
    let Some(Output::Frame(f)) = out else { panic!("no frame: {out:?}") };
    let Ok(Inbound::Udp(u)) = frames::parse(&f) else { panic!("not UDP") };
    assert_eq!((u.src_port, u.dst_port, u.dst_mac, u.dst_ip), (53, 40000, CLIENT_B, Ipv4Addr::new(192, 168, 120, 9)));
    let m = DnsMessage::from_vec(u.payload).unwrap();
    assert_eq!(m.metadata.id, 0x4242);
    m
}

fn ask(s: &mut Service<MemoryBook>, name: &str, qtype: RecordType) -> DnsMessage {
    dns_reply(s.handle_frame(&dns_frame(&dns_query(name, qtype))))
}

fn answers(m: &DnsMessage) -> Vec<String> {
    m.answers.iter().map(|r| r.data.to_string()).collect()
}

#[test]
fn service_address_is_the_last_client_address_and_the_pool_ends_below_it() {
    let s = setup();
    assert_eq!(s.address, Ipv4Addr::new(192, 168, 120, 254));
    assert_eq!(pool(s.subnet), (Ipv4Addr::new(192, 168, 120, 2), Ipv4Addr::new(192, 168, 120, 253)));
    assert_eq!(s.domain, "shared.vmnet.internal");
    let small = Ipv4Subnet::parse("10.1.2.1/29", 8, 29).unwrap();
    assert_eq!(service_address(small), Ipv4Addr::new(10, 1, 2, 6));
    assert_eq!(pool(small), (Ipv4Addr::new(10, 1, 2, 2), Ipv4Addr::new(10, 1, 2, 5)));
}

#[test]
fn answers_arp_for_its_own_address_only() {
    let mut s = service();
    let asker = Ipv4Addr::new(192, 168, 120, 7);
    let request = |target: Ipv4Addr| {
        let arp: etherparse::ArpPacket = etherparse::ArpEthIpv4Packet {
            operation: etherparse::ArpOperation::REQUEST,
            sender_mac: CLIENT_A,
            sender_ipv4: asker.octets(),
            target_mac: [0; 6],
            target_ipv4: target.octets(),
        }
        .into();
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2(CLIENT_A, BROADCAST_MAC).arp(arp).write_to_vec(&mut f).unwrap();
        f
    };
    let Some(Output::Frame(reply)) = s.handle_frame(&request(setup().address)) else { panic!("no ARP reply") };
    let p = etherparse::SlicedPacket::from_ethernet(&reply).unwrap();
    let Some(etherparse::NetSlice::Arp(arp)) = p.net else { panic!("not ARP") };
    let a = arp.to_packet().try_eth_ipv4().unwrap();
    assert_eq!(a.operation, etherparse::ArpOperation::REPLY);
    assert_eq!((a.sender_mac, a.sender_ipv4_addr(), a.target_mac, a.target_ipv4_addr()), (SERVICE_MAC, setup().address, CLIENT_A, asker));
    assert_eq!(s.handle_frame(&request(Ipv4Addr::new(192, 168, 120, 1))), None, "the gateway is the host's to answer");
    assert_eq!((s.counters().arp_replies, s.counters().ignored), (1, 1));
}

#[test]
fn dhcp_exchange_offers_acks_and_names_router_and_dns() {
    let mut s = service();
    let (dst_mac, _, offer) = dhcp_reply(s.handle_frame(&dhcp_frame(CLIENT_A, &dhcp_message(CLIENT_A, MessageType::Discover, vec![]))));
    assert_eq!(dst_mac, CLIENT_A);
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(192, 168, 120, 2));
    assert_eq!(offer.xid(), 0x1234_5678);
    let o = offer.opts();
    assert_eq!(o.get(OptionCode::ServerIdentifier), Some(&DhcpOption::ServerIdentifier(setup().address)));
    assert_eq!(o.get(OptionCode::Router), Some(&DhcpOption::Router(vec![Ipv4Addr::new(192, 168, 120, 1)])));
    assert_eq!(o.get(OptionCode::DomainNameServer), Some(&DhcpOption::DomainNameServer(vec![setup().address])));
    assert_eq!(o.get(OptionCode::SubnetMask), Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0))));
    assert_eq!(o.get(OptionCode::DomainName), Some(&DhcpOption::DomainName("shared.vmnet.internal".into())));
    assert_eq!(o.get(OptionCode::AddressLeaseTime), Some(&DhcpOption::AddressLeaseTime(LEASE_SECS)));
    let a = lease(&mut s, CLIENT_A, "alpha");
    assert_eq!(a, offer.yiaddr());
    let b = lease(&mut s, CLIENT_B, "beta");
    assert_ne!(a, b, "two clients never share an address");
    let c = s.counters();
    assert_eq!((c.dhcp_offers, c.dhcp_acks, c.dhcp_naks, c.malformed_dhcp), (3, 2, 0, 0));
}

#[test]
fn broadcast_flag_gets_a_broadcast_answer() {
    let mut s = service();
    let mut m = dhcp_message(CLIENT_A, MessageType::Discover, vec![]);
    m.set_flags(v4::Flags::default().set_broadcast());
    let (dst_mac, dst_ip, _) = dhcp_reply(s.handle_frame(&dhcp_frame(CLIENT_A, &m)));
    assert_eq!((dst_mac, dst_ip), (BROADCAST_MAC, Ipv4Addr::BROADCAST));
}

#[test]
fn renewal_is_acked_to_the_client_address_and_a_foreign_address_is_naked() {
    let mut s = service();
    let a = lease(&mut s, CLIENT_A, "alpha");
    let mut renew = dhcp_message(CLIENT_A, MessageType::Request, vec![]);
    renew.set_ciaddr(a);
    let (dst_mac, dst_ip, ack) = dhcp_reply(s.handle_frame(&dhcp_frame(CLIENT_A, &renew)));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!((dst_mac, dst_ip, ack.yiaddr()), (CLIENT_A, a, a));

    // Init-reboot into another network's subnet.
    let foreign = dhcp_message(CLIENT_A, MessageType::Request, vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 9, 9, 9))]);
    let (dst_mac, dst_ip, nak) = dhcp_reply(s.handle_frame(&dhcp_frame(CLIENT_A, &foreign)));
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!((dst_mac, dst_ip, nak.yiaddr()), (BROADCAST_MAC, Ipv4Addr::BROADCAST, Ipv4Addr::UNSPECIFIED));

    // B asks for A's address.
    let theft = dhcp_message(CLIENT_B, MessageType::Request, vec![DhcpOption::RequestedIpAddress(a)]);
    let (_, _, nak) = dhcp_reply(s.handle_frame(&dhcp_frame(CLIENT_B, &theft)));
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(s.counters().dhcp_naks, 2);
}

#[test]
fn request_for_another_server_and_relayed_messages_get_no_answer() {
    let mut s = service();
    let other = dhcp_message(CLIENT_A, MessageType::Request, vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(192, 168, 120, 50)), DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 168, 120, 1))]);
    assert_eq!(s.handle_frame(&dhcp_frame(CLIENT_A, &other)), None);
    let mut relayed = dhcp_message(CLIENT_A, MessageType::Discover, vec![]);
    relayed.set_giaddr(Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(s.handle_frame(&dhcp_frame(CLIENT_A, &relayed)), None);
    assert_eq!(s.counters().dhcp_unanswered, 2);
}

#[test]
fn release_ends_the_name_but_the_mac_gets_its_address_again() {
    let mut s = service();
    let a = lease(&mut s, CLIENT_A, "alpha");
    let _ = lease(&mut s, CLIENT_B, "beta");
    assert_eq!(answers(&ask(&mut s, "alpha.shared.vmnet.internal.", RecordType::A)), vec![a.to_string()]);
    let mut rel = dhcp_message(CLIENT_A, MessageType::Release, vec![DhcpOption::ServerIdentifier(setup().address)]);
    rel.set_ciaddr(a);
    assert_eq!(s.handle_frame(&dhcp_frame(CLIENT_A, &rel)), None);
    assert_eq!(s.counters().dhcp_releases, 1);
    assert_eq!(ask(&mut s, "alpha.shared.vmnet.internal.", RecordType::A).metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(lease(&mut s, CLIENT_A, "alpha"), a, "the same MAC comes back to the same address");
    assert_eq!(answers(&ask(&mut s, "alpha.shared.vmnet.internal.", RecordType::A)), vec![a.to_string()]);
}

#[test]
fn a_claimed_host_name_held_by_another_is_not_served_for_it() {
    let mut s = service();
    let a = lease(&mut s, CLIENT_A, "alpha");
    let b = lease(&mut s, CLIENT_B, "Alpha");
    assert_eq!(answers(&ask(&mut s, "alpha.shared.vmnet.internal.", RecordType::A)), vec![a.to_string()]);
    let ptr = ask(&mut s, &format!("{}.in-addr.arpa.", reversed(b)), RecordType::PTR);
    assert_eq!(ptr.metadata.response_code, ResponseCode::NXDomain);
}

fn reversed(a: Ipv4Addr) -> String {
    let o = a.octets();
    format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
}

#[test]
fn dns_answers_names_host_and_reverse_lookups() {
    let mut s = service();
    let a = lease(&mut s, CLIENT_A, "alpha");
    let r = ask(&mut s, "ALPHA.shared.vmnet.internal.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative);
    assert_eq!(answers(&r), vec![a.to_string()]);
    assert_eq!(r.queries.len(), 1);
    // A name with no IPv6 address: NODATA, not NXDOMAIN.
    let r = ask(&mut s, "alpha.shared.vmnet.internal.", RecordType::AAAA);
    assert_eq!((r.metadata.response_code, r.answers.len()), (ResponseCode::NoError, 0));
    assert_eq!(answers(&ask(&mut s, "host.shared.vmnet.internal.", RecordType::A)), vec!["192.168.120.1"]);
    assert_eq!(answers(&ask(&mut s, "host.shared.vmnet.internal.", RecordType::AAAA)), vec!["fd00:120::1"]);
    assert_eq!(ask(&mut s, "nobody.shared.vmnet.internal.", RecordType::A).metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(ask(&mut s, "a.b.shared.vmnet.internal.", RecordType::A).metadata.response_code, ResponseCode::NXDomain);

    let ptr = ask(&mut s, &format!("{}.in-addr.arpa.", reversed(a)), RecordType::PTR);
    assert_eq!(answers(&ptr), vec!["alpha.shared.vmnet.internal."]);
    let gw = ask(&mut s, "1.120.168.192.in-addr.arpa.", RecordType::PTR);
    assert_eq!(answers(&gw), vec!["host.shared.vmnet.internal."]);
    let v6: Name = IpAddr::V6("fd00:120::1".parse::<Ipv6Addr>().unwrap()).into();
    let gw6 = ask(&mut s, &v6.to_ascii(), RecordType::PTR);
    assert!(matches!(&gw6.answers[0].data, RData::PTR(p) if p.0.to_ascii() == "host.shared.vmnet.internal."));
    assert_eq!(ask(&mut s, "77.120.168.192.in-addr.arpa.", RecordType::PTR).metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(s.counters().dns_answered, s.counters().dns_queries);
}

#[test]
fn other_names_are_forwarded_and_fail_visibly_without_resolvers() {
    let mut s = service();
    let q = dns_query("example.com.", RecordType::A);
    let Some(Output::Forward { query, client }) = s.handle_frame(&dns_frame(&q)) else { panic!("not forwarded") };
    assert_eq!(query, q);
    assert_eq!((client.mac, client.port), (CLIENT_B, 40000));
    // Reverse names outside the network go to the resolvers too.
    let outside = dns_query("8.8.8.8.in-addr.arpa.", RecordType::PTR);
    assert!(matches!(s.handle_frame(&dns_frame(&outside)), Some(Output::Forward { .. })));
    let refused = dns_reply(Some(Output::Frame(s.upstream_failed(client, &query, true).unwrap())));
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    let failed = dns_reply(Some(Output::Frame(s.upstream_failed(client, &query, false).unwrap())));
    assert_eq!(failed.metadata.response_code, ResponseCode::ServFail);
    assert_eq!((s.counters().dns_forwarded, s.counters().dns_failed), (2, 2));
}

#[test]
fn frames_not_for_the_service_are_ignored() {
    let mut s = service();
    // DNS to another address, DHCP client port traffic, a non-IP frame.
    let elsewhere = frames::udp_frame(CLIENT_B, CLIENT_A, Ipv4Addr::new(192, 168, 120, 9), Ipv4Addr::new(192, 168, 120, 2), 40000, 53, &dns_query("x.", RecordType::A));
    assert_eq!(s.handle_frame(&elsewhere), None);
    let to_client = frames::udp_frame(CLIENT_B, BROADCAST_MAC, Ipv4Addr::new(192, 168, 120, 9), Ipv4Addr::BROADCAST, 67, 68, b"x");
    assert_eq!(s.handle_frame(&to_client), None);
    let mut ipv6 = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_A, BROADCAST_MAC).ipv6([0; 16], [0xff; 16], 1).udp(1, 2).write(&mut ipv6, b"x").unwrap();
    assert_eq!(s.handle_frame(&ipv6), None);
    assert_eq!(s.counters().ignored, 3);
    assert_eq!(s.counters().malformed_frames, 0);
}

/// A small seeded generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Flips, overwrites, truncates, extends and splices bytes of `seed`.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0, 0xff, 0x7f, 0x80, 16, 255, 0xc0][rng.below(7)];
            }
            2 => v.truncate(rng.below(v.len() + 1)),
            3 => v.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
            4 if v.len() > 4 => {
                let (a, b) = (rng.below(v.len()), rng.below(v.len()));
                let (lo, hi) = (a.min(b), a.max(b));
                let chunk = v[lo..hi].to_vec();
                let at = rng.below(v.len());
                v.splice(at..at, chunk);
            }
            _ => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
        }
    }
    v
}

#[test]
fn malformed_dhcp_and_dns_are_dropped_and_counted_and_the_service_goes_on() {
    let mut s = service();
    let mut rng = Rng(0x5eed_2020_d1ce_0001);
    let mut req = dhcp_message(CLIENT_A, MessageType::Request, vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(192, 168, 120, 2)), DhcpOption::Hostname("alpha".into())]);
    req.set_ciaddr(Ipv4Addr::new(192, 168, 120, 2));
    let dhcp_seeds: Vec<Vec<u8>> = [
        dhcp_message(CLIENT_A, MessageType::Discover, vec![DhcpOption::Hostname("alpha".into()), DhcpOption::ClientIdentifier(vec![1, 2, 3])]),
        req,
        dhcp_message(CLIENT_B, MessageType::Release, vec![]),
    ]
    .iter()
    .map(|m| m.to_vec().unwrap())
    .collect();
    let dns_seeds = [dns_query("alpha.shared.vmnet.internal.", RecordType::A), dns_query("2.120.168.192.in-addr.arpa.", RecordType::PTR), dns_query("example.com.", RecordType::AAAA)];
    const ROUNDS: u64 = 30000;
    for round in 0..ROUNDS {
        let (payload, to_dhcp) = match round % 3 {
            0 => {
                let seed = &dhcp_seeds[rng.below(dhcp_seeds.len())];
                (mutate(&mut rng, seed), true)
            }
            1 => {
                let seed = &dns_seeds[rng.below(dns_seeds.len())];
                (mutate(&mut rng, seed), false)
            }
            // Whole frames mutated: headers too.
            _ => {
                let seed = dns_frame(&dns_seeds[rng.below(dns_seeds.len())]);
                let f = mutate(&mut rng, &seed);
                let _ = s.handle_frame(&f);
                continue;
            }
        };
        let frame = if to_dhcp { frames::udp_frame(CLIENT_A, BROADCAST_MAC, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67, &payload) } else { dns_frame(&payload) };
        let _ = s.handle_frame(&frame);
    }
    let c = s.counters().clone();
    assert_eq!(c.frames, ROUNDS);
    assert!(c.malformed_dhcp > 100, "malformed DHCP counted: {c:?}");
    assert!(c.malformed_dns > 100, "malformed DNS counted: {c:?}");
    assert!(c.malformed_frames > 0, "malformed frames counted: {c:?}");
    // Still answering.
    let before = s.counters().dhcp_acks;
    let _ = lease(&mut s, [0x52, 0x54, 0, 0, 0, 0xc3], "gamma");
    assert_eq!(s.counters().dhcp_acks, before + 1);
    assert_eq!(ask(&mut s, "host.shared.vmnet.internal.", RecordType::A).metadata.response_code, ResponseCode::NoError);
}

#[test]
fn a_chaddr_length_beyond_its_field_is_malformed_not_a_panic() {
    let mut s = service();
    let mut bytes = dhcp_message(CLIENT_A, MessageType::Discover, vec![]).to_vec().unwrap();
    bytes[2] = 200; // hlen
    let frame = frames::udp_frame(CLIENT_A, BROADCAST_MAC, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67, &bytes);
    assert_eq!(s.handle_frame(&frame), None);
    assert_eq!(s.counters().malformed_dhcp, 1);
}

#[test]
fn upstreams_are_read_from_a_resolv_file_without_the_service_itself() {
    let dir = std::env::temp_dir().join(format!("vmnet-rs-svc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("resolv.conf");
    std::fs::write(&f, "# comment\nnameserver 10.0.0.53\nnameserver 192.168.120.254\nsearch x\nnameserver fe80::1%eth0\nnameserver bogus\n").unwrap();
    let u = port::upstreams_from(&f, setup().address);
    assert_eq!(u.iter().map(|a| a.to_string()).collect::<Vec<_>>(), vec!["10.0.0.53:53", "[fe80::1]:53"]);
    assert!(port::upstreams_from(&dir.join("missing"), setup().address).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The port's thread over a socketpair interface: an answer comes back,
/// garbage does not stop it, its status counts both, and stop ends it.
#[cfg(target_os = "linux")]
#[test]
fn port_thread_answers_counts_and_stops() {
    use std::os::fd::AsRawFd;
    let (ours, theirs) = crate::vmnet::seqpacket_pair(true).unwrap();
    let info = crate::vmnet::InterfaceInfo { mac: SERVICE_MAC, mtu: 1500, max_frame_bytes: 1514, read_max_frames: 8, write_max_frames: 8, offload: false };
    let iface = Box::new(crate::vmnet::SeqpacketPort::new(ours, info));
    let s = setup();
    let mut port = ServicePort::start(iface, s.clone(), MemoryBook::new(pool(s.subnet), &[]), Vec::new()).unwrap();
    let send = |f: &[u8]| {
        // SAFETY: f is a valid buffer of its length; theirs is our open socket.
        assert_eq!(unsafe { libc::send(theirs.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) }, f.len() as isize);
    };
    let recv = || {
        let mut pfd = libc::pollfd { fd: theirs.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1, "no answer within 5 s");
        let mut buf = vec![0u8; 2048];
        // SAFETY: buf is a valid writable buffer of its length.
        let n = unsafe { libc::recv(theirs.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        buf.truncate(n as usize);
        buf
    };
    send(b"\x01\x02garbage");
    send(&frames::udp_frame(CLIENT_A, BROADCAST_MAC, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67, b"not dhcp"));
    send(&dhcp_frame(CLIENT_A, &dhcp_message(CLIENT_A, MessageType::Discover, vec![])));
    let (_, _, offer) = dhcp_reply(Some(Output::Frame(recv())));
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    // No resolver: another name is REFUSED at once.
    send(&dns_frame(&dns_query("example.com.", RecordType::A)));
    assert_eq!(dns_reply(Some(Output::Frame(recv()))).metadata.response_code, ResponseCode::Refused);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while port.status().counters.dns_failed < 1 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    let st = port.status();
    assert!(st.running);
    assert_eq!((st.counters.frames, st.counters.malformed_frames, st.counters.malformed_dhcp, st.counters.dhcp_offers), (4, 1, 1, 1));
    assert_eq!(st.records.len(), 1);
    port.stop();
    assert!(!port.status().running);
}

/// Forwarding through the port's thread to a resolver on loopback: the
/// answer comes back to the client under its own query id; a resolver that
/// stays silent costs the client a SERVFAIL after the timeout.
#[cfg(target_os = "linux")]
#[test]
fn port_thread_forwards_other_names_and_answers_servfail_when_the_resolver_is_silent() {
    use std::os::fd::AsRawFd;
    let resolver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    resolver.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let (ours, theirs) = crate::vmnet::seqpacket_pair(true).unwrap();
    let info = crate::vmnet::InterfaceInfo { mac: SERVICE_MAC, mtu: 1500, max_frame_bytes: 1514, read_max_frames: 8, write_max_frames: 8, offload: false };
    let s = setup();
    let mut port = ServicePort::start(Box::new(crate::vmnet::SeqpacketPort::new(ours, info)), s.clone(), MemoryBook::new(pool(s.subnet), &[]), vec![resolver.local_addr().unwrap()]).unwrap();
    let send = |f: &[u8]| {
        // SAFETY: f is a valid buffer of its length; theirs is our open socket.
        assert_eq!(unsafe { libc::send(theirs.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) }, f.len() as isize);
    };
    let recv = |within_ms: i32| {
        let mut pfd = libc::pollfd { fd: theirs.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, within_ms) }, 1, "no answer within {within_ms} ms");
        let mut buf = vec![0u8; 2048];
        // SAFETY: buf is a valid writable buffer of its length.
        let n = unsafe { libc::recv(theirs.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        buf.truncate(n as usize);
        buf
    };
    send(&dns_frame(&dns_query("example.com.", RecordType::A)));
    let mut buf = [0u8; 512];
    let (n, from) = resolver.recv_from(&mut buf).expect("the query reaches the resolver");
    let asked = DnsMessage::from_vec(&buf[..n]).unwrap();
    assert_eq!(asked.queries[0].name().to_ascii(), "example.com.");
    let mut answer = DnsMessage::response(asked.metadata.id, asked.metadata.op_code);
    answer.add_query(asked.queries[0].clone());
    answer.add_answer(hickory_proto::rr::Record::from_rdata(asked.queries[0].name().clone(), 60, RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(192, 0, 2, 7)))));
    resolver.send_to(&answer.to_vec().unwrap(), from).unwrap();
    let got = dns_reply(Some(Output::Frame(recv(5000))));
    assert_eq!(answers(&got), vec!["192.0.2.7"]);
    // Silence: SERVFAIL once the timeout passed.
    send(&dns_frame(&dns_query("example.org.", RecordType::A)));
    let _ = resolver.recv_from(&mut buf).expect("the second query reaches the resolver");
    let failed = dns_reply(Some(Output::Frame(recv(5000))));
    assert_eq!(failed.metadata.response_code, ResponseCode::ServFail);
    port.stop();
    let c = port.status().counters;
    assert_eq!((c.dns_forwarded, c.dns_failed), (2, 1));
}

/// The broker's records as the book: a MAC gets the address its record
/// keeps on disk after the service (the broker) is gone and back, whoever
/// asks first; the claimed name is served and reverse lookups give it.
#[test]
fn records_in_the_state_directory_give_a_mac_its_address_again() {
    use crate::broker::records::Book;
    let dir = std::env::temp_dir().join(format!("vmnet-rs-svc-records-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let s = setup();
    let open = || Service::new(s.clone(), Book::open(&dir, "shared", s.subnet, None, &[]).unwrap());
    let mut first = open();
    let a = lease_in(&mut first, CLIENT_A, "alpha");
    let b = lease_in(&mut first, CLIENT_B, "beta");
    assert_ne!(a, b);
    let r = ask_in(&mut first, "alpha.shared.vmnet.internal.", RecordType::A);
    assert_eq!(answers_of(&r), vec![a.to_string()]);
    let ptr = ask_in(&mut first, &format!("{}.in-addr.arpa.", reversed(b)), RecordType::PTR);
    assert_eq!(answers_of(&ptr), vec!["beta.shared.vmnet.internal."]);
    drop(first);
    // B asks first this time; each still gets its own address.
    let mut again = open();
    assert_eq!(lease_in(&mut again, CLIENT_B, "beta"), b);
    assert_eq!(lease_in(&mut again, CLIENT_A, "alpha"), a);
    let _ = std::fs::remove_dir_all(&dir);
}

/// [`lease`] for any book.
fn lease_in<B: AddressBook>(s: &mut Service<B>, mac: [u8; 6], hostname: &str) -> Ipv4Addr {
    let host = DhcpOption::Hostname(hostname.into());
    let (_, _, offer) = dhcp_reply(s.handle_frame(&dhcp_frame(mac, &dhcp_message(mac, MessageType::Discover, vec![host.clone()]))));
    let req = dhcp_message(mac, MessageType::Request, vec![host, DhcpOption::RequestedIpAddress(offer.yiaddr()), DhcpOption::ServerIdentifier(setup().address)]);
    let (_, _, ack) = dhcp_reply(s.handle_frame(&dhcp_frame(mac, &req)));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    ack.yiaddr()
}

fn ask_in<B: AddressBook>(s: &mut Service<B>, name: &str, qtype: RecordType) -> DnsMessage {
    dns_reply(s.handle_frame(&dns_frame(&dns_query(name, qtype))))
}

fn answers_of(m: &DnsMessage) -> Vec<String> {
    answers(m)
}

/// A book that offers the service's own address (a full range) gets no
/// answer from the service rather than a conflict on the network.
#[test]
fn the_service_address_is_never_leased() {
    let small = Ipv4Subnet::parse("10.1.2.1/29", 8, 29).unwrap();
    let s = ServiceSetup::new("tiny", small, None, SERVICE_MAC);
    // A book over the whole range up to the service address.
    let mut svc = Service::new(s.clone(), MemoryBook::new((Ipv4Addr::new(10, 1, 2, 6), Ipv4Addr::new(10, 1, 2, 6)), &[]));
    let discover = dhcp_message(CLIENT_A, MessageType::Discover, vec![]);
    let f = frames::udp_frame(CLIENT_A, BROADCAST_MAC, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67, &discover.to_vec().unwrap());
    assert_eq!(svc.handle_frame(&f), None);
    let req = dhcp_message(CLIENT_A, MessageType::Request, vec![DhcpOption::RequestedIpAddress(s.address)]);
    let f = frames::udp_frame(CLIENT_A, BROADCAST_MAC, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67, &req.to_vec().unwrap());
    let Some(Output::Frame(nak)) = svc.handle_frame(&f) else { panic!("no NAK") };
    let Ok(Inbound::Udp(u)) = frames::parse(&nak) else { panic!("not UDP") };
    assert_eq!(v4::Message::decode(&mut Decoder::new(u.payload)).unwrap().opts().msg_type(), Some(MessageType::Nak));
    assert_eq!((svc.counters().dhcp_unanswered, svc.counters().dhcp_naks), (1, 1));
}
