//! The service's port: one thread (`vmnet-rs-service-<network>`) that runs
//! a [`Service`] on an [`Interface`] (the same kind of port a VM gets: a TAP
//! on the Linux bridge, a vmnet interface on macOS), and forwards queries
//! for other names to the host's resolvers over UDP.
//!
//! The loop polls the interface and the upstream socket, answers what it
//! read, and every [`TICK_MS`] checks its stop flag and the forwarded
//! queries whose time ran out (they get SERVFAIL). A panic while handling
//! one frame is caught and counted as a malformed frame: the port stays up.
//! A read error of the interface itself (the network went away) ends the
//! thread, recorded in its status.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{AddressBook, BookEntry, Client, Counters, Output, Service, ServiceSetup};
use crate::vmnet::Interface;

/// How often the loop looks at its stop flag and its forwarded queries.
const TICK_MS: u64 = 100;
/// How long a forwarded query waits for the host's resolvers.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Most queries waiting for the host's resolvers at once; more get SERVFAIL.
const MAX_PENDING: usize = 1024;
/// Most frames read per batch.
const BATCH_FRAMES: usize = 32;
/// Write attempts of one batch of answers while the interface says
/// would-block, before the rest is dropped (and counted).
const WRITE_ATTEMPTS: u32 = 8;
/// Ethernet + IPv4 + UDP header bytes before a DNS answer.
const UDP_FRAME_OVERHEAD: usize = 14 + 20 + 8;

/// What `status` shows of a service port.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ServiceStatus {
    pub address: String,
    pub mac: String,
    pub domain: String,
    pub running: bool,
    /// Why the port stopped, when it did on its own.
    pub error: Option<String>,
    /// The host's resolvers other names go to (none: they get REFUSED).
    pub upstreams: Vec<String>,
    pub counters: Counters,
    pub records: Vec<BookEntry>,
    /// Answers the interface would not take.
    pub write_drops: u64,
}

/// A running service port; stopping or dropping it ends the thread and
/// the interface with it ([`ServicePort::stop`] waits for that).
pub struct ServicePort {
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<ServiceStatus>>,
    thread: Option<JoinHandle<()>>,
}

impl ServicePort {
    /// Starts the thread serving `setup` on `iface` from `book`; queries
    /// for other names go to `upstreams`.
    pub fn start<B: AddressBook + 'static>(iface: Box<dyn Interface>, setup: ServiceSetup, book: B, upstreams: Vec<SocketAddr>) -> io::Result<ServicePort> {
        let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))?;
        socket.set_nonblocking(true)?;
        let socket6 = if upstreams.iter().any(|u| u.is_ipv6()) {
            let s = UdpSocket::bind("[::]:0")?;
            s.set_nonblocking(true)?;
            Some(s)
        } else {
            None
        };
        let status = Arc::new(Mutex::new(ServiceStatus {
            address: setup.address.to_string(),
            mac: crate::config::format_mac(&setup.mac),
            domain: setup.domain.clone(),
            running: true,
            upstreams: upstreams.iter().map(|u| u.to_string()).collect(),
            ..ServiceStatus::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let name = format!("vmnet-rs-service-{}", setup.network);
        let mut lp = Loop { iface, service: Service::new(setup, book), socket, socket6, upstreams, pending: HashMap::new(), next_id: 1, status: status.clone(), write_drops: 0 };
        let stop2 = stop.clone();
        let status2 = status.clone();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let end = lp.run(&stop2);
            let _ = lp.iface.stop();
            let mut s = status2.lock().unwrap_or_else(|e| e.into_inner());
            s.running = false;
            if let Err(e) = end {
                log::warn!("service port of network {:?} stopped: {e}", lp.service.setup().network);
                s.error = Some(e.to_string());
            }
        })?;
        Ok(ServicePort { stop, status, thread: Some(thread) })
    }

    pub fn status(&self) -> ServiceStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Ends the thread (within [`TICK_MS`]) and waits for it. Idempotent.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServicePort {
    /// Tells the thread to end without waiting for it: a port dropped
    /// under the broker's state lock (its network torn down) must not wait
    /// on a thread that may be waiting for that lock to answer from the
    /// records. The thread ends within [`TICK_MS`] and closes its port.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The resolvers named in a resolv.conf-style file (`nameserver` lines,
/// port 53), less `own` (the service itself). A file that cannot be read
/// names none.
pub fn upstreams_from(path: &Path, own: Ipv4Addr) -> Vec<SocketAddr> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        .filter_map(|a| a.split('%').next().and_then(|a| a.parse::<IpAddr>().ok()))
        .filter(|a| *a != IpAddr::V4(own))
        .map(|a| SocketAddr::new(a, super::dns::PORT))
        .collect()
}

struct Pending {
    client: Client,
    id: [u8; 2],
    query: Vec<u8>,
    deadline: Instant,
}

struct Loop<B: AddressBook> {
    iface: Box<dyn Interface>,
    service: Service<B>,
    socket: UdpSocket,
    socket6: Option<UdpSocket>,
    upstreams: Vec<SocketAddr>,
    pending: HashMap<u16, Pending>,
    next_id: u16,
    status: Arc<Mutex<ServiceStatus>>,
    write_drops: u64,
}

impl<B: AddressBook> Loop<B> {
    fn run(&mut self, stop: &AtomicBool) -> io::Result<()> {
        let max = self.iface.info().max_frame_bytes.max(1514);
        let batch = self.iface.info().read_max_frames.clamp(1, BATCH_FRAMES);
        let mut storage = vec![vec![0u8; max]; batch];
        let mut lens = vec![0usize; batch];
        let mut answers: Vec<Vec<u8>> = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let mut fds = vec![libc::pollfd { fd: self.iface.readable_fd(), events: libc::POLLIN, revents: 0 }, libc::pollfd { fd: self.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
            if let Some(s6) = &self.socket6 {
                fds.push(libc::pollfd { fd: s6.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            }
            // SAFETY: fds is a valid array of pollfd of its length.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, TICK_MS as libc::c_int) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut changed = false;
            loop {
                let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|b| b.as_mut_slice()).collect();
                let n = match self.iface.read_frames(&mut bufs, &mut lens) {
                    Ok(n) => n,
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => 0,
                    Err(e) => return Err(io::Error::new(e.kind(), format!("read from the service port: {e}"))),
                };
                for i in 0..n {
                    changed = true;
                    let frame = &storage[i][..lens[i].min(max)];
                    let service = &mut self.service;
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| service.handle_frame(frame)));
                    match out {
                        Ok(Some(Output::Frame(f))) if !f.is_empty() => answers.push(f),
                        Ok(Some(Output::Forward { query, client })) => {
                            if let Some(f) = self.forward(query, client) {
                                answers.push(f);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => self.service.counters.malformed_frames += 1,
                    }
                }
                if n < batch {
                    break;
                }
            }
            changed |= self.read_upstream(&mut answers, max);
            changed |= self.expire(&mut answers);
            if !answers.is_empty() {
                self.write(&answers);
                answers.clear();
            }
            if changed {
                self.publish();
            }
        }
        Ok(())
    }

    /// Sends `query` to every upstream under a fresh id; an immediate
    /// error answer when there is none or too many wait.
    fn forward(&mut self, mut query: Vec<u8>, client: Client) -> Option<Vec<u8>> {
        if self.upstreams.is_empty() || self.pending.len() >= MAX_PENDING || query.len() < 2 {
            let none = self.upstreams.is_empty();
            return self.service.upstream_failed(client, &query, none);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        // The DNS header opens with the 16-bit query id (RFC 1035 4.1.1);
        // the message was parsed already, so it is there.
        let orig = [query[0], query[1]];
        query[..2].copy_from_slice(&id.to_be_bytes());
        let mut sent = false;
        for u in &self.upstreams {
            let s = if u.is_ipv6() { self.socket6.as_ref() } else { Some(&self.socket) };
            sent |= s.is_some_and(|s| s.send_to(&query, u).is_ok());
        }
        query[..2].copy_from_slice(&orig);
        if !sent {
            return self.service.upstream_failed(client, &query, false);
        }
        self.pending.insert(id, Pending { client, id: orig, query, deadline: Instant::now() + UPSTREAM_TIMEOUT });
        None
    }

    fn read_upstream(&mut self, answers: &mut Vec<Vec<u8>>, max_frame: usize) -> bool {
        let mut any = false;
        let mut buf = vec![0u8; 65536];
        for s in std::iter::once(&self.socket).chain(self.socket6.as_ref()) {
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                if n < 2 || !self.upstreams.contains(&from) {
                    continue;
                }
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                let Some(p) = self.pending.remove(&id) else { continue };
                any = true;
                let mut answer = buf[..n].to_vec();
                answer[..2].copy_from_slice(&p.id);
                if answer.len() + UDP_FRAME_OVERHEAD > max_frame {
                    match truncated(&answer) {
                        Some(t) => answer = t,
                        None => continue,
                    }
                }
                answers.push(self.service.upstream_answer(p.client, &answer));
            }
        }
        any
    }

    fn expire(&mut self, answers: &mut Vec<Vec<u8>>) -> bool {
        let now = Instant::now();
        let late: Vec<u16> = self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| *id).collect();
        for id in &late {
            if let Some(p) = self.pending.remove(id) {
                if let Some(f) = self.service.upstream_failed(p.client, &p.query, false) {
                    answers.push(f);
                }
            }
        }
        !late.is_empty()
    }

    fn write(&mut self, frames: &[Vec<u8>]) {
        let mut rest: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        let mut attempts = 0;
        while !rest.is_empty() && attempts < WRITE_ATTEMPTS {
            match self.iface.write_frames(&rest) {
                Ok(n) => {
                    rest.drain(..n.min(rest.len()));
                    attempts = 0;
                    if n == 0 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    attempts += 1;
                    std::thread::yield_now();
                }
                Err(_) => break,
            }
        }
        self.write_drops += rest.len() as u64;
    }

    /// The book is read before the status lock is taken: the broker's
    /// `status` holds its state lock while it takes the status lock, and
    /// the shared book takes the state lock.
    fn publish(&self) {
        let records = self.service.book().entries();
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.counters = self.service.counters().clone();
        s.records = records;
        s.write_drops = self.write_drops;
    }
}

/// An answer too large for one frame, cut to its header and question with
/// the truncation bit set, so the client asks again over TCP.
fn truncated(answer: &[u8]) -> Option<Vec<u8>> {
    let m = hickory_proto::op::Message::from_vec(answer).ok()?;
    m.truncate().to_vec().ok()
}
