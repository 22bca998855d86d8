//! The service's DNS server: messages read and written with hickory-proto
//! (its protocol crate only, in the port's synchronous loop). Pure
//! functions.
//!
//! Authoritative for the network's zone (`<network>.vmnet.internal`):
//! `host.<zone>` is the gateway (A, and AAAA on a network with IPv6),
//! `<name>.<zone>` the addresses the book serves under `name`; a name it
//! does not know is NXDOMAIN. Reverse lookups of the network's addresses
//! give those names. Every other query is forwarded to the host's
//! resolvers (the port does that).

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::{on_network, AddressBook, ServiceSetup, NAME_TTL_SECS};

pub const PORT: u16 = 53;
/// The name of the gateway in the network's zone.
pub const HOST_LABEL: &str = "host";
/// Largest answer announced through EDNS (the usual safe UDP size).
const EDNS_PAYLOAD_BYTES: u16 = 1232;

/// What to do with one DNS message.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send this answer back.
    Reply(Vec<u8>),
    /// Not the network's name: ask the host's resolvers.
    Forward,
    /// Not a DNS query: drop it.
    Malformed,
}

/// The answer to DNS message `payload`.
pub fn answer(setup: &ServiceSetup, book: &dyn AddressBook, payload: &[u8]) -> Answer {
    let Ok(req) = Message::from_vec(payload) else { return Answer::Malformed };
    if req.metadata.message_type != MessageType::Query {
        return Answer::Malformed;
    }
    if req.metadata.op_code != OpCode::Query {
        return reply(&req, ResponseCode::NotImp, Vec::new(), false);
    }
    let [q] = req.queries.as_slice() else { return reply(&req, ResponseCode::FormErr, Vec::new(), false) };
    let name = q.name().to_lowercase();
    let Ok(zone) = Name::from_ascii(format!("{}.", setup.domain)) else { return Answer::Forward };
    if zone.zone_of(&name) {
        let (code, records) = forward_lookup(setup, book, &zone, &name, q.query_type());
        return reply(&req, code, records, true);
    }
    if let Some(addr) = reverse_address(&name).filter(|a| on_network(setup, *a)) {
        let (code, records) = reverse_lookup(setup, book, &zone, &name, addr, q.query_type());
        return reply(&req, code, records, true);
    }
    Answer::Forward
}

/// The error answer to `query` when no resolver answered it: REFUSED when
/// there is none, SERVFAIL when it did not answer. `None` when `query` is
/// not a query.
pub fn error_reply(query: &[u8], no_resolver: bool) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    let code = if no_resolver { ResponseCode::Refused } else { ResponseCode::ServFail };
    match reply(&req, code, Vec::new(), false) {
        Answer::Reply(bytes) => Some(bytes),
        _ => None,
    }
}

fn forward_lookup(setup: &ServiceSetup, book: &dyn AddressBook, zone: &Name, name: &Name, qtype: RecordType) -> (ResponseCode, Vec<Record>) {
    if name.num_labels() != zone.num_labels() + 1 {
        // The zone itself, or deeper than a VM's name.
        let code = if name == zone { ResponseCode::NoError } else { ResponseCode::NXDomain };
        return (code, Vec::new());
    }
    let label = name.iter().next().map(|l| String::from_utf8_lossy(l).into_owned()).unwrap_or_default();
    let addresses: Vec<IpAddr> = if label == HOST_LABEL {
        let mut v = vec![IpAddr::V4(setup.subnet.gateway())];
        v.extend(setup.gateway_v6.map(IpAddr::V6));
        v
    } else {
        book.addresses_of(&label)
    };
    if addresses.is_empty() {
        return (ResponseCode::NXDomain, Vec::new());
    }
    let records = addresses
        .into_iter()
        .filter_map(|a| match (a, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => Some(RData::A(A(v4))),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => Some(RData::AAAA(AAAA(v6))),
            _ => None,
        })
        .map(|rdata| Record::from_rdata(name.clone(), NAME_TTL_SECS, rdata))
        .collect();
    (ResponseCode::NoError, records)
}

fn reverse_lookup(setup: &ServiceSetup, book: &dyn AddressBook, zone: &Name, name: &Name, addr: IpAddr, qtype: RecordType) -> (ResponseCode, Vec<Record>) {
    let is_gateway = addr == IpAddr::V4(setup.subnet.gateway()) || Some(addr) == setup.gateway_v6.map(IpAddr::V6);
    let label = if is_gateway { Some(HOST_LABEL.to_string()) } else { book.name_of(addr) };
    let Some(target) = label.and_then(|l| Name::from_ascii(&l).ok()).and_then(|l| l.append_domain(zone).ok()) else {
        return (ResponseCode::NXDomain, Vec::new());
    };
    let records = match qtype {
        RecordType::PTR | RecordType::ANY => vec![Record::from_rdata(name.clone(), NAME_TTL_SECS, RData::PTR(PTR(target)))],
        _ => Vec::new(),
    };
    (ResponseCode::NoError, records)
}

/// The address a full-length `in-addr.arpa`/`ip6.arpa` name stands for.
fn reverse_address(name: &Name) -> Option<IpAddr> {
    let net = name.parse_arpa_name().ok()?;
    let full = if net.addr().is_ipv4() { 32 } else { 128 };
    (net.prefix_len() == full).then(|| net.addr())
}

fn reply(req: &Message, code: ResponseCode, answers: Vec<Record>, authoritative: bool) -> Answer {
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.response_code = code;
    resp.metadata.authoritative = authoritative;
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.checking_disabled = req.metadata.checking_disabled;
    resp.add_queries(req.queries.to_vec());
    resp.add_answers(answers);
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD_BYTES);
        resp.set_edns(edns);
    }
    match resp.to_vec() {
        Ok(bytes) => Answer::Reply(bytes),
        Err(_) => Answer::Malformed,
    }
}
