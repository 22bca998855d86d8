//! The benchmark's native parts (`vmnet-rs bench` drives them from Python):
//! frame generators and sinks on VM sockets or TAP fds, and the per-frame
//! relay used as a baseline (one read and one write per frame, two blocking
//! threads, the design of socket_vmnet).
//!
//! Threads: [`run_flows`] starts one generator and one sink thread per flow
//! and joins them; [`PerFrameRelay`] runs one thread per direction. Nothing
//! here holds the GIL or any lock while moving frames.
//!
//! Frames: `dst MAC, src MAC, EtherType 0x88B5 (local experimental), u64
//! sequence number, pattern`. Sinks count only frames of that EtherType, so
//! whatever else the kernel emits on the bridge is ignored.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::socket;
use super::framing::{self, HEADER_BYTES};

/// EtherType of benchmark frames (IEEE local experimental 1).
pub const ETHERTYPE: u16 = 0x88B5;
/// Frames per generator or sink call where the framing allows batching.
const BENCH_BATCH: usize = 64;
/// How long an idle generator or sink sleeps in poll before re-checking its flag.
const POLL_SLICE_MS: libc::c_int = 20;
/// After the window closes, sinks keep counting until this long passes
/// without a frame (in-flight frames are then not counted as lost). 150 ms
/// proved too short on a loaded 2-core machine, where a sink thread can go
/// unscheduled that long and frames still in a socket were counted as lost.
const DRAIN_QUIET: Duration = Duration::from_millis(500);
const DRAIN_MAX: Duration = Duration::from_secs(2);
/// Most frames a generator keeps in flight (sent, not yet counted by its
/// sink). Without a cap a generator outruns the path and burns the CPU the
/// path needs on frames that are then dropped at the TAP queue (500). 256
/// keeps every stage busy (one batch in each of the queues on the way).
const WINDOW_FRAMES: u64 = 256;
/// A generator waits for its window at most this long without the sink
/// making progress, then writes the missing frames off as lost and sends
/// on. Long enough that a sink merely descheduled on a busy machine (a few
/// ms) is not mistaken for loss, which would let the generator overrun the
/// TAP queue.
const WINDOW_STALL: Duration = Duration::from_millis(50);

/// Holds a generator to [`WINDOW_FRAMES`] in flight.
struct Window<'a> {
    delivered: &'a AtomicU64,
    stop: &'a AtomicBool,
    /// Frames written off as lost: after a stall they would otherwise
    /// count as in flight for ever and throttle the generator.
    lost: std::cell::Cell<u64>,
}

impl Window<'_> {
    fn in_flight(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.delivered.load(Ordering::Relaxed)).saturating_sub(self.lost.get())
    }

    fn wait(&self, sent: u64) {
        let mut seen = self.delivered.load(Ordering::Relaxed);
        let mut since = Instant::now();
        while self.in_flight(sent) >= WINDOW_FRAMES && !self.stop.load(Ordering::Relaxed) {
            let now = self.delivered.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                since = Instant::now();
            } else if since.elapsed() >= WINDOW_STALL {
                // Nothing arrived for a while: what is still out is lost.
                self.lost.set(sent.saturating_sub(now));
                return;
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}

/// How frames travel on an endpoint's fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// One frame per datagram (AF_UNIX SOCK_DGRAM).
    Datagram,
    /// 4-byte big-endian length, then the frame (AF_UNIX SOCK_STREAM).
    Stream,
    /// A TAP device fd: one frame per read/write.
    Tap,
}

impl Framing {
    pub fn parse(s: &str) -> Option<Framing> {
        match s {
            "datagram" => Some(Framing::Datagram),
            "stream" => Some(Framing::Stream),
            "tap" => Some(Framing::Tap),
            _ => None,
        }
    }
}

/// One generator -> sink flow.
pub struct Flow {
    pub source: OwnedFd,
    pub source_framing: Framing,
    pub sink: OwnedFd,
    pub sink_framing: Framing,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

/// What one flow did.
#[derive(Clone, Debug, Default)]
pub struct FlowResult {
    pub sent: u64,
    /// Frames received while the window was open.
    pub received_in_window: u64,
    pub bytes_in_window: u64,
    /// Frames received in total (window plus drain).
    pub received: u64,
    /// Frames whose sequence number went backwards (reordering).
    pub reordered: u64,
    /// Thread CPU time while the window was open.
    pub generator_cpu_s: f64,
    pub sink_cpu_s: f64,
}

/// Results of one [`run_flows`] call.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    pub flows: Vec<FlowResult>,
    pub window_s: f64,
    /// CPU time of the whole process (user + system) while the window was
    /// open: the relays, generators and sinks, and the kernel work done on
    /// their behalf (softirq work may land on any of them).
    pub process_cpu_s: f64,
}

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn process_cpu() -> f64 {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn wait_fd(fd: RawFd, events: libc::c_short) {
    let mut p = [libc::pollfd { fd, events, revents: 0 }];
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(p.as_mut_ptr(), 1, POLL_SLICE_MS) };
}

fn template(frame_bytes: usize, src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
    let mut f: Vec<u8> = (0..frame_bytes).map(|i| (i * 13) as u8).collect();
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    f
}

fn is_ours(frame: &[u8]) -> bool {
    frame.len() >= 22 && frame[12..14] == ETHERTYPE.to_be_bytes()
}

fn seq_of(frame: &[u8]) -> u64 {
    u64::from_be_bytes(frame[14..22].try_into().unwrap_or([0; 8]))
}

/// Sends frames until `stop`; returns how many the fd accepted.
fn generate(fd: RawFd, framing: Framing, frame_bytes: usize, src: [u8; 6], dst: [u8; 6], stop: &AtomicBool, window: &Window<'_>) -> u64 {
    let base = template(frame_bytes, src, dst);
    let mut seq = 0u64;
    match framing {
        Framing::Tap => {
            let mut f = base;
            while !stop.load(Ordering::Relaxed) {
                if seq.is_multiple_of(16) {
                    window.wait(seq);
                }
                f[14..22].copy_from_slice(&seq.to_be_bytes());
                // SAFETY: f is a valid buffer of its length.
                let r = unsafe { libc::write(fd, f.as_ptr().cast(), f.len()) };
                if r < 0 {
                    wait_fd(fd, libc::POLLOUT);
                } else {
                    seq += 1;
                }
            }
        }
        Framing::Datagram => {
            let mut frames: Vec<Vec<u8>> = vec![base; BENCH_BATCH];
            // The send limit, read once as the adaptor reads its own.
            let send_limit = super::socket::get_int_option(fd, libc::SO_SNDBUF).unwrap_or(usize::MAX);
            let mut queued = 0usize; // frames[..queued] hold unsent sequence numbers
            while !stop.load(Ordering::Relaxed) {
                window.wait(seq);
                for (i, f) in frames.iter_mut().enumerate().skip(queued) {
                    f[14..22].copy_from_slice(&(seq + i as u64).to_be_bytes());
                }
                queued = BENCH_BATCH;
                let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
                match super::batch_io::send_batch(fd, &refs, send_limit) {
                    Ok(n) => {
                        seq += n as u64;
                        frames.rotate_left(n);
                        queued -= n;
                    }
                    Err(_) => wait_fd(fd, libc::POLLOUT),
                }
            }
        }
        Framing::Stream => {
            let one = HEADER_BYTES + frame_bytes;
            let mut buf = Vec::with_capacity(one * BENCH_BATCH);
            for _ in 0..BENCH_BATCH {
                framing::push_frame(&mut buf, &base);
            }
            let mut offset = 0usize; // bytes of buf already written
            let mut batch_seq = seq;
            while !stop.load(Ordering::Relaxed) {
                if offset == 0 {
                    window.wait(seq);
                    for i in 0..BENCH_BATCH {
                        let at = i * one + HEADER_BYTES + 14;
                        buf[at..at + 8].copy_from_slice(&(batch_seq + i as u64).to_be_bytes());
                    }
                }
                // SAFETY: writes from the unwritten tail of buf.
                let r = unsafe { libc::send(fd, buf[offset..].as_ptr().cast(), buf.len() - offset, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
                if r < 0 {
                    wait_fd(fd, libc::POLLOUT);
                    continue;
                }
                offset += r as usize;
                seq = batch_seq + (offset / one) as u64;
                if offset == buf.len() {
                    offset = 0;
                    batch_seq += BENCH_BATCH as u64;
                }
            }
            // A frame cut off by the stop is never complete: not counted as sent.
        }
    }
    seq
}

struct SinkCount {
    /// Thread CPU time when the window closed.
    cpu_at_close: f64,
    in_window: u64,
    bytes_in_window: u64,
    total: u64,
    reordered: u64,
}

/// Counts frames until `window_closed`, then drains until quiet.
fn sink(fd: RawFd, framing: Framing, window_closed: &AtomicBool, delivered: &AtomicU64) -> SinkCount {
    let mut count = SinkCount { cpu_at_close: 0.0, in_window: 0, bytes_in_window: 0, total: 0, reordered: 0 };
    let mut last_seq: Option<u64> = None;
    let mut closed_at: Option<Instant> = None;
    let mut last_frame = Instant::now();
    let mut note = |f: &[u8], count: &mut SinkCount, in_window: bool| {
        if !is_ours(f) {
            return;
        }
        let s = seq_of(f);
        if let Some(prev) = last_seq {
            if s <= prev {
                count.reordered += 1;
            }
        }
        last_seq = Some(s);
        count.total += 1;
        if in_window {
            count.in_window += 1;
            count.bytes_in_window += f.len() as u64;
        }
    };
    let mut bufs: Vec<Vec<u8>> = vec![vec![0u8; 65_550]; BENCH_BATCH];
    let mut lens = vec![0usize; BENCH_BATCH];
    let mut trunc = vec![false; BENCH_BATCH];
    let mut stream_buf = vec![0u8; 1 << 20];
    let (mut start, mut end) = (0usize, 0usize);
    loop {
        let in_window = closed_at.is_none();
        if in_window && window_closed.load(Ordering::Relaxed) {
            closed_at = Some(Instant::now());
            count.cpu_at_close = thread_cpu();
            continue;
        }
        if let Some(t) = closed_at {
            if last_frame.elapsed() >= DRAIN_QUIET || t.elapsed() >= DRAIN_MAX {
                break;
            }
        }
        let got = match framing {
            Framing::Tap => {
                // SAFETY: bufs[0] is a valid writable buffer.
                let r = unsafe { libc::read(fd, bufs[0].as_mut_ptr().cast(), bufs[0].len()) };
                if r > 0 {
                    note(&bufs[0][..r as usize], &mut count, in_window);
                    true
                } else {
                    false
                }
            }
            Framing::Datagram => match super::batch_io::recv_batch(fd, &mut bufs, &mut lens, &mut trunc) {
                Ok(n) => {
                    for i in 0..n {
                        note(&bufs[i][..lens[i]], &mut count, in_window);
                    }
                    n > 0
                }
                Err(_) => false,
            },
            Framing::Stream => {
                if start > 0 {
                    stream_buf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                }
                // SAFETY: reads into the unused tail of stream_buf.
                let r = unsafe { libc::read(fd, stream_buf[end..].as_mut_ptr().cast(), stream_buf.len() - end) };
                if r > 0 {
                    end += r as usize;
                    while end - start >= HEADER_BYTES {
                        let len = framing::frame_len(&stream_buf[start..]);
                        if end - start < HEADER_BYTES + len {
                            break;
                        }
                        let f = &stream_buf[start + HEADER_BYTES..start + HEADER_BYTES + len];
                        note(f, &mut count, in_window);
                        start += HEADER_BYTES + len;
                    }
                    true
                } else {
                    if r == 0 {
                        break;
                    }
                    false
                }
            }
        };
        if got {
            last_frame = Instant::now();
            delivered.store(count.total, Ordering::Relaxed);
        } else {
            wait_fd(fd, libc::POLLIN);
        }
    }
    count
}

/// Runs all flows at once for `window`: generators send as fast as their
/// fds accept, sinks count what arrives. Sinks then drain in-flight frames
/// so that `sent - received` is loss, not frames still on the way.
pub fn run_flows(flows: Vec<Flow>, frame_bytes: usize, window: Duration) -> io::Result<RunResult> {
    if frame_bytes < 64 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("frame size {frame_bytes} is below 64 bytes")));
    }
    for f in &flows {
        socket::set_nonblocking(&f.source)?;
        socket::set_nonblocking(&f.sink)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(2 * flows.len() + 1));
    let mut gens: Vec<JoinHandle<(u64, f64)>> = Vec::new();
    let mut sinks: Vec<JoinHandle<(SinkCount, f64)>> = Vec::new();
    for flow in flows {
        let Flow { source, source_framing, sink: sink_fd, sink_framing, src_mac, dst_mac } = flow;
        let delivered = Arc::new(AtomicU64::new(0));
        let (stop_g, barrier_g, delivered_g) = (Arc::clone(&stop), Arc::clone(&barrier), Arc::clone(&delivered));
        gens.push(std::thread::Builder::new().name("bench-gen".into()).spawn(move || {
            barrier_g.wait();
            let c0 = thread_cpu();
            let window = Window { delivered: &delivered_g, stop: &stop_g, lost: std::cell::Cell::new(0) };
            let sent = generate(source.as_raw_fd(), source_framing, frame_bytes, src_mac, dst_mac, &stop_g, &window);
            (sent, thread_cpu() - c0)
        })?);
        let (stop_s, barrier_s) = (Arc::clone(&stop), Arc::clone(&barrier));
        sinks.push(std::thread::Builder::new().name("bench-sink".into()).spawn(move || {
            barrier_s.wait();
            let c0 = thread_cpu();
            let count = sink(sink_fd.as_raw_fd(), sink_framing, &stop_s, &delivered);
            let cpu = count.cpu_at_close - c0;
            (count, cpu)
        })?);
    }
    let cpu0 = process_cpu();
    barrier.wait();
    let t0 = Instant::now();
    std::thread::sleep(window);
    stop.store(true, Ordering::Relaxed);
    let window_s = t0.elapsed().as_secs_f64();
    let process_cpu_s = process_cpu() - cpu0;
    let mut results = Vec::new();
    for (g, s) in gens.into_iter().zip(sinks) {
        let (sent, gcpu) = g.join().map_err(|_| io::Error::other("a generator thread panicked"))?;
        let (count, scpu) = s.join().map_err(|_| io::Error::other("a sink thread panicked"))?;
        results.push(FlowResult {
            sent,
            received_in_window: count.in_window,
            bytes_in_window: count.bytes_in_window,
            received: count.total,
            reordered: count.reordered,
            generator_cpu_s: gcpu,
            sink_cpu_s: scpu,
        });
    }
    Ok(RunResult { flows: results, window_s, process_cpu_s })
}

/// Frames moved by a [`PerFrameRelay`], per direction.
#[derive(Debug, Default)]
pub struct PerFrameCounters {
    pub vm_to_host: AtomicU64,
    pub host_to_vm: AtomicU64,
}

/// The baseline relay: a datagram socketpair joined to a TAP by two
/// threads, each doing one read and one write per frame, blocking on a full
/// destination (as socket_vmnet does). Stopped by a flag checked between
/// frames and after each short poll.
pub struct PerFrameRelay {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub counters: Arc<PerFrameCounters>,
}

fn copy_loop(from: &OwnedFd, to: &OwnedFd, stop: &AtomicBool, count: &AtomicU64) {
    let mut buf = vec![0u8; 65_550];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: buf is a valid writable buffer.
        let r = unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if r <= 0 {
            wait_fd(from.as_raw_fd(), libc::POLLIN);
            continue;
        }
        loop {
            // SAFETY: writes r bytes of buf.
            let w = unsafe { libc::write(to.as_raw_fd(), buf.as_ptr().cast(), r as usize) };
            if w >= 0 {
                count.fetch_add(1, Ordering::Relaxed);
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock && e.raw_os_error() != Some(libc::ENOBUFS) {
                break; // a frame the destination refuses: dropped
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            wait_fd(to.as_raw_fd(), libc::POLLOUT);
        }
    }
}

impl PerFrameRelay {
    /// Starts on `tap` (a TAP fd) and returns the relay and the VM end.
    pub fn start(tap: OwnedFd) -> io::Result<(PerFrameRelay, OwnedFd)> {
        let (ours, theirs) = socket::socketpair(super::Kind::Datagram)?;
        for fd in [&ours, &theirs] {
            socket::set_buffers(fd, socket::DEFAULT_SEND_BUFFER_BYTES, socket::DEFAULT_RECV_BUFFER_BYTES)?;
        }
        socket::set_nonblocking(&ours)?;
        socket::set_nonblocking(&tap)?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(PerFrameCounters::default());
        let (sock, tap) = (Arc::new(ours), Arc::new(tap));
        let mut threads = Vec::new();
        {
            let (sock, tap, stop, c) = (Arc::clone(&sock), Arc::clone(&tap), Arc::clone(&stop), Arc::clone(&counters));
            threads.push(std::thread::Builder::new().name("per-frame-v2h".into()).spawn(move || copy_loop(&sock, &tap, &stop, &c.vm_to_host))?);
        }
        {
            let (sock, tap, stop, c) = (Arc::clone(&sock), Arc::clone(&tap), Arc::clone(&stop), Arc::clone(&counters));
            threads.push(std::thread::Builder::new().name("per-frame-h2v".into()).spawn(move || copy_loop(&tap, &sock, &stop, &c.host_to_vm))?);
        }
        Ok((PerFrameRelay { stop, threads, counters }, theirs))
    }

    /// Stops both threads and closes the socket and the TAP. Idempotent.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for PerFrameRelay {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adaptor::Kind;

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    #[test]
    fn generators_and_sinks_count_every_frame_on_a_socketpair() {
        for (kind, framing) in [(Kind::Datagram, Framing::Datagram), (Kind::Stream, Framing::Stream)] {
            for size in [64, 1514] {
                let (tx, rx) = socket::socketpair(kind).unwrap();
                let flow = Flow { source: tx, source_framing: framing, sink: rx, sink_framing: framing, src_mac: MAC_A, dst_mac: MAC_B };
                let r = run_flows(vec![flow], size, Duration::from_millis(200)).unwrap();
                let f = &r.flows[0];
                assert!(f.sent > 0, "{framing:?}");
                assert_eq!(f.received, f.sent, "{framing:?} {size}: a socketpair loses nothing: {f:?}");
                assert_eq!(f.reordered, 0);
                assert!(f.received_in_window <= f.received);
                assert_eq!(f.bytes_in_window, f.received_in_window * size as u64);
                assert!(r.process_cpu_s > 0.0);
            }
        }
    }

    #[test]
    fn the_per_frame_relay_moves_frames_to_its_tap_side() {
        // A seqpacket pair stands in for the TAP: one frame per read/write.
        let (tap, net) = crate::vmnet::seqpacket_pair(false).unwrap();
        let (mut relay, vm) = PerFrameRelay::start(tap).unwrap();
        let flow = Flow { source: vm, source_framing: Framing::Datagram, sink: net, sink_framing: Framing::Tap, src_mac: MAC_A, dst_mac: MAC_B };
        let r = run_flows(vec![flow], 64, Duration::from_millis(200)).unwrap();
        let f = &r.flows[0];
        assert!(f.received > 0);
        assert_eq!(f.reordered, 0);
        relay.stop();
        relay.stop();
        // Everything received went through the relay (a loaded machine may
        // leave a few frames in flight after the sink's drain ended).
        assert!(relay.counters.vm_to_host.load(Ordering::Relaxed) >= f.received);
    }

    #[test]
    fn frames_below_64_bytes_are_refused() {
        let (tx, rx) = socket::socketpair(Kind::Datagram).unwrap();
        let flow = Flow { source: tx, source_framing: Framing::Datagram, sink: rx, sink_framing: Framing::Datagram, src_mac: MAC_A, dst_mac: MAC_B };
        assert!(run_flows(vec![flow], 63, Duration::from_millis(10)).is_err());
    }
}
