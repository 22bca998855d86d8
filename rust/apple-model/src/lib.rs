//! A model of the Apple libraries vmnet-rs's macOS code calls, as a shared
//! library for Linux: libxpc (objects, dictionaries, arrays, fds, sessions,
//! listeners, rich errors, peer requirements) and the part of libdispatch
//! it uses (serial queues). The Apple modules of `vmnet-rs` compile
//! unchanged under the `apple_api` cfg and link against this library
//! (docs/macos.md, "The model").
//!
//! Each function is written from the SDK header that declares it (named on
//! each one) and is strict where Apple is: where libxpc aborts on misuse
//! (xpc_abort(3): "Wherever XPC can definitively detect misuse of its APIs
//! ... it will abort"), the model aborts with a line naming the API and the
//! rule it broke (`misuse`). Every object is accounted for: `control.rs`
//! tells a test what is still alive at its end.
//!
//! Layout: `cf.rs` (CoreFoundation and SecTask objects), `launchd.rs`
//! (`launch_activate_socket`), `object.rs` (XPC objects and values), `dispatch.rs` (queues),
//! `session.rs` (sessions, listeners, rich errors, peer requirements,
//! connections), `vmnet.rs` (vmnet.framework networks and interfaces), `socket.rs`
//! (libSystem's `recvmsg_x`/`sendmsg_x`, with XNU's semantics), `control.rs` (the `vmnet_model_*` calls tests use: settle,
//! leaks, launchd's advertised services, the calls made).
#![cfg(not(target_vendor = "apple"))]
#![allow(clippy::missing_safety_doc)]
// The exported functions are C's, called with the pointers their headers
// describe; their contracts are the headers', not Rust `unsafe fn`s'.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod cf;
pub mod control;
pub mod dispatch;
pub mod object;
pub mod launchd;
pub mod session;
pub mod socket;
pub mod vmnet;

/// Aborts the process the way libxpc does on API misuse, naming the API and
/// the rule (xpc_abort(3)).
pub fn misuse(api: &str, rule: &str) -> ! {
    eprintln!("apple model: API misuse: {api}: {rule}");
    std::process::abort()
}
