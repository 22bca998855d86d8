//! Watching what a live network needs in the host, and putting back what
//! went, from the plan the network was made with.
//!
//! Pieces: the bridge (up), its gateway addresses, the network's nftables
//! table (every chain and rule of [`nft::ruleset`]), IPv4/IPv6 forwarding
//! when the network forwards out. (dnsmasq has its own supervisor; it reports
//! its restarts to the same [`Guard`].) A deleted bridge is not put back:
//! the broker's monitor then ends the network and its leases.
//!
//! Told, not polling: one thread per network, `vmnet-rs-watch`, listens on
//! route netlink (`RTNLGRP_LINK`, `RTNLGRP_IPV4_IFADDR`,
//! `RTNLGRP_IPV6_IFADDR`, `RTNLGRP_IPV4_NETCONF`, `RTNLGRP_IPV6_NETCONF`;
//! include/uapi/linux/rtnetlink.h) and on nftables' change notifications
//! (`NETLINK_NETFILTER`, group `NFNLGRP_NFTABLES`;
//! include/uapi/linux/netfilter/nfnetlink.h) and checks when told, and at
//! least every [`CHECK_INTERVAL`] (a missed notification, a socket overrun).
//! The end of each nftables transaction (`NFT_MSG_NEWGEN`) names the process
//! that made it, which the no-fight log line quotes.
//!
//! A bridge put back up, or given its gateway addresses again, is reported
//! through [`Needs::restored`] (the broker registers it with the host's
//! resolver again, as it does a new bridge).
//!
//! The thread is started in the network's namespace by the creating thread
//! (it inherits that namespace), never takes the broker's lock, and is
//! stopped (and joined) before the network is torn down, so it never puts
//! back what the teardown removes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_NETFILTER, protocols::NETLINK_ROUTE, Socket};

use super::repair::{other_manager, Action, Guard};
use super::{forwarding, links, nft};
use crate::vmnet::BridgeRestored;

/// The floor: every piece is looked at least this often.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

// include/uapi/linux/rtnetlink.h, enum rtnetlink_groups.
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
const RTNLGRP_IPV4_NETCONF: u32 = 24;
const RTNLGRP_IPV6_NETCONF: u32 = 25;
// include/uapi/linux/netfilter/nfnetlink.h: NFNLGRP_NFTABLES; subsystem
// NFNL_SUBSYS_NFTABLES. include/uapi/linux/netfilter/nf_tables.h:
// NFT_MSG_NEWGEN, and the attributes of enum nft_gen_attributes.
const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFTA_GEN_PROC_PID: u16 = 2;
const NFTA_GEN_PROC_NAME: u16 = 3;
/// `struct nlmsghdr` (16 bytes) and `struct nfgenmsg` (4 bytes).
const NLMSG_HDR: usize = 16;
const NFGENMSG: usize = 4;

/// What a network needs in the host, from its plan.
#[derive(Clone, Debug)]
pub struct Needs {
    pub network: String,
    pub bridge: String,
    pub table: String,
    /// The bridge's addresses, `10.0.0.1/24`, `fd00::1/64`.
    pub addresses: Vec<String>,
    /// The ruleset that makes the table, and its shape (chains, rules).
    pub ruleset: String,
    pub shape: (usize, usize),
    /// The forwarding sysctls it needs on.
    pub forwarding: Vec<&'static str>,
    /// The bridge's IPv4 gateway, for `restored`.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Told after the bridge was put back up or given its addresses again.
    pub restored: BridgeRestored,
}

/// The watching thread of one network; stopping (or dropping) it joins it.
pub struct Watcher {
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Subscribes (in the calling thread's namespace) and starts the thread.
    /// A subscription the kernel refuses is logged; the interval check
    /// still runs.
    pub fn start(needs: Needs, guard: Arc<Mutex<Guard>>) -> io::Result<Watcher> {
        let route = subscribe(NETLINK_ROUTE, &[RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV4_NETCONF, RTNLGRP_IPV6_NETCONF])
            .map_err(|e| log::warn!("network {}: no route netlink notifications ({e}); checking every {CHECK_INTERVAL:?}", needs.network))
            .ok();
        let nft = subscribe(NETLINK_NETFILTER, &[NFNLGRP_NFTABLES])
            .map_err(|e| log::warn!("network {}: no nftables notifications ({e}); checking every {CHECK_INTERVAL:?}", needs.network))
            .ok();
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        let stop_fd = wake.as_raw_fd();
        let thread = std::thread::Builder::new().name("vmnet-rs-watch".into()).spawn(move || run(needs, guard, stop_fd, route, nft))?;
        Ok(Watcher { wake, thread: Some(thread) })
    }

    /// Stops the thread and waits for it. Idempotent.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
            unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
            let _ = t.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn subscribe(protocol: isize, groups: &[u32]) -> io::Result<Socket> {
    let mut s = Socket::new(protocol)?;
    s.bind_auto()?;
    for g in groups {
        s.add_membership(*g)?;
    }
    s.set_non_blocking(true)?;
    Ok(s)
}

/// Reads every pending message of `s`, calling `each` with each one's
/// bytes; true when the socket overran (messages were lost).
fn drain(s: &Socket, buf: &mut [u8], each: &mut dyn FnMut(&[u8])) -> bool {
    loop {
        match s.recv(&mut &mut buf[..], 0) {
            Ok(0) => return false,
            Ok(n) => {
                let mut off = 0;
                while off + NLMSG_HDR <= n {
                    let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
                    if len < NLMSG_HDR || off + len > n {
                        break;
                    }
                    each(&buf[off..off + len]);
                    off += (len + 3) & !3;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return true,
            Err(_) => return false,
        }
    }
}

/// Whether a route netlink message may concern `bridge_index` (a link or
/// address of another link does not; forwarding changes and anything not
/// understood do).
fn concerns(msg: &[u8], bridge_index: u32) -> bool {
    match NetlinkMessage::<RouteNetlinkMessage>::deserialize(msg) {
        Ok(m) => match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l)) => l.header.index == bridge_index,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a)) => a.header.index == bridge_index,
            _ => true,
        },
        Err(_) => true,
    }
}

/// The process named by an `NFT_MSG_NEWGEN` notification, `pid 42 (nft)`.
pub fn newgen_process(msg: &[u8]) -> Option<String> {
    if msg.len() < NLMSG_HDR + NFGENMSG {
        return None;
    }
    let kind = u16::from_ne_bytes([msg[4], msg[5]]);
    if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
        return None;
    }
    let (mut pid, mut name) = (None, None);
    for nla in netlink_packet_core::NlasIterator::new(&msg[NLMSG_HDR + NFGENMSG..]).flatten() {
        let v = nla.value();
        match nla.kind() {
            NFTA_GEN_PROC_PID if v.len() >= 4 => pid = Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]])),
            NFTA_GEN_PROC_NAME => name = Some(String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or_default()).into_owned()),
            _ => {}
        }
    }
    Some(match (pid, name) {
        (Some(p), Some(n)) => format!("pid {p} ({n})"),
        (Some(p), None) => format!("pid {p}"),
        (None, Some(n)) => n,
        (None, None) => "an unnamed process".into(),
    })
}

fn run(needs: Needs, guard: Arc<Mutex<Guard>>, stop_fd: RawFd, route: Option<Socket>, nft: Option<Socket>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_nft_change = String::new();
    let mut next_check = Instant::now() + CHECK_INTERVAL;
    loop {
        let mut fds = vec![libc::pollfd { fd: stop_fd, events: libc::POLLIN, revents: 0 }];
        for s in [&route, &nft].into_iter().flatten() {
            fds.push(libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        let wait = next_check.saturating_duration_since(Instant::now());
        let ms = wait.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: fds is a valid array of fds.len() pollfd structures.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            log::warn!("network {}: watching stopped: poll: {}", needs.network, io::Error::last_os_error());
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        let mut due = Instant::now() >= next_check;
        let bridge_index = links::link_index(&needs.bridge).unwrap_or(0);
        if let Some(s) = &route {
            let mut told = false;
            let overran = drain(s, &mut buf, &mut |m| told |= concerns(m, bridge_index));
            due |= told || overran;
        }
        if let Some(s) = &nft {
            let mut told = false;
            // Any change of the ruleset may concern the table; one check
            // after the whole batch.
            let overran = drain(s, &mut buf, &mut |m| {
                told = true;
                if let Some(p) = newgen_process(m) {
                    last_nft_change = p;
                }
            });
            due |= told || overran;
        }
        if due {
            check(&needs, &guard, &last_nft_change);
            next_check = Instant::now() + CHECK_INTERVAL;
        }
    }
}

/// Looks at every piece and puts back what went (see the module header).
pub fn check(needs: &Needs, guard: &Mutex<Guard>, last_nft_change: &str) {
    if links::link_index(&needs.bridge).is_none() {
        // Deleted: the network is over; the broker's monitor ends it.
        let mut g = guard.lock().unwrap_or_else(|e| e.into_inner());
        let _ = g.missing("bridge", &format!("bridge {}", needs.bridge), &|| String::new(), Instant::now());
        return;
    }
    let someone = || other_manager("another program; the broker cannot see which");
    let fix = |piece: &'static str, what: String, who: &dyn Fn() -> String, repair: &dyn Fn() -> Result<String, String>| -> bool {
        let mut g = guard.lock().unwrap_or_else(|e| e.into_inner());
        if g.missing(piece, &what, who, Instant::now()) == Action::Repair {
            match repair() {
                Ok(restored) => {
                    g.repaired(piece, &restored);
                    return true;
                }
                Err(e) => g.failed(piece, &e),
            }
        }
        false
    };
    let present = |piece: &'static str| guard.lock().unwrap_or_else(|e| e.into_inner()).present(piece);

    // The bridge up again or readdressed is, to the host, a link come back:
    // it is told like a new one (`restored`), once per check.
    let mut bridge_restored = false;
    if links::is_up(&needs.bridge) {
        present("bridge");
    } else {
        bridge_restored |= fix("bridge", format!("bridge {} is down", needs.bridge), &someone, &|| {
            links::set_up(&needs.bridge).map(|()| format!("bridge {} up", needs.bridge)).map_err(|e| e.to_string())
        });
    }

    match links::addresses(&needs.bridge) {
        Ok(have) => {
            let gone: Vec<&String> = needs.addresses.iter().filter(|a| !have.contains(a)).collect();
            if gone.is_empty() {
                present("address");
            } else {
                let list = gone.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
                bridge_restored |= fix("address", format!("address {list} on {}", needs.bridge), &someone, &|| {
                    for a in &gone {
                        links::add_address(&needs.bridge, a).map_err(|e| e.to_string())?;
                    }
                    Ok(format!("{list} on {}", needs.bridge))
                });
            }
        }
        Err(e) => log::debug!("network {}: cannot list the addresses of {}: {e}", needs.network, needs.bridge),
    }
    if bridge_restored {
        needs.restored.call(&needs.bridge, needs.gateway);
    }

    let shape = nft::live_shape(&needs.table);
    if shape == Some(needs.shape) {
        present("table");
    } else {
        let what = match shape {
            None => format!("nftables table inet {}", needs.table),
            Some((c, r)) => format!("part of nftables table inet {} ({c} of {} chains, {r} of {} rules)", needs.table, needs.shape.0, needs.shape.1),
        };
        let who = || match last_nft_change {
            "" => other_manager("another program; the broker cannot see which"),
            p => other_manager(&format!("the last nftables change was made by {p}")),
        };
        fix("table", what, &who, &|| {
            nft::replace(&needs.table, &needs.ruleset)
                .map(|()| format!("table inet {} ({} chains, {} rules: NAT, forwarding policy, port forwards)", needs.table, needs.shape.0, needs.shape.1))
                .map_err(|e| e.to_string())
        });
    }

    let off: Vec<&'static str> = needs.forwarding.iter().copied().filter(|k| forwarding::read(k).as_deref() != Some("1")).collect();
    if off.is_empty() {
        if !needs.forwarding.is_empty() {
            present("forwarding");
        }
    } else {
        let names = off.iter().map(|k| forwarding::dotted(k)).collect::<Vec<_>>().join(", ");
        fix("forwarding", format!("{names} = 1 (forwarding is off)"), &someone, &|| {
            for k in &off {
                links::write_sysctl(k, "1").map_err(|e| format!("write {}: {e}", forwarding::dotted(k)))?;
            }
            Ok(format!("{names} = 1"))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let len = 4 + value.len();
        let mut v = Vec::new();
        v.extend_from_slice(&(len as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(value);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn a_newgen_notification_names_its_process() {
        let mut body = vec![0u8; NFGENMSG];
        body.extend(nla(1, &7u32.to_be_bytes()));
        body.extend(nla(NFTA_GEN_PROC_PID, &4242u32.to_be_bytes()));
        body.extend(nla(NFTA_GEN_PROC_NAME, b"firewalld\0"));
        let mut msg = Vec::new();
        msg.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN).to_ne_bytes());
        msg.extend_from_slice(&[0u8; 10]);
        msg.extend(body);
        assert_eq!(newgen_process(&msg).as_deref(), Some("pid 4242 (firewalld)"));
        // Another nftables message (NFT_MSG_NEWTABLE) names nobody.
        msg[4..6].copy_from_slice(&(NFNL_SUBSYS_NFTABLES << 8).to_ne_bytes());
        assert_eq!(newgen_process(&msg), None);
        assert_eq!(newgen_process(&[0u8; 8]), None);
    }
}
