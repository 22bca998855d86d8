//! What the broker holds: the network cache, the leases, the ports (relays
//! and TAPs) behind them, and the counters.
//!
//! One [`State`] lives behind the broker's single lock; every request that
//! touches networks and the monitor's [`State::tick`] run under it, so
//! network creation and teardown are serialised. Relays run on their own
//! threads (inside [`Adaptor`]).
//!
//! Invariants: a lease names a network in `networks`; a network with no
//! lease has `idle_since` set; dropping a lease drops its port (stops the
//! relay) before any network it used can be dropped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::adaptor::{Adaptor, Kind};
use crate::config::NetworkConfig;
use crate::vmnet::Network;

/// What stands behind a lease that handed out an fd.
pub enum Port {
    /// A relay between an interface and the VM's socket.
    Adaptor(Adaptor),
    /// A TAP device whose fd went to the client (Linux); the broker keeps no
    /// fd and watches for the link to disappear. The TAP is not persistent:
    /// the kernel removes it with the last fd the VM holds.
    Tap { name: String },
}

impl Port {
    pub fn fd_type(&self) -> &'static str {
        match self {
            Port::Adaptor(a) => a.kind().as_str(),
            Port::Tap { .. } => "tap",
        }
    }

    /// False once the VM side is gone (relay ended, TAP link removed).
    pub fn is_running(&self) -> bool {
        match self {
            Port::Adaptor(a) => a.is_running(),
            Port::Tap { name } => link_exists(name),
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        match self {
            Port::Adaptor(a) => a.stop(),
            Port::Tap { name } => unplug_tap(name),
        }
    }
}

/// Whether a TAP of that name exists in the broker's network namespace
/// (Linux; there are no TAP ports elsewhere).
fn link_exists(name: &str) -> bool {
    #[cfg(target_os = "linux")]
    return crate::vmnet::linux::link_exists(name);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = name;
        false
    }
}

/// Ends a TAP port whose lease ended (`vmnet::linux::unplug_tap`).
fn unplug_tap(name: &str) {
    #[cfg(target_os = "linux")]
    crate::vmnet::linux::unplug_tap(name);
    #[cfg(not(target_os = "linux"))]
    let _ = name;
}

pub struct Lease {
    pub id: u64,
    pub network: String,
    pub connection: u64,
    pub pid: i32,
    pub uid: u32,
    /// Released when the connection closes (our `open`/`acquire`, Lima's
    /// serialization requests). Lima fd leases are not: Lima closes its
    /// session right after the reply, so they last while the VM's socket
    /// does.
    pub bound_to_connection: bool,
    pub port: Option<Port>,
    pub mac: Option<String>,
    /// The VM's name as the client gave it (`vm_name` in the request).
    pub vm_name: Option<String>,
    /// The DNS name granted with the lease (`name` in the request;
    /// `broker::names`), released with it.
    pub name: Option<String>,
    /// The client process's name when the lease was granted (Linux:
    /// `/proc/PID/comm`), so status can tell VMs apart without a name.
    pub process: Option<String>,
    pub created: Instant,
    /// The endpoint the VM came through (docs/endpoints.md), if it did.
    pub via: Option<crate::config::EndpointKind>,
}

impl Lease {
    /// Who holds the lease, for logs: `VM vm1 (pid 42 qemu-system-x86, MAC
    /// 52:54:00:12:34:56)`, or `pid 42 (...)` without a VM name.
    pub fn holder(&self) -> String {
        let mut parts = vec![match &self.process {
            Some(p) => format!("pid {} {p}", self.pid),
            None => format!("pid {}", self.pid),
        }];
        if let Some(m) = &self.mac {
            parts.push(format!("MAC {m}"));
        }
        match &self.vm_name {
            Some(n) => format!("VM {n} ({})", parts.join(", ")),
            None => parts.join(", "),
        }
    }
}

/// The name of process `pid` (Linux: `/proc/PID/comm`); None where the
/// platform or the process does not tell.
pub fn process_name(pid: i32) -> Option<String> {
    if !cfg!(target_os = "linux") || pid <= 0 {
        return None;
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let comm = comm.trim_end_matches('\n');
    (!comm.is_empty()).then(|| comm.to_owned())
}

pub struct NetEntry {
    /// The broker's own DHCP/DNS port (`addresses: broker`); declared
    /// before `network` so it stops before the network is torn down.
    pub service: Option<super::service::ServicePort>,
    pub network: Box<dyn Network>,
    pub config: NetworkConfig,
    /// The JSON the creator sent (Lima replies with the creator's bytes).
    pub config_json: Vec<u8>,
    pub created: Instant,
    pub idle_since: Option<Instant>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub requests: u64,
    pub errors: u64,
    pub refused: u64,
    pub malformed: u64,
    pub networks_created: u64,
    pub networks_released: u64,
    pub ports_started: u64,
    pub leases_granted: u64,
    pub leases_released: u64,
}

pub struct State {
    pub networks: BTreeMap<String, NetEntry>,
    pub leases: BTreeMap<u64, Lease>,
    pub next_lease: u64,
    pub counters: Counters,
    pub last_activity: Instant,
    /// Connections that sent a request and have not closed.
    pub connections: std::collections::BTreeSet<u64>,
    /// The address records of every network (`records.rs`, `names.rs`).
    pub records: super::records::Records,
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    pub fn new() -> State {
        State {
            networks: BTreeMap::new(),
            leases: BTreeMap::new(),
            next_lease: 1,
            counters: Counters::default(),
            last_activity: Instant::now(),
            connections: Default::default(),
            records: Default::default(),
        }
    }

    pub fn leases_on(&self, network: &str) -> usize {
        self.leases.values().filter(|l| l.network == network).count()
    }

    pub fn leases_of(&self, connection: u64) -> usize {
        self.leases.values().filter(|l| l.connection == connection && l.bound_to_connection).count()
    }

    /// Ports (relays, TAPs) held by uid `uid`, across all its connections.
    pub fn ports_of_uid(&self, uid: u32) -> usize {
        self.leases.values().filter(|l| l.uid == uid && l.port.is_some()).count()
    }

    /// Adds a lease, logs it, and returns its id.
    #[allow(clippy::too_many_arguments)]
    pub fn grant(
        &mut self,
        network: &str,
        peer: &crate::xpc::Peer,
        bound_to_connection: bool,
        port: Option<Port>,
        mac: Option<String>,
        vm_name: Option<String>,
    ) -> u64 {
        let id = self.next_lease;
        self.next_lease += 1;
        let lease = Lease {
            id,
            network: network.to_owned(),
            connection: peer.connection,
            pid: peer.pid,
            uid: peer.uid,
            bound_to_connection,
            port,
            mac,
            vm_name,
            name: None,
            process: process_name(peer.pid),
            created: Instant::now(),
            via: None,
        };
        log::info!(
            "lease {id} on {network} ({}) granted to {} uid {}",
            lease.port.as_ref().map(|p| p.fd_type()).unwrap_or("network"),
            lease.holder(),
            peer.uid
        );
        self.leases.insert(id, lease);
        self.counters.leases_granted += 1;
        self.refresh_idle();
        id
    }

    /// Drops the leases `which` selects (stopping their ports); returns how many.
    pub fn release_where(&mut self, which: impl Fn(&Lease) -> bool) -> usize {
        let ids: Vec<u64> = self.leases.values().filter(|l| which(l)).map(|l| l.id).collect();
        for id in &ids {
            if let Some(lease) = self.leases.remove(id) {
                match (&lease.name, lease.mac.as_deref().and_then(|m| m.parse().ok())) {
                    (Some(_), Some(mac)) => self.release_name(&lease.network, mac),
                    (None, Some(mac)) => self.release_claim(&lease.network, mac),
                    _ => {}
                }
                log::info!(
                    "lease {} on {} ({}) of {} released",
                    lease.id,
                    lease.network,
                    lease.port.as_ref().map(|p| p.fd_type()).unwrap_or("network"),
                    lease.holder()
                );
                drop(lease);
            }
        }
        self.counters.leases_released += ids.len() as u64;
        self.refresh_idle();
        ids.len()
    }

    /// Tears a network down now, with every lease on it.
    pub fn drop_network(&mut self, name: &str, why: &str) {
        self.release_where(|l| l.network == name);
        if let Some(entry) = self.networks.remove(name) {
            log::info!("network {name} torn down: {why}");
            drop(entry);
            self.counters.networks_released += 1;
        }
    }

    /// Sets or clears each network's idle mark from its lease count.
    pub fn refresh_idle(&mut self) {
        let now = Instant::now();
        let names: Vec<String> = self.networks.keys().cloned().collect();
        for name in names {
            let leased = self.leases_on(&name) > 0;
            if let Some(entry) = self.networks.get_mut(&name) {
                match (leased, entry.idle_since) {
                    (true, _) => entry.idle_since = None,
                    (false, None) => entry.idle_since = Some(now),
                    (false, Some(_)) => {}
                }
            }
        }
    }

    /// The monitor's periodic pass: releases leases whose VM side is gone,
    /// networks that disappeared, and networks idle for `idle_timeout`
    /// (`None`: never).
    pub fn tick(&mut self, idle_timeout: Option<Duration>) {
        for l in self.leases.values() {
            match &l.port {
                Some(Port::Adaptor(a)) if !a.is_running() => {
                    let why = a.end_reason().map(|r| r.to_string()).unwrap_or_else(|| "ended".into());
                    log::info!("lease {} on {} (pid {}): relay ended: {why}", l.id, l.network, l.pid);
                }
                Some(Port::Tap { name }) if !link_exists(name) => {
                    log::info!("lease {} on {} (pid {}): TAP {name} is gone", l.id, l.network, l.pid);
                }
                _ => {}
            }
        }
        self.release_where(|l| l.port.as_ref().is_some_and(|p| !p.is_running()));
        let vanished: Vec<String> = self.networks.iter().filter(|(_, e)| !e.network.is_alive()).map(|(n, _)| n.clone()).collect();
        for name in vanished {
            log::warn!("network {name} disappeared under the broker; releasing it and its leases");
            self.drop_network(&name, "it disappeared");
        }
        if let Some(timeout) = idle_timeout {
            let idle: Vec<String> = self
                .networks
                .iter()
                .filter(|(_, e)| e.idle_since.is_some_and(|t| t.elapsed() >= timeout))
                .map(|(n, _)| n.clone())
                .collect();
            for name in idle {
                self.drop_network(&name, &format!("no lease for {}s", timeout.as_secs_f64()));
            }
        }
    }

    /// Names in the log every VM that loses its network because the broker
    /// stops (`why`); called before the transport closes the connections.
    pub fn announce_stop(&self, why: &str) {
        for l in self.leases.values() {
            log::warn!("{} loses its network {} (lease {}): the broker is stopping: {why}", l.holder(), l.network, l.id);
        }
    }

    /// Releases everything (broker stop; `why` it stops).
    pub fn clear(&mut self, why: &str) {
        self.release_where(|_| true);
        let names: Vec<String> = self.networks.keys().cloned().collect();
        for name in names {
            self.drop_network(&name, &format!("the broker is stopping: {why}"));
        }
    }
}

/// An adaptor kind or TAP, as named in requests (`FdType`, `fd_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdType {
    Relay(Kind),
    Tap,
}

impl FdType {
    pub fn parse(name: &str) -> Option<FdType> {
        if name == "tap" {
            return Some(FdType::Tap);
        }
        Kind::parse(name).map(FdType::Relay)
    }

    pub fn names() -> String {
        let mut v: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        if cfg!(target_os = "linux") {
            v.push("tap");
        }
        v.join(", ")
    }
}
