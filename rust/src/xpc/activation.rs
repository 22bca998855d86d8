//! Sockets a service manager made and handed to the broker, found by name.
//!
//! systemd (Linux): `LISTEN_PID` (must be this process), `LISTEN_FDS` (how
//! many, from fd 3 on, `SD_LISTEN_FDS_START`) and `LISTEN_FDNAMES` (their
//! `FileDescriptorName=`s, colon-separated), as sd_listen_fds_with_names(3)
//! describes them. The names vmnet-rs uses: `broker` for the broker socket,
//! `<network>.stream` and `<network>.dgram` for the endpoints
//! (docs/endpoints.md). A socket without a name (or with systemd's default,
//! the unit's name) that is not an endpoint is the broker socket, as before
//! names existed.
//!
//! launchd (macOS): `launch_activate_socket(name, &fds, &count)` for each
//! `Sockets` key of the job's plist, declared from `<launch.h>` (macOS
//! 10.10, linked directly). launchd hands a name's sockets out once per
//! process (EALREADY after that), so they are kept here and each taker gets
//! a duplicate: a second broker in the same process reuses them. The
//! LaunchAgent lists its keys in [`LAUNCHD_SOCKETS_ENV`]; a key the
//! configuration no longer names is warned about at start
//! ([`unserved_launchd_sockets`]): launchd would start the broker on each
//! connection to it, and the broker would exit again unserved.
//!
//! The systemd environment is read once per process; each of its fds is
//! handed out at most once (a second broker started in the same process
//! binds its own sockets).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// The path a Unix socket is bound to (`getsockname`), e.g. of a socket a
/// service manager passed; `None` for an unbound or unnamed socket.
pub fn bound_path(fd: RawFd) -> Option<PathBuf> {
    // SAFETY: sockaddr_un is plain old data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: getsockname writes at most len bytes into addr.
    if unsafe { libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_un).cast(), &mut len) } < 0 {
        return None;
    }
    let bytes: Vec<u8> = addr.sun_path.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    (!bytes.is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(&bytes)))
}

/// First fd systemd passes (SD_LISTEN_FDS_START).
pub const LISTEN_FDS_START: RawFd = 3;
/// The activation name of the broker socket.
pub const BROKER_NAME: &str = "broker";

/// The fds systemd passed, by position, with their names; taken ones are `None`.
struct Passed {
    fds: Vec<(String, Option<OwnedFd>)>,
}

fn passed() -> &'static Mutex<Passed> {
    static P: OnceLock<Mutex<Passed>> = OnceLock::new();
    P.get_or_init(|| Mutex::new(read_environment()))
}

/// Reads `LISTEN_*` (once). A `LISTEN_PID` that is not ours means the
/// variables were meant for another process: nothing was passed.
fn read_environment() -> Passed {
    let pid_matches = std::env::var("LISTEN_PID").ok().and_then(|p| p.trim().parse::<u32>().ok()) == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.trim().parse::<u32>().ok()).unwrap_or(0);
    if !pid_matches || count == 0 {
        return Passed { fds: Vec::new() };
    }
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let names: Vec<&str> = if names.is_empty() { Vec::new() } else { names.split(':').collect() };
    let fds = (0..count.min(1024) as RawFd)
        .map(|i| {
            let fd = LISTEN_FDS_START + i;
            // SAFETY: systemd handed fds 3..3+LISTEN_FDS to this process for
            // it to own; this runs once per process (OnceLock), so each is
            // wrapped once. FD_CLOEXEC keeps them out of children.
            let owned = unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                OwnedFd::from_raw_fd(fd)
            };
            (names.get(i as usize).copied().unwrap_or("unknown").to_owned(), Some(owned))
        })
        .collect();
    Passed { fds }
}

fn lock() -> std::sync::MutexGuard<'static, Passed> {
    passed().lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `name` is an endpoint's activation name (`<network>.stream`,
/// `<network>.dgram`).
pub fn is_endpoint_name(name: &str) -> bool {
    name.ends_with(".stream") || name.ends_with(".dgram")
}

/// Takes the socket systemd passed under `name`, if any.
pub fn take_systemd(name: &str) -> Option<OwnedFd> {
    let mut p = lock();
    p.fds.iter_mut().find(|(n, fd)| n == name && fd.is_some()).and_then(|(_, fd)| fd.take())
}

/// Takes the broker socket: the one named [`BROKER_NAME`], else the first
/// passed socket whose name is not an endpoint's.
pub fn take_systemd_broker() -> Option<OwnedFd> {
    if let Some(fd) = take_systemd(BROKER_NAME) {
        return Some(fd);
    }
    let mut p = lock();
    p.fds.iter_mut().find(|(n, fd)| !is_endpoint_name(n) && fd.is_some()).and_then(|(_, fd)| fd.take())
}

/// The names of the passed sockets not taken yet (for a warning at start).
pub fn untaken_names() -> Vec<String> {
    lock().fds.iter().filter(|(_, fd)| fd.is_some()).map(|(n, _)| n.clone()).collect()
}

/// Every name systemd passed, taken or not, with its count.
pub fn passed_names() -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (n, _) in lock().fds.iter() {
        *out.entry(n.clone()).or_insert(0) += 1;
    }
    out
}

/// The variable the LaunchAgent sets to its `Sockets` keys, comma-separated
/// (`vmnet-rs install`).
pub const LAUNCHD_SOCKETS_ENV: &str = "VMNET_RS_LAUNCHD_SOCKETS";

/// The keys in `listed` (the value of [`LAUNCHD_SOCKETS_ENV`]) that are not
/// among the activation names the broker serves.
pub fn unserved_launchd_sockets(listed: &str, served: &[String]) -> Vec<String> {
    listed.split(',').map(str::trim).filter(|n| !n.is_empty() && !served.iter().any(|s| s == n)).map(str::to_owned).collect()
}

/// Warns about each socket the LaunchAgent lists that the broker does not
/// serve (its configuration changed since `vmnet-rs install`).
pub fn warn_unserved_launchd_sockets(served: &[String]) {
    let Ok(listed) = std::env::var(LAUNCHD_SOCKETS_ENV) else { return };
    for name in unserved_launchd_sockets(&listed, served) {
        log::warn!(
            "launchd holds the socket {name:?} for this broker, but the configuration no longer names it: each connection to it would start the broker for nothing; run `vmnet-rs install` again after changing endpoints"
        );
    }
}

/// What a `launch_activate_socket` return code means (launch.h).
#[derive(Debug, PartialEq, Eq)]
pub enum Activation {
    /// 0: the fds are ours.
    Handed,
    /// ENOENT (no such `Sockets` key) or ESRCH (not run by launchd).
    NotManaged,
    /// EALREADY: this process activated the name before; reuse those fds.
    AlreadyActivated,
    Failed(i32),
}

pub fn activation_outcome(rc: i32) -> Activation {
    match rc {
        0 => Activation::Handed,
        libc::ENOENT | libc::ESRCH => Activation::NotManaged,
        libc::EALREADY => Activation::AlreadyActivated,
        e => Activation::Failed(e),
    }
}

/// Sockets a service manager handed out once per process, kept by name.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
type Kept = Mutex<HashMap<String, Vec<OwnedFd>>>;

/// The first socket kept under `name` (a duplicate), activating it with
/// `activate` (a return code and its fds) the first time. A name activated
/// before by this process (EALREADY) is served from `kept`.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
fn take_kept(kept: &Kept, name: &str, activate: impl FnOnce(&str) -> (i32, Vec<OwnedFd>)) -> std::io::Result<Option<OwnedFd>> {
    let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(fds) = kept.get(name) {
        return fds.first().map(OwnedFd::try_clone).transpose();
    }
    let (rc, fds) = activate(name);
    match activation_outcome(rc) {
        Activation::Handed => {
            let first = fds.first().map(OwnedFd::try_clone).transpose()?;
            kept.insert(name.to_owned(), fds);
            Ok(first)
        }
        Activation::NotManaged => Ok(None),
        Activation::AlreadyActivated => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("launchd's socket {name:?} was already taken by other code in this process"),
        )),
        Activation::Failed(e) => Err(std::io::Error::from_raw_os_error(e)),
    }
}

#[cfg(apple_api)]
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub(crate) mod launchd {
    use std::ffi::CString;
    use std::os::fd::{FromRawFd, OwnedFd};

    extern "C" {
        // <launch.h> (macOS 10.10+):
        //   int launch_activate_socket(const char *name, int * _Nonnull * _Nullable fds, size_t *cnt);
        // Returns 0, or ENOENT (no such Sockets key), ESRCH (not a launchd
        // job), EALREADY (already activated). *fds is malloc(3)ed; the
        // caller frees it and owns the descriptors.
        fn launch_activate_socket(name: *const libc::c_char, fds: *mut *mut libc::c_int, cnt: *mut libc::size_t) -> libc::c_int;
    }

    /// `launch_activate_socket(name)`: its return code and, on success,
    /// the descriptors (ours to own).
    pub fn activate(name: &str) -> (i32, Vec<OwnedFd>) {
        let Ok(c) = CString::new(name) else { return (libc::ENOENT, Vec::new()) };
        let mut fds: *mut libc::c_int = std::ptr::null_mut();
        let mut cnt: libc::size_t = 0;
        // SAFETY: c is a NUL-terminated string; fds and cnt are valid out
        // pointers; on success launchd stores a malloc'd array of cnt ints.
        let r = unsafe { launch_activate_socket(c.as_ptr(), &mut fds, &mut cnt) };
        let mut out = Vec::new();
        if r == 0 && !fds.is_null() {
            for i in 0..cnt {
                // SAFETY: fds holds cnt descriptors launchd gave this process to own.
                out.push(unsafe { OwnedFd::from_raw_fd(*fds.add(i)) });
            }
        }
        // SAFETY: fds was allocated with malloc by launch_activate_socket (or is null).
        unsafe { libc::free(fds.cast()) };
        (r, out)
    }
}

/// The first socket the service manager holds under `name`: systemd's
/// `FileDescriptorName=` (Linux), launchd's `Sockets` key (macOS).
pub fn take(name: &str) -> std::io::Result<Option<OwnedFd>> {
    #[cfg(target_os = "macos")]
    {
        if let Some(fd) = take_systemd(name) {
            return Ok(Some(fd));
        }
        static KEPT: OnceLock<Kept> = OnceLock::new();
        take_kept(KEPT.get_or_init(Kept::default), name, launchd::activate)
    }
    #[cfg(not(target_os = "macos"))]
    {
        Ok(take_systemd(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(fd: &OwnedFd) -> u64 {
        use std::os::fd::AsRawFd;
        // SAFETY: stat is plain old data; fstat writes into it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a live fd and a valid out-pointer.
        assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
        st.st_ino as u64
    }

    #[test]
    fn a_socket_launchd_already_handed_out_is_reused() {
        assert_eq!(activation_outcome(0), Activation::Handed);
        assert_eq!(activation_outcome(libc::ENOENT), Activation::NotManaged);
        assert_eq!(activation_outcome(libc::ESRCH), Activation::NotManaged);
        assert_eq!(activation_outcome(libc::EALREADY), Activation::AlreadyActivated);
        assert_eq!(activation_outcome(libc::EPERM), Activation::Failed(libc::EPERM));

        let kept = Kept::default();
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let original = OwnedFd::from(a);
        let want = inode(&original);
        let mut calls = 0;
        // launchd: the fds the first time, EALREADY after (launch.h).
        let mut launchd = |_: &str| {
            calls += 1;
            if calls == 1 {
                (0, vec![original.try_clone().unwrap()])
            } else {
                (libc::EALREADY, Vec::new())
            }
        };
        let first = take_kept(&kept, "lab.dgram", &mut launchd).unwrap().expect("handed");
        let second = take_kept(&kept, "lab.dgram", &mut launchd).unwrap().expect("reused, not an error");
        assert_eq!((inode(&first), inode(&second)), (want, want), "the same socket both times");
        drop(first);
        assert!(take_kept(&kept, "lab.dgram", &mut launchd).unwrap().is_some(), "kept after a taker closed its copy");
        assert_eq!(calls, 1, "launchd asked once");
        // Not launchd's: nothing, and no error.
        assert!(take_kept(&kept, "other.stream", |_: &str| (libc::ENOENT, Vec::new())).unwrap().is_none());
        // Activated by someone else in this process: a clear error.
        let e = take_kept(&kept, "third.stream", |_: &str| (libc::EALREADY, Vec::new())).unwrap_err();
        assert!(e.to_string().contains("already taken"), "{e}");
    }

    #[test]
    fn launchd_sockets_the_configuration_no_longer_names() {
        let served = vec!["lab.stream".to_owned(), "lab.dgram".to_owned()];
        assert_eq!(unserved_launchd_sockets("lab.stream,lab.dgram,old.dgram", &served), vec!["old.dgram".to_owned()]);
        assert!(unserved_launchd_sockets("lab.stream", &served).is_empty());
        assert!(unserved_launchd_sockets("", &served).is_empty());
    }

    #[test]
    fn endpoint_names() {
        assert!(is_endpoint_name("shared.stream"));
        assert!(is_endpoint_name("host.dgram"));
        assert!(!is_endpoint_name("broker"));
        assert!(!is_endpoint_name("vmnet-rs.socket"));
    }
}
