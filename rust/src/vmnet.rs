//! Networks and the interfaces VMs attach to, behind one small trait pair.
//!
//! A [`Network`] is a named L2 segment with a subnet, DHCP, DNS, NAT and port
//! forwards; an [`Interface`] is one VM's port on it. On macOS both are vmnet
//! objects (`vmnet/apple.rs`); on Linux a bridge with nftables and dnsmasq,
//! and a TAP per VM (`vmnet/linux.rs`, `vmnet/tap.rs`). The relay in
//! `adaptor.rs` sees only [`Interface`]; the broker sees only [`Network`].

use std::io;
use std::os::fd::RawFd;
#[cfg(target_os = "linux")]
use std::os::fd::{FromRawFd, OwnedFd};

use crate::config::NetworkConfig;
use crate::xpc::Dict;

#[cfg(apple_api)]
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub mod apple;
pub mod host_interface;
pub mod mapping;
#[cfg(target_os = "linux")]
pub mod linux;
pub mod preflight;
#[cfg(target_os = "linux")]
pub mod tap;

/// What an interface reports once started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// The MAC address the VM should use (vmnet allocates one; a TAP's peer
    /// gets one derived by the caller).
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Largest frame the interface reads or writes (1514 at MTU 1500 without
    /// offload; 65550 with TSO on vmnet).
    pub max_frame_bytes: usize,
    /// Most frames one `read_frames` call returns.
    pub read_max_frames: usize,
    /// Most frames one `write_frames` call accepts.
    pub write_max_frames: usize,
    /// Whether TSO/checksum offload is on for this interface.
    pub offload: bool,
}

/// How an interface is asked for (vmnet interface description keys).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceDesc {
    /// A MAC for the interface; `None` lets the platform allocate one.
    pub mac: Option<[u8; 6]>,
    /// Block traffic to other interfaces on the network.
    pub isolation: bool,
    /// TSO + checksum offload (must match the network's `offload`).
    pub offload: bool,
}

/// One VM's port on a network: the host side of an adaptor.
///
/// Calls never block. The relay waits on [`Interface::readable_fd`] (the TAP
/// fd itself on Linux; an fd signalled by vmnet's packets-available callback
/// on macOS) and retries writes that return `WouldBlock` after a short wait.
pub trait Interface: Send {
    fn info(&self) -> &InterfaceInfo;

    /// An fd that polls readable when frames may be waiting.
    fn readable_fd(&self) -> RawFd;

    /// Reads up to `bufs.len()` frames; frame `i` lands in `bufs[i]` with its
    /// length in `lens[i]`. Returns the number read; `Ok(0)` means none now.
    /// Every buffer must hold `info().max_frame_bytes`.
    fn read_frames(&mut self, bufs: &mut [&mut [u8]], lens: &mut [usize]) -> io::Result<usize>;

    /// Writes frames in order and returns how many were taken; `Err` with
    /// `WouldBlock` when none could be taken now.
    fn write_frames(&mut self, frames: &[&[u8]]) -> io::Result<usize>;

    /// Of the frames the last [`Interface::write_frames`] reported taken,
    /// how many (and how many bytes) the interface refused after taking
    /// them (a batched TAP write learns per frame only once the batch ran).
    /// The relay counts them as refused, not delivered.
    fn last_write_refused(&self) -> (usize, usize) {
        (0, 0)
    }

    /// Whether frames already read from the host are held for the next
    /// [`Interface::read_frames`] (a TAP that split a large frame into more
    /// segments than the caller had buffers): the relay then reads again
    /// without waiting for [`Interface::readable_fd`], which may not poll
    /// readable for them.
    fn has_held_frames(&self) -> bool {
        false
    }

    /// Frames read from the host that could not be passed on (a TAP's
    /// malformed or unknown offload frames) since the last call; the relay
    /// counts them as errors.
    fn take_read_dropped(&mut self) -> u64 {
        0
    }

    /// The host's name for the interface where it has one (a TAP on Linux),
    /// so `status` can show what its own queues dropped.
    fn device(&self) -> Option<&str> {
        None
    }

    /// Stops the interface and releases it. Idempotent; also done on drop.
    fn stop(&mut self) -> Result<(), Error>;
}

/// What a live network actually got (the platform may choose for us).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NetworkState {
    /// Gateway address and prefix, e.g. `192.168.107.1/24`.
    pub subnet: String,
    /// IPv6 prefix, e.g. `fd12:3456:789a::/64`, if any.
    pub ipv6_prefix: Option<String>,
    /// The host-side device (bridge name on Linux; empty on macOS).
    pub device: String,
}

impl NetworkState {
    /// The subnet the platform reported, as the configuration's type
    /// (`None` if it is not one a configuration could name).
    pub fn ipv4_subnet(&self) -> Option<crate::config::Ipv4Subnet> {
        crate::config::Ipv4Subnet::parse(&self.subnet, crate::config::SUBNET_PREFIX_MIN, crate::config::SUBNET_PREFIX_MAX).ok()
    }
}

/// A live network. Dropping it tears it down.
pub trait Network: Send + Sync {
    fn name(&self) -> &str;

    /// The configuration it was created from.
    fn config(&self) -> &NetworkConfig;

    fn state(&self) -> NetworkState;

    /// What a Virtualization.framework client needs to attach (vmnet's
    /// serialization on macOS; a description of the bridge on Linux).
    fn serialization(&self) -> Result<Dict, Error>;

    /// Starts a new port on the network.
    fn start_interface(&self, desc: &InterfaceDesc) -> Result<Box<dyn Interface>, Error>;

    /// False once the network went away under us (a deleted bridge, a dead
    /// vmnet network).
    fn is_alive(&self) -> bool;

    /// The DHCP leases the network handed out (Linux: dnsmasq's lease
    /// file). Backends that cannot tell return an error saying so.
    fn leases(&self) -> Result<Vec<Lease>, Error> {
        Err(Error::Platform { op: format!("list leases of network {:?}", self.name()), source: "this backend does not expose DHCP leases".into() })
    }

    /// Linux: a new TAP port on the network, for its fd to be handed to a VM
    /// (QEMU `-netdev tap,fd=N`) instead of a relay. `vnet_hdr` opens it with
    /// IFF_VNET_HDR (QEMU then enables it by itself; it refuses `vnet_hdr=`
    /// beside `fd=`). The port goes when the fd closes.
    #[cfg(target_os = "linux")]
    fn start_tap(&self, desc: &InterfaceDesc, vnet_hdr: bool) -> Result<tap::Tap, Error> {
        let _ = (desc, vnet_hdr);
        Err(Error::Platform { op: format!("start a TAP on network {:?}", self.name()), source: "this backend has no TAP ports".into() })
    }

    /// The fixed entries the network's own DHCP and DNS server gives
    /// (Linux: dnsmasq's `dhcp-hostsfile` and `addn-hosts`, re-read on
    /// SIGHUP): each MAC its address, each named host its name. Replaces the
    /// earlier set. Backends whose DHCP server takes no entries (vmnet)
    /// return an error saying so; the broker then answers names itself only.
    fn set_fixed_hosts(&self, hosts: &[FixedHost]) -> Result<(), Error> {
        let _ = hosts;
        Err(Error::Platform { op: format!("give fixed addresses on network {:?}", self.name()), source: "this backend's DHCP server takes no fixed entries".into() })
    }

    /// Ends the DHCP leases of `mac` that carry a host name the client sent
    /// (a claimed name), so the network's DNS server stops serving that
    /// name now rather than when the lease expires; returns how many ended.
    /// Backends whose DHCP server cannot be told (vmnet) return an error
    /// saying so.
    fn release_claims(&self, mac: crate::config::MacAddr) -> Result<usize, Error> {
        let _ = mac;
        Err(Error::Platform { op: format!("end DHCP leases on network {:?}", self.name()), source: "this backend's DHCP server cannot be told to end a lease".into() })
    }

    /// The pieces of the network in the host that the backend watches, as
    /// last seen (Linux: bridge, addresses, nftables table, forwarding,
    /// dnsmasq); empty where nothing is watched.
    fn pieces(&self) -> Vec<PieceHealth> {
        Vec::new()
    }
}

/// A fixed address (and name) the network's DHCP/DNS server gives
/// ([`Network::set_fixed_hosts`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedHost {
    pub mac: crate::config::MacAddr,
    pub ipv4: std::net::Ipv4Addr,
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// Served in DNS as `<name>.<domain>` (and `<name>`), forward and
    /// reverse; `None`: only the address is fixed.
    pub name: Option<String>,
}

/// One watched piece of a live network (`status`, `doctor`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PieceHealth {
    /// `bridge`, `address`, `table`, `forwarding` or `dnsmasq`.
    pub piece: String,
    /// Present (as the network was made) when last looked at.
    pub ok: bool,
    /// What is missing, when not ok.
    pub missing: Option<String>,
    /// Times it was put back.
    pub repairs: u64,
    /// Not put back now: repairs of it are off, or another program keeps
    /// removing it (the reason, naming that program when it can be seen).
    pub left_alone: Option<String>,
}

/// One DHCP lease a network handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Lower-case `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub address: String,
    /// The name the client sent, if any.
    pub hostname: Option<String>,
    /// Expiry, seconds since the Unix epoch (0: never).
    pub expires: u64,
}

/// Why a network or interface operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid network configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
    /// A platform call failed; `source` is its cause (a status, an error
    /// of the layer below, or a description where there is nothing more).
    #[error("{op} failed: {source}")]
    Platform {
        op: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A port's TAP device could not be made.
    #[error("create TAP {name} (needs CAP_NET_ADMIN and /dev/net/tun): {source}")]
    OpenTap {
        name: String,
        #[source]
        source: io::Error,
    },
    /// A new port could not join its network (bridge, MTU, isolation, up).
    #[error("add port {port} to network {network:?}: {source}")]
    AddPort {
        network: String,
        port: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The network's DHCP/DNS server could not be started.
    #[error("start dnsmasq: {source}")]
    StartDnsmasq {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A host tool changing the namespace's network (links, addresses,
    /// routes, nftables) failed.
    #[error("configure the host network: {source}")]
    ConfigureHost {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    pub fn io(op: impl Into<String>, source: io::Error) -> Self {
        Error::Io { op: op.into(), source }
    }
}

/// Where a backend keeps its records, and what it repairs.
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    /// Linux: a directory for the record of what was created (bridges, TAPs,
    /// nftables tables, dnsmasq pids), so a later run can remove what a
    /// crashed one left. Unused on macOS.
    pub state_dir: std::path::PathBuf,
    /// Linux: which pieces of a live network are put back when the host
    /// removes them (the broker's `repair` setting). Unused on macOS.
    pub repair: crate::config::RepairSettings,
    /// Linux: told each time the network's bridge is put back up or given
    /// its gateway address again (what the host keeps per link may have
    /// gone with it: the broker registers the resolver again). Unused on macOS.
    pub bridge_restored: BridgeRestored,
}

/// What a backend calls, on the network's watcher thread, after it put its
/// bridge back (up again, or its gateway addresses again), with the bridge's
/// name and IPv4 gateway. It must not block: the watcher waits for it.
#[derive(Clone, Default)]
pub struct BridgeRestored(Option<std::sync::Arc<BridgeRestoredFn>>);

/// The hook's signature: the bridge's name and its IPv4 gateway.
type BridgeRestoredFn = dyn Fn(&str, Option<std::net::Ipv4Addr>) + Send + Sync;

impl BridgeRestored {
    pub fn new(f: impl Fn(&str, Option<std::net::Ipv4Addr>) + Send + Sync + 'static) -> Self {
        BridgeRestored(Some(std::sync::Arc::new(f)))
    }

    /// Calls the hook, if there is one.
    pub fn call(&self, bridge: &str, gateway: Option<std::net::Ipv4Addr>) {
        if let Some(f) = &self.0 {
            f(bridge, gateway)
        }
    }
}

impl std::fmt::Debug for BridgeRestored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "BridgeRestored(set)" } else { "BridgeRestored(none)" })
    }
}

/// Creates a network on this platform from a configuration the validator
/// accepted (`config::NetworkConfig::from_*`); the backends judge no value
/// of it again. `name` must be a network name (it names links, tables and
/// files), checked here once for both backends.
pub fn create_network(name: &str, config: &NetworkConfig, options: &BackendOptions) -> Result<Box<dyn Network>, Error> {
    if !crate::config::valid_network_name(name) {
        let message = format!("network {name:?}: invalid network name; {}", crate::config::NETWORK_NAME_RULE);
        return Err(Error::Config(crate::config::ConfigError::new(message)));
    }
    #[cfg(target_os = "linux")]
    return linux::create_network(name, config, options);
    #[cfg(target_os = "macos")]
    return apple::create_network(name, config, options);
}

/// Removes what an earlier run of the backend left behind (Linux: links,
/// nftables tables and dnsmasq processes named in its records). Returns a
/// line per thing removed.
pub fn cleanup_stale(options: &BackendOptions) -> Result<Vec<String>, Error> {
    #[cfg(target_os = "linux")]
    return linux::cleanup_stale(options);
    #[cfg(target_os = "macos")]
    return {
        let _ = options;
        Ok(Vec::new())
    };
}

/// Reads up to `bufs.len()` frames from a non-blocking fd that yields one
/// frame per `read` (a TAP, a SOCK_SEQPACKET socket), one syscall each.
/// Stops at the first would-block read; an error after some frames ends the
/// batch and is seen again on the next call. A read of 0 bytes before any
/// frame is the other end of a socket closing (a TAP never returns an empty
/// frame): `EPIPE`, so the relay ends as for a vanished interface.
#[cfg(target_os = "linux")]
pub(crate) fn read_each(fd: RawFd, bufs: &mut [&mut [u8]], lens: &mut [usize]) -> io::Result<usize> {
    let mut n = 0;
    while n < bufs.len() {
        // SAFETY: bufs[n] is a valid writable buffer of its length.
        let r = unsafe { libc::read(fd, bufs[n].as_mut_ptr().cast(), bufs[n].len()) };
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock || n > 0 {
                break;
            }
            return Err(err);
        }
        if r == 0 {
            if n == 0 {
                return Err(io::Error::from_raw_os_error(libc::EPIPE));
            }
            break;
        }
        lens[n] = r as usize;
        n += 1;
    }
    Ok(n)
}

/// Writes `frames` to an fd that takes one frame per `write` (a TAP, a
/// SOCK_SEQPACKET socket), one syscall each. An error after some frames ends
/// the batch (the count says how many went); on the first it is returned.
#[cfg(target_os = "linux")]
pub(crate) fn write_each(fd: RawFd, frames: &[&[u8]]) -> io::Result<usize> {
    let mut n = 0;
    for frame in frames {
        // SAFETY: frame is a valid readable buffer of its length.
        let r = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
        if r < 0 {
            let err = io::Error::last_os_error();
            if n > 0 {
                break;
            }
            return Err(err);
        }
        n += 1;
    }
    Ok(n)
}

/// An [`Interface`] over one end of a SOCK_SEQPACKET socketpair (one frame
/// per packet, pollable, like a TAP fd): the test hub's ports
/// (`broker::testing`) and the adaptor tests' double. `stop` shuts the
/// socket down, which the other end reads as the port going away.
#[cfg(target_os = "linux")]
pub struct SeqpacketPort {
    fd: OwnedFd,
    info: InterfaceInfo,
}

#[cfg(target_os = "linux")]
impl SeqpacketPort {
    pub fn new(fd: OwnedFd, info: InterfaceInfo) -> Self {
        SeqpacketPort { fd, info }
    }
}

#[cfg(target_os = "linux")]
impl Interface for SeqpacketPort {
    fn info(&self) -> &InterfaceInfo {
        &self.info
    }

    fn readable_fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    fn read_frames(&mut self, bufs: &mut [&mut [u8]], lens: &mut [usize]) -> io::Result<usize> {
        read_each(self.readable_fd(), bufs, lens)
    }

    fn write_frames(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        write_each(self.readable_fd(), frames)
    }

    fn stop(&mut self) -> Result<(), Error> {
        // SAFETY: shutdown(2) on our own fd.
        unsafe { libc::shutdown(self.readable_fd(), libc::SHUT_RDWR) };
        Ok(())
    }
}

/// A close-on-exec SOCK_SEQPACKET socketpair (one frame per packet, as on a
/// TAP): the ports of the test hub and the adaptor tests' interface.
#[cfg(target_os = "linux")]
pub(crate) fn seqpacket_pair(nonblocking: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    let mut p = [-1; 2];
    // SAFETY: p holds the two fds socketpair writes.
    if unsafe { libc::socketpair(libc::AF_UNIX, flags, 0, p.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded; both fds are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) })
}
