//! Fuzz target: the datagram endpoint's receive path
//! (`broker/endpoints/receive.rs`): datagrams from clients the fuzzer
//! shapes, received one at a time or in batches (`recvmmsg`, entries kept
//! from batch to batch as the endpoint thread keeps them) and decoded:
//! length, cut mark, sender address, credentials; descriptors sent along
//! are closed.
//!
//! Input: byte 0 chooses the receive buffers' size (1, 14, 60, 1514 or
//! 65 550 bytes), byte 1 the batch size (1 to 8); byte 2 is the length of
//! an abstract socket name (up to 20) whose bytes follow (NULs included).
//! Then records: a sender byte and a 2-byte big-endian datagram length.
//! Sender & 3: a socket that never binds (the kernel autobinds it, as the
//! endpoint asks for credentials), one that autobinds, one bound to the
//! abstract name, one bound to a path. (Sender >> 2) & 7 picks how many
//! descriptors go along (0 to 3, 8, 30: more than the 128-byte control
//! buffer holds), sender & 32 sends credentials explicitly, sender & 64
//! receives that datagram with `recv_from` instead of a batch. The
//! endpoint is an abstract datagram socket with SO_PASSCRED, as the
//! broker's (`endpoints/paths.rs`).
//!
//! Checked on every input, from the module's documented invariants:
//! - the receive calls return, and give the datagrams in the order sent,
//!   then nothing;
//! - each has the bytes sent, its length cut to the buffer, and the cut
//!   mark exactly when it was longer;
//! - its address is the sender's name as the kernel reports it
//!   (`getsockname` after the send: the autobound or abstract name whole,
//!   NULs included, the path to its end); its credentials are this
//!   process's (uid, gid, pid);
//! - every descriptor a sender attached is closed afterwards and no new
//!   one is left open (counted in the process's own fd table, as
//!   `decode_message` does).
//! `sender_address` is also fed the raw name bytes: what it returns is a
//! prefix of them, without a NUL unless it is an abstract name.
//!
//! Seeds: with `VMNET_RS_FUZZ_WRITE_SEEDS=DIR` set, the target writes
//! inputs with every kind of sender, cut and whole datagrams and
//! descriptors attached into DIR at start-up.

#![no_main]

mod common;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use _native::fuzzing::receive::{recv_from, sender_address, Batches, Received};
use libfuzzer_sys::fuzz_target;

const BUFS: [usize; 5] = [1, 14, 60, 1514, 65_550];
const FD_COUNTS: [usize; 8] = [0, 1, 2, 3, 8, 30, 0, 1];

fn dgram_socket() -> OwnedFd {
    // SAFETY: plain socket call; the fd is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
    assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: a fresh fd nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A `sockaddr_un` naming `path` (raw `sun_path` bytes; a leading NUL for
/// an abstract name, none for autobind) and its length.
fn addr(path: &[u8]) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: sockaddr_un is plain old data.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in a.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    (a, (std::mem::size_of::<libc::sa_family_t>() + path.len()) as libc::socklen_t)
}

fn bind(fd: &OwnedFd, path: &[u8]) {
    let (a, len) = addr(path);
    // SAFETY: a is a valid sockaddr_un of `len` bytes.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) };
    assert_eq!(rc, 0, "bind {path:?}: {}", io::Error::last_os_error());
}

/// The socket's name as the kernel reports it (`sun_path` bytes).
fn name(fd: &OwnedFd) -> Vec<u8> {
    // SAFETY: sockaddr_un is plain old data.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: a has room for `len` bytes.
    let rc = unsafe { libc::getsockname(fd.as_raw_fd(), (&mut a as *mut libc::sockaddr_un).cast(), &mut len) };
    assert_eq!(rc, 0, "getsockname: {}", io::Error::last_os_error());
    let n = (len as usize).saturating_sub(std::mem::size_of::<libc::sa_family_t>());
    let mut path: Vec<u8> = a.sun_path[..n].iter().map(|&c| c as u8).collect();
    // A path name: up to its NUL (Linux counts the NUL in the length).
    if path.first().is_some_and(|&c| c != 0) {
        path.truncate(path.iter().position(|&c| c == 0).unwrap_or(path.len()));
    }
    path
}

/// Sends `data` from `fd` to `to` with `fds` (SCM_RIGHTS) and, if
/// `creds`, SCM_CREDENTIALS; `false` when the endpoint's queue is full.
fn send(fd: &OwnedFd, to: &[u8], data: &[u8], fds: &[RawFd], creds: bool) -> bool {
    let (mut a, alen) = addr(to);
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let mut control = [0u64; 32];
    // SAFETY: msghdr is plain old data; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut a as *mut libc::sockaddr_un).cast();
    msg.msg_namelen = alen;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let rights = std::mem::size_of_val(fds) as u32;
    let cred_len = std::mem::size_of::<libc::ucred>() as u32;
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { (if fds.is_empty() { 0 } else { libc::CMSG_SPACE(rights) }) + if creds { libc::CMSG_SPACE(cred_len) } else { 0 } } as usize;
    if space > 0 {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer (256 bytes) has room for both
        // messages; CMSG_* stay inside the `space` bytes set above.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            if !fds.is_empty() {
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(rights) as _;
                std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            if creds {
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_CREDENTIALS;
                (*c).cmsg_len = libc::CMSG_LEN(cred_len) as _;
                let u = libc::ucred { pid: libc::getpid(), uid: libc::getuid(), gid: libc::getgid() };
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::ucred>(), u);
            }
        }
    }
    // SAFETY: msg points at live buffers of the stated sizes.
    let r = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
    if r < 0 {
        let e = io::Error::last_os_error();
        assert!(matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ENOBUFS)), "sendmsg: {e}");
        return false;
    }
    assert_eq!(r as usize, data.len(), "a datagram sent in part");
    true
}

fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("read /proc/self/fd").count()
}

fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (k as u8).wrapping_mul(13).wrapping_add(i as u8)).collect()
}

/// What one sent datagram must come back as.
struct Sent {
    data: Vec<u8>,
    addr: Vec<u8>,
    by_recv_from: bool,
}

fn check(got: &Received, buf: &[u8], want: &Sent, room: usize, ids: (u32, u32, i32), i: usize) {
    assert_eq!(got.len, want.data.len().min(room), "datagram {i}: length");
    assert_eq!(got.truncated, want.data.len() > room, "datagram {i}: cut mark ({} bytes into {room})", want.data.len());
    assert_eq!(&buf[..got.len], &want.data[..got.len], "datagram {i}: bytes");
    assert_eq!(got.addr, want.addr, "datagram {i}: sender address");
    assert_eq!(got.creds, Some(ids), "datagram {i}: credentials");
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let rec = |sender: u8, len: u16| {
        let mut v = vec![sender];
        v.extend_from_slice(&len.to_be_bytes());
        v
    };
    let mut every = vec![3, 8, 5, 0, b'v', 0, b'm', 1];
    for (s, len) in [(0u8, 60u16), (1, 1514), (2, 42), (3, 100), (2 | 4, 70), (1 | 8 | 32, 14), (3 | 64, 61), (0 | 16, 3000), (2 | 20, 1)] {
        every.extend(rec(s, len));
    }
    let mut big = vec![4, 3, 1, 7];
    for (s, len) in [(0u8, 65_000u16), (2 | 64, 65_535), (3 | 12, 0)] {
        big.extend(rec(s, len));
    }
    vec![("every-sender".into(), every), ("large".into(), big)]
}

fuzz_target!(
    init: common::write_seeds(seeds),
    |data: &[u8]| {
        let [b, n, name_len, rest @ ..] = data else { return };
        let room = BUFS[usize::from(*b) % BUFS.len()];
        let batch = 1 + usize::from(*n) % 8;
        let name_len = (usize::from(*name_len) % 21).min(rest.len());
        let (abstract_name, mut records) = rest.split_at(name_len);
        for abstract_names in [false, true] {
            let got = sender_address(abstract_name, abstract_names);
            assert!(abstract_name.starts_with(&got), "sender_address is not a prefix of the name");
            assert!(!got.contains(&0) || abstract_names && got.first() == Some(&0), "sender_address kept a NUL");
        }

        let before = open_fd_count();
        let ids = {
            // SAFETY: these calls only read the process's ids.
            unsafe { (libc::getuid(), libc::getgid(), libc::getpid()) }
        };
        let pid = std::process::id();
        let endpoint = dgram_socket();
        let endpoint_name = format!("\0vmnet-rs-fuzz-recv-{pid}").into_bytes();
        bind(&endpoint, &endpoint_name);
        // SAFETY: an int option on a socket we own.
        let one: libc::c_int = 1;
        let rc = unsafe { libc::setsockopt(endpoint.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, (&one as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t) };
        assert_eq!(rc, 0, "SO_PASSCRED: {}", io::Error::last_os_error());
        let dir = std::env::temp_dir().join(format!("vmnet-rs-fuzz-recv-{pid}"));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        let senders = [dgram_socket(), dgram_socket(), dgram_socket(), dgram_socket()];
        bind(&senders[1], b"");
        let mut abstract_path = vec![0u8];
        abstract_path.extend_from_slice(format!("vmnet-rs-fuzz-{pid}-").as_bytes());
        abstract_path.extend_from_slice(abstract_name);
        bind(&senders[2], &abstract_path);
        bind(&senders[3], path.as_os_str().as_encoded_bytes());

        // A pipe whose write end goes along with datagrams (copies of it).
        let mut p = [0; 2];
        // SAFETY: p has room for two fds.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: pipe2 succeeded; both fds are ours.
        let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        let attach: Vec<RawFd> = vec![write_end.as_raw_fd(); 30];

        let mut sent = Vec::new();
        while let [s, hi, lo, tail @ ..] = records {
            records = tail;
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            let data = payload(sent.len(), len);
            let who = &senders[usize::from(*s & 3)];
            let fds = &attach[..FD_COUNTS[usize::from(*s >> 2) & 7]];
            if send(who, &endpoint_name, &data, fds, s & 32 != 0) {
                sent.push(Sent { data, addr: name(who), by_recv_from: s & 64 != 0 });
            }
        }
        drop(write_end);
        drop(senders);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);

        let mut batches = Batches::default();
        let mut bufs = vec![vec![0u8; room]; batch];
        let mut i = 0;
        while i < sent.len() {
            if sent[i].by_recv_from {
                let got = recv_from(endpoint.as_raw_fd(), &mut bufs[0]).expect("recv_from").unwrap_or_else(|| panic!("datagram {i} of {} did not arrive", sent.len()));
                check(&got, &bufs[0], &sent[i], room, ids, i);
                i += 1;
                continue;
            }
            let got = batches.recv(endpoint.as_raw_fd(), &mut bufs).expect("recv_batch_from");
            assert!(!got.is_empty() && got.len() <= batch, "a batch of {} from {batch} buffers with {} datagrams waiting", got.len(), sent.len() - i);
            for (k, g) in got.iter().enumerate() {
                check(g, &bufs[k], &sent[i], room, ids, i);
                i += 1;
            }
        }
        assert!(batches.recv(endpoint.as_raw_fd(), &mut bufs).expect("recv_batch_from").is_empty(), "a datagram nobody sent");
        assert!(recv_from(endpoint.as_raw_fd(), &mut bufs[0]).expect("recv_from").is_none(), "a datagram nobody sent");

        // Every copy of the write end that travelled was closed: counted in
        // the process's own fd table, not through EOF on the pipe (see
        // decode_message: LeakSanitizer's tracer may hold a copy).
        drop(endpoint);
        drop(read_end);
        assert_eq!(open_fd_count(), before, "the receive path left an fd open");
    }
);
