//! The service's DHCPv4 server (RFC 2131): messages read and written with
//! dhcproto, addresses decided by the [`AddressBook`]. Pure functions.
//!
//! DISCOVER gets an OFFER of the MAC's address; REQUEST (selecting,
//! init-reboot, renewing, rebinding) an ACK when the address asked for is
//! the one the book gives the MAC, else a NAK (a foreign subnet, another's
//! address); RELEASE ends the lease in the book; INFORM gets the options.
//! A REQUEST naming another server, DECLINE and relayed messages get no
//! answer. Leases name the gateway as router and the service as DNS server.

use std::net::Ipv4Addr;

use dhcproto::v4::{Decodable, Decoder, DhcpOption, Encodable, HType, Message, MessageType, Opcode, OptionCode};

use super::frames::BROADCAST_MAC;
use super::{mac_of, AddressBook, Counters, ServiceSetup, LEASE_SECS};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// Longest chaddr a message may say it has (its field's size).
const CHADDR_BYTES: u8 = 16;
/// The shortest BOOTP message (RFC 1542 section 2.1).
const BOOTP_MIN_BYTES: usize = 300;

/// A DHCP reply and where it goes.
#[derive(Debug)]
pub struct Reply {
    pub dst_mac: [u8; 6],
    pub dst_ip: Ipv4Addr,
    pub payload: Vec<u8>,
}

/// The reply to DHCP message `payload`, if any; counts what it did.
pub fn answer(setup: &ServiceSetup, book: &mut dyn AddressBook, counters: &mut Counters, payload: &[u8]) -> Option<Reply> {
    let malformed = |c: &mut Counters| {
        c.malformed_dhcp += 1;
        None
    };
    let Ok(msg) = Message::decode(&mut Decoder::new(payload)) else { return malformed(counters) };
    // chaddr() slices by hlen: check it first.
    if msg.opcode() != Opcode::BootRequest || msg.htype() != HType::Eth || msg.hlen() > CHADDR_BYTES {
        return malformed(counters);
    }
    let (Some(mac), Some(kind)) = (mac_of(msg.chaddr()), msg.opts().msg_type()) else { return malformed(counters) };
    if !msg.giaddr().is_unspecified() {
        counters.dhcp_unanswered += 1;
        return None;
    }
    let hostname = match msg.opts().get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => Some(h.as_str()),
        _ => None,
    };
    let requested = match msg.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(a)) => Some(*a),
        _ => None,
    };
    let server = match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(a)) => Some(*a),
        _ => None,
    };
    let ours = server.is_none_or(|s| s == setup.address);
    match kind {
        MessageType::Discover => {
            let wanted = requested.filter(|r| setup.subnet.contains(*r));
            // The service's own address is never a client's, whatever the book says.
            let Some(address) = book.address_for(mac, hostname, wanted).filter(|a| *a != setup.address) else {
                counters.dhcp_unanswered += 1;
                return None;
            };
            counters.dhcp_offers += 1;
            Some(reply(setup, &msg, MessageType::Offer, address))
        }
        MessageType::Request => {
            if !ours {
                // The client took another server's offer.
                counters.dhcp_unanswered += 1;
                return None;
            }
            let wanted = requested.or(Some(msg.ciaddr()).filter(|c| !c.is_unspecified()));
            let Some(wanted) = wanted else { return malformed(counters) };
            let usable = setup.subnet.is_client_address(wanted) && wanted != setup.address;
            let given = if usable { book.address_for(mac, hostname, Some(wanted)) } else { None };
            if given == Some(wanted) {
                counters.dhcp_acks += 1;
                Some(reply(setup, &msg, MessageType::Ack, wanted))
            } else {
                counters.dhcp_naks += 1;
                Some(nak(setup, &msg))
            }
        }
        MessageType::Release => {
            if ours {
                book.release(mac);
                counters.dhcp_releases += 1;
            }
            None
        }
        MessageType::Inform => {
            counters.dhcp_acks += 1;
            Some(reply(setup, &msg, MessageType::Ack, Ipv4Addr::UNSPECIFIED))
        }
        MessageType::Decline => {
            counters.dhcp_unanswered += 1;
            None
        }
        _ => malformed(counters),
    }
}

/// An OFFER or ACK of `address` (unspecified for an INFORM's ACK).
fn reply(setup: &ServiceSetup, req: &Message, kind: MessageType, address: Ipv4Addr) -> Reply {
    let mut m = base(setup, req, kind);
    m.set_yiaddr(address);
    let s = &setup.subnet;
    let opts = m.opts_mut();
    if kind != MessageType::Ack || !address.is_unspecified() {
        opts.insert(DhcpOption::AddressLeaseTime(LEASE_SECS));
        opts.insert(DhcpOption::Renewal(LEASE_SECS / 2));
        opts.insert(DhcpOption::Rebinding(LEASE_SECS / 8 * 7));
    }
    opts.insert(DhcpOption::SubnetMask(s.netmask()));
    opts.insert(DhcpOption::BroadcastAddr(s.broadcast()));
    opts.insert(DhcpOption::Router(vec![s.gateway()]));
    opts.insert(DhcpOption::DomainNameServer(vec![setup.address]));
    opts.insert(DhcpOption::DomainName(setup.domain.clone()));
    let ciaddr = req.ciaddr();
    let (dst_mac, dst_ip) = if !ciaddr.is_unspecified() {
        (chaddr6(req), ciaddr)
    } else if req.flags().broadcast() {
        (BROADCAST_MAC, Ipv4Addr::BROADCAST)
    } else {
        (chaddr6(req), address)
    };
    Reply { dst_mac, dst_ip, payload: encode(&m) }
}

fn nak(setup: &ServiceSetup, req: &Message) -> Reply {
    let m = base(setup, req, MessageType::Nak);
    Reply { dst_mac: BROADCAST_MAC, dst_ip: Ipv4Addr::BROADCAST, payload: encode(&m) }
}

fn base(setup: &ServiceSetup, req: &Message, kind: MessageType) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply).set_htype(HType::Eth).set_xid(req.xid()).set_flags(req.flags()).set_chaddr(req.chaddr());
    if kind != MessageType::Nak {
        m.set_ciaddr(req.ciaddr());
    }
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(setup.address));
    // RFC 6842: a client identifier the client sent goes back with the reply.
    if let Some(id @ DhcpOption::ClientIdentifier(_)) = req.opts().get(OptionCode::ClientIdentifier) {
        opts.insert(id.clone());
    }
    m
}

fn chaddr6(m: &Message) -> [u8; 6] {
    mac_of(m.chaddr()).map(|m| m.0).unwrap_or(BROADCAST_MAC)
}

fn encode(m: &Message) -> Vec<u8> {
    // Encoding a message built from checked values into a Vec cannot fail;
    // an empty payload would only make the frame a short one nobody reads.
    let mut out = m.to_vec().unwrap_or_default();
    // BOOTP's minimum message; some clients drop shorter ones. Bytes after
    // the End option are padding (RFC 2131 section 2).
    if !out.is_empty() && out.len() < BOOTP_MIN_BYTES {
        out.resize(BOOTP_MIN_BYTES, 0);
    }
    out
}
