//! The read side of a relayed TAP's offload ("GSO" in user space): a frame
//! the kernel hands over with a virtio-net header may be a TCP super-frame
//! (GSO_TCPV4/6, possibly with the ECN bit) or carry a partial checksum
//! (NEEDS_CSUM: the host's own UDP or TCP, e.g. dnsmasq's replies). Both
//! become plain, fully checksummed frames of at most an MTU here, as a VM
//! without offload expects them.
//!
//! [`plan`] looks at the header and the frame once; [`emit`] then writes
//! segment `k` of it into a caller's buffer, so a frame of many segments
//! can be handed out over several reads. TCP segments get the headers of
//! the super-frame with the IPv4 total length, ID (+k) and header checksum,
//! or the IPv6 payload length, fixed; the sequence number advanced by
//! k * gso_size; FIN and PSH only on the last segment and CWR only on the
//! first; and a full TCP checksum. A partial checksum is completed
//! generically: the one's-complement sum from `csum_start` to the end,
//! stored at `csum_start + csum_offset` (the field holds the pseudo-header
//! sum already). Anything else (other GSO types, headers that do not fit
//! the frame) is [`Malformed`], for the caller to drop and count.

use super::checksum;
use super::vnet_hdr::{self, VnetHdr};

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a frame from the TAP cannot be passed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// A GSO type this port did not ask for (only TCPV4/6 are enabled).
    GsoType(u8),
    /// Headers or checksum offsets that do not fit the frame.
    Headers(&'static str),
    /// A segment larger than the buffer it was to go into.
    TooBig { needed: usize, room: usize },
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Malformed::GsoType(t) => write!(f, "unknown GSO type {t:#04x}"),
            Malformed::Headers(what) => write!(f, "{what}"),
            Malformed::TooBig { needed, room } => write!(f, "a {needed}-byte segment does not fit a {room}-byte buffer"),
        }
    }
}

/// How one frame from the TAP becomes frames for the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// As it is.
    Whole,
    /// As it is, with the checksum from `start` completed at `start + offset`.
    Csum { start: usize, offset: usize },
    /// TCP segmentation.
    Tcp(Tcp),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tcp {
    v6: bool,
    /// Offsets of the IP header, the TCP header and the payload.
    l3: usize,
    l4: usize,
    hdrs: usize,
    mss: usize,
    count: usize,
}

impl Plan {
    /// Frames this plan gives.
    pub fn count(&self) -> usize {
        match self {
            Plan::Tcp(t) => t.count,
            _ => 1,
        }
    }
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

/// Reads the header of `frame` (the Ethernet frame after the virtio-net
/// header) and says how to pass it on.
pub fn plan(hdr: &VnetHdr, frame: &[u8]) -> Result<Plan, Malformed> {
    let needs_csum = hdr.flags & vnet_hdr::F_NEEDS_CSUM != 0;
    let gso = hdr.gso_type & !vnet_hdr::GSO_ECN;
    let csum = (usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
    if needs_csum && (csum.0 >= frame.len() || csum.0 + csum.1 + 2 > frame.len()) {
        return Err(Malformed::Headers("the checksum offsets lie outside the frame"));
    }
    let v6 = match gso {
        vnet_hdr::GSO_NONE if needs_csum => return Ok(Plan::Csum { start: csum.0, offset: csum.1 }),
        vnet_hdr::GSO_NONE => return Ok(Plan::Whole),
        vnet_hdr::GSO_TCPV4 => false,
        vnet_hdr::GSO_TCPV6 => true,
        other => return Err(Malformed::GsoType(other)),
    };
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(Malformed::Headers("a GSO frame with gso_size 0"));
    }
    if frame.len() < 18 {
        return Err(Malformed::Headers("a GSO frame shorter than an Ethernet header"));
    }
    // One VLAN tag at most.
    let (l3, ethertype) = match be16(frame, 12) {
        0x8100 => (18, be16(frame, 16)),
        t => (14, t),
    };
    let l4 = if v6 {
        if ethertype != 0x86dd || frame.len() < l3 + 40 {
            return Err(Malformed::Headers("a TCPV6 GSO frame without an IPv6 header"));
        }
        // Extension headers, if any, lie between; csum_start says where TCP is.
        let l4 = if needs_csum { csum.0 } else { l3 + 40 };
        if l4 < l3 + 40 || (!needs_csum && frame[l3 + 6] != 6) {
            return Err(Malformed::Headers("a TCPV6 GSO frame whose TCP header cannot be found"));
        }
        l4
    } else {
        if ethertype != 0x0800 || frame.len() < l3 + 20 || frame[l3] >> 4 != 4 || frame[l3 + 9] != 6 {
            return Err(Malformed::Headers("a TCPV4 GSO frame without an IPv4 TCP header"));
        }
        let l4 = l3 + usize::from(frame[l3] & 0x0f) * 4;
        if l4 < l3 + 20 || (needs_csum && csum.0 != l4) {
            return Err(Malformed::Headers("a TCPV4 GSO frame whose checksum start is not its TCP header"));
        }
        l4
    };
    if frame.len() < l4 + 20 {
        return Err(Malformed::Headers("a GSO frame shorter than its TCP header"));
    }
    let hdrs = l4 + usize::from(frame[l4 + 12] >> 4) * 4;
    if hdrs < l4 + 20 || hdrs > frame.len() {
        return Err(Malformed::Headers("a GSO frame whose TCP data offset lies outside it"));
    }
    let payload = frame.len() - hdrs;
    let count = payload.div_ceil(mss).max(1);
    Ok(Plan::Tcp(Tcp { v6, l3, l4, hdrs, mss, count }))
}

/// Writes frame `k` (< `plan.count()`) of `frame` into `out` and returns
/// its length.
pub fn emit(plan: &Plan, frame: &[u8], k: usize, out: &mut [u8]) -> Result<usize, Malformed> {
    let fits = |needed: usize| if needed > out.len() { Err(Malformed::TooBig { needed, room: out.len() }) } else { Ok(()) };
    match *plan {
        Plan::Whole => {
            fits(frame.len())?;
            out[..frame.len()].copy_from_slice(frame);
            Ok(frame.len())
        }
        Plan::Csum { start, offset } => {
            fits(frame.len())?;
            let out = &mut out[..frame.len()];
            out.copy_from_slice(frame);
            // 0 would read as "no checksum" in UDP; 0xffff is the same sum.
            let c = match !checksum::fold(checksum::add(0, &out[start..])) {
                0 => 0xffff,
                c => c,
            };
            out[start + offset..start + offset + 2].copy_from_slice(&c.to_be_bytes());
            Ok(frame.len())
        }
        Plan::Tcp(t) => {
            let payload = frame.len() - t.hdrs;
            let from = t.hdrs + k * t.mss;
            let len = t.mss.min(payload.saturating_sub(k * t.mss));
            let seg_len = t.hdrs + len;
            fits(seg_len)?;
            let out = &mut out[..seg_len];
            out[..t.hdrs].copy_from_slice(&frame[..t.hdrs]);
            out[t.hdrs..].copy_from_slice(&frame[from..from + len]);
            let l3 = t.l3;
            if t.v6 {
                out[l3 + 4..l3 + 6].copy_from_slice(&((seg_len - l3 - 40) as u16).to_be_bytes());
            } else {
                out[l3 + 2..l3 + 4].copy_from_slice(&((seg_len - l3) as u16).to_be_bytes());
                let id = be16(frame, l3 + 4).wrapping_add(k as u16);
                out[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
                checksum::set_ipv4_header(&mut out[l3..t.l4]);
            }
            let l4 = t.l4;
            let seq = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]).wrapping_add((k * t.mss) as u32);
            out[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            if k + 1 < t.count {
                out[l4 + 13] &= !(TCP_FIN | TCP_PSH);
            }
            if k > 0 {
                out[l4 + 13] &= !TCP_CWR;
            }
            out[l4 + 16] = 0;
            out[l4 + 17] = 0;
            let pseudo = checksum::pseudo_tcp(&out[l3..], t.v6, seg_len - l4);
            let c = !checksum::fold(checksum::add(pseudo, &out[l4..]));
            out[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
            Ok(seg_len)
        }
    }
}
