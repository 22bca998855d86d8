//! The broker: request handling, the network cache, leases, monitoring and
//! idle exit (protocol in docs/protocol.md).
//!
//! [`Core`] is the transport-independent part: it implements
//! [`crate::xpc::Handler`], so the Unix listener (Linux) or the XPC listener
//! (macOS) calls it from their own threads. All state sits behind one lock
//! ([`state::State`]), which serialises everything that touches networks.
//! One monitor thread (`vmnet-rs-monitor`) wakes every `monitor_interval`
//! to release leases whose VM side closed, networks that disappeared, and
//! networks idle past the timeout. When nothing is left for the idle timeout
//! it stops the broker, but only a broker that exits when idle
//! ([`Core::exits_when_idle`]: started on demand, or told to by
//! [`BrokerOptions::exit_when_idle`]). Relays run on their own threads
//! inside adaptors.
//!
//! [`auth`] decides who may talk to the broker; [`policy`] who may use and
//! define which network and how many ports a user may hold (every request
//! path asks it through `Core::admit` and `Core::admit_port`).
//!
//! Invariant: the broker answers every request, even a malformed or
//! unauthorised one, and keeps serving afterwards.

pub mod auth;
pub mod endpoints;
pub mod launch;
pub mod netconfig;
pub mod policy;
mod names;
pub mod protocol;
pub mod records;
mod requests;
pub mod resolver;
pub mod service;
pub mod state;
#[cfg(target_os = "linux")]
pub mod testing;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{BrokerSettings, NetworkConfig};
use crate::vmnet::{BackendOptions, Network};

pub use protocol::{code, Failure, PROTOCOL_VERSION};

/// Which networks the broker makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The platform's (vmnet on macOS; bridge + TAP + nftables + dnsmasq on Linux).
    Platform,
    /// The in-process test hub ([`testing::HubNetwork`]): no privileges needed.
    Hub,
}

impl Backend {
    pub fn parse(name: &str) -> Option<Backend> {
        match name {
            "platform" | "auto" => Some(Backend::Platform),
            "hub" => Some(Backend::Hub),
            _ => None,
        }
    }
}

/// Everything a broker is started with.
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    pub settings: BrokerSettings,
    /// The networks it knows by name (config file, else the built-ins).
    pub networks: BTreeMap<String, NetworkConfig>,
    /// The file those came from, named in refusals; `None`: the built-ins.
    pub config_source: Option<String>,
    pub backend: Backend,
    pub backend_options: BackendOptions,
    /// How often the monitor looks at leases and networks.
    pub monitor_interval: Duration,
    /// macOS: a code-signing requirement every caller must satisfy.
    pub code_signing_requirement: Option<String>,
    /// macOS: Lima's rule, before 26.2 serialization requests only from
    /// callers with the broker's own CDHash.
    pub lima_serialization_rule: bool,
    /// Where the per-network endpoint sockets go (docs/endpoints.md);
    /// `None`: no endpoints. `vmnet-rs broker` sets it unless told
    /// `--no-endpoints` (see [`endpoints::default_dir`]).
    pub endpoint_dir: Option<PathBuf>,
    /// Where the address records live (`broker::launch::data_dir`); `None`:
    /// the state directory.
    pub data_dir: Option<PathBuf>,
    /// Why the configuration file could not be used now (the broker then
    /// serves the last good one); reported as `config_error` by `status`.
    pub config_error: Option<String>,
    /// Exit by itself after the idle timeout with nothing in use, even when
    /// started by hand. Set when the idle timeout was given on the command
    /// line (`--idle-timeout`). A broker started on demand (systemd socket
    /// activation, launchd) exits when idle regardless; one started by hand
    /// without it runs until stopped. Idle networks are torn down after the
    /// idle timeout either way.
    pub exit_when_idle: bool,
}

impl BrokerOptions {
    /// Defaults: root and group `vmnet-rs` allowed, 120 s idle timeout (as
    /// nirs/vmnet-broker), the built-in networks, the platform backend.
    pub fn new() -> BrokerOptions {
        BrokerOptions {
            settings: BrokerSettings::default(),
            networks: netconfig::builtin_networks(),
            config_source: None,
            backend: Backend::Platform,
            backend_options: BackendOptions { state_dir: PathBuf::from(launch::DEFAULT_STATE_DIR), ..Default::default() },
            monitor_interval: Duration::from_secs(1),
            code_signing_requirement: None,
            lima_serialization_rule: false,
            endpoint_dir: None,
            data_dir: None,
            config_error: None,
            exit_when_idle: false,
        }
    }
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// How endpoint files are made (docs/endpoints.md). Linux: directory 0755;
/// sockets 0660 with the first allowed group that exists when every
/// allowed user is root or the broker's own user, else 0666 (each peer is
/// still checked by its credentials). macOS: the user's own 0700 folder,
/// sockets 0600.
pub fn endpoint_access(settings: &BrokerSettings) -> endpoints::Access {
    #[cfg(target_os = "macos")]
    {
        let _ = settings;
        endpoints::Access { dir_mode: 0o700, file_mode: 0o600, group: None }
    }
    #[cfg(not(target_os = "macos"))]
    {
        let group = settings.allowed_groups.iter().find_map(|g| auth::group_id(g));
        let users_only_owner = settings.allowed_users.iter().all(|u| auth::is_root_or_self(u));
        let file_mode = match (users_only_owner, group) {
            (true, Some(_)) => 0o660,
            (true, None) => 0o600,
            (false, _) => 0o666,
        };
        endpoints::Access { dir_mode: 0o755, file_mode, group: if file_mode == 0o660 { group } else { None } }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("broker transport: {0}")]
    Transport(#[from] crate::xpc::Error),
    /// The per-network endpoint sockets could not be opened.
    #[error("start the broker: open the endpoint sockets: {0}")]
    StartEndpoints(#[source] endpoints::Error),
    /// The callers' code-signing requirement cannot be used (macOS); the
    /// text says why (there is no lower error).
    #[error("start the broker: code-signing requirement: {0}")]
    Requirement(String),
    /// Configured networks whose subnets collide with the host's routes
    /// (Linux; one line per network, naming it and the route).
    #[error("start the broker: {0}")]
    SubnetCollision(String),
    /// The monitor thread could not be started.
    #[error("start the broker: start the monitor thread: {0}")]
    StartMonitor(#[source] std::io::Error),
}

#[derive(Default)]
struct Lifecycle {
    /// Why the broker is stopping (set once).
    exit: Option<String>,
    /// The monitor has stopped the transport and released everything.
    finished: bool,
}

/// The transport-independent broker.
pub struct Core {
    /// Itself, for a thread that takes the state lock later: the service
    /// port of an `addresses: broker` network reads the address records.
    me: std::sync::Weak<Core>,
    options: BrokerOptions,
    state: Mutex<state::State>,
    lifecycle: Mutex<Lifecycle>,
    changed: Condvar,
    started: Instant,
    endpoint: Mutex<String>,
    /// The per-network endpoint sockets, once started.
    endpoints: Mutex<Option<endpoints::Endpoints>>,
    /// Network -> kind -> path of the endpoints served (for status).
    endpoint_paths: Mutex<BTreeMap<String, BTreeMap<crate::config::EndpointKind, PathBuf>>>,
    /// Network -> its datagram endpoint's receive queue (for status).
    endpoint_queues: Mutex<BTreeMap<String, endpoints::DatagramQueue>>,
    /// An endpoint socket was bound here (not handed over by a service
    /// manager): the broker then never exits when idle.
    endpoints_bound_here: std::sync::atomic::AtomicBool,
    /// Started by systemd socket activation or launchd (set by [`Core::prepare`]).
    on_demand: AtomicBool,
}

impl Core {
    pub fn new(options: BrokerOptions) -> Arc<Core> {
        let mut state = state::State::new();
        // The platform's networks keep their records in the data directory
        // (moved there from the state directory, where they once were); the
        // test hub's live in memory.
        let state_dir = options.backend_options.state_dir.as_path();
        let data_dir = options.data_dir.as_deref().unwrap_or(state_dir);
        if options.backend == Backend::Platform {
            state.records = records::Records::new(Some(data_dir), Some(state_dir));
        }
        Arc::new_cyclic(|me| Core {
            me: me.clone(),
            options,
            state: Mutex::new(state),
            lifecycle: Mutex::new(Lifecycle::default()),
            changed: Condvar::new(),
            started: Instant::now(),
            endpoint: Mutex::new(String::new()),
            endpoints: Mutex::new(None),
            endpoint_paths: Mutex::new(BTreeMap::new()),
            endpoint_queues: Mutex::new(BTreeMap::new()),
            endpoints_bound_here: std::sync::atomic::AtomicBool::new(false),
            on_demand: AtomicBool::new(false),
        })
    }

    pub fn options(&self) -> &BrokerOptions {
        &self.options
    }

    fn lock_state(&self) -> MutexGuard<'_, state::State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_lifecycle(&self) -> MutexGuard<'_, Lifecycle> {
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn idle_timeout(&self) -> Option<Duration> {
        match self.options.settings.idle_timeout {
            0 => None,
            s => Some(Duration::from_secs(s)),
        }
    }

    /// The idle time after which the broker exits by itself, or None when it
    /// runs until stopped: only a broker started on demand or given
    /// [`BrokerOptions::exit_when_idle`] exits, never with idle timeout 0,
    /// and never one that bound endpoint sockets itself (its paths would
    /// stop answering).
    pub fn exits_when_idle(&self) -> Option<Duration> {
        if self.endpoints_bound_here.load(Ordering::SeqCst) {
            return None;
        }
        if self.options.exit_when_idle || self.on_demand.load(Ordering::Relaxed) {
            self.idle_timeout()
        } else {
            None
        }
    }

    /// Whether systemd or launchd started this broker on demand.
    pub fn started_on_demand(&self) -> bool {
        self.on_demand.load(Ordering::Relaxed)
    }

    /// The line a broker prints to stderr when it starts (`vmnet-rs: broker
    /// pid ...`): its pid, where it listens,
    /// the networks it serves, when idle networks go, and whether and when
    /// it exits by itself. The `vmnet-rs broker` command and the native
    /// executable both print it.
    pub fn start_line(&self) -> String {
        let endpoint = self.endpoint.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let how = if self.started_on_demand() { " (started on demand)" } else { "" };
        let networks: Vec<String> = self
            .options
            .networks
            .iter()
            .map(|(name, c)| {
                let mode = if c.mode() == crate::config::Mode::Shared { "shared" } else { "host" };
                format!("{name} ({mode}, {})", c.subnet().map_or_else(|| "subnet chosen at creation".to_string(), |s| s.to_string()))
            })
            .collect();
        let networks = if networks.is_empty() { "none configured".to_owned() } else { networks.join(", ") };
        let idle = match self.idle_timeout() {
            Some(t) => format!("idle networks are torn down after {}s", t.as_secs()),
            None => "networks stay until the broker stops (idle timeout 0)".to_owned(),
        };
        let exit = match self.exits_when_idle() {
            Some(t) => format!("exits by itself after {}s with no network, lease or connection", t.as_secs()),
            None => "runs until stopped (Ctrl-C or SIGTERM)".to_owned(),
        };
        format!("vmnet-rs: broker pid {} listening on {endpoint}{how}; networks: {networks}, created on first use; {idle}; {exit}", std::process::id())
    }

    /// Asks the broker to stop (first reason wins).
    pub fn request_exit(&self, reason: &str) {
        let mut l = self.lock_lifecycle();
        if l.exit.is_none() {
            log::info!("broker stopping: {reason}");
            l.exit = Some(reason.to_owned());
        }
        self.changed.notify_all();
    }

    pub fn exit_reason(&self) -> Option<String> {
        self.lock_lifecycle().exit.clone()
    }

    /// Records where the broker serves and how it was started, and removes
    /// what a crashed run left.
    fn prepare(&self, endpoint: &str, on_demand: bool) {
        *self.endpoint.lock().unwrap_or_else(|e| e.into_inner()) = endpoint.to_owned();
        self.on_demand.store(on_demand, Ordering::Relaxed);
        if self.options.backend == Backend::Platform {
            match crate::vmnet::cleanup_stale(&self.options.backend_options) {
                Ok(lines) => lines.iter().for_each(|l| log::info!("cleaned up after an earlier run: {l}")),
                Err(e) => log::warn!("could not clean up after an earlier run: {e}"),
            }
        }
    }

    /// Refuses to start when a configured network's subnet or IPv6 prefix
    /// overlaps a route of the host (Linux; after what a crashed run left
    /// was removed): VMs on it could not reach what the route leads to, nor
    /// it them. Names each network and route, and the fix.
    #[cfg(target_os = "linux")]
    fn check_subnets(&self) -> Result<(), Error> {
        if self.options.backend != Backend::Platform {
            return Ok(());
        }
        let routes = match crate::vmnet::linux::host_routes() {
            Ok(r) => r,
            Err(e) => {
                log::warn!("could not read the host's routes to check the networks' subnets: {e}");
                return Ok(());
            }
        };
        let source = self.options.config_source.as_deref().unwrap_or("the built-in networks (write a configuration file)");
        let lines = subnet_collisions(&self.options.networks, &routes, source);
        if lines.is_empty() {
            Ok(())
        } else {
            Err(Error::SubnetCollision(lines.join("; ")))
        }
    }

    fn create_network(&self, name: &str, config: &NetworkConfig) -> Result<Box<dyn Network>, crate::vmnet::Error> {
        match self.options.backend {
            Backend::Platform => {
                // The broker's `repair` setting says what the backend puts back.
                #[allow(unused_mut)]
                let mut options = crate::vmnet::BackendOptions { repair: self.options.settings.repair.clone(), ..self.options.backend_options.clone() };
                // A per-link resolver registration goes with the old bridge:
                // it is made again on a new bridge and on one put back.
                #[cfg(target_os = "linux")]
                let data_dir = self.options.data_dir.clone().unwrap_or_else(|| self.options.backend_options.state_dir.clone());
                #[cfg(target_os = "linux")]
                {
                    let (dir, network, domain) = (data_dir.clone(), name.to_owned(), config.dns_domain(name));
                    options.bridge_restored = crate::vmnet::BridgeRestored::new(move |bridge, gateway| resolver::reapply(&dir, &network, bridge, gateway, &domain));
                }
                let network = crate::vmnet::create_network(name, config, &options)?;
                #[cfg(target_os = "linux")]
                {
                    let s = network.state();
                    resolver::reapply(&data_dir, name, &s.device, s.ipv4_subnet().map(|n| n.gateway()), &config.dns_domain(name));
                }
                Ok(network)
            }
            #[cfg(target_os = "linux")]
            Backend::Hub => Ok(Box::new(testing::HubNetwork::create(name, config)?)),
            #[cfg(not(target_os = "linux"))]
            Backend::Hub => Err(crate::vmnet::Error::Platform {
                op: format!("create network {name:?}"),
                source: "the test hub backend exists only on Linux".into(),
            }),
        }
    }

    /// Opens the endpoints of every configured network that has any, under
    /// `options.endpoint_dir` (nothing when it is `None`).
    fn start_endpoints(self: &Arc<Self>) -> Result<(), Error> {
        let Some(dir) = self.options.endpoint_dir.clone() else { return Ok(()) };
        let wanted: BTreeMap<String, Vec<crate::config::EndpointKind>> = self
            .options
            .networks
            .iter()
            .filter(|(_, c)| !c.endpoints().is_empty())
            .map(|(n, c)| (n.clone(), c.endpoints().to_vec()))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let access = endpoint_access(&self.options.settings);
        let e = endpoints::Endpoints::start(self, &dir, &wanted, &access).map_err(Error::StartEndpoints)?;
        *self.endpoint_paths.lock().unwrap_or_else(|e| e.into_inner()) = e.paths().clone();
        *self.endpoint_queues.lock().unwrap_or_else(|e| e.into_inner()) = e.queues().clone();
        self.endpoints_bound_here.store(e.bound_here(), std::sync::atomic::Ordering::SeqCst);
        *self.endpoints.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        Ok(())
    }

    fn stop_endpoints(&self) {
        let taken = self.endpoints.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut e) = taken {
            e.stop();
        }
    }

    /// Network -> kind -> path of the endpoint sockets served.
    pub fn endpoint_paths(&self) -> BTreeMap<String, BTreeMap<crate::config::EndpointKind, PathBuf>> {
        self.endpoint_paths.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Network -> its datagram endpoint's receive queue.
    pub fn endpoint_queues(&self) -> BTreeMap<String, endpoints::DatagramQueue> {
        self.endpoint_queues.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One monitor pass; returns true when the broker should exit idle.
    fn monitor_pass(&self, connections: usize) -> bool {
        let mut st = self.lock_state();
        st.tick(self.idle_timeout());
        match self.exits_when_idle() {
            Some(t) => st.networks.is_empty() && st.leases.is_empty() && connections == 0 && st.last_activity.elapsed() >= t,
            None => false,
        }
    }

    /// The monitor thread's loop; `connections` counts open connections;
    /// `stop_transport` runs once when the broker stops.
    fn run_monitor(&self, connections: &dyn Fn() -> usize, stop_transport: &dyn Fn()) {
        loop {
            {
                let l = self.lock_lifecycle();
                let (l, _) = self.changed.wait_timeout_while(l, self.options.monitor_interval, |l| l.exit.is_none()).unwrap_or_else(|e| e.into_inner());
                if l.exit.is_some() {
                    break;
                }
            }
            if self.monitor_pass(connections()) {
                let secs = self.options.settings.idle_timeout;
                self.request_exit(&format!("idle: no network, lease or connection for {secs}s"));
            }
        }
        let why = self.exit_reason().unwrap_or_default();
        self.lock_state().announce_stop(&why);
        stop_transport();
        self.stop_endpoints();
        self.lock_state().clear(&why);
        self.lock_lifecycle().finished = true;
        self.changed.notify_all();
    }

    /// Waits until the broker has stopped (or `timeout` passed); returns the
    /// reason once stopped.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<String> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut l = self.lock_lifecycle();
        while !l.finished {
            match deadline {
                None => l = self.changed.wait(l).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    l = self.changed.wait_timeout(l, d - now).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
        }
        l.exit.clone()
    }
}

/// What a broker that has not started yet would serve (the start line proper,
/// [`Core::start_line`], needs the running broker).
pub fn start_line(endpoint: &str) -> String {
    format!("vmnet-rs: broker pid {} (not started) for {endpoint}", std::process::id())
}

/// A running broker: a transport, the [`Core`] and its monitor thread.
/// One line per network of `networks` whose subnet or IPv6 prefix overlaps
/// one of `routes`: `network NAME: subnet S overlaps host route R; ...`.
#[cfg(target_os = "linux")]
pub(crate) fn subnet_collisions(networks: &BTreeMap<String, NetworkConfig>, routes: &[crate::vmnet::linux::plan::Route], source: &str) -> Vec<String> {
    networks
        .iter()
        .filter_map(|(name, c)| {
            let route = crate::vmnet::linux::plan::route_conflict(c, routes)?;
            let what = match (c.subnet(), c.ipv6_prefix()) {
                (Some(s), Some(p)) => format!("subnet {s} or ipv6Prefix {p}"),
                (Some(s), None) => format!("subnet {s}"),
                (None, Some(p)) => format!("ipv6Prefix {p}"),
                (None, None) => "its subnet".to_string(),
            };
            Some(format!("network {name}: {what} overlaps host route {route}; choose another subnet for network {name} in {source}, or remove the route"))
        })
        .collect()
}

pub struct Broker {
    core: Arc<Core>,
    monitor: Mutex<Option<JoinHandle<()>>>,
    endpoint: String,
}

impl Broker {
    /// Serves `socket` (bound, or inherited from systemd) on Linux.
    #[cfg(target_os = "linux")]
    pub fn start_unix(options: BrokerOptions, socket: crate::xpc::unix::Socket) -> Result<Broker, Error> {
        let core = Core::new(options);
        let endpoint = socket.path().display().to_string();
        let activated = socket.activated();
        core.prepare(&endpoint, activated);
        core.check_subnets()?;
        // Endpoints first, so the first status request already lists them.
        core.start_endpoints()?;
        let listener = match crate::xpc::unix::Listener::start(socket, core.clone()) {
            Ok(l) => Arc::new(l),
            Err(e) => {
                core.stop_endpoints();
                return Err(e.into());
            }
        };
        log::debug!("broker listening on {endpoint}{}", if activated { " (socket activation)" } else { "" });
        let l2 = Arc::clone(&listener);
        Broker::with_monitor(core, endpoint, Box::new(move || l2.connection_count()), Box::new(move || listener.stop()))
    }

    /// Serves the Mach service `service` on macOS (launchd must advertise it
    /// for this job: `MachServices` in the LaunchAgent's plist). Also built
    /// in the model build (`apple_api`, docs/macos.md "The model").
    #[cfg(apple_api)]
    pub fn start_mach(options: BrokerOptions, service: &str) -> Result<Broker, Error> {
        // The broker decides who may call; the listener applies it.
        let os = crate::xpc::apple::os_version();
        let policy = auth::TransportPolicy::new(options.settings.clone(), options.lima_serialization_rule, os);
        let requirement = auth::listener_requirement(options.code_signing_requirement.as_deref(), None)
            .map_err(Error::Requirement)?;
        let serve = crate::xpc::apple::ServeOptions { policy: Arc::new(policy), requirement };
        let core = Core::new(options);
        // launchd starts the job on the first lookup of its Mach service.
        core.prepare(service, true);
        // Endpoints first, so the first status request already lists them.
        core.start_endpoints()?;
        let listener = match crate::xpc::apple::serve(service, core.clone(), serve) {
            Ok(l) => Arc::new(l),
            Err(e) => {
                core.stop_endpoints();
                return Err(e.into());
            }
        };
        log::debug!("broker serving the Mach service {service}");
        let l2 = Arc::clone(&listener);
        Broker::with_monitor(core, service.to_owned(), Box::new(move || l2.connection_count()), Box::new(move || listener.stop()))
    }

    fn with_monitor(
        core: Arc<Core>,
        endpoint: String,
        connections: Box<dyn Fn() -> usize + Send>,
        stop_transport: Box<dyn Fn() + Send>,
    ) -> Result<Broker, Error> {
        let monitor = {
            let core = Arc::clone(&core);
            std::thread::Builder::new()
                .name("vmnet-rs-monitor".into())
                .spawn(move || core.run_monitor(&*connections, &*stop_transport))
                .map_err(Error::StartMonitor)?
        };
        Ok(Broker { core, monitor: Mutex::new(Some(monitor)), endpoint })
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The socket path (Linux) or Mach service (macOS) served.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// See [`Core::wait`].
    pub fn wait(&self, timeout: Option<Duration>) -> Option<String> {
        self.core.wait(timeout)
    }

    /// See [`Core::start_line`].
    pub fn start_line(&self) -> String {
        self.core.start_line()
    }

    /// Stops serving, releases every lease and network, joins the threads.
    /// Idempotent.
    pub fn stop(&self) {
        self.stop_because("stopped by its owner");
    }

    /// [`Broker::stop`] with the reason logged (and given to every VM that
    /// loses its network), e.g. "interrupted (SIGTERM)". The first reason wins.
    pub fn stop_because(&self, reason: &str) {
        self.core.request_exit(reason);
        if let Some(t) = self.monitor.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::xpc::unix::{Client, Socket};
    use crate::xpc::{Dict, Value};

    fn options(idle_timeout: u64) -> BrokerOptions {
        let mut o = BrokerOptions::new();
        o.backend = Backend::Hub;
        o.settings.idle_timeout = idle_timeout;
        o.exit_when_idle = true;
        // SAFETY: getuid cannot fail.
        o.settings.allowed_users = vec![unsafe { libc::getuid() }.to_string()];
        o.monitor_interval = Duration::from_millis(50);
        o
    }

    fn start(name: &str, o: BrokerOptions) -> (Broker, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("vmnet-rs-broker-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("broker.sock");
        let b = Broker::start_unix(o, Socket::bind(&path).unwrap()).unwrap();
        (b, path)
    }

    fn cmd(command: &str) -> Dict {
        Dict::new().with("command", Value::String(command.into()))
    }

    fn wait_for(what: &str, f: impl FnMut() -> bool) {
        crate::test_support::wait_until(what, Duration::from_secs(20), f)
    }

    #[test]
    fn acquire_lima_and_leases_follow_the_connection() {
        let (b, path) = start("leases", options(0));
        let mut c = Client::connect(&path).unwrap();
        let r = c.request(&cmd("acquire").with("network_name", Value::String("shared".into()))).unwrap();
        assert_eq!(r.get_dict("network").unwrap().get_str("backend"), Some("hub"), "{r:?}");
        // Lima style: serialization and the creator's configuration.
        let mut lima = Client::connect(&path).unwrap();
        let r = lima
            .request(&Dict::new().with("Network", Value::String("shared".into())).with("Configuration", Value::Data(br#"{"mtu":9000}"#.to_vec())))
            .unwrap();
        assert!(r.get_dict("Serialization").is_some(), "{r:?}");
        assert!(r.get_str("ConfigurationDifference").unwrap().contains("mtu: 1500 != 9000"), "{r:?}");
        let creator: serde_json::Value = serde_json::from_slice(r.get_data("Configuration").unwrap()).unwrap();
        assert_eq!(creator["mtu"], 1500);
        let status = c.request(&cmd("status")).unwrap();
        assert_eq!(status.get_dict("networks").unwrap().get_dict("shared").unwrap().get_int("leases"), Some(2));
        drop(lima);
        drop(c);
        let mut probe = Client::connect(&path).unwrap();
        wait_for("leases to be released", || probe.request(&cmd("status")).unwrap().get_dict("leases").unwrap().is_empty());
        // idle_timeout 0: the idle network stays.
        let status = probe.request(&cmd("status")).unwrap();
        assert!(status.get_dict("networks").unwrap().get_dict("shared").unwrap().get_int("idle_s").is_some());
        b.stop();
    }

    #[test]
    fn errors_are_documented_and_serving_goes_on() {
        let (b, path) = start("errors", options(0));
        let mut c = Client::connect(&path).unwrap();
        let acquire = |n: &str| cmd("acquire").with("network_name", Value::String(n.into()));
        let r = c.request(&acquire("nope")).unwrap();
        assert_eq!(r.get_int("error"), Some(code::NOT_FOUND));
        assert!(r.get_str("message").unwrap().contains("unknown network \"nope\""));
        let r = c.request(&Dict::new().with("Network", Value::String("nope".into()))).unwrap();
        assert!(r.get_str("Error").unwrap().contains("unknown network"), "{r:?}");
        assert_eq!(r.len(), 1);
        let r = c.request(&cmd("open").with("network", Value::String("shared".into())).with("fd_type", Value::String("carrier-pigeon".into()))).unwrap();
        assert_eq!(r.get_int("error"), Some(code::INVALID_REQUEST));
        assert!(r.get_str("message").unwrap().contains("unknown fd_type \"carrier-pigeon\""));
        let r = c.request(&Dict::new().with("Network", Value::String("shared".into())).with("FdType", Value::String("x".into()))).unwrap();
        assert!(r.get_str("Error").unwrap().contains("unknown FdType"));
        let r = c.request(&cmd("acquire").with("network_name", Value::Int(5))).unwrap();
        assert_eq!(r.get_str("message"), Some("key \"network_name\" must be a string, got int64"));
        let r = c.request(&Dict::new().with("command", Value::Bool(true))).unwrap();
        assert_eq!(r.get_int("error"), Some(code::INVALID_REQUEST));
        let r = c.request(&cmd("frobnicate")).unwrap();
        assert!(r.get_str("message").unwrap().contains("unknown command"));
        let r = c.request(&Dict::new()).unwrap();
        assert!(r.get_str("Error").is_some() && r.get_int("error") == Some(code::INVALID_REQUEST));
        // Config mismatch: live network vs request, and broker config vs request.
        assert!(c.request(&acquire("shared")).unwrap().get_dict("network").is_some());
        let mismatch = acquire("shared").with("config", Value::Data(br#"{"mode":"shared","mtu":9000}"#.to_vec()));
        let r = c.request(&mismatch).unwrap();
        assert_eq!(r.get_int("error"), Some(code::CONFIG_MISMATCH), "{r:?}");
        assert!(r.get_str("message").unwrap().contains("(live != requested): mtu: 1500 != 9000"), "{r:?}");
        let r = c.request(&mismatch.try_clone().unwrap().with("accept_existing", Value::Bool(true))).unwrap();
        assert!(r.get_dict("network").is_some());
        let r = c.request(&acquire("host").with("config", Value::Data(br#"{"mode":"host","dhcp":false}"#.to_vec()))).unwrap();
        assert_eq!(r.get_int("error"), Some(code::CONFIG_MISMATCH));
        assert!(r.get_str("message").unwrap().contains("(broker != requested): dhcp: true != false"), "{r:?}");
        let r = c.request(&acquire("fresh").with("config", Value::Data(b"{\"colour\":1}".to_vec()))).unwrap();
        assert!(r.get_str("message").unwrap().contains("colour"));
        // A new network described by the client is created.
        let r = c.request(&acquire("fresh").with("config", Value::Data(br#"{"mode":"host","subnet":"10.5.0.1/24"}"#.to_vec()))).unwrap();
        assert_eq!(r.get_str("subnet"), Some("10.5.0.1/24"), "{r:?}");
        assert!(c.request(&cmd("ping")).unwrap().get_bool("pong").unwrap());
        let counters = c.request(&cmd("status")).unwrap();
        assert!(counters.get_dict("counters").unwrap().get_int("errors").unwrap() >= 10);
        b.stop();
    }

    #[test]
    fn refused_user_gets_not_allowed_but_ping_works() {
        let mut o = options(0);
        o.settings.allowed_users.clear();
        o.settings.allowed_groups.clear();
        let (b, path) = start("refused", o);
        let mut c = Client::connect(&path).unwrap();
        let r = c.request(&cmd("status")).unwrap();
        assert_eq!(r.get_int("error"), Some(code::NOT_ALLOWED));
        assert!(r.get_str("message").unwrap().contains("is not allowed to use the broker"));
        let r = c.request(&Dict::new().with("Network", Value::String("shared".into()))).unwrap();
        assert!(r.get_str("Error").unwrap().contains("not allowed"));
        assert!(c.request(&cmd("ping")).unwrap().get_bool("pong").unwrap());
        b.stop();
    }

    #[test]
    fn release_and_vanished_networks() {
        let (b, path) = start("release", options(0));
        let mut c = Client::connect(&path).unwrap();
        let acquire = cmd("acquire").with("network_name", Value::String("host".into()));
        c.request(&acquire).unwrap();
        c.request(&acquire).unwrap();
        let r = c.request(&cmd("release").with("network", Value::String("host".into()))).unwrap();
        assert_eq!(r.get_int("released"), Some(2));
        let r = c.request(&cmd("release").with("network", Value::String("host".into()))).unwrap();
        assert_eq!(r.get_int("error"), Some(code::NOT_FOUND));
        // A network that disappears is released with its leases.
        c.request(&acquire).unwrap();
        assert!(testing::kill("host") >= 1);
        wait_for("the dead network to go", || {
            c.request(&cmd("status")).unwrap().get_dict("networks").unwrap().get_dict("host").is_none()
        });
        assert!(c.request(&cmd("status")).unwrap().get_dict("leases").unwrap().is_empty());
        b.stop();
    }

    #[test]
    fn idle_network_teardown_then_idle_exit() {
        let (b, path) = start("idle", options(1));
        {
            let mut c = Client::connect(&path).unwrap();
            c.request(&cmd("acquire").with("network_name", Value::String("shared".into()))).unwrap();
        }
        let reason = b.wait(Some(Duration::from_secs(30))).expect("the broker did not exit idle");
        assert!(reason.starts_with("idle"), "{reason}");
        assert!(b.core().lock_state().networks.is_empty());
        assert!(!path.exists());
    }

    #[test]
    fn started_by_hand_tears_idle_networks_down_but_keeps_running() {
        let mut o = options(1);
        o.exit_when_idle = false;
        let (b, path) = start("by-hand", o);
        assert_eq!(b.core().exits_when_idle(), None);
        let line = b.start_line();
        assert!(line.contains(&format!("listening on {}", path.display())), "{line}");
        assert!(line.contains("networks: host (host, 192.168.108.1/24), shared (shared, 192.168.107.1/24)"), "{line}");
        assert!(line.ends_with("idle networks are torn down after 1s; runs until stopped (Ctrl-C or SIGTERM)"), "{line}");
        let mut c = Client::connect(&path).unwrap();
        c.request(&cmd("acquire").with("network_name", Value::String("shared".into()))).unwrap();
        drop(c);
        let mut probe = Client::connect(&path).unwrap();
        wait_for("the idle network to be torn down", || probe.request(&cmd("status")).unwrap().get_dict("networks").unwrap().is_empty());
        drop(probe);
        // Well past the idle timeout with nothing in use, it still serves.
        assert_eq!(b.wait(Some(Duration::from_secs(3))), None);
        assert!(Client::connect(&path).unwrap().request(&cmd("ping")).unwrap().get_bool("pong").unwrap());
        let counters = Client::connect(&path).unwrap().request(&cmd("status")).unwrap();
        assert_eq!(counters.get_dict("counters").unwrap().get_int("networks_released"), Some(1));
        b.stop();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn colliding_subnets_name_network_route_and_file() {
        use crate::vmnet::linux::plan::Route;
        let networks = netconfig::builtin_networks();
        let lan = Route { dst: "192.168.107.0".parse().unwrap(), prefix: 24, dev: "eth9".into() };
        let default = Route { dst: "0.0.0.0".parse().unwrap(), prefix: 0, dev: "eth9".into() };
        assert!(subnet_collisions(&networks, std::slice::from_ref(&default), "f.yaml").is_empty(), "a default route collides with nothing");
        let lines = subnet_collisions(&networks, &[default, lan], "/etc/vmnet-rs/networks.yaml");
        assert_eq!(
            lines,
            vec!["network shared: subnet 192.168.107.1/24 overlaps host route 192.168.107.0/24 dev eth9; choose another subnet for network shared in /etc/vmnet-rs/networks.yaml, or remove the route".to_string()]
        );
    }

    #[test]
    fn start_line_says_when_it_exits_by_itself() {
        let (b, _path) = start("start-line", options(120));
        assert_eq!(b.core().exits_when_idle(), Some(Duration::from_secs(120)));
        assert!(b.start_line().ends_with("idle networks are torn down after 120s; exits by itself after 120s with no network, lease or connection"));
        b.stop();
        let (b, _path) = start("start-line-0", options(0));
        assert_eq!(b.core().exits_when_idle(), None);
        assert!(b.start_line().ends_with("networks stay until the broker stops (idle timeout 0); runs until stopped (Ctrl-C or SIGTERM)"));
        b.stop();
    }

    #[test]
    fn fds_sent_in_requests_are_closed() {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let (b, path) = start("fds-in", options(0));
        let mut c = Client::connect(&path).unwrap();
        let mut p = [0; 2];
        // SAFETY: p holds two fds.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) }, 0);
        // SAFETY: pipe2 made both; we own them.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        for msg in [
            cmd("ping").with("junk", Value::Fd(w.try_clone().unwrap())),
            cmd("acquire").with("network_name", Value::Fd(w.try_clone().unwrap())),
            Dict::new().with("Network", Value::String("nope".into())).with("x", Value::Fd(w.try_clone().unwrap())),
        ] {
            let reply = c.request(&msg).unwrap();
            assert!(reply.iter().all(|(_, v)| !matches!(v, Value::Fd(_))), "{reply:?}");
        }
        drop(w);
        let mut byte = [0u8; 1];
        // SAFETY: reads at most one byte into `byte`.
        let n = unsafe { libc::read(r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
        assert_eq!(n, 0, "the broker still holds an fd a request carried");
        b.stop();
    }

    #[test]
    fn shutdown_command_stops_the_broker() {
        let (b, path) = start("shutdown", options(0));
        let mut c = Client::connect(&path).unwrap();
        assert_eq!(c.request(&cmd("shutdown")).unwrap().get_bool("ok"), Some(true));
        let reason = b.wait(Some(Duration::from_secs(30))).expect("no exit after shutdown");
        assert!(reason.contains("shutdown requested"), "{reason}");
    }
}
