//! Linux TAP devices: one VM's port on a bridge.
//!
//! A [`Tap`] owns the `/dev/net/tun` fd of one TAP device (IFF_TAP |
//! IFF_NO_PI, optionally IFF_VNET_HDR), set non-blocking. It implements
//! [`Interface`] with one `read`/`write` per frame (the kernel has no batched
//! TAP call). The device lives while an fd refers to it: a TAP made here is
//! not persistent, so it disappears when the last fd closes, even if the
//! process dies.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{Error, Interface, InterfaceInfo};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// Bytes of the virtio-net header a TAP with IFF_VNET_HDR prepends
/// (`struct virtio_net_hdr_v1`, with `num_buffers`).
pub const VNET_HDR_BYTES: usize = 12;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TAP device.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    vnet_hdr: bool,
    info: InterfaceInfo,
}

impl Tap {
    /// Creates (or attaches to) the TAP device `name` (at most 15 bytes; an
    /// empty name lets the kernel pick `tapN`). Needs CAP_NET_ADMIN.
    pub fn create(name: &str, vnet_hdr: bool) -> io::Result<Tap> {
        if name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("TAP name {name:?} is longer than 15 bytes")));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TAP | IFF_NO_PI, _pad: [0; 22] };
        if vnet_hdr {
            req.flags |= IFF_VNET_HDR;
        }
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which IfReq
        // matches in size and layout (16-byte name, flags, padding to 40).
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from(file);
        Tap::from_configured_fd(fd, vnet_hdr)
    }

    /// Like [`Tap::create`], but inside the network namespace at `netns` (a
    /// path such as `/var/run/netns/NAME`, or a bare `ip netns` name). A
    /// short-lived thread enters the namespace, creates the TAP and exits;
    /// the device stays in that namespace and the calling thread never
    /// leaves its own. Needs CAP_SYS_ADMIN and CAP_NET_ADMIN.
    pub fn create_in_netns(netns: &str, name: &str, vnet_hdr: bool) -> io::Result<Tap> {
        let path = netns_path(netns);
        let name = name.to_string();
        std::thread::Builder::new()
            .name("tap-in-netns".into())
            .spawn(move || {
                enter_netns(&path)?;
                Tap::create(&name, vnet_hdr)
            })?
            .join()
            .map_err(|_| io::Error::other("the thread creating the TAP panicked"))?
    }

    /// Wraps an fd already attached to a TAP device (from `/dev/net/tun` after
    /// TUNSETIFF, e.g. one inherited from a parent). Sets it non-blocking.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Tap> {
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
        // SAFETY: TUNGETIFF fills one `struct ifreq`.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if req.flags & IFF_TAP == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "fd is a TUN device, not a TAP"));
        }
        // SAFETY: fd is a valid open descriptor we own.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        Tap::from_configured_fd(fd, req.flags & IFF_VNET_HDR != 0)
    }

    fn from_configured_fd(fd: OwnedFd, vnet_hdr: bool) -> io::Result<Tap> {
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
        // SAFETY: TUNGETIFF fills one `struct ifreq`.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel NUL-terminates ifr_name.
        let name = unsafe { CStr::from_ptr(req.name.as_ptr()) }.to_string_lossy().into_owned();
        let mtu = link_mtu(&name).unwrap_or(1500);
        let header = if vnet_hdr { VNET_HDR_BYTES } else { 0 };
        let info = InterfaceInfo {
            mac: [0; 6],
            mtu,
            max_frame_bytes: header + if vnet_hdr { 65_550 } else { mtu as usize + 14 },
            read_max_frames: 64,
            write_max_frames: 64,
            offload: vnet_hdr,
        };
        Ok(Tap { fd, name, vnet_hdr, info })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Sets the MAC the VM behind this port uses (reported in `info()`).
    pub fn set_peer_mac(&mut self, mac: [u8; 6]) {
        self.info.mac = mac;
    }

    /// Gives up the fd (for handing the TAP itself to a VM).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// A second fd on the same device (dup).
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}

/// `/var/run/netns/NAME` for a bare name; paths are kept as given.
pub fn netns_path(netns: &str) -> String {
    if netns.contains('/') {
        netns.to_string()
    } else {
        format!("/var/run/netns/{netns}")
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter_netns(path: &str) -> io::Result<()> {
    let file = std::fs::File::open(path).map_err(|e| io::Error::new(e.kind(), format!("open network namespace {path}: {e}")))?;
    // SAFETY: setns on an open namespace fd; it changes only this thread's
    // network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("enter network namespace {path}: {e}")));
    }
    Ok(())
}

/// The MTU of a link in the calling thread's network namespace
/// (SIOCGIFMTU; sysfs would show the namespace /sys was mounted in).
pub fn link_mtu(name: &str) -> Option<u32> {
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: creates a plain datagram socket used only for the ioctl below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return None;
    }
    // SAFETY: sock was just created and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads the name and writes ifru_mtu of one ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) } < 0 {
        return None;
    }
    // SAFETY: after SIOCGIFMTU the union holds ifru_mtu.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).ok()
}

impl Interface for Tap {
    fn info(&self) -> &InterfaceInfo {
        &self.info
    }

    fn readable_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn read_frames(&mut self, bufs: &mut [&mut [u8]], lens: &mut [usize]) -> io::Result<usize> {
        let mut n = 0;
        while n < bufs.len() {
            // SAFETY: bufs[n] is a valid writable buffer of its length.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), bufs[n].as_mut_ptr().cast(), bufs[n].len()) };
            if r < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::WouldBlock || n > 0 {
                    break;
                }
                return Err(err);
            }
            lens[n] = r as usize;
            n += 1;
        }
        Ok(n)
    }

    fn write_frames(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        let mut n = 0;
        for frame in frames {
            // SAFETY: frame is a valid readable buffer of its length.
            let r = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
            if r < 0 {
                let err = io::Error::last_os_error();
                if n > 0 {
                    break;
                }
                return Err(err);
            }
            n += 1;
        }
        Ok(n)
    }

    fn stop(&mut self) -> Result<(), Error> {
        // The device goes away when its last fd closes (on drop).
        Ok(())
    }
}
