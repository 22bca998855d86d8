//! Raw libxpc declarations, written from the macOS SDK headers named on
//! each block (`xpc/*.h` in MacOSX26.x.sdk/usr/include; libxpc is part of
//! libSystem, so no link attribute is needed). Nothing here is safe to call
//! without the rules in those headers; `xpc/apple.rs` and its siblings wrap
//! them. Crate-visible so `vmnet/apple` can build and read the XPC
//! dictionaries vmnet takes and returns.
//!
//! Types: every XPC object (dictionary, session, listener, rich error, peer
//! requirement) is an `xpc_object_t`, modelled as `*mut c_void`; block
//! parameters use the same type so block2 can encode them.
#![allow(non_camel_case_types, non_upper_case_globals, dead_code)]

use std::ffi::{c_char, c_int, c_void};

use block2::Block;
use dispatch2::DispatchQueue;

pub type xpc_object_t = *mut c_void;
pub type xpc_connection_t = xpc_object_t;
pub type xpc_session_t = xpc_object_t;
pub type xpc_listener_t = xpc_object_t;
pub type xpc_rich_error_t = xpc_object_t;
pub type xpc_peer_requirement_t = xpc_object_t;

/// `struct _xpc_type_s` (xpc/xpc.h): only its address is used.
#[repr(C)]
pub struct xpc_type_s {
    _opaque: [u8; 0],
}
pub type xpc_type_t = *const xpc_type_s;

/// `xpc_dictionary_applier_t`: `bool (^)(const char *key, xpc_object_t value)`.
/// The C `bool` return is written as `u8` (same size and values; block2 has
/// no encoding for Rust `bool`): 1 continues, 0 stops.
pub type DictionaryApplier<'a> = Block<dyn Fn(*const c_char, xpc_object_t) -> u8 + 'a>;
/// `xpc_array_applier_t`: `bool (^)(size_t index, xpc_object_t value)`; `u8`
/// as above.
pub type ArrayApplier<'a> = Block<dyn Fn(usize, xpc_object_t) -> u8 + 'a>;
/// `xpc_listener_incoming_session_handler_t`: `void (^)(xpc_session_t peer)`.
pub type IncomingSessionHandler = Block<dyn Fn(xpc_session_t)>;
/// `xpc_session_incoming_message_handler_t`: `void (^)(xpc_object_t message)`.
pub type IncomingMessageHandler = Block<dyn Fn(xpc_object_t)>;
/// `xpc_session_cancel_handler_t`: `void (^)(xpc_rich_error_t error)`.
pub type CancelHandler = Block<dyn Fn(xpc_rich_error_t)>;
/// `xpc_session_reply_handler_t`:
/// `void (^)(xpc_object_t _Nullable reply, xpc_rich_error_t _Nullable error)`.
pub type ReplyHandler = Block<dyn Fn(xpc_object_t, xpc_rich_error_t)>;

/// `XPC_LISTENER_CREATE_INACTIVE` (xpc/listener.h).
pub const XPC_LISTENER_CREATE_INACTIVE: u64 = 1 << 0;
/// `XPC_SESSION_CREATE_NONE` / `_MACH_PRIVILEGED` (xpc/session.h).
pub const XPC_SESSION_CREATE_NONE: u64 = 0;
/// `XPC_SESSION_CREATE_INACTIVE` (xpc/session.h): handlers are set, then
/// `xpc_session_activate`.
pub const XPC_SESSION_CREATE_INACTIVE: u64 = 1 << 0;
pub const XPC_SESSION_CREATE_MACH_PRIVILEGED: u64 = 1 << 1;

// xpc/base.h, xpc/xpc.h: object lifetime, types, values. The calls linked
// directly are from macOS 10.7 here, and 10.10 at most in the whole library
// (`launch_activate_socket`, xpc/activation.rs), so it loads on every
// deployment target it is built for (11.0 and later); newer ones
// (`xpc_type_get_name`, 10.15, and everything below) are resolved at run time.
extern "C" {
    pub fn xpc_retain(object: xpc_object_t) -> xpc_object_t;
    pub fn xpc_release(object: xpc_object_t);
    pub fn xpc_get_type(object: xpc_object_t) -> xpc_type_t;
    /// Deep comparison of two objects of the same type (10.7).
    pub fn xpc_equal(object1: xpc_object_t, object2: xpc_object_t) -> bool;

    pub static _xpc_type_dictionary: xpc_type_s;
    pub static _xpc_type_string: xpc_type_s;
    pub static _xpc_type_int64: xpc_type_s;
    pub static _xpc_type_uint64: xpc_type_s;
    pub static _xpc_type_bool: xpc_type_s;
    pub static _xpc_type_data: xpc_type_s;
    pub static _xpc_type_fd: xpc_type_s;
    pub static _xpc_type_uuid: xpc_type_s;
    pub static _xpc_type_double: xpc_type_s;
    pub static _xpc_type_null: xpc_type_s;
    pub static _xpc_type_array: xpc_type_s;
    pub static _xpc_type_error: xpc_type_s;

    pub fn xpc_null_create() -> xpc_object_t;
    pub fn xpc_bool_create(value: bool) -> xpc_object_t;
    pub fn xpc_bool_get_value(xbool: xpc_object_t) -> bool;
    pub fn xpc_int64_create(value: i64) -> xpc_object_t;
    pub fn xpc_int64_get_value(xint: xpc_object_t) -> i64;
    pub fn xpc_uint64_create(value: u64) -> xpc_object_t;
    pub fn xpc_uint64_get_value(xuint: xpc_object_t) -> u64;
    pub fn xpc_double_create(value: f64) -> xpc_object_t;
    pub fn xpc_double_get_value(xdouble: xpc_object_t) -> f64;
    pub fn xpc_string_create(string: *const c_char) -> xpc_object_t;
    pub fn xpc_string_get_length(xstring: xpc_object_t) -> usize;
    pub fn xpc_string_get_string_ptr(xstring: xpc_object_t) -> *const c_char;
    pub fn xpc_data_create(bytes: *const c_void, length: usize) -> xpc_object_t;
    pub fn xpc_data_get_length(xdata: xpc_object_t) -> usize;
    pub fn xpc_data_get_bytes_ptr(xdata: xpc_object_t) -> *const c_void;
    pub fn xpc_uuid_create(uuid: *const u8) -> xpc_object_t;
    pub fn xpc_uuid_get_bytes(xuuid: xpc_object_t) -> *const u8;
    /// Dups `fd`; the caller keeps its own.
    pub fn xpc_fd_create(fd: c_int) -> xpc_object_t;
    /// A new fd the caller owns, or -1.
    pub fn xpc_fd_dup(xfd: xpc_object_t) -> c_int;

    /// `xpc_array_create(objects, count)` (10.7); with NULL and 0 it is
    /// what `xpc_array_create_empty` (11.0) makes, without needing 11.0.
    pub fn xpc_array_create(objects: *const xpc_object_t, count: usize) -> xpc_object_t;
    pub fn xpc_array_append_value(xarray: xpc_object_t, value: xpc_object_t);
    pub fn xpc_array_apply(xarray: xpc_object_t, applier: &ArrayApplier<'_>) -> bool;

    /// `xpc_dictionary_create(keys, values, count)` (10.7); with NULL, NULL
    /// and 0 it is what `xpc_dictionary_create_empty` (11.0) makes.
    pub fn xpc_dictionary_create(keys: *const *const c_char, values: *const xpc_object_t, count: usize) -> xpc_object_t;
    /// NULL when `original` expects no reply.
    pub fn xpc_dictionary_create_reply(original: xpc_object_t) -> xpc_object_t;
    /// Retains `value`.
    pub fn xpc_dictionary_set_value(xdict: xpc_object_t, key: *const c_char, value: xpc_object_t);
    /// Borrowed.
    pub fn xpc_dictionary_get_value(xdict: xpc_object_t, key: *const c_char) -> xpc_object_t;
    pub fn xpc_dictionary_apply(xdict: xpc_object_t, applier: &DictionaryApplier<'_>) -> bool;
    pub fn xpc_dictionary_set_bool(xdict: xpc_object_t, key: *const c_char, value: bool);
    /// Borrowed; NULL for messages that did not arrive over a connection.
    pub fn xpc_dictionary_get_remote_connection(xdict: xpc_object_t) -> xpc_connection_t;
}

// xpc/connection.h: identity of the peer a message came from.
extern "C" {
    pub fn xpc_connection_get_euid(connection: xpc_connection_t) -> libc::uid_t;
    pub fn xpc_connection_get_egid(connection: xpc_connection_t) -> libc::gid_t;
    pub fn xpc_connection_get_pid(connection: xpc_connection_t) -> libc::pid_t;
}

crate::xpc::apple::dynamic::dynamic_functions! {
    /// Calls newer than the oldest macOS the library loads on, resolved at
    /// run time (`dynamic.rs`): xpc/rich_error.h and xpc/session.h (13.0),
    /// xpc/listener.h (14.0; code signing
    /// requirement 14.4; peer requirement 26.0), xpc/peer_requirement.h
    /// (26.0).
    pub struct Xpc, needs "the vmnet-rs broker and client need macOS 26 or later" {
        fn xpc_rich_error_copy_description(error: xpc_rich_error_t) -> *mut c_char;
        fn xpc_rich_error_can_retry(error: xpc_rich_error_t) -> bool;

        fn xpc_session_create_mach_service(
            mach_service: *const c_char,
            target_queue: *const DispatchQueue,
            flags: u64,
            error_out: *mut xpc_rich_error_t,
        ) -> xpc_session_t;
        fn xpc_session_set_incoming_message_handler(session: xpc_session_t, handler: &IncomingMessageHandler);
        fn xpc_session_set_cancel_handler(session: xpc_session_t, cancel_handler: &CancelHandler);
        /// xpc/session.h: `bool xpc_session_activate(xpc_session_t, xpc_rich_error_t *)`.
        fn xpc_session_activate(session: xpc_session_t, error_out: *mut xpc_rich_error_t) -> bool;
        fn xpc_session_cancel(session: xpc_session_t);
        /// NULL on success; else a +1 rich error.
        fn xpc_session_send_message(session: xpc_session_t, message: xpc_object_t) -> xpc_rich_error_t;
        /// +1 reply, or NULL with `*error_out` set. Never call it on the
        /// session's own target queue.
        fn xpc_session_send_message_with_reply_sync(
            session: xpc_session_t,
            message: xpc_object_t,
            error_out: *mut xpc_rich_error_t,
        ) -> xpc_object_t;
        /// The handler gets the reply or an error (both borrowed) on the
        /// session's target queue.
        fn xpc_session_send_message_with_reply_async(
            session: xpc_session_t,
            message: xpc_object_t,
            reply_handler: &ReplyHandler,
        );

        fn xpc_listener_create(
            service: *const c_char,
            target_queue: *const DispatchQueue,
            flags: u64,
            incoming_session_handler: &IncomingSessionHandler,
            error_out: *mut xpc_rich_error_t,
        ) -> xpc_listener_t;
        fn xpc_listener_activate(listener: xpc_listener_t, error_out: *mut xpc_rich_error_t) -> bool;
        fn xpc_listener_cancel(listener: xpc_listener_t);
        /// Rejects (and so cancels) a peer session handed to the
        /// incoming-session handler; the only way to refuse one there
        /// (cancelling the still inactive session aborts on macOS 26).
        fn xpc_listener_reject_peer(peer: xpc_session_t, reason: *const c_char);
        /// 0 on success.
        fn xpc_listener_set_peer_code_signing_requirement(listener: xpc_listener_t, requirement: *const c_char) -> c_int;
        fn xpc_listener_set_peer_requirement(listener: xpc_listener_t, requirement: xpc_peer_requirement_t);

        fn xpc_peer_requirement_create_lwcr(lwcr: xpc_object_t, error_out: *mut xpc_rich_error_t) -> xpc_peer_requirement_t;
        fn xpc_peer_requirement_match_received_message(
            peer_requirement: xpc_peer_requirement_t,
            message: xpc_object_t,
            error_out: *mut xpc_rich_error_t,
        ) -> bool;
    }
}

/// The run-time resolved XPC calls, or why they are unavailable.
pub fn xpc() -> Result<&'static Xpc, crate::xpc::Error> {
    static TABLE: std::sync::OnceLock<Result<Xpc, String>> = std::sync::OnceLock::new();
    TABLE
        // SAFETY: RTLD_DEFAULT; the signatures are the SDK's (headers above).
        .get_or_init(|| unsafe { Xpc::load(libc::RTLD_DEFAULT) })
        .as_ref()
        .map_err(|e| crate::xpc::Error::Transport(e.clone()))
}

// Private, declared from the XNU source (bsd/sys/codesign.h `csops`,
// `CS_OPS_CDHASH`); exported by libSystem.
extern "C" {
    pub fn csops(pid: libc::pid_t, ops: u32, useraddr: *mut c_void, usersize: usize) -> c_int;
}
pub const CS_OPS_CDHASH: u32 = 5;
pub const CDHASH_LEN: usize = 20;

/// `const char *xpc_type_get_name(xpc_type_t type)` (xpc/xpc.h, macOS
/// 10.15), looked up at run time.
pub type TypeGetName = unsafe extern "C" fn(type_: xpc_type_t) -> *const c_char;

/// The private `xpc_dictionary_get_audit_token(xdict, audit_token_t *)`,
/// looked up at run time (it is not in the public headers); the fallback
/// when a message has no remote connection.
pub type GetAuditToken = unsafe extern "C" fn(xdict: xpc_object_t, token: *mut [u32; 8]);
