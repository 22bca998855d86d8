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
//! `Sockets` key of the job's plist, declared from `<launch.h>`.
//!
//! The environment is read once per process; each fd is handed out at most
//! once (a second broker started in the same process binds its own sockets).

use std::collections::BTreeMap;
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

#[cfg(target_os = "macos")]
mod launchd {
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

    /// The sockets launchd holds for the job's `Sockets` key `name`; empty
    /// when the job has no such key or is not run by launchd.
    pub fn activate(name: &str) -> std::io::Result<Vec<OwnedFd>> {
        let c = CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let mut fds: *mut libc::c_int = std::ptr::null_mut();
        let mut cnt: libc::size_t = 0;
        // SAFETY: c is a NUL-terminated string; fds and cnt are valid out
        // pointers; on success launchd stores a malloc'd array of cnt ints.
        let r = unsafe { launch_activate_socket(c.as_ptr(), &mut fds, &mut cnt) };
        if r == libc::ENOENT || r == libc::ESRCH {
            return Ok(Vec::new());
        }
        if r != 0 {
            return Err(std::io::Error::from_raw_os_error(r));
        }
        let mut out = Vec::with_capacity(cnt);
        for i in 0..cnt {
            // SAFETY: fds holds cnt descriptors launchd gave this process to own.
            out.push(unsafe { OwnedFd::from_raw_fd(*fds.add(i)) });
        }
        // SAFETY: fds was allocated with malloc by launch_activate_socket (or is null).
        unsafe { libc::free(fds.cast()) };
        Ok(out)
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
        Ok(launchd::activate(name)?.into_iter().next())
    }
    #[cfg(not(target_os = "macos"))]
    {
        Ok(take_systemd(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names() {
        assert!(is_endpoint_name("shared.stream"));
        assert!(is_endpoint_name("host.dgram"));
        assert!(!is_endpoint_name("broker"));
        assert!(!is_endpoint_name("vmnet-rs.socket"));
    }
}
