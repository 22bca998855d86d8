//! The broker's message model and its transports.
//!
//! A message is a dictionary of string, int64, bool, data, nested dictionary
//! and file-descriptor values, the subset of XPC that the broker protocols
//! use. On macOS it travels as an XPC dictionary over a Mach service
//! (`xpc/apple.rs`); on Linux as one SOCK_SEQPACKET record with the fds in
//! SCM_RIGHTS (`xpc/unix.rs`, encoding in docs/protocol.md). This module does
//! not know what any key means.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

pub mod activation;
#[cfg(apple_api)]
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub mod apple;
pub mod darwin;
pub mod peer_policy;
pub mod session_slot;
pub mod tagged;
#[cfg(target_os = "linux")]
pub mod unix;

/// The broker's Unix socket when neither `--socket` nor `$VMNET_RS_SOCKET`
/// names another (Linux; `unix::socket_path` applies the precedence).
pub const DEFAULT_SOCKET_PATH: &str = crate::config::DEFAULT_SOCKET;
/// The environment variable naming the broker socket, for the broker and
/// every client alike.
pub const SOCKET_ENV: &str = "VMNET_RS_SOCKET";

/// One value in a message.
#[derive(Debug)]
pub enum Value {
    String(String),
    Int(i64),
    Bool(bool),
    Data(Vec<u8>),
    Dict(Dict),
    /// A file descriptor owned by the message; closed when the message drops.
    Fd(OwnedFd),
}

/// A message: string keys, ordered so encodings are deterministic.
#[derive(Debug, Default)]
pub struct Dict {
    entries: BTreeMap<String, Value>,
}

impl Dict {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        self.entries.insert(key.into(), value);
        self
    }

    /// Builder form of [`Dict::insert`].
    pub fn with(mut self, key: impl Into<String>, value: Value) -> Self {
        self.insert(key, value);
        self
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.get(key)
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.entries.remove(key)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.entries.iter()
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.entries.get(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    pub fn get_int(&self, key: &str) -> Option<i64> {
        match self.entries.get(key) {
            Some(Value::Int(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        match self.entries.get(key) {
            Some(Value::Bool(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn get_data(&self, key: &str) -> Option<&[u8]> {
        match self.entries.get(key) {
            Some(Value::Data(v)) => Some(v),
            _ => None,
        }
    }

    pub fn get_dict(&self, key: &str) -> Option<&Dict> {
        match self.entries.get(key) {
            Some(Value::Dict(v)) => Some(v),
            _ => None,
        }
    }

    /// Takes an fd out of the message, so it outlives the message.
    pub fn take_fd(&mut self, key: &str) -> Option<OwnedFd> {
        match self.entries.remove(key) {
            Some(Value::Fd(fd)) => Some(fd),
            Some(other) => {
                self.entries.insert(key.to_owned(), other);
                None
            }
            None => None,
        }
    }

    /// A copy without fds (fds are duplicated, not shared).
    pub fn try_clone(&self) -> std::io::Result<Dict> {
        let mut out = Dict::new();
        for (k, v) in &self.entries {
            let v = match v {
                Value::String(s) => Value::String(s.clone()),
                Value::Int(i) => Value::Int(*i),
                Value::Bool(b) => Value::Bool(*b),
                Value::Data(d) => Value::Data(d.clone()),
                Value::Dict(d) => Value::Dict(d.try_clone()?),
                Value::Fd(fd) => Value::Fd(fd.try_clone()?),
            };
            out.entries.insert(k.clone(), v);
        }
        Ok(out)
    }
}

/// Who sent a request, as the transport saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    /// Unique per connection (session) for the life of the listener; leases
    /// are keyed by it.
    pub connection: u64,
}

/// What a listener calls. Runs on the transport's threads (Linux: one per
/// connection; macOS: the listener's serial queue), so implementations
/// serialise what must be serialised themselves.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request and returns the reply.
    fn request(&self, peer: &Peer, message: Dict) -> Dict;

    /// The connection (session) ended; release what it held.
    fn disconnected(&self, peer: &Peer);

    /// The reply to a message the transport could not decode (too large,
    /// not an encoding it knows). The handler, not the transport, decides
    /// what such a message is answered with.
    fn malformed(&self, peer: &Peer, error: &Error) -> Dict;

    /// The reply to a request the transport refused on the
    /// [`PeerPolicy`](peer_policy::PeerPolicy)'s word, or because it could
    /// not identify the caller (macOS), before decoding it.
    fn refused(&self, peer: Option<&Peer>, reason: &str) -> Dict;
}

/// Why a message could not be sent, received or decoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message too large: {size} bytes (limit {limit})")]
    TooLarge { size: usize, limit: usize },
    #[error("{0}")]
    Transport(String),
    /// No broker answers, or the one that did went away; the message says
    /// what to do. Callers tell it apart by this variant, not by its text.
    #[error("{0}")]
    Unavailable(String),
}
