//! A test-double network: an in-process hub whose ports are
//! SOCK_SEQPACKET socketpairs, for testing the broker without privileges
//! and without a platform backend.
//!
//! Each [`HubNetwork`] runs one thread (`vmnet-rs-hub-NAME`) that polls the
//! hub ends of its ports and copies every frame to every other port (a hub,
//! not a switch: tests have few ports). A port is one [`Interface`]; when
//! the interface is dropped its socket closes and the hub forgets the port.
//! [`kill`] marks every hub of a name dead (`is_alive()` false), as if the
//! bridge had been deleted under the broker. Selected with the broker's
//! `hub` backend (`vmnet-rs broker --backend hub`, a hidden test option).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::config::NetworkConfig;
use crate::vmnet::{seqpacket_pair, Error, SeqpacketPort, Interface, InterfaceDesc, InterfaceInfo, Network, NetworkState};
use crate::xpc::{Dict, Value};

/// Largest frame a hub port carries.
const HUB_FRAME_BYTES: usize = 65_550;

struct HubInner {
    name: String,
    alive: AtomicBool,
    /// Dies when the next interface starts ([`kill_at_next_start`]).
    dies_at_start: AtomicBool,
    stopping: AtomicBool,
    /// Hub ends of the ports, by port id.
    ports: Mutex<HashMap<u64, OwnedFd>>,
    next_port: AtomicU64,
    wake: OwnedFd,
    frames_forwarded: AtomicU64,
}

/// An in-process hub network.
pub struct HubNetwork {
    config: NetworkConfig,
    state: NetworkState,
    inner: Arc<HubInner>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn registry() -> &'static Mutex<Vec<std::sync::Weak<HubInner>>> {
    static R: OnceLock<Mutex<Vec<std::sync::Weak<HubInner>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Vec::new()))
}

/// Marks every live hub named `name` dead; returns how many.
pub fn kill(name: &str) -> usize {
    let mut n = 0;
    let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
    reg.retain(|w| w.strong_count() > 0);
    for hub in reg.iter().filter_map(|w| w.upgrade()) {
        if hub.name == name {
            hub.alive.store(false, Ordering::SeqCst);
            n += 1;
        }
    }
    n
}

/// Makes every live hub named `name` die when its next interface starts
/// (alive until then, as a vmnet network whose host interface went before
/// anyone looked); returns how many.
pub fn kill_at_next_start(name: &str) -> usize {
    let mut n = 0;
    let reg = registry().lock().unwrap_or_else(|e| e.into_inner());
    for hub in reg.iter().filter_map(|w| w.upgrade()) {
        if hub.name == name {
            hub.dies_at_start.store(true, Ordering::SeqCst);
            n += 1;
        }
    }
    n
}

/// Names whose hubs are created already dying at their first start.
fn dying_names() -> &'static Mutex<Vec<String>> {
    static D: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    D.get_or_init(|| Mutex::new(Vec::new()))
}

/// While `on`, hubs created under `name` die at their first interface start.
pub fn kill_new_at_first_start(name: &str, on: bool) {
    let mut d = dying_names().lock().unwrap_or_else(|e| e.into_inner());
    d.retain(|n| n != name);
    if on {
        d.push(name.to_owned());
    }
}

impl HubNetwork {
    pub fn create(name: &str, config: &NetworkConfig) -> Result<HubNetwork, Error> {
        // SAFETY: eventfd(2) with valid flags; checked below.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(Error::io("create the hub's eventfd", io::Error::last_os_error()));
        }
        let inner = Arc::new(HubInner {
            name: name.to_owned(),
            alive: AtomicBool::new(true),
            dies_at_start: AtomicBool::new(dying_names().lock().unwrap_or_else(|e| e.into_inner()).iter().any(|n| n == name)),
            stopping: AtomicBool::new(false),
            ports: Mutex::new(HashMap::new()),
            next_port: AtomicU64::new(1),
            // SAFETY: eventfd returned a new fd nothing else owns.
            wake: unsafe { OwnedFd::from_raw_fd(wake) },
            frames_forwarded: AtomicU64::new(0),
        });
        registry().lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&inner));
        let thread = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name(format!("vmnet-rs-hub-{name}"))
                .spawn(move || run_hub(&inner))
                .map_err(|e| Error::io("start the hub thread", e))?
        };
        let state = NetworkState {
            subnet: config.subnet().map_or_else(|| "10.99.0.1/24".into(), |s| s.to_string()),
            ipv6_prefix: config.ipv6_prefix().map(|p| p.to_string()),
            device: format!("hub-{name}"),
        };
        Ok(HubNetwork { config: config.clone(), state, inner, thread: Some(thread) })
    }

    /// Frames the hub has copied (each copy to each port counts once).
    pub fn frames_forwarded(&self) -> u64 {
        self.inner.frames_forwarded.load(Ordering::Relaxed)
    }

    pub fn port_count(&self) -> usize {
        self.inner.ports.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes to our eventfd.
        unsafe { libc::write(self.inner.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

impl Drop for HubNetwork {
    fn drop(&mut self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.inner.ports.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

fn run_hub(inner: &HubInner) {
    let mut buf = vec![0u8; HUB_FRAME_BYTES];
    while !inner.stopping.load(Ordering::SeqCst) {
        let ports: Vec<(u64, RawFd)> =
            inner.ports.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(&id, fd)| (id, fd.as_raw_fd())).collect();
        let mut pfds: Vec<libc::pollfd> = ports.iter().map(|&(_, fd)| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
        pfds.push(libc::pollfd { fd: inner.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        // SAFETY: pfds is a valid array of pollfds of its length.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 1000) };
        if r <= 0 {
            continue;
        }
        let wake = pfds.last().map(|p| p.revents != 0).unwrap_or(false);
        if wake {
            let mut v = 0u64;
            // SAFETY: reads 8 bytes into v.
            unsafe { libc::read(inner.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        }
        // Forward to the ports as they are now: one added while we slept
        // (its wake-up and a frame arriving together) must get that frame.
        let targets: Vec<(u64, RawFd)> =
            inner.ports.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(&id, fd)| (id, fd.as_raw_fd())).collect();
        let mut gone = Vec::new();
        for (i, &(id, fd)) in ports.iter().enumerate() {
            if pfds[i].revents == 0 {
                continue;
            }
            loop {
                // SAFETY: reads into buf, within its length.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
                if n == 0 {
                    gone.push(id);
                    break;
                }
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::WouldBlock {
                        gone.push(id);
                    }
                    break;
                }
                for &(other, ofd) in &targets {
                    if other != id {
                        // SAFETY: sends n bytes of buf; a full peer drops the frame.
                        if unsafe { libc::send(ofd, buf.as_ptr().cast(), n as usize, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) } > 0 {
                            inner.frames_forwarded.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        if !gone.is_empty() {
            let mut map = inner.ports.lock().unwrap_or_else(|e| e.into_inner());
            for id in gone {
                map.remove(&id);
            }
        }
    }
}

impl Network for HubNetwork {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn config(&self) -> &NetworkConfig {
        &self.config
    }

    fn state(&self) -> NetworkState {
        self.state.clone()
    }

    fn serialization(&self) -> Result<Dict, Error> {
        Ok(Dict::new()
            .with("backend", Value::String("hub".into()))
            .with("network", Value::String(self.inner.name.clone()))
            .with("subnet", Value::String(self.state.subnet.clone())))
    }

    fn start_interface(&self, desc: &InterfaceDesc) -> Result<Box<dyn Interface>, Error> {
        if self.inner.dies_at_start.swap(false, Ordering::SeqCst) {
            self.inner.alive.store(false, Ordering::SeqCst);
        }
        if !self.is_alive() {
            return Err(Error::Platform { op: "start interface".into(), source: format!("hub {} is gone", self.inner.name).into() });
        }
        let (port, hub) = seqpacket_pair(true).map_err(|e| Error::io("make a hub port", e))?;
        let id = self.inner.next_port.fetch_add(1, Ordering::Relaxed);
        self.inner.ports.lock().unwrap_or_else(|e| e.into_inner()).insert(id, hub);
        self.wake();
        let mtu = self.config.mtu();
        let info = InterfaceInfo {
            mac: desc.mac.unwrap_or([0x02, 0x00, 0x00, 0x00, (id >> 8) as u8, id as u8]),
            mtu,
            max_frame_bytes: if desc.offload { HUB_FRAME_BYTES } else { mtu as usize + 14 },
            read_max_frames: 32,
            write_max_frames: 32,
            offload: desc.offload,
        };
        // A port is the interface side of the socketpair.
        Ok(Box::new(SeqpacketPort::new(port, info)))
    }

    fn is_alive(&self) -> bool {
        self.inner.alive.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::netconfig::builtin_networks;

    #[test]
    fn frames_meet_between_ports_and_closed_ports_go() {
        let hub = HubNetwork::create("t-meet", &builtin_networks()["shared"]).unwrap();
        let mut a = hub.start_interface(&InterfaceDesc::default()).unwrap();
        let mut b = hub.start_interface(&InterfaceDesc::default()).unwrap();
        assert_eq!(a.write_frames(&[b"hello-frame"]).unwrap(), 1);
        let mut buf = vec![0u8; 2000];
        let mut lens = [0usize; 1];
        let patience = std::time::Duration::from_secs(10);
        crate::test_support::wait_until("the frame arrives", patience, || {
            let mut bufs = [&mut buf[..]];
            b.read_frames(&mut bufs, &mut lens).unwrap() == 1
        });
        assert_eq!(&buf[..lens[0]], b"hello-frame");
        drop(a);
        crate::test_support::wait_until("the closed port is removed", patience, || hub.port_count() == 1);
        assert!(hub.is_alive());
        assert_eq!(kill("t-meet"), 1);
        assert!(!hub.is_alive());
    }
}
