//! Datagram I/O on the VM socket: per frame (`recvmsg`/`send`) or batched
//! (Linux `recvmmsg`/`sendmmsg`; macOS `recvmsg_x`/`sendmsg_x`, probed with
//! `dlsym` once and replaced by per-frame calls when absent). Runs on the
//! relay thread; every call is non-blocking (`MSG_DONTWAIT`).
//!
//! Invariant shared by all paths: a receive returns how many datagrams it
//! took (0 is never returned: "nothing now" is `WouldBlock`), with each
//! length and whether it was truncated to its buffer; a send returns how many
//! leading frames the kernel took, or the error of the first one.

use std::io;
use std::os::fd::RawFd;

#[cfg(target_os = "linux")]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
#[cfg(not(target_os = "linux"))]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT;

/// Whether batched calls are used on this platform (Linux always; macOS when
/// `recvmsg_x`/`sendmsg_x` resolve).
pub(crate) fn batched_available() -> bool {
    #[cfg(target_os = "linux")]
    return true;
    #[cfg(target_os = "macos")]
    return msg_x::functions().is_some();
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    return false;
}

/// Receives up to `bufs.len()` datagrams, one call per datagram.
pub(crate) fn recv_each(fd: RawFd, bufs: &mut [Vec<u8>], lens: &mut [usize], truncated: &mut [bool]) -> io::Result<usize> {
    let mut n = 0;
    while n < bufs.len() {
        let mut iov = libc::iovec { iov_base: bufs[n].as_mut_ptr().cast(), iov_len: bufs[n].len() };
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        // SAFETY: msg points to one iovec over bufs[n], valid for its length.
        let r = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
        if r < 0 {
            let err = io::Error::last_os_error();
            if n > 0 {
                // Report what we have; a real error comes again on the next call.
                break;
            }
            return Err(err);
        }
        lens[n] = r as usize;
        truncated[n] = msg.msg_flags & libc::MSG_TRUNC != 0;
        n += 1;
    }
    Ok(n)
}

/// Sends frames one call each until one is refused.
pub(crate) fn send_each(fd: RawFd, frames: &[&[u8]]) -> io::Result<usize> {
    for (i, frame) in frames.iter().enumerate() {
        // SAFETY: frame is a valid readable buffer of its length.
        let r = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), SEND_FLAGS) };
        if r < 0 {
            let err = io::Error::last_os_error();
            return if i > 0 { Ok(i) } else { Err(err) };
        }
    }
    Ok(frames.len())
}

/// Receives up to `bufs.len()` datagrams in as few calls as the platform allows.
pub(crate) fn recv_batch(fd: RawFd, bufs: &mut [Vec<u8>], lens: &mut [usize], truncated: &mut [bool]) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    return mmsg::recv(fd, bufs, lens, truncated);
    #[cfg(target_os = "macos")]
    return match msg_x::functions() {
        Some(f) => msg_x::recv(f, fd, bufs, lens, truncated),
        None => recv_each(fd, bufs, lens, truncated),
    };
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    return recv_each(fd, bufs, lens, truncated);
}

/// Sends frames in as few calls as the platform allows.
pub(crate) fn send_batch(fd: RawFd, frames: &[&[u8]]) -> io::Result<usize> {
    if frames.is_empty() {
        return Ok(0);
    }
    #[cfg(target_os = "linux")]
    return mmsg::send(fd, frames);
    #[cfg(target_os = "macos")]
    return match msg_x::functions() {
        Some(f) => msg_x::send(f, fd, frames),
        None => send_each(fd, frames),
    };
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    return send_each(fd, frames);
}

#[cfg(target_os = "linux")]
mod mmsg {
    use super::*;

    /// One message header per iovec, each over that iovec alone; the
    /// headers point into `iovs`, which must outlive the call they serve.
    fn headers(iovs: &mut [libc::iovec]) -> Vec<libc::mmsghdr> {
        iovs.iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect()
    }

    pub(super) fn recv(fd: RawFd, bufs: &mut [Vec<u8>], lens: &mut [usize], truncated: &mut [bool]) -> io::Result<usize> {
        let mut iovs: Vec<libc::iovec> =
            bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
        let mut msgs = headers(&mut iovs);
        // SAFETY: msgs holds msgs.len() headers, each with one iovec over a
        // live buffer of its length; no name or control buffers.
        let r = unsafe { libc::recvmmsg(fd, msgs.as_mut_ptr(), msgs.len() as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = r as usize;
        for (i, m) in msgs.iter().take(n).enumerate() {
            lens[i] = m.msg_len as usize;
            truncated[i] = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(n)
    }

    pub(super) fn send(fd: RawFd, frames: &[&[u8]]) -> io::Result<usize> {
        let mut iovs: Vec<libc::iovec> =
            frames.iter().map(|f| libc::iovec { iov_base: f.as_ptr() as *mut libc::c_void, iov_len: f.len() }).collect();
        let mut msgs = headers(&mut iovs);
        // SAFETY: msgs holds msgs.len() headers, each with one iovec over a
        // live frame; sendmmsg only reads the frames.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), msgs.len() as libc::c_uint, SEND_FLAGS) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }
}

/// macOS `recvmsg_x`/`sendmsg_x`: private libSystem calls, declared here from
/// XNU `bsd/sys/socket_private.h` (`struct msghdr_x` and the prototypes),
/// resolved with `dlsym` so a libSystem without them means per-frame calls,
/// not a failure to load.
#[cfg(target_os = "macos")]
mod msg_x {
    use super::*;
    use std::sync::OnceLock;

    /// `struct msghdr_x` (XNU `bsd/sys/socket_private.h`): `struct msghdr`
    /// followed by `size_t msg_datalen`; 56 bytes on LP64.
    #[repr(C)]
    #[allow(non_camel_case_types)]
    struct msghdr_x {
        msg_name: *mut libc::c_void,
        msg_namelen: libc::socklen_t,
        msg_iov: *mut libc::iovec,
        msg_iovlen: libc::c_int,
        msg_control: *mut libc::c_void,
        msg_controllen: libc::socklen_t,
        msg_flags: libc::c_int,
        msg_datalen: libc::size_t,
    }

    const _: () = assert!(std::mem::size_of::<msghdr_x>() == 56);

    /// `ssize_t recvmsg_x(int s, const struct msghdr_x *msgp, u_int cnt, int flags)`
    /// and `sendmsg_x` with the same parameters.
    type MsgXFn = unsafe extern "C" fn(libc::c_int, *const msghdr_x, libc::c_uint, libc::c_int) -> libc::ssize_t;

    #[derive(Clone, Copy)]
    pub(super) struct Functions {
        recv: MsgXFn,
        send: MsgXFn,
    }

    pub(super) fn functions() -> Option<Functions> {
        static FUNCTIONS: OnceLock<Option<Functions>> = OnceLock::new();
        *FUNCTIONS.get_or_init(|| {
            // SAFETY: dlsym with RTLD_DEFAULT and NUL-terminated names only
            // looks symbols up.
            let (recv, send) = unsafe {
                (libc::dlsym(libc::RTLD_DEFAULT, c"recvmsg_x".as_ptr()), libc::dlsym(libc::RTLD_DEFAULT, c"sendmsg_x".as_ptr()))
            };
            if recv.is_null() || send.is_null() {
                log::info!("recvmsg_x/sendmsg_x not found; datagram_next uses one call per frame");
                return None;
            }
            // SAFETY: both symbols are libSystem's recvmsg_x/sendmsg_x, whose
            // prototypes MsgXFn matches (socket_private.h).
            unsafe { Some(Functions { recv: std::mem::transmute::<*mut libc::c_void, MsgXFn>(recv), send: std::mem::transmute::<*mut libc::c_void, MsgXFn>(send) }) }
        })
    }

    fn header(iov: &mut libc::iovec) -> msghdr_x {
        msghdr_x {
            msg_name: std::ptr::null_mut(),
            msg_namelen: 0,
            msg_iov: iov,
            msg_iovlen: 1,
            msg_control: std::ptr::null_mut(),
            msg_controllen: 0,
            msg_flags: 0,
            msg_datalen: 0,
        }
    }

    pub(super) fn recv(f: Functions, fd: RawFd, bufs: &mut [Vec<u8>], lens: &mut [usize], truncated: &mut [bool]) -> io::Result<usize> {
        let mut iovs: Vec<libc::iovec> =
            bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
        let msgs: Vec<msghdr_x> = iovs.iter_mut().map(header).collect();
        // SAFETY: msgs holds msgs.len() headers with zeroed flags/datalen, no
        // name or control, one iovec each over a live buffer of its length.
        let r = unsafe { (f.recv)(fd, msgs.as_ptr(), msgs.len() as libc::c_uint, libc::MSG_DONTWAIT) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if r == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = r as usize;
        for (i, m) in msgs.iter().take(n).enumerate() {
            lens[i] = m.msg_datalen;
            truncated[i] = m.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(n)
    }

    pub(super) fn send(f: Functions, fd: RawFd, frames: &[&[u8]]) -> io::Result<usize> {
        let mut iovs: Vec<libc::iovec> =
            frames.iter().map(|b| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() }).collect();
        let msgs: Vec<msghdr_x> = iovs.iter_mut().map(header).collect();
        // SAFETY: msgs holds msgs.len() headers with one iovec each over a
        // live frame; sendmsg_x only reads them.
        let r = unsafe { (f.send)(fd, msgs.as_ptr(), msgs.len() as libc::c_uint, SEND_FLAGS) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if r == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(r as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn pair() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        let (a, b) = crate::adaptor::socket::socketpair(crate::adaptor::Kind::Datagram).unwrap();
        crate::adaptor::socket::set_nonblocking(&a).unwrap();
        crate::adaptor::socket::set_nonblocking(&b).unwrap();
        (a, b)
    }

    #[test]
    fn batched_and_single_calls_carry_the_same_datagrams() {
        let (a, b) = pair();
        let frames: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 20 + i as usize]).collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        assert_eq!(send_batch(a.as_raw_fd(), &refs[..3]).unwrap(), 3);
        assert_eq!(send_each(a.as_raw_fd(), &refs[3..]).unwrap(), 2);
        let mut bufs = vec![vec![0u8; 64]; 8];
        let mut lens = [0usize; 8];
        let mut trunc = [false; 8];
        let n = recv_batch(b.as_raw_fd(), &mut bufs[..2], &mut lens[..2], &mut trunc[..2]).unwrap();
        assert_eq!(n, 2);
        let m = recv_each(b.as_raw_fd(), &mut bufs[2..], &mut lens[2..], &mut trunc[2..]).unwrap();
        assert_eq!(m, 3);
        for i in 0..5 {
            assert_eq!(&bufs[i][..lens[i]], frames[i].as_slice());
            assert!(!trunc[i]);
        }
        let err = recv_batch(b.as_raw_fd(), &mut bufs, &mut lens, &mut trunc).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn oversized_datagrams_are_flagged_truncated() {
        let (a, b) = pair();
        send_each(a.as_raw_fd(), &[&[7u8; 100]]).unwrap();
        send_batch(a.as_raw_fd(), &[&[8u8; 100]]).unwrap();
        let mut bufs = vec![vec![0u8; 50]; 1];
        let (mut lens, mut trunc) = ([0usize; 1], [false; 1]);
        assert_eq!(recv_each(b.as_raw_fd(), &mut bufs, &mut lens, &mut trunc).unwrap(), 1);
        assert!(trunc[0]);
        assert_eq!(recv_batch(b.as_raw_fd(), &mut bufs, &mut lens, &mut trunc).unwrap(), 1);
        assert!(trunc[0]);
    }
}
