//! The Unix socket and descriptor calls the crate shares: the bottom layer,
//! which `config`, `xpc`, `vmnet`, `adaptor` and `broker` may all import
//! and which imports nothing of the crate (docs/architecture.md).
//!
//! Owner: nobody; nothing here keeps state, and every function may run on
//! any thread. What is here: close-on-exec and non-blocking flags, integer
//! socket options, a `sockaddr_un` from raw `sun_path` bytes (with `sun_len`
//! on the BSDs), Unix sockets, socketpairs and pipes that are close-on-exec
//! from the start, `connect`, and a connected peer's credentials.
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
