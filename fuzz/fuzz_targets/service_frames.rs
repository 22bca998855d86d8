//! Fuzz target: the broker's own port on an `addresses: broker` network
//! (`broker/service.rs` `Service::handle_frame`, with `service/frames.rs`,
//! `dhcp.rs` and `dns.rs`): every frame a VM sends there, ARP, DHCP, DNS or
//! anything else, with the answers it gets.
//!
//! Input: records, each a kind byte, a 2-byte big-endian length and that
//! many bytes, handled in order by one service (so a DHCP exchange can
//! run over several). Kind & 3: 0, the bytes are the whole frame; 1, they
//! are a DHCP message sent to port 67 (broadcast, or to the service if kind
//! & 16); 2, a DNS message sent to the service's port 53; 3, an ARP request
//! (for the service's address if kind & 16, else for the address in the
//! first 4 bytes). Kind >> 5 picks one of four client MACs. The frames
//! around messages are built with etherparse, so the fuzzer spends its time
//! on the messages.
//!
//! Checked on every input, from the module's documented invariants:
//! - `handle_frame` returns for every frame, and every frame is counted
//!   once: as ignored, malformed, an ARP reply, a DHCP request or a DNS
//!   query;
//! - a frame it sends is Ethernet from the service's MAC and at most 1514
//!   bytes: an ARP reply saying the service's address is at its MAC, to the
//!   asker; or IPv4/UDP from the service's address and port 67 or 53, with
//!   lengths and checksums right, carrying a DHCP reply (BOOTREPLY, the
//!   request's xid) or a DNS response (the query's ID) that decode;
//! - a query it forwards is the client's, unchanged, with the client's
//!   addresses; its error answer (`upstream_failed`) is a DNS response
//!   with the query's ID and SERVFAIL or REFUSED, framed as above.
//!
//! Seeds: with `VMNET_RS_FUZZ_WRITE_SEEDS=DIR` set, the target writes a
//! DHCP exchange (DISCOVER, REQUEST, RELEASE), DNS queries (the gateway's
//! name, a reverse name, a name to forward, one with EDNS) and ARP requests
//! into DIR at start-up.

#![no_main]

mod common;

use std::net::Ipv4Addr;

use _native::broker::service::{pool, Counters, MemoryBook, Output, Service, ServiceSetup};
use _native::config::Ipv4Subnet;
use dhcproto::v4::{self, Decodable, Decoder, DhcpOption, Encodable, MessageType};
use etherparse::{ArpEthIpv4Packet, ArpOperation, ArpPacket, LinkSlice, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use hickory_proto::op::{Edns, Message, MessageType as DnsType, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use libfuzzer_sys::fuzz_target;

const SERVICE_MAC: [u8; 6] = [0x52, 0x54, 0, 0x5e, 0x77, 0x01];
const CLIENTS: [[u8; 6]; 4] = [[0x52, 0x54, 0, 0, 0, 0xa1], [0x52, 0x54, 0, 0, 0, 0xb2], [0x52, 0x54, 0, 0, 0, 0xc3], [0xff; 6]];
const BROADCAST: [u8; 6] = [0xff; 6];

fn setup() -> ServiceSetup {
    let subnet = Ipv4Subnet::parse("192.168.120.1/24", 8, 29).expect("a subnet");
    ServiceSetup::new("shared", subnet, Some("fd00:120::1".parse().expect("an IPv6 address")), SERVICE_MAC)
}

fn client_ip(mac: [u8; 6]) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 120, mac[5] % 200 + 2)
}

fn udp(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src.octets(), dst.octets(), 64).udp(sport, dport);
    let mut out = Vec::new();
    // A payload too large for one datagram: no frame.
    let _ = b.write(&mut out, payload);
    out
}

fn arp_request(mac: [u8; 6], target: Ipv4Addr) -> Vec<u8> {
    let arp: ArpPacket = ArpEthIpv4Packet { operation: ArpOperation::REQUEST, sender_mac: mac, sender_ipv4: client_ip(mac).octets(), target_mac: [0; 6], target_ipv4: target.octets() }.into();
    let b = PacketBuilder::ethernet2(mac, BROADCAST).arp(arp);
    let mut out = Vec::new();
    b.write_to_vec(&mut out).expect("an ARP request");
    out
}

/// The frame a record describes, and what a reply must answer: the
/// DHCP xid or DNS ID of the message in it, if it has one.
fn frame(kind: u8, bytes: &[u8], s: &ServiceSetup) -> Vec<u8> {
    let mac = CLIENTS[usize::from(kind >> 5) % CLIENTS.len()];
    match kind & 3 {
        0 => bytes.to_vec(),
        1 => {
            let (dst_mac, dst) = if kind & 16 != 0 { (SERVICE_MAC, s.address) } else { (BROADCAST, Ipv4Addr::BROADCAST) };
            udp(mac, dst_mac, Ipv4Addr::UNSPECIFIED, dst, 68, 67, bytes)
        }
        2 => udp(mac, SERVICE_MAC, client_ip(mac), s.address, 40000, 53, bytes),
        _ => {
            let target = match bytes {
                [a, b, c, d, ..] if kind & 16 == 0 => Ipv4Addr::new(*a, *b, *c, *d),
                _ => s.address,
            };
            arp_request(mac, target)
        }
    }
}

/// Checks a frame the service sends; returns its UDP source port and
/// payload (`None` for ARP).
fn check_sent(f: &[u8], s: &ServiceSetup, to: Option<([u8; 6], Ipv4Addr)>) -> Option<(u16, Vec<u8>)> {
    assert!(f.len() <= 1514, "a {}-byte frame from the service", f.len());
    let p = SlicedPacket::from_ethernet(f).unwrap_or_else(|e| panic!("the service sent a frame that does not parse: {e}"));
    let Some(LinkSlice::Ethernet2(eth)) = &p.link else { panic!("the service sent a frame that is not Ethernet II") };
    assert_eq!(eth.source(), s.mac, "a frame from another MAC");
    match (&p.net, &p.transport) {
        (Some(NetSlice::Arp(arp)), _) => {
            let a = arp.to_packet().try_eth_ipv4().expect("an Ethernet/IPv4 ARP packet");
            assert_eq!(a.operation, ArpOperation::REPLY, "ARP from the service that is not a reply");
            assert_eq!((a.sender_mac, Ipv4Addr::from(a.sender_ipv4)), (s.mac, s.address), "an ARP reply for another address");
            assert_eq!(eth.destination(), a.target_mac, "an ARP reply to someone else than its target");
            None
        }
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(u))) => {
            let h = ip.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 header checksum");
            assert_eq!(usize::from(h.total_len), f.len() - 14, "IPv4 total length");
            assert_eq!(Ipv4Addr::from(h.source), s.address, "a datagram from another address");
            let uh = u.to_header();
            assert_eq!(usize::from(uh.length), f.len() - 34, "UDP length");
            assert_eq!(uh.checksum, uh.calc_checksum_ipv4(&h, u.payload()).expect("a checksum"), "UDP checksum");
            if let Some((mac, ip)) = to {
                assert_eq!((eth.destination(), Ipv4Addr::from(h.destination)), (mac, ip), "an answer to someone else");
            }
            Some((uh.source_port, u.payload().to_vec()))
        }
        other => panic!("the service sent neither ARP nor IPv4/UDP: {other:?}"),
    }
}

fn check_dns(payload: &[u8], query: &[u8]) -> Message {
    let m = Message::from_vec(payload).unwrap_or_else(|e| panic!("a DNS answer that does not decode: {e}"));
    assert_eq!(m.metadata.message_type, DnsType::Response, "a DNS answer that is not a response");
    assert_eq!(m.metadata.id.to_be_bytes(), [query[0], query[1]], "a DNS answer with another ID");
    m
}

fn total(c: &Counters) -> u64 {
    c.ignored + c.malformed_frames + c.arp_replies + c.dhcp_requests + c.dns_queries
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let rec = |kind: u8, bytes: Vec<u8>| {
        let mut v = vec![kind];
        v.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        v.extend(bytes);
        v
    };
    let dhcp = |kind: MessageType, opts: Vec<DhcpOption>| {
        let mut m = v4::Message::default();
        m.set_chaddr(&CLIENTS[0]).set_xid(0x1234_5678);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in opts {
            m.opts_mut().insert(o);
        }
        m.to_vec().expect("a DHCP message")
    };
    let dns = |name: &str, qtype: RecordType, edns: bool| {
        let mut m = Message::query();
        m.metadata.id = 0x4242;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).expect("a name"), qtype));
        if edns {
            m.set_edns(Edns::new());
        }
        m.to_vec().expect("a DNS query")
    };
    let s = setup();
    let host = DhcpOption::Hostname("vm1".into());
    let exchange = [
        rec(1, dhcp(MessageType::Discover, vec![host.clone()])),
        rec(1, dhcp(MessageType::Request, vec![host, DhcpOption::RequestedIpAddress(Ipv4Addr::new(192, 168, 120, 2)), DhcpOption::ServerIdentifier(s.address)])),
        rec(2, dns("vm1.shared.vmnet.internal.", RecordType::A, false)),
        rec(2, dns("2.120.168.192.in-addr.arpa.", RecordType::PTR, false)),
        rec(1 | 16, dhcp(MessageType::Release, vec![DhcpOption::ServerIdentifier(s.address)])),
    ]
    .concat();
    vec![
        ("dhcp-exchange".into(), exchange),
        ("dns-host".into(), rec(2, dns("host.shared.vmnet.internal.", RecordType::ANY, true))),
        ("dns-forward".into(), rec(2, dns("example.org.", RecordType::AAAA, false))),
        ("arp".into(), [rec(3 | 16, vec![]), rec(3 | 32, vec![192, 168, 120, 1])].concat()),
        ("raw-dns".into(), rec(0, udp(CLIENTS[1], SERVICE_MAC, client_ip(CLIENTS[1]), s.address, 5353, 53, &dns("host.shared.vmnet.internal.", RecordType::A, false)))),
    ]
}

fuzz_target!(
    init: common::write_seeds(seeds),
    |data: &[u8]| {
        let s = setup();
        let mut service = Service::new(s.clone(), MemoryBook::new(pool(s.subnet), &[(CLIENTS[2], Ipv4Addr::new(192, 168, 120, 77))]));
        let mut rest = data;
        let mut handled = 0u64;
        while let [kind, a, b, tail @ ..] = rest {
            let len = usize::from(u16::from_be_bytes([*a, *b])).min(tail.len());
            let (bytes, next) = tail.split_at(len);
            rest = next;
            let f = frame(*kind, bytes, &s);
            let out = service.handle_frame(&f);
            handled += 1;
            assert_eq!(total(service.counters()), handled, "a frame counted {} times", total(service.counters()) + 1 - handled);
            let mac = CLIENTS[usize::from(*kind >> 5) % CLIENTS.len()];
            match out {
                None => {}
                Some(Output::Frame(reply)) => {
                    // The port never sends an empty frame (a payload too
                    // large for one datagram).
                    if reply.is_empty() {
                        continue;
                    }
                    match check_sent(&reply, &s, None) {
                        None => assert!(*kind & 3 == 3 || *kind & 3 == 0, "an ARP reply to a UDP message"),
                        Some((67, payload)) => {
                            let m = v4::Message::decode(&mut Decoder::new(&payload)).unwrap_or_else(|e| panic!("a DHCP reply that does not decode: {e}"));
                            assert_eq!(m.opcode(), v4::Opcode::BootReply, "a DHCP reply that is not BOOTREPLY");
                            if *kind & 3 == 1 {
                                assert_eq!(m.xid().to_be_bytes(), bytes[4..8], "a DHCP reply with another xid");
                            }
                        }
                        Some((53, payload)) => {
                            if *kind & 3 == 2 {
                                check_dns(&payload, bytes);
                            }
                        }
                        Some((port, _)) => panic!("a datagram from port {port}"),
                    }
                }
                Some(Output::Forward { query, client }) => {
                    if *kind & 3 == 2 {
                        assert_eq!(query, bytes, "a forwarded query differs from the client's");
                        assert_eq!((client.mac, client.ip, client.port), (mac, client_ip(mac), 40000), "a forwarded query's client");
                    }
                    for no_resolver in [false, true] {
                        let Some(reply) = service.upstream_failed(client, &query, no_resolver) else { continue };
                        if reply.is_empty() {
                            continue;
                        }
                        let Some((53, payload)) = check_sent(&reply, &s, Some((client.mac, client.ip))) else { panic!("an error answer not from port 53") };
                        let m = check_dns(&payload, &query);
                        let want = if no_resolver { ResponseCode::Refused } else { ResponseCode::ServFail };
                        assert_eq!(m.metadata.response_code, want, "an error answer's code");
                    }
                }
            }
        }
    }
);
