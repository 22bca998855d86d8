//! Fuzz target: the Linux wire decoder (`xpc::unix::codec::decode`).
//!
//! Input: the first byte's low seven bits choose how many fds arrive with
//! the record (0 to `MAX_FDS + 1`, so the too-many-fds refusal is reached
//! too); its top bit chooses the direction. Clear: the rest is one request
//! record for `decode`. Set: the rest is a reply's records, each a 2-byte
//! big-endian length and that many bytes, put together by `Joiner` and
//! decoded with `Limits::REPLY`. Each attached fd is a copy of the write
//! end of a fresh pipe. Checked on every input, from the codec's documented
//! invariants:
//! - `decode`, `Joiner::push` and `decode_with` return (a panic is a crash
//!   libFuzzer reports);
//! - a decoded message re-encodes to exactly the input bytes (a reply: the
//!   joined message, which `split_reply` cuts into records that join to
//!   it again), with the attached fds in the same order (the encoding is
//!   canonical);
//! - no fd leaks: once the message (or the error) is dropped, the pipe's
//!   read end sees end-of-file, i.e. every copy of the write end is closed.
//!
//! Seeds: with `VMNET_RS_FUZZ_WRITE_SEEDS=DIR` set, the target writes valid
//! encodings made by the encoder into DIR once at start-up (before libFuzzer
//! reads its corpus directories), so the seed corpus always matches the
//! current encoding and nothing generated is committed. Runs on libFuzzer's
//! one thread.

#![no_main]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use _native::xpc::unix::codec::{decode, decode_with, encode, encode_with, split_reply, Joiner, Limits, MAX_FDS};
use _native::xpc::{Dict, Value};
use libfuzzer_sys::fuzz_target;

/// A pipe: its read end, and `n` copies of its write end (the original is
/// closed) to attach to a message.
fn tracked(n: usize) -> (OwnedFd, Vec<OwnedFd>) {
    let mut p = [0; 2];
    // SAFETY: p has room for the two fds pipe2 writes.
    let rc = unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert_eq!(rc, 0, "pipe2 failed: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    let copies = (0..n)
        .map(|_| w.try_clone().expect("dup of a pipe end"))
        .collect();
    (r, copies)
}

/// How many fds this process has open (the directory handle read_dir
/// opens is counted every time, so counts compare). Counts this process's
/// own table only: a helper process that briefly shares a copy of it (as
/// LeakSanitizer's stop-the-world tracer does) cannot make it wrong, which
/// is why the check is not made through EOF on a pipe.
fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("read /proc/self/fd").count()
}

/// Whether `fd` is closed in this process.
fn is_closed(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) == -1 }
}

/// Valid messages of every value type, with and without fds, and the
/// shapes of real requests; `fd` makes a fresh descriptor for fd values.
fn seed_messages(fd: &dyn Fn() -> OwnedFd) -> Vec<(&'static str, Dict)> {
    let nested = || {
        Dict::new().with("x", Value::Int(-7)).with(
            "deep",
            Value::Dict(Dict::new().with("b", Value::Bool(false))),
        )
    };
    let every_type = || {
        Dict::new()
            .with("command", Value::String("open".into()))
            .with("n", Value::Int(i64::MIN))
            .with("yes", Value::Bool(true))
            .with("blob", Value::Data(vec![0, 1, 2, 255]))
            .with("inner", Value::Dict(nested()))
    };
    vec![
        ("empty", Dict::new()),
        ("every-type", every_type()),
        ("every-type-fd", every_type().with("fd", Value::Fd(fd()))),
        (
            "lima-request",
            Dict::new()
                .with("Network", Value::String("shared".into()))
                .with(
                    "Configuration",
                    Value::Data(br#"{"mode":"shared","subnet":"192.168.105.0/24"}"#.to_vec()),
                )
                .with("FdType", Value::String("datagram".into())),
        ),
        (
            "acquire",
            Dict::new()
                .with("command", Value::String("acquire".into()))
                .with("network", Value::String("shared".into())),
        ),
        (
            "reply-two-fds",
            Dict::new().with("FileDescriptor", Value::Fd(fd())).with(
                "extra",
                Value::Dict(Dict::new().with("second", Value::Fd(fd()))),
            ),
        ),
    ]
}

/// Writes each seed as `<name>`: one byte with its fd count, then its bytes;
/// and as `<name>-reply`: the count with the top bit set, then the message
/// as two records (its body cut in half, the first flagged MORE), each
/// behind its 2-byte length.
fn write_seeds(dir: &std::path::Path) {
    std::fs::create_dir_all(dir)
        .unwrap_or_else(|e| panic!("cannot create seed directory {}: {e}", dir.display()));
    let devnull = || OwnedFd::from(std::fs::File::open("/dev/null").expect("open /dev/null"));
    for (name, message) in seed_messages(&devnull) {
        let (bytes, fds) =
            encode(&message).unwrap_or_else(|e| panic!("seed {name} does not encode: {e}"));
        let mut input = vec![fds.len() as u8];
        input.extend_from_slice(&bytes);
        let path = dir.join(format!("seed-{name}"));
        std::fs::write(&path, input)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        let (header, body) = bytes.split_at(8);
        let (a, b) = body.split_at(body.len() / 2);
        let mut input = vec![fds.len() as u8 | 0x80];
        for (part, flags) in [(a, 1u8), (b, 0)] {
            input.extend_from_slice(&((header.len() + part.len()) as u16).to_be_bytes());
            input.extend_from_slice(&header[..7]);
            input.push(flags);
            input.extend_from_slice(part);
        }
        let path = dir.join(format!("seed-{name}-reply"));
        std::fs::write(&path, input)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

/// The reply direction: length-prefixed records through a `Joiner`.
fn reply(mut bytes: &[u8], fds: Vec<OwnedFd>, sent: &[RawFd]) {
    let mut joiner = Joiner::default();
    let mut complete = false;
    while !complete && bytes.len() >= 2 {
        let len = (u16::from_be_bytes([bytes[0], bytes[1]]) as usize).min(bytes.len() - 2);
        let record = &bytes[2..2 + len];
        bytes = &bytes[2 + len..];
        match joiner.push(record) {
            Ok(done) => complete = done,
            Err(_) => return,
        }
    }
    if !complete {
        return;
    }
    if let Ok(message) = decode_with(joiner.message(), fds, &Limits::REPLY) {
        let (again, again_fds) = encode_with(&message, &Limits::REPLY).expect("a decoded reply must encode again");
        assert_eq!(again, joiner.message(), "decoded reply re-encodes to different bytes");
        assert_eq!(again_fds, sent, "decoded reply re-encodes with its fds in another order");
        let mut rejoined = Joiner::default();
        let records = split_reply(&again);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(rejoined.push(r).expect("split records join"), i + 1 == records.len());
        }
        assert_eq!(rejoined.message(), &again[..], "split records join to another message");
    }
}

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("VMNET_RS_FUZZ_WRITE_SEEDS") {
            write_seeds(std::path::Path::new(&dir));
        }
    },
    |data: &[u8]| {
        let Some((&count, bytes)) = data.split_first() else { return };
        let n = (count & 0x7f) as usize % (MAX_FDS + 2);
        let (_read_end, fds) = tracked(n);
        let sent: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let before = open_fd_count();
        if count & 0x80 == 0 {
            if let Ok(message) = decode(bytes, fds) {
                let (again, again_fds) = encode(&message).expect("a decoded message must encode again");
                assert_eq!(again, bytes, "decoded message re-encodes to different bytes");
                assert_eq!(again_fds, sent, "decoded message re-encodes with its fds in another order");
            }
        } else {
            reply(bytes, fds, &sent);
        }
        // Single-threaded here: nothing else opens fds during the call, so
        // every attached fd must be closed and no new one left open.
        assert!(sent.iter().all(|&fd| is_closed(fd)), "the decoder leaked one of {n} attached fds");
        assert_eq!(open_fd_count(), before - n, "the decoder left a new fd open");
    }
);
