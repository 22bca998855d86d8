//! Fuzz target: the read side of a relayed TAP's offload
//! (`vmnet/tap/segment.rs`, `vnet_hdr.rs`): one raw TAP read, a
//! virtio-net header and a frame, planned and split into the frames a VM
//! gets, as `tap/offload.rs` does with each read.
//!
//! Input: byte 0 chooses the port's MTU (576, 1280, 1500, 9000 or 65 521);
//! the rest is the raw read, copied into a buffer of exactly its length (so
//! AddressSanitizer reports any read past it). What reaches the TAP's
//! reader is another guest's traffic shaped by the kernel, so every
//! header field and length is taken as untrusted.
//!
//! Checked on every input, from the module's documented contract:
//! - `VnetHdr::parse`, `plan` and `emit` return; nothing is read outside
//!   the input (bounds checks and AddressSanitizer);
//! - each segment `emit` gives for an output buffer of MTU + 14 bytes (the
//!   relay's) is at most that long, or refused as too big, never cut;
//! - a frame passed as it is comes out byte for byte; one whose partial
//!   checksum is completed differs only in the two checksum bytes, which
//!   hold the complement of the one's-complement sum from `csum_start`;
//! - a TCP super-frame gives `ceil(payload / gso_size)` segments (at least
//!   one) which, when all fit, carry its payload in order, each with the
//!   super-frame's headers but for: IPv4 total length, ID + k and a valid
//!   header checksum, or IPv6 payload length; sequence number + k *
//!   gso_size; FIN and PSH only on the last, CWR only on the first; and a
//!   TCP checksum that verifies (checked with `common.rs`'s own sum).
//!
//! Seeds: with `VMNET_RS_FUZZ_WRITE_SEEDS=DIR` set, the target writes GSO
//! super-frames (IPv4, IPv6, with a VLAN tag, ECN and FIN), a partial UDP
//! checksum and a plain frame into DIR at start-up.

#![no_main]

mod common;

use _native::fuzzing::tap::{emit, plan, Plan, VnetHdr, F_NEEDS_CSUM, GSO_ECN, GSO_TCPV4, GSO_TCPV6, LEN};
use libfuzzer_sys::fuzz_target;

const MTUS: [usize; 5] = [576, 1280, 1500, 9000, 65_521];

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Checks the TCP segments of a super-frame `frame` (headers `hdrs` long,
/// IP at `l3`, TCP at `l4`) that `emit` made, all of them.
fn check_tcp(frame: &[u8], segs: &[Vec<u8>], v6: bool, l3: usize, l4: usize, hdrs: usize, mss: usize) {
    let payload = &frame[hdrs..];
    assert_eq!(segs.len(), payload.len().div_ceil(mss).max(1), "segment count");
    let mut data = Vec::new();
    let flags = frame[l4 + 13];
    for (k, s) in segs.iter().enumerate() {
        assert!(s.len() >= hdrs && s.len() - hdrs <= mss, "segment {k}: {} bytes after {hdrs} of headers, gso_size {mss}", s.len());
        data.extend_from_slice(&s[hdrs..]);
        let same = |from: usize, to: usize, what: &str| assert_eq!(s[from..to], frame[from..to], "segment {k}: {what} changed");
        same(0, l3, "link header");
        if v6 {
            same(l3, l3 + 4, "IPv6 header");
            same(l3 + 6, l4, "IPv6 header");
            assert_eq!(usize::from(be16(s, l3 + 4)), s.len() - l3 - 40, "segment {k}: IPv6 payload length");
        } else {
            same(l3, l3 + 2, "IPv4 header");
            same(l3 + 6, l3 + 10, "IPv4 header");
            same(l3 + 12, l4, "IPv4 header");
            assert_eq!(usize::from(be16(s, l3 + 2)), s.len() - l3, "segment {k}: IPv4 total length");
            assert_eq!(be16(s, l3 + 4), be16(frame, l3 + 4).wrapping_add(k as u16), "segment {k}: IPv4 ID");
            assert_eq!(common::sum(0, &s[l3..l4]), 0xffff, "segment {k}: IPv4 header checksum");
        }
        same(l4, l4 + 4, "ports");
        assert_eq!(be32(s, l4 + 4), be32(frame, l4 + 4).wrapping_add((k * mss) as u32), "segment {k}: sequence number");
        same(l4 + 8, l4 + 13, "ACK number or data offset");
        let last = k + 1 == segs.len();
        let mut want = flags;
        if !last {
            want &= !0x09;
        }
        if k > 0 {
            want &= !0x80;
        }
        assert_eq!(s[l4 + 13], want, "segment {k}: TCP flags");
        same(l4 + 14, l4 + 16, "window");
        same(l4 + 18, hdrs, "urgent pointer or options");
        let pseudo = if v6 {
            common::pseudo(&s[l3 + 8..l3 + 24], &s[l3 + 24..l3 + 40], 6, s.len() - l4)
        } else {
            common::pseudo(&s[l3 + 12..l3 + 16], &s[l3 + 16..l3 + 20], 6, s.len() - l4)
        };
        assert!(common::l4_checksum_ok(pseudo, &s[l4..]), "segment {k}: TCP checksum");
    }
    assert_eq!(data, payload, "the segments' payloads differ from the super-frame's");
}

/// A kernel GSO super-frame: `payload` bytes of TCP over IPv4 or IPv6 (a
/// VLAN tag if `vlan`), the pseudo-header sum in the checksum field.
fn super_frame(v6: bool, vlan: bool, mss: u16, payload: usize, flags: u8) -> Vec<u8> {
    let mut f = vec![0x52, 0x54, 0, 0, 0, 1, 0x52, 0x54, 0, 0, 0, 2];
    if vlan {
        f.extend_from_slice(&[0x81, 0, 0, 5]);
    }
    let l3 = f.len() + 2;
    let tcp_len = 32 + payload;
    if v6 {
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
        f.extend_from_slice(&[6, 64]);
        f.extend((0..32).map(|i| if i % 16 == 15 { 1 + i / 16 } else if i % 16 == 0 { 0xfd } else { 0 }));
    } else {
        f.extend_from_slice(&[0x08, 0, 0x45, 0]);
        f.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        let c = common::checksum(0, &f[l3..l3 + 20]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
    let l4 = f.len();
    f.extend_from_slice(&[0x9c, 0x40, 0x14, 0x51, 0xff, 0xff, 0xf0, 0, 0, 0, 3, 9, 0x80, flags, 1, 0xf5, 0, 0, 0, 0]);
    f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 42, 0, 0, 0, 9]);
    f.extend((0..payload).map(|i| (i * 31 % 251) as u8));
    let pseudo = if v6 { common::pseudo(&f[l3 + 8..l3 + 24], &f[l3 + 24..l3 + 40], 6, tcp_len) } else { common::pseudo(&f[l3 + 12..l3 + 16], &f[l3 + 16..l3 + 20], 6, tcp_len) };
    f[l4 + 16..l4 + 18].copy_from_slice(&common::sum(pseudo, &[]).to_be_bytes());
    let gso = if v6 { GSO_TCPV6 } else { GSO_TCPV4 } | if flags & 0x80 != 0 { GSO_ECN } else { 0 };
    let hdr = VnetHdr { flags: F_NEEDS_CSUM, gso_type: gso, hdr_len: (l4 + 32) as u16, gso_size: mss, csum_start: l4 as u16, csum_offset: 16, num_buffers: 0 };
    let mut raw = hdr.to_bytes().to_vec();
    raw.extend_from_slice(&f);
    raw
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let with_mtu = |i: u8, raw: Vec<u8>| {
        let mut v = vec![i];
        v.extend(raw);
        v
    };
    let mut udp = VnetHdr { flags: F_NEEDS_CSUM, csum_start: 34, csum_offset: 6, ..Default::default() }.to_bytes().to_vec();
    udp.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 1, 0x52, 0x54, 0, 0, 0, 2, 0x08, 0, 0x45, 0, 0, 33, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    udp.extend_from_slice(&[0, 53, 0x80, 0xe8, 0, 13, 0x12, 0x34, b'a', b'n', b's', b'w', b'e']);
    vec![
        ("v4".into(), with_mtu(2, super_frame(false, false, 1448, 3000, 0x18))),
        ("v6-ecn-fin".into(), with_mtu(2, super_frame(true, false, 1428, 2900, 0x80 | 0x19))),
        ("v4-vlan-small".into(), with_mtu(0, super_frame(false, true, 500, 1700, 0x10))),
        ("v6-too-big".into(), with_mtu(1, super_frame(true, false, 1440, 3000, 0x10))),
        ("udp-partial".into(), with_mtu(2, udp)),
        ("plain".into(), with_mtu(2, [[0u8; LEN].as_slice(), &[0xff; 60]].concat())),
    ]
}

fuzz_target!(
    init: common::write_seeds(seeds),
    |data: &[u8]| {
        let Some((&m, raw)) = data.split_first() else { return };
        let room = MTUS[usize::from(m) % MTUS.len()] + 14;
        // Exactly the read's bytes, so AddressSanitizer sees reads past them.
        let raw = raw.to_vec();
        let Some(hdr) = VnetHdr::parse(&raw) else {
            assert!(raw.len() < LEN, "a header of {} bytes does not parse", raw.len());
            return;
        };
        let frame = &raw[LEN..];
        let Ok(p) = plan(&hdr, frame) else { return };
        let mut buf = vec![0u8; room];
        let mut segs = Vec::new();
        for k in 0..p.count() {
            if let Ok(n) = emit(&p, frame, k, &mut buf) {
                assert!(n <= room, "a {n}-byte segment from a {room}-byte buffer");
                segs.push(buf[..n].to_vec());
            }
        }
        match p {
            Plan::Whole => {
                assert_eq!(hdr.flags & F_NEEDS_CSUM, 0, "a NEEDS_CSUM frame passed as it is");
                if let [s] = &segs[..] {
                    assert_eq!(s.as_slice(), frame, "a frame passed as it is changed");
                }
            }
            Plan::Csum { start, offset } => {
                if let [s] = &segs[..] {
                    let at = start + offset;
                    assert_eq!(s.len(), frame.len(), "a completed checksum changed the length");
                    assert_eq!((&s[..at], &s[at + 2..]), (&frame[..at], &frame[at + 2..]), "completing a checksum changed other bytes");
                    let want = match common::checksum(0, &frame[start..]) {
                        0 => 0xffff,
                        c => c,
                    };
                    assert_eq!(be16(s, at), want, "the completed checksum");
                }
            }
            Plan::Tcp(_) => {
                // Where the headers lie, as the plan must have found them.
                let (l3, ethertype) = match be16(frame, 12) {
                    0x8100 => (18, be16(frame, 16)),
                    t => (14, t),
                };
                let v6 = ethertype == 0x86dd;
                let l4 = if v6 && hdr.flags & F_NEEDS_CSUM != 0 { usize::from(hdr.csum_start) } else if v6 { l3 + 40 } else { l3 + usize::from(frame[l3] & 0x0f) * 4 };
                let hdrs = l4 + usize::from(frame[l4 + 12] >> 4) * 4;
                if segs.len() == p.count() {
                    check_tcp(frame, &segs, v6, l3, l4, hdrs, usize::from(hdr.gso_size));
                }
            }
        }
    }
);
