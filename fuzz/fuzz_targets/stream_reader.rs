//! Fuzz target: the stream framing reader of a VM socket
//! (`adaptor/vm_stream.rs` `StreamReader`, with `framing.rs`): 4-byte
//! big-endian lengths, each followed by that many bytes of frame.
//!
//! Input: byte 0 chooses the batch size (1 to 64 frames), byte 1 the
//! largest frame (14, 60, 1514, 9014 or 65 550 bytes), byte 2 how often the
//! rest, the stream's body, is repeated (1 to 64 times, so streams pass the
//! reader's 256 KiB buffer), byte 3 seeds how the stream is cut into
//! writes and how many pending frames each step takes. The stream goes
//! through a non-blocking socketpair, each piece written and read before
//! the next, then the writer closes.
//!
//! Checked on every input, against the stream parsed whole by the
//! target's own model (frames until a length of 0 or above the largest
//! frame, a cut-off frame, or the end):
//! - `receive` returns, and never more frames than a batch;
//! - read in pieces, the stream yields the same frames, in order, as the
//!   model, and as the same stream written in one piece;
//! - a bad length header ends reading with the protocol error (naming the
//!   length) after every frame before it was delivered; the end of the
//!   stream is a close, `partial` exactly when a frame (or a header) was
//!   cut off;
//! - `has_buffered` is true exactly when `receive` has frames or the error
//!   to give without reading (checked when nothing unread waits in the
//!   socket, FIONREAD).
//!
//! Seeds: with `VMNET_RS_FUZZ_WRITE_SEEDS=DIR` set, the target writes
//! streams of whole frames (small, full-size, repeated past the buffer),
//! one cut off, and ones with a zero and an oversized length into DIR at
//! start-up.

#![no_main]

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use _native::fuzzing::stream::{StreamEnd, StreamReader};
use libfuzzer_sys::fuzz_target;

const MAXES: [usize; 5] = [14, 60, 1514, 9014, 65_550];

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Closed; a frame or header was cut off.
    Closed { partial: bool },
    /// A bad length header.
    Protocol(usize),
}

/// The stream parsed whole: its frames and how it ends.
fn model(stream: &[u8], max: usize) -> (Vec<Vec<u8>>, End) {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        if rest.len() < 4 {
            return (frames, End::Closed { partial: !rest.is_empty() });
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len == 0 || len > max {
            return (frames, End::Protocol(len));
        }
        if rest.len() < 4 + len {
            return (frames, End::Closed { partial: true });
        }
        frames.push(rest[4..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
}

/// xorshift64: the cuts and takes, from the input's seed byte.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut p = [0; 2];
    // SAFETY: p has room for the two fds socketpair writes.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0, p.as_mut_ptr()) };
    assert_eq!(rc, 0, "socketpair failed: {}", std::io::Error::last_os_error());
    // SAFETY: socketpair succeeded, so both fds are open and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
}

/// Bytes waiting in the socket (FIONREAD).
fn unread(fd: RawFd) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    n
}

/// One reader's run: what it delivered and how it ended.
struct Reading {
    reader: StreamReader,
    batch: usize,
    max: usize,
    frames: Vec<Vec<u8>>,
    end: Option<End>,
}

impl Reading {
    /// Takes everything readable now: receive, take the pending frames in
    /// steps of `rng`'s choosing, until nothing more is there or it ended.
    fn drain(&mut self, fd: RawFd, rng: &mut Rng) {
        while self.end.is_none() {
            let buffered = self.reader.has_buffered();
            // Nothing unread in the socket: whatever receive gives now was
            // buffered already, and has_buffered must have said so.
            let unread = unread(fd);
            match self.reader.receive(fd) {
                Ok(0) => {
                    assert!(!buffered, "has_buffered said a frame was there, receive found none");
                    return;
                }
                Ok(_) | Err(StreamEnd::Protocol(_)) if unread == 0 && !buffered => {
                    panic!("receive gave frames or the error from its buffer, has_buffered said there were none")
                }
                Ok(n) => {
                    assert!(n <= self.batch, "{n} frames in a batch of {}", self.batch);
                    assert_eq!(self.reader.pending_count(), n, "pending frames after receive");
                    while self.reader.has_pending() {
                        let take = 1 + rng.next(self.reader.pending_count());
                        let got = self.reader.pending(take);
                        assert_eq!(got.len(), take, "pending({take}) gave another number of frames");
                        for f in got {
                            assert!(!f.is_empty() && f.len() <= self.max, "a {}-byte frame with a {}-byte maximum", f.len(), self.max);
                            self.frames.push(f.to_vec());
                        }
                        self.reader.consume(take);
                    }
                }
                Err(StreamEnd::Closed { partial }) => {
                    assert!(!buffered, "has_buffered said a frame was there, receive saw the end");
                    self.end = Some(End::Closed { partial });
                }
                Err(StreamEnd::Protocol(m)) => {
                    let len = m.split_whitespace().nth(2).and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("a protocol error without the length: {m}"));
                    self.end = Some(End::Protocol(len));
                }
                Err(StreamEnd::Io(e)) => panic!("an I/O error on a socketpair: {e}"),
            }
        }
    }
}

/// Writes `stream` in pieces (`cut` picks each size), reading all after
/// each; then closes the writer and reads to the end.
fn read_in_pieces(stream: &[u8], batch: usize, max: usize, rng: &mut Rng, cut: &mut dyn FnMut(&mut Rng) -> usize) -> Reading {
    let (ours, theirs) = socketpair();
    let mut r = Reading { reader: StreamReader::new(batch, max), batch, max, frames: Vec::new(), end: None };
    let mut at = 0;
    while at < stream.len() && r.end.is_none() {
        let piece = &stream[at..at.saturating_add(cut(rng).max(1)).min(stream.len())];
        let mut sent = 0;
        while sent < piece.len() && r.end.is_none() {
            // SAFETY: writes at most the piece's remaining bytes from it.
            let n = unsafe { libc::write(theirs.as_raw_fd(), piece[sent..].as_ptr().cast(), piece.len() - sent) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.raw_os_error(), Some(libc::EAGAIN), "write to a socketpair: {e}");
                r.drain(ours.as_raw_fd(), rng);
            } else {
                sent += n as usize;
            }
        }
        at += piece.len();
        r.drain(ours.as_raw_fd(), rng);
    }
    drop(theirs);
    r.drain(ours.as_raw_fd(), rng);
    assert!(r.end.is_some(), "reading did not end after the writer closed");
    r
}

fn frame(len: usize, fill: u8) -> Vec<u8> {
    let mut v = (len as u32).to_be_bytes().to_vec();
    v.extend((0..len).map(|i| (i as u8).wrapping_add(fill)));
    v
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let stream = |cfg: [u8; 4], frames: &[(usize, u8)], tail: &[u8]| {
        let mut v = cfg.to_vec();
        for &(len, fill) in frames {
            v.extend(frame(len, fill));
        }
        v.extend_from_slice(tail);
        v
    };
    vec![
        ("small".into(), stream([63, 2, 0, 1], &[(60, 1), (42, 2), (1514, 3), (14, 4)], &[])),
        ("repeated-past-the-buffer".into(), stream([7, 2, 63, 2], &[(1514, 5), (1000, 6), (60, 7)], &[])),
        ("full-size".into(), stream([63, 4, 3, 3], &[(3000, 8), (100, 9)], &[])),
        ("cut-off".into(), stream([1, 2, 0, 4], &[(60, 1), (60, 2)], &[0, 0, 1, 0, 7, 7])),
        ("zero-length".into(), stream([3, 2, 0, 5], &[(60, 1), (70, 2)], &[0, 0, 0, 0, 1, 2, 3])),
        ("too-long".into(), stream([3, 2, 0, 6], &[(60, 1)], &[0, 0, 0x05, 0xeb, 9, 9])),
    ]
}

fuzz_target!(
    init: common::write_seeds(seeds),
    |data: &[u8]| {
        let [b, m, rep, seed, body @ ..] = data else { return };
        let batch = 1 + usize::from(*b) % 64;
        let max = MAXES[usize::from(*m) % MAXES.len()];
        let stream = body.repeat(1 + usize::from(*rep) % 64);
        let (want_frames, want_end) = model(&stream, max);

        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(*seed) ^ (stream.len() as u64) << 8);
        let biggest = [8, 600, 20_000, 300_000][usize::from(*seed) % 4];
        let pieces = read_in_pieces(&stream, batch, max, &mut rng, &mut |rng| 1 + rng.next(biggest));
        let whole = read_in_pieces(&stream, batch, max, &mut rng, &mut |_| usize::MAX);

        for (how, r) in [("in pieces", &pieces), ("whole", &whole)] {
            assert_eq!(r.frames.len(), want_frames.len(), "read {how}: frame count");
            assert!(r.frames == want_frames, "read {how}: the frames differ from the stream's");
            assert_eq!(r.end.as_ref(), Some(&want_end), "read {how}: how the stream ended");
        }
    }
);
