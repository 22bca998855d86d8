//! Datagram I/O on the VM socket: per frame (`recvmsg`/`send`) or batched
//! (Linux `recvmmsg`/`sendmmsg`; macOS `recvmsg_x`/`sendmsg_x`, probed with
//! `dlsym` once and replaced by per-frame calls when absent). Runs on the
//! relay thread; every call is non-blocking (`MSG_DONTWAIT`). The macOS
//! path is chosen by the `apple_api` cfg, so the model build runs it on
//! Linux against the model's `recvmsg_x`/`sendmsg_x` (docs/macos.md, "The
//! model"; tests in `apple_model_tests/batch_io.rs`).
//!
//! Invariant shared by all paths: a receive returns how many datagrams it
//! took (0 is never returned: "nothing now" is `WouldBlock`), with each
//! length and whether it was cut to its buffer; a send returns how many
//! leading frames the kernel took, or the error of the first one.
//!
//! Oversized datagrams: XNU's `recvmsg_x` clears each message's `msg_flags`
//! and cuts `msg_datalen` to the buffer (`bsd/kern/uipc_syscalls.c`), so no
//! per-message `MSG_TRUNC` ever reaches us there. Every path therefore also
//! treats a datagram that fills its whole buffer as cut, and callers size
//! each buffer [`receive_buffer_len`]: one byte more than the largest frame.
//!
//! Batched sends on macOS: XNU's `sendmsg_x` (xnu >= 10002, macOS 14;
//! `bsd/kern/uipc_syscalls.c`) checks each datagram against the socket's
//! send limit (its send high-water mark), not the call's total: the first
//! datagram too large fails the call with `EMSGSIZE`, a later one ends the
//! batch and the call returns how many went before it. So a call carries
//! up to the count and stops before a frame over the limit
//! ([`send_chunk_len`]); such a frame goes alone, so its error names it, and
//! a chunk refused anyway (a limit lower than the one the adaptor was
//! granted) is re-sent one frame per call ([`send_chunked`]). The limit is
//! the one the adaptor was granted when it set its buffers (`SO_SNDBUF`
//! reads the high-water mark on XNU), passed in, not asked for per batch.

use std::io;
use std::os::fd::RawFd;

/// Flags of the per-frame calls, which reach the kernel itself (Linux's,
/// also in the model build); the libSystem batch calls take Darwin's
/// `MSG_DONTWAIT` from `darwin_shim`.
#[cfg(target_os = "linux")]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
#[cfg(not(target_os = "linux"))]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT;

/// Length of a receive buffer for frames of at most `max_frame` bytes: one
/// byte more, so a datagram that fills it is known to be oversized.
pub(crate) fn receive_buffer_len(max_frame: usize) -> usize {
    max_frame + 1
}

/// Whether a received datagram of `len` bytes in a buffer of `capacity`
/// bytes must be treated as cut: the kernel said so, or it filled the buffer
/// (which a frame no larger than the buffer minus one byte never does).
fn is_cut(len: usize, capacity: usize, kernel_says_truncated: bool) -> bool {
    kernel_says_truncated || len >= capacity
}

/// How many leading `frames` one batched send may carry: at most
/// `max_count`, stopping before the first frame longer than `send_limit`
/// (the kernel checks each datagram against it, not their total). Always at
/// least one (when `frames` is not empty): a frame over the limit goes
/// alone, so its own error names it.
#[cfg_attr(not(apple_api), allow(dead_code))]
pub(crate) fn send_chunk_len(frames: &[&[u8]], max_count: usize, send_limit: usize) -> usize {
    let mut n = 0;
    for frame in frames.iter().take(max_count.max(1)) {
        if frame.len() > send_limit {
            return n.max(1);
        }
        n += 1;
    }
    n
}

/// Sends `frames` in chunks of [`send_chunk_len`]: `batch` makes one batched
/// call for a chunk of two or more (returning how many it took), `single`
/// sends one frame per call (a lone frame, or a chunk `batch` refused with
/// `EMSGSIZE`, so the refusal lands on the frame that caused it and never
/// costs the frames around it). Returns how many leading frames were taken,
/// or the error of the first one.
#[cfg_attr(not(apple_api), allow(dead_code))]
pub(crate) fn send_chunked(
    frames: &[&[u8]],
    max_count: usize,
    send_limit: usize,
    mut batch: impl FnMut(&[&[u8]]) -> io::Result<usize>,
    mut single: impl FnMut(&[&[u8]]) -> io::Result<usize>,
) -> io::Result<usize> {
    let mut sent = 0;
    while sent < frames.len() {
        let rest = &frames[sent..];
        let n = send_chunk_len(rest, max_count, send_limit);
        let chunk = &rest[..n];
        let result = if n == 1 {
            single(chunk)
        } else {
            match batch(chunk) {
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => single(chunk),
                other => other,
            }
        };
        match result {
            Ok(taken) => {
                let taken = taken.min(n);
                sent += taken;
                if taken < n {
                    break;
                }
            }
            Err(e) if sent == 0 => return Err(e),
            // What was sent stands; the error comes back on the next call,
            // with its frame first.
            Err(_) => break,
        }
    }
    Ok(sent)
}

/// Whether batched calls are used on this platform (Linux always; macOS when
/// `recvmsg_x`/`sendmsg_x` resolve).
pub(crate) fn batched_available() -> bool {
    #[cfg(all(target_os = "linux", not(apple_api)))]
    return true;
    #[cfg(apple_api)]
    return msg_x::functions().is_some();
    #[cfg(not(any(target_os = "linux", apple_api)))]
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
        truncated[n] = is_cut(r as usize, bufs[n].len(), msg.msg_flags & libc::MSG_TRUNC != 0);
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
    #[cfg(all(target_os = "linux", not(apple_api)))]
    return mmsg::recv(fd, bufs, lens, truncated);
    #[cfg(apple_api)]
    return match msg_x::functions() {
        Some(f) => msg_x::recv(f, fd, bufs, lens, truncated),
        None => recv_each(fd, bufs, lens, truncated),
    };
    #[cfg(not(any(target_os = "linux", apple_api)))]
    return recv_each(fd, bufs, lens, truncated);
}

/// Sends frames in as few calls as the platform allows. `send_limit`: the
/// socket's send limit as granted when its buffers were set (`SO_SNDBUF`;
/// `usize::MAX` when unknown), used where the kernel checks each datagram
/// against it (macOS).
pub(crate) fn send_batch(fd: RawFd, frames: &[&[u8]], send_limit: usize) -> io::Result<usize> {
    if frames.is_empty() {
        return Ok(0);
    }
    #[cfg(all(target_os = "linux", not(apple_api)))]
    return {
        let _ = send_limit;
        mmsg::send(fd, frames)
    };
    #[cfg(apple_api)]
    return match msg_x::functions() {
        Some(f) => msg_x::send(f, fd, frames, send_limit),
        None => send_each(fd, frames),
    };
    #[cfg(not(any(target_os = "linux", apple_api)))]
    return {
        let _ = send_limit;
        send_each(fd, frames)
    };
}

/// Sends frames from an unconnected datagram socket to the one peer at
/// `addr`, in as few calls as the platform allows; returns how many leading
/// frames the peer took, or the error of the first one. A full peer is
/// waited for, about `wait` at most per call, then reported as
/// `WouldBlock`: Linux lets the socket's `SO_SNDTIMEO` (set to `wait` by
/// its owner; the socket is blocking) sleep until that one peer has room;
/// elsewhere (XNU fails a full receiver with ENOBUFS and has no such wait)
/// the first refused frame is tried again once after sleeping `wait`.
pub(crate) fn send_batch_to(
    fd: RawFd,
    addr: &libc::sockaddr_un,
    addr_len: libc::socklen_t,
    frames: &[&[u8]],
    send_limit: usize,
    wait: std::time::Duration,
) -> io::Result<usize> {
    if frames.is_empty() {
        return Ok(0);
    }
    #[cfg(all(target_os = "linux", not(apple_api)))]
    return {
        let _ = (send_limit, wait);
        mmsg::send_to(fd, addr, addr_len, frames)
    };
    #[cfg(not(all(target_os = "linux", not(apple_api))))]
    return {
        let _ = send_limit;
        let send_one = |frame: &[u8]| -> io::Result<()> {
            // SAFETY: sends frame.len() bytes of `frame` to a valid address of addr_len bytes.
            let r = unsafe { libc::sendto(fd, frame.as_ptr().cast(), frame.len(), SEND_FLAGS, (addr as *const libc::sockaddr_un).cast(), addr_len) };
            if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
        };
        let is_full = |e: &io::Error| e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS);
        for (i, frame) in frames.iter().enumerate() {
            let mut r = send_one(frame);
            if matches!(&r, Err(e) if is_full(e)) {
                std::thread::sleep(wait);
                r = send_one(frame);
            }
            match r {
                Ok(()) => {}
                Err(_) if i > 0 => return Ok(i),
                Err(e) if is_full(&e) => return Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => return Err(e),
            }
        }
        Ok(frames.len())
    };
}

#[cfg(all(target_os = "linux", not(apple_api)))]
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
            truncated[i] = is_cut(lens[i], bufs[i].len(), m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0);
        }
        Ok(n)
    }

    /// `sendmmsg` of every frame to `addr` on a blocking socket, without
    /// `MSG_DONTWAIT`: each datagram may wait for the peer's room up to the
    /// socket's `SO_SNDTIMEO`. The headers point at `addr` and `iovs`,
    /// which outlive the call.
    pub(super) fn send_to(fd: RawFd, addr: &libc::sockaddr_un, addr_len: libc::socklen_t, frames: &[&[u8]]) -> io::Result<usize> {
        let mut iovs: Vec<libc::iovec> =
            frames.iter().map(|f| libc::iovec { iov_base: f.as_ptr() as *mut libc::c_void, iov_len: f.len() }).collect();
        let mut msgs = headers(&mut iovs);
        for m in &mut msgs {
            m.msg_hdr.msg_name = addr as *const libc::sockaddr_un as *mut libc::c_void;
            m.msg_hdr.msg_namelen = addr_len;
        }
        // SAFETY: msgs holds msgs.len() headers, each naming a live address
        // of addr_len bytes and one iovec over a live frame; sendmmsg only
        // reads them.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), msgs.len() as libc::c_uint, libc::MSG_NOSIGNAL) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
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
#[cfg(apple_api)]
pub(crate) mod msg_x {
    use super::*;
    use std::sync::OnceLock;

    /// `struct msghdr_x` (XNU `bsd/sys/socket_private.h`): `struct msghdr`
    /// followed by `size_t msg_datalen`; 56 bytes on LP64.
    #[repr(C)]
    #[allow(non_camel_case_types)]
    pub(crate) struct msghdr_x {
        pub(crate) msg_name: *mut libc::c_void,
        pub(crate) msg_namelen: libc::socklen_t,
        pub(crate) msg_iov: *mut libc::iovec,
        pub(crate) msg_iovlen: libc::c_int,
        pub(crate) msg_control: *mut libc::c_void,
        pub(crate) msg_controllen: libc::socklen_t,
        pub(crate) msg_flags: libc::c_int,
        pub(crate) msg_datalen: libc::size_t,
    }

    const _: () = assert!(std::mem::size_of::<msghdr_x>() == 56);

    /// `ssize_t recvmsg_x(int s, const struct msghdr_x *msgp, u_int cnt, int flags)`
    /// and `sendmsg_x` with the same parameters (socket_private.h). The
    /// pointer is declared `*mut`: `recvmsg_x` writes `msg_datalen` and
    /// `msg_flags` back into the array despite the `const`, so callers must
    /// pass a pointer they may write through.
    pub(crate) type MsgXFn = unsafe extern "C" fn(libc::c_int, *mut msghdr_x, libc::c_uint, libc::c_int) -> libc::ssize_t;

    #[derive(Clone, Copy)]
    pub(crate) struct Functions {
        pub(crate) recv: MsgXFn,
        pub(crate) send: MsgXFn,
    }

    pub(crate) fn functions() -> Option<Functions> {
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

    pub(crate) fn header(iov: &mut libc::iovec) -> msghdr_x {
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
        // The kernel writes msg_datalen (and msg_flags) back into this array,
        // so it is passed through a mutable pointer even though the prototype
        // says `const`.
        let mut msgs: Vec<msghdr_x> = iovs.iter_mut().map(header).collect();
        // SAFETY: msgs holds msgs.len() headers with zeroed flags/datalen, no
        // name or control, one iovec each over a live buffer of its length;
        // the array is writable for the call.
        let r = unsafe { (f.recv)(fd, msgs.as_mut_ptr(), msgs.len() as libc::c_uint, crate::darwin_shim::MSG_DONTWAIT) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if r == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = r as usize;
        for (i, m) in msgs.iter().take(n).enumerate() {
            // XNU never reports MSG_TRUNC here (it clears msg_flags and cuts
            // msg_datalen to the buffer); a full buffer is the only sign.
            lens[i] = m.msg_datalen;
            truncated[i] = is_cut(m.msg_datalen, bufs[i].len(), m.msg_flags & libc::MSG_TRUNC != 0);
        }
        Ok(n)
    }

    /// One `sendmsg_x` call over `frames`.
    fn send_call(f: Functions, fd: RawFd, frames: &[&[u8]]) -> io::Result<usize> {
        let mut iovs: Vec<libc::iovec> =
            frames.iter().map(|b| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() }).collect();
        let mut msgs: Vec<msghdr_x> = iovs.iter_mut().map(header).collect();
        // SAFETY: msgs holds msgs.len() headers with one iovec each over a
        // live frame; sendmsg_x only reads them.
        let r = unsafe { (f.send)(fd, msgs.as_mut_ptr(), msgs.len() as libc::c_uint, crate::darwin_shim::MSG_DONTWAIT) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if r == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(r as usize)
    }

    /// Sends in calls capped by count, each stopping before a frame over
    /// the send limit the adaptor was granted.
    pub(super) fn send(f: Functions, fd: RawFd, frames: &[&[u8]], send_limit: usize) -> io::Result<usize> {
        send_chunked(frames, frames.len(), send_limit, |chunk| send_call(f, fd, chunk), |one| send_each(fd, one))
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
        assert_eq!(send_batch(a.as_raw_fd(), &refs[..3], usize::MAX).unwrap(), 3);
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
        send_batch(a.as_raw_fd(), &[&[8u8; 100]], usize::MAX).unwrap();
        let mut bufs = vec![vec![0u8; 50]; 1];
        let (mut lens, mut trunc) = ([0usize; 1], [false; 1]);
        assert_eq!(recv_each(b.as_raw_fd(), &mut bufs, &mut lens, &mut trunc).unwrap(), 1);
        assert!(trunc[0]);
        assert_eq!(recv_batch(b.as_raw_fd(), &mut bufs, &mut lens, &mut trunc).unwrap(), 1);
        assert!(trunc[0]);
    }

    #[test]
    fn a_datagram_that_fills_its_buffer_is_cut_without_msg_trunc() {
        // The kernel sets no MSG_TRUNC for a datagram exactly as long as the
        // buffer; it must still count as cut (recvmsg_x never reports
        // MSG_TRUNC at all), and one byte less must pass.
        let (a, b) = pair();
        let max_frame = 60;
        let cap = receive_buffer_len(max_frame);
        let mut bufs = vec![vec![0u8; cap]; 2];
        let (mut lens, mut trunc) = ([0usize; 2], [false; 2]);
        for recv in [recv_each as fn(RawFd, &mut [Vec<u8>], &mut [usize], &mut [bool]) -> io::Result<usize>, recv_batch] {
            send_each(a.as_raw_fd(), &[&[1u8; 61], &[2u8; 60]]).unwrap();
            assert_eq!(recv(b.as_raw_fd(), &mut bufs, &mut lens, &mut trunc).unwrap(), 2);
            assert_eq!((lens[0], trunc[0]), (61, true), "a frame one byte over the largest is cut");
            assert_eq!((lens[1], trunc[1]), (60, false), "the largest frame passes");
            assert_eq!(&bufs[1][..60], &[2u8; 60][..]);
        }
    }

    #[test]
    fn chunks_are_capped_by_count_and_stop_before_a_frame_over_the_limit() {
        let f = |n: usize| vec![0u8; n];
        let (a, b, c, d) = (f(1000), f(1000), f(3000), f(10));
        let frames: Vec<&[u8]> = vec![&a, &b, &c, &d];
        assert_eq!(send_chunk_len(&frames, 64, usize::MAX), 4);
        assert_eq!(send_chunk_len(&frames, 3, usize::MAX), 3);
        // Each frame against the limit, not their total (XNU >= 14).
        assert_eq!(send_chunk_len(&frames[..2], 64, 1000), 2, "two frames at the limit make one call");
        assert_eq!(send_chunk_len(&frames, 64, 2000), 2, "the call stops before the frame over the limit");
        assert_eq!(send_chunk_len(&frames[2..], 64, 2000), 1, "a lone frame over the limit still goes, alone");
        assert_eq!(send_chunk_len(&frames[3..], 64, 2000), 1);
        assert_eq!(send_chunk_len(&frames, 0, 2000), 1, "a zero count still sends one");
        assert_eq!(send_chunk_len(&[], 64, 2000), 0);
    }

    /// A model of XNU's `sendmsg_x` (xnu >= 10002, docs/macos.md): each
    /// datagram is checked against `hiwat`; the first too large fails the
    /// call with EMSGSIZE, a later one ends it with the count so far. A
    /// per-frame send refuses only frames larger than `hiwat`.
    struct Kernel {
        hiwat: usize,
        delivered: Vec<usize>,
        batch_calls: usize,
        single_calls: usize,
    }

    impl Kernel {
        fn batch(&mut self, chunk: &[&[u8]]) -> io::Result<usize> {
            self.batch_calls += 1;
            for (i, f) in chunk.iter().enumerate() {
                if f.len() > self.hiwat {
                    return if i > 0 { Ok(i) } else { Err(io::Error::from_raw_os_error(libc::EMSGSIZE)) };
                }
                self.delivered.push(f[0] as usize);
            }
            Ok(chunk.len())
        }

        fn single(&mut self, chunk: &[&[u8]]) -> io::Result<usize> {
            for (i, f) in chunk.iter().enumerate() {
                self.single_calls += 1;
                if f.len() > self.hiwat {
                    return if i > 0 { Ok(i) } else { Err(io::Error::from_raw_os_error(libc::EMSGSIZE)) };
                }
                self.delivered.push(f[0] as usize);
            }
            Ok(chunk.len())
        }
    }

    fn run(kernel: &mut Kernel, frames: &[&[u8]], limit: usize) -> io::Result<usize> {
        let k = std::cell::RefCell::new(kernel);
        send_chunked(frames, 64, limit, |c| k.borrow_mut().batch(c), |c| k.borrow_mut().single(c))
    }

    #[test]
    fn a_batch_over_the_send_limit_in_total_is_still_one_call() {
        // 64 TSO-sized frames (~4 MiB) against a 1 MiB send limit: each
        // frame fits, so one call carries them all.
        let frames: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 65_000]).collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        let mut k = Kernel { hiwat: 1 << 20, delivered: Vec::new(), batch_calls: 0, single_calls: 0 };
        assert_eq!(run(&mut k, &refs, 1 << 20).unwrap(), 64);
        assert_eq!(k.delivered, (0..64).collect::<Vec<_>>());
        assert_eq!((k.batch_calls, k.single_calls), (1, 0));
    }

    #[test]
    fn an_emsgsize_under_a_stale_limit_resends_the_chunk_frame_by_frame() {
        // The adaptor was granted 1 MiB, the kernel now enforces 100 000
        // bytes: the chunk is refused for its first frame and sent one frame
        // per call, so the refusal lands on that frame alone.
        let sizes = [150_000usize, 100, 100];
        let frames: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| vec![i as u8; n]).collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        let mut k = Kernel { hiwat: 100_000, delivered: Vec::new(), batch_calls: 0, single_calls: 0 };
        let err = run(&mut k, &refs, 1 << 20).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE));
        assert_eq!((k.batch_calls, k.single_calls), (1, 1));
        assert_eq!(run(&mut k, &refs[1..], 1 << 20).unwrap(), 2);
        assert_eq!(k.delivered, vec![1, 2]);
    }

    #[test]
    fn only_the_frame_too_large_for_the_socket_fails() {
        // Frame 2 alone exceeds the limit: frames 0 and 1 go in one call,
        // the next call fails with frame 2 first (the relay drops it), and
        // the call after that carries frames 3 and 4.
        let sizes = [100usize, 100, 5000, 100, 100];
        let frames: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| vec![i as u8; n]).collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        let mut k = Kernel { hiwat: 4096, delivered: Vec::new(), batch_calls: 0, single_calls: 0 };
        assert_eq!(run(&mut k, &refs, 4096).unwrap(), 2);
        let err = run(&mut k, &refs[2..], 4096).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE));
        assert_eq!(run(&mut k, &refs[3..], 4096).unwrap(), 2);
        assert_eq!(k.delivered, vec![0, 1, 3, 4]);
        // Frame 2 is tried alone twice: once ending the first send, once first.
        assert_eq!((k.batch_calls, k.single_calls), (2, 2));
    }

    #[test]
    fn chunked_sends_on_a_real_socket_arrive_whole_and_in_order() {
        let (a, b) = pair();
        let mut frames: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 100 + i as usize]).collect();
        // One frame over the 500-byte limit ends a call and goes alone.
        frames[10] = vec![10u8; 600];
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        let mut calls = 0;
        let sent = send_chunked(
            &refs,
            64,
            500,
            |c| {
                calls += 1;
                send_batch(a.as_raw_fd(), c, usize::MAX)
            },
            |c| send_each(a.as_raw_fd(), c),
        )
        .unwrap();
        assert_eq!(sent, 20);
        assert_eq!(calls, 2, "frames 0-9 and 11-19 in one call each, frame 10 alone");
        let mut bufs = vec![vec![0u8; receive_buffer_len(1000)]; 32];
        let (mut lens, mut trunc) = ([0usize; 32], [false; 32]);
        assert_eq!(recv_batch(b.as_raw_fd(), &mut bufs, &mut lens, &mut trunc).unwrap(), 20);
        for i in 0..20 {
            assert_eq!(&bufs[i][..lens[i]], frames[i].as_slice());
            assert!(!trunc[i]);
        }
    }
}
