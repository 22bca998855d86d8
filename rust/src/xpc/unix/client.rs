//! The client side of the Unix transport: one connection, one request at a
//! time. Used by the Python `Client` and by tests; runs on the caller's
//! thread (blocking).
//!
//! The connection is the client's identity for leases: whatever the broker
//! hands out over it is released when it closes (explicitly, on drop, or
//! when the process dies and the kernel closes the socket).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::codec::{self, MAX_RECORD_BYTES};
use super::sys::{self, Received};
use crate::xpc::{Dict, Error};

pub struct Client {
    fd: OwnedFd,
    path: PathBuf,
    buf: Vec<u8>,
    /// A request timed out: its reply may still arrive and would be taken
    /// for the next request's, so the connection is not used again.
    broken: bool,
}

impl Client {
    /// Connects to the broker socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, Error> {
        let fd = sys::seqpacket_socket().map_err(|source| Error::Io { op: "create a socket", source })?;
        sys::connect(&fd, path).map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ECONNREFUSED) => {
                    "start one with `vmnet-rs broker` (or `vmnet-rs install`), or point --socket / VMNET_RS_SOCKET at a running one"
                }
                Some(libc::EACCES) | Some(libc::EPERM) => "the socket's permissions do not let this user connect",
                _ => "check that the broker is running",
            };
            Error::Unavailable(format!("no broker answers on {}: {e}; {hint}", path.display()))
        })?;
        Ok(Client { fd, path: path.to_owned(), buf: vec![0; MAX_RECORD_BYTES + 1], broken: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection's socket (for polling whether the broker went away).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Gives the connection's socket to the caller, who then holds the
    /// leases: a process that execs a VM with it inherited makes the VM the
    /// lease holder (`vmnet-rs run`).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Bounds how long [`Client::request`] waits for a reply (None: forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), Error> {
        sys::set_recv_timeout(self.fd.as_raw_fd(), timeout).map_err(|source| Error::Io { op: "set the reply timeout", source })
    }

    /// Sends `message` and waits for the reply.
    pub fn request(&mut self, message: &Dict) -> Result<Dict, Error> {
        let (bytes, fds) = codec::encode(message)?;
        self.request_raw(&bytes, &fds)
    }

    /// Sends an already-encoded record (tests send malformed ones) and waits
    /// for the reply.
    pub fn request_raw(&mut self, bytes: &[u8], fds: &[RawFd]) -> Result<Dict, Error> {
        if self.broken {
            return Err(Error::Transport(format!(
                "the connection to the broker on {} timed out earlier and cannot be used again; connect anew",
                self.path.display()
            )));
        }
        sys::send_record(self.fd.as_raw_fd(), bytes, fds).map_err(|source| self.gone_or(source, "send the request to the broker"))?;
        self.receive()
    }

    /// A broker that went away (EPIPE, ECONNRESET) as one line that says
    /// what to do; other errors as they are.
    fn gone_or(&self, source: std::io::Error, op: &'static str) -> Error {
        match source.raw_os_error() {
            Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN) => Error::Unavailable(format!(
                "the broker on {} went away (it stopped or crashed; see its log): check with `vmnet-rs status`, start it again, and retry",
                self.path.display()
            )),
            _ => Error::Io { op, source },
        }
    }

    fn receive(&mut self) -> Result<Dict, Error> {
        match sys::recv_record(self.fd.as_raw_fd(), &mut self.buf) {
            Ok(Received::Eof) => Err(Error::Unavailable(format!(
                "the broker on {} went away without replying (it stopped or crashed; see its log): check with `vmnet-rs status`, start it again, and retry",
                self.path.display()
            ))),
            Ok(Received::Record { len, fds, truncated, fds_truncated }) => {
                if truncated {
                    return Err(Error::TooLarge { size: len, limit: MAX_RECORD_BYTES });
                }
                if fds_truncated {
                    return Err(Error::Malformed(format!("the broker's reply carried more than {} fds", codec::MAX_FDS)));
                }
                // A reply larger than one record goes on in further ones;
                // its fds come with the first.
                let mut joiner = codec::Joiner::default();
                let mut complete = joiner.push(&self.buf[..len]).inspect_err(|_| self.broken = true)?;
                while !complete {
                    complete = self.next_record(&mut joiner)?;
                }
                codec::decode_with(joiner.message(), fds, &codec::Limits::REPLY)
            }
            Err(e) => Err(self.receive_failed(e)),
        }
    }

    /// Receives one more record of a reply into `joiner`; true once whole.
    /// Any failure leaves the connection unusable (the rest of the reply
    /// could be taken for the next one's).
    fn next_record(&mut self, joiner: &mut codec::Joiner) -> Result<bool, Error> {
        self.broken = true;
        let complete = match sys::recv_record(self.fd.as_raw_fd(), &mut self.buf) {
            Ok(Received::Eof) => {
                return Err(Error::Unavailable(format!("the broker on {} went away in the middle of a reply", self.path.display())))
            }
            Ok(Received::Record { len, fds, truncated, .. }) => {
                if truncated {
                    return Err(Error::TooLarge { size: len, limit: MAX_RECORD_BYTES });
                }
                if !fds.is_empty() {
                    return Err(Error::Malformed("fds on a record after the first of a reply".into()));
                }
                joiner.push(&self.buf[..len])?
            }
            Err(e) => return Err(self.receive_failed(e)),
        };
        self.broken = false;
        Ok(complete)
    }

    fn receive_failed(&mut self, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            self.broken = true;
            return Error::Transport(format!("the broker on {} did not reply in time", self.path.display()));
        }
        self.gone_or(e, "receive the broker's reply")
    }
}
