//! libSystem's private batch socket calls, declared in XNU
//! `bsd/sys/socket_private.h`:
//! `ssize_t recvmsg_x(int s, const struct msghdr_x *msgp, u_int cnt, int flags)`
//! and `sendmsg_x` with the same parameters. Their semantics are XNU's
//! (`bsd/kern/uipc_syscalls.c`, xnu-10002 to xnu-11417: `recvmsg_x`,
//! `sendmsg_x`, `sendit_x`; `bsd/kern/uipc_socket.c`: `soreceive_m_list`,
//! `sosend_list`), carried out with one Linux `recvmsg`/`sendmsg` per
//! message. Flags are Darwin's values (bsd/sys/socket.h,
//! socket_private.h); errno numbers are the process's (Linux's), by name.
//!
//! `recvmsg_x` (the `soreceive_m_list` path; `SO_DONTTRUNC`, which selects
//! `recvmsg_x_array`, has no Linux counterpart and is not modelled):
//! - `cnt` 0 or above `UIO_MAXIOV` (1024): EINVAL; above
//!   `kern.ipc.maxrecvmsgx` (256 by default): cut to 256.
//! - flags other than `MSG_DONTWAIT`/`MSG_NBIO`: EINVAL.
//! - The first datagram is waited for as the socket and flags say; the
//!   rest of the batch never waits. Nothing to take: -1 with
//!   EWOULDBLOCK, never 0.
//! - The datagrams are taken first, then copied out one header at a time:
//!   each message's `msg_iovlen` must be 1..=`UIO_MAXIOV` (else EMSGSIZE,
//!   the datagrams taken are lost); `msg_datalen` is what was copied (cut
//!   to the buffer, the rest dropped); `msg_flags` is set to 0: truncation
//!   goes only into call-wide flags that are never copied out, so no
//!   per-message `MSG_TRUNC`.
//! - Stream sockets: `soreceive_m_list` does not refuse them, and what it
//!   does with a byte stream is not established; the model aborts rather
//!   than guess (docs/macos.md, try-first list).
//!
//! `sendmsg_x`:
//! - `MSG_SKIPCFIL`: EPERM.
//! - A connected datagram socket takes `sendit_x` (`sendmsg_x_mode` 0):
//!   each message in turn is checked, `msg_iovlen` 1..=`UIO_MAXIOV` (else
//!   EMSGSIZE), its length against the send high-water mark (what
//!   `SO_SNDBUF` reads): the first too large fails the call with
//!   EMSGSIZE, a later one ends the list there. `msg_name` is ignored
//!   (a connected socket). Then `sosend_list` refuses flags other than
//!   `MSG_DONTWAIT`/`MSG_NBIO` (EINVAL) and sends the list one datagram at
//!   a time until one fails. A Unix-domain datagram whose receiver is full
//!   fails with ENOBUFS, never waiting (`bsd/kern/uipc_usrreq.c`
//!   `uipc_send`: `sbappendaddr` fails).
//! - Any other socket: one `sendit` per message until one fails.
//! - Either way, an error after some datagrams went (EINTR, EWOULDBLOCK,
//!   ENOBUFS, EMSGSIZE) becomes the count of those; any other error, or
//!   one before any went, is the call's. `cnt` 0 sends nothing and
//!   returns 0 (`sendmsg_x` has no `cnt` check). As in XNU, the count
//!   after an EMSGSIZE found while building the list counts the messages
//!   built, none of which went.
//!
//! Not modelled (the model aborts, naming the call): names and control
//! messages on receive (Linux's `sockaddr_un` and cmsgs are not Darwin's),
//! names on an unconnected send, control messages on send, and send flags
//! the model does not translate.
//!
//! For tests (not Apple API): `vmnet_model_msg_x_counts` tells how many
//! calls each function answered and how many datagrams they reported.

use std::ffi::{c_int, c_uint, c_void};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::control::called;

/// `struct msghdr_x` (socket_private.h): `struct msghdr` and
/// `size_t msg_datalen`.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct msghdr_x {
    pub msg_name: *mut c_void,
    pub msg_namelen: libc::socklen_t,
    pub msg_iov: *mut libc::iovec,
    pub msg_iovlen: c_int,
    pub msg_control: *mut c_void,
    pub msg_controllen: libc::socklen_t,
    pub msg_flags: c_int,
    pub msg_datalen: libc::size_t,
}

/// Darwin bsd/sys/socket.h and socket_private.h flag values.
pub const MSG_PEEK: c_int = 0x2;
pub const MSG_DONTWAIT: c_int = 0x80;
pub const MSG_NBIO: c_int = 0x20000;
pub const MSG_SKIPCFIL: c_int = 0x40000;
pub const MSG_NOSIGNAL: c_int = 0x80000;
/// bsd/sys/uio.h.
pub const UIO_MAXIOV: c_uint = 1024;
/// uipc_syscalls.c `SO_MAX_MSG_X_DEFAULT`, the default of
/// `kern.ipc.maxrecvmsgx`.
pub const MAX_RECVMSG_X: c_uint = 256;

/// Calls and datagrams: recvmsg_x's, then sendmsg_x's.
static COUNTS: [AtomicU64; 4] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// What `recvmsg_x` and `sendmsg_x` did in this process: `out[0]`/`out[1]`
/// the calls/datagrams received, `out[2]`/`out[3]` the calls/datagrams sent.
#[no_mangle]
pub extern "C" fn vmnet_model_msg_x_counts(out: *mut u64) {
    for (i, c) in COUNTS.iter().enumerate() {
        // SAFETY: the caller passes 4 writable u64s.
        unsafe { *out.add(i) = c.load(Ordering::Relaxed) };
    }
}

fn fail(errno: c_int) -> libc::ssize_t {
    // SAFETY: errno is thread-local.
    unsafe { *libc::__errno_location() = errno };
    -1
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

fn sockopt(s: c_int, name: c_int) -> Result<c_int, c_int> {
    let mut v: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: an int-sized out value and its length.
    let r = unsafe { libc::getsockopt(s, libc::SOL_SOCKET, name, (&mut v as *mut c_int).cast(), &mut len) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(v)
    }
}

fn is_connected(s: c_int) -> bool {
    // SAFETY: sockaddr_storage is plain data; getpeername writes at most len bytes.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: as above.
    unsafe { libc::getpeername(s, (&mut addr as *mut libc::sockaddr_storage).cast(), &mut len) == 0 }
}

/// The iovecs of a header, or EMSGSIZE for a `msg_iovlen` XNU refuses
/// (`internalize_user_msg_x`, `recvmsg_x`).
///
/// # Safety
/// `m.msg_iov` points at `m.msg_iovlen` iovecs when that count is valid.
unsafe fn iovecs(m: &msghdr_x) -> Result<&[libc::iovec], c_int> {
    if m.msg_iovlen <= 0 || m.msg_iovlen as c_uint > UIO_MAXIOV {
        return Err(libc::EMSGSIZE);
    }
    if m.msg_iov.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(m.msg_iov, m.msg_iovlen as usize) })
}

/// socket_private.h `recvmsg_x`.
#[no_mangle]
pub extern "C" fn recvmsg_x(s: c_int, msgp: *mut msghdr_x, cnt: c_uint, flags: c_int) -> libc::ssize_t {
    called("recvmsg_x");
    COUNTS[0].fetch_add(1, Ordering::Relaxed);
    let ty = match sockopt(s, libc::SO_TYPE) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    if ty == libc::SOCK_STREAM {
        crate::misuse("recvmsg_x", "a stream socket: what XNU's soreceive_m_list does with one is not established, so the model does not guess");
    }
    // recvmsg_x: the range check, then the cap at kern.ipc.maxrecvmsgx.
    if cnt == 0 || cnt > UIO_MAXIOV {
        return fail(libc::EINVAL);
    }
    let cnt = cnt.min(MAX_RECVMSG_X) as usize;
    // "Only allow MSG_DONTWAIT" (and the kernel's MSG_NBIO).
    if flags & !(MSG_DONTWAIT | MSG_NBIO) != 0 {
        return fail(libc::EINVAL);
    }
    if msgp.is_null() {
        return fail(libc::EFAULT);
    }
    // soreceive_m_list: take up to cnt datagrams, waiting (as the socket
    // and flags say) only for the first.
    let first_flags = if flags & (MSG_DONTWAIT | MSG_NBIO) != 0 { libc::MSG_DONTWAIT } else { 0 };
    let mut taken: Vec<Vec<u8>> = Vec::new();
    let mut first_error = 0;
    while taken.len() < cnt {
        let wait = if taken.is_empty() { first_flags } else { libc::MSG_DONTWAIT };
        // The next datagram's length (Linux returns the real length with
        // MSG_TRUNC), then the datagram itself.
        // SAFETY: a zero-length peek writes nothing.
        let len = unsafe { libc::recv(s, std::ptr::null_mut(), 0, libc::MSG_PEEK | libc::MSG_TRUNC | wait) };
        if len < 0 {
            first_error = errno();
            break;
        }
        let mut d = vec![0u8; len as usize];
        // SAFETY: d has len writable bytes.
        let got = unsafe { libc::recv(s, d.as_mut_ptr().cast(), d.len(), libc::MSG_DONTWAIT) };
        if got < 0 {
            first_error = errno();
            break;
        }
        d.truncate(got as usize);
        taken.push(d);
    }
    if taken.is_empty() {
        return fail(if first_error == 0 { libc::EWOULDBLOCK } else { first_error });
    }
    // recvmsg_x: copy each datagram out into its header's buffers.
    for (i, d) in taken.iter().enumerate() {
        // SAFETY: the caller passes cnt headers; i < cnt.
        let m = unsafe { &mut *msgp.add(i) };
        // SAFETY: msg_iov points at msg_iovlen iovecs (the header's contract).
        let iovs = match unsafe { iovecs(m) } {
            Ok(v) => v,
            Err(e) => return fail(e),
        };
        if (!m.msg_name.is_null() && m.msg_namelen != 0) || (!m.msg_control.is_null() && m.msg_controllen != 0) {
            crate::misuse("recvmsg_x", "a name or control buffer: not modelled (Linux's sockaddr_un and cmsgs are not Darwin's)");
        }
        let mut copied = 0;
        for iov in iovs {
            let n = iov.iov_len.min(d.len() - copied);
            if n == 0 {
                continue;
            }
            // SAFETY: the iovec's buffer has iov_len writable bytes; n <= iov_len.
            unsafe { std::ptr::copy_nonoverlapping(d[copied..].as_ptr(), iov.iov_base.cast::<u8>(), n) };
            copied += n;
        }
        // The rest of a longer datagram is dropped; MSG_TRUNC goes into
        // the call's flags only, never into msg_flags.
        m.msg_flags = 0;
        m.msg_datalen = copied;
    }
    COUNTS[1].fetch_add(taken.len() as u64, Ordering::Relaxed);
    taken.len() as libc::ssize_t
}

/// Whether a `sendmsg_x` error after `sent` datagrams becomes the count
/// (`sendmsg_x`'s end).
fn count_stands(sent: usize, error: c_int) -> bool {
    sent != 0 && matches!(error, libc::ERESTART | libc::EINTR | libc::EWOULDBLOCK | libc::ENOBUFS | libc::EMSGSIZE)
}

/// One datagram out through Linux: `iovs` to `s`, with Linux `flags`.
fn send_one(s: c_int, iovs: &[libc::iovec], flags: c_int) -> Result<(), c_int> {
    // SAFETY: msghdr is plain data; all-zero is an empty header.
    let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
    h.msg_iov = iovs.as_ptr() as *mut libc::iovec;
    h.msg_iovlen = iovs.len() as _;
    // SAFETY: h points at the caller's iovecs, only read.
    let r = unsafe { libc::sendmsg(s, &h, flags | libc::MSG_NOSIGNAL) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// socket_private.h `sendmsg_x`.
#[no_mangle]
pub extern "C" fn sendmsg_x(s: c_int, msgp: *mut msghdr_x, cnt: c_uint, flags: c_int) -> libc::ssize_t {
    called("sendmsg_x");
    COUNTS[2].fetch_add(1, Ordering::Relaxed);
    if flags & MSG_SKIPCFIL != 0 {
        return fail(libc::EPERM);
    }
    let ty = match sockopt(s, libc::SO_TYPE) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    if cnt > 0 && msgp.is_null() {
        return fail(libc::EFAULT);
    }
    let header = |i: usize| -> &msghdr_x {
        // SAFETY: the caller passes cnt headers; i < cnt.
        unsafe { &*msgp.add(i) }
    };
    let (sent, error) = if ty == libc::SOCK_DGRAM && is_connected(s) {
        send_list(s, cnt as usize, flags, header)
    } else {
        send_each(s, cnt as usize, flags, header)
    };
    match error {
        Some(e) if !count_stands(sent, e) => fail(e),
        _ => {
            COUNTS[3].fetch_add(sent as u64, Ordering::Relaxed);
            sent as libc::ssize_t
        }
    }
}

/// `sendit_x` and `sosend_list`: how many went, and the error that ended
/// the call.
fn send_list<'a>(s: c_int, cnt: usize, flags: c_int, header: impl Fn(usize) -> &'a msghdr_x) -> (usize, Option<c_int>) {
    let hiwat = match sockopt(s, libc::SO_SNDBUF) {
        Ok(v) => v.max(0) as usize,
        Err(e) => return (0, Some(e)),
    };
    let mut list: Vec<&[libc::iovec]> = Vec::new();
    for i in 0..cnt {
        let m = header(i);
        // SAFETY: msg_iov points at msg_iovlen iovecs (the header's contract).
        let iovs = match unsafe { iovecs(m) } {
            Ok(v) => v,
            // As sendit_x: the count returned is the list built, unsent.
            Err(e) => return (list.len(), Some(e)),
        };
        if !m.msg_control.is_null() && m.msg_controllen != 0 {
            crate::misuse("sendmsg_x", "a control message: not modelled");
        }
        let len: usize = iovs.iter().map(|v| v.iov_len).sum();
        // "Stop on the first datagram that is too large".
        if len > hiwat {
            if i == 0 {
                return (0, Some(libc::EMSGSIZE));
            }
            break;
        }
        list.push(iovs);
    }
    // sosend_list: connected atomic datagram sockets, these flags only.
    if flags & !(MSG_DONTWAIT | MSG_NBIO | MSG_SKIPCFIL) != 0 {
        return (list.len(), Some(libc::EINVAL));
    }
    let unix = sockopt(s, libc::SO_DOMAIN) == Ok(libc::AF_UNIX);
    for (sent, iovs) in list.iter().enumerate() {
        // Neither a Unix-domain nor a UDP datagram waits for room here.
        if let Err(e) = send_one(s, iovs, libc::MSG_DONTWAIT) {
            let e = if unix && e == libc::EAGAIN { libc::ENOBUFS } else { e };
            return (sent, Some(e));
        }
    }
    (list.len(), None)
}

/// `sendmsg_x`'s loop of `sendit` calls, for every other socket.
fn send_each<'a>(s: c_int, cnt: usize, flags: c_int, header: impl Fn(usize) -> &'a msghdr_x) -> (usize, Option<c_int>) {
    if flags & !(MSG_DONTWAIT | MSG_NOSIGNAL) != 0 {
        crate::misuse("sendmsg_x", "send flags other than MSG_DONTWAIT and MSG_NOSIGNAL: not modelled");
    }
    let linux_flags = if flags & MSG_DONTWAIT != 0 { libc::MSG_DONTWAIT } else { 0 };
    for i in 0..cnt {
        let m = header(i);
        // SAFETY: msg_iov points at msg_iovlen iovecs (the header's contract).
        let iovs = match unsafe { iovecs(m) } {
            Ok(v) => v,
            Err(e) => return (i, Some(e)),
        };
        if (!m.msg_name.is_null() && m.msg_namelen != 0) || (!m.msg_control.is_null() && m.msg_controllen != 0) {
            crate::misuse("sendmsg_x", "a name or control message: not modelled (Linux's sockaddr_un and cmsgs are not Darwin's)");
        }
        if let Err(e) = send_one(s, iovs, linux_flags) {
            return (i, Some(e));
        }
    }
    (cnt, None)
}
