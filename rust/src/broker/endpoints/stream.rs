//! The stream endpoint: a listening SOCK_STREAM socket. Each accepted
//! connection is one VM: the broker starts an interface (its own port on
//! the network) and a `stream` adaptor whose VM end *is* the accepted
//! socket (4-byte big-endian length + frame, as QEMU `-netdev stream` and
//! socket_vmnet). No extra hop: the relay reads the accepted socket itself.
//!
//! Thread: the endpoint thread (`vmnet-rs-endpoints`) accepts; the port's
//! relay thread does the rest.
//!
//! Invariants: an accepted connection is handed to its port or closed
//! (credentials unreadable, peer refused); it never raises SIGPIPE
//! (`SO_NOSIGPIPE` on macOS, `MSG_NOSIGNAL` in the relay on Linux).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{EndpointEnd, Worker, LISTEN_BACKLOG};
use crate::sys;
use crate::xpc::Peer;

impl Worker {
    /// Accepts every pending connection on stream endpoint `i`.
    pub(super) fn accept(&mut self, i: usize) {
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
            let _ = sys::set_flags(conn.as_raw_fd());
            // A write to a VM that went away fails with EPIPE instead of
            // raising SIGPIPE (Linux: MSG_NOSIGNAL on every send).
            #[cfg(target_vendor = "apple")]
            let _ = sys::set_int_option(conn.as_raw_fd(), libc::SOL_SOCKET, libc::SO_NOSIGPIPE, 1);
            let (uid, gid, pid) = match sys::peer_credentials(conn.as_raw_fd()) {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("endpoint {}: could not read the peer's credentials ({e}); connection closed", s.path.display());
                    continue;
                }
            };
            let peer = Peer { uid, gid, pid, connection: self.next_connection() };
            let (network, path) = (s.network.clone(), s.path.clone());
            let Some(core) = self.core() else { return };
            match core.open_endpoint_port(&network, &peer, EndpointEnd::Stream(conn)) {
                Ok((lease, _)) => log::info!("endpoint {}: pid {pid} uid {uid} connected (lease {lease})", path.display()),
                Err(f) => log::warn!("endpoint {}: pid {pid} uid {uid} refused: {}", path.display(), f.message),
            }
        }
    }
}
