//! The datagram endpoint: one bound SOCK_DGRAM socket shared by every
//! client. A client binds its own path and sends to the endpoint (vfkit,
//! krunkit, QEMU `-netdev dgram`); it is known by its address. Its first
//! datagram may be vfkit's `VFKT` magic, which is swallowed. Each client
//! gets its own interface and a `datagram` adaptor on a socketpair; the
//! demux here moves frames between the endpoint socket and the pair's other
//! end, and sends replies *from* the endpoint socket (clients connect() to
//! it and take nothing from elsewhere). A client whose socket is gone is
//! noticed by a failed send (ECONNREFUSED, ENOENT) or by a probe (a
//! connect() to its address) every [`PROBE_INTERVAL`], and its port
//! released.
//!
//! Cost of this design: per frame, one extra receive, one extra send and
//! one copy through the socketpair in each direction, all on the one
//! endpoint thread (every datagram client of the broker shares it), plus
//! one relay thread per client as for any adaptor.
//!
//! Thread: the endpoint thread (`vmnet-rs-endpoints`) only.
//!
//! Invariants: an unbound sender (Linux: empty address; macOS: XNU's
//! `sun_noname`) never gets a port; every descriptor a client sends
//! (SCM_RIGHTS) is closed; a datagram that arrived cut (`MSG_TRUNC`) is
//! never passed on, it is dropped and counted; every frame dropped here is
//! counted on the client's port.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::paths::Bound;
use super::receive::recv_from;
use super::Worker;
use crate::adaptor::{DropCounter, RETRY_BUDGET, RETRY_DELAY_US};
use crate::config::EndpointKind;
use crate::sys;
use crate::xpc::Peer;

/// vfkit's handshake datagram (vfkit `vfkitMagic=on`, krunkit), swallowed.
pub const VFKIT_MAGIC: &[u8; 4] = b"VFKT";
/// How often datagram clients are probed for a socket that is gone.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long datagrams from a refused address are dropped without a log line.
pub const REFUSED_QUIET: Duration = Duration::from_secs(10);
/// Most datagram clients one endpoint serves at once.
pub const MAX_DATAGRAM_CLIENTS: usize = 256;
/// Largest datagram read from a client or a relay (the relays' own maximum).
pub(super) const DATAGRAM_BYTES: usize = 65_550;
/// Frames moved per client and direction in one poll turn (fairness).
pub(super) const FRAMES_PER_TURN: usize = 64;
/// The endpoint socket's buffers (vfkit: 1 MiB send, 4 MiB receive).
pub(super) const SEND_BUFFER_BYTES: usize = 1 << 20;
pub(super) const RECV_BUFFER_BYTES: usize = 4 << 20;
/// How long a frame a datagram client had no room for is retried before it
/// is dropped: the adaptors' budget (docs/adaptors.md "Backpressure").
pub(super) const PENDING_BUDGET: Duration = Duration::from_micros(RETRY_BUDGET as u64 * RETRY_DELAY_US);

/// One datagram client: its address, its port's lease and the demux's end
/// of its adaptor's socketpair.
pub(super) struct Client {
    addr: Vec<u8>,
    lease: u64,
    pub(super) inner: OwnedFd,
    /// Last time a datagram came from the client (probes skip busy ones).
    heard: Instant,
    /// Frames dropped here, also added to the port's own counters.
    drops: u64,
    counter: DropCounter,
    /// A frame for the client that its queue had no room for, retried on
    /// the next turns; while it waits nothing more is read from the relay,
    /// so the relay's socket fills and backpressure reaches the relay.
    pub(super) pending: Option<Pending>,
}

pub(super) struct Pending {
    frame: Vec<u8>,
    since: Instant,
}

impl Client {
    fn new(addr: Vec<u8>, lease: u64, inner: OwnedFd, counter: DropCounter) -> Client {
        Client { addr, lease, inner, heard: Instant::now(), drops: 0, counter, pending: None }
    }

    fn drop_to_vm(&mut self) {
        self.drops += 1;
        self.counter.host_to_vm(1);
    }

    fn drop_from_vm(&mut self) {
        self.drops += 1;
        self.counter.vm_to_host(1);
    }
}

/// What became of one send to a datagram client.
enum Sent {
    Done,
    /// Its queue is full (EAGAIN/ENOBUFS): try again later.
    Full,
    /// Its socket is gone.
    Gone(String),
    /// Any other failure: the frame is dropped.
    Failed,
}

/// Sends `frame` from endpoint socket `ep` to the client at `addr`.
fn send_to_client(ep: RawFd, addr: &[u8], frame: &[u8]) -> Sent {
    let Ok((sa, len)) = sys::sockaddr_un(addr) else { return Sent::Gone("its address is unusable".into()) };
    // SAFETY: sends frame.len() bytes of `frame` to a valid address of len bytes.
    let sent = unsafe { libc::sendto(ep, frame.as_ptr().cast(), frame.len(), send_flags(), (&sa as *const libc::sockaddr_un).cast(), len) };
    if sent >= 0 {
        return Sent::Done;
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EINTR) => Sent::Full,
        Some(libc::ECONNREFUSED) | Some(libc::ENOENT) | Some(libc::ENOTCONN) | Some(libc::EPERM) | Some(libc::ECONNRESET) => {
            Sent::Gone(format!("a send to it failed: {e}"))
        }
        _ => Sent::Failed,
    }
}

pub(super) struct DatagramEndpoint {
    pub(super) bound: Bound,
    pub(super) clients: Vec<Client>,
    /// Addresses refused lately, with when.
    pub(super) refused: HashMap<Vec<u8>, Instant>,
}

impl Worker {
    /// Moves frames from datagram client `j` of endpoint `i`'s relay to the
    /// client, its waiting frame first. A frame the client's queue has no
    /// room for waits (see [`Client::pending`]) and is dropped and counted
    /// once it is older than [`PENDING_BUDGET`]. Returns why the client is
    /// gone, if it is.
    pub(super) fn relay_to_client(&mut self, i: usize, j: usize) -> Option<String> {
        let d = &mut self.datagrams[i];
        let ep = d.bound.fd.as_raw_fd();
        let c = &mut d.clients[j];
        if let Some(p) = c.pending.take() {
            match send_to_client(ep, &c.addr, &p.frame) {
                Sent::Done => {}
                Sent::Full if p.since.elapsed() < PENDING_BUDGET => {
                    c.pending = Some(p);
                    return None;
                }
                Sent::Full | Sent::Failed => c.drop_to_vm(),
                Sent::Gone(why) => return Some(why),
            }
        }
        for _ in 0..FRAMES_PER_TURN {
            // SAFETY: recv into our buffer of its length.
            let n = unsafe { libc::recv(c.inner.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => None,
                    _ => Some(format!("its relay's socket failed: {e}")),
                };
            }
            let frame = &self.buf[..n as usize];
            match send_to_client(ep, &c.addr, frame) {
                Sent::Done => {}
                Sent::Full => {
                    let mut kept = c.pending.take().map(|p| p.frame).unwrap_or_default();
                    kept.clear();
                    kept.extend_from_slice(frame);
                    c.pending = Some(Pending { frame: kept, since: Instant::now() });
                    return None;
                }
                Sent::Failed => c.drop_to_vm(),
                Sent::Gone(why) => return Some(why),
            }
        }
        None
    }

    /// Receives what is waiting on datagram endpoint `i`.
    pub(super) fn receive_datagrams(&mut self, i: usize) {
        for _ in 0..FRAMES_PER_TURN * 4 {
            let fd = self.datagrams[i].bound.fd.as_raw_fd();
            let got = match recv_from(fd, &mut self.buf) {
                Ok(Some(g)) => g,
                Ok(None) => return,
                Err(e) => {
                    log::warn!("endpoint {}: receive failed: {e}", self.datagrams[i].bound.path.display());
                    return;
                }
            };
            let d = &mut self.datagrams[i];
            if got.addr.is_empty() {
                // Unbound (Linux: an empty address; macOS: XNU's
                // `sun_noname`): no reply can reach it, so it gets no port;
                // held off like a refused address, logged once a while.
                if d.refused.insert(Vec::new(), Instant::now()).map_or(true, |t| t.elapsed() >= REFUSED_QUIET) {
                    log::warn!(
                        "endpoint {}: a datagram from an unbound socket was dropped: clients must bind their own path to get replies",
                        d.bound.path.display()
                    );
                }
                continue;
            }
            if let Some(c) = d.clients.iter_mut().find(|c| c.addr == got.addr) {
                c.heard = Instant::now();
                if got.truncated {
                    // Longer than any frame: it arrived cut, and a cut frame
                    // is never passed on (on an offload network it would be
                    // delivered cut). Dropped and counted.
                    c.drop_from_vm();
                    continue;
                }
                // SAFETY: sends len bytes of our buffer on the connected pair.
                let r = unsafe { libc::send(c.inner.as_raw_fd(), self.buf.as_ptr().cast(), got.len, send_flags()) };
                if r < 0 {
                    c.drop_from_vm();
                }
                continue;
            }
            if let Some(t) = d.refused.get(&got.addr) {
                if t.elapsed() < REFUSED_QUIET {
                    continue;
                }
            }
            let shown = show_addr(&got.addr);
            let path = d.bound.path.clone();
            if d.clients.len() >= MAX_DATAGRAM_CLIENTS {
                d.refused.insert(got.addr.clone(), Instant::now());
                log::warn!("endpoint {}: client {shown} refused: {MAX_DATAGRAM_CLIENTS} clients already", path.display());
                continue;
            }
            let network = d.bound.network.clone();
            let (uid, gid, pid) = got.creds.unwrap_or_else(own_credentials);
            let peer = Peer { uid, gid, pid, connection: self.next_connection() };
            let Some(core) = self.core() else { return };
            match core.open_endpoint_port(&network, &peer, EndpointKind::Datagram, None) {
                Ok((lease, Some((inner, counter)))) => {
                    log::info!("endpoint {}: client {shown} (pid {pid} uid {uid}) joined (lease {lease})", path.display());
                    let _ = sys::set_flags(inner.as_raw_fd());
                    let mut c = Client::new(got.addr, lease, inner, counter);
                    if got.truncated {
                        c.drop_from_vm();
                    } else if &self.buf[..got.len] != VFKIT_MAGIC {
                        // SAFETY: as above.
                        if unsafe { libc::send(c.inner.as_raw_fd(), self.buf.as_ptr().cast(), got.len, send_flags()) } < 0 {
                            c.drop_from_vm();
                        }
                    }
                    self.datagrams[i].clients.push(c);
                }
                Ok((lease, None)) => {
                    log::error!("endpoint {}: lease {lease} came without a socket; releasing it", path.display());
                    core.release_endpoint_lease(lease);
                }
                Err(f) => {
                    log::warn!("endpoint {}: client {shown} (pid {pid} uid {uid}) refused: {}", path.display(), f.message);
                    self.datagrams[i].refused.insert(got.addr, Instant::now());
                }
            }
        }
    }

    /// Drops clients whose lease ended (relay or network gone) or whose
    /// socket no longer answers a connect().
    pub(super) fn probe(&mut self) {
        let Some(core) = self.core() else { return };
        let mut gone = Vec::new();
        for (i, d) in self.datagrams.iter_mut().enumerate() {
            d.refused.retain(|_, t| t.elapsed() < REFUSED_QUIET);
            for (j, c) in d.clients.iter().enumerate() {
                if !core.endpoint_lease_running(c.lease) {
                    gone.push((i, j, "its port ended".to_owned()));
                } else if c.heard.elapsed() >= PROBE_INTERVAL {
                    if let Some(why) = probe_address(&c.addr) {
                        gone.push((i, j, why));
                    }
                }
            }
        }
        self.remove_clients(gone);
    }

    pub(super) fn remove_clients(&mut self, mut gone: Vec<(usize, usize, String)>) {
        if gone.is_empty() {
            return;
        }
        gone.sort_by_key(|g| std::cmp::Reverse((g.0, g.1)));
        gone.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        let core = self.core();
        for (i, j, why) in gone {
            let d = &mut self.datagrams[i];
            let c = d.clients.swap_remove(j);
            log::info!("endpoint {}: client {} left ({why}); lease {} released", d.bound.path.display(), show_addr(&c.addr), c.lease);
            if c.drops > 0 {
                log::info!("endpoint {}: {} frame(s) to or from {} were dropped (a queue stayed full)", d.bound.path.display(), c.drops, show_addr(&c.addr));
            }
            drop(c.inner);
            if let Some(core) = &core {
                core.release_endpoint_lease(c.lease);
            }
        }
    }
}

fn send_flags() -> libc::c_int {
    #[cfg(target_os = "linux")]
    return libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    #[cfg(not(target_os = "linux"))]
    return libc::MSG_DONTWAIT;
}

fn own_credentials() -> (u32, u32, i32) {
    // SAFETY: getuid/getgid cannot fail.
    unsafe { (libc::getuid(), libc::getgid(), -1) }
}

/// A client address (raw `sun_path` bytes) for logs.
fn show_addr(addr: &[u8]) -> String {
    match addr.first() {
        Some(0) => format!("@{}", String::from_utf8_lossy(&addr[1..])),
        _ => String::from_utf8_lossy(addr).into_owned(),
    }
}

/// Why the socket at `addr` is gone, if it is: a fresh socket's connect()
/// fails with ECONNREFUSED (nobody bound) or ENOENT (no file).
fn probe_address(addr: &[u8]) -> Option<String> {
    let probe = sys::unix_socket(libc::SOCK_DGRAM, true).ok()?;
    match sys::connect(probe.as_raw_fd(), addr) {
        Ok(()) => None,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNREFUSED) | Some(libc::ENOENT)) => Some(format!("its socket is gone: {e}")),
        Err(_) => None,
    }
}
