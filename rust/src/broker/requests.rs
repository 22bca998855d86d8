//! Request handling: the Lima-compatible style (`Network`, `Configuration`,
//! `FdType`, `InterfaceDesc`), vmnet-broker's `acquire`, and our own
//! commands (docs/protocol.md). Runs on the transport's request threads;
//! every request that touches networks holds the state lock throughout.

use std::os::fd::OwnedFd;
use std::time::Instant;

use super::netconfig::{self, differences};
use super::protocol::{check_network_name, code, parse_mac, Args, Failure, PROTOCOL_VERSION};
use super::policy::{self, Caller, Verdict};
use super::state::{FdType, NetEntry, Port, State};
use super::{auth, Backend, Core};
use crate::adaptor::{Adaptor, Options};
use crate::config::{format_mac, MacAddr, NetworkConfig};
use crate::vmnet::InterfaceDesc;
use crate::xpc::{Dict, Error as XpcError, Handler, Peer, Value};

/// Most leases one connection may hold (vmnet-broker allows 8 networks per
/// peer; a VM wrapper with several NICs per network needs more).
const MAX_LEASES_PER_CONNECTION: usize = 64;

/// Every command this broker answers, for error messages.
const COMMANDS: &str = "ping, version, list, status, resolve, acquire, open, release, shutdown";

/// What the client asked for the configuration of a network.
pub(super) struct Wanted<'a> {
    /// Parsed configuration and the bytes it came from, if the client sent one.
    pub(super) config: Option<(NetworkConfig, &'a [u8])>,
    pub(super) accept_existing: bool,
    /// Lima's rule: a live network wins, the difference is only reported.
    pub(super) lima: bool,
}

/// A started port and what the client needs to use it.
struct Opened {
    port: Port,
    fd: OwnedFd,
    mac: [u8; 6],
    mtu: u32,
    offload: bool,
}

fn is_lima(msg: &Dict) -> bool {
    !msg.contains_key("command") && ["Network", "Configuration", "FdType", "InterfaceDesc"].iter().any(|k| msg.contains_key(k))
}

impl Handler for Core {
    fn request(&self, peer: &Peer, message: Dict) -> Dict {
        self.lock_state().connections.insert(peer.connection);
        let lima = is_lima(&message);
        log::debug!(
            "connection {} (pid {} uid {}): {}",
            peer.connection,
            peer.pid,
            peer.uid,
            message.get_str("command").or(message.get_str("Network").map(|_| "Lima request")).unwrap_or("request")
        );
        let result = if lima {
            self.lima_request(peer, &message)
        } else if !message.contains_key("command") {
            let f = Failure::invalid("request has neither a command key (vmnet-rs, vmnet-broker) nor a Network key (Lima)");
            let mut reply = f.command_reply();
            reply.insert("Error", Value::String(f.message.clone()));
            self.count(Some(&f));
            return reply;
        } else {
            self.command_request(peer, &message)
        };
        self.count(result.as_ref().err());
        match result {
            Ok(reply) => reply,
            Err(f) => {
                log::info!("request from pid {} uid {} refused: {}", peer.pid, peer.uid, f.message);
                if lima {
                    f.lima_reply()
                } else {
                    f.command_reply()
                }
            }
        }
    }

    fn disconnected(&self, peer: &Peer) {
        let mut st = self.lock_state();
        st.connections.remove(&peer.connection);
        let n = st.release_where(|l| l.connection == peer.connection && l.bound_to_connection);
        if n > 0 {
            log::info!("connection {} (pid {}) closed: {n} lease(s) released", peer.connection, peer.pid);
        }
        st.last_activity = Instant::now();
    }

    fn malformed(&self, peer: &Peer, error: &XpcError) -> Dict {
        let _ = peer;
        self.answer_undelivered(Failure::invalid(format!("bad request: {error}")))
    }

    fn refused(&self, peer: Option<&Peer>, reason: &str) -> Dict {
        match peer {
            Some(p) => log::warn!("connection {} (pid {} uid {}) refused by the transport: {reason}", p.connection, p.pid, p.uid),
            None => log::warn!("an unidentified caller was refused by the transport: {reason}"),
        }
        self.answer_undelivered(Failure::new(code::NOT_ALLOWED, format!("refused: {reason}")))
    }
}

impl Core {
    /// The reply to a message the transport did not hand to `request`: the
    /// request style is unknown, so it answers in both (`Error`, Lima;
    /// `error` + `message`, the command protocols).
    fn answer_undelivered(&self, f: Failure) -> Dict {
        {
            let mut st = self.lock_state();
            if f.code == code::INVALID_REQUEST {
                st.counters.malformed += 1;
            } else {
                st.counters.refused += 1;
            }
            st.counters.errors += 1;
            st.last_activity = Instant::now();
        }
        let mut reply = f.command_reply();
        reply.insert("Error", Value::String(f.message));
        reply
    }
}

impl Core {
    fn count(&self, failure: Option<&Failure>) {
        let mut st = self.lock_state();
        st.counters.requests += 1;
        st.last_activity = Instant::now();
        if let Some(f) = failure {
            st.counters.errors += 1;
            if f.code == code::NOT_ALLOWED {
                st.counters.refused += 1;
            }
        }
    }

    pub(super) fn authorise(&self, peer: &Peer) -> Result<(), Failure> {
        auth::check(&self.options.settings, peer).map_err(|m| Failure::new(code::NOT_ALLOWED, m))
    }

    fn lima_request(&self, peer: &Peer, msg: &Dict) -> Result<Dict, Failure> {
        self.authorise(peer)?;
        let args = Args(msg);
        let name = args.required_str("Network", "the network name")?;
        check_network_name(name)?;
        let config = match args.json("Configuration")? {
            Some(bytes) => Some((netconfig::parse_json(bytes, name, true).map_err(Failure::invalid)?, bytes)),
            None => None,
        };
        let fd_type = match args.str("FdType")? {
            Some(t) => Some(FdType::parse(t).ok_or_else(|| Failure::invalid(format!("unknown FdType {t:?} (known: {})", FdType::names())))?),
            None => None,
        };
        let desc = args.dict("InterfaceDesc")?;
        let wanted = Wanted { config, accept_existing: true, lima: true };
        let (mut st, opened, diffs) = match fd_type {
            Some(kind) => {
                let mac = desc.and_then(lima_desc_mac);
                let (st, opened, diffs) = self.open_port(peer, name, &wanted, true, |core, st| core.start_port(st, name, kind, mac, false))?;
                (st, Some(opened), diffs)
            }
            None => {
                let mut st = self.lock_state();
                let verdict = self.admit(&st, &Caller::from(peer), name, wanted.config.as_ref().map(|(c, _)| c))?;
                let diffs = self.ensure_network(&mut st, name, &wanted, verdict)?;
                (st, None, diffs)
            }
        };
        let entry = &st.networks[name];
        let mut reply = Dict::new()
            .with("Configuration", Value::Data(entry.config_json.clone()))
            .with("Serialization", Value::Dict(self.serialization(entry)?));
        if !diffs.is_empty() {
            reply.insert("ConfigurationDifference", Value::String(diffs.join("; ")));
        }
        match opened {
            Some(opened) => {
                let mac = format_mac(&opened.mac);
                reply.insert("FileDescriptor", Value::Fd(opened.fd));
                reply.insert("MACAddress", Value::String(mac.clone()));
                st.grant(name, peer, false, Some(opened.port), Some(mac), None);
            }
            None => {
                st.grant(name, peer, true, None, None, None);
            }
        }
        Ok(reply)
    }

    fn command_request(&self, peer: &Peer, msg: &Dict) -> Result<Dict, Failure> {
        let args = Args(msg);
        let command = args.required_str("command", "what to do")?;
        let ok = || Dict::new().with("ok", Value::Bool(true));
        match command {
            "ping" => return Ok(ok().with("pong", Value::Bool(true)).with("version", Value::String(crate::VERSION.into()))),
            "version" => {
                return Ok(ok()
                    .with("version", Value::String(crate::VERSION.into()))
                    .with("protocol", Value::Int(PROTOCOL_VERSION))
                    .with("platform", Value::String(std::env::consts::OS.into())))
            }
            _ => {}
        }
        self.authorise(peer)?;
        match command {
            "acquire" => self.acquire(peer, &args),
            "open" => self.open(peer, &args),
            "list" => Ok(ok().with("networks", Value::Dict(self.list()))),
            "status" => Ok(self.status()),
            "resolve" => self.resolve(&args),
            "release" => self.release(peer, &args),
            "shutdown" => {
                if !auth::may_shutdown(peer) {
                    return Err(Failure::new(
                        code::NOT_ALLOWED,
                        format!("uid {} may not stop the broker: only root or the broker's own user may", peer.uid),
                    ));
                }
                self.request_exit(&format!("shutdown requested by pid {} uid {}", peer.pid, peer.uid));
                Ok(ok())
            }
            other => Err(Failure::invalid(format!("unknown command {other:?} (known: {COMMANDS})"))),
        }
    }

    fn wanted<'a>(&self, args: &'a Args<'a>, name: &str) -> Result<Wanted<'a>, Failure> {
        let config = match args.json("config")? {
            Some(bytes) => Some((netconfig::parse_json(bytes, name, false).map_err(Failure::invalid)?, bytes)),
            None => None,
        };
        Ok(Wanted { config, accept_existing: args.bool("accept_existing")?.unwrap_or(false), lima: false })
    }

    fn acquire(&self, peer: &Peer, args: &Args<'_>) -> Result<Dict, Failure> {
        let name = match args.str("network_name")? {
            Some(n) => n,
            None => args.required_str("network", "the network name (network_name)")?,
        };
        check_network_name(name)?;
        let dns_name = requested_name(args)?;
        let mac = args.str("mac")?.map(parse_mac).transpose()?;
        let wanted = self.wanted(args, name)?;
        let mut st = self.lock_state();
        let verdict = self.admit(&st, &Caller::from(peer), name, wanted.config.as_ref().map(|(c, _)| c))?;
        self.check_lease_limit(&st, peer)?;
        self.ensure_network(&mut st, name, &wanted, verdict)?;
        // A named VM attached by the client itself (Virtualization.framework):
        // the name goes with the MAC it gave, or one the broker chose.
        let named = match dns_name {
            Some(n) => {
                let mac = mac.map(MacAddr).unwrap_or_else(MacAddr::random);
                Some((mac, st.grant_name(name, n, mac)?))
            }
            None => None,
        };
        let entry = &st.networks[name];
        let mut reply = Dict::new()
            .with("network", Value::Dict(self.serialization(entry)?))
            .with("config", Value::Data(netconfig::to_json(&entry.config)))
            .with("subnet", Value::String(entry.network.state().subnet));
        let lease = st.grant(name, peer, true, None, named.as_ref().map(|(m, _)| m.to_string()), vm_name(args)?);
        reply.insert("lease", Value::Int(lease as i64));
        if let Some((mac, g)) = named {
            reply.insert("mac", Value::String(mac.to_string()));
            name_reply(&mut st, &mut reply, name, lease, &g);
        }
        Ok(reply)
    }

    fn open(&self, peer: &Peer, args: &Args<'_>) -> Result<Dict, Failure> {
        let name = args.required_str("network", "the network name")?;
        check_network_name(name)?;
        let type_name = args.required_str("fd_type", FdType::names().as_str())?;
        let fd_type = FdType::parse(type_name).ok_or_else(|| Failure::invalid(format!("unknown fd_type {type_name:?} (known: {})", FdType::names())))?;
        let mac = args.str("mac")?.map(parse_mac).transpose()?;
        let vnet_hdr = args.bool("vnet_hdr")?.unwrap_or(false);
        if vnet_hdr && fd_type != FdType::Tap {
            return Err(Failure::invalid(format!("vnet_hdr applies only to fd_type \"tap\", not {type_name:?}")));
        }
        let dns_name = requested_name(args)?;
        let wanted = self.wanted(args, name)?;
        if let Some(n) = dns_name {
            self.lock_state().check_name_free(name, n)?;
        }
        let (mut st, opened, _) = self.open_port(peer, name, &wanted, true, |core, st| core.start_port(st, name, fd_type, mac, vnet_hdr))?;
        // On refusal the port just started drops (and goes) with `opened`.
        let granted = dns_name.map(|n| st.grant_name(name, n, MacAddr(opened.mac))).transpose()?;
        let entry = &st.networks[name];
        let mac = format_mac(&opened.mac);
        let mut reply = Dict::new()
            .with("ok", Value::Bool(true))
            .with("network", Value::String(name.into()))
            .with("fd_type", Value::String(type_name.into()))
            .with("mac", Value::String(mac.clone()))
            .with("mtu", Value::Int(opened.mtu as i64))
            .with("offload", Value::Bool(opened.offload))
            .with("config", Value::Data(netconfig::to_json(&entry.config)))
            .with("subnet", Value::String(entry.network.state().subnet))
            .with("fd", Value::Fd(opened.fd));
        let lease = st.grant(name, peer, true, Some(opened.port), Some(mac), vm_name(args)?);
        reply.insert("lease", Value::Int(lease as i64));
        if let Some(g) = granted {
            name_reply(&mut st, &mut reply, name, lease, &g);
        }
        Ok(reply)
    }

    /// `resolve {name}`: what a name (`alpha`, `alpha.shared`,
    /// `alpha.shared.vmnet.internal`) or an address is on the live
    /// networks: `answers` keyed `network/name`, each with `network`,
    /// `name`, `fqdn`, `kind` (granted, claimed, host), `address`,
    /// `address6` and `mac` where known. No answer is `NOT_FOUND`.
    fn resolve(&self, args: &Args<'_>) -> Result<Dict, Failure> {
        let query = args.required_str("name", "the name or address to resolve")?;
        if query.is_empty() || query.len() > 253 {
            return Err(Failure::invalid(format!("name {query:?} must be 1 to 253 characters")));
        }
        let answers = self.lock_state().resolve(query);
        if answers.is_empty() {
            let live: Vec<String> = self.lock_state().networks.keys().cloned().collect();
            return Err(Failure::new(
                code::NOT_FOUND,
                format!("no VM named {query:?} on the live networks [{}] (a name is served while its VM holds a lease)", live.join(", ")),
            ));
        }
        let d = answers.iter().fold(Dict::new(), |d, a| d.with(format!("{}/{}", a.network, a.name), Value::Dict(answer_dict(a))));
        Ok(Dict::new().with("ok", Value::Bool(true)).with("answers", Value::Dict(d)))
    }

    fn release(&self, peer: &Peer, args: &Args<'_>) -> Result<Dict, Failure> {
        let network = args.str("network")?;
        let lease = args.int("lease")?;
        if network.is_none() && lease.is_none() {
            return Err(Failure::invalid("release needs a network or a lease key"));
        }
        let mut st = self.lock_state();
        let n = st.release_where(|l| {
            l.connection == peer.connection
                && l.bound_to_connection
                && network.is_none_or(|n| l.network == n)
                && lease.is_none_or(|id| l.id as i64 == id)
        });
        if n == 0 {
            let what = match (network, lease) {
                (Some(n), Some(l)) => format!("lease {l} on network {n}"),
                (Some(n), None) => format!("network {n}"),
                (None, Some(l)) => format!("lease {l}"),
                (None, None) => unreachable!("checked above"),
            };
            return Err(Failure::new(code::NOT_FOUND, format!("this connection holds no {what}")));
        }
        Ok(Dict::new().with("ok", Value::Bool(true)).with("released", Value::Int(n as i64)))
    }

    fn check_lease_limit(&self, st: &State, peer: &Peer) -> Result<(), Failure> {
        if st.leases_of(peer.connection) >= MAX_LEASES_PER_CONNECTION {
            return Err(Failure::new(
                code::LIMIT,
                format!("this connection already holds {MAX_LEASES_PER_CONNECTION} leases; release some first"),
            ));
        }
        Ok(())
    }

    fn serialization(&self, entry: &NetEntry) -> Result<Dict, Failure> {
        entry.network.serialization().map_err(|e| Failure::new(code::INTERNAL_ERROR, format!("network {}: serialization: {e}", entry.network.name())))
    }

    /// The policy's facts (`policy::Facts`) as they stand under the state lock.
    fn with_facts<R>(&self, st: &State, f: impl FnOnce(&policy::Facts<'_>) -> R) -> R {
        let live: std::collections::BTreeMap<String, NetworkConfig> = st
            .networks
            .iter()
            .map(|(n, e)| {
                (n.clone(), e.config.with_chosen(e.network.state().ipv4_subnet(), None, None))
            })
            .collect();
        let route_conflict = |c: &NetworkConfig| host_route_conflict(c);
        let facts = policy::Facts {
            settings: &self.options.settings,
            configured: &self.options.networks,
            config_source: self.options.config_source.as_deref(),
            live: &live,
            // SAFETY: getuid cannot fail.
            broker_uid: unsafe { libc::getuid() },
            accounts: &policy::SystemAccounts,
            route_conflict: &route_conflict,
        };
        f(&facts)
    }

    /// The policy (`policy::decide`) for a request from `caller` on network
    /// `network`, sending `client`'s configuration if any: every request
    /// path calls it (the path endpoints too) before anything is made. A
    /// refusal is logged with uid, pid, network and reason.
    pub fn admit(&self, st: &State, caller: &Caller, network: &str, client: Option<&NetworkConfig>) -> Result<Verdict, Failure> {
        self.with_facts(st, |facts| policy::decide(facts, caller, network, client)).map_err(|r| refused(caller, network, r))
    }

    /// The per-user port quota (`policy::check_port_quota`) for one more
    /// port on `network`, counting every port `caller`'s uid holds across
    /// its connections (endpoint ports included). A refusal is logged.
    pub fn admit_port(&self, st: &State, caller: &Caller, network: &str) -> Result<(), Failure> {
        let held = st.ports_of_uid(caller.uid);
        self.with_facts(st, |facts| policy::check_port_quota(facts, caller, held)).map_err(|r| refused(caller, network, r))
    }

    /// Makes sure network `name` is live, creating it if needed; returns the
    /// differences between the live and the requested configuration (only
    /// non-empty when they were accepted). `verdict` is the policy's: with
    /// `Use`, a configured network is made as configured, whatever the client sent.
    pub(super) fn ensure_network(&self, st: &mut State, name: &str, wanted: &Wanted<'_>, verdict: Verdict) -> Result<Vec<String>, Failure> {
        if st.networks.get(name).is_some_and(|e| !e.network.is_alive()) {
            st.drop_network(name, "it disappeared");
        }
        if let Some(entry) = st.networks.get(name) {
            let Some((requested, _)) = &wanted.config else { return Ok(Vec::new()) };
            // Compare with what the network really got (a subnet the
            // platform chose), as the client would see it.
            let diffs = differences(&entry.config, requested);
            if !diffs.is_empty() && !wanted.accept_existing && !wanted.lima {
                return Err(Failure::new(
                    code::CONFIG_MISMATCH,
                    format!(
                        "network {name} is live with a different configuration (live != requested): {}; release it everywhere (or stop the broker) to change it, or ask with accept_existing to use the live one",
                        diffs.join("; ")
                    ),
                ));
            }
            return Ok(diffs);
        }
        let configured = self.options.networks.get(name);
        let (config, json, diffs) = match (&wanted.config, configured) {
            (Some((req, bytes)), _) if wanted.lima && verdict == Verdict::Define => (req.clone(), bytes.to_vec(), Vec::new()),
            (Some((req, _)), Some(conf)) => {
                let diffs = differences(conf, req);
                if !diffs.is_empty() && !wanted.accept_existing && !wanted.lima {
                    return Err(Failure::new(
                        code::CONFIG_MISMATCH,
                        format!(
                            "network {name} is configured differently in the broker's configuration (broker != requested): {}; change the broker's configuration, or ask with accept_existing to use it",
                            diffs.join("; ")
                        ),
                    ));
                }
                (conf.clone(), netconfig::to_json(conf), diffs)
            }
            (Some((req, bytes)), None) => (req.clone(), bytes.to_vec(), Vec::new()),
            (None, Some(conf)) => (conf.clone(), netconfig::to_json(conf), Vec::new()),
            (None, None) => {
                let known: Vec<&str> = self.options.networks.keys().map(String::as_str).collect();
                return Err(Failure::new(
                    code::NOT_FOUND,
                    format!(
                        "unknown network {name:?}: the broker knows [{}]; add it to the broker's configuration or send its configuration with the request",
                        known.join(", ")
                    ),
                ));
            }
        };
        let network = self
            .create_network(name, &config)
            .map_err(|e| Failure::new(code::CREATE_FAILURE, format!("could not create network {name}: {e}")))?;
        // On error the network drops here, which tears it down.
        let service = match config.addresses() {
            crate::config::Addresses::Broker => Some(super::service::start_on(name, network.as_ref(), &config, |_| super::service::SharedBook::new(self.with_state(), name)).map_err(|e| {
                Failure::new(code::CREATE_FAILURE, format!("could not start the broker's DHCP/DNS port on network {name}: {e}"))
            })?),
            crate::config::Addresses::Platform => None,
        };
        log::info!("network {name} created ({})", network.state().subnet);
        st.networks.insert(name.to_owned(), NetEntry { service, network, config, config_json: json, created: Instant::now(), idle_since: None });
        st.counters.networks_created += 1;
        st.refresh_idle();
        // The addresses recorded for this network's VMs (earlier runs) stay theirs.
        st.publish(name);
        // The broker's own port holds its address: the records never give it.
        let service = st.networks.get(name).filter(|e| e.service.is_some()).and_then(|e| e.network.state().ipv4_subnet());
        if let (Some(subnet), Some(book)) = (service, st.book(name)) {
            book.avoid([super::service::service_address(subnet)]);
        }
        Ok(diffs)
    }

    /// Opens a port on network `name` for `peer`: the one path of an `open`
    /// request, a Lima request with an `FdType`, and an endpoint client.
    /// Checks the network's policy (`admit`), the connection's lease limit
    /// (`lease_limit`: an endpoint client has no broker connection of its
    /// own to count) and the per-user port quota, makes the network if
    /// needed, and runs `start` (made again once if the network turns out
    /// gone: [`Core::start_on_network`]). Returns the state, still locked so
    /// the caller grants the lease, what `start` made, and the differences
    /// between a live network and the configuration sent (Lima reports
    /// them). Nothing is left started on error.
    pub(super) fn open_port<T>(
        &self,
        peer: &Peer,
        name: &str,
        wanted: &Wanted<'_>,
        lease_limit: bool,
        start: impl Fn(&Self, &State) -> Result<T, Failure>,
    ) -> Result<(std::sync::MutexGuard<'_, State>, T, Vec<String>), Failure> {
        let mut st = self.lock_state();
        let caller = Caller::from(peer);
        let verdict = self.admit(&st, &caller, name, wanted.config.as_ref().map(|(c, _)| c))?;
        if lease_limit {
            self.check_lease_limit(&st, peer)?;
        }
        self.admit_port(&st, &caller, name)?;
        let diffs = self.ensure_network(&mut st, name, wanted, verdict)?;
        let started = self.start_on_network(&mut st, name, wanted, verdict, start)?;
        Ok((st, started, diffs))
    }

    /// Runs `start` (a port start) on live network `name`. When it fails and
    /// the network turns out to be gone (`is_alive` false: on macOS its host
    /// interface disappeared), the network is dropped, made again once and
    /// `start` run once more; a second failure is reported as it is.
    pub(super) fn start_on_network<T>(
        &self,
        st: &mut State,
        name: &str,
        wanted: &Wanted<'_>,
        verdict: Verdict,
        start: impl Fn(&Self, &State) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let first = start(self, st);
        let Err(f) = first else { return first };
        if st.networks.get(name).is_none_or(|e| e.network.is_alive()) {
            return Err(f);
        }
        log::warn!("network {name}: a port could not start ({}) and the network is gone; making it again", f.message);
        st.drop_network(name, "it disappeared");
        self.ensure_network(st, name, wanted, verdict)?;
        start(self, st)
    }

    /// Starts a port on live network `name`.
    fn start_port(&self, st: &State, name: &str, fd_type: FdType, mac: Option<[u8; 6]>, vnet_hdr: bool) -> Result<Opened, Failure> {
        let entry = &st.networks[name];
        let desc = InterfaceDesc { mac, isolation: entry.config.isolation(), offload: entry.config.offload() };
        let create_failure = |what: &str, e: &dyn std::fmt::Display| Failure::new(code::CREATE_FAILURE, format!("network {name}: could not {what}: {e}"));
        match fd_type {
            FdType::Relay(kind) => {
                let interface = entry.network.start_interface(&desc).map_err(|e| create_failure("start an interface", &e))?;
                let info = interface.info().clone();
                let (adaptor, fd) = Adaptor::start(interface, kind, &Options::default()).map_err(|e| create_failure("start the relay", &e))?;
                let mac = mac.or((info.mac != [0; 6]).then_some(info.mac)).unwrap_or_else(|| MacAddr::random().0);
                Ok(Opened { port: Port::Adaptor(adaptor), fd, mac, mtu: info.mtu, offload: info.offload })
            }
            FdType::Tap => self.start_tap(entry, &desc, vnet_hdr),
        }
    }

    #[cfg(target_os = "linux")]
    fn start_tap(&self, entry: &NetEntry, desc: &InterfaceDesc, vnet_hdr: bool) -> Result<Opened, Failure> {
        use crate::vmnet::Interface;
        let tap = entry.network.start_tap(desc, vnet_hdr).map_err(|e| {
            Failure::new(code::CREATE_FAILURE, format!("network {}: could not start a TAP: {e}; use datagram, datagram_next or stream", entry.network.name()))
        })?;
        let info = tap.info().clone();
        let name = tap.name().to_owned();
        let mac = desc.mac.or((info.mac != [0; 6]).then_some(info.mac)).unwrap_or_else(|| MacAddr::random().0);
        Ok(Opened { port: Port::Tap { name }, fd: tap.into_fd(), mac, mtu: info.mtu, offload: vnet_hdr })
    }

    #[cfg(not(target_os = "linux"))]
    fn start_tap(&self, entry: &NetEntry, desc: &InterfaceDesc, vnet_hdr: bool) -> Result<Opened, Failure> {
        let _ = (desc, vnet_hdr);
        Err(Failure::invalid(format!(
            "network {}: fd_type \"tap\" exists only on Linux; use datagram, datagram_next or stream",
            entry.network.name()
        )))
    }

    fn list(&self) -> Dict {
        let endpoint_paths = self.endpoint_paths();
        let st = self.lock_state();
        let mut out = Dict::new();
        let mut names: Vec<&String> = self.options.networks.keys().collect();
        names.extend(st.networks.keys().filter(|n| !self.options.networks.contains_key(*n)));
        for name in names {
            let live = st.networks.get(name);
            let config = live.map(|e| &e.config).or_else(|| self.options.networks.get(name));
            let mut d = Dict::new()
                .with("live", Value::Bool(live.is_some()))
                .with("configured", Value::Bool(self.options.networks.contains_key(name)))
                .with("leases", Value::Int(st.leases_on(name) as i64));
            if let Some(c) = config {
                d.insert("mode", Value::String(if c.mode() == crate::config::Mode::Shared { "shared" } else { "host" }.into()));
                d.insert("config", Value::Data(netconfig::to_json(c)));
                // Who may use it besides the broker's owner: its own lists
                // (an unnamed one empty), else the broker's.
                let (users, groups) = super::policy::network_access(c, &self.options.settings);
                // Comma-separated (names never hold commas): the protocol has no lists.
                d.insert("allowed_users", Value::String(users.join(",")));
                d.insert("allowed_groups", Value::String(groups.join(",")));
                d.insert("own_access", Value::Bool(c.has_own_access()));
            }
            let subnet = live.map(|e| e.network.state().subnet).or_else(|| config.and_then(|c| c.subnet().map(|s| s.to_string())));
            if let Some(s) = subnet {
                d.insert("subnet", Value::String(s));
            }
            if let Some(kinds) = endpoint_paths.get(name.as_str()) {
                d.insert("endpoints", Value::Dict(endpoint_path_dict(kinds)));
            }
            out.insert(name.clone(), Value::Dict(d));
        }
        out
    }

    pub(super) fn status(&self) -> Dict {
        let networks_list = self.list();
        let endpoint_paths = self.endpoint_paths();
        let mut st = self.lock_state();
        let live: Vec<String> = st.networks.keys().cloned().collect();
        let mut names: std::collections::BTreeMap<String, Vec<super::names::Answer>> = Default::default();
        for n in live {
            let on = st.names_on(&n);
            names.insert(n, on);
        }
        let mut networks = Dict::new();
        for (name, e) in &st.networks {
            let s = e.network.state();
            let mut d = Dict::new()
                .with("subnet", Value::String(s.subnet))
                .with("device", Value::String(s.device))
                .with("alive", Value::Bool(e.network.is_alive()))
                .with("leases", Value::Int(st.leases_on(name) as i64))
                .with("age_s", Value::Int(e.created.elapsed().as_secs() as i64))
                .with("config", Value::Data(netconfig::to_json(&e.config)));
            if let Some(p) = s.ipv6_prefix {
                d.insert("ipv6_prefix", Value::String(p));
            }
            if let Some(t) = e.idle_since {
                d.insert("idle_s", Value::Int(t.elapsed().as_secs() as i64));
            }
            // The pieces the backend watches in the host, and their repairs.
            let pieces = e.network.pieces();
            if !pieces.is_empty() {
                d.insert("repairs", Value::Int(pieces.iter().map(|p| p.repairs as i64).sum()));
                let mut by_piece = Dict::new();
                for p in pieces {
                    let mut x = Dict::new().with("ok", Value::Bool(p.ok)).with("repairs", Value::Int(p.repairs as i64));
                    if let Some(m) = p.missing {
                        x.insert("missing", Value::String(m));
                    }
                    if let Some(l) = p.left_alone {
                        x.insert("left_alone", Value::String(l));
                    }
                    by_piece.insert(p.piece, Value::Dict(x));
                }
                d.insert("pieces", Value::Dict(by_piece));
            }
            // The broker's own DHCP/DNS port: its lines in `status`, and its
            // records are the network's leases.
            let service = e.service.as_ref().map(|p| p.status());
            if let Some(sv) = &service {
                d.insert("service", service_status(sv));
            }
            let dhcp = match &service {
                Some(sv) => Ok(sv.records.iter().filter(|r| r.leased).map(|r| crate::vmnet::Lease { mac: r.mac.clone(), address: r.address.to_string(), hostname: r.name.clone(), expires: 0 }).collect()),
                None => e.network.leases(),
            };
            // DHCP leases, where the backend can tell (Linux: dnsmasq).
            if let Ok(dhcp) = dhcp {
                let mut by_mac = Dict::new();
                for l in dhcp {
                    let mut x = Dict::new().with("address", Value::String(l.address)).with("expires", Value::Int(l.expires as i64));
                    if let Some(h) = l.hostname {
                        x.insert("hostname", Value::String(h));
                    }
                    by_mac.insert(l.mac, Value::Dict(x));
                }
                d.insert("dhcp_leases", Value::Dict(by_mac));
            }
            // Names served on the network (the gateway's, granted, claimed).
            if let Some(on) = names.get(name) {
                d.insert("domain", Value::String(e.config.dns_domain(name)));
                d.insert("names", Value::Dict(on.iter().fold(Dict::new(), |d, a| d.with(a.name.clone(), Value::Dict(answer_dict(a))))));
            }
            networks.insert(name.clone(), Value::Dict(d));
        }
        let mut leases = Dict::new();
        let mut adaptors = Dict::new();
        for (id, l) in &st.leases {
            let mut d = Dict::new()
                .with("network", Value::String(l.network.clone()))
                .with("connection", Value::Int(l.connection as i64))
                .with("pid", Value::Int(l.pid as i64))
                .with("uid", Value::Int(l.uid as i64))
                .with("bound_to_connection", Value::Bool(l.bound_to_connection))
                .with("age_s", Value::Int(l.created.elapsed().as_secs() as i64))
                .with("fd_type", Value::String(l.port.as_ref().map(|p| p.fd_type()).unwrap_or("none").into()));
            if let Some(m) = &l.mac {
                d.insert("mac", Value::String(m.clone()));
                // The VM's address from the network's DHCP lease for its MAC.
                if let Some(dhcp) = networks.get_dict(&l.network).and_then(|n| n.get_dict("dhcp_leases")).and_then(|by_mac| by_mac.get_dict(m)) {
                    if let Some(a) = dhcp.get_str("address") {
                        d.insert("address", Value::String(a.into()));
                    }
                    if let Some(h) = dhcp.get_str("hostname") {
                        d.insert("hostname", Value::String(h.into()));
                    }
                }
            }
            if let Some(n) = &l.vm_name {
                d.insert("vm_name", Value::String(n.clone()));
            }
            // Its DNS name: granted with the lease, or claimed by its DHCP client.
            let mac = l.mac.as_deref().and_then(|m| m.parse::<MacAddr>().ok());
            let named = names.get(&l.network).and_then(|on| {
                on.iter().find(|a| match &l.name {
                    Some(n) => &a.name == n,
                    None => a.kind == "claimed" && a.mac.is_some() && a.mac == mac,
                })
            });
            if let Some(a) = named {
                d.insert("name", Value::String(a.name.clone()));
                d.insert("fqdn", Value::String(a.fqdn.clone()));
                d.insert("name_kind", Value::String(a.kind.into()));
                if let Some(x) = a.ipv4 {
                    d.insert("address", Value::String(x.to_string()));
                }
            }
            if let Some(p) = &l.process {
                d.insert("process", Value::String(p.clone()));
            }
            if let Some(via) = l.via {
                d.insert("via", Value::String(via.as_str().into()));
            }
            if let Some(Port::Adaptor(a)) = &l.port {
                if let Some(m) = a.vm_mac() {
                    d.insert("vm_mac", Value::String(format_mac(&m)));
                }
            }
            match &l.port {
                Some(Port::Adaptor(a)) => {
                    let (host_to_vm, vm_to_host) = direction_stats(a);
                    let ad = Dict::new()
                        .with("lease", Value::Int(*id as i64))
                        .with("network", Value::String(l.network.clone()))
                        .with("kind", Value::String(a.kind().as_str().into()))
                        .with("running", Value::Bool(a.is_running()))
                        .with("send_buffer_bytes", Value::Int(a.socket_buffers().send_bytes as i64))
                        .with("recv_buffer_bytes", Value::Int(a.socket_buffers().recv_bytes as i64))
                        .with("host_to_vm", Value::Dict(host_to_vm))
                        .with("vm_to_host", Value::Dict(vm_to_host));
                    adaptors.insert(id.to_string(), Value::Dict(ad));
                }
                Some(Port::Tap { name }) => {
                    d.insert("tap", Value::String(name.clone()));
                }
                None => {}
            }
            leases.insert(id.to_string(), Value::Dict(d));
        }
        let mut endpoints = Dict::new();
        let queues = self.endpoint_queues();
        for (network, kinds) in &endpoint_paths {
            let mut d = endpoint_path_dict(kinds);
            if let Some(q) = queues.get(network) {
                d.insert("datagram_queue", Value::Dict(queue_dict(q)));
            }
            let mut ports = Dict::new();
            for (id, l) in st.leases.iter().filter(|(_, l)| &l.network == network && l.via.is_some()) {
                let mut p = Dict::new()
                    .with("via", Value::String(l.via.map(|v| v.as_str()).unwrap_or_default().into()))
                    .with("pid", Value::Int(l.pid as i64))
                    .with("uid", Value::Int(l.uid as i64))
                    .with("age_s", Value::Int(l.created.elapsed().as_secs() as i64));
                if let Some(Port::Adaptor(a)) = &l.port {
                    if let Some(m) = a.vm_mac() {
                        p.insert("mac", Value::String(format_mac(&m)));
                    }
                    let (host_to_vm, vm_to_host) = direction_stats(a);
                    p.insert("running", Value::Bool(a.is_running()));
                    p.insert("host_to_vm", Value::Dict(host_to_vm));
                    p.insert("vm_to_host", Value::Dict(vm_to_host));
                }
                ports.insert(id.to_string(), Value::Dict(p));
            }
            d.insert("ports", Value::Dict(ports));
            endpoints.insert(network.clone(), Value::Dict(d));
        }
        // Per uid: ports (relays, TAPs) and leases held, against maxPortsPerUser.
        let mut users: std::collections::BTreeMap<u32, (i64, i64)> = Default::default();
        for l in st.leases.values() {
            let e = users.entry(l.uid).or_default();
            e.1 += 1;
            if l.port.is_some() {
                e.0 += 1;
            }
        }
        let max_ports = self.options.settings.max_ports_per_user as i64;
        let users = users.into_iter().fold(Dict::new(), |d, (uid, (ports, leases))| {
            let mut u = Dict::new().with("ports", Value::Int(ports)).with("leases", Value::Int(leases));
            // Root is not limited.
            if uid != 0 {
                u.insert("max_ports", Value::Int(max_ports));
            }
            d.with(uid.to_string(), Value::Dict(u))
        });
        let c = st.counters;
        let counters = Dict::new()
            .with("requests", Value::Int(c.requests as i64))
            .with("errors", Value::Int(c.errors as i64))
            .with("refused", Value::Int(c.refused as i64))
            .with("malformed", Value::Int(c.malformed as i64))
            .with("networks_created", Value::Int(c.networks_created as i64))
            .with("networks_released", Value::Int(c.networks_released as i64))
            .with("leases_granted", Value::Int(c.leases_granted as i64))
            .with("leases_released", Value::Int(c.leases_released as i64));
        let mut reply = Dict::new();
        // The configuration file could not be used at start: the broker
        // serves the last good one; this says which file and key are wrong.
        if let Some(e) = &self.options.config_error {
            reply.insert("config_error", Value::String(e.clone()));
        }
        reply
            .with("ok", Value::Bool(true))
            .with("version", Value::String(crate::VERSION.into()))
            .with("pid", Value::Int(std::process::id() as i64))
            .with("uptime_s", Value::Int(self.started.elapsed().as_secs() as i64))
            .with("endpoint", Value::String(self.endpoint.lock().unwrap_or_else(|e| e.into_inner()).clone()))
            .with("idle_timeout_s", Value::Int(self.options.settings.idle_timeout as i64))
            .with("exits_when_idle", Value::Bool(self.exits_when_idle().is_some()))
            .with("started_on_demand", Value::Bool(self.started_on_demand()))
            .with("connections", Value::Int(st.connections.len() as i64))
            .with("backend", Value::String(if self.options.backend == Backend::Hub { "hub" } else { "platform" }.into()))
            .with("known", Value::Dict(networks_list))
            .with("networks", Value::Dict(networks))
            .with("leases", Value::Dict(leases))
            .with("adaptors", Value::Dict(adaptors))
            .with("endpoints", Value::Dict(endpoints))
            .with("users", Value::Dict(users))
            .with("client_networks", Value::String(self.options.settings.client_networks.as_str().into()))
            .with("max_ports_per_user", Value::Int(max_ports))
            .with("counters", Value::Dict(counters))
    }
}

/// `{frames?, recv_bytes?, made, wanted_frames, note?}`: a datagram
/// endpoint's receive queue (docs/endpoints.md, "The receive queue").
fn queue_dict(q: &super::endpoints::DatagramQueue) -> Dict {
    let mut d = Dict::new().with("made", Value::String(q.made.as_str().into())).with("wanted_frames", Value::Int(super::endpoints::QUEUE_FRAMES as i64));
    if let Some(n) = q.frames {
        d.insert("frames", Value::Int(n as i64));
    }
    if let Some(n) = q.recv_bytes {
        d.insert("recv_bytes", Value::Int(n as i64));
    }
    if let Some(note) = q.note() {
        d.insert("note", Value::String(note));
    }
    d
}

/// `{stream: PATH, datagram: PATH}` for one network's endpoints.
fn endpoint_path_dict(kinds: &std::collections::BTreeMap<crate::config::EndpointKind, std::path::PathBuf>) -> Dict {
    kinds.iter().fold(Dict::new(), |d, (k, p)| d.with(k.as_str(), Value::String(p.display().to_string())))
}

/// Logs a policy refusal and turns it into the reply's failure.
fn refused(caller: &Caller, network: &str, r: policy::Refusal) -> Failure {
    log::warn!("refused uid {} pid {} network {network}: {}", caller.uid, caller.pid, r.reason);
    r.failure
}

/// The host route the subnet or prefix of `config` would collide with.
#[cfg(target_os = "linux")]
fn host_route_conflict(config: &NetworkConfig) -> Result<Option<String>, String> {
    crate::vmnet::linux::route_conflict(config).map_err(|e| e.to_string())
}

/// macOS: the routes are not read, so `clientNetworks: restricted` refuses
/// (docs/security.md); `any` and the owner are unaffected.
#[cfg(not(target_os = "linux"))]
fn host_route_conflict(config: &NetworkConfig) -> Result<Option<String>, String> {
    let _ = config;
    Err("the broker does not read the host's routes on this platform; use clientNetworks: any or none".into())
}

/// A relay's counters per direction as `status` shows them, each with
/// `queue_drops`: frames the interface's own queue dropped (a TAP's
/// `tx_dropped` on the way to the VM, `rx_dropped` on the way from it;
/// docs/protocol.md), 0 where the interface has no such counter.
fn direction_stats(a: &Adaptor) -> (Dict, Dict) {
    let s = a.stats();
    let dir = |x: &crate::adaptor::DirectionStats, queue: u64| {
        x.named().into_iter().fold(Dict::new(), |d, (name, value)| d.with(name, Value::Int(value as i64))).with("queue_drops", Value::Int(queue as i64))
    };
    #[cfg(target_os = "linux")]
    let q = a.device().and_then(|name| crate::vmnet::linux::link_drops(&name)).unwrap_or_default();
    #[cfg(target_os = "linux")]
    let (to_vm, from_vm) = (q.tx_dropped, q.rx_dropped);
    #[cfg(not(target_os = "linux"))]
    let (to_vm, from_vm) = (0, 0);
    (dir(&s.host_to_vm, to_vm), dir(&s.vm_to_host, from_vm))
}

/// One name as `resolve` and `status` give it.
fn answer_dict(a: &super::names::Answer) -> Dict {
    let mut d = Dict::new()
        .with("network", Value::String(a.network.clone()))
        .with("name", Value::String(a.name.clone()))
        .with("fqdn", Value::String(a.fqdn.clone()))
        .with("kind", Value::String(a.kind.into()));
    if let Some(x) = a.ipv4 {
        d.insert("address", Value::String(x.to_string()));
    }
    if let Some(x) = a.ipv6 {
        d.insert("address6", Value::String(x.to_string()));
    }
    if let Some(m) = a.mac {
        d.insert("mac", Value::String(m.to_string()));
    }
    d
}

/// The optional `name` of `open` and `acquire`: the DNS name the VM asks
/// to be granted (`broker::names`).
fn requested_name<'a>(args: &'a Args<'a>) -> Result<Option<&'a str>, Failure> {
    let n = args.str("name")?;
    if let Some(n) = n {
        super::names::check_requested(n)?;
    }
    Ok(n)
}

/// Records the granted name on lease `lease` and says it in the reply:
/// `name`, `fqdn`, `name_kind` (`granted`), `address` (and `address6`).
fn name_reply(st: &mut State, reply: &mut Dict, network: &str, lease: u64, g: &super::records::Grant) {
    if let Some(l) = st.leases.get_mut(&lease) {
        l.name = Some(g.name.clone());
    }
    let domain = st.domain(network).unwrap_or_default();
    reply.insert("name", Value::String(g.name.clone()));
    reply.insert("fqdn", Value::String(super::records::fqdn(&g.name, &domain)));
    reply.insert("name_kind", Value::String(super::records::NameKind::Granted.as_str().into()));
    reply.insert("address", Value::String(g.ipv4.to_string()));
    if let Some(a) = g.ipv6 {
        reply.insert("address6", Value::String(a.to_string()));
    }
}

/// The optional `vm_name` of `open` and `acquire`: the VM's name, shown in
/// status and in the log lines about its lease.
fn vm_name(args: &Args<'_>) -> Result<Option<String>, Failure> {
    match args.str("vm_name")? {
        Some(n) if n.is_empty() || n.len() > 64 || n.chars().any(char::is_control) => {
            Err(Failure::invalid(format!("vm_name {n:?} must be 1 to 64 printable characters")))
        }
        other => Ok(other.map(str::to_owned)),
    }
}

/// The MAC in a Lima `InterfaceDesc` (vmnet's `vmnet_mac_address_key`,
/// spelled as its string value `vmnet_mac_address`, or `mac`), if any.
fn lima_desc_mac(desc: &Dict) -> Option<[u8; 6]> {
    ["vmnet_mac_address", "mac_address", "mac"].iter().find_map(|k| desc.get_str(k)).and_then(|m| parse_mac(m).ok())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::broker::{Backend, BrokerOptions};
    use crate::config::ClientNetworks;

    /// A hub-backed core whose caller uid 4242 is allowed but is not the owner.
    fn core(client_networks: ClientNetworks, max_ports: u32) -> std::sync::Arc<Core> {
        let mut o = BrokerOptions::new();
        o.backend = Backend::Hub;
        o.settings.allowed_users = vec!["root".into(), "4242".into()];
        o.settings.allowed_groups = vec![];
        o.settings.client_networks = client_networks;
        o.settings.max_ports_per_user = max_ports;
        o.config_source = Some("/etc/vmnet-rs/networks.yaml".into());
        Core::new(o)
    }

    fn caller(connection: u64) -> Peer {
        Peer { uid: 4242, gid: 4242, pid: 7, connection }
    }

    fn cmd(command: &str) -> Dict {
        Dict::new().with("command", Value::String(command.into()))
    }

    const MINE: &[u8] = br#"{"mode":"host","subnet":"10.61.0.1/24"}"#;

    #[test]
    fn every_dialect_asks_the_policy_and_a_refusal_makes_nothing() {
        let c = core(ClientNetworks::None, 64);
        let requests = [
            cmd("acquire").with("network_name", Value::String("mine".into())).with("config", Value::Data(MINE.to_vec())),
            cmd("open").with("network", Value::String("mine".into())).with("fd_type", Value::String("datagram".into())).with("config", Value::Data(MINE.to_vec())),
            Dict::new().with("Network", Value::String("mine".into())).with("Configuration", Value::Data(MINE.to_vec())),
            Dict::new().with("Network", Value::String("mine".into())).with("FdType", Value::String("stream".into())),
        ];
        for r in requests {
            let reply = c.request(&caller(1), r);
            let text = reply.get_str("message").or(reply.get_str("Error")).unwrap_or_default();
            assert!(text.starts_with("network mine is not defined in /etc/vmnet-rs/networks.yaml; an administrator can add it"), "{reply:?}");
        }
        assert!(c.lock_state().networks.is_empty());
        // A configured network opens; the configuration's definition wins for a Lima client.
        let lima = Dict::new().with("Network", Value::String("host".into())).with("Configuration", Value::Data(MINE.to_vec()));
        let reply = c.request(&caller(1), lima);
        assert!(reply.get_str("ConfigurationDifference").is_some_and(|d| d.contains("subnet")), "{reply:?}");
        assert_eq!(c.lock_state().networks["host"].config.subnet().map(|s| s.to_string()).as_deref(), Some("192.168.108.1/24"));
        // Root defines as before.
        let root = Peer { uid: 0, gid: 0, pid: 1, connection: 9 };
        let reply = c.request(&root, cmd("acquire").with("network_name", Value::String("mine".into())).with("config", Value::Data(MINE.to_vec())));
        assert_eq!(reply.get_str("subnet"), Some("10.61.0.1/24"), "{reply:?}");
    }

    #[test]
    fn a_network_gone_at_a_port_start_is_made_again_once() {
        let c = core(ClientNetworks::None, 64);
        // Root defines a network of its own, named for this test alone (the
        // hub switches below are by name and process-wide).
        let root = |connection| Peer { uid: 0, gid: 0, pid: 1, connection };
        let open = || {
            cmd("open")
                .with("network", Value::String("regone".into()))
                .with("fd_type", Value::String("datagram".into()))
                .with("config", Value::Data(br#"{"mode":"host","subnet":"10.62.0.1/24"}"#.to_vec()))
        };
        let first = c.request(&root(1), open());
        assert!(first.get_int("lease").is_some(), "{first:?}");
        let created = || c.status().get_dict("counters").unwrap().get_int("networks_created").unwrap();
        assert_eq!(created(), 1);
        // The network looks alive until a port start finds it gone (vmnet's
        // network whose host interface went): made again, the port opens.
        assert!(crate::broker::testing::kill_at_next_start("regone") >= 1);
        let second = c.request(&root(2), open());
        assert!(second.get_int("lease").is_some(), "{second:?}");
        assert_eq!(created(), 2, "made again once");
        // Gone again at once: reported after one new attempt, not looped.
        assert!(crate::broker::testing::kill_at_next_start("regone") >= 1);
        crate::broker::testing::kill_new_at_first_start("regone", true);
        let third = c.request(&root(3), open());
        crate::broker::testing::kill_new_at_first_start("regone", false);
        assert_eq!(third.get_int("error"), Some(code::CREATE_FAILURE), "{third:?}");
        assert!(third.get_str("message").unwrap().contains("is gone"), "{third:?}");
        assert_eq!(created(), 3, "one more attempt only");
    }

    #[test]
    fn names_are_granted_once_resolved_shown_and_keep_their_address() {
        let c = core(ClientNetworks::None, 64);
        let root = |connection| Peer { uid: 0, gid: 0, pid: 1, connection };
        let open = |name: &str, mac: &str| {
            cmd("open")
                .with("network", Value::String("names".into()))
                .with("fd_type", Value::String("datagram".into()))
                .with("config", Value::Data(br#"{"mode":"host","subnet":"10.63.0.1/24"}"#.to_vec()))
                .with("mac", Value::String(mac.into()))
                .with("name", Value::String(name.into()))
        };
        let a = c.request(&root(1), open("alpha", "52:54:00:00:00:01"));
        assert_eq!(
            (a.get_str("name"), a.get_str("fqdn"), a.get_str("name_kind"), a.get_str("address")),
            (Some("alpha"), Some("alpha.names.vmnet.internal"), Some("granted"), Some("10.63.0.2")),
            "{a:?}"
        );
        // A second VM asking for the name, with the same MAC or another: refused, nothing left open.
        for mac in ["52:54:00:00:00:01", "52:54:00:00:00:02"] {
            let r = c.request(&root(2), open("alpha", mac));
            assert_eq!(r.get_int("error"), Some(code::NAME_TAKEN), "{r:?}");
            assert!(r.get_str("message").unwrap().contains("name \"alpha\" is held on network names"), "{r:?}");
        }
        assert_eq!(c.lock_state().leases.len(), 1);
        let bad = c.request(&root(2), open("al_pha", "52:54:00:00:00:02"));
        assert_eq!(bad.get_int("error"), Some(code::INVALID_REQUEST), "{bad:?}");
        let b = c.request(&root(3), open("beta", "52:54:00:00:00:03"));
        assert_eq!(b.get_str("address"), Some("10.63.0.3"), "{b:?}");
        // resolve: short, qualified, by address; the gateway as host.
        let resolve = |q: &str| c.request(&root(4), cmd("resolve").with("name", Value::String(q.into())));
        for q in ["alpha", "alpha.names", "ALPHA.names.vmnet.internal.", "10.63.0.2"] {
            let r = resolve(q);
            let a = r.get_dict("answers").and_then(|d| d.get_dict("names/alpha")).unwrap_or_else(|| panic!("{q}: {r:?}"));
            assert_eq!((a.get_str("address"), a.get_str("kind")), (Some("10.63.0.2"), Some("granted")), "{q}");
        }
        let host = resolve("host.names.vmnet.internal");
        assert_eq!(host.get_dict("answers").and_then(|d| d.get_dict("names/host")).and_then(|h| h.get_str("address")), Some("10.63.0.1"), "{host:?}");
        assert_eq!(resolve("gamma").get_int("error"), Some(code::NOT_FOUND));
        // status: the lease's name, the network's names.
        let status = c.status();
        let lease = status.get_dict("leases").unwrap().get_dict(&a.get_int("lease").unwrap().to_string()).unwrap().try_clone().unwrap();
        assert_eq!((lease.get_str("name"), lease.get_str("name_kind"), lease.get_str("address")), (Some("alpha"), Some("granted"), Some("10.63.0.2")));
        let net = status.get_dict("networks").unwrap().get_dict("names").unwrap().try_clone().unwrap();
        assert_eq!(net.get_str("domain"), Some("names.vmnet.internal"));
        assert!(net.get_dict("names").unwrap().get_dict("beta").is_some(), "{net:?}");
        // alpha goes: its name is no longer served; back under another MAC: its address again.
        assert_eq!(c.request(&root(1), cmd("release").with("lease", Value::Int(a.get_int("lease").unwrap()))).get_int("released"), Some(1));
        assert_eq!(resolve("alpha").get_int("error"), Some(code::NOT_FOUND));
        let again = c.request(&root(5), open("alpha", "52:54:00:00:00:09"));
        assert_eq!(again.get_str("address"), Some("10.63.0.2"), "{again:?}");
    }

    #[test]
    fn port_quota_spans_connections_and_frees_on_release() {
        let c = core(ClientNetworks::None, 2);
        let open = || cmd("open").with("network", Value::String("shared".into())).with("fd_type", Value::String("datagram".into()));
        let first = c.request(&caller(1), open());
        assert!(first.get_int("lease").is_some(), "{first:?}");
        assert!(c.request(&caller(2), open()).get_int("lease").is_some());
        let refused = c.request(&caller(3), open());
        assert_eq!(refused.get_int("error"), Some(code::LIMIT), "{refused:?}");
        assert!(refused.get_str("message").unwrap().contains("(maxPortsPerUser: 2)"));
        let users = c.status().get_dict("users").unwrap().get_dict("4242").unwrap().try_clone().unwrap();
        assert_eq!((users.get_int("ports"), users.get_int("max_ports")), (Some(2), Some(2)));
        let lease = first.get_int("lease").unwrap();
        assert_eq!(c.request(&caller(1), cmd("release").with("lease", Value::Int(lease))).get_int("released"), Some(1));
        assert!(c.request(&caller(3), open()).get_int("lease").is_some());
        c.disconnected(&caller(2));
        assert!(c.request(&caller(4), open()).get_int("lease").is_some());
    }
}

/// A service port's status as a message value (`status`, `docs/protocol.md`).
fn service_status(sv: &super::service::ServiceStatus) -> Value {
    let c = &sv.counters;
    let mut counters = Dict::new();
    for (k, v) in [
        ("frames", c.frames),
        ("ignored", c.ignored),
        ("malformed_frames", c.malformed_frames),
        ("arp_replies", c.arp_replies),
        ("dhcp_requests", c.dhcp_requests),
        ("dhcp_offers", c.dhcp_offers),
        ("dhcp_acks", c.dhcp_acks),
        ("dhcp_naks", c.dhcp_naks),
        ("dhcp_releases", c.dhcp_releases),
        ("dhcp_unanswered", c.dhcp_unanswered),
        ("malformed_dhcp", c.malformed_dhcp),
        ("dns_queries", c.dns_queries),
        ("dns_answered", c.dns_answered),
        ("dns_forwarded", c.dns_forwarded),
        ("dns_failed", c.dns_failed),
        ("malformed_dns", c.malformed_dns),
        ("write_drops", sv.write_drops),
    ] {
        counters.insert(k, Value::Int(v as i64));
    }
    let mut d = Dict::new()
        .with("address", Value::String(sv.address.clone()))
        .with("mac", Value::String(sv.mac.clone()))
        .with("domain", Value::String(sv.domain.clone()))
        .with("running", Value::Bool(sv.running))
        .with("upstreams", Value::String(sv.upstreams.join(" ")))
        .with("counters", Value::Dict(counters));
    if let Some(e) = &sv.error {
        d.insert("error", Value::String(e.clone()));
    }
    Value::Dict(d)
}

impl Core {
    /// Runs a function under the state lock from another thread, while the
    /// broker lives (the service port's way to its network's records).
    fn with_state(&self) -> super::service::WithState {
        let me = self.me.clone();
        std::sync::Arc::new(move |f: &mut dyn FnMut(&mut State)| match me.upgrade() {
            Some(core) => {
                f(&mut core.lock_state());
                true
            }
            None => false,
        })
    }
}
