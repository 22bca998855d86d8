//! Who may call the broker.
//!
//! Linux: the caller's uid (SO_PEERCRED) must be one of the allowed users,
//! or the caller's primary group or one of the user's groups (from the group
//! database) one of the allowed groups. Names are resolved on every check,
//! so a user added to the group is allowed without a broker restart (after
//! a new login, as for any group change). macOS: the LaunchAgent is per
//! user, so the broker's own user and root are allowed.
//! Runs on the request thread; reads the passwd/group databases only.

use std::ffi::{CStr, CString};

use crate::config::BrokerSettings;
use crate::xpc::Peer;

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
    let c = CString::new(name).ok()?;
    // SAFETY: passwd is plain old data; getpwnam_r fills it and points its
    // strings into buf, which outlives every use.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result = std::ptr::null_mut();
        if libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) != 0 || result.is_null() {
            return None;
        }
        Some(pw.pw_uid)
    }
}

fn user_name(uid: u32) -> Option<String> {
    // SAFETY: as in user_id, with getpwuid_r.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result = std::ptr::null_mut();
        if libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) != 0 || result.is_null() {
            return None;
        }
        Some(CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned())
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
    let c = CString::new(spec).ok()?;
    // SAFETY: group is plain old data; getgrnam_r fills it and points its
    // strings into buf, which outlives every use.
    unsafe {
        let mut gr: libc::group = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 64 * 1024];
        let mut result = std::ptr::null_mut();
        if libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut result) != 0 || result.is_null() {
            return None;
        }
        Some(gr.gr_gid)
    }
}

/// The primary gid plus every group the user is a member of.
fn groups_of(uid: u32, gid: u32) -> Vec<u32> {
    let mut out = vec![gid];
    let Some(name) = user_name(uid).and_then(|n| CString::new(n).ok()) else {
        return out;
    };
    let mut n: libc::c_int = 256;
    // Linux (glibc <grp.h>): getgrouplist(const char *, gid_t, gid_t *, int *).
    #[cfg(not(target_os = "macos"))]
    let mut groups = vec![0 as libc::gid_t; n as usize];
    // macOS (<unistd.h>): getgrouplist(const char *, int, int *, int *).
    #[cfg(target_os = "macos")]
    let mut groups = vec![0 as libc::c_int; n as usize];
    // SAFETY: groups holds n entries; getgrouplist writes at most n and sets
    // n to the count (or to the needed size when it returns -1).
    let r = unsafe { libc::getgrouplist(name.as_ptr(), gid as _, groups.as_mut_ptr(), &mut n) };
    if r >= 0 {
        out.extend(groups.iter().take(n as usize).map(|g| *g as u32));
    }
    out
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
}
