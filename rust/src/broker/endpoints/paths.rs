//! Where endpoints live and how their sockets are made: the path rule
//! (`<dir>/<network>.<kind>.sock`), the service manager's names for them,
//! binding (or taking over a socket systemd or launchd holds), modes and
//! group, and the receive queue, buffers and credential passing of a
//! datagram endpoint (Linux: made in a private network namespace when the
//! broker's own allows too short a queue; the host's setting is never
//! changed).
//!
//! Owner: [`super::Endpoints::start`], on the thread that starts the
//! broker; nothing here runs on the endpoint thread but [`Bound::unlink`].
//!
//! Invariants: a path is unlinked only if it was bound here
//! ([`Bound::owns_path`]), never one a service manager made; a live socket
//! at a path is never taken over (only a stale file is removed); on error
//! nothing bound here is left behind.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::datagram::{DatagramQueue, QueueMade, QUEUE_FRAMES, RECV_BUFFER_BYTES, SEND_BUFFER_BYTES};
use super::{io_error, Error, LISTEN_BACKLOG};
use crate::adaptor::socket as adaptor_socket;
use crate::config::EndpointKind;
use crate::sys;

pub use crate::sys::max_path_bytes;

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

/// Whether a socket of type `ty` answers at `path`.
pub(super) fn someone_listens(path: &Path, ty: libc::c_int) -> bool {
    let Ok(probe) = sys::unix_socket(ty, true) else { return false };
    match sys::connect(probe.as_raw_fd(), path.as_os_str().as_bytes()) {
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
pub(super) struct Bound {
    pub(super) fd: OwnedFd,
    pub(super) path: PathBuf,
    pub(super) network: String,
    pub(super) kind: EndpointKind,
    /// We bound the path and remove it on stop.
    pub(super) owns_path: bool,
    /// A datagram endpoint's receive queue (`None`: a stream endpoint).
    pub(super) queue: Option<DatagramQueue>,
}

impl Bound {
    pub(super) fn unlink(&self) {
        if self.owns_path {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds (or takes over from the service manager) one endpoint socket.
pub(super) fn open_endpoint(dir: &Path, network: &str, kind: EndpointKind, access: &Access) -> Result<Bound, Error> {
    let path = endpoint_path(dir, network, kind);
    let ty = match kind {
        EndpointKind::Stream => libc::SOCK_STREAM,
        EndpointKind::Datagram => libc::SOCK_DGRAM,
    };
    let name = activation_name(network, kind);
    if let Some(fd) = crate::xpc::activation::take(&name).map_err(io_error("take the socket the service manager holds", &path))? {
        let got = sys::socket_type(fd.as_raw_fd()).map_err(io_error("inspect the socket the service manager passed", &path))?;
        if got != ty {
            return Err(Error::Refused {
                path: path.display().to_string(),
                message: format!(
                    "the socket passed as {name:?} is of the wrong type: use {} for it in the socket unit (or plist)",
                    if ty == libc::SOCK_STREAM { "ListenStream=" } else { "ListenDatagram=" }
                ),
            });
        }
        sys::set_flags(fd.as_raw_fd()).map_err(io_error("make the passed socket non-blocking", &path))?;
        let actual = crate::xpc::activation::bound_path(fd.as_raw_fd()).unwrap_or(path);
        let queue = (kind == EndpointKind::Datagram).then(|| DatagramQueue::here(namespace_limit().ok(), QueueMade::ServiceManager));
        return finish_socket(Bound { fd, path: actual, network: network.to_owned(), kind, owns_path: false, queue });
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
    let (fd, queue) = match kind {
        EndpointKind::Stream => (sys::unix_socket(ty, true).map_err(io_error("create the socket", &path))?, None),
        EndpointKind::Datagram => {
            let (fd, queue) = datagram_socket(&path).map_err(io_error("create the socket", &path))?;
            (fd, Some(queue))
        }
    };
    let bind = || sys::bind(fd.as_raw_fd(), path.as_os_str().as_bytes());
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
    let bound = Bound { fd, path: path.clone(), network: network.to_owned(), kind, owns_path: true, queue };
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
        if let Err(e) = sys::cvt(unsafe { libc::listen(bound.fd.as_raw_fd(), LISTEN_BACKLOG) }) {
            bound.unlink();
            return Err(io_error("listen", &path)(e));
        }
    }
    finish_socket(bound)
}

/// This namespace's limit on a new datagram socket's queue (Linux); macOS
/// has none by count.
#[cfg(target_os = "linux")]
fn namespace_limit() -> io::Result<u32> {
    sys::datagram_queue_limit()
}
#[cfg(not(target_os = "linux"))]
fn namespace_limit() -> io::Result<u32> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// A datagram endpoint socket (non-blocking, close-on-exec, unbound) with a
/// receive queue of [`QUEUE_FRAMES`] where this can be had. Linux: made
/// here if this namespace's `net.unix.max_dgram_qlen` is already that deep,
/// else in a private network namespace
/// ([`sys::datagram_socket_in_private_namespace`]; the host's setting is
/// never changed), else here as it is, with the reason kept for `status`
/// and `doctor`. macOS: made here; its queue is bounded by the receive
/// buffer, which [`finish_socket`] raises.
fn datagram_socket(path: &Path) -> io::Result<(OwnedFd, DatagramQueue)> {
    #[cfg(target_os = "linux")]
    {
        let here = namespace_limit();
        if let Ok(n) = here {
            if n >= QUEUE_FRAMES {
                return Ok((sys::unix_socket(libc::SOCK_DGRAM, true)?, DatagramQueue::here(Some(n), QueueMade::Here)));
            }
        }
        match sys::datagram_socket_in_private_namespace(QUEUE_FRAMES, true) {
            Ok(fd) => {
                log::debug!("endpoint {}: receive queue {QUEUE_FRAMES} datagrams (private network namespace)", path.display());
                Ok((fd, DatagramQueue::here(Some(QUEUE_FRAMES), QueueMade::PrivateNamespace)))
            }
            Err(e) => {
                let mut queue = DatagramQueue::here(here.ok(), QueueMade::Fallback);
                queue.reason = Some(e.to_string());
                if let Some(note) = queue.note() {
                    log::warn!("endpoint {}: {note}", path.display());
                }
                Ok((sys::unix_socket(libc::SOCK_DGRAM, true)?, queue))
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (path, QUEUE_FRAMES);
        Ok((sys::unix_socket(libc::SOCK_DGRAM, true)?, DatagramQueue::here(None, QueueMade::Here)))
    }
}

/// Buffers and credential passing on a ready endpoint socket.
pub(super) fn finish_socket(mut b: Bound) -> Result<Bound, Error> {
    if b.kind == EndpointKind::Datagram {
        // Best effort, as the adaptors do (root passes net.core.*mem_max);
        // what the kernel granted is logged and shown by `status` (on
        // macOS the receive buffer is the endpoint's queue: XNU refuses a
        // datagram the receiver's buffer has no room for).
        match adaptor_socket::set_buffers(&b.fd, SEND_BUFFER_BYTES, RECV_BUFFER_BYTES) {
            Ok(got) => {
                log::debug!("endpoint {}: SO_SNDBUF {} SO_RCVBUF {}", b.path.display(), got.send_bytes, got.recv_bytes);
                if let Some(q) = &mut b.queue {
                    q.recv_bytes = Some(got.recv_bytes);
                }
            }
            Err(e) => log::warn!("endpoint {}: could not set its socket buffers: {e}", b.path.display()),
        }
        if let Some(note) = b.queue.as_ref().filter(|q| q.made == QueueMade::ServiceManager).and_then(DatagramQueue::note) {
            log::warn!("endpoint {}: {note}", b.path.display());
        }
        // Blocking, for the relays' sends (each waits for its own client,
        // up to SO_SNDTIMEO; crate::adaptor::vm_shared); every receive on it
        // passes MSG_DONTWAIT.
        if let Err(e) = sys::set_blocking(b.fd.as_raw_fd()).and_then(|()| sys::set_send_timeout(b.fd.as_raw_fd(), crate::adaptor::vm_shared::SEND_WAIT)) {
            b.unlink();
            return Err(io_error("make it blocking with a send timeout", &b.path)(e));
        }
        #[cfg(target_os = "linux")]
        if let Err(e) = sys::set_int_option(b.fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, 1) {
            b.unlink();
            return Err(io_error("turn on SO_PASSCRED", &b.path)(e));
        }
    }
    Ok(b)
}
