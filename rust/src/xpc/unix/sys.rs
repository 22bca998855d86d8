//! Raw AF_UNIX SOCK_SEQPACKET calls: socket, bind, connect, accept, one
//! record with its SCM_RIGHTS fds in and out, and the peer's credentials.
//!
//! No raw pointer leaves this module. Every fd made here is close-on-exec,
//! including fds received (MSG_CMSG_CLOEXEC). Sends use MSG_NOSIGNAL so a
//! vanished peer is an EPIPE error, never a SIGPIPE.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::codec::MAX_FDS;
use crate::sys;

/// What one `recv_record` saw.
pub enum Received {
    /// The peer closed the connection.
    Eof,
    /// One record: its length (at most the buffer's), the fds that came with
    /// it, and whether the record or its fd array was cut short.
    Record { len: usize, fds: Vec<OwnedFd>, truncated: bool, fds_truncated: bool },
}

/// The credentials the kernel recorded for a connected peer (SO_PEERCRED).
#[derive(Clone, Copy, Debug)]
pub struct Credentials {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

pub fn seqpacket_socket() -> io::Result<OwnedFd> {
    sys::unix_socket(libc::SOCK_SEQPACKET, false)
}

/// The `sun_path` bytes of a socket path: 1 to 107 bytes without NUL.
fn path_bytes(path: &Path) -> io::Result<&[u8]> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() > sys::max_path_bytes() || bytes.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("socket path {path:?} must be 1 to {} bytes without NUL", sys::max_path_bytes())));
    }
    Ok(bytes)
}

pub fn bind_listen(fd: &OwnedFd, path: &Path, backlog: i32) -> io::Result<()> {
    sys::bind(fd.as_raw_fd(), path_bytes(path)?)?;
    // SAFETY: plain listen(2) on our socket.
    sys::cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(|_| ())
}

pub fn connect(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    sys::connect(fd.as_raw_fd(), path_bytes(path)?)
}

pub fn accept(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: accept4 with NULL address arguments is allowed.
    let c = unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
    if c < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a new fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(c) })
}

pub fn peer_credentials(fd: RawFd) -> io::Result<Credentials> {
    let (uid, gid, pid) = sys::peer_credentials(fd)?;
    Ok(Credentials { pid, uid, gid })
}

pub fn socket_int_option(fd: RawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    sys::get_int_option(fd, libc::SOL_SOCKET, option)
}

/// The control-buffer size for `n` fds, as u64 words for alignment.
const CMSG_WORDS: usize = (MAX_FDS * size_of::<RawFd>() + 64) / 8;

/// Sends one record with `fds` in SCM_RIGHTS. A SOCK_SEQPACKET send is all
/// or nothing.
pub fn send_record(fd: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    let mut control = [0u64; CMSG_WORDS];
    // SAFETY: msghdr is plain old data; all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        if fds.len() > MAX_FDS {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} fds (limit {MAX_FDS})", fds.len())));
        }
        let data_len = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `control`, which holds `space` bytes
        // (CMSG_WORDS covers MAX_FDS fds), so the first header and its data
        // fit; CMSG_FIRSTHDR/CMSG_DATA stay inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), data_len as usize);
        }
    }
    loop {
        // SAFETY: msg points at live iov and control buffers for the call.
        let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Receives one record into `buf`. Fds beyond MAX_FDS are discarded by the
/// kernel (and reported as `fds_truncated`); the ones that fit are returned
/// owned, so the caller closes them whatever it decides.
pub fn recv_record(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = [0u64; CMSG_WORDS];
    // SAFETY: msghdr is plain old data; all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE((MAX_FDS * size_of::<RawFd>()) as u32) } as _;
    let n = loop {
        // SAFETY: msg points at live iov and control buffers for the call.
        let r = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r >= 0 {
            break r as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of
    // well-formed cmsg headers; CMSG_FIRSTHDR/NXTHDR walk only inside them,
    // and each SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / 4 fds that
    // are now ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg);
                for i in 0..payload / size_of::<RawFd>() {
                    let raw = std::ptr::read_unaligned(data.add(i * size_of::<RawFd>()).cast::<RawFd>());
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let truncated = msg.msg_flags & libc::MSG_TRUNC != 0;
    let fds_truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
    if n == 0 && fds.is_empty() && !truncated {
        // SOCK_SEQPACKET: a zero-length read with nothing attached is EOF
        // (an empty record is not a valid message anyway).
        return Ok(Received::Eof);
    }
    Ok(Received::Record { len: n, fds, truncated, fds_truncated })
}

/// Shuts a socket down both ways, waking any thread blocked on it.
pub fn shutdown(fd: RawFd) {
    // SAFETY: shutdown(2) on an fd we hold; errors (already closed peer) are harmless.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// Shuts the receiving side: a blocked or later receive sees EOF, while a
/// reply being sent still goes out.
pub fn shutdown_read(fd: RawFd) {
    // SAFETY: as in shutdown.
    unsafe { libc::shutdown(fd, libc::SHUT_RD) };
}

/// Sets SO_RCVTIMEO (None: wait forever).
pub fn set_recv_timeout(fd: RawFd, timeout: Option<std::time::Duration>) -> io::Result<()> {
    let tv = match timeout {
        Some(t) => libc::timeval { tv_sec: t.as_secs() as libc::time_t, tv_usec: t.subsec_micros() as libc::suseconds_t },
        None => libc::timeval { tv_sec: 0, tv_usec: 0 },
    };
    // SAFETY: SO_RCVTIMEO takes one timeval.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
