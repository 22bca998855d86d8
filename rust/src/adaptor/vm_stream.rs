//! The stream wire format on the VM socket: each frame prefixed by its
//! length as a 4-byte big-endian integer (QEMU `-netdev stream`/`socket`,
//! krunkit `unixstream`). Runs on the relay thread.
//!
//! Reading: one `read` takes as many frames as fit the buffer; complete
//! frames are handed out in place and the tail of a partial frame is moved
//! to the front before the next read. Invariant: the buffer always has room
//! for one maximum frame plus its header after that move, so a partial frame
//! always completes. A length of 0 or above the maximum frame is a protocol
//! error: the frames before it are still delivered, then the link is closed
//! (the stream cannot be resynchronised).
//!
//! Writing: one `sendmsg` gathers header and payload of many frames; a
//! partial write leaves an offset into the first unfinished frame, and that
//! frame is always finished before anything else is sent (dropping it half
//! way would break the VM's framing), so only frames not yet started are
//! ever dropped.

use std::io;
use std::os::fd::RawFd;

use super::framing::{self, HEADER_BYTES};
/// Read buffer size floor: 256 KiB holds ~170 full-size frames.
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// Most iovecs per `sendmsg` (IOV_MAX is 1024 on Linux and macOS).
const MAX_IOVECS: usize = 1024;

#[cfg(target_os = "linux")]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
#[cfg(not(target_os = "linux"))]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT;

/// Why reading from the VM stopped for good.
#[derive(Debug)]
pub(crate) enum StreamEnd {
    /// EOF or a reset; `partial` when a frame was cut off.
    Closed { partial: bool },
    Protocol(String),
    Io(io::Error),
}

/// Frames read from the VM and not yet written to the interface.
pub(crate) struct StreamReader {
    buf: Vec<u8>,
    /// First byte not yet parsed into `frames`.
    start: usize,
    /// End of the bytes read.
    end: usize,
    /// (offset, length) of complete frames in `buf`.
    frames: Vec<(usize, usize)>,
    next: usize,
    max_frame_bytes: usize,
    batch_frames: usize,
    /// A bad header seen after the frames now pending.
    error: Option<String>,
}

impl StreamReader {
    pub(crate) fn new(batch_frames: usize, max_frame_bytes: usize) -> Self {
        let size = READ_BUFFER_BYTES.max(2 * (max_frame_bytes + HEADER_BYTES));
        StreamReader {
            buf: vec![0u8; size],
            start: 0,
            end: 0,
            frames: Vec::with_capacity(batch_frames),
            next: 0,
            max_frame_bytes,
            batch_frames: batch_frames.max(1),
            error: None,
        }
    }

    pub(crate) fn has_pending(&self) -> bool {
        self.next < self.frames.len()
    }

    pub(crate) fn pending_count(&self) -> usize {
        self.frames.len() - self.next
    }

    pub(crate) fn pending(&self, limit: usize) -> Vec<&[u8]> {
        self.frames[self.next..].iter().take(limit).map(|&(o, l)| &self.buf[o..o + l]).collect()
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.next = (self.next + n).min(self.frames.len());
    }

    /// True when bytes already read hold a complete frame or a bad header,
    /// i.e. `receive` has something to return without reading.
    pub(crate) fn has_buffered(&self) -> bool {
        if self.error.is_some() {
            return true;
        }
        let avail = self.end - self.start;
        if avail < HEADER_BYTES {
            return false;
        }
        let len = framing::frame_len(&self.buf[self.start..]);
        len == 0 || len > self.max_frame_bytes || avail >= HEADER_BYTES + len
    }

    /// Parses complete frames after `start`, up to one batch.
    fn parse(&mut self) {
        self.frames.clear();
        self.next = 0;
        while self.frames.len() < self.batch_frames && self.error.is_none() {
            let avail = self.end - self.start;
            if avail < HEADER_BYTES {
                break;
            }
            let len = framing::frame_len(&self.buf[self.start..]);
            if len == 0 || len > self.max_frame_bytes {
                self.error = Some(format!(
                    "frame length {len} in the stream header is outside 1..={} bytes",
                    self.max_frame_bytes
                ));
                break;
            }
            if avail < HEADER_BYTES + len {
                break;
            }
            self.frames.push((self.start + HEADER_BYTES, len));
            self.start += HEADER_BYTES + len;
        }
    }

    /// Makes frames pending: first from bytes already read, else by one
    /// `read`. Returns how many are pending; `Ok(0)` when nothing complete
    /// arrived yet. Precondition: nothing pending.
    pub(crate) fn receive(&mut self, fd: RawFd) -> Result<usize, StreamEnd> {
        debug_assert!(!self.has_pending());
        self.parse();
        if !self.frames.is_empty() {
            return Ok(self.frames.len());
        }
        if let Some(e) = self.error.take() {
            return Err(StreamEnd::Protocol(e));
        }
        // Move the partial frame to the front so a whole frame fits after it.
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let room = self.buf.len() - self.end;
        // SAFETY: the destination is the unused tail of buf, `room` bytes long.
        let r = unsafe { libc::read(fd, self.buf[self.end..].as_mut_ptr().cast(), room) };
        if r < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                Some(libc::ECONNRESET) | Some(libc::EPIPE) | Some(libc::ENOTCONN) => {
                    Err(StreamEnd::Closed { partial: self.end > 0 })
                }
                _ => Err(StreamEnd::Io(err)),
            };
        }
        if r == 0 {
            return Err(StreamEnd::Closed { partial: self.end > 0 });
        }
        self.end += r as usize;
        self.parse();
        if self.frames.is_empty() {
            if let Some(e) = self.error.take() {
                return Err(StreamEnd::Protocol(e));
            }
        }
        Ok(self.frames.len())
    }
}

/// Writes length-prefixed frames to the VM, tracking a partial frame.
#[derive(Default)]
pub(crate) struct StreamWriter {
    /// Bytes of the first pending frame (header included) already written.
    offset: usize,
    /// Scratch for one `sendmsg`, kept between calls so a send allocates
    /// nothing: the frames' headers and the gather list over them. Only
    /// lengths survive a call; the iovecs are rebuilt (and cleared) by each.
    headers: Vec<[u8; HEADER_BYTES]>,
    iovs: Vec<libc::iovec>,
}

impl StreamWriter {
    pub(crate) fn new() -> Self {
        StreamWriter { offset: 0, headers: Vec::new(), iovs: Vec::new() }
    }

    /// True when the first pending frame is partly written and must be finished.
    pub(crate) fn in_frame(&self) -> bool {
        self.offset > 0
    }

    /// Writes as much of `frames` as the socket takes, in one `sendmsg`
    /// (at most [`MAX_IOVECS`] / 2 frames). Returns the number of frames
    /// completed; `WouldBlock` when no byte was taken.
    pub(crate) fn send(&mut self, fd: RawFd, frames: &[&[u8]]) -> io::Result<usize> {
        if frames.is_empty() {
            return Ok(0);
        }
        let frames = &frames[..frames.len().min(MAX_IOVECS / 2)];
        self.headers.clear();
        self.headers.extend(frames.iter().map(|f| framing::header(f.len())));
        self.iovs.clear();
        for (i, frame) in frames.iter().enumerate() {
            let skip = if i == 0 { self.offset } else { 0 };
            if skip < HEADER_BYTES {
                let h = &self.headers[i][skip..];
                self.iovs.push(libc::iovec { iov_base: h.as_ptr() as *mut libc::c_void, iov_len: h.len() });
                self.iovs.push(libc::iovec { iov_base: frame.as_ptr() as *mut libc::c_void, iov_len: frame.len() });
            } else {
                let rest = &frame[skip - HEADER_BYTES..];
                self.iovs.push(libc::iovec { iov_base: rest.as_ptr() as *mut libc::c_void, iov_len: rest.len() });
            }
        }
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = self.iovs.as_mut_ptr();
        msg.msg_iovlen = self.iovs.len() as _;
        // SAFETY: msg points to self.iovs, each over a live header (in
        // self.headers, not touched until the call returns) or frame slice
        // (borrowed for the call); sendmsg only reads them.
        let r = unsafe { libc::sendmsg(fd, &msg, SEND_FLAGS) };
        // The pointers are dead once the call returns.
        self.iovs.clear();
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut written = r as usize;
        let mut completed = 0;
        for frame in frames {
            let left = HEADER_BYTES + frame.len() - self.offset;
            if written >= left {
                written -= left;
                self.offset = 0;
                completed += 1;
            } else {
                self.offset += written;
                break;
            }
        }
        Ok(completed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adaptor::socket;
    use crate::adaptor::Kind;
    use std::io::Write;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::net::UnixStream;

    fn pair() -> (OwnedFd, UnixStream) {
        let (a, b) = socket::socketpair(Kind::Stream).unwrap();
        socket::set_nonblocking(&a).unwrap();
        (a, UnixStream::from(b))
    }

    fn framed(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            framing::push_frame(&mut out, f);
        }
        out
    }

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        let (a, mut b) = pair();
        let frames: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 60 + 300 * i as usize]).collect();
        let bytes = framed(&frames);
        let mut r = StreamReader::new(64, 1514);
        let mut got = Vec::new();
        // Feed the stream in awkward pieces: inside headers and payloads.
        for chunk in bytes.chunks(7).collect::<Vec<_>>().chunks(41) {
            for piece in chunk {
                b.write_all(piece).unwrap();
            }
            loop {
                let n = r.receive(a.as_raw_fd()).unwrap();
                if n == 0 {
                    break;
                }
                got.extend(r.pending(usize::MAX).iter().map(|f| f.to_vec()));
                r.consume(n);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn zero_and_oversized_lengths_end_the_link_after_earlier_frames() {
        for bad in [0u32, 1515] {
            let (a, mut b) = pair();
            let good = vec![9u8; 100];
            let mut bytes = framed(std::slice::from_ref(&good));
            bytes.extend_from_slice(&bad.to_be_bytes());
            bytes.extend_from_slice(&[1u8; 50]);
            b.write_all(&bytes).unwrap();
            let mut r = StreamReader::new(64, 1514);
            assert_eq!(r.receive(a.as_raw_fd()).unwrap(), 1);
            assert_eq!(r.pending(8), vec![good.as_slice()]);
            r.consume(1);
            assert!(r.has_buffered());
            match r.receive(a.as_raw_fd()) {
                Err(StreamEnd::Protocol(m)) => assert!(m.contains(&bad.to_string()), "{m}"),
                other => panic!("expected a protocol error, got {:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn one_read_yields_a_whole_batch_and_keeps_the_rest() {
        let (a, mut b) = pair();
        let frames: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 60]).collect();
        b.write_all(&framed(&frames)).unwrap();
        let mut r = StreamReader::new(64, 1514);
        assert_eq!(r.receive(a.as_raw_fd()).unwrap(), 64);
        let mut got: Vec<Vec<u8>> = r.pending(usize::MAX).iter().map(|f| f.to_vec()).collect();
        r.consume(64);
        assert!(r.has_buffered(), "the other 36 frames are already read");
        assert_eq!(r.receive(a.as_raw_fd()).unwrap(), 36);
        got.extend(r.pending(usize::MAX).iter().map(|f| f.to_vec()));
        assert_eq!(got, frames);
    }

    #[test]
    fn eof_mid_frame_is_reported_as_partial() {
        let (a, mut b) = pair();
        let bytes = framed(&[vec![1u8; 200]]);
        b.write_all(&bytes[..100]).unwrap();
        drop(b);
        let mut r = StreamReader::new(64, 1514);
        // The first read takes the partial frame, the second sees EOF.
        assert_eq!(r.receive(a.as_raw_fd()).unwrap(), 0);
        assert!(!r.has_buffered());
        match r.receive(a.as_raw_fd()) {
            Err(StreamEnd::Closed { partial }) => assert!(partial),
            other => panic!("expected close, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn max_size_frames_fill_the_buffer_and_still_complete() {
        let (a, mut b) = pair();
        let max = 65_550;
        let frames: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; max]).collect();
        let bytes = framed(&frames);
        let writer = std::thread::spawn(move || b.write_all(&bytes).unwrap());
        let mut r = StreamReader::new(64, max);
        let mut got = Vec::new();
        while got.len() < frames.len() {
            let n = r.receive(a.as_raw_fd()).unwrap();
            got.extend(r.pending(usize::MAX).iter().map(|f| f.to_vec()));
            r.consume(n);
            if n == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        writer.join().unwrap();
        assert_eq!(got, frames);
    }

    #[test]
    fn one_send_gathers_many_frames_and_the_rest_goes_in_the_next() {
        let (a, b) = pair();
        let frames: Vec<Vec<u8>> = (0..700u32).map(|i| vec![i as u8; 14 + (i as usize * 7) % 200]).collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        let mut w = StreamWriter::new();
        // One gather list holds at most MAX_IOVECS / 2 frames (header + payload each).
        assert_eq!(w.send(a.as_raw_fd(), &refs).unwrap(), MAX_IOVECS / 2);
        assert_eq!(w.send(a.as_raw_fd(), &refs[MAX_IOVECS / 2..]).unwrap(), 700 - MAX_IOVECS / 2);
        assert!(!w.in_frame());
        drop(a);
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut { b }, &mut all).unwrap();
        assert_eq!(all, framed(&frames));
    }

    #[test]
    fn partial_writes_resume_inside_a_frame() {
        let (a, b) = pair();
        socket::set_buffers(&a, 4096, 4096).unwrap();
        let frames: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 1514]).collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        let reader = std::thread::spawn(move || {
            let mut b = b;
            let mut all = Vec::new();
            std::io::Read::read_to_end(&mut b, &mut all).unwrap();
            all
        });
        let mut w = StreamWriter::new();
        let mut next = 0;
        let mut saw_partial = false;
        while next < refs.len() {
            match w.send(a.as_raw_fd(), &refs[next..]) {
                Ok(n) => next += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(std::time::Duration::from_micros(200)),
                Err(e) => panic!("{e}"),
            }
            saw_partial |= w.in_frame();
        }
        drop(a);
        let all = reader.join().unwrap();
        assert_eq!(all, framed(&frames));
        assert!(saw_partial, "a 4 KiB buffer should have forced a write to stop inside a frame");
    }
}
