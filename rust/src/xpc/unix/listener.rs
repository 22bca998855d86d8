//! The broker side of the Unix transport: the listening socket (bound here
//! or inherited from systemd) and a thread per connection.
//!
//! Threads: one accept thread (`vmnet-rs-accept`) polls the listening socket
//! and a wake-up eventfd; each accepted connection gets its own thread
//! (`vmnet-rs-conn-N`) that reads a record, decodes it, calls
//! [`Handler::request`], sends the reply, and on EOF or error calls
//! [`Handler::disconnected`] exactly once before closing the socket.
//!
//! Invariants: a bad record (undecodable, too large, too many fds) gets an
//! error reply from [`Handler::malformed`] and the connection keeps going;
//! a panic in the handler is caught and answered as an internal error; every
//! fd that arrives is either handed to the handler inside the message or
//! closed. [`Listener::stop`] shuts every connection down and joins every
//! thread, so after it returns no handler call is running.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::codec::{self, MAX_MESSAGE_BYTES};
use super::sys::{self, Received};
use crate::xpc::{Dict, Error, Handler, Peer, Value};

/// Pending connections the kernel queues before `accept`.
const LISTEN_BACKLOG: i32 = 64;
/// Most connections served at once (a thread each); more are closed at
/// once, so a local client opening connections in a loop cannot exhaust
/// the broker's threads. Far above any real use (one per VM wrapper).
pub const MAX_CONNECTIONS: usize = 512;

/// A listening socket, not yet served.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    path: PathBuf,
    /// We bound the path and unlink it when the socket is dropped; false for
    /// a socket systemd made (it owns the path).
    owns_path: bool,
    /// Set once the path was removed, so it is removed at most once (a later
    /// broker may have bound the same path).
    unlinked: AtomicBool,
    activated: bool,
}

impl Socket {
    /// The broker socket systemd passed (LISTEN_PID is us; the fd named
    /// `broker` in LISTEN_FDNAMES, else the first one not named as an
    /// endpoint; see `xpc/activation.rs`), if any.
    pub fn from_systemd() -> Result<Option<Socket>, Error> {
        let Some(fd) = crate::xpc::activation::take_systemd_broker() else { return Ok(None) };
        let raw = fd.as_raw_fd();
        let ty = sys::socket_int_option(raw, libc::SO_TYPE).map_err(|source| Error::Io { op: "inspect the broker socket systemd passed", source })?;
        let domain = sys::socket_int_option(raw, libc::SO_DOMAIN).map_err(|source| Error::Io { op: "inspect the broker socket systemd passed", source })?;
        if ty != libc::SOCK_SEQPACKET || domain != libc::AF_UNIX {
            return Err(Error::Transport(format!(
                "the broker socket systemd passed (fd {raw}) is not an AF_UNIX SOCK_SEQPACKET socket: set ListenSequentialPacket= and FileDescriptorName=broker in vmnet-rs.socket"
            )));
        }
        let path = crate::xpc::activation::bound_path(raw).unwrap_or_default();
        Ok(Some(Socket { fd, path, owns_path: false, unlinked: AtomicBool::new(false), activated: true }))
    }

    /// Binds `path` (mode 0666: callers are checked by SO_PEERCRED, not by
    /// file permissions), making its directory if needed. A stale socket
    /// file nobody answers on is replaced; a live one is an error.
    pub fn bind(path: &Path) -> Result<Socket, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|source| Error::Io { op: "create the socket directory", source })?;
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
            }
        }
        let fd = sys::seqpacket_socket().map_err(|source| Error::Io { op: "create the broker socket", source })?;
        match sys::bind_listen(&fd, path, LISTEN_BACKLOG) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                let probe = sys::seqpacket_socket().map_err(|source| Error::Io { op: "create a probe socket", source })?;
                if sys::connect(&probe, path).is_ok() {
                    return Err(Error::Transport(format!(
                        "another broker already listens on {}: stop it, or pick another socket with --socket or VMNET_RS_SOCKET",
                        path.display()
                    )));
                }
                std::fs::remove_file(path).map_err(|source| Error::Io { op: "remove the stale broker socket", source })?;
                sys::bind_listen(&fd, path, LISTEN_BACKLOG).map_err(|source| Error::Io { op: "bind the broker socket", source })?;
            }
            Err(source) => return Err(Error::Io { op: "bind the broker socket", source }),
        }
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666));
        Ok(Socket { fd, path: path.to_owned(), owns_path: true, unlinked: AtomicBool::new(false), activated: false })
    }

    /// The systemd socket if there is one, else a socket bound at `path`.
    pub fn open(path: &Path) -> Result<Socket, Error> {
        match Socket::from_systemd()? {
            Some(s) => Ok(s),
            None => Socket::bind(path),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True if systemd passed this socket.
    pub fn activated(&self) -> bool {
        self.activated
    }
}

impl Socket {
    /// Removes the socket file if we bound it (once): new clients then get
    /// "no broker" at once instead of queueing on a socket nobody accepts.
    fn unlink(&self) {
        if self.owns_path && !self.unlinked.swap(true, Ordering::SeqCst) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.unlink();
    }
}


struct Shared {
    handler: Arc<dyn Handler>,
    stopping: AtomicBool,
    /// eventfd that wakes the accept thread for stop.
    wake: OwnedFd,
    /// Live connections: id -> socket fd (for shutdown on stop). An entry is
    /// removed, under this lock, before its fd is closed.
    connections: Mutex<HashMap<u64, RawFd>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_connection: AtomicU64,
}

/// A socket being served.
pub struct Listener {
    shared: Arc<Shared>,
    accept_thread: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
    activated: bool,
    _socket: Arc<Socket>,
}

impl Listener {
    /// Starts the accept thread on `socket`, calling `handler` for every request.
    pub fn start(socket: Socket, handler: Arc<dyn Handler>) -> Result<Listener, Error> {
        // SAFETY: eventfd(2) with valid flags; checked below.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(Error::Io { op: "create the listener's wake-up eventfd", source: io::Error::last_os_error() });
        }
        // SAFETY: eventfd returned a new fd nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        let shared = Arc::new(Shared {
            handler,
            stopping: AtomicBool::new(false),
            wake,
            connections: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            next_connection: AtomicU64::new(1),
        });
        let path = socket.path.clone();
        let activated = socket.activated;
        let socket = Arc::new(socket);
        let thread = {
            let shared = Arc::clone(&shared);
            let socket = Arc::clone(&socket);
            std::thread::Builder::new()
                .name("vmnet-rs-accept".into())
                .spawn(move || accept_loop(&shared, socket.fd.as_raw_fd()))
                .map_err(|source| Error::Io { op: "start the accept thread", source })?
        };
        Ok(Listener { shared, accept_thread: Mutex::new(Some(thread)), path, activated, _socket: socket })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn activated(&self) -> bool {
        self.activated
    }

    /// Connections open now.
    pub fn connection_count(&self) -> usize {
        lock(&self.shared.connections).len()
    }

    /// Stops accepting, shuts every connection down and joins all threads
    /// (each connection's `disconnected` has run when this returns).
    /// Idempotent. Must not be called from a handler call.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes to our eventfd.
        unsafe { libc::write(self.shared.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if let Some(t) = lock(&self.accept_thread).take() {
            let _ = t.join();
        }
        self._socket.unlink();
        // SHUT_RD: idle connections see EOF now; a request being handled
        // still gets its reply, then sees EOF.
        for &fd in lock(&self.shared.connections).values() {
            sys::shutdown_read(fd);
        }
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn accept_loop(shared: &Arc<Shared>, listen_fd: RawFd) {
    let mut failures = 0u32;
    while !shared.stopping.load(Ordering::SeqCst) {
        let mut pfd = [
            libc::pollfd { fd: listen_fd, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: shared.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: pfd is a valid array of two pollfds.
        let r = unsafe { libc::poll(pfd.as_mut_ptr(), 2, -1) };
        if r < 0 || pfd[1].revents != 0 {
            continue;
        }
        if pfd[0].revents == 0 {
            continue;
        }
        let conn = match sys::accept(listen_fd) {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                failures += 1;
                if failures % 100 == 1 {
                    log::warn!("accept on the broker socket failed: {e}");
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        failures = 0;
        if lock(&shared.connections).len() >= MAX_CONNECTIONS {
            log::warn!("refused a connection: {MAX_CONNECTIONS} connections are open already");
            continue;
        }
        let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
        let peer = match sys::peer_credentials(conn.as_raw_fd()) {
            Ok(c) => Peer { uid: c.uid, gid: c.gid, pid: c.pid, connection: id },
            Err(e) => {
                log::warn!("SO_PEERCRED on a new connection failed ({e}); closing it");
                continue;
            }
        };
        lock(&shared.connections).insert(id, conn.as_raw_fd());
        let worker = {
            let shared = Arc::clone(shared);
            std::thread::Builder::new().name(format!("vmnet-rs-conn-{id}")).spawn(move || serve_connection(&shared, conn, peer))
        };
        match worker {
            Ok(t) => {
                let mut threads = lock(&shared.threads);
                threads.retain(|t| !t.is_finished());
                threads.push(t);
            }
            Err(e) => {
                // The closure (and the connection fd with it) was dropped.
                lock(&shared.connections).remove(&id);
                log::warn!("could not start a thread for a connection: {e}");
            }
        }
    }
}

fn serve_connection(shared: &Shared, conn: OwnedFd, peer: Peer) {
    let fd = conn.as_raw_fd();
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES + 1];
    log::debug!("connection {} from pid {} uid {}", peer.connection, peer.pid, peer.uid);
    loop {
        let received = match sys::recv_record(fd, &mut buf) {
            Ok(r) => r,
            Err(e) => {
                if !shared.stopping.load(Ordering::SeqCst) && e.raw_os_error() != Some(libc::ECONNRESET) {
                    log::debug!("connection {}: receive failed: {e}", peer.connection);
                }
                break;
            }
        };
        let (len, fds, truncated, fds_truncated) = match received {
            Received::Eof => break,
            Received::Record { len, fds, truncated, fds_truncated } => (len, fds, truncated, fds_truncated),
        };
        let decoded = if truncated {
            drop(fds);
            Err(Error::TooLarge { size: len, limit: MAX_MESSAGE_BYTES })
        } else if fds_truncated {
            drop(fds);
            Err(Error::Malformed(format!("more than {} fds attached", codec::MAX_FDS)))
        } else {
            codec::decode(&buf[..len], fds)
        };
        let reply = match decoded {
            Ok(message) => match catch_unwind(AssertUnwindSafe(|| shared.handler.request(&peer, message))) {
                Ok(reply) => reply,
                Err(_) => {
                    log::error!("connection {}: the request handler panicked", peer.connection);
                    internal_error_reply("the broker failed while handling the request (a bug): see its log")
                }
            },
            Err(e) => {
                log::info!("connection {} (pid {}): bad message: {e}", peer.connection, peer.pid);
                catch_unwind(AssertUnwindSafe(|| shared.handler.malformed(&peer, &e)))
                    .unwrap_or_else(|_| internal_error_reply("the broker failed while answering a bad message"))
            }
        };
        if let Err(e) = send_reply(fd, &reply) {
            log::debug!("connection {}: reply not sent: {e}", peer.connection);
            break;
        }
    }
    lock(&shared.connections).remove(&peer.connection);
    sys::shutdown(fd);
    if catch_unwind(AssertUnwindSafe(|| shared.handler.disconnected(&peer))).is_err() {
        log::error!("connection {}: the disconnect handler panicked", peer.connection);
    }
    drop(conn);
}

fn internal_error_reply(message: &str) -> Dict {
    Dict::new()
        .with("error", Value::Int(7))
        .with("message", Value::String(message.into()))
        .with("Error", Value::String(message.into()))
}

/// Sends `reply` in as many records as it needs (docs/protocol.md,
/// "Encoding"): its fds go with the first.
fn send_reply(fd: RawFd, reply: &Dict) -> Result<(), Error> {
    let (bytes, fds) = match codec::encode_with(reply, &codec::Limits::REPLY) {
        Ok(e) => e,
        Err(e) => {
            log::error!("a reply could not be encoded: {e}");
            codec::encode(&internal_error_reply(&format!("the broker's reply could not be encoded: {e}")))?
        }
    };
    for (i, record) in codec::split_reply(&bytes).iter().enumerate() {
        let fds: &[RawFd] = if i == 0 { &fds } else { &[] };
        sys::send_record(fd, record, fds).map_err(|source| Error::Io { op: "send the reply", source })?;
    }
    Ok(())
}
