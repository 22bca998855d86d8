//! Per-network socket paths that VMs connect to by themselves
//! (docs/endpoints.md): `<endpointDir>/<network>.stream.sock` and
//! `<endpointDir>/<network>.dgram.sock`.
//!
//! - stream: a listening SOCK_STREAM socket. Each accepted connection is one
//!   VM: the broker starts an interface (its own port on the network) and a
//!   `stream` adaptor whose VM end *is* the accepted socket (4-byte
//!   big-endian length + frame, as QEMU `-netdev stream` and socket_vmnet).
//! - datagram: one bound SOCK_DGRAM socket shared by every client. A client
//!   binds its own path and sends to the endpoint (vfkit, krunkit, QEMU
//!   `-netdev dgram`); it is known by its address. Its first datagram may be
//!   vfkit's `VFKT` magic, which is swallowed. Each client gets its own
//!   interface and a `datagram` adaptor on a socketpair; the demux here
//!   moves frames between the endpoint socket and the pair's other end, and
//!   sends replies *from* the endpoint socket (clients connect() to it and
//!   take nothing from elsewhere). A client whose socket is gone is noticed
//!   by a failed send (ECONNREFUSED, ENOENT) or by a probe (a connect() to
//!   its address) every [`PROBE_INTERVAL`], and its port released.
//!
//! Cost of the datagram design: per frame, one extra receive, one extra
//! send and one copy through the socketpair in each direction, all on the
//! one endpoint thread (every datagram client of the broker shares it),
//! plus one relay thread per client as for any adaptor. The stream path has
//! no extra hop: the relay reads the accepted socket itself.
//!
//! Threads: one `vmnet-rs-endpoints` thread polls every endpoint socket,
//! every datagram client's socketpair end and a wake pipe. Starting a port
//! takes the broker's state lock (and may create the network), so a slow
//! network start holds up this thread, never the broker socket's.
//!
//! Authorisation: the peer's credentials (stream: SO_PEERCRED on Linux,
//! getpeereid + LOCAL_PEERPID on macOS; datagram: SCM_CREDENTIALS on Linux,
//! none on macOS, where the per-user 0700 folder is the check) go through
//! the broker's own check for every new port. A refused peer is logged and
//! closed (stream) or ignored for [`REFUSED_QUIET`] (datagram); nothing
//! else changes.
//!
//! Invariants: every fd accepted or received is owned by a port or closed;
//! [`Endpoints::stop`] joins the thread, closes every socket and unlinks
//! the paths it bound itself (never those a service manager made).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::protocol::{code, Failure};
use super::state::Port;
use super::Core;
use crate::adaptor::{socket as adaptor_socket, Adaptor, DropCounter, Kind, Options, RETRY_BUDGET, RETRY_DELAY_US};
use crate::config::EndpointKind;
use crate::vmnet::InterfaceDesc;
use crate::xpc::Peer;

/// vfkit's handshake datagram (vfkit `vfkitMagic=on`, krunkit), swallowed.
pub const VFKIT_MAGIC: &[u8; 4] = b"VFKT";
/// How often datagram clients are probed for a socket that is gone.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long datagrams from a refused address are dropped without a log line.
pub const REFUSED_QUIET: Duration = Duration::from_secs(10);
/// Most datagram clients one endpoint serves at once.
pub const MAX_DATAGRAM_CLIENTS: usize = 256;
/// Pending connections the kernel queues on a stream endpoint.
const LISTEN_BACKLOG: libc::c_int = 64;
/// Largest datagram read from a client or a relay (the relays' own maximum).
const DATAGRAM_BYTES: usize = 65_550;
/// Frames moved per client and direction in one poll turn (fairness).
const FRAMES_PER_TURN: usize = 64;
/// The endpoint socket's buffers (vfkit: 1 MiB send, 4 MiB receive).
const SEND_BUFFER_BYTES: usize = 1 << 20;
const RECV_BUFFER_BYTES: usize = 4 << 20;
/// How long a frame a datagram client had no room for is retried before it
/// is dropped: the adaptors' budget (docs/adaptors.md "Backpressure").
const PENDING_BUDGET: Duration = Duration::from_micros(RETRY_BUDGET as u64 * RETRY_DELAY_US);
/// Endpoint clients' lease connection ids start here, above any listener's.
const CONNECTION_BASE: u64 = 1 << 40;

/// Longest socket path the platform takes (`sun_path` less the NUL).
pub fn max_path_bytes() -> usize {
    // SAFETY: sockaddr_un is plain old data; only its field size is read.
    let addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_path.len() - 1
}

/// Where the endpoints go when neither `endpointDir` nor `--endpoint-dir`
/// says: the broker socket's directory (Linux), the user's
/// `~/Library/Application Support/vmnet-rs/endpoints` (macOS).
pub fn default_dir(broker_socket: &Path) -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    default_dir_for(cfg!(target_os = "macos"), home.as_deref(), broker_socket)
}

/// [`default_dir`] for either platform (`macos`), with the user's home
/// `home` (`None`: `/tmp`), so a plan for a Mac can be made anywhere.
pub fn default_dir_for(macos: bool, home: Option<&Path>, broker_socket: &Path) -> PathBuf {
    if macos {
        return home.unwrap_or(Path::new("/tmp")).join("Library/Application Support/vmnet-rs/endpoints");
    }
    broker_socket.parent().filter(|p| !p.as_os_str().is_empty()).map(Path::to_owned).unwrap_or_else(|| PathBuf::from("/run/vmnet-rs"))
}

/// The socket path of one endpoint.
pub fn endpoint_path(dir: &Path, network: &str, kind: EndpointKind) -> PathBuf {
    dir.join(format!("{network}.{}.sock", kind.suffix()))
}

/// The service manager's name for one endpoint socket (`FileDescriptorName=`,
/// launchd `Sockets` key).
pub fn activation_name(network: &str, kind: EndpointKind) -> String {
    format!("{network}.{}", kind.suffix())
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("endpoint {path}: {op}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("endpoint {path}: {message}")]
    Refused { path: String, message: String },
}

fn io_error<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> Error + 'p {
    move |source| Error::Io { op, path: path.display().to_string(), source }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn new_socket(ty: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; checked below.
    let fd = cvt(unsafe { libc::socket(libc::AF_UNIX, ty, 0) })?;
    // SAFETY: fd was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_flags(fd.as_raw_fd())?;
    Ok(fd)
}

/// Close-on-exec and non-blocking.
fn set_flags(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, integer arguments only.
    unsafe {
        let fdflags = cvt(libc::fcntl(fd, libc::F_GETFD))?;
        cvt(libc::fcntl(fd, libc::F_SETFD, fdflags | libc::FD_CLOEXEC))?;
        let flags = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        cvt(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    }
    Ok(())
}

fn set_int_option(fd: RawFd, level: libc::c_int, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt reads one c_int from the pointer.
    cvt(unsafe { libc::setsockopt(fd, level, option, (&value as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t) })
        .map(|_| ())
}

fn socket_type(fd: RawFd) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most len bytes into value.
    cvt(unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, (&mut value as *mut libc::c_int).cast(), &mut len) })?;
    Ok(value)
}

/// A `sockaddr_un` for raw `sun_path` bytes (a path, or on Linux an
/// abstract name starting with NUL) and its length.
fn sockaddr(path: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain old data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if path.len() > addr.sun_path.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket path too long"));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    let base = std::mem::size_of::<libc::sa_family_t>();
    #[cfg(target_vendor = "apple")]
    let base = base + 1; // sun_len comes first on the BSDs.
    #[cfg(target_vendor = "apple")]
    {
        addr.sun_len = (base + path.len()) as u8;
    }
    Ok((addr, (base + path.len()) as libc::socklen_t))
}

/// Offset of `sun_path` in `sockaddr_un`.
fn sun_path_offset() -> usize {
    let base = std::mem::size_of::<libc::sa_family_t>();
    #[cfg(target_vendor = "apple")]
    let base = base + 1;
    base
}

fn connect(fd: RawFd, path: &[u8]) -> io::Result<()> {
    let (addr, len) = sockaddr(path)?;
    // SAFETY: addr is a valid sockaddr_un of len bytes.
    cvt(unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) }).map(|_| ())
}

/// Whether a socket of type `ty` answers at `path`.
fn someone_listens(path: &Path, ty: libc::c_int) -> bool {
    let Ok(probe) = new_socket(ty) else { return false };
    match connect(probe.as_raw_fd(), path.as_os_str().as_bytes()) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() == Some(libc::EINPROGRESS) || e.raw_os_error() == Some(libc::EAGAIN),
    }
}

/// How endpoint files are made: directory and file modes, and a group.
#[derive(Clone, Debug)]
pub struct Access {
    pub dir_mode: u32,
    pub file_mode: u32,
    /// Group to give the files (Linux: the allowed group); `None`: leave it.
    pub group: Option<u32>,
}

/// One endpoint socket, bound here or handed over by the service manager.
struct Bound {
    fd: OwnedFd,
    path: PathBuf,
    network: String,
    kind: EndpointKind,
    /// We bound the path and remove it on stop.
    owns_path: bool,
}

impl Bound {
    fn unlink(&self) {
        if self.owns_path {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds (or takes over from the service manager) one endpoint socket.
fn open_endpoint(dir: &Path, network: &str, kind: EndpointKind, access: &Access) -> Result<Bound, Error> {
    let path = endpoint_path(dir, network, kind);
    let ty = match kind {
        EndpointKind::Stream => libc::SOCK_STREAM,
        EndpointKind::Datagram => libc::SOCK_DGRAM,
    };
    let name = activation_name(network, kind);
    if let Some(fd) = crate::xpc::activation::take(&name).map_err(io_error("take the socket the service manager holds", &path))? {
        let got = socket_type(fd.as_raw_fd()).map_err(io_error("inspect the socket the service manager passed", &path))?;
        if got != ty {
            return Err(Error::Refused {
                path: path.display().to_string(),
                message: format!(
                    "the socket passed as {name:?} is of the wrong type: use {} for it in the socket unit (or plist)",
                    if ty == libc::SOCK_STREAM { "ListenStream=" } else { "ListenDatagram=" }
                ),
            });
        }
        set_flags(fd.as_raw_fd()).map_err(io_error("make the passed socket non-blocking", &path))?;
        let actual = crate::xpc::activation::bound_path(fd.as_raw_fd()).unwrap_or(path);
        return finish_socket(Bound { fd, path: actual, network: network.to_owned(), kind, owns_path: false });
    }
    let bytes = path.as_os_str().as_bytes().len();
    if bytes > max_path_bytes() {
        return Err(Error::Refused {
            path: path.display().to_string(),
            message: format!(
                "the path is {bytes} bytes, past the {}-byte limit of a Unix socket path; pick a shorter endpointDir (--endpoint-dir) or network name",
                max_path_bytes()
            ),
        });
    }
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io_error("create the endpoint directory", dir))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(access.dir_mode)).map_err(io_error("set the endpoint directory's mode", dir))?;
    }
    let fd = new_socket(ty).map_err(io_error("create the socket", &path))?;
    let (addr, len) = sockaddr(path.as_os_str().as_bytes()).map_err(io_error("name the socket", &path))?;
    // SAFETY: addr is a valid sockaddr_un of len bytes; fd is ours.
    let bind = || cvt(unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) });
    match bind() {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if someone_listens(&path, ty) {
                return Err(Error::Refused {
                    path: path.display().to_string(),
                    message: "another process serves this path: stop it (another broker?), or pick another endpointDir (--endpoint-dir)".into(),
                });
            }
            std::fs::remove_file(&path).map_err(io_error("remove the stale socket file", &path))?;
            bind().map_err(io_error("bind", &path))?;
        }
        Err(e) => return Err(io_error("bind", &path)(e)),
    }
    let bound = Bound { fd, path: path.clone(), network: network.to_owned(), kind, owns_path: true };
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(access.file_mode)) {
        bound.unlink();
        return Err(io_error("set the socket's mode", &path)(e));
    }
    if let Some(gid) = access.group {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Refused { path: path.display().to_string(), message: "NUL in path".into() })?;
        // SAFETY: c is a NUL-terminated path; uid -1 leaves the owner.
        if unsafe { libc::chown(c.as_ptr(), u32::MAX as libc::uid_t, gid as libc::gid_t) } < 0 {
            log::debug!("endpoint {}: could not give it group {gid}: {}", path.display(), io::Error::last_os_error());
        }
    }
    if kind == EndpointKind::Stream {
        // SAFETY: listen on our bound socket.
        if let Err(e) = cvt(unsafe { libc::listen(bound.fd.as_raw_fd(), LISTEN_BACKLOG) }) {
            bound.unlink();
            return Err(io_error("listen", &path)(e));
        }
    }
    finish_socket(bound)
}

/// Buffers and credential passing on a ready endpoint socket.
fn finish_socket(b: Bound) -> Result<Bound, Error> {
    if b.kind == EndpointKind::Datagram {
        // Best effort, as the adaptors do (root passes net.core.*mem_max);
        // what the kernel granted is logged.
        match adaptor_socket::set_buffers(&b.fd, SEND_BUFFER_BYTES, RECV_BUFFER_BYTES) {
            Ok(got) => log::debug!("endpoint {}: SO_SNDBUF {} SO_RCVBUF {}", b.path.display(), got.send_bytes, got.recv_bytes),
            Err(e) => log::warn!("endpoint {}: could not set its socket buffers: {e}", b.path.display()),
        }
        #[cfg(target_os = "linux")]
        if let Err(e) = set_int_option(b.fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, 1) {
            b.unlink();
            return Err(io_error("turn on SO_PASSCRED", &b.path)(e));
        }
    }
    Ok(b)
}


/// The credentials of a connected stream peer.
fn stream_peer(fd: RawFd) -> io::Result<(u32, u32, i32)> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: ucred is plain old data.
        let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: SO_PEERCRED writes one ucred of at most len bytes.
        cvt(unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len) })?;
        Ok((cred.uid, cred.gid, cred.pid))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let (mut uid, mut gid) = (0 as libc::uid_t, 0 as libc::gid_t);
        // SAFETY: getpeereid writes the two ids.
        cvt(unsafe { libc::getpeereid(fd, &mut uid, &mut gid) })?;
        #[cfg(target_vendor = "apple")]
        let pid = {
            let mut pid: libc::pid_t = 0;
            let mut len = std::mem::size_of::<libc::pid_t>() as libc::socklen_t;
            // SAFETY: LOCAL_PEERPID (<sys/un.h>, level SOL_LOCAL = 0) writes one pid_t.
            let r = unsafe { libc::getsockopt(fd, 0, libc::LOCAL_PEERPID, (&mut pid as *mut libc::pid_t).cast(), &mut len) };
            if r < 0 {
                -1
            } else {
                pid
            }
        };
        #[cfg(not(target_vendor = "apple"))]
        let pid = -1;
        Ok((uid, gid, pid))
    }
}

/// One datagram client: its address, its port's lease and the demux's end
/// of its adaptor's socketpair.
struct Client {
    addr: Vec<u8>,
    lease: u64,
    inner: OwnedFd,
    /// Last time a datagram came from the client (probes skip busy ones).
    heard: Instant,
    /// Frames dropped here, also added to the port's own counters.
    drops: u64,
    counter: DropCounter,
    /// A frame for the client that its queue had no room for, retried on
    /// the next turns; while it waits nothing more is read from the relay,
    /// so the relay's socket fills and backpressure reaches the relay.
    pending: Option<Pending>,
}

struct Pending {
    frame: Vec<u8>,
    since: Instant,
}

impl Client {
    fn new(addr: Vec<u8>, lease: u64, inner: OwnedFd, counter: DropCounter) -> Client {
        Client { addr, lease, inner, heard: Instant::now(), drops: 0, counter, pending: None }
    }

    fn drop_to_vm(&mut self) {
        self.drops += 1;
        self.counter.host_to_vm(1);
    }

    fn drop_from_vm(&mut self) {
        self.drops += 1;
        self.counter.vm_to_host(1);
    }
}

/// What became of one send to a datagram client.
enum Sent {
    Done,
    /// Its queue is full (EAGAIN/ENOBUFS): try again later.
    Full,
    /// Its socket is gone.
    Gone(String),
    /// Any other failure: the frame is dropped.
    Failed,
}

/// Sends `frame` from endpoint socket `ep` to the client at `addr`.
fn send_to_client(ep: RawFd, addr: &[u8], frame: &[u8]) -> Sent {
    let Ok((sa, len)) = sockaddr(addr) else { return Sent::Gone("its address is unusable".into()) };
    // SAFETY: sends frame.len() bytes of `frame` to a valid address of len bytes.
    let sent = unsafe { libc::sendto(ep, frame.as_ptr().cast(), frame.len(), send_flags(), (&sa as *const libc::sockaddr_un).cast(), len) };
    if sent >= 0 {
        return Sent::Done;
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EINTR) => Sent::Full,
        Some(libc::ECONNREFUSED) | Some(libc::ENOENT) | Some(libc::ENOTCONN) | Some(libc::EPERM) | Some(libc::ECONNRESET) => {
            Sent::Gone(format!("a send to it failed: {e}"))
        }
        _ => Sent::Failed,
    }
}

struct DatagramEndpoint {
    bound: Bound,
    clients: Vec<Client>,
    /// Addresses refused lately, with when.
    refused: HashMap<Vec<u8>, Instant>,
}

struct Shared {
    core: Weak<Core>,
    stopping: AtomicBool,
    next_connection: AtomicU64,
}

/// The running endpoints of a broker.
pub struct Endpoints {
    shared: Arc<Shared>,
    wake: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    /// Network -> kind -> path.
    paths: BTreeMap<String, BTreeMap<EndpointKind, PathBuf>>,
    bound_here: bool,
}

impl Endpoints {
    /// Opens the endpoints `wanted` lists (network -> kinds) under `dir`,
    /// taking sockets the service manager holds where it has them, and
    /// starts the endpoint thread. Nothing is left open on error.
    pub fn start(core: &Arc<Core>, dir: &Path, wanted: &BTreeMap<String, Vec<EndpointKind>>, access: &Access) -> Result<Endpoints, Error> {
        let mut streams = Vec::new();
        let mut datagrams = Vec::new();
        let mut paths: BTreeMap<String, BTreeMap<EndpointKind, PathBuf>> = BTreeMap::new();
        let mut bound_here = false;
        let cleanup = |s: &[Bound], d: &[DatagramEndpoint]| {
            s.iter().for_each(Bound::unlink);
            d.iter().for_each(|d| d.bound.unlink());
        };
        for (network, kinds) in wanted {
            for kind in kinds {
                let b = match open_endpoint(dir, network, *kind, access) {
                    Ok(b) => b,
                    Err(e) => {
                        cleanup(&streams, &datagrams);
                        return Err(e);
                    }
                };
                bound_here |= b.owns_path;
                paths.entry(network.clone()).or_default().insert(*kind, b.path.clone());
                match kind {
                    EndpointKind::Stream => streams.push(b),
                    EndpointKind::Datagram => datagrams.push(DatagramEndpoint { bound: b, clients: Vec::new(), refused: HashMap::new() }),
                }
            }
        }
        let served: Vec<String> = wanted.iter().flat_map(|(n, kinds)| kinds.iter().map(move |k| activation_name(n, *k))).collect();
        crate::xpc::activation::warn_unserved_launchd_sockets(&served);
        let mut fds = [-1 as libc::c_int; 2];
        // SAFETY: pipe writes two descriptors into the 2-element array.
        if let Err(e) = cvt(unsafe { libc::pipe(fds.as_mut_ptr()) }) {
            cleanup(&streams, &datagrams);
            return Err(io_error("create the wake pipe", dir)(e));
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (wake_rx, wake_tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let _ = set_flags(wake_rx.as_raw_fd());
        let _ = set_flags(wake_tx.as_raw_fd());
        let shared = Arc::new(Shared { core: Arc::downgrade(core), stopping: AtomicBool::new(false), next_connection: AtomicU64::new(CONNECTION_BASE) });
        let count = streams.len() + datagrams.len();
        let thread = {
            let shared = Arc::clone(&shared);
            let mut worker = Worker { shared, wake: wake_rx, streams, datagrams, buf: vec![0u8; DATAGRAM_BYTES], last_probe: Instant::now() };
            std::thread::Builder::new().name("vmnet-rs-endpoints".into()).spawn(move || worker.run())
        };
        let thread = thread.map_err(io_error("start the endpoint thread", dir))?;
        if count > 0 {
            log::info!("endpoints: {count} socket(s) under {}", dir.display());
        }
        Ok(Endpoints { shared, wake: Some(wake_tx), thread: Some(thread), paths, bound_here })
    }

    /// Network -> kind -> socket path.
    pub fn paths(&self) -> &BTreeMap<String, BTreeMap<EndpointKind, PathBuf>> {
        &self.paths
    }

    /// True when at least one endpoint socket was bound here (not handed
    /// over by a service manager): such a broker must not exit when idle,
    /// or its paths would stop answering.
    pub fn bound_here(&self) -> bool {
        self.bound_here
    }

    /// Stops the thread, closes every socket, unlinks the paths bound here.
    /// Ports already started stay with their leases. Idempotent.
    pub fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(w) = self.wake.take() {
            let byte = 1u8;
            // SAFETY: writes one byte from a valid local.
            let _ = unsafe { libc::write(w.as_raw_fd(), (&byte as *const u8).cast(), 1) };
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Endpoints {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The endpoint thread's state.
struct Worker {
    shared: Arc<Shared>,
    wake: OwnedFd,
    streams: Vec<Bound>,
    datagrams: Vec<DatagramEndpoint>,
    buf: Vec<u8>,
    last_probe: Instant,
}

/// What a poll slot stands for.
#[derive(Clone, Copy)]
enum Slot {
    Wake,
    Stream(usize),
    Datagram(usize),
    Client(usize, usize),
}

impl Worker {
    fn run(&mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut slots: Vec<Slot> = Vec::new();
        while !self.shared.stopping.load(Ordering::SeqCst) {
            fds.clear();
            slots.clear();
            let mut add = |fd: RawFd, slot: Slot| {
                fds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
                slots.push(slot);
            };
            add(self.wake.as_raw_fd(), Slot::Wake);
            for (i, s) in self.streams.iter().enumerate() {
                add(s.fd.as_raw_fd(), Slot::Stream(i));
            }
            let mut waiting = false;
            for (i, d) in self.datagrams.iter().enumerate() {
                add(d.bound.fd.as_raw_fd(), Slot::Datagram(i));
                for (j, c) in d.clients.iter().enumerate() {
                    // A client with a frame waiting is retried on a timer,
                    // and its relay is not read until that frame is gone.
                    if c.pending.is_some() {
                        waiting = true;
                    } else {
                        add(c.inner.as_raw_fd(), Slot::Client(i, j));
                    }
                }
            }
            let timeout = if waiting {
                Some(Duration::from_micros(RETRY_DELAY_US))
            } else if self.datagrams.iter().any(|d| !d.clients.is_empty()) {
                Some(PROBE_INTERVAL)
            } else {
                None
            };
            if let Err(e) = adaptor_socket::poll(&mut fds, timeout) {
                log::error!("endpoints: poll failed: {e}; the endpoints stop serving");
                break;
            }
            if self.shared.stopping.load(Ordering::SeqCst) {
                break;
            }
            // Clients first (indices stay valid: removals happen after).
            let mut gone: Vec<(usize, usize, String)> = Vec::new();
            if waiting {
                for i in 0..self.datagrams.len() {
                    for j in 0..self.datagrams[i].clients.len() {
                        if self.datagrams[i].clients[j].pending.is_some() {
                            if let Some(why) = self.relay_to_client(i, j) {
                                gone.push((i, j, why));
                            }
                        }
                    }
                }
            }
            for (k, fd) in fds.iter().enumerate() {
                if fd.revents == 0 {
                    continue;
                }
                match slots[k] {
                    Slot::Wake => {}
                    Slot::Stream(i) => self.accept(i),
                    Slot::Datagram(_) => {}
                    Slot::Client(i, j) => {
                        if let Some(why) = self.relay_to_client(i, j) {
                            gone.push((i, j, why));
                        }
                    }
                }
            }
            self.remove_clients(gone);
            for (k, fd) in fds.iter().enumerate() {
                if let (Slot::Datagram(i), true) = (slots[k], fd.revents != 0) {
                    self.receive_datagrams(i);
                }
            }
            if self.last_probe.elapsed() >= PROBE_INTERVAL {
                self.last_probe = Instant::now();
                self.probe();
            }
        }
        // Stopping: the leases go with the broker's state; close our ends.
        for d in &mut self.datagrams {
            d.clients.clear();
            d.bound.unlink();
        }
        self.streams.iter().for_each(Bound::unlink);
    }

    fn core(&self) -> Option<Arc<Core>> {
        self.shared.core.upgrade()
    }

    fn next_connection(&self) -> u64 {
        self.shared.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Accepts every pending connection on stream endpoint `i`.
    fn accept(&mut self, i: usize) {
        for _ in 0..LISTEN_BACKLOG {
            let s = &self.streams[i];
            // SAFETY: accept on our listening socket; no address wanted.
            let fd = unsafe { libc::accept(s.fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut()) };
            if fd < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                    log::warn!("endpoint {}: accept failed: {e}", s.path.display());
                }
                return;
            }
            // SAFETY: accept returned a new fd nobody else owns.
            let conn = unsafe { OwnedFd::from_raw_fd(fd) };
            let _ = set_flags(conn.as_raw_fd());
            // A write to a VM that went away fails with EPIPE instead of
            // raising SIGPIPE (Linux: MSG_NOSIGNAL on every send).
            #[cfg(target_vendor = "apple")]
            let _ = set_int_option(conn.as_raw_fd(), libc::SOL_SOCKET, libc::SO_NOSIGPIPE, 1);
            let (uid, gid, pid) = match stream_peer(conn.as_raw_fd()) {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("endpoint {}: could not read the peer's credentials ({e}); connection closed", s.path.display());
                    continue;
                }
            };
            let peer = Peer { uid, gid, pid, connection: self.next_connection() };
            let (network, path) = (s.network.clone(), s.path.clone());
            let Some(core) = self.core() else { return };
            match core.open_endpoint_port(&network, &peer, EndpointKind::Stream, Some(conn)) {
                Ok((lease, _)) => log::info!("endpoint {}: pid {pid} uid {uid} connected (lease {lease})", path.display()),
                Err(f) => log::warn!("endpoint {}: pid {pid} uid {uid} refused: {}", path.display(), f.message),
            }
        }
    }

    /// Moves frames from datagram client `j` of endpoint `i`'s relay to the
    /// client, its waiting frame first. A frame the client's queue has no
    /// room for waits (see [`Client::pending`]) and is dropped and counted
    /// once it is older than [`PENDING_BUDGET`]. Returns why the client is
    /// gone, if it is.
    fn relay_to_client(&mut self, i: usize, j: usize) -> Option<String> {
        let d = &mut self.datagrams[i];
        let ep = d.bound.fd.as_raw_fd();
        let c = &mut d.clients[j];
        if let Some(p) = c.pending.take() {
            match send_to_client(ep, &c.addr, &p.frame) {
                Sent::Done => {}
                Sent::Full if p.since.elapsed() < PENDING_BUDGET => {
                    c.pending = Some(p);
                    return None;
                }
                Sent::Full | Sent::Failed => c.drop_to_vm(),
                Sent::Gone(why) => return Some(why),
            }
        }
        for _ in 0..FRAMES_PER_TURN {
            // SAFETY: recv into our buffer of its length.
            let n = unsafe { libc::recv(c.inner.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => None,
                    _ => Some(format!("its relay's socket failed: {e}")),
                };
            }
            let frame = &self.buf[..n as usize];
            match send_to_client(ep, &c.addr, frame) {
                Sent::Done => {}
                Sent::Full => {
                    let mut kept = c.pending.take().map(|p| p.frame).unwrap_or_default();
                    kept.clear();
                    kept.extend_from_slice(frame);
                    c.pending = Some(Pending { frame: kept, since: Instant::now() });
                    return None;
                }
                Sent::Failed => c.drop_to_vm(),
                Sent::Gone(why) => return Some(why),
            }
        }
        None
    }

    /// Receives what is waiting on datagram endpoint `i`.
    fn receive_datagrams(&mut self, i: usize) {
        for _ in 0..FRAMES_PER_TURN * 4 {
            let fd = self.datagrams[i].bound.fd.as_raw_fd();
            let got = match recv_from(fd, &mut self.buf) {
                Ok(Some(g)) => g,
                Ok(None) => return,
                Err(e) => {
                    log::warn!("endpoint {}: receive failed: {e}", self.datagrams[i].bound.path.display());
                    return;
                }
            };
            let d = &mut self.datagrams[i];
            if got.addr.is_empty() {
                // Unbound (Linux: an empty address; macOS: XNU's
                // `sun_noname`): no reply can reach it, so it gets no port;
                // held off like a refused address, logged once a while.
                if d.refused.insert(Vec::new(), Instant::now()).map_or(true, |t| t.elapsed() >= REFUSED_QUIET) {
                    log::warn!(
                        "endpoint {}: a datagram from an unbound socket was dropped: clients must bind their own path to get replies",
                        d.bound.path.display()
                    );
                }
                continue;
            }
            if let Some(c) = d.clients.iter_mut().find(|c| c.addr == got.addr) {
                c.heard = Instant::now();
                if got.truncated {
                    // Longer than any frame: it arrived cut, and a cut frame
                    // is never passed on (on an offload network it would be
                    // delivered cut). Dropped and counted.
                    c.drop_from_vm();
                    continue;
                }
                // SAFETY: sends len bytes of our buffer on the connected pair.
                let r = unsafe { libc::send(c.inner.as_raw_fd(), self.buf.as_ptr().cast(), got.len, send_flags()) };
                if r < 0 {
                    c.drop_from_vm();
                }
                continue;
            }
            if let Some(t) = d.refused.get(&got.addr) {
                if t.elapsed() < REFUSED_QUIET {
                    continue;
                }
            }
            let shown = show_addr(&got.addr);
            let path = d.bound.path.clone();
            if d.clients.len() >= MAX_DATAGRAM_CLIENTS {
                d.refused.insert(got.addr.clone(), Instant::now());
                log::warn!("endpoint {}: client {shown} refused: {MAX_DATAGRAM_CLIENTS} clients already", path.display());
                continue;
            }
            let network = d.bound.network.clone();
            let (uid, gid, pid) = got.creds.unwrap_or_else(own_credentials);
            let peer = Peer { uid, gid, pid, connection: self.next_connection() };
            let Some(core) = self.core() else { return };
            match core.open_endpoint_port(&network, &peer, EndpointKind::Datagram, None) {
                Ok((lease, Some((inner, counter)))) => {
                    log::info!("endpoint {}: client {shown} (pid {pid} uid {uid}) joined (lease {lease})", path.display());
                    let _ = set_flags(inner.as_raw_fd());
                    let mut c = Client::new(got.addr, lease, inner, counter);
                    if got.truncated {
                        c.drop_from_vm();
                    } else if &self.buf[..got.len] != VFKIT_MAGIC {
                        // SAFETY: as above.
                        if unsafe { libc::send(c.inner.as_raw_fd(), self.buf.as_ptr().cast(), got.len, send_flags()) } < 0 {
                            c.drop_from_vm();
                        }
                    }
                    self.datagrams[i].clients.push(c);
                }
                Ok((lease, None)) => {
                    log::error!("endpoint {}: lease {lease} came without a socket; releasing it", path.display());
                    core.release_endpoint_lease(lease);
                }
                Err(f) => {
                    log::warn!("endpoint {}: client {shown} (pid {pid} uid {uid}) refused: {}", path.display(), f.message);
                    self.datagrams[i].refused.insert(got.addr, Instant::now());
                }
            }
        }
    }

    /// Drops clients whose lease ended (relay or network gone) or whose
    /// socket no longer answers a connect().
    fn probe(&mut self) {
        let Some(core) = self.core() else { return };
        let mut gone = Vec::new();
        for (i, d) in self.datagrams.iter_mut().enumerate() {
            d.refused.retain(|_, t| t.elapsed() < REFUSED_QUIET);
            for (j, c) in d.clients.iter().enumerate() {
                if !core.endpoint_lease_running(c.lease) {
                    gone.push((i, j, "its port ended".to_owned()));
                } else if c.heard.elapsed() >= PROBE_INTERVAL {
                    if let Some(why) = probe_address(&c.addr) {
                        gone.push((i, j, why));
                    }
                }
            }
        }
        self.remove_clients(gone);
    }

    fn remove_clients(&mut self, mut gone: Vec<(usize, usize, String)>) {
        if gone.is_empty() {
            return;
        }
        gone.sort_by_key(|g| std::cmp::Reverse((g.0, g.1)));
        gone.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        let core = self.core();
        for (i, j, why) in gone {
            let d = &mut self.datagrams[i];
            let c = d.clients.swap_remove(j);
            log::info!("endpoint {}: client {} left ({why}); lease {} released", d.bound.path.display(), show_addr(&c.addr), c.lease);
            if c.drops > 0 {
                log::info!("endpoint {}: {} frame(s) to or from {} were dropped (a queue stayed full)", d.bound.path.display(), c.drops, show_addr(&c.addr));
            }
            drop(c.inner);
            if let Some(core) = &core {
                core.release_endpoint_lease(c.lease);
            }
        }
    }
}

fn send_flags() -> libc::c_int {
    #[cfg(target_os = "linux")]
    return libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    #[cfg(not(target_os = "linux"))]
    return libc::MSG_DONTWAIT;
}

fn own_credentials() -> (u32, u32, i32) {
    // SAFETY: getuid/getgid cannot fail.
    unsafe { (libc::getuid(), libc::getgid(), -1) }
}

/// A client address (raw `sun_path` bytes) for logs.
fn show_addr(addr: &[u8]) -> String {
    match addr.first() {
        Some(0) => format!("@{}", String::from_utf8_lossy(&addr[1..])),
        _ => String::from_utf8_lossy(addr).into_owned(),
    }
}

/// Why the socket at `addr` is gone, if it is: a fresh socket's connect()
/// fails with ECONNREFUSED (nobody bound) or ENOENT (no file).
fn probe_address(addr: &[u8]) -> Option<String> {
    let probe = new_socket(libc::SOCK_DGRAM).ok()?;
    match connect(probe.as_raw_fd(), addr) {
        Ok(()) => None,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNREFUSED) | Some(libc::ENOENT)) => Some(format!("its socket is gone: {e}")),
        Err(_) => None,
    }
}

struct Datagram {
    len: usize,
    /// The sender's `sun_path` bytes (empty: unbound sender).
    addr: Vec<u8>,
    /// uid, gid, pid from SCM_CREDENTIALS (Linux).
    creds: Option<(u32, u32, i32)>,
    /// The datagram was longer than the buffer and arrived cut (`MSG_TRUNC`).
    truncated: bool,
}

/// A sender's address from the `sun_path` bytes `recvmsg` filled in (up to
/// `msg_namelen`); empty for an unbound sender. With `abstract_names`
/// (Linux) a leading NUL starts an abstract name, kept whole. Without them
/// (macOS, the BSDs) a leading NUL is an unbound sender: XNU reports one as
/// `sun_noname`, 14 zero bytes (docs/macos.md), which no reply can reach.
fn sender_address(sun_path: &[u8], abstract_names: bool) -> Vec<u8> {
    match sun_path.first() {
        None => Vec::new(),
        Some(0) if abstract_names => sun_path.to_vec(),
        Some(0) => Vec::new(),
        // A filesystem path: up to its NUL.
        Some(_) => sun_path.iter().copied().take_while(|&c| c != 0).collect(),
    }
}

/// Walks the control messages `recvmsg` wrote for `msg`: returns the
/// sender's credentials (SCM_CREDENTIALS, Linux) and closes every
/// descriptor a client sent (SCM_RIGHTS), on every platform: fds sent to an
/// endpoint are not ours to keep, and the kernel installed them in this
/// process (XNU `unp_externalize` as Linux `scm_detach_fds`).
///
/// # Safety
/// `msg` is the header a successful `recvmsg` just filled in, its control
/// buffer still live.
unsafe fn take_control(msg: &libc::msghdr) -> Option<(u32, u32, i32)> {
    #[allow(unused_mut)]
    let mut creds = None;
    // SAFETY: walks the control messages the kernel wrote into the buffer
    // `msg` points at (the caller's promise); CMSG_* stay inside it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            #[cfg(target_os = "linux")]
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_CREDENTIALS {
                let c: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                creds = Some((c.uid, c.gid, c.pid));
            }
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let count = ((*cmsg).cmsg_len as usize).saturating_sub(data as usize - cmsg as usize) / std::mem::size_of::<libc::c_int>();
                for k in 0..count {
                    let fd: libc::c_int = std::ptr::read_unaligned(data.cast::<libc::c_int>().add(k));
                    drop(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    creds
}

/// One datagram with its sender's address (and credentials on Linux);
/// `None` when nothing is waiting.
fn recv_from(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<Datagram>> {
    // SAFETY: sockaddr_un is plain old data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain old data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_un).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points at valid buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: recvmsg succeeded and `control` is still live.
    let creds = unsafe { take_control(&msg) };
    let path_len = (msg.msg_namelen as usize).saturating_sub(sun_path_offset()).min(addr.sun_path.len());
    let sun_path: Vec<u8> = addr.sun_path[..path_len].iter().map(|&c| c as u8).collect();
    let addr = sender_address(&sun_path, cfg!(target_os = "linux"));
    let truncated = msg.msg_flags & libc::MSG_TRUNC != 0;
    Ok(Some(Datagram { len: (n as usize).min(buf.len()), addr, creds, truncated }))
}

impl Core {
    /// Starts a port on `network` for a VM that came through an endpoint:
    /// checks `peer`, creates the network if needed, starts an interface
    /// and an adaptor, and records a lease that lasts as long as the relay.
    /// Stream: `socket` is the accepted connection (the adaptor's VM end);
    /// datagram: the adaptor gets a socketpair, whose other end is returned
    /// with the handle that counts the demux's drops as the port's.
    pub(super) fn open_endpoint_port(&self, network: &str, peer: &Peer, via: EndpointKind, socket: Option<OwnedFd>) -> Result<(u64, Option<(OwnedFd, DropCounter)>), Failure> {
        let refused = |f: Failure| {
            let mut st = self.lock_state();
            st.counters.errors += 1;
            if f.code == code::NOT_ALLOWED {
                st.counters.refused += 1;
            }
            f
        };
        self.authorise(peer).map_err(refused)?;
        let mut st = self.lock_state();
        st.last_activity = Instant::now();
        let wanted = super::requests::Wanted { config: None, accept_existing: true, lima: false };
        // The broker's policy (broker/policy.rs): the network's own users and
        // groups, and the per-user port quota, as for every other request.
        let caller = super::policy::Caller::from(peer);
        let admitted = self
            .admit(&st, &caller, network, None)
            .and_then(|verdict| self.admit_port(&st, &caller, network).map(|()| verdict))
            .and_then(|verdict| self.ensure_network(&mut st, network, &wanted, verdict).map(|_| verdict));
        let verdict = match admitted {
            Ok(v) => v,
            Err(f) => {
                drop(st);
                return Err(refused(f));
            }
        };
        let failure = |what: &str, e: &dyn std::fmt::Display| Failure::new(code::CREATE_FAILURE, format!("network {network}: could not {what}: {e}"));
        // A network found gone at the start is made again once (requests.rs).
        let interface = self.start_on_network(&mut st, network, &wanted, verdict, |_, st| {
            let entry = &st.networks[network];
            let desc = InterfaceDesc { mac: None, isolation: entry.config.isolation, offload: entry.config.offload };
            entry.network.start_interface(&desc).map_err(|e| failure("start an interface", &e))
        })?;
        let (adaptor, theirs) = match socket {
            Some(s) => (Adaptor::start_with_socket(interface, Kind::Stream, s, &Options::default()).map_err(|e| failure("start the relay", &e))?, None),
            None => {
                let (a, fd) = Adaptor::start(interface, Kind::Datagram, &Options::default()).map_err(|e| failure("start the relay", &e))?;
                let counter = a.drop_counter();
                (a, Some((fd, counter)))
            }
        };
        let id = st.grant(network, peer, false, Some(Port::Adaptor(adaptor)), None, None);
        if let Some(l) = st.leases.get_mut(&id) {
            l.via = Some(via);
        }
        Ok((id, theirs))
    }

    /// Releases an endpoint client's lease (its datagram client left).
    pub(super) fn release_endpoint_lease(&self, lease: u64) {
        self.lock_state().release_where(|l| l.id == lease);
    }

    /// Whether an endpoint client's lease still holds a running relay.
    pub(super) fn endpoint_lease_running(&self, lease: u64) -> bool {
        self.lock_state().leases.get(&lease).is_some_and(|l| l.port.as_ref().is_some_and(|p| p.is_running()))
    }
}

/// The receive path's decisions, on every OS (docs/macos.md: what XNU
/// hands a datagram receiver).
#[cfg(test)]
mod receive_tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn an_unbound_sender_on_macos_is_no_address() {
        // XNU's `sun_noname`: sun_len 16, AF_LOCAL, 14 zero bytes of path.
        assert_eq!(sender_address(&[0u8; 14], false), Vec::<u8>::new(), "unbound on macOS: never a port");
        assert_eq!(sender_address(b"/tmp/vm.sock\0\0", false), b"/tmp/vm.sock".to_vec());
        assert_eq!(sender_address(b"/tmp/vm.sock\0\0", true), b"/tmp/vm.sock".to_vec());
        // Linux: an autobound or abstract name is a real address.
        assert_eq!(sender_address(b"\0abcde", true), b"\0abcde".to_vec());
        assert_eq!(sender_address(b"", true), Vec::<u8>::new());
        assert_eq!(sender_address(b"", false), Vec::<u8>::new());
    }

    /// Sends `data` with `fd` attached (SCM_RIGHTS) on `sock`.
    fn send_with_fd(sock: &UnixDatagram, data: &[u8], fd: RawFd) {
        let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
        let mut control = [0u64; 8];
        // SAFETY: msghdr is plain old data; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure size computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as _;
        // SAFETY: the control buffer has room for one header and one int.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
        }
        // SAFETY: msg points at live buffers of the stated sizes.
        assert!(unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) } >= 0, "{}", io::Error::last_os_error());
    }

    #[test]
    fn descriptors_a_client_sends_are_closed() {
        let (client, endpoint) = UnixDatagram::pair().unwrap();
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: room for two fds.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: pipe() just returned two fds we own.
        let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        send_with_fd(&client, b"frame", write_end.as_raw_fd());
        drop(write_end);
        let mut buf = [0u8; 64];
        let got = recv_from(endpoint.as_raw_fd(), &mut buf).unwrap().expect("a datagram");
        assert_eq!(&buf[..got.len], b"frame");
        // The only other copy of the write end was the one received: once it
        // is closed, the pipe reads end-of-file (not EAGAIN, as it would
        // while the received copy leaked).
        set_flags(read_end.as_raw_fd()).unwrap();
        let mut one = [0u8; 1];
        // SAFETY: reads at most one byte into `one`.
        let n = unsafe { libc::read(read_end.as_raw_fd(), one.as_mut_ptr().cast(), 1) };
        assert_eq!(n, 0, "the received descriptor was closed ({})", io::Error::last_os_error());
    }

    #[test]
    fn a_datagram_longer_than_the_buffer_is_marked_cut() {
        let (client, endpoint) = UnixDatagram::pair().unwrap();
        client.send(&[7u8; 200]).unwrap();
        client.send(&[8u8; 100]).unwrap();
        let mut buf = [0u8; 100];
        let cut = recv_from(endpoint.as_raw_fd(), &mut buf).unwrap().expect("a datagram");
        assert!(cut.truncated, "200 bytes into 100");
        assert_eq!(cut.len, 100);
        let whole = recv_from(endpoint.as_raw_fd(), &mut buf).unwrap().expect("a datagram");
        assert!(!whole.truncated, "exactly the buffer's size is whole");
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::adaptor::framing;
    use crate::broker::{Backend, Broker, BrokerOptions};
    use crate::xpc::unix::Socket;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixDatagram, UnixStream};

    fn uid() -> u32 {
        // SAFETY: getuid cannot fail.
        unsafe { libc::getuid() }
    }

    fn start(name: &str, allowed_uid: u32) -> (Broker, PathBuf) {
        let dir = std::env::temp_dir().join(format!("vmnet-rs-ep-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut o = BrokerOptions::new();
        o.backend = Backend::Hub;
        o.settings.idle_timeout = 0;
        o.settings.allowed_users = vec![allowed_uid.to_string()];
        o.settings.allowed_groups = vec![];
        o.monitor_interval = Duration::from_millis(50);
        o.endpoint_dir = Some(dir.join("ep"));
        let b = Broker::start_unix(o, Socket::bind(&dir.join("broker.sock")).unwrap()).unwrap();
        (b, dir.join("ep"))
    }

    fn wait_for(what: &str, f: impl FnMut() -> bool) {
        crate::test_support::wait_until(what, Duration::from_secs(20), f)
    }

    fn frame(tag: u8, len: usize) -> Vec<u8> {
        let mut f = vec![tag; len];
        f[..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, tag]);
        f
    }

    fn send_stream(s: &mut UnixStream, f: &[u8]) {
        framing::write_frame(s, f).unwrap();
    }

    fn recv_stream(s: &mut UnixStream) -> Vec<u8> {
        framing::read_frame(s).unwrap()
    }

    /// One counter of one direction (`vm_to_host`, `host_to_vm`), summed over
    /// the endpoint ports of `network` in the broker's status.
    fn port_counter_sum(b: &Broker, network: &str, direction: &str, counter: &str) -> i64 {
        let st = b.core().status();
        let ports = st.get_dict("endpoints").unwrap().get_dict(network).unwrap().get_dict("ports").unwrap();
        ports
            .iter()
            .map(|(_, p)| match p {
                crate::xpc::Value::Dict(d) => d.get_dict(direction).unwrap().get_int(counter).unwrap(),
                _ => 0,
            })
            .sum()
    }

    fn endpoint_ports(b: &Broker, network: &str) -> Vec<(u64, Option<EndpointKind>)> {
        let st = b.core().lock_state();
        st.leases.values().filter(|l| l.network == network).map(|l| (l.id, l.via)).collect()
    }

    #[test]
    fn stream_clients_are_ports_and_bad_frames_close_only_their_own() {
        let (b, dir) = start("stream", uid());
        let path = endpoint_path(&dir, "shared", EndpointKind::Stream);
        assert_eq!(b.core().endpoint_paths()["shared"][&EndpointKind::Stream], path);
        let mut a = UnixStream::connect(&path).unwrap();
        let mut c = UnixStream::connect(&path).unwrap();
        for s in [&a, &c] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        wait_for("two stream ports", || endpoint_ports(&b, "shared").len() == 2);
        assert!(endpoint_ports(&b, "shared").iter().all(|(_, via)| *via == Some(EndpointKind::Stream)));
        // Lengths: the smallest frame, usual ones, the largest at MTU 1500.
        for (i, len) in [14usize, 60, 1000, 1514].into_iter().enumerate() {
            let f = frame(i as u8 + 1, len);
            send_stream(&mut a, &f);
            assert_eq!(recv_stream(&mut c), f, "a {len}-byte frame");
        }
        // The VM's MAC (from its first frame) shows once a frame passed.
        wait_for("the MAC in status", || {
            let st = b.core().lock_state();
            st.leases.values().any(|l| matches!(&l.port, Some(Port::Adaptor(x)) if x.vm_mac() == Some([0x52, 0x54, 0, 0, 0, 1])))
        });
        // A zero-length frame closes that client only.
        let mut bad = UnixStream::connect(&path).unwrap();
        bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        wait_for("the third port", || endpoint_ports(&b, "shared").len() == 3);
        bad.write_all(&0u32.to_be_bytes()).unwrap();
        let mut buf = [0u8; 64];
        let mut got = 0;
        // The hub may have passed frames to it before; read to EOF.
        while let Ok(n) = bad.read(&mut buf) {
            if n == 0 {
                break;
            }
            got += n;
        }
        let _ = got;
        wait_for("the bad client's port to go", || endpoint_ports(&b, "shared").len() == 2);
        // An oversized one too.
        let mut big = UnixStream::connect(&path).unwrap();
        wait_for("the fourth port", || endpoint_ports(&b, "shared").len() == 3);
        // One byte past the largest frame at MTU 1500.
        big.write_all(&1515u32.to_be_bytes()).unwrap();
        wait_for("the oversized client's port to go", || endpoint_ports(&b, "shared").len() == 2);
        // The others still talk.
        let f = frame(9, 100);
        send_stream(&mut c, &f);
        assert_eq!(recv_stream(&mut a), f);
        drop(a);
        drop(c);
        wait_for("every port to go", || endpoint_ports(&b, "shared").is_empty());
        b.stop();
        assert!(!path.exists(), "the socket file is removed on stop");
    }

    fn dgram_client(dir: &Path, name: &str, endpoint: &Path) -> UnixDatagram {
        let p = dir.join(format!("{name}.client.sock"));
        let _ = std::fs::remove_file(&p);
        let s = UnixDatagram::bind(&p).unwrap();
        s.connect(endpoint).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// Two datagram clients `a` and `c` on `shared`, each announced with
    /// vfkit's magic first, once both have their port; and the endpoint path.
    fn two_vfkit_clients(b: &Broker, dir: &Path) -> (PathBuf, UnixDatagram, UnixDatagram) {
        let path = endpoint_path(dir, "shared", EndpointKind::Datagram);
        let a = dgram_client(dir, "a", &path);
        let c = dgram_client(dir, "c", &path);
        a.send(VFKIT_MAGIC).unwrap();
        c.send(VFKIT_MAGIC).unwrap();
        wait_for("two datagram ports", || endpoint_ports(b, "shared").len() == 2);
        (path, a, c)
    }

    #[test]
    fn datagram_clients_get_their_own_ports_and_vfkt_is_swallowed() {
        let (b, dir) = start("dgram", uid());
        let (path, a, c) = two_vfkit_clients(&b, &dir);
        assert!(endpoint_ports(&b, "shared").iter().all(|(_, via)| *via == Some(EndpointKind::Datagram)));
        for len in [14usize, 60, 1514] {
            let f = frame(len as u8, len);
            a.send(&f).unwrap();
            let mut buf = vec![0u8; 65_536];
            let n = c.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &f[..], "a {len}-byte frame, and no VFKT before it");
        }
        // No VFKT reached the network: the hub forwarded only the frames.
        let vm_to_host = |counter: &str| port_counter_sum(&b, "shared", "vm_to_host", counter);
        // The counter moves just after the hub took the frame.
        wait_for("three frames counted", || vm_to_host("packets") == 3);
        // A VFKT passed on would be a 4-byte frame, refused and counted.
        assert_eq!(vm_to_host("errors"), 0);
        // A client whose socket is gone is noticed and its port released.
        drop(a);
        std::fs::remove_file(dir.join("a.client.sock")).unwrap();
        wait_for("the gone client's port to go", || endpoint_ports(&b, "shared").len() == 1);
        // The other one is unharmed: it comes back through the hub to a new client.
        let d = dgram_client(&dir, "d", &path);
        d.send(&frame(1, 60)).unwrap();
        wait_for("the new client's port", || endpoint_ports(&b, "shared").len() == 2);
        let f = frame(7, 70);
        c.send(&f).unwrap();
        let mut buf = vec![0u8; 65_536];
        loop {
            let n = d.recv(&mut buf).unwrap();
            if buf[..n] == f[..] {
                break;
            }
        }
        b.stop();
    }

    #[test]
    fn a_burst_past_the_client_queue_is_delivered_or_counted() {
        let (b, dir) = start("burst", uid());
        let (_path, a, c) = two_vfkit_clients(&b, &dir);
        let host_to_vm = |counter: &str| port_counter_sum(&b, "shared", "host_to_vm", counter);
        // Far more than a client's queue (net.unix.max_dgram_qlen, 10 by
        // default), sent while c reads nothing.
        const BURST: i64 = 100;
        for k in 0..BURST {
            let mut f = frame(1, 60);
            f[14..16].copy_from_slice(&(k as u16).to_be_bytes());
            a.send(&f).unwrap();
        }
        // Every frame the relay wrote is either in c's queue or counted as
        // dropped, once the endpoint gave up on it (after the retry budget).
        wait_for("every frame relayed", || host_to_vm("packets") == BURST);
        c.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65_536];
        let deadline = Instant::now() + Duration::from_secs(20);
        while (got.len() as i64) + host_to_vm("drops") < BURST && Instant::now() < deadline {
            if let Ok(n) = c.recv(&mut buf) {
                assert_eq!(n, 60);
                got.push(u16::from_be_bytes([buf[14], buf[15]]) as i64);
            }
        }
        let drops = host_to_vm("drops");
        assert_eq!(got.len() as i64 + drops, BURST, "delivered {} and dropped {drops}", got.len());
        // What arrived came in order, and nothing arrived twice.
        assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
        b.stop();
    }

    #[test]
    fn a_datagram_over_the_largest_frame_is_dropped_and_counted() {
        let (b, dir) = start("cut", uid());
        let (_path, a, c) = two_vfkit_clients(&b, &dir);
        let vm_to_host = |counter: &str| port_counter_sum(&b, "shared", "vm_to_host", counter);
        // Longer than the endpoint's buffer: it would arrive cut.
        a.send(&frame(3, DATAGRAM_BYTES + 100)).unwrap();
        let f = frame(4, 60);
        a.send(&f).unwrap();
        let mut buf = vec![0u8; 65_536];
        let n = c.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &f[..], "only the whole frame is passed on");
        wait_for("the whole frame counted", || vm_to_host("packets") == 1);
        assert_eq!(vm_to_host("drops"), 1, "the cut one is dropped and counted");
        b.stop();
    }

    #[test]
    fn refused_peers_are_closed_and_counted() {
        let (b, dir) = start("refused", uid().wrapping_add(4242));
        let path = endpoint_path(&dir, "shared", EndpointKind::Stream);
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(s.read(&mut buf).unwrap(), 0, "a refused stream peer is closed");
        let dg = dgram_client(&dir, "r", &endpoint_path(&dir, "shared", EndpointKind::Datagram));
        dg.send(&frame(1, 60)).unwrap();
        wait_for("two refusals counted", || b.core().lock_state().counters.refused == 2);
        assert!(b.core().lock_state().leases.is_empty());
        assert!(b.core().lock_state().networks.is_empty(), "a refused peer creates no network");
        b.stop();
    }

    fn options_with_dir(dir: &Path) -> BrokerOptions {
        let mut o = BrokerOptions::new();
        o.backend = Backend::Hub;
        o.settings.idle_timeout = 0;
        o.settings.allowed_users = vec![uid().to_string()];
        o.endpoint_dir = Some(dir.to_owned());
        o
    }

    #[test]
    fn a_path_past_the_limit_a_live_path_and_a_stale_file() {
        let base = std::env::temp_dir().join(format!("vmnet-rs-ep-{}-paths", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        // Too long: refused at start, naming the limit and the fix.
        let long = base.join("d".repeat(90));
        let err = Broker::start_unix(options_with_dir(&long), Socket::bind(&base.join("b1.sock")).unwrap()).err().expect("a path past the limit");
        let text = err.to_string();
        assert!(text.contains(&format!("{}-byte limit", max_path_bytes())) && text.contains("--endpoint-dir"), "{text}");
        // Another process listens on a path: refused, its file left alone.
        let ep = base.join("ep");
        std::fs::create_dir_all(&ep).unwrap();
        let live = std::os::unix::net::UnixListener::bind(endpoint_path(&ep, "host", EndpointKind::Stream)).unwrap();
        let err = Broker::start_unix(options_with_dir(&ep), Socket::bind(&base.join("b2.sock")).unwrap()).err().expect("a live path");
        assert!(err.to_string().contains("another process serves this path"), "{err}");
        assert!(endpoint_path(&ep, "host", EndpointKind::Stream).exists());
        // Once it is gone (its file stays behind, as after a crash), the file is replaced.
        drop(live);
        let b = Broker::start_unix(options_with_dir(&ep), Socket::bind(&base.join("b3.sock")).unwrap()).unwrap();
        UnixStream::connect(endpoint_path(&ep, "host", EndpointKind::Stream)).unwrap();
        b.stop();
        let _ = std::fs::remove_dir_all(&base);
    }
}
