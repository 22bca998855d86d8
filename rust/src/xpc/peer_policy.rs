//! What a transport is told about who may call: the broker decides
//! (`broker::auth`), the transport only applies it.
//!
//! - [`PeerPolicy`]: per request, whether the peer is admitted, and whether
//!   the request may be answered only for callers running this very
//!   executable (a check only the macOS transport can make, on the raw XPC
//!   message).
//! - [`ListenerRequirement`]: the one peer requirement a macOS listener is
//!   given, already combined by the caller.

use super::{Dict, Peer};

/// Who may call, as the broker rules it. Called on the transport's threads.
pub trait PeerPolicy: Send + Sync + 'static {
    /// `Err(reason)` refuses `peer`; the transport answers with
    /// [`Handler::refused`](super::Handler::refused).
    fn admit(&self, peer: &Peer) -> Result<(), String>;

    /// Whether some requests are answered only for callers with this
    /// executable's CDHash (the transport then reads its own CDHash at
    /// start). Default: none are.
    fn checks_same_executable(&self) -> bool {
        false
    }

    /// Whether `request` is one of those. Asked only when
    /// [`checks_same_executable`](Self::checks_same_executable) is true.
    fn same_executable_only(&self, request: &Dict) -> bool {
        let _ = request;
        false
    }
}

/// The one peer requirement a listener gets. Apple documents a second
/// `xpc_listener_set_peer_*_requirement` call on one listener as a
/// programming error (a crash), so callers combine their options first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenerRequirement {
    /// `xpc_listener_set_peer_code_signing_requirement` (macOS 14.4) with
    /// this SecRequirement string.
    CodeSigning(String),
    /// `xpc_listener_set_peer_requirement` with the LWCR `{cdhash: <own>}`
    /// (macOS 26.0).
    SameCdhash([u8; 20]),
}
