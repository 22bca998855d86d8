//! Packet relays between a VM's socket and its [`crate::vmnet::Interface`].
//!
//! (Public API fixed here so the broker can be written against it; the relay
//! loops, framing and batching live in `adaptor/`.)

use std::os::fd::OwnedFd;

use crate::vmnet::Interface;

/// The VM-side wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// One frame per datagram, one syscall per frame.
    Datagram,
    /// One frame per datagram, batched syscalls (recvmmsg/sendmmsg, recvmsg_x/sendmsg_x).
    DatagramNext,
    /// SOCK_STREAM, each frame prefixed by its 4-byte big-endian length.
    Stream,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Datagram, Kind::DatagramNext, Kind::Stream];

    /// The protocol name (`FdType` in broker requests).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Datagram => "datagram",
            Kind::DatagramNext => "datagram_next",
            Kind::Stream => "stream",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// How to set up the VM-side socket.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// SO_SNDBUF for the adaptor's end; `None` picks a default sized for the kind.
    pub send_buffer_bytes: Option<usize>,
    /// SO_RCVBUF for the adaptor's end; `None` picks a default sized for the kind.
    pub recv_buffer_bytes: Option<usize>,
}

/// Counters for one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    pub packets: u64,
    pub bytes: u64,
    pub batches: u64,
    pub drops: u64,
    pub waits: u64,
    pub errors: u64,
}

/// Counters for both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub host_to_vm: DirectionStats,
    pub vm_to_host: DirectionStats,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A running relay. Dropping it stops the relay and its interface.
pub struct Adaptor {
    _private: (),
}

impl Adaptor {
    /// Makes a socketpair, starts the relay threads on one end and returns
    /// the adaptor with the other end, which goes to the VM.
    pub fn start(interface: Box<dyn Interface>, kind: Kind, options: &Options) -> Result<(Adaptor, OwnedFd), Error> {
        let _ = (interface, kind, options);
        todo!("relay")
    }

    pub fn kind(&self) -> Kind {
        todo!()
    }

    pub fn stats(&self) -> Stats {
        todo!()
    }

    /// False once the relay ended (the VM closed its end, the interface went
    /// away, or a protocol error closed the link).
    pub fn is_running(&self) -> bool {
        todo!()
    }

    /// Stops the relay, joins its threads and stops the interface. Idempotent.
    pub fn stop(&mut self) {}
}
