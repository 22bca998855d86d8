//! The broker's side of the Mach service: an `xpc_listener` whose peer
//! sessions call the portable [`Handler`].
//!
//! Threads: everything here runs on one serial dispatch queue, the
//! listener's target queue: incoming sessions, requests and cancellations
//! are delivered one at a time, in order. A peer session runs on the
//! listener's queue by itself; its target queue is not set (xpc/session.h
//! documents target queues for sessions the caller creates, and Lima's
//! binding never sets one on a peer). [`Listener`] is
//! owned by whoever called [`serve`]; dropping it cancels the listener.
//!
//! Invariants: each session gets a connection id unique for the life of the
//! process; each accepted session is retained until its cancel handler runs; `Handler::disconnected` is called exactly once per session that
//! sent at least one accepted message; a message that is not a dictionary
//! cancels its session (as Lima does); no panic leaves a block; a peer is
//! refused inside the incoming-session handler only with
//! `xpc_listener_reject_peer` (the session is still inactive there, and
//! cancelling it aborts the process on macOS 26); the listener gets at most
//! one peer requirement (a second one is a programming error to libxpc).

use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use block2::{RcBlock, StackBlock};
use dispatch2::{DispatchQueue, DispatchRetained};

use super::ffi;
use super::object::{from_xpc, take_rich_error, to_xpc, Object};
use super::peer::{identify, own_cdhash, SameCdhash};
use crate::xpc::peer_policy::{ListenerRequirement, PeerPolicy};
use crate::xpc::{Dict, Error, Handler, Peer, Value};

/// How many times a reply is re-sent while XPC says the failure is
/// retryable (Lima re-sends while `can_retry` holds; bounded here).
const REPLY_SEND_ATTEMPTS: usize = 3;

/// Which callers a listener accepts, as its caller (the broker) decided.
#[derive(Clone)]
pub struct ServeOptions {
    /// Admits peers per request and names the requests answered only for
    /// callers with this executable's CDHash (Lima's pre-26.2 rule).
    pub policy: Arc<dyn PeerPolicy>,
    /// The listener's one peer requirement, if any (libxpc takes at most
    /// one; combine options before, e.g. `broker::auth::listener_requirement`).
    pub requirement: Option<ListenerRequirement>,
}

/// A running Mach-service listener. Dropping it cancels the listener; peer
/// sessions already open finish on their own.
pub struct Listener {
    x: &'static ffi::Xpc,
    listener: Object,
    service: String,
    shared: Arc<Shared>,
    cancelled: AtomicBool,
    _queue: DispatchRetained<DispatchQueue>,
    _block: RcBlock<dyn Fn(ffi::xpc_session_t)>,
}

// SAFETY: the listener object is thread-safe (xpc/listener.h: cancellation
// is asynchronous and may come from any thread). The block is only kept
// alive here, never called or mutated (libxpc calls its own copy), and what
// it captures (`Shared`, a queue) is `Send + Sync`.
unsafe impl Send for Listener {}
// SAFETY: see `Send`.
unsafe impl Sync for Listener {}

impl Listener {
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Peer sessions accepted and not yet cancelled (the broker's idle
    /// check, as `unix::Listener::connection_count`).
    pub fn connection_count(&self) -> usize {
        self.shared.live_sessions.load(Ordering::Acquire)
    }

    /// Stops accepting sessions. Idempotent; open sessions end on their own.
    pub fn stop(&self) {
        if !self.cancelled.swap(true, Ordering::AcqRel) {
            // SAFETY: the listener is live (we hold a reference).
            unsafe { (self.x.xpc_listener_cancel)(self.listener.as_ptr()) };
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Shared {
    x: &'static ffi::Xpc,
    handler: Arc<dyn Handler>,
    policy: Arc<dyn PeerPolicy>,
    /// Set when the policy checks some requests for this executable's CDHash.
    serialization_requirement: Option<SameCdhash>,
    next_connection: AtomicU64,
    live_sessions: AtomicUsize,
}

/// Per session: its id, the peer seen on its first accepted message, and
/// our reference to the session, held from acceptance to cancellation.
struct Session {
    connection: u64,
    peer: Mutex<Option<Peer>>,
    retained: Mutex<Option<Object>>,
}

/// Listens on the Mach service `service` (which launchd must advertise for
/// this job, `MachServices` in its plist) and answers each request with
/// `handler`. Returns once the listener is active.
pub fn serve(service: &str, handler: Arc<dyn Handler>, options: ServeOptions) -> Result<Listener, Error> {
    let x = ffi::xpc()?;
    let c_service = CString::new(service)
        .map_err(|_| Error::Transport(format!("Mach service name {service:?} contains a NUL byte")))?;

    let serialization_requirement =
        if options.policy.checks_same_executable() { Some(SameCdhash::new(&own_cdhash()?)?) } else { None };
    let listener_requirement = options.requirement;

    let shared = Arc::new(Shared {
        x,
        handler,
        policy: options.policy,
        serialization_requirement,
        next_connection: AtomicU64::new(1),
        live_sessions: AtomicUsize::new(0),
    });
    let queue = DispatchQueue::new("vmnet-rs.broker.listener", None);

    let in_block = Arc::clone(&shared);
    let incoming = RcBlock::new(move |peer: ffi::xpc_session_t| {
        let result = catch_unwind(AssertUnwindSafe(|| accept_session(peer, &in_block)));
        if result.is_err() {
            log::error!("accepting a peer session panicked; the peer is rejected");
            // SAFETY: `peer` is the (still inactive) session handed to this
            // block; rejecting is the way to refuse it here (xpc/listener.h).
            unsafe { (in_block.x.xpc_listener_reject_peer)(peer, c"vmnet-rs broker: internal error accepting the session".as_ptr()) };
        }
    });

    let mut err: ffi::xpc_rich_error_t = std::ptr::null_mut();
    // SAFETY: the name is a C string, the queue and block are live (the block
    // is copied by libxpc; we keep ours until drop); the result is +1 or NULL
    // with a +1 error.
    let raw = unsafe {
        (x.xpc_listener_create)(c_service.as_ptr(), &*queue, ffi::XPC_LISTENER_CREATE_INACTIVE, &incoming, &mut err)
    };
    // SAFETY: `raw` is NULL or ours.
    let Some(listener) = (unsafe { Object::from_owned(raw) }) else {
        // SAFETY: `err` is NULL or ours.
        let text = unsafe { take_rich_error(err) }.map(|(t, _)| t).unwrap_or_default();
        return Err(Error::Transport(format!(
            "xpc_listener_create({service}) failed: {text}; is the service advertised in the launchd plist (vmnet-rs install)?"
        )));
    };

    // From here on, dropping `this` on an error cancels, then releases, the
    // listener (releasing an inactive listener without cancelling it is
    // undefined, xpc/listener.h).
    let this = Listener {
        x,
        listener,
        service: service.to_owned(),
        shared,
        cancelled: AtomicBool::new(false),
        _queue: queue,
        _block: incoming,
    };
    // Exactly one requirement setter, or none (xpc/listener.h: a second call
    // is a programming error).
    match &listener_requirement {
        None => {}
        Some(ListenerRequirement::CodeSigning(text)) => {
            let req = CString::new(text.as_str())
                .map_err(|_| Error::Transport("code signing requirement contains a NUL byte".into()))?;
            // SAFETY: the listener is inactive and live; `req` is a C string.
            let rc =
                unsafe { (x.xpc_listener_set_peer_code_signing_requirement)(this.listener.as_ptr(), req.as_ptr()) };
            if rc != 0 {
                return Err(Error::Transport(format!(
                    "the code signing requirement {text:?} was refused (error {rc}); check its syntax (csreq(1))"
                )));
            }
        }
        Some(ListenerRequirement::SameCdhash(hash)) => {
            let req = SameCdhash::new(hash)?;
            // SAFETY: the listener is inactive and live; this is its only
            // requirement; it retains it, ours is released when `req` drops.
            unsafe { (x.xpc_listener_set_peer_requirement)(this.listener.as_ptr(), req.as_ptr()) };
        }
    }

    let mut err: ffi::xpc_rich_error_t = std::ptr::null_mut();
    // SAFETY: the listener is live and inactive.
    if !unsafe { (x.xpc_listener_activate)(this.listener.as_ptr(), &mut err) } {
        // SAFETY: `err` is NULL or ours.
        let text = unsafe { take_rich_error(err) }.map(|(t, _)| t).unwrap_or_default();
        return Err(Error::Transport(format!("xpc_listener_activate({service}) failed: {text}")));
    }
    log::info!("listening on Mach service {service}");
    Ok(this)
}

/// In the incoming-session block: give the session its handlers (required
/// before the block returns); they run on the listener's queue.
fn accept_session(peer: ffi::xpc_session_t, shared: &Arc<Shared>) {
    // SAFETY: `peer` is the live session handed to the incoming block; the
    // reference taken here is released by the cancel handler, which breaks
    // the session -> block -> session cycle a captured reference would make.
    let retained = unsafe {
        ffi::xpc_retain(peer);
        Object::from_owned(peer)
    };
    let session = Arc::new(Session {
        connection: shared.next_connection.fetch_add(1, Ordering::Relaxed),
        peer: Mutex::new(None),
        retained: Mutex::new(retained),
    });

    // The blocks capture the session's address; it stays valid while they
    // can run (the session is retained until its cancel handler).
    let peer_addr = peer as usize;
    let (s1, sess1) = (Arc::clone(shared), Arc::clone(&session));
    let on_message = RcBlock::new(move |message: ffi::xpc_object_t| {
        let peer = peer_addr as ffi::xpc_session_t;
        if catch_unwind(AssertUnwindSafe(|| handle_message(peer, message, &s1, &sess1))).is_err() {
            log::error!("connection {}: request handler panicked; session cancelled", sess1.connection);
            // SAFETY: the session is live while its handler runs.
            unsafe { (s1.x.xpc_session_cancel)(peer) };
        }
    });
    let (s2, sess2) = (Arc::clone(shared), Arc::clone(&session));
    let on_cancel = RcBlock::new(move |_error: ffi::xpc_rich_error_t| {
        s2.live_sessions.fetch_sub(1, Ordering::AcqRel);
        let seen = sess2.peer.lock().map(|mut p| p.take()).unwrap_or(None);
        if let Some(peer) = seen {
            let handler = Arc::clone(&s2.handler);
            if catch_unwind(AssertUnwindSafe(|| handler.disconnected(&peer))).is_err() {
                log::error!("connection {}: disconnect handler panicked", peer.connection);
            }
        }
        // Our reference goes last; libxpc holds its own while this runs.
        let ours = sess2.retained.lock().map(|mut r| r.take()).unwrap_or(None);
        drop(ours);
    });
    // SAFETY: `peer` is the inactive session handed to the incoming block;
    // libxpc copies the blocks.
    unsafe {
        (shared.x.xpc_session_set_incoming_message_handler)(peer, &on_message);
        (shared.x.xpc_session_set_cancel_handler)(peer, &on_cancel);
    }
    // Counted only once the cancel handler that uncounts it is in place: a
    // panic before this line leaves the count (and idle exit) unharmed.
    shared.live_sessions.fetch_add(1, Ordering::AcqRel);
}

fn handle_message(peer: ffi::xpc_session_t, message: ffi::xpc_object_t, shared: &Shared, session: &Session) {
    // SAFETY: `message` is live for this call.
    let is_dict = unsafe { super::object::is_type(message, std::ptr::addr_of!(ffi::_xpc_type_dictionary)) };
    if !is_dict {
        log::warn!("connection {}: a message that is not a dictionary; session cancelled", session.connection);
        // SAFETY: the session is live while its handler runs.
        unsafe { (shared.x.xpc_session_cancel)(peer) };
        return;
    }
    // SAFETY: `message` is a live dictionary from this peer.
    let Some(who) = (unsafe { identify(message, session.connection) }) else {
        reply(shared, peer, message, &shared.handler.refused(None, "cannot identify the caller"));
        return;
    };
    if let Err(reason) = shared.policy.admit(&who) {
        reply(shared, peer, message, &shared.handler.refused(Some(&who), &reason));
        return;
    }
    // SAFETY: `message` is a live dictionary.
    let request = match unsafe { from_xpc(message) } {
        Ok(d) => d,
        Err(e) => {
            log::info!("connection {} (pid {}): bad message: {e}", who.connection, who.pid);
            reply(shared, peer, message, &shared.handler.malformed(&who, &e));
            return;
        }
    };
    if let Some(req) = &shared.serialization_requirement {
        if shared.policy.same_executable_only(&request) {
            // SAFETY: `message` is a live dictionary from this peer.
            if let Err(why) = unsafe { req.matches(message) } {
                let text = format!(
                    "before macOS 26.2 a network serialization only works in the same executable as the broker ({why})"
                );
                reply(shared, peer, message, &shared.handler.refused(Some(&who), &text));
                return;
            }
        }
    }
    if let Ok(mut seen) = session.peer.lock() {
        seen.get_or_insert_with(|| who.clone());
    }
    let answer = shared.handler.request(&who, request);
    reply(shared, peer, message, &answer);
}

/// Sends `answer` as the reply to `message`, if one is expected.
///
/// A message has one reply: `xpc_dictionary_create_reply` returns NULL when
/// asked again. So the answer is encoded first, on its own; one the
/// transport cannot carry is replaced by the handler's error text; then the
/// one reply is made and given the encoded entries.
fn reply(shared: &Shared, peer: ffi::xpc_session_t, message: ffi::xpc_object_t, answer: &Dict) {
    let body = match to_xpc(answer) {
        Ok(body) => body,
        Err(e) => {
            // A reply the transport cannot carry becomes the handler's answer
            // to a message it could not carry.
            log::error!("a reply could not be encoded: {e}");
            let e = Error::Malformed(format!("the broker's reply could not be encoded: {e}"));
            match to_xpc(&Dict::new().with("Error", Value::String(e.to_string()))) {
                Ok(body) => body,
                Err(e) => {
                    log::error!("the error reply could not be encoded either: {e}");
                    return;
                }
            }
        }
    };
    // SAFETY: `message` is live; the result is +1 or NULL (no reply wanted).
    let Some(out) = (unsafe { Object::from_owned(ffi::xpc_dictionary_create_reply(message)) }) else {
        return;
    };
    let copy = StackBlock::new(|key: *const std::ffi::c_char, value: ffi::xpc_object_t| -> u8 {
        // SAFETY: `key` and `value` are borrowed for this call; set_value
        // retains `value` into the live reply.
        unsafe { ffi::xpc_dictionary_set_value(out.as_ptr(), key, value) };
        1
    });
    // SAFETY: `body` is a live dictionary; the block runs synchronously.
    unsafe { ffi::xpc_dictionary_apply(body.as_ptr(), &copy) };
    send(shared.x, peer, &out);
}

fn send(x: &ffi::Xpc, peer: ffi::xpc_session_t, out: &Object) {
    for attempt in 1..=REPLY_SEND_ATTEMPTS {
        // SAFETY: the session is live while its handler runs; `out` is live.
        let err = unsafe { (x.xpc_session_send_message)(peer, out.as_ptr()) };
        // SAFETY: `err` is NULL or ours.
        match unsafe { take_rich_error(err) } {
            None => return,
            Some((text, retry)) if retry && attempt < REPLY_SEND_ATTEMPTS => {
                log::debug!("reply send failed ({text}); retrying");
            }
            Some((text, _)) => {
                log::warn!("reply could not be sent: {text}");
                return;
            }
        }
    }
}
