//! One receive on a datagram endpoint socket, decoded: the sender's
//! address, its credentials (SCM_CREDENTIALS, Linux) and whether the
//! datagram arrived cut. Kernel-facing and portable; the demux
//! ([`super::datagram`]) decides what to do with it.
//!
//! Thread: the endpoint thread.
//!
//! Invariants (each with a test below, on every OS): an unbound sender is
//! an empty address (Linux: no name; macOS: XNU's `sun_noname`), so it can
//! never get a port; every descriptor a client sends (SCM_RIGHTS) is
//! closed; a datagram longer than the buffer is marked cut (`MSG_TRUNC`).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::sys::sun_path_offset;

pub(super) struct Datagram {
    pub(super) len: usize,
    /// The sender's `sun_path` bytes (empty: unbound sender).
    pub(super) addr: Vec<u8>,
    /// uid, gid, pid from SCM_CREDENTIALS (Linux).
    pub(super) creds: Option<(u32, u32, i32)>,
    /// The datagram was longer than the buffer and arrived cut (`MSG_TRUNC`).
    pub(super) truncated: bool,
}

/// A sender's address from the `sun_path` bytes `recvmsg` filled in (up to
/// `msg_namelen`); empty for an unbound sender. With `abstract_names`
/// (Linux) a leading NUL starts an abstract name, kept whole. Without them
/// (macOS, the BSDs) a leading NUL is an unbound sender: XNU reports one as
/// `sun_noname`, 14 zero bytes (docs/macos.md), which no reply can reach.
fn sender_address(sun_path: &[u8], abstract_names: bool) -> Vec<u8> {
    let mut addr = Vec::new();
    sender_address_into(sun_path, abstract_names, &mut addr);
    addr
}

/// [`sender_address`] into `addr` (cleared first; its buffer is reused).
fn sender_address_into(sun_path: &[u8], abstract_names: bool, addr: &mut Vec<u8>) {
    addr.clear();
    match sun_path.first() {
        None => {}
        Some(0) if abstract_names => addr.extend_from_slice(sun_path),
        Some(0) => {}
        // A filesystem path: up to its NUL.
        Some(_) => addr.extend_from_slice(&sun_path[..sun_path.iter().position(|&c| c == 0).unwrap_or(sun_path.len())]),
    }
}

/// The first `len` bytes of `sun_path` as bytes (`c_char` is `i8` or `u8`
/// by platform).
fn path_bytes(sun_path: &[libc::c_char], len: usize) -> &[u8] {
    let len = len.min(sun_path.len());
    // SAFETY: c_char and u8 have the same size and alignment, and the
    // first `len` elements of `sun_path` are initialised.
    unsafe { std::slice::from_raw_parts(sun_path.as_ptr().cast::<u8>(), len) }
}

/// Walks the control messages `recvmsg` wrote for `msg`: returns the
/// sender's credentials (SCM_CREDENTIALS, Linux) and closes every
/// descriptor a client sent (SCM_RIGHTS), on every platform: fds sent to an
/// endpoint are not ours to keep, and the kernel installed them in this
/// process (XNU `unp_externalize` as Linux `scm_detach_fds`).
///
/// # Safety
/// `msg` is the header a successful `recvmsg` just filled in, its control
/// buffer still live.
unsafe fn take_control(msg: &libc::msghdr) -> Option<(u32, u32, i32)> {
    #[allow(unused_mut)]
    let mut creds = None;
    // SAFETY: walks the control messages the kernel wrote into the buffer
    // `msg` points at (the caller's promise); CMSG_* stay inside it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            #[cfg(target_os = "linux")]
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_CREDENTIALS {
                let c: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                creds = Some((c.uid, c.gid, c.pid));
            }
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let count = ((*cmsg).cmsg_len as usize).saturating_sub(data as usize - cmsg as usize) / std::mem::size_of::<libc::c_int>();
                for k in 0..count {
                    let fd: libc::c_int = std::ptr::read_unaligned(data.cast::<libc::c_int>().add(k));
                    drop(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    creds
}

/// One datagram with its sender's address (and credentials on Linux);
/// `None` when nothing is waiting.
#[cfg_attr(target_os = "linux", allow(dead_code))]
pub(super) fn recv_from(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<Datagram>> {
    // SAFETY: sockaddr_un is plain old data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain old data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_un).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points at valid buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: recvmsg succeeded and `control` is still live.
    let creds = unsafe { take_control(&msg) };
    let path_len = (msg.msg_namelen as usize).saturating_sub(sun_path_offset());
    let addr = sender_address(path_bytes(&addr.sun_path, path_len), cfg!(target_os = "linux"));
    let truncated = msg.msg_flags & libc::MSG_TRUNC != 0;
    Ok(Some(Datagram { len: (n as usize).min(buf.len()), addr, creds, truncated }))
}

/// Receives up to `bufs.len()` datagrams, each with its sender's address
/// and credentials; datagram `k` lands in `bufs[k]`, what is known of it in
/// `out[k]`. Linux: one `recvmmsg`, and the entries of `out` (their
/// address buffers) are reused from batch to batch, so `out` may hold more
/// than this batch: only the first of them, as many as returned, are its;
/// elsewhere one `recvmsg` each, into `out` cleared first. Returns how many
/// (0: nothing waiting).
pub(super) fn recv_batch_from(fd: RawFd, bufs: &mut [Vec<u8>], out: &mut Vec<Datagram>) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        let n = bufs.len();
        // SAFETY: sockaddr_un, iovec, mmsghdr are plain old data.
        let mut addrs: Vec<libc::sockaddr_un> = vec![unsafe { std::mem::zeroed() }; n];
        let mut controls = vec![[0u64; 16]; n];
        let mut iovs: Vec<libc::iovec> = bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
        // SAFETY: as above.
        let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; n];
        for k in 0..n {
            let h = &mut msgs[k].msg_hdr;
            h.msg_name = (&mut addrs[k] as *mut libc::sockaddr_un).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            h.msg_iov = &mut iovs[k];
            h.msg_iovlen = 1;
            h.msg_control = controls[k].as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of_val(&controls[k]) as _;
        }
        // SAFETY: every header points at live buffers of the stated sizes.
        let r = unsafe { libc::recvmmsg(fd, msgs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let r = r as usize;
        if out.len() < r {
            out.resize_with(r, || Datagram { len: 0, addr: Vec::new(), creds: None, truncated: false });
        }
        for (k, d) in out.iter_mut().enumerate().take(r) {
            let h = &msgs[k].msg_hdr;
            // SAFETY: recvmmsg filled header k; its control buffer is live.
            d.creds = unsafe { take_control(h) };
            let path_len = (h.msg_namelen as usize).saturating_sub(sun_path_offset());
            sender_address_into(path_bytes(&addrs[k].sun_path, path_len), true, &mut d.addr);
            d.len = (msgs[k].msg_len as usize).min(bufs[k].len());
            d.truncated = h.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(r)
    }
    #[cfg(not(target_os = "linux"))]
    {
        out.clear();
        for b in bufs.iter_mut() {
            match recv_from(fd, b) {
                Ok(Some(d)) => out.push(d),
                Ok(None) => break,
                Err(e) if out.is_empty() => return Err(e),
                // What was received stands; the error comes back next time.
                Err(_) => break,
            }
        }
        Ok(out.len())
    }
}

/// The receive path for the fuzz targets (`crate::fuzzing`, feature
/// `fuzzing`): the same calls, their results as public fields.
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing {
    use std::io;
    use std::os::fd::RawFd;

    /// One datagram received: [`super::Datagram`]'s fields.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Received {
        pub len: usize,
        pub addr: Vec<u8>,
        pub creds: Option<(u32, u32, i32)>,
        pub truncated: bool,
    }

    impl From<&super::Datagram> for Received {
        fn from(d: &super::Datagram) -> Received {
            Received { len: d.len, addr: d.addr.clone(), creds: d.creds, truncated: d.truncated }
        }
    }

    /// [`super::recv_from`].
    pub fn recv_from(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<Received>> {
        Ok(super::recv_from(fd, buf)?.as_ref().map(Received::from))
    }

    /// [`super::recv_batch_from`] with its entries kept from batch to
    /// batch, as the endpoint thread keeps them.
    #[derive(Default)]
    pub struct Batches(Vec<super::Datagram>);

    impl Batches {
        pub fn recv(&mut self, fd: RawFd, bufs: &mut [Vec<u8>]) -> io::Result<Vec<Received>> {
            let n = super::recv_batch_from(fd, bufs, &mut self.0)?;
            Ok(self.0[..n].iter().map(Received::from).collect())
        }
    }

    /// [`super::sender_address`].
    pub fn sender_address(sun_path: &[u8], abstract_names: bool) -> Vec<u8> {
        super::sender_address(sun_path, abstract_names)
    }
}

/// The receive path's decisions, on every OS (docs/macos.md: what XNU
/// hands a datagram receiver).
#[cfg(test)]
mod receive_tests {
    use super::*;
    use crate::sys::set_flags;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn an_unbound_sender_on_macos_is_no_address() {
        // XNU's `sun_noname`: sun_len 16, AF_LOCAL, 14 zero bytes of path.
        assert_eq!(sender_address(&[0u8; 14], false), Vec::<u8>::new(), "unbound on macOS: never a port");
        assert_eq!(sender_address(b"/tmp/vm.sock\0\0", false), b"/tmp/vm.sock".to_vec());
        assert_eq!(sender_address(b"/tmp/vm.sock\0\0", true), b"/tmp/vm.sock".to_vec());
        // Linux: an autobound or abstract name is a real address.
        assert_eq!(sender_address(b"\0abcde", true), b"\0abcde".to_vec());
        assert_eq!(sender_address(b"", true), Vec::<u8>::new());
        assert_eq!(sender_address(b"", false), Vec::<u8>::new());
    }

    /// Sends `data` with `fd` attached (SCM_RIGHTS) on `sock`.
    fn send_with_fd(sock: &UnixDatagram, data: &[u8], fd: RawFd) {
        let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
        let mut control = [0u64; 8];
        // SAFETY: msghdr is plain old data; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure size computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as _;
        // SAFETY: the control buffer has room for one header and one int.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
        }
        // SAFETY: msg points at live buffers of the stated sizes.
        assert!(unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) } >= 0, "{}", io::Error::last_os_error());
    }

    #[test]
    fn descriptors_a_client_sends_are_closed() {
        let (client, endpoint) = UnixDatagram::pair().unwrap();
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: room for two fds.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: pipe() just returned two fds we own.
        let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        send_with_fd(&client, b"frame", write_end.as_raw_fd());
        drop(write_end);
        let mut buf = [0u8; 64];
        let got = recv_from(endpoint.as_raw_fd(), &mut buf).unwrap().expect("a datagram");
        assert_eq!(&buf[..got.len], b"frame");
        // The only other copy of the write end was the one received: once it
        // is closed, the pipe reads end-of-file (not EAGAIN, as it would
        // while the received copy leaked).
        set_flags(read_end.as_raw_fd()).unwrap();
        let mut one = [0u8; 1];
        // SAFETY: reads at most one byte into `one`.
        let n = unsafe { libc::read(read_end.as_raw_fd(), one.as_mut_ptr().cast(), 1) };
        assert_eq!(n, 0, "the received descriptor was closed ({})", io::Error::last_os_error());
    }

    #[test]
    fn a_batch_keeps_each_senders_address_and_cut_mark() {
        let dir = std::env::temp_dir().join(format!("vmnet-rs-recv-batch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let endpoint = UnixDatagram::bind(dir.join("e")).unwrap();
        let a = UnixDatagram::bind(dir.join("a")).unwrap();
        let b = UnixDatagram::bind(dir.join("b")).unwrap();
        a.send_to(&[1u8; 30], dir.join("e")).unwrap();
        b.send_to(&[2u8; 200], dir.join("e")).unwrap();
        a.send_to(&[3u8; 40], dir.join("e")).unwrap();
        let mut bufs = vec![vec![0u8; 100]; 8];
        let mut got = Vec::new();
        assert_eq!(recv_batch_from(endpoint.as_raw_fd(), &mut bufs, &mut got).unwrap(), 3);
        let path = |n: &str| dir.join(n).as_os_str().as_encoded_bytes().to_vec();
        assert_eq!((got[0].addr.clone(), got[0].len, got[0].truncated), (path("a"), 30, false));
        assert_eq!((got[1].addr.clone(), got[1].truncated), (path("b"), true), "200 bytes into 100");
        assert_eq!((got[2].addr.clone(), got[2].len), (path("a"), 40));
        assert_eq!(&bufs[2][..40], &[3u8; 40][..]);
        assert_eq!(recv_batch_from(endpoint.as_raw_fd(), &mut bufs, &mut got).unwrap(), 0, "nothing waiting");
        // A smaller batch reuses the entries: its own are first, whole.
        b.send_to(&[4u8; 50], dir.join("e")).unwrap();
        assert_eq!(recv_batch_from(endpoint.as_raw_fd(), &mut bufs, &mut got).unwrap(), 1);
        assert_eq!((got[0].addr.clone(), got[0].len, got[0].truncated), (path("b"), 50, false));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_datagram_longer_than_the_buffer_is_marked_cut() {
        let (client, endpoint) = UnixDatagram::pair().unwrap();
        client.send(&[7u8; 200]).unwrap();
        client.send(&[8u8; 100]).unwrap();
        let mut buf = [0u8; 100];
        let cut = recv_from(endpoint.as_raw_fd(), &mut buf).unwrap().expect("a datagram");
        assert!(cut.truncated, "200 bytes into 100");
        assert_eq!(cut.len, 100);
        let whole = recv_from(endpoint.as_raw_fd(), &mut buf).unwrap().expect("a datagram");
        assert!(!whole.truncated, "exactly the buffer's size is whole");
    }
}
