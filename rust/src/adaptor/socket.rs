//! The adaptor's own fds: the VM socketpair, its buffer sizes, the wake pipe
//! and `poll`. Called from `Adaptor::start` (caller's thread) and the relay
//! thread; nothing here keeps state.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::Kind;
use crate::sys;

/// SO_SNDBUF asked for by default (vfkit and gvproxy use 1 MiB).
pub const DEFAULT_SEND_BUFFER_BYTES: usize = 1 << 20;
/// SO_RCVBUF asked for by default (vfkit, gvproxy and vmnet-helper use 4 MiB).
pub const DEFAULT_RECV_BUFFER_BYTES: usize = 4 << 20;

/// Socket buffer sizes as read back from the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketBuffers {
    pub send_bytes: usize,
    pub recv_bytes: usize,
}

/// A connected AF_UNIX pair of the kind's socket type, close-on-exec.
pub(crate) fn socketpair(kind: Kind) -> io::Result<(OwnedFd, OwnedFd)> {
    let ty = match kind {
        Kind::Datagram | Kind::DatagramNext => libc::SOCK_DGRAM,
        Kind::Stream => libc::SOCK_STREAM,
    };
    let pair = sys::socketpair(ty)?;
    #[cfg(target_vendor = "apple")]
    {
        // Writes to a closed stream peer fail with EPIPE instead of raising
        // SIGPIPE (Linux gets the same from MSG_NOSIGNAL on each send).
        set_int_option(pair.0.as_raw_fd(), libc::SO_NOSIGPIPE, 1)?;
    }
    Ok(pair)
}

pub(crate) fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    sys::set_nonblocking(fd.as_raw_fd())
}

fn set_int_option(fd: RawFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    sys::set_int_option(fd, libc::SOL_SOCKET, option, value)
}

pub(crate) fn get_int_option(fd: RawFd, option: libc::c_int) -> io::Result<usize> {
    Ok(sys::get_int_option(fd, libc::SOL_SOCKET, option)?.max(0) as usize)
}

/// Sets SO_SNDBUF and SO_RCVBUF and reads back what the kernel granted. On
/// Linux the `*FORCE` variants are tried first (they pass the
/// `net.core.*mem_max` caps when the process has CAP_NET_ADMIN).
pub(crate) fn set_buffers(fd: &OwnedFd, send_bytes: usize, recv_bytes: usize) -> io::Result<SocketBuffers> {
    let fd = fd.as_raw_fd();
    let send = send_bytes.min(libc::c_int::MAX as usize) as libc::c_int;
    let recv = recv_bytes.min(libc::c_int::MAX as usize) as libc::c_int;
    #[cfg(target_os = "linux")]
    {
        if set_int_option(fd, libc::SO_SNDBUFFORCE, send).is_err() {
            set_int_option(fd, libc::SO_SNDBUF, send)?;
        }
        if set_int_option(fd, libc::SO_RCVBUFFORCE, recv).is_err() {
            set_int_option(fd, libc::SO_RCVBUF, recv)?;
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        // macOS caps at kern.ipc.maxsockbuf and refuses (ENOBUFS) above it;
        // halve until accepted so we end with the largest size allowed.
        for (option, mut value) in [(libc::SO_SNDBUF, send), (libc::SO_RCVBUF, recv)] {
            loop {
                match set_int_option(fd, option, value) {
                    Ok(()) => break,
                    Err(_) if value > 65_536 => value /= 2,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(SocketBuffers { send_bytes: get_int_option(fd, libc::SO_SNDBUF)?, recv_bytes: get_int_option(fd, libc::SO_RCVBUF)? })
}

/// A non-blocking, close-on-exec pipe: (read end, write end).
pub(crate) fn wake_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    sys::pipe()
}

/// Writes one byte to the wake pipe; a full pipe already wakes the reader.
pub(crate) fn wake(tx: &OwnedFd) {
    let byte = 1u8;
    // SAFETY: writes one byte from a valid local.
    let _ = unsafe { libc::write(tx.as_raw_fd(), (&byte as *const u8).cast(), 1) };
}

/// `poll` with sub-millisecond timeouts where the platform has them (Linux
/// `ppoll`); elsewhere the timeout is rounded up to whole milliseconds.
/// `None` waits forever. EINTR counts as a timeout (returns 0).
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    let r = {
        let ts = timeout.map(|t| libc::timespec { tv_sec: t.as_secs() as libc::time_t, tv_nsec: t.subsec_nanos() as _ });
        let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: fds is a valid array of pollfd of the given length; ts_ptr
        // is null or points to a live timespec; no signal mask is changed.
        unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ts_ptr, std::ptr::null()) }
    };
    #[cfg(not(target_os = "linux"))]
    let r = {
        let ms = match timeout {
            None => -1,
            Some(t) => t.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int,
        };
        // SAFETY: fds is a valid array of pollfd of the given length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) }
    };
    if r < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(r as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_set_and_read_back() {
        let (a, _b) = socketpair(Kind::Stream).unwrap();
        let got = set_buffers(&a, 256 * 1024, 512 * 1024).unwrap();
        // Linux doubles the request (and may cap it without CAP_NET_ADMIN).
        assert!(got.send_bytes >= 4096, "{got:?}");
        assert!(got.recv_bytes >= 4096, "{got:?}");
    }

    #[test]
    fn poll_times_out_and_wakes() {
        let (rx, tx) = wake_pipe().unwrap();
        let mut fds = [libc::pollfd { fd: rx.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        assert_eq!(poll(&mut fds, Some(Duration::from_micros(50))).unwrap(), 0);
        wake(&tx);
        assert_eq!(poll(&mut fds, None).unwrap(), 1);
        assert!(fds[0].revents & libc::POLLIN != 0);
    }
}
