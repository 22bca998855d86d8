//! Fuzz target: the write side of a relayed TAP's offload
//! (`vmnet/tap/coalesce.rs`): frames from a VM, runs of one TCP flow's
//! segments merged into GSO writes.
//!
//! Input: a recipe for a list of frames, so that runs worth merging are
//! common while any frame stays possible. Byte 0: bit 0 IPv6, bit 1 TCP
//! timestamps (12 bytes of options); byte 1: the flow's segment size
//! (1 + 6 * byte). Then operations, each an op byte and its arguments:
//! - op & 3 == 0 or 1: the flow's next segment, of the full size (0) or of
//!   1 + (next byte % size) bytes (1), PSH if op & 4. With op & 8 one byte
//!   of it is changed (2 bytes offset, 1 byte XOR) and with op & 16 its
//!   checksums are then made right again; op & 32 keeps the flow's
//!   sequence number and IPv4 ID where they were (a gap or a repeat next);
//! - op & 3 == 2: a raw frame: a length byte and that many bytes;
//! - op & 3 == 3: the flow's ACK number grows by the next byte (a new run).
//! Checksums of built frames come from the word-by-word sum in `common.rs`,
//! not from the crate's.
//!
//! Checked on every input, from the module's documented contract:
//! - `coalesce` returns (a panic is a crash libFuzzer reports);
//! - the outputs tile the output buffer in order and account for every
//!   input frame exactly once, in order (frame counts and byte totals);
//! - an output of one frame is an all-zero virtio-net header and the frame,
//!   byte for byte;
//! - an output of several is a GSO header (NEEDS_CSUM, GSO_TCPV4/6, the
//!   checksum at the TCP header) on at most 64 KiB of IP packet, and the
//!   user-space segmenter (`plan`, `emit`: the kernel's split, as
//!   `tap/offload_tests.rs` checks round trips) cuts it into exactly the
//!   frames merged into it, byte for byte.
//!
//! Seeds: with `VMNET_RS_FUZZ_WRITE_SEEDS=DIR` set, the target writes
//! recipes of whole runs (IPv4 and IPv6, with a short PSH last segment,
//! with raw frames and changed segments between) into DIR at start-up.

#![no_main]

mod common;

use _native::fuzzing::tap::{coalesce, emit, plan, Output, VnetHdr, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, LEN};
use libfuzzer_sys::fuzz_target;

const ETH: usize = 14;

/// The TCP flow the recipe's segments belong to.
struct Flow {
    v6: bool,
    timestamps: bool,
    mss: usize,
    seq: u32,
    ack: u32,
    id: u16,
    fill: u8,
}

impl Flow {
    /// One segment of `len` payload bytes, checksums right.
    fn segment(&mut self, len: usize, psh: bool) -> Vec<u8> {
        let opts: &[u8] = if self.timestamps { &[1, 1, 8, 10, 0, 0, 0, 42, 0, 0, 0, 9] } else { &[] };
        let tcp_len = 20 + opts.len() + len;
        let mut f = vec![0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1];
        if self.v6 {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0x01, 0x23, 0x45]);
            f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            f.extend_from_slice(&[6, 64]);
            f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        } else {
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
            f.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            f.extend_from_slice(&self.id.to_be_bytes());
            f.extend_from_slice(&[0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        }
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&5201u16.to_be_bytes());
        f.extend_from_slice(&self.seq.to_be_bytes());
        f.extend_from_slice(&self.ack.to_be_bytes());
        f.push(((20 + opts.len()) / 4 << 4) as u8);
        f.push(0x10 | if psh { 0x08 } else { 0 });
        f.extend_from_slice(&[0x01, 0xf5, 0, 0, 0, 0]);
        f.extend_from_slice(opts);
        f.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(self.fill)));
        self.fill = self.fill.wrapping_add(7);
        fix_checksums(&mut f, self.v6);
        f
    }

    fn advance(&mut self, len: usize) {
        self.seq = self.seq.wrapping_add(len as u32);
        self.id = self.id.wrapping_add(1);
    }
}

/// Recomputes the IPv4 header and TCP checksums of a frame `Flow` built
/// (as far as its bytes still allow).
fn fix_checksums(f: &mut [u8], v6: bool) {
    let l4 = if v6 { ETH + 40 } else { ETH + 20 };
    if f.len() < l4 + 18 {
        return;
    }
    if !v6 {
        f[ETH + 10..ETH + 12].fill(0);
        let c = common::checksum(0, &f[ETH..ETH + 20]);
        f[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
    }
    f[l4 + 16..l4 + 18].fill(0);
    let pseudo = if v6 {
        common::pseudo(&f[ETH + 8..ETH + 24], &f[ETH + 24..ETH + 40], 6, f.len() - l4)
    } else {
        common::pseudo(&f[ETH + 12..ETH + 16], &f[ETH + 16..ETH + 20], 6, f.len() - l4)
    };
    let c = common::checksum(pseudo, &f[l4..]);
    f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
}

/// The frames a recipe describes.
fn frames(data: &[u8]) -> Vec<Vec<u8>> {
    let mut it = data.iter().copied();
    let (Some(mode), Some(size)) = (it.next(), it.next()) else { return Vec::new() };
    let mut flow = Flow { v6: mode & 1 != 0, timestamps: mode & 2 != 0, mss: 1 + 6 * usize::from(size), seq: 0xffff_f000, ack: 777, id: 0x1234, fill: 0 };
    let mut out = Vec::new();
    while let Some(op) = it.next() {
        match op & 3 {
            0 | 1 => {
                let len = if op & 3 == 0 { flow.mss } else { 1 + usize::from(it.next().unwrap_or(0)) % flow.mss };
                let mut f = flow.segment(len, op & 4 != 0);
                if op & 8 != 0 {
                    let at = usize::from(u16::from_be_bytes([it.next().unwrap_or(0), it.next().unwrap_or(0)])) % f.len();
                    f[at] ^= it.next().unwrap_or(1);
                    if op & 16 != 0 {
                        fix_checksums(&mut f, flow.v6);
                    }
                }
                if op & 32 == 0 {
                    flow.advance(len);
                }
                out.push(f);
            }
            2 => {
                let len = usize::from(it.next().unwrap_or(0));
                out.push(it.by_ref().take(len).collect());
            }
            _ => flow.ack = flow.ack.wrapping_add(u32::from(it.next().unwrap_or(1))),
        }
    }
    out
}

/// Checks one merged output against the frames merged into it.
fn check_merged(write: &[u8], merged: &[Vec<u8>]) {
    let hdr = VnetHdr::parse(write).expect("a merged output shorter than its virtio-net header");
    let frame = &write[LEN..];
    let first = &merged[0];
    let v6 = u16::from_be_bytes([first[12], first[13]]) == 0x86dd;
    assert_eq!(hdr.flags, F_NEEDS_CSUM, "a merged output without NEEDS_CSUM");
    assert_eq!(hdr.gso_type, if v6 { GSO_TCPV6 } else { GSO_TCPV4 }, "a merged output's GSO type");
    assert_eq!(usize::from(hdr.csum_start), if v6 { ETH + 40 } else { ETH + 20 }, "a merged output's checksum start");
    assert_eq!(hdr.csum_offset, 16, "a merged output's checksum offset");
    assert!(frame.len() - ETH <= 65_535, "a merged output of {} bytes of IP packet", frame.len() - ETH);
    let plan = plan(&hdr, frame).unwrap_or_else(|e| panic!("the segmenter refuses a merged output: {e}"));
    assert_eq!(plan.count(), merged.len(), "the segmenter cuts a merged output into another number of frames");
    let mut buf = vec![0u8; 65_550];
    for (k, want) in merged.iter().enumerate() {
        let n = emit(&plan, frame, k, &mut buf).unwrap_or_else(|e| panic!("segment {k} of a merged output: {e}"));
        assert_eq!(&buf[..n], want.as_slice(), "segment {k} of {} differs from the frame merged", merged.len());
    }
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let run = |mode: u8, size: u8, n: usize, last: u8| {
        let mut r = vec![mode, size];
        r.extend(std::iter::repeat_n(0u8, n - 1));
        r.extend_from_slice(&[1 | 4, last]);
        r
    };
    let mut mixed = vec![2, 40, 0, 0, 2, 3, 1, 2, 3, 0, 8, 0, 70, 0x55, 0, 0, 3, 9, 0, 0, 8 | 16, 0, 60, 0x01, 0, 1 | 4, 17];
    mixed.extend_from_slice(&[0, 32, 0, 0]);
    vec![
        ("v4-run".into(), run(0, 241, 20, 99)),
        ("v6-run-timestamps".into(), run(3, 237, 20, 50)),
        ("v4-small-segments".into(), run(2, 1, 200, 3)),
        ("v4-mixed".into(), mixed),
    ]
}

fuzz_target!(
    init: common::write_seeds(seeds),
    |data: &[u8]| {
        let frames = frames(data);
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let mut out = Vec::new();
        let mut outputs: Vec<Output> = Vec::new();
        coalesce(&refs, &mut out, &mut outputs);
        let mut next = 0;
        let mut at = 0;
        for o in &outputs {
            assert_eq!(o.start, at, "outputs do not tile the buffer");
            assert!(o.frames >= 1 && next + o.frames <= frames.len(), "an output of {} frames after {next} of {}", o.frames, frames.len());
            let merged = &frames[next..next + o.frames];
            assert_eq!(o.bytes, merged.iter().map(Vec::len).sum::<usize>(), "an output's byte count");
            let write = &out[o.start..o.start + o.len];
            if o.frames == 1 {
                assert_eq!(&write[..LEN], &[0u8; LEN], "a plain output with a non-zero virtio-net header");
                assert_eq!(&write[LEN..], merged[0].as_slice(), "a plain output differs from its frame");
            } else {
                check_merged(write, merged);
            }
            next += o.frames;
            at += o.len;
        }
        assert_eq!(next, frames.len(), "outputs account for {next} of {} frames", frames.len());
        assert_eq!(at, out.len(), "bytes after the last output");
    }
);
