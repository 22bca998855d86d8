//! The Linux (and any Unix) transport: an AF_UNIX SOCK_SEQPACKET socket,
//! one record per request, a reply in one or more records, fds in SCM_RIGHTS, the caller's identity from
//! SO_PEERCRED, and systemd socket activation (LISTEN_FDS/LISTEN_PID).
//!
//! `codec` is the byte encoding (docs/protocol.md), `sys` the raw socket
//! calls, `listener` the broker side (a thread per connection), `client` the
//! caller side.

pub mod client;
pub mod codec;
pub mod listener;
mod sys;

use std::path::{Path, PathBuf};

pub use client::Client;
pub use listener::{Listener, Socket};

/// Where the broker listens when neither `--socket` nor [`SOCKET_ENV`] says.
pub const DEFAULT_SOCKET: &str = crate::xpc::DEFAULT_SOCKET_PATH;
pub use crate::xpc::SOCKET_ENV;

/// The socket path: `explicit` if given, else `$VMNET_RS_SOCKET` if set and
/// not empty, else [`DEFAULT_SOCKET`].
pub fn socket_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_owned();
    }
    match std::env::var_os(SOCKET_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xpc::{Dict, Handler, Peer, Value};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::{Arc, Mutex};

    /// Echoes requests back with the caller's uid, keeps a log of disconnects.
    #[derive(Default)]
    struct Echo {
        disconnected: Mutex<Vec<u64>>,
    }

    impl Handler for Echo {
        fn request(&self, peer: &Peer, mut message: Dict) -> Dict {
            if message.get_str("panic").is_some() {
                panic!("asked to");
            }
            if let Some(ms) = message.get_int("sleep_ms") {
                std::thread::sleep(std::time::Duration::from_millis(ms as u64));
            }
            // A reply of that many keys of 1 KiB each, beyond one record.
            if let Some(n) = message.get_int("grow") {
                let big = (0..n).fold(Dict::new(), |d, i| d.with(format!("{i:05}"), Value::Data(vec![i as u8; 1024])));
                message.insert("big", Value::Dict(big));
            }
            message.insert("uid", Value::Int(peer.uid as i64));
            message.insert("connection", Value::Int(peer.connection as i64));
            message
        }
        fn disconnected(&self, peer: &Peer) {
            self.disconnected.lock().unwrap().push(peer.connection);
        }
        // The handler words the answer to what the transport could not
        // decode (here as the broker does: both protocol styles).
        fn malformed(&self, _peer: &Peer, error: &crate::xpc::Error) -> Dict {
            let text = format!("bad request: {error}");
            Dict::new()
                .with("Error", Value::String(text.clone()))
                .with("error", Value::Int(4))
                .with("message", Value::String(text))
        }
        fn refused(&self, _peer: Option<&Peer>, reason: &str) -> Dict {
            Dict::new().with("Error", Value::String(reason.into()))
        }
    }

    fn temp_socket(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmnet-rs-xpc-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("broker.sock")
    }

    #[test]
    fn request_reply_with_fds_and_disconnect() {
        let path = temp_socket("basic");
        let echo = Arc::new(Echo::default());
        let listener = Listener::start(Socket::bind(&path).unwrap(), echo.clone()).unwrap();
        let mut client = Client::connect(&path).unwrap();
        let mut p = [0; 2];
        // SAFETY: p holds two fds.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: pipe2 made both fds; we own them.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        let msg = Dict::new().with("k", Value::String("v".into())).with("fd", Value::Fd(w));
        let mut reply = client.request(&msg).unwrap();
        drop(msg);
        assert_eq!(reply.get_str("k"), Some("v"));
        // SAFETY: getuid cannot fail.
        assert_eq!(reply.get_int("uid"), Some(unsafe { libc::getuid() } as i64));
        // The fd came back through the broker: writing to it reaches our pipe.
        let w2 = reply.take_fd("fd").unwrap();
        // SAFETY: writes 1 byte from a valid buffer.
        assert_eq!(unsafe { libc::write(w2.as_raw_fd(), b"x".as_ptr().cast(), 1) }, 1);
        let mut b = [0u8; 1];
        // SAFETY: reads 1 byte into b.
        assert_eq!(unsafe { libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 1) }, 1);
        // A malformed record gets an error reply and the connection goes on.
        let bad = client.request_raw(b"nonsense", &[]).unwrap();
        assert_eq!(bad.get_int("error"), Some(4));
        assert!(bad.get_str("Error").unwrap().contains("magic"));
        // A panicking handler is answered as an internal error.
        let err = client.request(&Dict::new().with("panic", Value::String(String::new()))).unwrap();
        assert_eq!(err.get_int("error"), Some(7));
        assert_eq!(client.request(&Dict::new()).unwrap().len(), 2);
        let id = reply.get_int("connection").unwrap() as u64;
        drop(client);
        crate::test_support::wait_until("disconnected is called", std::time::Duration::from_secs(10), || {
            echo.disconnected.lock().unwrap().contains(&id)
        });
        listener.stop();
        drop(listener);
        assert!(!path.exists(), "the socket file was left behind");
    }

    #[test]
    fn oversized_record_is_refused_and_serving_goes_on() {
        let path = temp_socket("big");
        let listener = Listener::start(Socket::bind(&path).unwrap(), Arc::new(Echo::default())).unwrap();
        let mut client = Client::connect(&path).unwrap();
        let big = vec![0u8; codec::MAX_MESSAGE_BYTES + 100];
        let reply = client.request_raw(&big, &[]).unwrap();
        assert_eq!(reply.get_int("error"), Some(4));
        assert!(reply.get_str("message").unwrap().contains("too large"), "{reply:?}");
        assert!(client.request(&Dict::new()).is_ok());
        listener.stop();
    }

    #[test]
    fn a_reply_larger_than_a_record_arrives_whole_with_its_fd() {
        let path = temp_socket("bigreply");
        let listener = Listener::start(Socket::bind(&path).unwrap(), Arc::new(Echo::default())).unwrap();
        let mut client = Client::connect(&path).unwrap();
        let devnull = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        // 400 keys of 1 KiB: beyond both request limits (64 KiB, 256 keys).
        let reply = client.request(&Dict::new().with("grow", Value::Int(400)).with("fd", Value::Fd(devnull))).unwrap();
        let big = reply.get_dict("big").unwrap();
        assert_eq!(big.len(), 400);
        assert!(matches!(big.get("00399"), Some(Value::Data(d)) if d.len() == 1024 && d[0] == (399 % 256) as u8));
        assert!(matches!(reply.get("fd"), Some(Value::Fd(_))));
        // The connection goes on: the next reply is not a leftover record.
        assert_eq!(client.request(&Dict::new().with("n", Value::Int(5))).unwrap().get_int("n"), Some(5));
        listener.stop();
    }

    #[test]
    fn second_broker_on_a_live_socket_is_refused_and_stale_one_replaced() {
        let path = temp_socket("twice");
        let first = Listener::start(Socket::bind(&path).unwrap(), Arc::new(Echo::default())).unwrap();
        let err = Socket::bind(&path).unwrap_err().to_string();
        assert!(err.contains("another broker"), "{err}");
        first.stop();
        drop(first);
        // A leftover socket file (a crashed broker) is replaced.
        let stale = sys::seqpacket_socket().unwrap();
        sys::bind_listen(&stale, &path, 1).unwrap();
        drop(stale);
        assert!(path.exists());
        let second = Listener::start(Socket::bind(&path).unwrap(), Arc::new(Echo::default())).unwrap();
        assert!(Client::connect(&path).unwrap().request(&Dict::new()).is_ok());
        second.stop();
    }

    #[test]
    fn stop_ends_open_connections() {
        let path = temp_socket("stop");
        let echo = Arc::new(Echo::default());
        let listener = Listener::start(Socket::bind(&path).unwrap(), echo.clone()).unwrap();
        let mut clients: Vec<Client> = (0..3).map(|_| Client::connect(&path).unwrap()).collect();
        for c in &mut clients {
            c.request(&Dict::new()).unwrap();
        }
        assert_eq!(listener.connection_count(), 3);
        listener.stop();
        assert_eq!(echo.disconnected.lock().unwrap().len(), 3);
        assert!(clients[0].request(&Dict::new()).is_err());
    }

    #[test]
    fn a_timed_out_connection_is_not_reused() {
        let path = temp_socket("timeout");
        let listener = Listener::start(Socket::bind(&path).unwrap(), Arc::new(Echo::default())).unwrap();
        let mut client = Client::connect(&path).unwrap();
        client.set_timeout(Some(std::time::Duration::from_millis(50))).unwrap();
        let err = client.request(&Dict::new().with("sleep_ms", Value::Int(500))).unwrap_err().to_string();
        assert!(err.contains("did not reply in time"), "{err}");
        let err = client.request(&Dict::new()).unwrap_err().to_string();
        assert!(err.contains("cannot be used again"), "{err}");
        listener.stop();
    }

    #[test]
    fn connecting_to_nothing_says_what_to_do() {
        let err = Client::connect(Path::new("/nonexistent/vmnet-rs.sock")).err().unwrap().to_string();
        assert!(err.contains("no broker answers") && err.contains("vmnet-rs broker"), "{err}");
    }

    #[test]
    fn socket_path_precedence() {
        assert_eq!(socket_path(Some(Path::new("/x.sock"))), PathBuf::from("/x.sock"));
    }
}
