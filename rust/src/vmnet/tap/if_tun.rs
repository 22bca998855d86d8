//! The kernel ABI of TUN/TAP devices, in one place: the ioctl numbers and
//! flags of `linux/if_tun.h` and the `struct ifreq` of `net/if.h` as the
//! TUN ioctls read it. No other file spells an ioctl number.
//!
//! The values are `libc`'s (which takes them from the same headers); the
//! numbers are repeated below as the headers define them (`_IOW('T', 202,
//! int)` and so on, 'T' = 0x54) and checked at compile time, so a change on
//! either side fails the build instead of sending the kernel a wrong request.
//! [`IfReq`] is the `ifreq` prefix the TUN ioctls use (name, then the
//! `ifru_flags` member of the union), padded to the full size; its size and
//! offsets are asserted against `libc::ifreq`.

/// `TUNSETIFF`, `_IOW('T', 202, int)` (linux/if_tun.h): attach the fd to a
/// device, creating it if needed.
pub const TUNSETIFF: libc::Ioctl = libc::TUNSETIFF;
/// `TUNGETIFF`, `_IOR('T', 210, unsigned int)` (linux/if_tun.h): the name
/// and flags of the device the fd is attached to.
pub const TUNGETIFF: libc::Ioctl = libc::TUNGETIFF;
/// `TUNSETVNETHDRSZ`, `_IOW('T', 216, int)` (linux/if_tun.h): the size of
/// the virtio-net header the device prepends.
pub const TUNSETVNETHDRSZ: libc::Ioctl = libc::TUNSETVNETHDRSZ;
/// `TUNGETVNETHDRSZ`, `_IOR('T', 215, int)` (linux/if_tun.h): the size of
/// the virtio-net header the device prepends now.
pub const TUNGETVNETHDRSZ: libc::Ioctl = libc::TUNGETVNETHDRSZ;
/// `TUNSETOFFLOAD`, `_IOW('T', 208, unsigned int)` (linux/if_tun.h): the
/// offloads the reader of the fd handles (what the kernel may hand it).
pub const TUNSETOFFLOAD: libc::Ioctl = libc::TUNSETOFFLOAD;

/// `TUN_F_CSUM` (linux/if_tun.h): the reader completes partial checksums.
pub const TUN_F_CSUM: libc::c_uint = libc::TUN_F_CSUM;
/// `TUN_F_TSO4` (linux/if_tun.h): the reader segments TCP over IPv4.
pub const TUN_F_TSO4: libc::c_uint = libc::TUN_F_TSO4;
/// `TUN_F_TSO6` (linux/if_tun.h): the reader segments TCP over IPv6.
pub const TUN_F_TSO6: libc::c_uint = libc::TUN_F_TSO6;

/// `IFF_TAP` (linux/if_tun.h): an Ethernet (TAP) device, not an IP (TUN) one.
pub const IFF_TAP: libc::c_short = libc::IFF_TAP as libc::c_short;
/// `IFF_NO_PI` (linux/if_tun.h): no 4-byte packet-information prefix.
pub const IFF_NO_PI: libc::c_short = libc::IFF_NO_PI as libc::c_short;
/// `IFF_VNET_HDR` (linux/if_tun.h): frames carry a virtio-net header.
pub const IFF_VNET_HDR: libc::c_short = libc::IFF_VNET_HDR as libc::c_short;

// The numbers as linux/if_tun.h spells them: _IOW = dir 1 (write) << 30,
// _IOR = dir 2 (read) << 30; size of int (4) << 16; type 'T' << 8; nr.
const _: () = assert!(TUNSETIFF as u32 == 0x4004_54ca);
const _: () = assert!(TUNGETIFF as u32 == 0x8004_54d2);
const _: () = assert!(TUNSETVNETHDRSZ as u32 == 0x4004_54d8);
const _: () = assert!(TUNGETVNETHDRSZ as u32 == 0x8004_54d7);
const _: () = assert!(TUNSETOFFLOAD as u32 == 0x4004_54d0);
const _: () = assert!(TUN_F_CSUM == 0x01 && TUN_F_TSO4 == 0x02 && TUN_F_TSO6 == 0x04);
const _: () = assert!(IFF_TAP == 0x0002 && IFF_NO_PI == 0x1000 && IFF_VNET_HDR == 0x4000);

/// The part of `struct ifreq` (net/if.h) the TUN ioctls read and write:
/// `ifr_name`, then `ifr_flags` at the start of the union, padded to the
/// whole struct (the kernel copies `sizeof(struct ifreq)` bytes).
#[repr(C)]
pub struct IfReq {
    pub name: [libc::c_char; libc::IFNAMSIZ],
    pub flags: libc::c_short,
    _pad: [u8; IFREQ_BYTES - libc::IFNAMSIZ - 2],
}

/// `sizeof(struct ifreq)` on 64-bit Linux: a 16-byte name and a 24-byte union.
const IFREQ_BYTES: usize = 40;

const _: () = assert!(std::mem::size_of::<IfReq>() == IFREQ_BYTES);
const _: () = assert!(std::mem::size_of::<libc::ifreq>() == IFREQ_BYTES);
const _: () = assert!(std::mem::offset_of!(IfReq, name) == std::mem::offset_of!(libc::ifreq, ifr_name));
const _: () = assert!(std::mem::offset_of!(IfReq, flags) == std::mem::offset_of!(libc::ifreq, ifr_ifru));
const _: () = assert!(std::mem::align_of::<IfReq>() <= std::mem::align_of::<libc::ifreq>());

impl IfReq {
    /// A request for the device `name` (truncated to 15 bytes, NUL-padded)
    /// with `flags`.
    pub fn new(name: &str, flags: libc::c_short) -> IfReq {
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags, _pad: [0; IFREQ_BYTES - libc::IFNAMSIZ - 2] };
        for (dst, src) in req.name.iter_mut().take(libc::IFNAMSIZ - 1).zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_keeps_the_name_nul_terminated() {
        let req = IfReq::new("a-name-longer-than-fifteen", IFF_TAP);
        assert_eq!(req.name[libc::IFNAMSIZ - 1], 0);
        assert_eq!(req.name[0] as u8, b'a');
        assert_eq!(req.flags, IFF_TAP);
    }
}
