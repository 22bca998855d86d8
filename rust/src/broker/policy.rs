//! Who may use a network, who may define one, and how many ports one user
//! may hold (docs/security.md).
//!
//! [`auth`](super::auth) decides who may talk to the broker at all; this
//! module decides, for every request that names a network (our `open`,
//! vmnet-broker's `acquire`, Lima's `Network`/`Configuration`, the path
//! endpoints), whether the caller may use that network and whether its own
//! configuration may create it. The rules:
//!
//! - The broker's *owner* (root, or the user the broker runs as) may use and
//!   define any network, as before these rules existed.
//! - Anyone else may use a network only if its access lists
//!   ([`network_access`]) list them: a network that names either
//!   `allowedUsers` or `allowedGroups` takes neither from the broker (the one
//!   it leaves unset is empty: fail closed); one that names neither takes
//!   both of the broker's.
//! - Anyone else may use a configured network, and a live one when
//!   `clientNetworks` is not `none`; the configuration's definition wins
//!   over theirs.
//! - Anyone else may create a missing network from their own configuration
//!   only as `clientNetworks` says: `none` never, `any` always, `restricted`
//!   without host ports below 1024, without `externalInterface`, and with a
//!   subnet (and IPv6 prefix, and forwarded ports) that collide with no
//!   configured network, no live network and no route of the host.
//! - Root aside, a user holds at most `maxPortsPerUser` ports across all its
//!   connections.
//!
//! [`decide`] and [`check_port_quota`] are pure: everything they look at
//! comes in [`Facts`], so the rules of each platform are tested anywhere.

use std::collections::BTreeMap;

use super::protocol::{code, Failure};
use crate::config::{AddressFamily, BrokerSettings, ClientNetworks, NetworkConfig, Protocol};

/// Host ports below this are privileged: only the configuration may forward them.
pub const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

/// Who is asking, as the transport saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

impl From<&crate::xpc::Peer> for Caller {
    fn from(p: &crate::xpc::Peer) -> Caller {
        Caller { uid: p.uid, gid: p.gid, pid: p.pid }
    }
}

/// The user and group databases, as the policy needs them.
pub trait Accounts {
    /// Whether `uid` (primary group `gid`) is one of `users` or in one of `groups`.
    fn is_listed(&self, users: &[String], groups: &[String], uid: u32, gid: u32) -> bool;
    /// A user's name for messages (the number when unknown).
    fn user_name(&self, uid: u32) -> String;
}

/// The system's databases (passwd and group).
pub struct SystemAccounts;

impl Accounts for SystemAccounts {
    fn is_listed(&self, users: &[String], groups: &[String], uid: u32, gid: u32) -> bool {
        super::auth::is_listed(users, groups, uid, gid)
    }

    fn user_name(&self, uid: u32) -> String {
        super::auth::display_user(uid)
    }
}

/// Everything a decision looks at.
pub struct Facts<'a> {
    pub settings: &'a BrokerSettings,
    /// The networks of the broker's configuration (or the built-ins).
    pub configured: &'a BTreeMap<String, NetworkConfig>,
    /// The file the configuration came from; `None`: the built-in networks.
    pub config_source: Option<&'a str>,
    /// Live networks, with the subnet they really got filled in.
    pub live: &'a BTreeMap<String, NetworkConfig>,
    /// The uid the broker runs as.
    pub broker_uid: u32,
    pub accounts: &'a dyn Accounts,
    /// The host route a network's subnet or prefix would collide with, if
    /// any (Linux: the broker's network namespace); `Err` when the routes
    /// cannot be read.
    pub route_conflict: &'a dyn Fn(&NetworkConfig) -> Result<Option<String>, String>,
}

impl Facts<'_> {
    /// Root or the broker's own user.
    pub fn is_owner(&self, caller: &Caller) -> bool {
        caller.uid == 0 || caller.uid == self.broker_uid
    }

    fn source(&self) -> String {
        match self.config_source {
            Some(f) => f.to_owned(),
            None => "the built-in networks".to_owned(),
        }
    }

    fn not_defined(&self, network: &str) -> String {
        format!("network {network} is not defined in {}; an administrator can add it", self.source())
    }
}

/// What a caller may do with a network it may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Use it as configured or live; a configuration the caller sent is
    /// only compared with it.
    Use,
    /// The caller's own configuration may create it (or, for the owner of a
    /// configured network, replace the configured one for a Lima client, as
    /// Lima does).
    Define,
}

/// A refusal: the reply's failure, and the short reason for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub failure: Failure,
    pub reason: &'static str,
}

fn refuse(code: i64, reason: &'static str, message: String) -> Refusal {
    Refusal { failure: Failure::new(code, message), reason }
}

/// Decides whether `caller` may use network `network`, sending `client`'s
/// configuration (if any), and whether that configuration may define it.
pub fn decide(facts: &Facts<'_>, caller: &Caller, network: &str, client: Option<&NetworkConfig>) -> Result<Verdict, Refusal> {
    let owner = facts.is_owner(caller);
    let configured = facts.configured.get(network);
    let live = facts.live.get(network);
    if !owner {
        if let Some(known) = configured.or(live) {
            check_network_access(facts, caller, network, known)?;
        }
    }
    if owner {
        return Ok(Verdict::Define);
    }
    if configured.is_some() {
        return Ok(Verdict::Use);
    }
    let mode = facts.settings.client_networks;
    if live.is_some() {
        if mode == ClientNetworks::None {
            return Err(refuse(
                code::NOT_ALLOWED,
                "not configured (live, defined by its owner)",
                format!("{} (it is live, defined at run time by the broker's owner)", facts.not_defined(network)),
            ));
        }
        return Ok(Verdict::Use);
    }
    let Some(config) = client else {
        let hint = if mode == ClientNetworks::None { "" } else { ", or send its configuration with the request" };
        return Err(refuse(code::NOT_FOUND, "not configured", format!("{}{hint}", facts.not_defined(network))));
    };
    match mode {
        ClientNetworks::None => Err(refuse(
            code::NOT_ALLOWED,
            "not configured (clientNetworks: none)",
            format!("{} (callers may not define networks: clientNetworks is none)", facts.not_defined(network)),
        )),
        ClientNetworks::Any => Ok(Verdict::Define),
        ClientNetworks::Restricted => check_restricted(facts, network, config).map(|()| Verdict::Define),
    }
}

/// Who besides the broker's owner may use a network: (users, groups). A
/// network that names either of `allowedUsers` / `allowedGroups` has only
/// its own lists, an unnamed one empty (whoever writes one list means "only
/// these"); a network that names neither has the broker's (docs/config.md).
pub fn network_access<'a>(config: &'a NetworkConfig, settings: &'a BrokerSettings) -> (&'a [String], &'a [String]) {
    if config.has_own_access() {
        (config.allowed_users().unwrap_or(&[]), config.allowed_groups().unwrap_or(&[]))
    } else {
        (&settings.allowed_users, &settings.allowed_groups)
    }
}

fn check_network_access(facts: &Facts<'_>, caller: &Caller, network: &str, config: &NetworkConfig) -> Result<(), Refusal> {
    let (users, groups) = network_access(config, facts.settings);
    if facts.accounts.is_listed(users, groups, caller.uid, caller.gid) {
        return Ok(());
    }
    let name = facts.accounts.user_name(caller.uid);
    Err(refuse(
        code::NOT_ALLOWED,
        "not in the network's allowedUsers/allowedGroups",
        format!(
            "user {name} (uid {}) may not use network {network}: it allows users [{}], groups [{}]; an administrator can add the user to its allowedUsers or allowedGroups in {}",
            caller.uid,
            users.join(", "),
            groups.join(", "),
            facts.source()
        ),
    ))
}

/// `clientNetworks: restricted`: what a caller's own network may not do.
fn check_restricted(facts: &Facts<'_>, network: &str, config: &NetworkConfig) -> Result<(), Refusal> {
    let refused = |reason: &'static str, what: String| {
        refuse(
            code::NOT_ALLOWED,
            reason,
            format!("network {network}: {what} (clientNetworks: restricted); {}", facts.not_defined(network)),
        )
    };
    if let Some(ext) = config.external_interface() {
        return Err(refused("externalInterface", format!("externalInterface {ext:?} is not allowed in a caller's network")));
    }
    for (i, pf) in config.port_forwarding().iter().enumerate() {
        if pf.external_port < FIRST_UNPRIVILEGED_PORT {
            return Err(refused(
                "privileged port forward",
                format!(
                    "portForwarding[{i}] forwards host port {} {}/{}, below {FIRST_UNPRIVILEGED_PORT}; forward a host port of {FIRST_UNPRIVILEGED_PORT} or more",
                    pf.external_port, pf.protocol, pf.address_family
                ),
            ));
        }
    }
    let Some(subnet) = config.subnet() else {
        return Err(refused("no subnet", "a caller's network needs a subnet, so it can be checked against every other".into()));
    };
    let prefix = config.ipv6_prefix();
    let others = facts
        .configured
        .iter()
        .map(|(n, c)| (n, c, "configured"))
        .chain(facts.live.iter().filter(|(n, _)| !facts.configured.contains_key(*n)).map(|(n, c)| (n, c, "live")));
    let mut forwarded: std::collections::HashMap<(Protocol, AddressFamily, u16), &str> = Default::default();
    for (other, c, kind) in others {
        if let Some(theirs) = c.subnet() {
            if subnet.overlaps(&theirs) {
                return Err(refused("subnet collides", format!("subnet {subnet} overlaps {theirs} of {kind} network {other}; choose another subnet")));
            }
        }
        if let (Some(mine), Some(theirs)) = (&prefix, c.ipv6_prefix()) {
            if mine.overlaps(&theirs) {
                return Err(refused("ipv6Prefix collides", format!("ipv6Prefix {mine} overlaps {theirs} of {kind} network {other}; choose another prefix")));
            }
        }
        for pf in c.port_forwarding() {
            forwarded.insert((pf.protocol, pf.address_family, pf.external_port), other.as_str());
        }
    }
    for pf in config.port_forwarding() {
        if let Some(other) = forwarded.get(&(pf.protocol, pf.address_family, pf.external_port)) {
            return Err(refused(
                "port forward collides",
                format!("host port {} {}/{} is already forwarded by network {other}; forward another port", pf.external_port, pf.protocol, pf.address_family),
            ));
        }
    }
    match (facts.route_conflict)(config) {
        Ok(None) => Ok(()),
        Ok(Some(route)) => Err(refused("subnet collides with a host route", format!("subnet {subnet} collides with the host's route {route}; choose another subnet"))),
        Err(e) => Err(refused("host routes unreadable", format!("the host's routes cannot be read to check subnet {subnet}: {e}"))),
    }
}

/// Whether `caller`, already holding `held` ports, may start one more.
pub fn check_port_quota(facts: &Facts<'_>, caller: &Caller, held: usize) -> Result<(), Refusal> {
    let max = facts.settings.max_ports_per_user as usize;
    if caller.uid == 0 || held < max {
        return Ok(());
    }
    let name = facts.accounts.user_name(caller.uid);
    Err(refuse(
        code::LIMIT,
        "port quota reached",
        format!(
            "user {name} (uid {}) already holds {held} ports, the most one user may (maxPortsPerUser: {max}); close a VM's network first, or an administrator can raise maxPortsPerUser in {}",
            caller.uid,
            facts.source()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, Ipv4Subnet};

    /// uid 1000 is alice (group 100, and member of `lab`, gid 500); 1001 is bob (group 100).
    struct Fake;
    impl Accounts for Fake {
        fn is_listed(&self, users: &[String], groups: &[String], uid: u32, gid: u32) -> bool {
            let name = match uid {
                1000 => "alice",
                1001 => "bob",
                _ => "",
            };
            let mut member = vec![gid];
            if uid == 1000 {
                member.push(500);
            }
            users.iter().any(|u| u == name || *u == uid.to_string())
                || groups.iter().any(|g| match g.as_str() {
                    "users" => member.contains(&100),
                    "lab" => member.contains(&500),
                    n => n.parse::<u32>().is_ok_and(|id| member.contains(&id)),
                })
        }
        fn user_name(&self, uid: u32) -> String {
            match uid {
                1000 => "alice".into(),
                1001 => "bob".into(),
                n => n.to_string(),
            }
        }
    }

    struct World {
        file: FileConfig,
        live: BTreeMap<String, NetworkConfig>,
        broker_uid: u32,
        routes: Vec<(Ipv4Subnet, &'static str)>,
    }

    impl World {
        /// The Linux shape: a root broker letting group `users` in.
        fn linux(client_networks: ClientNetworks) -> World {
            let mut file = FileConfig::default();
            file.broker.allowed_groups = vec!["users".into()];
            file.broker.client_networks = client_networks;
            file.networks.insert("lab".into(), NetworkConfig::test(serde_json::json!({"mode": "host", "subnet": "10.40.0.1/24", "allowedGroups": ["lab"]})));
            let routes = vec![(Ipv4Subnet::parse("172.17.0.0/16", 8, 29).unwrap(), "172.17.0.0/16 dev docker0")];
            World { file, live: BTreeMap::new(), broker_uid: 0, routes }
        }

        /// The macOS shape: alice's own per-user agent with its defaults.
        fn macos() -> World {
            let mut file = FileConfig::default();
            file.broker.client_networks = ClientNetworks::default_for("macos");
            World { file, live: BTreeMap::new(), broker_uid: 1000, routes: Vec::new() }
        }

        fn with<R>(&self, f: impl FnOnce(&Facts<'_>) -> R) -> R {
            let routes = |c: &NetworkConfig| -> Result<Option<String>, String> {
                let mine = c.subnet().ok_or("no subnet")?;
                Ok(self.routes.iter().find(|(r, _)| r.overlaps(&mine)).map(|(_, d)| d.to_string()))
            };
            let facts = Facts {
                settings: &self.file.broker,
                configured: &self.file.networks,
                config_source: Some("/etc/vmnet-rs/networks.yaml"),
                live: &self.live,
                broker_uid: self.broker_uid,
                accounts: &Fake,
                route_conflict: &routes,
            };
            f(&facts)
        }

        fn decide(&self, uid: u32, network: &str, client: Option<&NetworkConfig>) -> Result<Verdict, Refusal> {
            self.with(|f| decide(f, &Caller { uid, gid: 100, pid: 42 }, network, client))
        }
    }

    const ROOT: u32 = 0;
    const ALICE: u32 = 1000;
    const BOB: u32 = 1001;

    fn mine(subnet: &str) -> NetworkConfig {
        mine_with(subnet, serde_json::json!({}))
    }

    /// A network on `subnet` with `extra` keys.
    fn mine_with(subnet: &str, extra: serde_json::Value) -> NetworkConfig {
        let mut v = serde_json::json!({ "subnet": subnet });
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        NetworkConfig::test(v)
    }

    /// `portForwarding` with host port `port` to the `.10` of `subnet`.
    fn forward(port: u16, subnet: &str) -> serde_json::Value {
        let s: Ipv4Subnet = subnet.parse().unwrap();
        let vm = std::net::Ipv4Addr::from(u32::from(s.network()) + 10);
        serde_json::json!({"portForwarding": [{"protocol": "tcp", "externalPort": port, "internalAddress": vm.to_string(), "internalPort": 80}]})
    }

    #[test]
    fn linux_default_callers_use_configured_networks_only() {
        let w = World::linux(ClientNetworks::default_for("linux"));
        assert_eq!(w.decide(ALICE, "shared", None), Ok(Verdict::Use));
        assert_eq!(w.decide(ALICE, "shared", Some(&mine("10.60.0.1/24"))), Ok(Verdict::Use), "the configured definition wins");
        for client in [None, Some(mine("10.60.0.1/24"))] {
            let r = w.decide(ALICE, "mine", client.as_ref()).unwrap_err();
            assert!(r.failure.message.starts_with("network mine is not defined in /etc/vmnet-rs/networks.yaml; an administrator can add it"), "{r:?}");
            let want = if client.is_some() { code::NOT_ALLOWED } else { code::NOT_FOUND };
            assert_eq!(r.failure.code, want);
        }
        // Root defines, with or without a configuration (the request path
        // reports an unknown network without one).
        assert_eq!(w.decide(ROOT, "mine", Some(&mine("10.60.0.1/24"))), Ok(Verdict::Define));
        assert_eq!(w.decide(ROOT, "shared", Some(&mine("10.60.0.1/24"))), Ok(Verdict::Define));
    }

    #[test]
    fn built_in_networks_are_named_as_such() {
        let w = World::linux(ClientNetworks::None);
        let facts_msg = w.with(|f| {
            let f2 = Facts { config_source: None, ..*f };
            decide(&f2, &Caller { uid: ALICE, gid: 100, pid: 1 }, "x", None).unwrap_err().failure.message
        });
        assert_eq!(facts_msg, "network x is not defined in the built-in networks; an administrator can add it");
    }

    #[test]
    fn live_networks_of_the_owner_need_client_networks() {
        let mut w = World::linux(ClientNetworks::None);
        w.live.insert("rootnet".into(), mine("10.70.0.1/24"));
        let r = w.decide(ALICE, "rootnet", None).unwrap_err();
        assert_eq!(r.failure.code, code::NOT_ALLOWED);
        assert!(r.failure.message.contains("is live, defined at run time"), "{r:?}");
        w.file.broker.client_networks = ClientNetworks::Restricted;
        assert_eq!(w.decide(ALICE, "rootnet", None), Ok(Verdict::Use));
    }

    #[test]
    fn per_network_acl_narrows_the_brokers() {
        let w = World::linux(ClientNetworks::Any);
        assert_eq!(w.decide(ALICE, "lab", None), Ok(Verdict::Use));
        let r = w.decide(BOB, "lab", None).unwrap_err();
        assert_eq!(r.failure.code, code::NOT_ALLOWED);
        assert_eq!(
            r.failure.message,
            "user bob (uid 1001) may not use network lab: it allows users [], groups [lab]; an administrator can add the user to its allowedUsers or allowedGroups in /etc/vmnet-rs/networks.yaml"
        );
        assert_eq!(w.decide(ROOT, "lab", None), Ok(Verdict::Define));
        // A live network's own list applies too.
        let mut w = World::linux(ClientNetworks::Any);
        w.live.insert("alices".into(), mine_with("10.80.0.1/24", serde_json::json!({"allowedUsers": ["alice"], "allowedGroups": []})));
        assert!(w.decide(BOB, "alices", None).is_err());
        assert_eq!(w.decide(ALICE, "alices", None), Ok(Verdict::Use));
    }

    #[test]
    fn one_named_list_leaves_the_other_empty() {
        // Bob is in the broker's group `users`; a network naming only
        // allowedUsers (or only allowedGroups) must not let him in through it.
        let mut w = World::linux(ClientNetworks::Any);
        w.file.networks.insert("onlyalice".into(), mine_with("10.81.0.1/24", serde_json::json!({"allowedUsers": ["alice"]})));
        w.file.networks.insert("onlylab".into(), mine_with("10.82.0.1/24", serde_json::json!({"allowedGroups": ["lab"]})));
        w.file.networks.insert("brokers".into(), mine("10.83.0.1/24"));
        let r = w.decide(BOB, "onlyalice", None).unwrap_err();
        assert_eq!(r.failure.code, code::NOT_ALLOWED);
        assert!(r.failure.message.contains("it allows users [alice], groups []"), "{r:?}");
        assert_eq!(w.decide(ALICE, "onlyalice", None), Ok(Verdict::Use));
        let r = w.decide(BOB, "onlylab", None).unwrap_err();
        assert!(r.failure.message.contains("it allows users [], groups [lab]"), "{r:?}");
        assert_eq!(w.decide(ALICE, "onlylab", None), Ok(Verdict::Use), "alice is in lab");
        // Naming neither keeps the broker's lists.
        assert_eq!(w.decide(BOB, "brokers", None), Ok(Verdict::Use));
        let (users, groups) = network_access(&w.file.networks["onlyalice"], &w.file.broker);
        assert_eq!((users, groups), (&["alice".to_string()][..], &[][..]));
        assert_eq!(network_access(&w.file.networks["brokers"], &w.file.broker), (&["root".to_string()][..], &["users".to_string()][..]));
    }

    #[test]
    fn restricted_refuses_what_takes_over_the_host() {
        let w = World::linux(ClientNetworks::Restricted);
        let ok = mine_with("10.60.0.1/24", forward(8080, "10.60.0.1/24"));
        assert_eq!(w.decide(ALICE, "mine", Some(&ok)), Ok(Verdict::Define));
        let cases: Vec<(NetworkConfig, &str)> = vec![
            (mine_with("10.60.0.1/24", forward(80, "10.60.0.1/24")), "forwards host port 80 tcp/ipv4, below 1024"),
            (mine_with("10.60.0.1/24", serde_json::json!({"externalInterface": "eth0"})), "externalInterface \"eth0\" is not allowed"),
            (NetworkConfig::test(serde_json::json!({})), "needs a subnet"),
            (mine("192.168.107.1/25"), "overlaps 192.168.107.1/24 of configured network shared"),
            (mine("10.40.0.1/16"), "overlaps 10.40.0.1/24 of configured network lab"),
            (mine("172.17.5.1/24"), "collides with the host's route 172.17.0.0/16 dev docker0"),
        ];
        for (config, want) in cases {
            let r = w.decide(ALICE, "mine", Some(&config)).unwrap_err();
            assert_eq!(r.failure.code, code::NOT_ALLOWED);
            assert!(r.failure.message.contains(want), "{want}: {}", r.failure.message);
            assert!(r.failure.message.contains("(clientNetworks: restricted)"), "{}", r.failure.message);
            // Root is not restricted (the backend still checks routes).
            assert_eq!(w.decide(ROOT, "mine", Some(&config)), Ok(Verdict::Define));
        }
        let mut w = World::linux(ClientNetworks::Restricted);
        w.live.insert("bobs".into(), mine_with("10.90.0.1/24", forward(8080, "10.90.0.1/24")));
        let r = w.decide(ALICE, "mine", Some(&mine("10.90.0.1/28"))).unwrap_err();
        assert!(r.failure.message.contains("of live network bobs"), "{r:?}");
        let r = w.decide(ALICE, "mine", Some(&ok)).unwrap_err();
        assert!(r.failure.message.contains("host port 8080 tcp/ipv4 is already forwarded by network bobs"), "{r:?}");
    }

    #[test]
    fn macos_keeps_limas_behaviour() {
        let w = World::macos();
        assert_eq!(w.file.broker.client_networks, ClientNetworks::Any);
        // The agent's own user (and root) define networks from a client's
        // configuration, as Lima's vmnet-broker does.
        let lima = mine_with("10.60.0.1/24", forward(80, "10.60.0.1/24"));
        assert_eq!(w.decide(ALICE, "lima-net", Some(&lima)), Ok(Verdict::Define));
        assert_eq!(w.decide(ROOT, "lima-net", Some(&lima)), Ok(Verdict::Define));
        assert_eq!(w.decide(ALICE, "shared", Some(&lima)), Ok(Verdict::Define));
        assert_eq!(w.decide(ALICE, "shared", None), Ok(Verdict::Define));
    }

    #[test]
    fn port_quota_per_user() {
        let mut w = World::linux(ClientNetworks::None);
        w.file.broker.max_ports_per_user = 2;
        w.with(|f| {
            let alice = Caller { uid: ALICE, gid: 100, pid: 1 };
            assert!(check_port_quota(f, &alice, 0).is_ok());
            assert!(check_port_quota(f, &alice, 1).is_ok());
            let r = check_port_quota(f, &alice, 2).unwrap_err();
            assert_eq!(r.failure.code, code::LIMIT);
            assert!(r.failure.message.starts_with("user alice (uid 1000) already holds 2 ports, the most one user may (maxPortsPerUser: 2)"), "{r:?}");
            assert!(check_port_quota(f, &Caller { uid: 0, gid: 0, pid: 1 }, 1000).is_ok());
        });
    }
}
