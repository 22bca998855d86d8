//! The service's frames: Ethernet II carrying ARP or IPv4/UDP, read and
//! written with etherparse (no header is parsed or laid out by hand here).
//! Pure functions.

use std::net::Ipv4Addr;

use etherparse::{ArpEthIpv4Packet, ArpOperation, ArpPacket, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];
/// TTL of the service's IPv4 packets.
const TTL: u8 = 64;

/// One UDP datagram as the service reads it.
#[derive(Debug)]
pub struct Udp<'a> {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

/// What a frame is, as far as the service cares.
#[derive(Debug)]
pub enum Inbound<'a> {
    /// An Ethernet/IPv4 ARP request.
    ArpRequest { sender_mac: [u8; 6], sender_ip: Ipv4Addr, target_ip: Ipv4Addr },
    /// An unfragmented UDP datagram over IPv4.
    Udp(Udp<'a>),
    /// Anything else (IPv6, TCP, ICMP, ARP replies, fragments).
    Other,
}

/// Reads `frame`; `Err` when its headers do not parse.
pub fn parse(frame: &[u8]) -> Result<Inbound<'_>, ()> {
    let p = SlicedPacket::from_ethernet(frame).map_err(|_| ())?;
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else { return Ok(Inbound::Other) };
    let (src_mac, dst_mac) = (eth.source(), eth.destination());
    match (&p.net, &p.transport) {
        (Some(NetSlice::Arp(arp)), _) => {
            let Ok(a) = arp.to_packet().try_eth_ipv4() else { return Err(()) };
            if a.operation != ArpOperation::REQUEST {
                return Ok(Inbound::Other);
            }
            Ok(Inbound::ArpRequest { sender_mac: a.sender_mac, sender_ip: a.sender_ipv4_addr(), target_ip: a.target_ipv4_addr() })
        }
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(udp))) if !ip.payload().fragmented => Ok(Inbound::Udp(Udp {
            src_mac,
            dst_mac,
            src_ip: ip.header().source_addr(),
            dst_ip: ip.header().destination_addr(),
            src_port: udp.source_port(),
            dst_port: udp.destination_port(),
            payload: udp.payload(),
        })),
        _ => Ok(Inbound::Other),
    }
}

/// An ARP reply saying `ip` is at `mac`, to the asker.
pub fn arp_reply(mac: [u8; 6], ip: Ipv4Addr, to_mac: [u8; 6], to_ip: Ipv4Addr) -> Vec<u8> {
    let arp: ArpPacket = ArpEthIpv4Packet { operation: ArpOperation::REPLY, sender_mac: mac, sender_ipv4: ip.octets(), target_mac: to_mac, target_ipv4: to_ip.octets() }.into();
    let builder = PacketBuilder::ethernet2(mac, to_mac).arp(arp);
    let mut out = Vec::with_capacity(builder.size());
    // Writing a well-formed ARP packet into a Vec cannot fail.
    let _ = builder.write_to_vec(&mut out);
    out
}

/// An Ethernet/IPv4/UDP frame carrying `payload` (checksums filled in).
/// A payload too large for one datagram yields an empty frame, which the
/// port never sends.
pub fn udp_frame(src_mac: [u8; 6], dst_mac: [u8; 6], src_ip: Ipv4Addr, dst_ip: Ipv4Addr, src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src_ip.octets(), dst_ip.octets(), TTL).udp(src_port, dst_port);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    if builder.write(&mut out, payload).is_err() {
        out.clear();
    }
    out
}
