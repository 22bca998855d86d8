//! Who may call the broker.
//!
//! Linux: the caller's uid (SO_PEERCRED) must be one of the allowed users,
//! or the caller's primary group or one of the user's groups (from the group
//! database) one of the allowed groups. Names are resolved on every check,
//! so a user added to the group is allowed without a broker restart (after
//! a new login, as for any group change). macOS: the LaunchAgent is per
//! user, so the broker's own user and root are allowed.
//! Runs on the request thread; reads the passwd/group databases only.
//!
//! The transports are handed these rules ([`TransportPolicy`], a
//! [`PeerPolicy`]; [`listener_requirement`] for the macOS listener): which
//! callers they admit and which requests need the broker's own executable
//! (Lima's serialization rule before macOS 26.2).

use std::ffi::{CStr, CString};

use nix::unistd::{Group, Uid, User};

use crate::config::BrokerSettings;
use crate::xpc::peer_policy::{ListenerRequirement, PeerPolicy};
use crate::xpc::{Dict, Peer};

/// The default allow-list: root and the `vmnet-rs` group.
pub const DEFAULT_GROUP: &str = "vmnet-rs";

/// Whether `peer` may use the broker; `Err` says why not and what to do.
#[cfg(target_os = "macos")]
pub fn check(settings: &BrokerSettings, peer: &Peer) -> Result<(), String> {
    let _ = settings;
    // SAFETY: getuid cannot fail.
    let me = unsafe { libc::getuid() };
    if peer.uid == me || peer.uid == 0 {
        return Ok(());
    }
    Err(format!("uid {} may not use the broker of uid {me} (it is a per-user LaunchAgent)", peer.uid))
}

/// Whether `peer` may use the broker; `Err` says why not and what to do.
#[cfg(not(target_os = "macos"))]
pub fn check(settings: &BrokerSettings, peer: &Peer) -> Result<(), String> {
    if is_listed(&settings.allowed_users, &settings.allowed_groups, peer.uid, peer.gid) {
        return Ok(());
    }
    let name = display_user(peer.uid);
    Err(format!(
        "user {name} (uid {}, pid {}) is not allowed to use the broker; allowed users: [{}], groups: [{}]; \
         add the user to one of the groups (e.g. `usermod -aG {DEFAULT_GROUP} {name}`) or to allowedUsers in the broker config",
        peer.uid,
        peer.pid,
        settings.allowed_users.join(", "),
        settings.allowed_groups.join(", "),
    ))
}

/// Whether uid `uid` (primary group `gid`) is one of `users` or a member of
/// one of `groups` (names or numeric ids; the group database is read now).
pub fn is_listed(users: &[String], groups: &[String], uid: u32, gid: u32) -> bool {
    if users.iter().any(|u| user_matches(u, uid)) {
        return true;
    }
    if groups.is_empty() {
        return false;
    }
    let member_of = groups_of(uid, gid);
    groups.iter().any(|g| group_id(g).is_some_and(|id| member_of.contains(&id)))
}

/// `name` for a uid the passwd database knows, else the number.
pub fn display_user(uid: u32) -> String {
    user_name(uid).unwrap_or_else(|| uid.to_string())
}

/// Whether `peer` may stop the broker: root or the broker's own user.
pub fn may_shutdown(peer: &Peer) -> bool {
    // SAFETY: getuid cannot fail.
    peer.uid == 0 || peer.uid == unsafe { libc::getuid() }
}

fn user_matches(spec: &str, uid: u32) -> bool {
    match spec.parse::<u32>() {
        Ok(n) => n == uid,
        Err(_) => user_id(spec) == Some(uid),
    }
}

fn user_id(name: &str) -> Option<u32> {
    match User::from_name(name) {
        Ok(u) => u.map(|u| u.uid.as_raw()),
        Err(e) => {
            log::warn!("cannot read user {name:?} from the user database: {e}");
            None
        }
    }
}

fn user_name(uid: u32) -> Option<String> {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(u) => u.map(|u| u.name),
        Err(e) => {
            log::warn!("cannot read user {uid} from the user database: {e}");
            None
        }
    }
}

/// Whether an allowedUsers entry names root or the broker's own user.
#[cfg(not(target_os = "macos"))]
pub fn is_root_or_self(spec: &str) -> bool {
    // SAFETY: getuid cannot fail.
    let me = unsafe { libc::getuid() };
    user_matches(spec, 0) || user_matches(spec, me)
}

/// The gid of a group name or number, if it exists.
pub fn group_id(spec: &str) -> Option<u32> {
    if let Ok(n) = spec.parse::<u32>() {
        return Some(n);
    }
    // nix grows the buffer getgrnam_r needs (up to 1 MiB of member
    // names), so a large group is found, not taken for a missing one.
    match Group::from_name(spec) {
        Ok(g) => g.map(|g| g.gid.as_raw()),
        Err(e) => {
            log::warn!("cannot read group {spec:?} from the group database: {e}");
            None
        }
    }
}

/// The primary gid plus every group the user is a member of.
fn groups_of(uid: u32, gid: u32) -> Vec<u32> {
    let mut out = vec![gid];
    let Some(name) = user_name(uid).and_then(|n| CString::new(n).ok()) else {
        return out;
    };
    match supplementary_groups(&name, gid) {
        Ok(groups) => out.extend(groups),
        Err(e) => log::warn!("cannot list the groups of user {uid}: {e}"),
    }
    out
}

/// Every group `name` is a member of (nix grows the list as needed).
#[cfg(not(target_vendor = "apple"))]
fn supplementary_groups(name: &CStr, gid: u32) -> nix::Result<Vec<u32>> {
    Ok(nix::unistd::getgrouplist(name, nix::unistd::Gid::from_raw(gid))?.into_iter().map(|g| g.as_raw()).collect())
}

/// Every group `name` is a member of. nix has no getgrouplist on Apple
/// platforms; macOS (<unistd.h>): getgrouplist(const char *, int, int *,
/// int *), which returns -1 when the list is too small: try again with
/// twice the room, up to NGROUPS_MAX-like bounds.
#[cfg(target_vendor = "apple")]
fn supplementary_groups(name: &CStr, gid: u32) -> nix::Result<Vec<u32>> {
    let mut room: libc::c_int = 64;
    while room <= 65_536 {
        let mut groups = vec![0 as libc::c_int; room as usize];
        let mut n = room;
        // SAFETY: groups holds `n` entries; getgrouplist writes at most `n`
        // and sets `n` to the count it wrote.
        let r = unsafe { libc::getgrouplist(name.as_ptr(), gid as libc::c_int, groups.as_mut_ptr(), &mut n) };
        if r >= 0 {
            return Ok(groups.iter().take(n.max(0) as usize).map(|g| *g as u32).collect());
        }
        room *= 2;
    }
    Err(nix::errno::Errno::ERANGE)
}

// ---------------------------------------------------------------------------
// The rules handed to the transports.
// ---------------------------------------------------------------------------

/// What the broker tells its transport about callers: [`check`] for every
/// request, and Lima's serialization rule when it applies on this macOS.
pub struct TransportPolicy {
    settings: BrokerSettings,
    same_executable_serialization: bool,
}

impl TransportPolicy {
    /// `lima_rule`: the broker was asked for Lima's rule; `os`: this macOS
    /// (`None` elsewhere, or when it cannot be read: then the rule holds,
    /// as on an old release).
    pub fn new(settings: BrokerSettings, lima_rule: bool, os: Option<(u32, u32, u32)>) -> Self {
        let applies = lima_rule && os.is_none_or(same_cdhash_rule_applies);
        TransportPolicy { settings, same_executable_serialization: applies }
    }
}

impl PeerPolicy for TransportPolicy {
    fn admit(&self, peer: &Peer) -> Result<(), String> {
        check(&self.settings, peer)
    }

    fn checks_same_executable(&self) -> bool {
        self.same_executable_serialization
    }

    fn same_executable_only(&self, request: &Dict) -> bool {
        self.same_executable_serialization && is_serialization_request(request)
    }
}

/// Whether a request asks for a network serialization (the VZ path): Lima's
/// form names a `Network` and no `FdType`; vmnet-broker's is
/// `{command: "acquire"}`.
pub fn is_serialization_request(message: &Dict) -> bool {
    (message.contains_key("Network") && !message.contains_key("FdType"))
        || message.get_str("command") == Some("acquire")
}

/// Lima's rule: before macOS 26.2 a VZ client can only use a deserialized
/// network if it is the same executable (same CDHash) as the creator, so
/// serialization requests are accepted only from it.
pub fn same_cdhash_rule_applies(os: (u32, u32, u32)) -> bool {
    os < (26, 2, 0)
}

/// A code-signing requirement string that matches exactly one CDHash, for
/// `xpc_listener_set_peer_code_signing_requirement` (the `cdhash` keyword of
/// Apple's Code Signing Requirement Language).
pub fn cdhash_requirement(cdhash: &[u8; 20]) -> String {
    let hex: String = cdhash.iter().map(|b| format!("{b:02X}")).collect();
    format!("cdhash H\"{hex}\"")
}

/// Combines a code-signing requirement and "same CDHash only" into at most
/// one listener requirement (a listener takes one): both become one
/// code-signing requirement, `(<requirement>) and cdhash H"<own>"`. An
/// empty requirement is refused.
pub fn listener_requirement(
    code_signing: Option<&str>,
    same_cdhash: Option<&[u8; 20]>,
) -> Result<Option<ListenerRequirement>, String> {
    let code_signing = match code_signing.map(str::trim) {
        Some("") => {
            return Err("the code signing requirement is empty; give a requirement (csreq(1) syntax) or leave it unset".into())
        }
        other => other,
    };
    Ok(match (code_signing, same_cdhash) {
        (None, None) => None,
        (None, Some(hash)) => Some(ListenerRequirement::SameCdhash(*hash)),
        (Some(req), None) => Some(ListenerRequirement::CodeSigning(req.to_owned())),
        (Some(req), Some(hash)) => {
            Some(ListenerRequirement::CodeSigning(format!("({req}) and {}", cdhash_requirement(hash))))
        }
    })
}

#[cfg(test)]
mod transport_tests {
    use super::*;
    use crate::xpc::Value;

    #[test]
    fn a_listener_gets_at_most_one_requirement() {
        let hash = [0xabu8; 20];
        assert_eq!(listener_requirement(None, None).unwrap(), None);
        assert_eq!(listener_requirement(None, Some(&hash)).unwrap(), Some(ListenerRequirement::SameCdhash(hash)));
        assert_eq!(
            listener_requirement(Some("anchor apple generic"), None).unwrap(),
            Some(ListenerRequirement::CodeSigning("anchor apple generic".into()))
        );
        let both = listener_requirement(Some("anchor apple generic or identifier \"x\""), Some(&hash)).unwrap();
        assert_eq!(
            both,
            Some(ListenerRequirement::CodeSigning(format!(
                "(anchor apple generic or identifier \"x\") and cdhash H\"{}\"",
                "AB".repeat(20)
            )))
        );
        assert!(listener_requirement(Some("  "), Some(&hash)).unwrap_err().contains("empty"));
    }

    #[test]
    fn lima_rule_and_cdhash_requirement() {
        assert!(same_cdhash_rule_applies((26, 1, 9)));
        assert!(!same_cdhash_rule_applies((26, 2, 0)));
        assert!(!same_cdhash_rule_applies((27, 0, 0)));
        let mut hash = [0u8; 20];
        hash[0] = 0xab;
        hash[19] = 0x01;
        assert_eq!(cdhash_requirement(&hash), "cdhash H\"AB00000000000000000000000000000000000001\"");
    }

    #[test]
    fn serialization_requests_need_the_same_executable_only_under_lima_rule() {
        let lima_vz = Dict::new().with("Network", Value::String("shared".into()));
        let lima_fd =
            Dict::new().with("Network", Value::String("shared".into())).with("FdType", Value::String("stream".into()));
        let acquire = Dict::new().with("command", Value::String("acquire".into()));
        let status = Dict::new().with("command", Value::String("status".into()));
        assert!(is_serialization_request(&lima_vz));
        assert!(!is_serialization_request(&lima_fd));
        assert!(is_serialization_request(&acquire));
        assert!(!is_serialization_request(&status));

        let settings = crate::config::BrokerSettings::default();
        let old = TransportPolicy::new(settings.clone(), true, Some((26, 1, 0)));
        assert!(old.checks_same_executable());
        assert!(old.same_executable_only(&lima_vz) && old.same_executable_only(&acquire));
        assert!(!old.same_executable_only(&lima_fd) && !old.same_executable_only(&status));
        let new = TransportPolicy::new(settings.clone(), true, Some((26, 2, 0)));
        assert!(!new.checks_same_executable() && !new.same_executable_only(&lima_vz));
        let off = TransportPolicy::new(settings.clone(), false, Some((15, 0, 0)));
        assert!(!off.checks_same_executable() && !off.same_executable_only(&acquire));
        let unknown = TransportPolicy::new(settings, true, None);
        assert!(unknown.same_executable_only(&lima_vz), "an unreadable version is treated as old");
    }

    #[test]
    fn the_transport_admits_exactly_whom_check_admits() {
        // SAFETY: getuid cannot fail.
        let me = unsafe { libc::getuid() };
        let settings = crate::config::BrokerSettings::default();
        let policy = TransportPolicy::new(settings.clone(), false, None);
        for uid in [0, me, 65534, 4242] {
            let peer = Peer { uid, gid: 65534, pid: 1, connection: 1 };
            assert_eq!(policy.admit(&peer).is_ok(), check(&settings, &peer).is_ok(), "uid {uid}");
        }
    }
}

#[cfg(all(test, not(target_os = "macos")))]
mod tests {
    use super::*;

    fn settings(users: &[&str], groups: &[&str]) -> BrokerSettings {
        BrokerSettings {
            idle_timeout: 60,
            allowed_users: users.iter().map(|s| s.to_string()).collect(),
            allowed_groups: groups.iter().map(|s| s.to_string()).collect(),
            socket: String::new(),
            client_networks: crate::config::ClientNetworks::None,
            max_ports_per_user: 64,
            mach_service: String::new(),
            endpoint_dir: String::new(),
            data_dir: String::new(),
            repair: Default::default(),
        }
    }

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer { uid, gid, pid: 1, connection: 1 }
    }

    #[test]
    fn users_and_groups_by_name_and_number() {
        assert!(check(&settings(&["root"], &[]), &peer(0, 0)).is_ok());
        assert!(check(&settings(&["0"], &[]), &peer(0, 0)).is_ok());
        assert!(check(&settings(&[], &["root"]), &peer(0, 0)).is_ok());
        assert!(check(&settings(&[], &["12345"]), &peer(4242, 12345)).is_ok());
        let err = check(&settings(&["root"], &[DEFAULT_GROUP]), &peer(65534, 65534)).unwrap_err();
        assert!(err.contains("not allowed") && err.contains("65534") && err.contains("usermod"), "{err}");
    }

    /// Root only, Linux: a group whose entry is larger than any fixed
    /// buffer (20 000 members, about 200 KB) is found with its gid and its
    /// members are allowed. The test runs itself again in a private mount
    /// namespace where a copy of /etc/group with that group is bind-mounted
    /// over the real one, which is never changed.
    #[cfg(target_os = "linux")]
    #[test]
    #[ignore = "needs root for a private mount namespace; scripts/test runs it as root with --ignored"]
    fn a_group_larger_than_a_fixed_buffer_is_found() {
        const CHILD: &str = "VMNET_RS_BIG_GROUP_CHILD";
        if std::env::var_os(CHILD).is_some() {
            assert_eq!(group_id("vmnetbig"), Some(4_242_420));
            assert!(check(&settings(&[], &["vmnetbig"]), &peer(65534, 4_242_420)).is_ok());
            return;
        }
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "needs root for a private mount namespace: run --ignored tests as root");
        let dir = std::env::temp_dir().join(format!("vmnet-rs-big-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("group");
        let mut text = std::fs::read_to_string("/etc/group").unwrap_or_default();
        let members: Vec<String> = (0..20_000).map(|i| format!("member{i:05}")).collect();
        text.push_str(&format!("vmnetbig:x:4242420:{}\n", members.join(",")));
        std::fs::write(&file, text).unwrap();
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", "mount --bind \"$0\" /etc/group && exec \"$1\" --exact broker::auth::tests::a_group_larger_than_a_fixed_buffer_is_found --include-ignored --nocapture"])
            .arg(&file)
            .arg(&exe)
            .env(CHILD, "1")
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && log.contains("1 passed"), "{log}");
    }
}
