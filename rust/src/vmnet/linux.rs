//! The Linux network backend: a network is a bridge with the gateway
//! address, one nftables table (forwarding policy, NAT, port forwards) and
//! one supervised dnsmasq (DHCP, DNS proxy, router advertisements); each VM
//! port is a TAP enslaved to the bridge.
//!
//! Modules, one per concern: `naming` (link, table and file names), `plan`
//! (the checked Linux view of a config), `links` (bridge, addresses, routes,
//! sysctls through iproute2), `rtnl` (per-port link changes over netlink, no
//! fork on the path a VM waits on), `nft`
//! (the ruleset), `dnsmasq` (arguments, supervisor thread, leases), `record`
//! (what was created, for crash recovery), `cmd` (running the tools),
//! `watch` (noticing what the host removed and putting it back), `repair`
//! (counting repairs, the no-fight rule), `forwarding` (IP forwarding turned
//! on and given back as found).
//!
//! Threads: creation, interface starts and teardown run on the caller's
//! thread and act on that thread's network namespace; each network has one
//! dnsmasq supervisor thread and one watcher thread (`vmnet-rs-watch`).
//! Needs CAP_NET_ADMIN.
//!
//! Invariants:
//! - Creation is all-or-nothing: the configuration is checked completely
//!   (including against the namespace's routes) before anything is created,
//!   and a failure part-way deletes whatever was made.
//! - A record naming the bridge, the table and dnsmasq's pid is on disk
//!   before the first link exists and is removed only after teardown, so
//!   [`cleanup_stale`] can always finish what a crashed run left.
//! - TAPs are not persistent: a TAP disappears when the last fd on it
//!   closes, so a client that dies never leaks one.
//! - Dropping a [`LinuxNetwork`] tears it down (dnsmasq stopped, table and
//!   bridge deleted, record removed).
//! - The DHCP lease file outlives the network (orderly close, crash and
//!   [`cleanup_stale`] alike): the network's next dnsmasq reads it, so a
//!   guest keeps its address when the broker restarts.

mod cmd;
mod dnsmasq;
mod forwarding;
mod links;
mod naming;
mod nft;
pub(crate) mod plan;
mod record;
mod repair;
mod rtnl;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::tap::Tap;
use super::{BackendOptions, Error, FixedHost, Interface, InterfaceDesc, Lease, Network, NetworkState, PieceHealth};
use crate::config::{ConfigError, NetworkConfig};
use crate::xpc::{Dict, Value};

pub use dnsmasq::RESOLV_FILE_ENV;
pub use naming::{bridge_name, table_name, tap_name};

/// The state directory the broker uses unless told otherwise (the broker's
/// `BackendOptions` default and `vmnet-rs leases` agree on it).
pub const DEFAULT_STATE_DIR: &str = "/run/vmnet-rs/state";
/// Attempts to find a free TAP name before giving up.
const TAP_NAME_ATTEMPTS: u32 = 64;

impl From<cmd::Error> for Error {
    fn from(e: cmd::Error) -> Self {
        Error::ConfigureHost { source: Box::new(e) }
    }
}

impl From<dnsmasq::Error> for Error {
    fn from(e: dnsmasq::Error) -> Self {
        Error::StartDnsmasq { source: Box::new(e) }
    }
}

impl From<plan::PlanError> for Error {
    fn from(e: plan::PlanError) -> Self {
        Error::Config(ConfigError::new(e.to_string()))
    }
}

/// A live network on this host; see the module header.
pub struct LinuxNetwork {
    name: String,
    config: NetworkConfig,
    plan: plan::Plan,
    bridge: String,
    table: String,
    files: dnsmasq::Files,
    record_path: PathBuf,
    record: Arc<Mutex<record::Record>>,
    dnsmasq: Mutex<Option<dnsmasq::Supervisor>>,
    next_tap: AtomicU32,
    torn_down: AtomicBool,
    state_dir: PathBuf,
    /// Repairs of this network's pieces (watcher, dnsmasq supervisor, status).
    guard: Arc<Mutex<repair::Guard>>,
    watcher: Mutex<Option<watch::Watcher>>,
    /// Told when the watcher put the bridge back ([`BackendOptions::bridge_restored`]).
    bridge_restored: super::BridgeRestored,
    /// The named fixed hosts dnsmasq was last given (their DHCP leases are
    /// released when the name goes: `set_fixed_hosts`).
    named: Mutex<Vec<FixedHost>>,
    /// The forwarding sysctls this network turned on (given back at close).
    forwarding: Mutex<Vec<&'static str>>,
}

/// Creates network `name`: see [`LinuxNetwork::create`].
/// Whether link `name` exists in the calling thread's network namespace.
pub fn link_exists(name: &str) -> bool {
    links::link_index(name).is_some()
}

pub use rtnl::LinkDrops;

/// What link `name`'s own queues dropped ([`LinkDrops`]), `None` when the
/// link is gone or the kernel does not say.
pub fn link_drops(name: &str) -> Option<LinkDrops> {
    rtnl::link_drops(name).ok()
}

/// Ends a TAP port whose lease ended: a TAP the VM still holds is taken off
/// the bridge and set down, not deleted, so the VM's fd stays valid (QEMU
/// keeps running, without a network) and the kernel removes the TAP when
/// the VM closes it or exits. A TAP already gone is fine.
pub fn unplug_tap(name: &str) {
    if !link_exists(name) {
        return;
    }
    if links::unplug(name).is_err() && link_exists(name) {
        log::warn!("could not take TAP {name} off its bridge after its lease ended; remove it with `ip link delete {name}`");
    }
}

pub fn create_network(name: &str, config: &NetworkConfig, options: &BackendOptions) -> Result<Box<dyn Network>, Error> {
    Ok(Box::new(LinuxNetwork::create(name, config, options)?))
}

fn files_for(dir: &Path, name: &str) -> (PathBuf, dnsmasq::Files) {
    let f = |ext: &str| dir.join(naming::state_file_name(name, ext));
    (f("json"), dnsmasq::Files { leases: f("leases"), pid: f("dnsmasq.pid"), log: f("dnsmasq.log"), hosts: f("dhcp-hosts"), names: f("hosts") })
}

impl LinuxNetwork {
    /// Creates the bridge, addresses, nftables table and dnsmasq of network
    /// `name` in the calling thread's namespace. `config` is valid by its
    /// type (config.rs); only what depends on this host is checked (plan.rs).
    pub fn create(name: &str, config: &NetworkConfig, options: &BackendOptions) -> Result<LinuxNetwork, Error> {
        // 1. Finish what a crashed run left of this network (its routes would
        //    otherwise collide with the subnet), then check everything
        //    before creating anything.
        let bridge = naming::bridge_name(name);
        let table = naming::table_name(name);
        let dir = &options.state_dir;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create state directory {}", dir.display()), e))?;
        let (record_path, files) = files_for(dir, name);
        let netns = record::current_netns();
        if record_path.exists() {
            match record::read(&record_path) {
                Ok(old) if old.netns != netns => {
                    return Err(platform("create network", format!("{} records network {name:?} in another network namespace ({}); use another state directory per namespace", record_path.display(), old.netns)));
                }
                Ok(old) if old.owner_alive() => {
                    return Err(platform("create network", format!("network {name:?} already exists (created by pid {}); stop it first", old.owner_pid)));
                }
                Ok(old) => {
                    for line in remove_stale(&old, &record_path, &files) {
                        log::info!("{line}");
                    }
                }
                Err(e) => return Err(Error::io(format!("read the record of network {name:?}; remove it if it is damaged"), e)),
            }
        }
        let routes = links::routes()?;
        let subnet = match config.subnet() {
            Some(s) => s,
            None => plan::choose_subnet(&routes).ok_or_else(|| plan::PlanError {
                network: name.into(),
                message: "no free 192.168.64-254.0/24 subnet is left; set subnet explicitly".into(),
            })?,
        };
        let plan = plan::Plan::new(name, config, subnet, &routes)?;
        if let Some(ext) = &plan.external_interface {
            if links::link_index(ext).is_none() {
                return Err(plan::PlanError { network: name.into(), message: format!("externalInterface {ext:?} does not exist in this network namespace") }.into());
            }
        }
        if links::link_index(&bridge).is_some() {
            return Err(platform("create network", format!("a link named {bridge} already exists and no record says it is a left-over of network {name:?}; remove it (ip link del {bridge}) or rename the network")));
        }
        if nft::table_exists(&table) {
            return Err(platform("create network", format!("nftables table inet {table} already exists and no record says it is a left-over; remove it (nft delete table inet {table})")));
        }

        // 2. Record what is about to be made, then make it.
        let mut pieces = vec!["bridge", "address", "table"];
        if plan.forwards_out() {
            pieces.push("forwarding");
        }
        if dnsmasq::needed(&plan) {
            pieces.push("dnsmasq");
        }
        let me = std::process::id();
        let rec = record::Record {
            version: record::RECORD_VERSION,
            name: name.into(),
            bridge: bridge.clone(),
            table: table.clone(),
            netns,
            owner_pid: me,
            owner_start: record::process_start_time(me).unwrap_or(0),
            dnsmasq_pid: None,
        };
        record::write(&record_path, &rec).map_err(|e| Error::io(format!("write {}", record_path.display()), e))?;
        let net = LinuxNetwork {
            name: name.into(),
            config: config.clone(),
            plan,
            bridge,
            table,
            files,
            record_path,
            record: Arc::new(Mutex::new(rec)),
            dnsmasq: Mutex::new(None),
            next_tap: AtomicU32::new(0),
            torn_down: AtomicBool::new(false),
            state_dir: dir.clone(),
            guard: Arc::new(Mutex::new(repair::Guard::new(name, options.repair.clone(), &pieces))),
            watcher: Mutex::new(None),
            bridge_restored: options.bridge_restored.clone(),
            named: Mutex::new(Vec::new()),
            forwarding: Mutex::new(Vec::new()),
        };
        // On error `net` drops here, which tears down whatever was made.
        net.build()?;
        Ok(net)
    }

    fn build(&self) -> Result<(), Error> {
        let p = &self.plan;
        let mac = crate::config::format_mac(&naming::derived_mac(&self.bridge));
        links::create_bridge(&self.bridge, &mac, p.mtu)?;
        links::add_address(&self.bridge, &p.v4.to_string())?;
        if let Some(v6) = &p.v6 {
            links::add_address(&self.bridge, &v6.gateway_cidr())?;
        }
        links::set_up(&self.bridge)?;
        let mut sysctls = Vec::new();
        if p.forwards_out() {
            sysctls.push(forwarding::IPV4);
            if p.v6.is_some() {
                sysctls.push(forwarding::IPV6);
            }
        }
        for key in &sysctls {
            forwarding::acquire(&self.state_dir, key).map_err(|e| Error::io(format!("enable forwarding ({})", forwarding::dotted(key)), e))?;
            self.forwarding.lock().unwrap_or_else(|e| e.into_inner()).push(key);
        }
        let ruleset = nft::ruleset(p, &self.bridge, &self.table);
        nft::apply(&ruleset)?;
        if dnsmasq::needed(p) {
            // No fixed entries yet (the broker gives them once the network is up).
            if let Some(d) = dnsmasq::closed_ancestor(&self.files.hosts) {
                log::warn!(
                    "network {:?}: dnsmasq runs as nobody and cannot pass {} to read its fixed entries: VM names and kept addresses are not served; make it passable (chmod o+x {}) or use a state directory others can pass",
                    self.name,
                    d.display(),
                    d.display()
                );
            }
            dnsmasq::write_fixed(&self.files, &[], &p.domain, &[], None).map_err(|e| Error::io(format!("write {}", self.files.hosts.display()), e))?;
            let resolv = std::env::var(RESOLV_FILE_ENV).ok().filter(|s| !s.is_empty());
            let args = dnsmasq::args(p, &self.bridge, &self.files, resolv.as_deref());
            let record = self.record.clone();
            let path = self.record_path.clone();
            let on_pid = Box::new(move |pid: u32| {
                let mut r = record.lock().unwrap_or_else(|e| e.into_inner());
                r.dnsmasq_pid = Some(pid);
                if let Err(e) = record::write(&path, &r) {
                    log::warn!("could not update {}: {e}", path.display());
                }
            });
            let (guard, guard2) = (self.guard.clone(), self.guard.clone());
            let network = self.name.clone();
            let hooks = dnsmasq::Hooks {
                on_pid,
                // A dnsmasq that died is one outage of the piece; the guard
                // says whether to start it again (repairs on, no fight).
                may_restart: Box::new(move |what: &str| {
                    let who = || repair::other_manager(&format!("something keeps stopping dnsmasq of network {network}"));
                    let mut g = guard.lock().unwrap_or_else(|e| e.into_inner());
                    g.missing("dnsmasq", what, &who, std::time::Instant::now()) == repair::Action::Repair
                }),
                restarted: Box::new(move |pid| guard2.lock().unwrap_or_else(|e| e.into_inner()).repaired("dnsmasq", &format!("dnsmasq (pid {pid})"))),
            };
            let sup = dnsmasq::Supervisor::start(&self.bridge, args, self.files.clone(), hooks)?;
            *self.dnsmasq.lock().unwrap_or_else(|e| e.into_inner()) = Some(sup);
        }
        let mut addresses = vec![p.v4.to_string()];
        if let Some(v6) = &p.v6 {
            addresses.push(v6.gateway_cidr());
        }
        let needs = watch::Needs {
            network: self.name.clone(),
            bridge: self.bridge.clone(),
            table: self.table.clone(),
            addresses,
            shape: nft::shape(&ruleset),
            ruleset,
            forwarding: sysctls,
            gateway: Some(p.v4.gateway()),
            restored: self.bridge_restored.clone(),
        };
        let w = watch::Watcher::start(needs, self.guard.clone()).map_err(|e| Error::io("start the watcher thread", e))?;
        *self.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
        Ok(())
    }

    /// Repairs of this network's pieces so far.
    pub fn repairs(&self) -> u64 {
        self.guard.lock().unwrap_or_else(|e| e.into_inner()).total_repairs()
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The running dnsmasq's pid (`None` without dnsmasq or mid-restart).
    pub fn dnsmasq_pid(&self) -> Option<u32> {
        self.dnsmasq.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|s| s.pid()).filter(|p| *p != 0)
    }

    /// Opens a new TAP port on the bridge (MTU of the network, isolated if
    /// the network or `desc` asks) and returns it: as an [`Interface`] for
    /// an adaptor, or for its fd to be handed to a VM (QEMU `tap,fd=`). The
    /// port goes away when the last fd on the TAP closes.
    pub fn open_tap_port(&self, desc: &InterfaceDesc, vnet_hdr: bool) -> Result<Tap, Error> {
        if !self.is_alive() {
            return Err(platform("start interface", format!("network {:?} is gone (bridge {} no longer exists)", self.name, self.bridge)));
        }
        let mut last_err = None;
        for _ in 0..TAP_NAME_ATTEMPTS {
            let n = self.next_tap.fetch_add(1, Ordering::SeqCst);
            let name = naming::tap_name(&self.name, n);
            if links::link_index(&name).is_some() {
                continue;
            }
            let tap = match Tap::create(&name, vnet_hdr) {
                Ok(t) => t,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) || e.raw_os_error() == Some(libc::EEXIST) => {
                    last_err = Some(e);
                    continue;
                }
                Err(source) => return Err(Error::OpenTap { name, source }),
            };
            // On error the TAP drops, and with its only fd the device goes.
            rtnl::attach_port(&name, &self.bridge, self.plan.mtu, desc.isolation || self.plan.isolation)
                .map_err(|e| Error::AddPort { network: self.name.clone(), port: name.clone(), source: Box::new(e) })?;
            // Re-read the device so the reported MTU is the one just set.
            let mut tap = Tap::from_fd(tap.into_fd()).map_err(|e| Error::io(format!("reopen TAP {name}"), e))?;
            let mac = desc.mac.unwrap_or_else(|| crate::config::MacAddr::random().0);
            tap.set_peer_mac(mac);
            return Ok(tap);
        }
        Err(platform("start interface", format!("no free TAP name for network {:?} after {TAP_NAME_ATTEMPTS} tries (last error: {last_err:?})", self.name)))
    }

    /// Tears the network down now (also done on drop). Idempotent; returns
    /// the first failure, having tried every step.
    pub fn close(&self) -> Result<(), Error> {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // The watcher first, so it never puts back what is removed here.
        if let Some(mut w) = self.watcher.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.stop();
        }
        if let Some(mut s) = self.dnsmasq.lock().unwrap_or_else(|e| e.into_inner()).take() {
            s.stop();
        }
        let mut first: Option<Error> = None;
        if nft::table_exists(&self.table) {
            if let Err(e) = nft::delete_table(&self.table) {
                first.get_or_insert(e.into());
            }
        }
        if links::link_index(&self.bridge).is_some() {
            if let Err(e) = links::delete_link(&self.bridge) {
                first.get_or_insert(e.into());
            }
        }
        for key in std::mem::take(&mut *self.forwarding.lock().unwrap_or_else(|e| e.into_inner())) {
            if let Some(line) = forwarding::release(&self.state_dir, key) {
                log::info!("network {:?} closed: {line}", self.name);
            }
        }
        if first.is_none() {
            // The lease file stays: the next dnsmasq of this network reads
            // it, so guests keep their addresses across broker restarts.
            for f in [&self.files.pid, &self.files.log, &self.files.hosts, &self.files.names, &self.record_path] {
                let _ = std::fs::remove_file(f);
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn platform(op: &str, detail: String) -> Error {
    Error::Platform { op: op.into(), source: detail.into() }
}

impl Drop for LinuxNetwork {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            log::warn!("tearing down network {:?}: {e}", self.name);
        }
    }
}

impl Network for LinuxNetwork {
    fn name(&self) -> &str {
        &self.name
    }

    fn config(&self) -> &NetworkConfig {
        &self.config
    }

    fn state(&self) -> NetworkState {
        NetworkState { subnet: self.plan.v4.to_string(), ipv6_prefix: self.plan.v6.map(|p| p.cidr()), device: self.bridge.clone() }
    }

    fn serialization(&self) -> Result<Dict, Error> {
        let mut d = Dict::new();
        d.insert("backend", Value::String("linux-bridge".into()));
        d.insert("name", Value::String(self.name.clone()));
        d.insert("bridge", Value::String(self.bridge.clone()));
        d.insert("subnet", Value::String(self.plan.v4.to_string()));
        d.insert("mtu", Value::Int(i64::from(self.plan.mtu)));
        if let Some(p) = &self.plan.v6 {
            d.insert("ipv6Prefix", Value::String(p.cidr()));
        }
        Ok(d)
    }

    fn start_interface(&self, desc: &InterfaceDesc) -> Result<Box<dyn Interface>, Error> {
        if desc.offload || !super::tap::userspace_offload_wanted() {
            return Ok(Box::new(self.open_tap_port(desc, desc.offload)?));
        }
        // A relayed port without offload: the TAP speaks virtio-net headers
        // with TSO and checksum offload, the relay plain frames (tap.rs).
        let mut tap = self.open_tap_port(desc, true)?;
        let name = tap.name().to_string();
        tap.offload_in_userspace().map_err(|e| Error::io(format!("turn on the offloads of TAP {name}"), e))?;
        Ok(Box::new(tap))
    }

    fn is_alive(&self) -> bool {
        !self.torn_down.load(Ordering::SeqCst) && links::link_index(&self.bridge).is_some()
    }

    fn leases(&self) -> Result<Vec<Lease>, Error> {
        dnsmasq::read_leases(&self.files.leases).map_err(|e| Error::io(format!("read leases of network {:?}", self.name), e))
    }

    fn start_tap(&self, desc: &InterfaceDesc, vnet_hdr: bool) -> Result<Tap, Error> {
        self.open_tap_port(desc, vnet_hdr)
    }

    fn set_fixed_hosts(&self, hosts: &[FixedHost]) -> Result<(), Error> {
        if !dnsmasq::needed(&self.plan) {
            return Ok(());
        }
        let reserved: Vec<String> = self.plan.reservations.iter().map(|(m, _)| m.clone()).collect();
        dnsmasq::write_fixed(&self.files, hosts, &self.plan.domain, &reserved, self.dnsmasq_pid())
            .map_err(|e| Error::io(format!("give network {:?}'s dnsmasq its fixed entries ({})", self.name, self.files.hosts.display()), e))?;
        // A name that went (its VM left): dnsmasq would go on serving it
        // from the DHCP lease it named; that lease is released.
        let now: Vec<FixedHost> = hosts.iter().filter(|h| h.name.is_some()).cloned().collect();
        let before = std::mem::replace(&mut *self.named.lock().unwrap_or_else(|e| e.into_inner()), now.clone());
        for gone in before.iter().filter(|h| !now.iter().any(|n| n.mac == h.mac && n.name == h.name)) {
            if let Err(e) = dnsmasq::release_lease(&self.bridge, gone) {
                log::warn!("network {:?}: {e}; the name {} may be served until its DHCP lease expires", self.name, gone.name.as_deref().unwrap_or("-"));
            }
        }
        Ok(())
    }

    fn release_claims(&self, mac: crate::config::MacAddr) -> Result<usize, Error> {
        if !dnsmasq::needed(&self.plan) {
            return Ok(0);
        }
        let text = match std::fs::read_to_string(&self.files.leases) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(format!("read leases of network {:?}", self.name), e)),
        };
        let claims = dnsmasq::claims_of(&text, mac);
        for c in &claims {
            dnsmasq::release(&self.bridge, c.address, mac, c.client_id.as_deref())
                .map_err(|e| Error::Platform { op: format!("end the DHCP lease of {mac} on network {:?}", self.name), source: e.into() })?;
        }
        Ok(claims.len())
    }

    fn pieces(&self) -> Vec<PieceHealth> {
        self.guard.lock().unwrap_or_else(|e| e.into_inner()).health(std::time::Instant::now())
    }
}

/// The leases of network `name` from its lease file in `options.state_dir`
/// (for a reader that does not own the network, e.g. `vmnet-rs leases`).
/// The routes of this network namespace's main table (IPv4 and IPv6).
pub(crate) fn host_routes() -> Result<Vec<plan::Route>, Error> {
    Ok(links::routes()?)
}

/// The route of this network namespace that the subnet or IPv6 prefix of
/// `config` would overlap, if any (as `10.0.0.0/16 dev eth9`): the broker's
/// policy checks a caller's network before anything is made.
pub fn route_conflict(config: &NetworkConfig) -> Result<Option<String>, Error> {
    let routes = links::routes()?;
    Ok(plan::route_conflict(config, &routes))
}

pub fn read_leases(name: &str, options: &BackendOptions) -> Result<Vec<Lease>, Error> {
    let (record_path, files) = files_for(&options.state_dir, name);
    match std::fs::metadata(&record_path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(platform(
                "read leases",
                format!(
                    "network {name:?} has not been created yet (the broker creates it when a VM first asks for it; nothing is recorded in {}, so if its broker runs with another --state-dir, pass that)",
                    options.state_dir.display()
                ),
            ));
        }
        Err(e) => {
            return Err(platform(
                "read leases",
                format!("cannot look at {}: {e}; run as root, or pass a --state-dir you can read", record_path.display()),
            ));
        }
    }
    dnsmasq::read_leases(&files.leases).map_err(|e| Error::io(format!("read {}", files.leases.display()), e))
}

/// Removes what the records in `options.state_dir` name, for networks whose
/// creating process is gone and that live in the calling thread's namespace.
pub fn cleanup_stale(options: &BackendOptions) -> Result<Vec<String>, Error> {
    let dir = &options.state_dir;
    let paths = record::list(dir).map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
    let netns = record::current_netns();
    let mut done = Vec::new();
    for path in paths {
        let rec = match record::read(&path) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("skipping unreadable record: {e}");
                continue;
            }
        };
        if rec.netns != netns || rec.owner_alive() {
            continue;
        }
        let (_, files) = files_for(dir, &rec.name);
        done.extend(remove_stale(&rec, &path, &files));
    }
    // Forwarding an earlier broker turned on and could not give back.
    done.extend(forwarding::give_back_stale(dir));
    Ok(done)
}

/// Removes one crashed network's leftovers; a line per thing removed.
fn remove_stale(rec: &record::Record, path: &Path, files: &dnsmasq::Files) -> Vec<String> {
    let mut done = Vec::new();
    let mut failed = false;
    let name = &rec.name;
    let pid_file = std::fs::read_to_string(&files.pid).ok().and_then(|s| s.trim().parse::<u32>().ok());
    for pid in rec.dnsmasq_pid.into_iter().chain(pid_file) {
        if record::is_our_dnsmasq(pid, &rec.bridge) {
            // SAFETY: kill with a pid checked to be dnsmasq serving our bridge.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while record::is_our_dnsmasq(pid, &rec.bridge) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            done.push(format!("stopped dnsmasq (pid {pid}) of network {name:?}"));
        }
    }
    if nft::table_exists(&rec.table) {
        match nft::delete_table(&rec.table) {
            Ok(()) => done.push(format!("deleted nftables table inet {} of network {name:?}", rec.table)),
            Err(e) => {
                failed = true;
                log::warn!("{e}");
            }
        }
    }
    if links::link_index(&rec.bridge).is_some() && links::is_bridge(&rec.bridge) {
        match links::delete_link(&rec.bridge) {
            Ok(()) => done.push(format!("deleted bridge {} of network {name:?}", rec.bridge)),
            Err(e) => {
                failed = true;
                log::warn!("{e}");
            }
        }
    }
    if !failed {
        // The lease file stays, as on an orderly close (see LinuxNetwork::close).
        for f in [&files.pid, &files.log] {
            let _ = std::fs::remove_file(f);
        }
        if std::fs::remove_file(path).is_ok() {
            done.push(format!("removed record {}", path.display()));
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_record(dir: &Path, name: &str, netns: String, owner_pid: u32, owner_start: u64) -> PathBuf {
        let rec = record::Record {
            version: record::RECORD_VERSION,
            name: name.into(),
            bridge: naming::bridge_name(name),
            table: naming::table_name(name),
            netns,
            owner_pid,
            owner_start,
            dnsmasq_pid: None,
        };
        let (path, _) = files_for(dir, name);
        record::write(&path, &rec).unwrap();
        path
    }

    /// Records of live owners and of other namespaces are left alone (and
    /// nothing on the host is queried for them).
    #[test]
    fn cleanup_skips_live_owners_and_other_namespaces() {
        let dir = std::env::temp_dir().join(format!("vmnet-rs-cleanup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let me = std::process::id();
        let live = write_record(&dir, "live", record::current_netns(), me, record::process_start_time(me).unwrap());
        let elsewhere = write_record(&dir, "elsewhere", "net:[1]".into(), 0, 0);
        let done = cleanup_stale(&BackendOptions { state_dir: dir.clone(), ..Default::default() }).unwrap();
        assert!(done.is_empty(), "{done:?}");
        assert!(live.exists() && elsewhere.exists());
        std::fs::remove_dir_all(&dir).unwrap();
        // A state directory that does not exist yet holds nothing stale.
        assert!(cleanup_stale(&BackendOptions { state_dir: dir, ..Default::default() }).unwrap().is_empty());
    }

    #[test]
    fn leases_of_an_unknown_network_say_where_they_looked() {
        let dir = std::env::temp_dir().join("vmnet-rs-no-such-dir");
        let e = read_leases("lab", &BackendOptions { state_dir: dir, ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("\"lab\"") && e.contains("vmnet-rs-no-such-dir"), "{e}");
    }

    /// Root only (ignored unless asked for; scripts/test runs it): in a fresh network namespace of this
    /// test's thread, a shared network answers an ARP request written to one
    /// of its ports through the `Interface` trait, and teardown on drop
    /// leaves no bridge or record.
    #[test]
    #[ignore = "needs root for a network namespace; scripts/test runs it as root with --ignored"]
    fn interface_port_reaches_gateway_in_private_namespace() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "needs root for a network namespace: run as root");
        // SAFETY: unshare(CLONE_NEWNET) moves only this thread into a new,
        // empty network namespace; the host's network is never touched.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare: {}", std::io::Error::last_os_error());
        cmd::run(&["ip", "link", "set", "lo", "up"], None).unwrap();
        let dir = std::env::temp_dir().join(format!("vmnet-rs-iface-{}", std::process::id()));
        let config = NetworkConfig::test(serde_json::json!({"subnet": "10.123.0.1/24"}));
        let net = create_network("rustport", &config, &BackendOptions { state_dir: dir.clone(), ..Default::default() }).unwrap();
        assert!(net.is_alive());
        assert_eq!(net.state().subnet, "10.123.0.1/24");
        let mac = [0x52, 0x54, 0, 0x12, 0x30, 0x01];
        let mut port = net.start_interface(&InterfaceDesc { mac: Some(mac), ..Default::default() }).unwrap();
        assert_eq!(port.info().mac, mac);
        // An ARP request for the gateway from 10.123.0.50.
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&mac);
        frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        frame.extend_from_slice(&mac);
        frame.extend_from_slice(&[10, 123, 0, 50, 0, 0, 0, 0, 0, 0, 10, 123, 0, 1]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut buf = vec![0u8; port.info().max_frame_bytes];
        let mut replied = false;
        let mut next_send = std::time::Instant::now();
        while !replied && std::time::Instant::now() < deadline {
            // Like any ARP client, ask again each second (a port that has
            // only just come up may miss the first request).
            if std::time::Instant::now() >= next_send {
                assert_eq!(port.write_frames(&[&frame]).unwrap(), 1);
                next_send += std::time::Duration::from_secs(1);
            }
            let mut lens = [0usize; 1];
            let n = port.read_frames(&mut [&mut buf[..]], &mut lens).unwrap();
            if n == 0 {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
            let f = &buf[..lens[0]];
            // An ARP reply (op 2) from the gateway, to our MAC.
            replied = f.len() >= 42 && f[..6] == mac && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[28..32] == [10, 123, 0, 1];
        }
        assert!(replied, "no ARP reply from the gateway within 20 s");
        drop(port);
        let bridge = net.state().device;
        drop(net);
        assert!(links::link_index(&bridge).is_none(), "bridge outlived its network");
        assert!(record::list(&dir).unwrap().is_empty(), "record outlived its network");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
