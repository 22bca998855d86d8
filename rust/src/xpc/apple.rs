//! The macOS transport: the broker's XPC Mach service and its client.
//!
//! - [`serve`] starts an `xpc_listener` on a Mach service; each peer session
//!   calls the portable [`Handler`](crate::xpc::Handler) on one serial queue
//!   (`listener.rs`). [`ServeOptions`] carries who may call, as the broker
//!   decided it: a [`PeerPolicy`](crate::xpc::peer_policy::PeerPolicy) and
//!   at most one listener requirement.
//! - [`Client`] holds one session to the service and sends requests.
//! - `object.rs` converts XPC dictionaries to and from [`Dict`](crate::xpc::Dict)
//!   (what is refused is listed there); `peer.rs` identifies callers and
//!   reads this executable's CDHash; `ffi.rs` holds the raw declarations.
//!
//! Everything here is `cfg(target_os = "macos")`; what is not FFI is
//! portable and tested on every OS: tags (`xpc/tagged.rs`), audit tokens
//! and OS versions (`xpc/darwin.rs`), the client's session slot
//! (`xpc/session_slot.rs`).

mod client;
pub(crate) mod dynamic;
pub(crate) mod ffi;
mod listener;
pub(crate) mod object;
mod peer;

pub use client::Client;
pub use listener::{serve, Listener, ServeOptions};
pub use peer::{os_version, own_cdhash};
