//! The Unix socket and descriptor calls the crate shares: the bottom layer,
//! which `config`, `xpc`, `vmnet`, `adaptor` and `broker` may all import
//! and which imports nothing of the crate (docs/architecture.md).
//!
//! Owner: nobody; nothing here keeps state, and every function may run on
//! any thread. What is here: close-on-exec and non-blocking flags, integer
//! socket options, a `sockaddr_un` from raw `sun_path` bytes (with `sun_len`
//! on the BSDs), Unix sockets, socketpairs and pipes that are close-on-exec
//! from the start, `connect`, a connected peer's credentials, and (Linux)
//! a datagram socket with a deeper receive queue than this namespace's
//! `net.unix.max_dgram_qlen`, made by a short-lived thread in a private
//! network namespace (the one thread this module starts; it ends before
//! the call returns).
//!
//! Invariants: every descriptor made here is an `OwnedFd` and close-on-exec;
//! no raw pointer leaves this module; every error is the call's `errno`.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `Err(errno)` for a negative return, the value otherwise.
pub fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Sets FD_CLOEXEC on `fd`.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns, integer arguments only.
    unsafe {
        let flags = cvt(libc::fcntl(fd, libc::F_GETFD))?;
        cvt(libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC))?;
    }
    Ok(())
}

/// Sets O_NONBLOCK on `fd`.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns, integer arguments only.
    unsafe {
        let flags = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        cvt(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    }
    Ok(())
}

/// Clears O_NONBLOCK on `fd`.
pub fn set_blocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns, integer arguments only.
    unsafe {
        let flags = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        cvt(libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK))?;
    }
    Ok(())
}

/// Sets `SO_SNDTIMEO`: how long a blocking send waits before EAGAIN.
pub fn set_send_timeout(fd: RawFd, wait: std::time::Duration) -> io::Result<()> {
    let tv = libc::timeval { tv_sec: wait.as_secs() as libc::time_t, tv_usec: wait.subsec_micros() as libc::suseconds_t };
    // SAFETY: setsockopt reads one timeval from the pointer.
    cvt(unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, (&tv as *const libc::timeval).cast(), size_of::<libc::timeval>() as libc::socklen_t) })
        .map(|_| ())
}

/// Close-on-exec and non-blocking.
pub fn set_flags(fd: RawFd) -> io::Result<()> {
    set_cloexec(fd)?;
    set_nonblocking(fd)
}

/// Sets an integer socket option.
pub fn set_int_option(fd: RawFd, level: libc::c_int, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt reads one c_int from the pointer.
    cvt(unsafe { libc::setsockopt(fd, level, option, (&value as *const libc::c_int).cast(), size_of::<libc::c_int>() as libc::socklen_t) })
        .map(|_| ())
}

/// Reads an integer socket option.
pub fn get_int_option(fd: RawFd, level: libc::c_int, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most len bytes into value.
    cvt(unsafe { libc::getsockopt(fd, level, option, (&mut value as *mut libc::c_int).cast(), &mut len) })?;
    Ok(value)
}

/// A socket's type (SO_TYPE: SOCK_STREAM, SOCK_DGRAM, ...).
pub fn socket_type(fd: RawFd) -> io::Result<libc::c_int> {
    get_int_option(fd, libc::SOL_SOCKET, libc::SO_TYPE)
}

/// Takes ownership of a descriptor a call just returned.
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = cvt(fd)?;
    // SAFETY: fd was just created by the caller's call and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An AF_UNIX socket of type `ty`, close-on-exec (atomically on Linux,
/// where another thread may be starting a child), non-blocking if asked.
pub fn unix_socket(ty: libc::c_int, nonblocking: bool) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; checked by owned().
    let fd = owned(unsafe { libc::socket(libc::AF_UNIX, ty | CLOEXEC_TYPE, 0) })?;
    set_cloexec(fd.as_raw_fd())?;
    if nonblocking {
        set_nonblocking(fd.as_raw_fd())?;
    }
    Ok(fd)
}

/// Where Linux keeps the receive queue length of Unix datagram sockets made
/// from now on, per network namespace (resolved for the calling thread).
#[cfg(target_os = "linux")]
pub const DGRAM_QLEN_SYSCTL: &str = "/proc/sys/net/unix/max_dgram_qlen";

/// Linux: how many datagrams a Unix datagram socket made now by the calling
/// thread queues for its reader: its network namespace's
/// `net.unix.max_dgram_qlen`. The kernel copies it into the socket when the
/// socket is made (`sk_max_ack_backlog`; `listen` is refused on SOCK_DGRAM,
/// so nothing changes it later); a sender finds the queue full past it
/// (EAGAIN, or a blocking sender sleeps).
#[cfg(target_os = "linux")]
pub fn datagram_queue_limit() -> io::Result<u32> {
    let text = std::fs::read_to_string(DGRAM_QLEN_SYSCTL)?;
    text.trim().parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{DGRAM_QLEN_SYSCTL} holds {text:?}, not a number")))
}

/// Linux: a close-on-exec Unix datagram socket (non-blocking if asked)
/// whose receive queue holds `depth` datagrams, whatever this namespace's
/// `net.unix.max_dgram_qlen` is, and without changing it. A short-lived
/// thread moves itself into a new network namespace
/// (`unshare(CLONE_NEWNET)`, which a multi-threaded process may do; it
/// needs CAP_SYS_ADMIN), sets that namespace's limit, makes the socket and
/// ends; the socket keeps its depth and holds the namespace alive. The
/// caller's thread and namespace are untouched. A path-bound socket is
/// reachable from every namespace; an abstract name is not: the socket
/// neither binds one nor can send to one in the caller's namespace.
/// Fails (nothing left behind) where unshare or the write is not allowed:
/// no privilege, a seccomp filter, a read-only /proc/sys.
#[cfg(target_os = "linux")]
pub fn datagram_socket_in_private_namespace(depth: u32, nonblocking: bool) -> io::Result<OwnedFd> {
    let make = move || -> io::Result<OwnedFd> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("unshare a network namespace: {e}")))?;
        std::fs::write(DGRAM_QLEN_SYSCTL, depth.to_string()).map_err(|e| io::Error::new(e.kind(), format!("write {DGRAM_QLEN_SYSCTL} in the new namespace: {e}")))?;
        let got = datagram_queue_limit()?;
        if got != depth {
            return Err(io::Error::other(format!("{DGRAM_QLEN_SYSCTL} reads {got} after writing {depth}")));
        }
        unix_socket(libc::SOCK_DGRAM, nonblocking)
    };
    let thread = std::thread::Builder::new().name("vmnet-rs-qlen".into()).spawn(make)?;
    thread.join().map_err(|_| io::Error::other("the thread that makes the socket panicked"))?
}

/// SOCK_CLOEXEC where the type takes it (Linux); elsewhere FD_CLOEXEC
/// follows the call at once.
#[cfg(target_os = "linux")]
const CLOEXEC_TYPE: libc::c_int = libc::SOCK_CLOEXEC;
#[cfg(not(target_os = "linux"))]
const CLOEXEC_TYPE: libc::c_int = 0;

/// A connected AF_UNIX pair of socket type `ty`, close-on-exec.
pub fn socketpair(ty: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: socketpair writes two descriptors into the 2-element array.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, ty | CLOEXEC_TYPE, 0, fds.as_mut_ptr()) })?;
    let pair = (owned(fds[0])?, owned(fds[1])?);
    set_cloexec(pair.0.as_raw_fd())?;
    set_cloexec(pair.1.as_raw_fd())?;
    Ok(pair)
}

/// A close-on-exec, non-blocking pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    #[cfg(target_os = "linux")]
    // SAFETY: pipe2 writes two descriptors into the 2-element array.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    #[cfg(not(target_os = "linux"))]
    // SAFETY: pipe writes two descriptors into the 2-element array.
    cvt(unsafe { libc::pipe(fds.as_mut_ptr()) })?;
    let (rx, tx) = (owned(fds[0])?, owned(fds[1])?);
    for fd in [&rx, &tx] {
        set_flags(fd.as_raw_fd())?;
    }
    Ok((rx, tx))
}

/// Offset of `sun_path` in `sockaddr_un` (`sun_len` comes first on the BSDs).
pub fn sun_path_offset() -> usize {
    let base = size_of::<libc::sa_family_t>();
    #[cfg(target_vendor = "apple")]
    let base = base + 1;
    base
}

/// Longest socket path the platform takes (`sun_path` less the NUL).
pub fn max_path_bytes() -> usize {
    // SAFETY: sockaddr_un is plain old data; only its field size is read.
    let addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_path.len() - 1
}

/// A `sockaddr_un` for raw `sun_path` bytes (a path, or on Linux an
/// abstract name starting with NUL) and its length.
pub fn sockaddr_un(path: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if path.len() > addr.sun_path.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket path too long"));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    let len = sun_path_offset() + path.len();
    #[cfg(target_vendor = "apple")]
    {
        addr.sun_len = len as u8;
    }
    Ok((addr, len as libc::socklen_t))
}

/// Binds `fd` to the raw `sun_path` bytes `path`.
pub fn bind(fd: RawFd, path: &[u8]) -> io::Result<()> {
    let (addr, len) = sockaddr_un(path)?;
    // SAFETY: addr is a valid sockaddr_un of len bytes.
    cvt(unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len) }).map(|_| ())
}

/// Connects `fd` to the raw `sun_path` bytes `path`, again after EINTR.
pub fn connect(fd: RawFd, path: &[u8]) -> io::Result<()> {
    let (addr, len) = sockaddr_un(path)?;
    loop {
        // SAFETY: addr is a valid sockaddr_un of len bytes.
        match cvt(unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(|_| ()),
        }
    }
}

/// The credentials of a connected Unix stream or seqpacket peer: uid, gid
/// and pid (Linux SO_PEERCRED; macOS getpeereid and LOCAL_PEERPID, pid -1
/// where unknown).
pub fn peer_credentials(fd: RawFd) -> io::Result<(u32, u32, i32)> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: ucred is plain old data.
        let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: SO_PEERCRED writes one ucred of at most len bytes.
        cvt(unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len) })?;
        Ok((cred.uid, cred.gid, cred.pid))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let (mut uid, mut gid) = (0 as libc::uid_t, 0 as libc::gid_t);
        // SAFETY: getpeereid writes the two ids.
        cvt(unsafe { libc::getpeereid(fd, &mut uid, &mut gid) })?;
        #[cfg(target_vendor = "apple")]
        let pid = {
            let mut pid: libc::pid_t = 0;
            let mut len = size_of::<libc::pid_t>() as libc::socklen_t;
            // SAFETY: LOCAL_PEERPID (<sys/un.h>, level SOL_LOCAL = 0) writes one pid_t.
            let r = unsafe { libc::getsockopt(fd, 0, libc::LOCAL_PEERPID, (&mut pid as *mut libc::pid_t).cast(), &mut len) };
            if r < 0 {
                -1
            } else {
                pid
            }
        };
        #[cfg(not(target_vendor = "apple"))]
        let pid = -1;
        Ok((uid, gid, pid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_path_is_bound_connected_and_its_peer_known() {
        let dir = std::env::temp_dir().join(format!("vmnet-rs-sys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let client = unix_socket(libc::SOCK_STREAM, false).unwrap();
        connect(client.as_raw_fd(), path.as_os_str().as_encoded_bytes()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let (uid, _, pid) = peer_credentials(server.as_raw_fd()).unwrap();
        // SAFETY: getuid cannot fail.
        assert_eq!(uid, unsafe { libc::getuid() });
        assert_eq!(pid, std::process::id() as i32);
        assert_eq!(socket_type(client.as_raw_fd()).unwrap(), libc::SOCK_STREAM);
        let gone = unix_socket(libc::SOCK_DGRAM, true).unwrap();
        let err = connect(gone.as_raw_fd(), dir.join("nobody.sock").as_os_str().as_encoded_bytes()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(sockaddr_un(&vec![b'a'; max_path_bytes() + 2]).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Datagrams a socket bound at `path` queues: sent non-blocking from a
    /// fresh socket, never read, until the kernel says EAGAIN.
    #[cfg(target_os = "linux")]
    fn queued_until_full(path: &std::path::Path) -> usize {
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        sender.set_nonblocking(true).unwrap();
        for n in 0..100_000 {
            match sender.send_to(&[0u8; 64], path) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return n,
                Err(e) => panic!("send {n}: {e}"),
            }
        }
        panic!("the queue at {} never filled", path.display())
    }

    /// Threads of this process named as the helper's thread (`comm`),
    /// polled until none is left or 5 s pass (a thread just joined may
    /// linger in /proc for a moment; another test's helper may be running).
    #[cfg(target_os = "linux")]
    fn helper_threads_left() -> usize {
        let count = || {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter(|t| t.as_ref().ok().and_then(|t| std::fs::read_to_string(t.path().join("comm")).ok()).is_some_and(|c| c.trim() == "vmnet-rs-qlen"))
                .count()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let n = count();
            if n == 0 || std::time::Instant::now() >= deadline {
                return n;
            }
            std::thread::yield_now();
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_socket_made_in_a_private_namespace_queues_past_this_namespaces_limit() {
        // Run in a fresh namespace of our own (limit 10 whatever the host
        // says), on a thread of our own, so nothing of the host's is read.
        let dir = std::env::temp_dir().join(format!("vmnet-rs-qlen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.clone();
        let outcome = std::thread::spawn(move || -> Result<(u32, usize, usize), String> {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                return Err(format!("unshare(CLONE_NEWNET): {e}"));
            }
            let limit = datagram_queue_limit().unwrap();
            let deep = datagram_socket_in_private_namespace(64, true).unwrap();
            bind(deep.as_raw_fd(), d.join("deep.sock").as_os_str().as_encoded_bytes()).unwrap();
            let plain = unix_socket(libc::SOCK_DGRAM, true).unwrap();
            bind(plain.as_raw_fd(), d.join("plain.sock").as_os_str().as_encoded_bytes()).unwrap();
            let got = (limit, queued_until_full(&d.join("deep.sock")), queued_until_full(&d.join("plain.sock")));
            assert_eq!(datagram_queue_limit().unwrap(), limit, "the caller's namespace keeps its limit");
            Ok(got)
        })
        .join()
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let (limit, deep, plain) = match outcome {
            Ok(got) => got,
            Err(why) => {
                eprintln!("SKIPPED a_socket_made_in_a_private_namespace_queues_past_this_namespaces_limit: {why} (needs root)");
                return;
            }
        };
        assert_eq!(limit, 10, "a fresh namespace starts at the kernel's default");
        // The kernel refuses once the queue holds more than the limit.
        assert_eq!(plain, 11, "a plain socket keeps its namespace's limit");
        assert!(deep >= 64, "the private namespace's socket queued only {deep}");
        assert_eq!(helper_threads_left(), 0, "the helper's thread ended");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn without_the_privilege_the_private_namespace_socket_fails_cleanly() {
        // Drop CAP_SYS_ADMIN on one thread only (capset is per thread), as
        // an unprivileged broker has it: the call fails, nothing is made.
        let outcome = std::thread::spawn(|| {
            let hdr = &mut libc_cap_header();
            let mut data = [CapData::default(); 2];
            // SAFETY: capget/capset with a v3 header and two data structs.
            if unsafe { libc::syscall(libc::SYS_capget, hdr as *mut CapHeader, data.as_mut_ptr()) } != 0 {
                return Err(io::Error::last_os_error().to_string());
            }
            let sys_admin = 21; // CAP_SYS_ADMIN, linux/capability.h
            data[0].effective &= !(1 << sys_admin);
            // SAFETY: as above.
            if unsafe { libc::syscall(libc::SYS_capset, hdr as *mut CapHeader, data.as_ptr()) } != 0 {
                return Err(io::Error::last_os_error().to_string());
            }
            Ok(datagram_socket_in_private_namespace(64, true).map(drop))
        })
        .join()
        .unwrap();
        match outcome {
            Err(why) => eprintln!("SKIPPED without_the_privilege_the_private_namespace_socket_fails_cleanly: capget/capset: {why}"),
            Ok(made) => {
                let e = made.expect_err("unshare needs CAP_SYS_ADMIN");
                assert!(e.to_string().contains("unshare a network namespace"), "{e}");
                assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
            }
        }
    }

    /// `struct __user_cap_header_struct` and `__user_cap_data_struct`
    /// (linux/capability.h, `_LINUX_CAPABILITY_VERSION_3`).
    #[cfg(target_os = "linux")]
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[cfg(target_os = "linux")]
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    #[cfg(target_os = "linux")]
    fn libc_cap_header() -> CapHeader {
        CapHeader { version: 0x2008_0522, pid: 0 }
    }

    #[test]
    fn descriptors_made_here_are_close_on_exec() {
        let (a, b) = pipe().unwrap();
        let (c, d) = socketpair(libc::SOCK_DGRAM).unwrap();
        for fd in [&a, &b, &c, &d] {
            // SAFETY: F_GETFD on a descriptor we own.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert_ne!(flags & libc::FD_CLOEXEC, 0);
        }
        // SAFETY: F_GETFL on a descriptor we own.
        assert_ne!(unsafe { libc::fcntl(a.as_raw_fd(), libc::F_GETFL) } & libc::O_NONBLOCK, 0);
    }
}
