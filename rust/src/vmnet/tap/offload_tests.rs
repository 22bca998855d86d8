//! Tests of the user-space offload's pure parts together: TCP segments a
//! VM sends, merged by `coalesce`, split again by `segment` as the kernel
//! would, come back byte for byte; every condition that must stop a merge
//! stops it; malformed frames from the kernel are refused, not trusted.
//! Frames are built and their checksums verified with etherparse, not with
//! the checksum code under test.

use etherparse::{IpNumber, Ipv4Header, Ipv6Header, SlicedPacket, TcpHeader, TcpOptionElement, TransportSlice, NetSlice, UdpHeader};

use super::coalesce::{self, Output};
use super::segment::{self, Malformed, Plan};
use super::vnet_hdr::{self, VnetHdr};

const DST: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];
const SRC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
const A4: [u8; 4] = [10, 0, 0, 1];
const B4: [u8; 4] = [10, 0, 0, 2];
const A6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const B6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// What one test segment looks like; each test changes a field.
#[derive(Clone)]
pub(super) struct Seg {
    v6: bool,
    id: u16,
    seq: u32,
    ack: u32,
    window: u16,
    psh: bool,
    fin: bool,
    syn: bool,
    cwr: bool,
    ece: bool,
    tsval: u32,
    ttl: u8,
    dscp: u8,
    df: bool,
    src_port: u16,
    payload: Vec<u8>,
}

pub(super) fn seg(v6: bool, i: usize, mss: usize) -> Seg {
    let payload: Vec<u8> = (0..mss).map(|b| ((b * 31 + i * 7) % 256) as u8).collect();
    Seg {
        v6,
        id: 0x1234u16.wrapping_add(i as u16),
        seq: 0xffff_f000u32.wrapping_add((i * mss) as u32),
        ack: 777,
        window: 501,
        psh: false,
        fin: false,
        syn: false,
        cwr: false,
        ece: false,
        tsval: 42,
        ttl: 64,
        dscp: 0,
        df: true,
        src_port: 40000,
        payload,
    }
}

fn tcp_header(s: &Seg) -> TcpHeader {
    let mut t = TcpHeader::new(s.src_port, 5201, s.seq, s.window);
    t.ack = true;
    t.acknowledgment_number = s.ack;
    t.psh = s.psh;
    t.fin = s.fin;
    t.syn = s.syn;
    t.cwr = s.cwr;
    t.ece = s.ece;
    t.set_options(&[TcpOptionElement::Noop, TcpOptionElement::Noop, TcpOptionElement::Timestamp(s.tsval, 9)]).unwrap();
    t
}

/// The frame, checksums by etherparse.
pub(super) fn frame(s: &Seg) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&DST);
    f.extend_from_slice(&SRC);
    let mut tcp = tcp_header(s);
    if s.v6 {
        f.extend_from_slice(&0x86ddu16.to_be_bytes());
        let ip = Ipv6Header {
            traffic_class: s.dscp,
            flow_label: 0x12345.try_into().unwrap(),
            payload_length: (tcp.header_len() + s.payload.len()) as u16,
            next_header: IpNumber::TCP,
            hop_limit: s.ttl,
            source: A6,
            destination: B6,
        };
        tcp.checksum = tcp.calc_checksum_ipv6(&ip, &s.payload).unwrap();
        ip.write(&mut f).unwrap();
    } else {
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = Ipv4Header::new((tcp.header_len() + s.payload.len()) as u16, s.ttl, IpNumber::TCP, A4, B4).unwrap();
        ip.identification = s.id;
        ip.dont_fragment = s.df;
        ip.dscp = (s.dscp >> 2).try_into().unwrap();
        ip.header_checksum = ip.calc_header_checksum();
        tcp.checksum = tcp.calc_checksum_ipv4(&ip, &s.payload).unwrap();
        ip.write(&mut f).unwrap();
    }
    tcp.write(&mut f).unwrap();
    f.extend_from_slice(&s.payload);
    f
}

/// Checks a frame's IP and TCP/UDP checksums with etherparse.
pub(super) fn assert_checksums_valid(f: &[u8]) {
    let p = SlicedPacket::from_ethernet(f).unwrap();
    let (v4, v6) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 header checksum");
            assert_eq!(usize::from(h.total_len), f.len() - 14, "IPv4 total length");
            (Some(h), None)
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header().to_header();
            assert_eq!(usize::from(h.payload_length), f.len() - 54, "IPv6 payload length");
            (None, Some(h))
        }
        other => panic!("not IP: {other:?}"),
    };
    match p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let want = match (&v4, &v6) {
                (Some(h), _) => t.calc_checksum_ipv4(h.source, h.destination).unwrap(),
                (_, Some(h)) => t.calc_checksum_ipv6(h.source, h.destination).unwrap(),
                _ => unreachable!(),
            };
            assert_eq!(t.checksum(), want, "TCP checksum");
        }
        Some(TransportSlice::Udp(u)) => {
            let h = u.to_header();
            let want = match (&v4, &v6) {
                (Some(ip), _) => h.calc_checksum_ipv4(ip, u.payload()).unwrap(),
                (_, Some(ip)) => h.calc_checksum_ipv6(ip, u.payload()).unwrap(),
                _ => unreachable!(),
            };
            assert_eq!(h.checksum, want, "UDP checksum");
        }
        other => panic!("no transport: {other:?}"),
    }
}

fn merge(frames: &[Vec<u8>]) -> (Vec<u8>, Vec<Output>) {
    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
    let mut out = Vec::new();
    let mut outputs = Vec::new();
    coalesce::coalesce(&refs, &mut out, &mut outputs);
    (out, outputs)
}

/// Splits one output as a reader of the TAP would.
fn split(out: &[u8], o: &Output) -> Vec<Vec<u8>> {
    let raw = &out[o.start..o.start + o.len];
    let hdr = VnetHdr::parse(raw).unwrap();
    let frame = &raw[vnet_hdr::LEN..];
    let plan = segment::plan(&hdr, frame).unwrap();
    (0..plan.count())
        .map(|k| {
            let mut buf = vec![0u8; 1514];
            let n = segment::emit(&plan, frame, k, &mut buf).unwrap();
            buf.truncate(n);
            buf
        })
        .collect()
}

pub(super) fn run(v6: bool, n: usize, mss: usize, last: usize) -> Vec<Seg> {
    let mut segs: Vec<Seg> = (0..n).map(|i| seg(v6, i, mss)).collect();
    let l = segs.last_mut().unwrap();
    l.payload.truncate(last);
    l.psh = true;
    segs
}

#[test]
fn a_run_merges_into_one_gso_write_and_splits_back_byte_for_byte() {
    for v6 in [false, true] {
        let mss = if v6 { 1428 } else { 1448 };
        let segs = run(v6, 20, mss, 300);
        let frames: Vec<Vec<u8>> = segs.iter().map(frame).collect();
        frames.iter().for_each(|f| assert_checksums_valid(f));
        let (out, outputs) = merge(&frames);
        assert_eq!(outputs.len(), 1, "v6={v6}");
        let o = outputs[0];
        assert_eq!((o.frames, o.bytes), (20, frames.iter().map(|f| f.len()).sum()));
        let hdr = VnetHdr::parse(&out[o.start..]).unwrap();
        assert_eq!(hdr.gso_type, if v6 { vnet_hdr::GSO_TCPV6 } else { vnet_hdr::GSO_TCPV4 });
        assert_eq!(hdr.flags, vnet_hdr::F_NEEDS_CSUM);
        assert_eq!(usize::from(hdr.gso_size), mss);
        let l4 = if v6 { 54 } else { 34 };
        assert_eq!((usize::from(hdr.csum_start), hdr.csum_offset, usize::from(hdr.hdr_len)), (l4, 16, l4 + 32));
        // The super-frame itself: completing its partial checksum (the
        // field holds the pseudo-header sum over its whole length) gives a
        // checksum etherparse accepts, and its IP lengths cover it.
        let super_frame = &out[o.start + vnet_hdr::LEN..o.start + o.len];
        let mut done = vec![0u8; super_frame.len()];
        segment::emit(&Plan::Csum { start: l4, offset: 16 }, super_frame, 0, &mut done).unwrap();
        assert_checksums_valid(&done);
        let back = split(&out, &o);
        assert_eq!(back.len(), 20);
        for (i, (b, f)) in back.iter().zip(&frames).enumerate() {
            assert_checksums_valid(b);
            assert_eq!(b, f, "v6={v6} segment {i}");
        }
    }
}

#[test]
fn a_single_segment_and_other_frames_go_with_a_zero_header() {
    let one = frame(&seg(false, 0, 1000));
    let arp = vec![0xffu8; 60];
    let (out, outputs) = merge(&[one.clone(), arp.clone()]);
    assert_eq!(outputs.len(), 2);
    for (o, f) in outputs.iter().zip([&one, &arp]) {
        assert_eq!(&out[o.start..o.start + vnet_hdr::LEN], &[0u8; vnet_hdr::LEN]);
        assert_eq!(&out[o.start + vnet_hdr::LEN..o.start + o.len], f.as_slice());
        assert_eq!((o.frames, o.bytes), (1, f.len()));
    }
}

/// Each change to the second of three segments must stop the run before
/// it (the first stays alone; the second may start a run with the third).
#[test]
fn every_difference_that_breaks_the_flow_stops_a_merge() {
    type Change = (&'static str, fn(&mut Seg));
    let changes: &[Change] = &[
        ("source port", |s| s.src_port += 1),
        ("IPv4 ID not +1", |s| s.id = s.id.wrapping_add(5)),
        ("sequence gap", |s| s.seq = s.seq.wrapping_add(1)),
        ("ACK number", |s| s.ack += 1),
        ("window", |s| s.window += 1),
        ("TCP options (timestamp)", |s| s.tsval += 1),
        ("TTL", |s| s.ttl -= 1),
        ("TOS", |s| s.dscp = 8),
        ("DF", |s| s.df = false),
        ("SYN", |s| s.syn = true),
        ("FIN", |s| s.fin = true),
        ("CWR", |s| s.cwr = true),
        ("ECE", |s| s.ece = true),
        ("longer payload", |s| s.payload.push(1)),
    ];
    for v6 in [false, true] {
        for (what, change) in changes {
            if v6 && (*what == "IPv4 ID not +1" || *what == "DF") {
                continue;
            }
            let mut segs = run(v6, 3, 1000, 1000);
            segs[2].psh = false;
            change(&mut segs[1]);
            let frames: Vec<Vec<u8>> = segs.iter().map(frame).collect();
            let (_, outputs) = merge(&frames);
            assert_eq!(outputs[0].frames, 1, "v6={v6}: {what} did not stop the merge");
        }
    }
}

#[test]
fn a_run_ends_after_a_short_or_pushed_segment() {
    // PSH on the first: alone.
    let mut segs = run(false, 3, 1000, 1000);
    segs[0].psh = true;
    segs[2].psh = false;
    let (_, outputs) = merge(&segs.iter().map(frame).collect::<Vec<_>>());
    assert_eq!(outputs.iter().map(|o| o.frames).collect::<Vec<_>>(), [1, 2]);
    // A short second one ends the run with it: the third starts anew.
    let mut segs = run(false, 3, 1000, 1000);
    segs[1].payload.truncate(500);
    segs[2].seq = segs[1].seq.wrapping_add(500);
    segs[2].psh = false;
    let (_, outputs) = merge(&segs.iter().map(frame).collect::<Vec<_>>());
    assert_eq!(outputs.iter().map(|o| o.frames).collect::<Vec<_>>(), [2, 1]);
}

#[test]
fn a_run_stops_at_64_kib_of_ip_packet() {
    let segs = run(false, 60, 1448, 1448);
    let frames: Vec<Vec<u8>> = segs.iter().map(frame).collect();
    let (out, outputs) = merge(&frames);
    // (65535 - 52) / 1448 = 45 segments fit.
    assert_eq!(outputs.iter().map(|o| o.frames).collect::<Vec<_>>(), [45, 15]);
    let back: Vec<Vec<u8>> = outputs.iter().flat_map(|o| split(&out, o)).collect();
    assert_eq!(back, frames);
}

#[test]
fn frames_with_ip_options_fragments_padding_or_bad_checksums_are_not_merged() {
    let base: Vec<Vec<u8>> = run(false, 2, 1000, 1000).iter().map(frame).collect();
    type Change = (&'static str, fn(&mut Vec<u8>));
    let cases: &[Change] = &[
        ("IPv4 header checksum wrong", |f| f[24] ^= 0xff),
        ("more fragments", |f| {
            f[20] |= 0x20;
            fix_ip(f)
        }),
        ("Ethernet padding", |f| f.push(0)),
        ("IPv4 options (IHL 6)", |f| {
            f[14] = 0x46;
            fix_ip(f)
        }),
        ("another destination MAC", |f| f[0] ^= 2),
        ("UDP", |f| {
            f[23] = 17;
            fix_ip(f)
        }),
    ];
    for (what, change) in cases {
        let mut frames = base.clone();
        change(&mut frames[1]);
        let (out, outputs) = merge(&frames);
        assert_eq!(outputs.len(), 2, "{what} was merged");
        // Unmerged frames go out unchanged.
        assert_eq!(&out[outputs[1].start + vnet_hdr::LEN..outputs[1].start + outputs[1].len], frames[1].as_slice(), "{what}");
    }
    // IPv6 with an extension header (next header not TCP).
    let mut frames: Vec<Vec<u8>> = run(true, 2, 1000, 1000).iter().map(frame).collect();
    frames[1][20] = 0;
    assert_eq!(merge(&frames).1.len(), 2);
}

/// A segment whose TCP checksum is wrong (a VM's frame damaged on its way)
/// is not merged: the kernel would checksum the merged frame's segments
/// afresh, so the receiver would take damaged data as good. It goes as it
/// came, for the receiver to drop. Found by the coalesce_frames fuzz target.
#[test]
fn a_segment_with_a_bad_tcp_checksum_is_not_merged_so_not_repaired() {
    for v6 in [false, true] {
        let mut frames: Vec<Vec<u8>> = run(v6, 4, 1000, 1000).iter().map(frame).collect();
        let last = frames[1].len() - 1;
        frames[1][last] ^= 0x55;
        let (out, outputs) = merge(&frames);
        assert_eq!(outputs.iter().map(|o| o.frames).collect::<Vec<_>>(), [1, 1, 2], "v6={v6}");
        assert_eq!(&out[outputs[1].start + vnet_hdr::LEN..outputs[1].start + outputs[1].len], frames[1].as_slice(), "v6={v6}: the damaged frame goes unchanged");
        let back: Vec<Vec<u8>> = split(&out, &outputs[2]);
        assert_eq!(back, frames[2..], "v6={v6}");
    }
}

fn fix_ip(f: &mut [u8]) {
    f[24] = 0;
    f[25] = 0;
    let c = super::checksum::of(&f[14..14 + usize::from(f[14] & 0xf) * 4]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// A GSO frame as the kernel hands it over: one super-frame with the
/// pseudo-header sum in the checksum field.
fn kernel_super_frame(v6: bool, mss: usize, payload: usize, flags: (bool, bool, bool)) -> (VnetHdr, Vec<u8>) {
    let mut s = seg(v6, 0, payload);
    (s.psh, s.fin, s.cwr) = flags;
    let mut f = frame(&s);
    let l4 = if v6 { 54 } else { 34 };
    let pseudo = if v6 {
        super::checksum::pseudo_v6(&A6, &B6, 6, f.len() - l4)
    } else {
        super::checksum::pseudo_v4(&A4, &B4, 6, f.len() - l4)
    };
    f[l4 + 16..l4 + 18].copy_from_slice(&super::checksum::fold(pseudo).to_be_bytes());
    let gso_type = if v6 { vnet_hdr::GSO_TCPV6 } else { vnet_hdr::GSO_TCPV4 } | if flags.2 { vnet_hdr::GSO_ECN } else { 0 };
    let hdr = VnetHdr { flags: vnet_hdr::F_NEEDS_CSUM, gso_type, hdr_len: (l4 + 32) as u16, gso_size: mss as u16, csum_start: l4 as u16, csum_offset: 16, num_buffers: 0 };
    (hdr, f)
}

#[test]
fn a_kernel_gso_frame_splits_with_fin_psh_last_and_cwr_first() {
    for v6 in [false, true] {
        let (hdr, f) = kernel_super_frame(v6, 1400, 5000, (true, true, true));
        let plan = segment::plan(&hdr, &f).unwrap();
        assert_eq!(plan.count(), 4);
        let l4 = if v6 { 54 } else { 34 };
        let mut seq = u32::from_be_bytes(f[l4 + 4..l4 + 8].try_into().unwrap());
        let mut data = Vec::new();
        for k in 0..4 {
            let mut buf = [0u8; 1514];
            let n = segment::emit(&plan, &f, k, &mut buf).unwrap();
            let s = &buf[..n];
            assert_checksums_valid(s);
            assert_eq!(u32::from_be_bytes(s[l4 + 4..l4 + 8].try_into().unwrap()), seq);
            let flags = s[l4 + 13];
            assert_eq!(flags & 0x01 != 0, k == 3, "FIN on the last only");
            assert_eq!(flags & 0x08 != 0, k == 3, "PSH on the last only");
            assert_eq!(flags & 0x80 != 0, k == 0, "CWR on the first only");
            if !v6 {
                assert_eq!(u16::from_be_bytes([s[18], s[19]]), 0x1234 + k as u16, "IPv4 ID");
            }
            seq = seq.wrapping_add((n - l4 - 32) as u32);
            data.extend_from_slice(&s[l4 + 32..]);
        }
        assert_eq!(data, f[l4 + 32..]);
    }
}

#[test]
fn a_partial_udp_checksum_is_completed() {
    for v6 in [false, true] {
        let payload = b"dns reply, odd length!!";
        let mut f = Vec::new();
        f.extend_from_slice(&DST);
        f.extend_from_slice(&SRC);
        let l4 = if v6 { 54 } else { 34 };
        let udp_len = 8 + payload.len();
        if v6 {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            Ipv6Header { traffic_class: 0, flow_label: Default::default(), payload_length: udp_len as u16, next_header: IpNumber::UDP, hop_limit: 64, source: A6, destination: B6 }.write(&mut f).unwrap();
        } else {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = Ipv4Header::new(udp_len as u16, 64, IpNumber::UDP, A4, B4).unwrap();
            ip.header_checksum = ip.calc_header_checksum();
            ip.write(&mut f).unwrap();
        }
        UdpHeader { source_port: 53, destination_port: 33000, length: udp_len as u16, checksum: 0 }.write(&mut f).unwrap();
        f.extend_from_slice(payload);
        let pseudo = if v6 { super::checksum::pseudo_v6(&A6, &B6, 17, udp_len) } else { super::checksum::pseudo_v4(&A4, &B4, 17, udp_len) };
        f[l4 + 6..l4 + 8].copy_from_slice(&super::checksum::fold(pseudo).to_be_bytes());
        let hdr = VnetHdr { flags: vnet_hdr::F_NEEDS_CSUM, csum_start: l4 as u16, csum_offset: 6, ..Default::default() };
        let plan = segment::plan(&hdr, &f).unwrap();
        assert_eq!(plan, Plan::Csum { start: l4, offset: 6 });
        let mut buf = [0u8; 1514];
        let n = segment::emit(&plan, &f, 0, &mut buf).unwrap();
        assert_eq!(n, f.len());
        assert_checksums_valid(&buf[..n]);
    }
}

#[test]
fn malformed_headers_from_the_kernel_are_refused() {
    let (good, f) = kernel_super_frame(false, 1400, 5000, (false, false, false));
    let bad = |h: VnetHdr, f: &[u8]| segment::plan(&h, f).unwrap_err();
    // GSO_UDP (3), GSO_UDP_L4 (5), and numbers no header defines.
    for t in [3, 5, 2, 0x7f] {
        assert_eq!(bad(VnetHdr { gso_type: t, ..good }, &f), Malformed::GsoType(t));
    }
    assert!(matches!(bad(VnetHdr { gso_size: 0, ..good }, &f), Malformed::Headers(_)));
    assert!(matches!(bad(VnetHdr { csum_start: f.len() as u16, ..good }, &f), Malformed::Headers(_)));
    assert!(matches!(bad(VnetHdr { csum_offset: 60000, ..good }, &f), Malformed::Headers(_)));
    assert!(matches!(bad(VnetHdr { csum_start: 40, ..good }, &f), Malformed::Headers(_)));
    // IPv6 type on an IPv4 frame, and the reverse.
    assert!(matches!(bad(VnetHdr { gso_type: vnet_hdr::GSO_TCPV6, ..good }, &f), Malformed::Headers(_)));
    // Truncated inside the TCP header; a data offset past the end.
    assert!(matches!(bad(good, &f[..40]), Malformed::Headers(_)));
    let mut short = f[..70].to_vec();
    short[34 + 12] = 0xf0;
    assert!(matches!(bad(good, &short), Malformed::Headers(_)));
    assert!(matches!(bad(VnetHdr { flags: 0, ..good }, &f[..10]), Malformed::Headers(_)));
    // A segment that does not fit the buffer is refused, not cut.
    let plan = segment::plan(&VnetHdr { gso_size: 3000, ..good }, &f).unwrap();
    let mut buf = [0u8; 1514];
    assert_eq!(segment::emit(&plan, &f, 0, &mut buf), Err(Malformed::TooBig { needed: 66 + 3000, room: 1514 }));
    // Without NEEDS_CSUM the header is still found (IPv4 IHL, IPv6 next header).
    let plan = segment::plan(&VnetHdr { flags: 0, csum_start: 0, ..good }, &f).unwrap();
    assert_eq!(plan.count(), 4);
}
