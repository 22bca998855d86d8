//! The datagram endpoint: one bound SOCK_DGRAM socket shared by every
//! client. A client binds its own path and sends to the endpoint (vfkit,
//! krunkit, QEMU `-netdev dgram`); it is known by its address. Its first
//! datagram may be vfkit's `VFKT` magic, which is swallowed.
//!
//! Each client gets its own port: an interface and a relay thread that
//! sends to the client *from* the endpoint socket (a duplicate of it;
//! clients that connect() to the endpoint take nothing from elsewhere),
//! batched and addressed to the client, waiting for that one client when
//! its queue is full ([`crate::adaptor::vm_shared`]). The demux here
//! receives batches from the endpoint socket (`recvmmsg` on Linux), sorts
//! them by sender and copies each into its client's inbox, from which the
//! client's relay writes them to its interface. No socketpair and no extra
//! system call per frame in either direction (docs/endpoints.md has the
//! design, the alternatives and their numbers).
//!
//! A client whose socket is gone is noticed by its relay (a send fails with
//! ECONNREFUSED or ENOENT, and the relay ends) or by a probe (a connect() to
//! its address) every [`PROBE_INTERVAL`], and its port released.
//!
//! Thread: the endpoint thread (`vmnet-rs-endpoints`) receives; each
//! client's relay thread sends and writes its interface. No other thread.
//!
//! Invariants: an unbound sender (Linux: empty address; macOS: XNU's
//! `sun_noname`) never gets a port, nor (Linux) a sender bound to an
//! abstract name when the endpoint socket lives in a private network
//! namespace ([`QueueMade::PrivateNamespace`]: no reply could reach it);
//! every descriptor a client sends
//! (SCM_RIGHTS) is closed; a datagram that arrived cut (`MSG_TRUNC`) is
//! never passed on, it is dropped and counted; every frame dropped here (cut,
//! or its client's inbox full) is counted on the client's port.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::paths::Bound;
use super::receive::{recv_batch_from, Datagram};
use super::{EndpointEnd, Worker};
use crate::adaptor::vm_shared::{Inbox, SharedEnd};
use crate::adaptor::{DropCounter, BATCH_FRAMES};
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
/// Largest datagram read from a client (the relays' own maximum).
pub(super) const DATAGRAM_BYTES: usize = 65_550;
/// Batches received from one endpoint per poll turn (fairness between
/// endpoints and the stream listeners).
const BATCHES_PER_TURN: usize = 4;
/// The endpoint socket's send buffer: every datagram queued at any client
/// is charged to it (Linux), so it is sized for every client's queue at
/// once ([`MAX_DATAGRAM_CLIENTS`] x (`max_dgram_qlen` 10 + 1) datagrams of
/// an MTU-1500 frame's ~2.8 KiB): a client that stops reading holds its
/// own queue's worth and no more, never the others' room (docs/endpoints.md).
/// Granted in full with CAP_NET_ADMIN (`SO_SNDBUFFORCE`), else capped by
/// `net.core.wmem_max`. The receive buffer holds bursts from all clients.
pub(super) const SEND_BUFFER_BYTES: usize = 8 << 20;
pub(super) const RECV_BUFFER_BYTES: usize = 4 << 20;

/// The receive queue, in datagrams, the broker gives a datagram endpoint
/// socket it makes (Linux; docs/endpoints.md, "The receive queue"). Every
/// client sends to this one socket, and Linux queues only as many
/// datagrams for it as `net.unix.max_dgram_qlen` said where it was made (10
/// unless the host set more; systemd sets 512) before senders find it full
/// and wait. 512 as systemd: each queued datagram is charged to its
/// sender's send buffer (a QEMU client's default ~208 KiB is ~75 MTU-sized
/// frames), so a few busy clients fill it, not one; the endpoint thread
/// moves it out in [`BATCH_FRAMES`] batches into inboxes of
/// [`crate::adaptor::vm_shared::INBOX_FRAMES`] (1024), so a full queue fits
/// one client's inbox; at most 512 x 64 KiB (offload) is held, charged to
/// the senders, not to the broker's [`SEND_BUFFER_BYTES`].
pub const QUEUE_FRAMES: u32 = 512;

/// How a datagram endpoint's socket was made, for its receive queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueMade {
    /// In the broker's namespace, whose limit was already enough (macOS:
    /// always; there the receive buffer is what bounds the queue).
    Here,
    /// In a private network namespace with [`QUEUE_FRAMES`]
    /// ([`crate::sys::datagram_socket_in_private_namespace`]).
    PrivateNamespace,
    /// In the broker's namespace with its lower limit: a private one was
    /// not allowed.
    Fallback,
    /// Made by systemd or launchd: its queue is what it was made with.
    ServiceManager,
}

impl QueueMade {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueMade::Here => "broker namespace",
            QueueMade::PrivateNamespace => "private namespace",
            QueueMade::Fallback => "broker namespace (fallback)",
            QueueMade::ServiceManager => "service manager",
        }
    }
}

/// What a datagram endpoint socket queues for the endpoint thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatagramQueue {
    /// Linux: datagrams queued before senders wait (None on macOS, where
    /// the receive buffer bounds the queue). For a socket the service
    /// manager made, this namespace's limit now, which is the one it got
    /// when both live in the same namespace.
    pub frames: Option<u32>,
    /// The receive buffer the kernel granted (SO_RCVBUF), bytes.
    pub recv_bytes: Option<usize>,
    pub made: QueueMade,
    /// Why a private namespace could not be used ([`QueueMade::Fallback`]).
    pub reason: Option<String>,
}

impl DatagramQueue {
    /// Made in this namespace (`frames` from its limit).
    pub(super) fn here(frames: Option<u32>, made: QueueMade) -> DatagramQueue {
        DatagramQueue { frames, recv_bytes: None, made, reason: None }
    }

    /// What is wrong and how to fix it, when the queue is shallower than
    /// [`QUEUE_FRAMES`]; `None` when it is not (or not known).
    pub fn note(&self) -> Option<String> {
        let frames = self.frames?;
        if frames >= QUEUE_FRAMES {
            return None;
        }
        let sysctl = format!("`sysctl -w net.unix.max_dgram_qlen={QUEUE_FRAMES}` (systemd's default; keep it in /etc/sysctl.d)");
        let (why, fix) = match self.made {
            QueueMade::ServiceManager => ("the service manager made the socket where net.unix.max_dgram_qlen is low".to_string(), format!("{sysctl}, then restart the socket unit")),
            _ => (
                match &self.reason {
                    Some(r) => format!("no private namespace for it ({r})"),
                    None => "net.unix.max_dgram_qlen is low here".to_string(),
                },
                format!("{sysctl} before the broker starts, or run the broker as root (CAP_SYS_ADMIN) so it makes its own"),
            ),
        };
        Some(format!("receive queue {frames} datagrams, under {QUEUE_FRAMES}: {why}; datagram clients slow down under load. Fix: {fix}"))
    }
}

/// One datagram client: its port's lease and inbox.
pub(super) struct Client {
    lease: u64,
    inbox: Arc<Inbox>,
    /// Last time a datagram came from the client (probes skip busy ones).
    heard: Instant,
    /// Frames dropped here, also added to the port's own counters.
    drops: u64,
    counter: DropCounter,
}

impl Client {
    /// Hands datagrams `from..to` of a batch (all from this client) to the
    /// relay under one lock; a cut one ([`Datagram::truncated`]) and those
    /// the inbox has no room for are dropped and counted. `Some(inbox)`
    /// when the relay must be woken.
    fn pass_run(&mut self, bufs: &[Vec<u8>], got: &[Datagram], from: usize, to: usize) -> Option<Arc<Inbox>> {
        let mut cut = 0;
        let frames = (from..to).filter_map(|k| {
            if got[k].truncated {
                // Longer than any frame: it arrived cut, and a cut frame is
                // never passed on (on an offload network it would be
                // delivered cut).
                cut += 1;
                None
            } else {
                Some(&bufs[k][..got[k].len])
            }
        });
        let (refused, wake) = self.inbox.push_all(frames);
        let dropped = (cut + refused) as u64;
        if dropped > 0 {
            self.drops += dropped;
            self.counter.vm_to_host(dropped);
        }
        wake.then(|| Arc::clone(&self.inbox))
    }
}

pub(super) struct DatagramEndpoint {
    pub(super) bound: Bound,
    /// Address (`sun_path` bytes) -> client.
    pub(super) clients: HashMap<Vec<u8>, Client>,
    /// Addresses refused lately, with when.
    pub(super) refused: HashMap<Vec<u8>, Instant>,
    bufs: Vec<Vec<u8>>,
    got: Vec<Datagram>,
    /// Inboxes to wake after a batch (kept to reuse its buffer).
    wake: Vec<Arc<Inbox>>,
}

impl DatagramEndpoint {
    pub(super) fn new(bound: Bound) -> DatagramEndpoint {
        DatagramEndpoint { bound, clients: HashMap::new(), refused: HashMap::new(), bufs: Vec::new(), got: Vec::new(), wake: Vec::new() }
    }
}

impl Worker {
    /// Receives what is waiting on datagram endpoint `i`, in batches, and
    /// hands each frame to its client's relay (a new client gets a port).
    pub(super) fn receive_datagrams(&mut self, i: usize) {
        let mut wake = std::mem::take(&mut self.datagrams[i].wake);
        for _ in 0..BATCHES_PER_TURN {
            let d = &mut self.datagrams[i];
            if d.bufs.is_empty() {
                d.bufs = vec![vec![0u8; DATAGRAM_BYTES]; BATCH_FRAMES];
            }
            let fd = d.bound.fd.as_raw_fd();
            let n = match recv_batch_from(fd, &mut d.bufs, &mut d.got) {
                Ok(n) => n,
                Err(e) => {
                    log::warn!("endpoint {}: receive failed: {e}", d.bound.path.display());
                    break;
                }
            };
            // Runs of datagrams from one sender go together: one look-up
            // of the sender, one lock of its inbox.
            let now = Instant::now();
            let mut k = 0;
            while k < n {
                let got = &self.datagrams[i].got;
                let end = (k + 1..n).find(|&e| got[e].addr != got[k].addr).unwrap_or(n);
                self.take_run(i, k, end, now, &mut wake);
                k = end;
            }
            wake.drain(..).for_each(|inbox| inbox.wake());
            if n < BATCH_FRAMES {
                break;
            }
        }
        self.datagrams[i].wake = wake;
    }

    /// Datagrams `from..to` of the last batch on endpoint `i`, all from one
    /// sender, received at `now`: a known client's go to its relay at once;
    /// otherwise each is taken as the first from a new sender until one
    /// makes its port.
    fn take_run(&mut self, i: usize, from: usize, to: usize, now: Instant, wake: &mut Vec<Arc<Inbox>>) {
        for k in from..to {
            let d = &mut self.datagrams[i];
            if let Some(c) = d.clients.get_mut(&d.got[k].addr) {
                c.heard = now;
                c.inbox.heard();
                if let Some(inbox) = c.pass_run(&d.bufs, &d.got, k, to) {
                    wake.push(inbox);
                }
                return;
            }
            self.take_datagram(i, k, wake);
        }
    }

    /// Datagram `k` of the last batch on endpoint `i`, from a sender that
    /// is no client (yet): it gets a port, or is refused.
    fn take_datagram(&mut self, i: usize, k: usize, wake: &mut Vec<Arc<Inbox>>) {
        let d = &mut self.datagrams[i];
        let got = &d.got[k];
        if got.addr.is_empty() {
            // Unbound (Linux: an empty address; macOS: XNU's `sun_noname`):
            // no reply can reach it, so it gets no port; held off like a
            // refused address, logged once a while.
            if d.refused.insert(Vec::new(), Instant::now()).is_none_or(|t| t.elapsed() >= REFUSED_QUIET) {
                log::warn!(
                    "endpoint {}: a datagram from an unbound socket was dropped: clients must bind their own path to get replies",
                    d.bound.path.display()
                );
            }
            return;
        }
        if let Some(t) = d.refused.get(&got.addr) {
            if t.elapsed() < REFUSED_QUIET {
                return;
            }
        }
        let addr = got.addr.clone();
        let shown = show_addr(&addr);
        let path = d.bound.path.clone();
        if addr.first() == Some(&0) && d.bound.queue.as_ref().is_some_and(|q| q.made == QueueMade::PrivateNamespace) {
            // An abstract name lives in its sender's network namespace, and
            // a socket made in a private one (for its deeper queue) sends
            // to abstract names there only: no reply could reach it.
            d.refused.insert(addr, Instant::now());
            log::warn!(
                "endpoint {}: client {shown} refused: it is bound to an abstract name, which this endpoint cannot answer (its socket was made in a private network namespace for a {QUEUE_FRAMES}-datagram queue); bind the client to a path, or set `sysctl -w net.unix.max_dgram_qlen={QUEUE_FRAMES}` before the broker starts so the endpoint is made in the broker's own namespace",
                path.display()
            );
            return;
        }
        if d.clients.len() >= MAX_DATAGRAM_CLIENTS {
            d.refused.insert(addr, Instant::now());
            log::warn!("endpoint {}: client {shown} refused: {MAX_DATAGRAM_CLIENTS} clients already", path.display());
            return;
        }
        let network = d.bound.network.clone();
        let (uid, gid, pid) = got.creds.unwrap_or_else(own_credentials);
        let socket = match d.bound.fd.as_fd().try_clone_to_owned() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("endpoint {}: client {shown} refused: could not duplicate the endpoint socket: {e}", path.display());
                d.refused.insert(addr, Instant::now());
                return;
            }
        };
        let (inbox, readable) = match Inbox::new() {
            Ok(made) => made,
            Err(e) => {
                log::warn!("endpoint {}: client {shown} refused: could not create its inbox: {e}", path.display());
                d.refused.insert(addr, Instant::now());
                return;
            }
        };
        let peer = Peer { uid, gid, pid, connection: self.next_connection() };
        let Some(core) = self.core() else { return };
        let end = SharedEnd { socket, addr: addr.clone(), inbox: Arc::clone(&inbox), readable };
        let d = &mut self.datagrams[i];
        match core.open_endpoint_port(&network, &peer, EndpointEnd::Datagram(end)) {
            Ok((lease, counter)) => {
                log::info!("endpoint {}: client {shown} (pid {pid} uid {uid}) joined (lease {lease})", path.display());
                let mut c = Client { lease, inbox, heard: Instant::now(), drops: 0, counter };
                // The first datagram goes on like the rest, unless it is
                // vfkit's hello (a cut one is dropped and counted).
                let got = &d.got[k];
                if got.truncated || &d.bufs[k][..got.len] != VFKIT_MAGIC {
                    if let Some(inbox) = c.pass_run(&d.bufs, &d.got, k, k + 1) {
                        wake.push(inbox);
                    }
                }
                d.clients.insert(addr, c);
            }
            Err(f) => {
                log::warn!("endpoint {}: client {shown} (pid {pid} uid {uid}) refused: {}", path.display(), f.message);
                d.refused.insert(addr, Instant::now());
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
            for (addr, c) in &d.clients {
                if !core.endpoint_lease_running(c.lease) {
                    gone.push((i, addr.clone(), "its port ended".to_owned()));
                } else if c.heard.elapsed() >= PROBE_INTERVAL {
                    if let Some(why) = probe_address(addr) {
                        gone.push((i, addr.clone(), why));
                    }
                }
            }
        }
        for (i, addr, why) in gone {
            let d = &mut self.datagrams[i];
            let Some(c) = d.clients.remove(&addr) else { continue };
            log::info!("endpoint {}: client {} left ({why}); lease {} released", d.bound.path.display(), show_addr(&addr), c.lease);
            if c.drops > 0 {
                log::info!("endpoint {}: {} frame(s) from {} were dropped here (cut, or its relay's inbox full)", d.bound.path.display(), c.drops, show_addr(&addr));
            }
            core.release_endpoint_lease(c.lease);
        }
    }
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
