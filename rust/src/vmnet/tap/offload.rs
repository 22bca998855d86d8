//! The user-space segmentation offload of a relayed TAP
//! ([`Tap::offload_in_userspace`]): the raw read buffers, the segments of a
//! read held for the next, and the reads and writes that turn the kernel's
//! virtio-net-headed frames into plain ones and back (`coalesce.rs` merges,
//! `segment.rs` splits; this file does the I/O and the counting).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::{coalesce, segment, vnet_hdr, write_uring_results, Batch, Tap, VNET_HDR_BYTES};

/// Bytes of one raw read: the header and the largest GSO frame the kernel
/// hands over (64 KiB of IP packet, an Ethernet header and a VLAN tag).
const RAW_FRAME_BYTES: usize = VNET_HDR_BYTES + 65_535 + 14 + 4;

/// Distance between the starts of two raw read buffers: 64 KiB + 4 KiB +
/// 64 B. Slots 64 KiB apart would put every frame's first bytes in the
/// same cache sets (set index bits lie below 64 KiB); the extra 4160 bytes
/// give slot i its own sets (i * 65 lines, modulo the cache's set count).
const RAW_SLOT_STRIDE: usize = 65_536 + 4_096 + 64;
const _: () = assert!(RAW_SLOT_STRIDE >= RAW_FRAME_BYTES);

/// The buffers and state of a TAP in [`Tap::offload_in_userspace`] mode.
pub(super) struct Offload {
    /// Raw reads (header + frame), `RAW_FRAME_BYTES` each at
    /// `RAW_SLOT_STRIDE` apart, in one
    /// allocation (large enough to be mapped lazily: pages a read never
    /// touched cost nothing).
    rx: Vec<u8>,
    rx_slots: usize,
    /// Frames read and planned but not all handed out: (slot, length,
    /// plan, next segment).
    held: VecDeque<(usize, usize, segment::Plan, usize)>,
    /// Frames from the kernel that could not be passed on, not yet reported.
    dropped: u64,
    dropped_total: u64,
    /// The last write's outputs, built here.
    tx: Vec<u8>,
    outputs: Vec<coalesce::Output>,
}

impl std::fmt::Debug for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offload").field("held", &self.held.len()).field("dropped_total", &self.dropped_total).finish()
    }
}

impl Offload {
    /// Whether segments of an earlier read wait to be handed out.
    pub(super) fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Frames dropped since the last call.
    pub(super) fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    pub(super) fn new(rx_slots: usize) -> Offload {
        Offload {
            rx: vec![0u8; rx_slots * RAW_SLOT_STRIDE],
            rx_slots,
            held: VecDeque::new(),
            dropped: 0,
            dropped_total: 0,
            tx: Vec::new(),
            outputs: Vec::new(),
        }
    }

    fn slot(&self, i: usize) -> &[u8] {
        &self.rx[i * RAW_SLOT_STRIDE..i * RAW_SLOT_STRIDE + RAW_FRAME_BYTES]
    }

    /// Hands out held segments into `bufs[*n..]`.
    fn drain(&mut self, name: &str, bufs: &mut [&mut [u8]], lens: &mut [usize], n: &mut usize) {
        while *n < bufs.len() {
            let Some(&(slot, len, plan, k)) = self.held.front() else { return };
            let frame = &self.slot(slot)[VNET_HDR_BYTES..len];
            match segment::emit(&plan, frame, k, bufs[*n]) {
                Ok(l) => {
                    lens[*n] = l;
                    *n += 1;
                }
                Err(e) => self.drop_frame(name, &e),
            }
            if k + 1 >= plan.count() {
                self.held.pop_front();
            } else if let Some(front) = self.held.front_mut() {
                front.3 = k + 1;
            }
        }
    }

    fn drop_frame(&mut self, name: &str, why: &segment::Malformed) {
        self.dropped += 1;
        self.dropped_total += 1;
        if self.dropped_total < 5 || self.dropped_total.is_multiple_of(1000) {
            log::warn!("TAP {name}: dropped a frame from the kernel: {why} ({} so far)", self.dropped_total);
        }
    }
}

impl Tap {
    /// [`Interface::read_frames`] with the user-space offload: held
    /// segments first, then (if room is left and nothing was held) new
    /// raw frames, each planned and handed out, the rest held.
    pub(super) fn read_offloaded(&mut self, bufs: &mut [&mut [u8]], lens: &mut [usize]) -> io::Result<usize> {
        let Some(mut off) = self.offload.take() else { return Ok(0) };
        let mut n = 0;
        off.drain(&self.name, bufs, lens, &mut n);
        let result = if n < bufs.len() && off.held.is_empty() {
            let want = (bufs.len() - n).min(off.rx_slots);
            let mut raw_lens = vec![0usize; want];
            let got = {
                let mut slots: Vec<&mut [u8]> = off.rx.chunks_mut(RAW_SLOT_STRIDE).take(want).map(|c| &mut c[..RAW_FRAME_BYTES]).collect();
                self.read_raw(&mut slots, &mut raw_lens)
            };
            match got {
                Ok(got) => {
                    for (slot, &len) in raw_lens.iter().enumerate().take(got) {
                        let raw = &off.slot(slot)[..len];
                        let planned = match vnet_hdr::VnetHdr::parse(raw) {
                            Some(hdr) => segment::plan(&hdr, &raw[VNET_HDR_BYTES..]),
                            None => Err(segment::Malformed::Headers("a read shorter than the virtio-net header")),
                        };
                        match planned {
                            Ok(plan) => off.held.push_back((slot, len, plan, 0)),
                            Err(e) => off.drop_frame(&self.name, &e),
                        }
                    }
                    off.drain(&self.name, bufs, lens, &mut n);
                    Ok(n)
                }
                // Segments already handed out go first; the error comes back
                // on the next read.
                Err(_) if n > 0 => Ok(n),
                Err(e) => Err(e),
            }
        } else {
            Ok(n)
        };
        self.offload = Some(off);
        result
    }

    /// [`Interface::write_frames`] with the user-space offload: the frames
    /// become TAP writes (TCP runs merged); a write the kernel refused
    /// counts every frame in it as refused.
    pub(super) fn write_offloaded(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        self.refused = (0, 0);
        let Some(mut off) = self.offload.take() else { return Ok(0) };
        let mut tx = std::mem::take(&mut off.tx);
        let mut outputs = std::mem::take(&mut off.outputs);
        self.offload = Some(off);
        coalesce::coalesce(frames, &mut tx, &mut outputs);
        let writes: Vec<&[u8]> = outputs.iter().map(|o| &tx[o.start..o.start + o.len]).collect();
        let fd = self.fd.as_raw_fd();
        let result = match self.batching() {
            Some((ring, _)) if writes.len() > 1 => match write_uring_results(ring, fd, &writes) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    log::info!("TAP {}: no non-blocking io_uring writes ({e}); one syscall per frame", self.name);
                    self.batch = Batch::PerFrame;
                    write_each_results(fd, &writes)
                }
                other => other,
            },
            _ => write_each_results(fd, &writes),
        };
        let outcome = result.and_then(|res| taken_and_refused(&outputs, &res));
        drop(writes);
        if let Some(off) = self.offload.as_mut() {
            off.tx = tx;
            off.outputs = outputs;
        }
        let (taken, refused) = outcome?;
        self.refused = refused;
        Ok(taken)
    }
}

/// One `write` per buffer, every result (bytes or `-errno`); stops after
/// the first that means "no room now" or "gone".
fn write_each_results(fd: RawFd, writes: &[&[u8]]) -> io::Result<Vec<i32>> {
    let mut res = Vec::with_capacity(writes.len());
    for w in writes {
        // SAFETY: w is a valid readable buffer of its length.
        let r = unsafe { libc::write(fd, w.as_ptr().cast(), w.len()) };
        if r < 0 {
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
            res.push(-errno);
            if write_stops(errno) {
                break;
            }
        } else {
            res.push(r as i32);
        }
    }
    Ok(res)
}

/// Errors after which later writes would fail alike: no room now, or the
/// device gone. Other errors (EINVAL: a frame the kernel refuses) concern
/// the one write.
fn write_stops(errno: i32) -> bool {
    matches!(errno, libc::EAGAIN | libc::ENOBUFS | libc::EINTR | libc::EBADFD | libc::EIO | libc::ENXIO | libc::ENODEV | libc::EBADF | libc::EPIPE)
}

/// From the results of the writes of `outputs` (in order; fewer results
/// than outputs where writing stopped): frames taken, and of those the
/// refused ones (frames, bytes). Writing that stopped on the first write
/// returns that error, so the caller sees "no room" or "gone" as such.
fn taken_and_refused(outputs: &[coalesce::Output], res: &[i32]) -> io::Result<(usize, (usize, usize))> {
    let mut taken = 0;
    let mut refused = (0, 0);
    for (o, &r) in outputs.iter().zip(res) {
        if r < 0 && write_stops(-r) {
            if taken == 0 {
                return Err(io::Error::from_raw_os_error(-r));
            }
            break;
        }
        taken += o.frames;
        if r < 0 {
            refused.0 += o.frames;
            refused.1 += o.bytes;
        }
    }
    if refused.0 > 0 {
        log::debug!("TAP write: {} of {taken} frames refused", refused.0);
    }
    Ok((taken, refused))
}

