//! Per-port link changes over route netlink, with no process forked: a TAP
//! joins its bridge, gets the network's MTU, is isolated if asked, and comes
//! up. These run once per VM port, so they are on the path a VM waits on;
//! the rarer per-network steps (bridge, addresses, routes) stay with
//! iproute2 in `links`.
//!
//! Messages are built with `netlink-packet-route` and sent on a synchronous
//! `netlink-sys` socket; every request asks for an acknowledgement and the
//! kernel's answer (0 or `-errno`) is the result; [`Rtnl::request`] is the
//! one send-and-read-the-answer loop. The attributes are those
//! `ip link set dev PORT mtu M master BR`, `ip link set dev PORT type
//! bridge_slave isolated on` and `ip link set dev PORT up` send (`RTM_NEWLINK`
//! on an existing link with `IFLA_MTU`, `IFLA_MASTER`, and
//! `IFLA_LINKINFO { IFLA_INFO_SLAVE_KIND "bridge", IFLA_INFO_SLAVE_DATA {
//! IFLA_BRPORT_ISOLATED } }`; `include/uapi/linux/if_link.h`).
//!
//! [`link_drops`] reads a port's drop counters the same way (`RTM_GETLINK`),
//! for `status`.
//!
//! Acts on the calling thread's network namespace (the socket is opened in
//! it).

use std::io;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::link::{InfoBridgePort, InfoPortData, InfoPortKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, Stats64};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::links::link_index;

/// A per-port step that failed, named after the step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("open a route netlink socket: {0}")]
    OpenSocket(#[source] io::Error),
    #[error("no link named {0:?} in this network namespace")]
    NoSuchLink(String),
    #[error("add {port} to bridge {bridge} with MTU {mtu}: {source}")]
    AddPort {
        port: String,
        bridge: String,
        mtu: u32,
        #[source]
        source: io::Error,
    },
    #[error("isolate bridge port {port}: {source}")]
    IsolatePort {
        port: String,
        #[source]
        source: io::Error,
    },
    #[error("bring {port} up: {source}")]
    SetUp {
        port: String,
        #[source]
        source: io::Error,
    },
}

/// A route netlink socket of this namespace.
struct Rtnl {
    socket: Socket,
    seq: u32,
}

/// The most a reply datagram is read into: a link's description with its
/// statistics is about 1.5 KiB; a longer datagram is an error, not cut.
const RECEIVE_BYTES: usize = 32 * 1024;

/// One message of a request's answer (of the request's sequence number).
enum Reply {
    /// The kernel's acknowledgement: `NLMSG_ERROR` with error 0.
    Ack,
    /// A message of the answer.
    Message(RouteNetlinkMessage),
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Rtnl {
    fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Sends `message` with `NLM_F_REQUEST | flags` under the next sequence
    /// number and hands each message of the answer (that number) to `pick`
    /// until `pick` returns the result. Replies of other numbers (left over
    /// from an earlier request) are passed over. An `NLMSG_ERROR` with an
    /// errno is that errno; `NLMSG_DONE` before `pick` answered, an
    /// unreadable message or a datagram longer than [`RECEIVE_BYTES`] is
    /// `InvalidData`.
    fn request<T>(&mut self, message: RouteNetlinkMessage, flags: u16, mut pick: impl FnMut(Reply) -> Option<io::Result<T>>) -> io::Result<T> {
        self.seq = self.seq.wrapping_add(1);
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(message));
        packet.header.flags = NLM_F_REQUEST | flags;
        packet.header.sequence_number = self.seq;
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut rx = vec![0u8; RECEIVE_BYTES];
        loop {
            // MSG_TRUNC: the datagram's whole length, even past the buffer.
            let n = self.socket.recv(&mut &mut rx[..], libc::MSG_TRUNC)?;
            if n > rx.len() {
                return Err(invalid(format!("a netlink reply of {n} bytes, longer than the {RECEIVE_BYTES} read")));
            }
            let mut off = 0;
            while off < n {
                // deserialize checks that the message's length field is at
                // least a header and within what was read.
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[off..n]).map_err(|e| invalid(format!("unreadable netlink reply: {e}")))?;
                // Messages start on 4-byte boundaries (NLMSG_ALIGN).
                off += (reply.header.length as usize).next_multiple_of(4);
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                let answer = match reply.payload {
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::Error(_) => pick(Reply::Ack),
                    NetlinkPayload::Done(_) => return Err(invalid("the kernel's answer ended without what was asked for".into())),
                    NetlinkPayload::InnerMessage(m) => pick(Reply::Message(m)),
                    _ => None,
                };
                if let Some(result) = answer {
                    return result;
                }
            }
        }
    }

    /// Sends `RTM_NEWLINK` for the existing link in `msg.header.index` and
    /// waits for the kernel's acknowledgement.
    fn set_link(&mut self, msg: LinkMessage) -> io::Result<()> {
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_ACK, |reply| matches!(reply, Reply::Ack).then_some(Ok(())))
    }

    /// Sends `RTM_GETLINK` for link `index` and returns its 64-bit counters
    /// from the kernel's `RTM_NEWLINK` answer (`IFLA_STATS64`).
    fn link_stats(&mut self, index: u32) -> io::Result<Stats64> {
        self.request(RouteNetlinkMessage::GetLink(link(index, Vec::new())), 0, |reply| match reply {
            Reply::Message(RouteNetlinkMessage::NewLink(m)) => Some(
                m.attributes
                    .into_iter()
                    .find_map(|a| if let LinkAttribute::Stats64(s) = a { Some(s) } else { None })
                    .ok_or_else(|| invalid("no IFLA_STATS64 in the link's description".into())),
            ),
            _ => None,
        })
    }
}

/// Frames a link's own queues dropped, as the kernel counts them
/// (`IFLA_STATS64`; `include/uapi/linux/if_link.h`, `struct
/// rtnl_link_stats64`). On a TAP, `tx_dropped` counts frames the bridge
/// passed to the TAP that its queue to the reader (the relay) had no room
/// for; `rx_dropped` frames written to the TAP that the stack dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkDrops {
    pub tx_dropped: u64,
    pub rx_dropped: u64,
}

/// [`LinkDrops`] of link `name` in this namespace.
pub fn link_drops(name: &str) -> io::Result<LinkDrops> {
    let index = link_index(name).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no link named {name:?}")))?;
    let s = Rtnl::open()?.link_stats(index)?;
    Ok(LinkDrops { tx_dropped: s.tx_dropped, rx_dropped: s.rx_dropped })
}

fn link(index: u32, attributes: Vec<LinkAttribute>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes = attributes;
    msg
}

/// Makes `port` a port of `bridge` with `mtu`, isolated from the bridge's
/// other isolated ports if asked, and brings it up, in that order (so no
/// frame passes before isolation is on).
pub fn attach_port(port: &str, bridge: &str, mtu: u32, isolated: bool) -> Result<(), Error> {
    let port_index = link_index(port).ok_or_else(|| Error::NoSuchLink(port.into()))?;
    let bridge_index = link_index(bridge).ok_or_else(|| Error::NoSuchLink(bridge.into()))?;
    let mut rtnl = Rtnl::open().map_err(Error::OpenSocket)?;
    rtnl.set_link(link(port_index, vec![LinkAttribute::Mtu(mtu), LinkAttribute::Controller(bridge_index)]))
        .map_err(|source| Error::AddPort { port: port.into(), bridge: bridge.into(), mtu, source })?;
    if isolated {
        let info = vec![LinkInfo::PortKind(InfoPortKind::Bridge), LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::Isolated(true)]))];
        rtnl.set_link(link(port_index, vec![LinkAttribute::LinkInfo(info)])).map_err(|source| Error::IsolatePort { port: port.into(), source })?;
    }
    let mut up = link(port_index, Vec::new());
    up.header.flags = LinkFlags::Up;
    up.header.change_mask = LinkFlags::Up;
    rtnl.set_link(up).map_err(|source| Error::SetUp { port: port.into(), source })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmnet::linux::cmd::run;

    /// Root only (CI runs as root): in a fresh network namespace of this
    /// test's thread, a TAP joins a bridge with the MTU asked, isolated,
    /// and up, as iproute2 reports it; a missing bridge is named.
    #[test]
    #[ignore = "needs root for a network namespace; scripts/test runs it as root with --ignored"]
    fn a_tap_joins_its_bridge_isolated_and_up() {
        crate::test_support::in_fresh_netns(|| {
            run(&["ip", "link", "add", "name", "brt0", "mtu", "1400", "type", "bridge"], None).unwrap();
            let tap = crate::vmnet::tap::Tap::create("tapt0", false).unwrap();
            attach_port(tap.name(), "brt0", 1400, true).unwrap();
            let out = run(&["ip", "-j", "-d", "link", "show", "dev", "tapt0"], None).unwrap();
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            let l = &v[0];
            assert_eq!(l["mtu"], 1400, "{out}");
            assert_eq!(l["master"], "brt0", "{out}");
            assert!(l["flags"].as_array().unwrap().iter().any(|f| f == "UP"), "{out}");
            assert_eq!(l["linkinfo"]["info_slave_kind"], "bridge", "{out}");
            assert_eq!(l["linkinfo"]["info_slave_data"]["isolated"], true, "{out}");
            assert_eq!(link_drops("tapt0").unwrap(), LinkDrops::default(), "a new TAP has dropped nothing");
            assert_eq!(link_drops("nolink").unwrap_err().kind(), io::ErrorKind::NotFound);
            let e = attach_port("tapt0", "nobridge", 1400, false).unwrap_err();
            assert!(matches!(&e, Error::NoSuchLink(n) if n == "nobridge"), "{e}");
            // The kernel's refusal comes back with the step and its errno.
            let e = attach_port("tapt0", "brt0", 70_000, false).unwrap_err();
            assert!(matches!(&e, Error::AddPort { source, .. } if source.raw_os_error() == Some(libc::EINVAL)), "{e}");
        });
    }
}
