//! Per-network socket paths that VMs connect to by themselves
//! (docs/endpoints.md): `<endpointDir>/<network>.stream.sock` and
//! `<endpointDir>/<network>.dgram.sock`. This module owns the running set
//! ([`Endpoints`]), the endpoint thread's poll loop and the port an endpoint
//! client gets; what each part owns lives in its own file:
//! [`paths`] (paths, binding, socket activation), [`stream`] (accepting
//! stream clients), [`datagram`] (the datagram demux and its clients).
//!
//! Threads: one `vmnet-rs-endpoints` thread polls every endpoint socket
//! and a wake pipe; each client's port has its relay thread, and no other. Starting a port
//! takes the broker's state lock (and may create the network), so a slow
//! network start holds up this thread, never the broker socket's.
//!
//! Authorisation: the peer's credentials (stream: SO_PEERCRED on Linux,
//! getpeereid + LOCAL_PEERPID on macOS; datagram: SCM_CREDENTIALS on Linux,
//! none on macOS, where the per-user 0700 folder is the check) go through
//! the broker's own check for every new port. A refused peer is logged and
//! closed (stream) or ignored for [`REFUSED_QUIET`] (datagram); nothing
//! else changes.
//!
//! Invariants: every fd accepted or received is owned by a port or closed;
//! [`Endpoints::stop`] joins the thread, closes every socket and unlinks
//! the paths it bound itself (never those a service manager made).

mod datagram;
mod paths;
mod receive;
mod stream;
/// The datagram receive path for the fuzz targets (`crate::fuzzing`).
#[cfg(feature = "fuzzing")]
pub(crate) use receive::fuzzing as receive_fuzzing;
#[cfg(all(test, target_os = "linux"))]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

use super::protocol::{code, Failure};
use super::state::Port;
use super::Core;
use crate::adaptor::vm_shared::SharedEnd;
use crate::adaptor::{socket as adaptor_socket, Adaptor, DropCounter, Kind, Options};
use crate::config::EndpointKind;
use crate::vmnet::InterfaceDesc;
use crate::xpc::Peer;

use datagram::DatagramEndpoint;
pub use datagram::{DatagramQueue, QueueMade, MAX_DATAGRAM_CLIENTS, PROBE_INTERVAL, QUEUE_FRAMES, REFUSED_QUIET, VFKIT_MAGIC};
use paths::{open_endpoint, Bound};
pub use paths::{activation_name, default_dir, default_dir_for, endpoint_path, max_path_bytes, Access};

/// Pending connections the kernel queues on a stream endpoint.
const LISTEN_BACKLOG: libc::c_int = 64;
/// Endpoint clients' lease connection ids start here, above any listener's.
const CONNECTION_BASE: u64 = 1 << 40;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("endpoint {path}: {op}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("endpoint {path}: {message}")]
    Refused { path: String, message: String },
}

fn io_error<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> Error + 'p {
    move |source| Error::Io { op, path: path.display().to_string(), source }
}

struct Shared {
    core: Weak<Core>,
    stopping: AtomicBool,
    next_connection: AtomicU64,
}

/// The running endpoints of a broker.
pub struct Endpoints {
    shared: Arc<Shared>,
    wake: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    /// Network -> kind -> path.
    paths: BTreeMap<String, BTreeMap<EndpointKind, PathBuf>>,
    /// Network -> its datagram endpoint's receive queue.
    queues: BTreeMap<String, DatagramQueue>,
    bound_here: bool,
}

impl Endpoints {
    /// Opens the endpoints `wanted` lists (network -> kinds) under `dir`,
    /// taking sockets the service manager holds where it has them, and
    /// starts the endpoint thread. Nothing is left open on error.
    pub fn start(core: &Arc<Core>, dir: &Path, wanted: &BTreeMap<String, Vec<EndpointKind>>, access: &Access) -> Result<Endpoints, Error> {
        let mut streams = Vec::new();
        let mut datagrams = Vec::new();
        let mut paths: BTreeMap<String, BTreeMap<EndpointKind, PathBuf>> = BTreeMap::new();
        let mut queues = BTreeMap::new();
        let mut bound_here = false;
        let cleanup = |s: &[Bound], d: &[DatagramEndpoint]| {
            s.iter().for_each(Bound::unlink);
            d.iter().for_each(|d| d.bound.unlink());
        };
        for (network, kinds) in wanted {
            for kind in kinds {
                let b = match open_endpoint(dir, network, *kind, access) {
                    Ok(b) => b,
                    Err(e) => {
                        cleanup(&streams, &datagrams);
                        return Err(e);
                    }
                };
                bound_here |= b.owns_path;
                paths.entry(network.clone()).or_default().insert(*kind, b.path.clone());
                if let Some(q) = &b.queue {
                    queues.insert(network.clone(), q.clone());
                }
                match kind {
                    EndpointKind::Stream => streams.push(b),
                    EndpointKind::Datagram => datagrams.push(DatagramEndpoint::new(b)),
                }
            }
        }
        let served: Vec<String> = wanted.iter().flat_map(|(n, kinds)| kinds.iter().map(move |k| activation_name(n, *k))).collect();
        crate::xpc::activation::warn_unserved_launchd_sockets(&served);
        let (wake_rx, wake_tx) = match crate::sys::pipe() {
            Ok(p) => p,
            Err(e) => {
                cleanup(&streams, &datagrams);
                return Err(io_error("create the wake pipe", dir)(e));
            }
        };
        let shared = Arc::new(Shared { core: Arc::downgrade(core), stopping: AtomicBool::new(false), next_connection: AtomicU64::new(CONNECTION_BASE) });
        let count = streams.len() + datagrams.len();
        let thread = {
            let shared = Arc::clone(&shared);
            let mut worker = Worker { shared, wake: wake_rx, streams, datagrams, last_probe: Instant::now() };
            std::thread::Builder::new().name("vmnet-rs-endpoints".into()).spawn(move || worker.run())
        };
        let thread = thread.map_err(io_error("start the endpoint thread", dir))?;
        if count > 0 {
            log::info!("endpoints: {count} socket(s) under {}", dir.display());
        }
        Ok(Endpoints { shared, wake: Some(wake_tx), thread: Some(thread), paths, queues, bound_here })
    }

    /// Network -> kind -> socket path.
    pub fn paths(&self) -> &BTreeMap<String, BTreeMap<EndpointKind, PathBuf>> {
        &self.paths
    }

    /// Network -> its datagram endpoint's receive queue (for `status`).
    pub fn queues(&self) -> &BTreeMap<String, DatagramQueue> {
        &self.queues
    }

    /// True when at least one endpoint socket was bound here (not handed
    /// over by a service manager): such a broker must not exit when idle,
    /// or its paths would stop answering.
    pub fn bound_here(&self) -> bool {
        self.bound_here
    }

    /// Stops the thread, closes every socket, unlinks the paths bound here.
    /// Ports already started stay with their leases. Idempotent.
    pub fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(w) = self.wake.take() {
            let byte = 1u8;
            // SAFETY: writes one byte from a valid local.
            let _ = unsafe { libc::write(w.as_raw_fd(), (&byte as *const u8).cast(), 1) };
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Endpoints {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The endpoint thread's state.
struct Worker {
    shared: Arc<Shared>,
    wake: OwnedFd,
    streams: Vec<Bound>,
    datagrams: Vec<DatagramEndpoint>,
    last_probe: Instant,
}

/// What a poll slot stands for.
#[derive(Clone, Copy)]
enum Slot {
    Wake,
    Stream(usize),
    Datagram(usize),
}

/// What a client that came through an endpoint relays with: the accepted
/// stream connection, or its share of the datagram endpoint's socket.
pub(super) enum EndpointEnd {
    Stream(OwnedFd),
    Datagram(SharedEnd),
}

impl Worker {
    fn run(&mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut slots: Vec<Slot> = Vec::new();
        while !self.shared.stopping.load(Ordering::SeqCst) {
            fds.clear();
            slots.clear();
            let mut add = |fd: RawFd, slot: Slot| {
                fds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
                slots.push(slot);
            };
            add(self.wake.as_raw_fd(), Slot::Wake);
            for (i, s) in self.streams.iter().enumerate() {
                add(s.fd.as_raw_fd(), Slot::Stream(i));
            }
            for (i, d) in self.datagrams.iter().enumerate() {
                add(d.bound.fd.as_raw_fd(), Slot::Datagram(i));
            }
            let timeout = self.datagrams.iter().any(|d| !d.clients.is_empty()).then_some(PROBE_INTERVAL);
            if let Err(e) = adaptor_socket::poll(&mut fds, timeout) {
                log::error!("endpoints: poll failed: {e}; the endpoints stop serving");
                break;
            }
            if self.shared.stopping.load(Ordering::SeqCst) {
                break;
            }
            for (k, fd) in fds.iter().enumerate() {
                if fd.revents == 0 {
                    continue;
                }
                match slots[k] {
                    Slot::Wake => {}
                    Slot::Stream(i) => self.accept(i),
                    Slot::Datagram(i) => self.receive_datagrams(i),
                }
            }
            if self.last_probe.elapsed() >= PROBE_INTERVAL {
                self.last_probe = Instant::now();
                self.probe();
            }
        }
        // Stopping: the leases go with the broker's state; close our ends.
        for d in &mut self.datagrams {
            d.clients.clear();
            d.bound.unlink();
        }
        self.streams.iter().for_each(Bound::unlink);
    }

    fn core(&self) -> Option<Arc<Core>> {
        self.shared.core.upgrade()
    }

    fn next_connection(&self) -> u64 {
        self.shared.next_connection.fetch_add(1, Ordering::Relaxed)
    }

}

impl Core {
    /// Starts a port on `network` for a VM that came through an endpoint:
    /// checks `peer`, creates the network if needed, starts an interface
    /// and an adaptor, and records a lease that lasts as long as the relay.
    /// Stream: the accepted connection is the adaptor's VM end; datagram:
    /// the relay sends on its share of the endpoint socket and takes frames
    /// from its inbox. Returns the lease and the handle that counts frames
    /// dropped in front of the relay as the port's.
    pub(super) fn open_endpoint_port(&self, network: &str, peer: &Peer, end: EndpointEnd) -> Result<(u64, DropCounter), Failure> {
        let via = match end {
            EndpointEnd::Stream(_) => EndpointKind::Stream,
            EndpointEnd::Datagram(_) => EndpointKind::Datagram,
        };
        let refused = |f: Failure| {
            let mut st = self.lock_state();
            st.counters.errors += 1;
            if f.code == code::NOT_ALLOWED {
                st.counters.refused += 1;
            }
            f
        };
        self.authorise(peer).map_err(refused)?;
        let wanted = super::requests::Wanted { config: None, accept_existing: true, lima: false };
        let failure = |what: &str, e: &dyn std::fmt::Display| Failure::new(code::CREATE_FAILURE, format!("network {network}: could not {what}: {e}"));
        // The broker's policy (broker/policy.rs) and the per-user port quota,
        // as for every other request; a network found gone is made again.
        let (mut st, interface, _) = self
            .open_port(peer, network, &wanted, false, |_, st| {
                let entry = &st.networks[network];
                let desc = InterfaceDesc { mac: None, isolation: entry.config.isolation(), offload: entry.config.offload() };
                entry.network.start_interface(&desc).map_err(|e| failure("start an interface", &e))
            })
            .map_err(refused)?;
        st.last_activity = Instant::now();
        let adaptor = match end {
            EndpointEnd::Stream(s) => Adaptor::start_with_socket(interface, Kind::Stream, s, &Options::default()),
            EndpointEnd::Datagram(shared) => Adaptor::start_shared(interface, shared),
        }
        .map_err(|e| failure("start the relay", &e))?;
        let counter = adaptor.drop_counter();
        let id = st.grant(network, peer, false, Some(Port::Adaptor(adaptor)), None, None);
        if let Some(l) = st.leases.get_mut(&id) {
            l.via = Some(via);
        }
        Ok((id, counter))
    }

    /// Releases an endpoint client's lease (its datagram client left).
    pub(super) fn release_endpoint_lease(&self, lease: u64) {
        self.lock_state().release_where(|l| l.id == lease);
    }

    /// Whether an endpoint client's lease still holds a running relay.
    pub(super) fn endpoint_lease_running(&self, lease: u64) -> bool {
        self.lock_state().leases.get(&lease).is_some_and(|l| l.port.as_ref().is_some_and(|p| p.is_running()))
    }
}
