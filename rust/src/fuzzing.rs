//! The way in for the fuzz targets in `fuzz/` (docs/protocol.md,
//! "Fuzzing"): the crate-private parsers of bytes a VM controls, reached
//! as they are (re-exports) or through a thin wrapper where their types are
//! crate-private. Built only with the `fuzzing` feature, which only
//! `fuzz/Cargo.toml` turns on; not an API, hidden from the docs.

/// A relayed TAP's user-space offload: frames from the VM merged into GSO
/// writes (`coalesce`), raw TAP reads (virtio-net header + frame) planned
/// and split (`plan`, `emit`).
pub mod tap {
    pub use crate::vmnet::tap::fuzzing::*;
}

/// The datagram endpoint's receive path (`broker/endpoints/receive.rs`):
/// one datagram or a batch, with the sender's address, credentials and
/// cut mark decoded.
pub mod receive {
    pub use crate::broker::endpoints::receive_fuzzing::*;
}

/// The stream framing reader of a VM socket (`adaptor/vm_stream.rs`).
pub mod stream {
    use std::os::fd::RawFd;

    use crate::adaptor::framing;

    /// Why reading stopped for good (`vm_stream::StreamEnd`).
    #[derive(Debug)]
    pub enum StreamEnd {
        /// EOF or a reset; `partial` when a frame was cut off.
        Closed { partial: bool },
        /// A bad length header.
        Protocol(String),
        Io(std::io::Error),
    }

    /// `vm_stream::StreamReader`, method for method.
    pub struct StreamReader(framing::StreamReader);

    impl StreamReader {
        pub fn new(batch_frames: usize, max_frame_bytes: usize) -> Self {
            StreamReader(framing::StreamReader::new(batch_frames, max_frame_bytes))
        }

        pub fn has_pending(&self) -> bool {
            self.0.has_pending()
        }

        pub fn pending_count(&self) -> usize {
            self.0.pending_count()
        }

        pub fn pending(&self, limit: usize) -> Vec<&[u8]> {
            self.0.pending(limit)
        }

        pub fn consume(&mut self, n: usize) {
            self.0.consume(n)
        }

        pub fn has_buffered(&self) -> bool {
            self.0.has_buffered()
        }

        pub fn receive(&mut self, fd: RawFd) -> Result<usize, StreamEnd> {
            self.0.receive(fd).map_err(|e| match e {
                framing::StreamEnd::Closed { partial } => StreamEnd::Closed { partial },
                framing::StreamEnd::Protocol(m) => StreamEnd::Protocol(m),
                framing::StreamEnd::Io(e) => StreamEnd::Io(e),
            })
        }
    }
}
