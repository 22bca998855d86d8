//! The virtio-net header a TAP opened with IFF_VNET_HDR puts before every
//! frame, as `linux/virtio_net.h` defines it: `struct virtio_net_hdr` (10
//! bytes) followed by `num_buffers` (`struct virtio_net_hdr_v1`, 12 bytes;
//! the size set with TUNSETVNETHDRSZ). Fields are in the host's byte order
//! (a TAP without TUNSETVNETLE/BE uses the legacy virtio order, which is
//! the host's own), so they are read and written with `from_ne_bytes`.

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM` (linux/virtio_net.h): the checksum from
/// `csum_start` to the end is still to be computed and stored at
/// `csum_start + csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
// `VIRTIO_NET_HDR_F_DATA_VALID` (2) only says the kernel checked the
// checksum already; nothing is done with it.

/// `VIRTIO_NET_HDR_GSO_NONE` (linux/virtio_net.h).
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4` (linux/virtio_net.h).
pub const GSO_TCPV4: u8 = 1;
// `VIRTIO_NET_HDR_GSO_UDP` (3) and `VIRTIO_NET_HDR_GSO_UDP_L4` (5) come
// only with UFO/USO, never enabled here: unknown types to `segment`.
/// `VIRTIO_NET_HDR_GSO_TCPV6` (linux/virtio_net.h).
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN` (linux/virtio_net.h): the sender set ECN; the
/// first segment keeps CWR.
pub const GSO_ECN: u8 = 0x80;

/// `struct virtio_net_hdr_v1` without the union's alternatives
/// (linux/virtio_net.h): flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

/// Bytes of the header on the wire (`sizeof(struct virtio_net_hdr_v1)`).
pub const LEN: usize = 12;

// linux/virtio_net.h: two u8 then five __virtio16, no padding.
const _: () = assert!(std::mem::size_of::<VnetHdr>() == LEN);
const _: () = assert!(std::mem::offset_of!(VnetHdr, hdr_len) == 2);
const _: () = assert!(std::mem::offset_of!(VnetHdr, gso_size) == 4);
const _: () = assert!(std::mem::offset_of!(VnetHdr, csum_start) == 6);
const _: () = assert!(std::mem::offset_of!(VnetHdr, csum_offset) == 8);
const _: () = assert!(std::mem::offset_of!(VnetHdr, num_buffers) == 10);
const _: () = assert!(LEN == super::VNET_HDR_BYTES);

impl VnetHdr {
    /// The header at the start of `buf` (`None` if `buf` is shorter).
    pub fn parse(buf: &[u8]) -> Option<VnetHdr> {
        let b = buf.get(..LEN)?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr { flags: b[0], gso_type: b[1], hdr_len: u(2), gso_size: u(4), csum_start: u(6), csum_offset: u(8), num_buffers: u(10) })
    }

    /// The header's wire bytes.
    pub fn to_bytes(self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [(2, self.hdr_len), (4, self.gso_size), (6, self.csum_start), (8, self.csum_offset), (10, self.num_buffers)] {
            b[i..i + 2].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_survives_its_bytes() {
        let h = VnetHdr { flags: F_NEEDS_CSUM, gso_type: GSO_TCPV6 | GSO_ECN, hdr_len: 74, gso_size: 1440, csum_start: 54, csum_offset: 16, num_buffers: 0 };
        assert_eq!(VnetHdr::parse(&h.to_bytes()), Some(h));
        assert_eq!(VnetHdr::parse(&[0u8; 11]), None);
        assert_eq!(VnetHdr::parse(&[0u8; 12]), Some(VnetHdr::default()));
    }
}
