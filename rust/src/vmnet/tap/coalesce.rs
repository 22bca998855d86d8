//! The write side of a relayed TAP's offload ("GRO" in user space): runs of
//! consecutive TCP segments of one flow, as a VM without offload sends them
//! (each at most an MTU), become one large frame with a virtio-net header
//! asking the kernel for segmentation offload (GSO_TCPV4/6, NEEDS_CSUM), so
//! the bridge, nftables and the receiving port handle one packet instead
//! of dozens. Every other frame goes with an all-zero header.
//!
//! A run is merged only where the kernel's own segmentation of the result
//! gives back the same segments (`segment.rs` does the same in user space):
//! IPv4 without options or fragmentation, or IPv6 with TCP as the next
//! header; the same Ethernet header, addresses, ports, TOS/traffic class,
//! flow label, TTL/hop limit and DF; IPv4 IDs counting up by one;
//! contiguous sequence numbers; the same ACK number, window, urgent pointer
//! and TCP options; flags ACK only, PSH allowed on the last; every payload
//! the size of the first but a shorter last one; no Ethernet padding; at
//! most 64 KiB of IP packet; valid IPv4 header and TCP checksums (the
//! kernel computes the merged segments' own, so a bad one would be
//! repaired).

use super::checksum;
use super::vnet_hdr::{self, VnetHdr};

const ETH: usize = 14;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
/// Largest IPv4 total length / IPv6 payload length.
const IP_MAX: usize = 65_535;

/// One write to the TAP: `len` bytes at `start` of the output buffer
/// (header included), carrying `frames` of the caller's frames totalling
/// `bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Output {
    pub start: usize,
    pub len: usize,
    pub frames: usize,
    pub bytes: usize,
}

/// A frame that may join a run: where its headers end and what they say.
#[derive(Clone, Copy, Debug)]
struct Segment {
    v6: bool,
    /// Offset of the TCP header.
    l4: usize,
    /// Offset of the payload (end of all headers).
    hdrs: usize,
    payload: usize,
    seq: u32,
    flags: u8,
    /// IPv4 identification (0 for IPv6).
    id: u16,
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// The frame as a TCP segment that could be merged, or `None`.
fn parse(f: &[u8]) -> Option<Segment> {
    if f.len() < ETH + 40 {
        return None;
    }
    let (v6, l4, id) = match be16(f, 12) {
        0x0800 => {
            let ip = &f[ETH..];
            // Version 4, no options; the length covers the frame exactly
            // (no padding); not a fragment, reserved bit clear; TCP; a
            // valid header checksum (a bad one is left for the kernel to
            // drop, not repaired by recomputing it).
            let frag = be16(ip, 6);
            if ip[0] != 0x45 || ETH + usize::from(be16(ip, 2)) != f.len() || frag & 0xbfff != 0 || ip[9] != 6 || checksum::of(&ip[..20]) != 0 {
                return None;
            }
            (false, ETH + 20, be16(ip, 4))
        }
        0x86dd => {
            let ip = &f[ETH..];
            if ip[0] >> 4 != 6 || ETH + 40 + usize::from(be16(ip, 4)) != f.len() || ip[6] != 6 {
                return None;
            }
            (true, ETH + 40, 0)
        }
        _ => return None,
    };
    if f.len() < l4 + 20 {
        return None;
    }
    let doff = usize::from(f[l4 + 12] >> 4) * 4;
    let hdrs = l4 + doff;
    let flags = f[l4 + 13];
    if doff < 20 || hdrs >= f.len() || f[l4 + 12] & 0x0f != 0 || (flags != TCP_ACK && flags != TCP_ACK | TCP_PSH) {
        return None;
    }
    // A valid TCP checksum, as the kernel's GRO asks: the kernel checksums
    // a merged frame's segments afresh, so a damaged one would be repaired
    // into data the receiver takes as good. Left as it came instead.
    let pseudo = checksum::pseudo_tcp(&f[ETH..], v6, f.len() - l4);
    if checksum::fold(checksum::add(pseudo, &f[l4..])) != 0xffff {
        return None;
    }
    Some(Segment { v6, l4, hdrs, payload: f.len() - hdrs, seq: be32(f, l4 + 4), flags, id })
}

/// Whether `cur` continues the run that starts with `first` and last took
/// `prev`; `total` is the run's IP length so far.
fn continues(first: (&[u8], &Segment), prev: &Segment, cur: (&[u8], &Segment), total: usize) -> bool {
    let (ff, f) = first;
    let (cf, c) = cur;
    if c.v6 != f.v6 || c.hdrs != f.hdrs || prev.flags != TCP_ACK || prev.payload != f.payload || c.payload > f.payload {
        return false;
    }
    if total + c.payload > IP_MAX || c.seq != prev.seq.wrapping_add(prev.payload as u32) {
        return false;
    }
    if cf[..ETH] != ff[..ETH] {
        return false;
    }
    let same_ip = if f.v6 {
        // Version, traffic class, flow label; next header, hop limit,
        // addresses (the payload length differs only on a short last one).
        cf[ETH..ETH + 4] == ff[ETH..ETH + 4] && cf[ETH + 6..ETH + 40] == ff[ETH + 6..ETH + 40]
    } else {
        // Version/IHL and TOS; flags (DF); TTL, protocol; addresses; ID + 1.
        cf[ETH..ETH + 2] == ff[ETH..ETH + 2]
            && cf[ETH + 6] == ff[ETH + 6]
            && cf[ETH + 8..ETH + 10] == ff[ETH + 8..ETH + 10]
            && cf[ETH + 12..ETH + 20] == ff[ETH + 12..ETH + 20]
            && c.id == prev.id.wrapping_add(1)
    };
    // Ports; ACK number, data offset; window; urgent pointer; options.
    let l4 = f.l4;
    same_ip
        && cf[l4..l4 + 4] == ff[l4..l4 + 4]
        && cf[l4 + 8..l4 + 13] == ff[l4 + 8..l4 + 13]
        && cf[l4 + 14..l4 + 16] == ff[l4 + 14..l4 + 16]
        && cf[l4 + 18..f.hdrs] == ff[l4 + 18..f.hdrs]
}

/// Turns `frames` into TAP writes appended to `out` (cleared first), one
/// [`Output`] each, in order.
pub fn coalesce(frames: &[&[u8]], out: &mut Vec<u8>, outputs: &mut Vec<Output>) {
    out.clear();
    outputs.clear();
    let mut i = 0;
    while i < frames.len() {
        let start = out.len();
        let Some(first) = parse(frames[i]) else {
            push_plain(frames[i], out, outputs);
            i += 1;
            continue;
        };
        let mut prev = first;
        let mut total = first.hdrs - ETH + first.payload;
        let mut j = i + 1;
        while j < frames.len() {
            let Some(cur) = parse(frames[j]) else { break };
            if !continues((frames[i], &first), &prev, (frames[j], &cur), total) {
                break;
            }
            total += cur.payload;
            prev = cur;
            j += 1;
        }
        if j == i + 1 {
            push_plain(frames[i], out, outputs);
            i += 1;
            continue;
        }
        let hdr = VnetHdr {
            flags: vnet_hdr::F_NEEDS_CSUM,
            gso_type: if first.v6 { vnet_hdr::GSO_TCPV6 } else { vnet_hdr::GSO_TCPV4 },
            hdr_len: first.hdrs as u16,
            gso_size: first.payload as u16,
            csum_start: first.l4 as u16,
            csum_offset: 16,
            num_buffers: 0,
        };
        out.extend_from_slice(&hdr.to_bytes());
        let base = out.len();
        out.extend_from_slice(&frames[i][..first.hdrs]);
        let mut bytes = 0;
        for f in &frames[i..j] {
            out.extend_from_slice(&f[first.hdrs..]);
            bytes += f.len();
        }
        let frame = &mut out[base..];
        if first.v6 {
            frame[ETH + 4..ETH + 6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        } else {
            frame[ETH + 2..ETH + 4].copy_from_slice(&(total as u16).to_be_bytes());
            checksum::set_ipv4_header(&mut frame[ETH..ETH + 20]);
        }
        // PSH as the last segment had it; the kernel puts it on the last.
        frame[first.l4 + 13] = prev.flags;
        // The pseudo-header sum over the whole L4 length, not complemented:
        // what NEEDS_CSUM and the kernel's TCP segmentation expect there.
        let l4_len = frame.len() - first.l4;
        let pseudo = checksum::pseudo_tcp(&frame[ETH..], first.v6, l4_len);
        frame[first.l4 + 16..first.l4 + 18].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
        outputs.push(Output { start, len: out.len() - start, frames: j - i, bytes });
        i = j;
    }
}

fn push_plain(frame: &[u8], out: &mut Vec<u8>, outputs: &mut Vec<Output>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; vnet_hdr::LEN]);
    out.extend_from_slice(frame);
    outputs.push(Output { start, len: out.len() - start, frames: 1, bytes: frame.len() });
}
