//! Sessions, listeners, rich errors, peer requirements and the peer's
//! connection (xpc/session.h, xpc/listener.h, xpc/rich_error.h,
//! xpc/peer_requirement.h, xpc/connection.h), within one process: a
//! listener registers its Mach service name, a client session opened to
//! that name gets a peer session handed to the listener's incoming-session
//! handler, and messages travel between the two as copies (fds duplicated),
//! as XPC serialises them.
//!
//! Threads: every handler runs on its session's (or listener's) target
//! queue (`dispatch.rs`), never on the caller's thread: incoming sessions on
//! the listener's queue, messages and the cancel handler on the session's,
//! an async reply on the sending session's. A session's cancel handler runs
//! once and is the last thing it delivers.
//!
//! Strict where Apple is (each `misuse` names the rule): handlers are set
//! only before activation; a session is activated once; a listener is activated
//! once; a session that was never activated cannot be cancelled (a listener
//! refuses a peer with `xpc_listener_reject_peer`); an async send on a
//! session this process cancelled aborts; a sync send on the session's own
//! target queue would deadlock and aborts; a listener takes at most one
//! peer requirement; an inactive listener must be cancelled before its last
//! release.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use block2::{Block, RcBlock};

use crate::control::{advertised, called, client_identity, Identity};
use crate::dispatch;
use crate::misuse;
use crate::object::{create, deep_copy, get, is_live, release, retain, Kind, Ptr};

/// `XPC_SESSION_CREATE_INACTIVE` (xpc/session.h).
const SESSION_CREATE_INACTIVE: u64 = 1 << 0;
/// `XPC_LISTENER_CREATE_INACTIVE` (xpc/listener.h).
const LISTENER_CREATE_INACTIVE: u64 = 1 << 0;

/// A copied block, kept to be called on a queue's thread.
pub struct Kept<F: ?Sized>(pub RcBlock<F>);
// SAFETY: a copied block is an immutable heap object whose reference count
// is atomic (BlocksRuntime); the blocks vmnet-rs hands over capture only
// `Send + Sync` state.
unsafe impl<F: ?Sized> Send for Kept<F> {}
// SAFETY: see `Send`.
unsafe impl<F: ?Sized> Sync for Kept<F> {}

type Handler1 = Arc<Kept<dyn Fn(Ptr)>>;
type Handler2 = Arc<Kept<dyn Fn(Ptr, Ptr)>>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Inactive,
    Active,
    Cancelled,
}

// ---------------------------------------------------------------------------
// Rich errors (xpc/rich_error.h)
// ---------------------------------------------------------------------------

pub struct RichError {
    text: CString,
    retry: bool,
}

/// A new rich error (+1).
pub fn rich_error(text: &str, retry: bool) -> usize {
    create(Kind::RichError(RichError { text: CString::new(text).unwrap_or_default(), retry })) as usize
}

/// Hands a +1 error to an `error_out` pointer, or releases it.
fn set_error(error_out: *mut Ptr, err: usize) {
    if error_out.is_null() {
        release(err as Ptr, "error_out");
    } else {
        // SAFETY: a writable out-pointer (the headers' `error_out`).
        unsafe { *error_out = err as Ptr };
    }
}

fn rich<'a>(ptr: Ptr, api: &str) -> &'a RichError {
    match &get(ptr, api).kind {
        Kind::RichError(e) => e,
        other => misuse(api, &format!("object is not a rich error but a {}", other.type_name())),
    }
}

/// xpc/rich_error.h `xpc_rich_error_copy_description`: malloc'ed, the
/// caller frees it.
#[no_mangle]
pub extern "C" fn xpc_rich_error_copy_description(error: Ptr) -> *mut c_char {
    called("xpc_rich_error_copy_description");
    let e = rich(error, "xpc_rich_error_copy_description");
    // SAFETY: strdup of a NUL-terminated string.
    unsafe { libc::strdup(e.text.as_ptr()) }
}

/// xpc/rich_error.h `xpc_rich_error_can_retry`.
#[no_mangle]
pub extern "C" fn xpc_rich_error_can_retry(error: Ptr) -> bool {
    called("xpc_rich_error_can_retry");
    rich(error, "xpc_rich_error_can_retry").retry
}

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

/// Where the reply to one message goes: a thread blocked in a sync send, or
/// an async reply handler on the sender's queue.
pub struct ReplyWaiter {
    state: Mutex<(bool, usize, usize)>,
    cv: Condvar,
    handler: Option<(Handler2, usize)>,
}

impl ReplyWaiter {
    fn new(handler: Option<(Handler2, usize)>) -> Arc<ReplyWaiter> {
        if let Some((_, q)) = &handler {
            dispatch::retain(*q, "xpc_session_send_message_with_reply_async");
        }
        Arc::new(ReplyWaiter { state: Mutex::new((false, 0, 0)), cv: Condvar::new(), handler })
    }

    fn done(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Answers with a reply or an error (one of them, +1, consumed). Only
    /// the first answer counts.
    fn fulfill(&self, reply: usize, error: usize) {
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.0 {
                drop(st);
                for p in [reply, error] {
                    if p != 0 {
                        release(p as Ptr, "reply");
                    }
                }
                return;
            }
            st.0 = true;
            if self.handler.is_none() {
                st.1 = reply;
                st.2 = error;
                self.cv.notify_all();
                return;
            }
        }
        let Some((h, q)) = &self.handler else { return };
        let (h, q) = (Arc::clone(h), *q);
        dispatch::submit(q, move || {
            // xpc/session.h: the reply and error are the handler's to borrow.
            h.0.call((reply as Ptr, error as Ptr));
            for p in [reply, error] {
                if p != 0 {
                    release(p as Ptr, "xpc_session_reply_handler_t");
                }
            }
            dispatch::release(q, "xpc_session_send_message_with_reply_async");
        });
    }

    fn wait(&self) -> (usize, usize) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while !st.0 {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        (st.1, st.2)
    }
}

// ---------------------------------------------------------------------------
// Connections (xpc/connection.h): who the peer of a received message is
// ---------------------------------------------------------------------------

pub struct Connection {
    id: Identity,
}

fn connection<'a>(ptr: Ptr, api: &str) -> &'a Connection {
    match &get(ptr, api).kind {
        Kind::Connection(c) => c,
        other => misuse(api, &format!("object is not a connection but a {}", other.type_name())),
    }
}

#[no_mangle]
pub extern "C" fn xpc_connection_get_euid(connection_: Ptr) -> libc::uid_t {
    called("xpc_connection_get_euid");
    connection(connection_, "xpc_connection_get_euid").id.uid
}

#[no_mangle]
pub extern "C" fn xpc_connection_get_egid(connection_: Ptr) -> libc::gid_t {
    called("xpc_connection_get_egid");
    connection(connection_, "xpc_connection_get_egid").id.gid
}

#[no_mangle]
pub extern "C" fn xpc_connection_get_pid(connection_: Ptr) -> libc::pid_t {
    called("xpc_connection_get_pid");
    connection(connection_, "xpc_connection_get_pid").id.pid
}

// ---------------------------------------------------------------------------
// Sessions (xpc/session.h)
// ---------------------------------------------------------------------------

pub struct Session {
    st: Mutex<SessionState>,
}

struct SessionState {
    phase: Phase,
    /// Cancelled by `xpc_session_cancel` here (not by the peer going away).
    cancelled_here: bool,
    /// Why the session ended, for the errors of later sends.
    end_reason: String,
    /// Client side: the Mach service it connects to.
    service: Option<CString>,
    /// The target queue (one reference).
    target: usize,
    on_message: Option<Handler1>,
    on_cancel: Option<Handler1>,
    /// The other end (an address, not a reference).
    other: usize,
    /// Server side: the client's connection (one reference).
    connection: usize,
    /// Replies this end waits for.
    waiting: Vec<Arc<ReplyWaiter>>,
    /// Messages that arrived before activation (one reference each).
    backlog: Vec<usize>,
    /// The model's own reference while the session is active.
    held: bool,
    is_peer: bool,
    /// Server side: the listener it came through (one reference until the
    /// incoming-session handler has run).
    listener: usize,
}

impl Session {
    pub fn dispose(&self) {
        let (target, conn) = {
            let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
            st.on_message = None;
            st.on_cancel = None;
            (std::mem::replace(&mut st.target, 0), std::mem::replace(&mut st.connection, 0))
        };
        if target != 0 && target != dispatch::default_queue() {
            dispatch::release(target, "xpc_release(session)");
        }
        if conn != 0 {
            release(conn as Ptr, "xpc_release(session)");
        }
    }
}

fn session<'a>(ptr: Ptr, api: &str) -> &'a Session {
    match &get(ptr, api).kind {
        Kind::Session(s) => s,
        other => misuse(api, &format!("object is not a session but a {}", other.type_name())),
    }
}

fn queue_or_default(q: *const libc::c_void, api: &str) -> usize {
    if q.is_null() {
        dispatch::default_queue()
    } else {
        dispatch::retain(q as usize, api);
        q as usize
    }
}

fn new_session(target: usize, is_peer: bool, connection: usize, listener: usize, phase: Phase) -> usize {
    create(Kind::Session(Session {
        st: Mutex::new(SessionState {
            phase,
            cancelled_here: false,
            end_reason: String::new(),
            service: None,
            target,
            on_message: None,
            on_cancel: None,
            other: 0,
            connection,
            waiting: Vec::new(),
            backlog: Vec::new(),
            held: false,
            is_peer,
            listener,
        }),
    })) as usize
}

/// Fails the reply a message's sender waits for, if any.
fn fail_message(msg: usize, text: &str) {
    if let Kind::Dictionary(d) = &get(msg as Ptr, "deliver").kind {
        let w = {
            let d = d.lock().unwrap_or_else(|e| e.into_inner());
            if d.reply_created {
                None
            } else {
                d.reply_to.clone()
            }
        };
        if let Some(w) = w {
            w.fulfill(0, rich_error(text, false));
        }
    }
}

/// Hands a received message (+1, consumed) to session `addr`.
fn deliver(addr: usize, msg: usize) {
    if addr == 0 || !is_live(addr) {
        fail_message(msg, "the peer session is gone");
        release(msg as Ptr, "deliver");
        return;
    }
    let s = session(addr as Ptr, "deliver");
    let mut st = s.st.lock().unwrap_or_else(|e| e.into_inner());
    match st.phase {
        Phase::Inactive => st.backlog.push(msg),
        Phase::Cancelled => {
            drop(st);
            fail_message(msg, "the peer session was cancelled");
            release(msg as Ptr, "deliver");
        }
        Phase::Active => {
            let (q, h) = (st.target, st.on_message.clone());
            drop(st);
            retain(addr as Ptr, "deliver");
            dispatch::submit(q, move || {
                let s = session(addr as Ptr, "deliver");
                let active = s.st.lock().unwrap_or_else(|e| e.into_inner()).phase == Phase::Active;
                match (&h, active) {
                    // xpc/session.h: the message is borrowed by the handler.
                    (Some(h), true) => h.0.call((msg as Ptr,)),
                    _ => fail_message(msg, "the peer session was cancelled"),
                }
                release(msg as Ptr, "xpc_session_incoming_message_handler_t");
                release(addr as Ptr, "deliver");
            });
        }
    }
}

/// Ends session `addr`: fails what it waits for and runs its cancel
/// handler, once, last, on its queue.
fn teardown(addr: usize, reason: &str) {
    let s = session(addr as Ptr, "cancel");
    let (waiting, backlog, on_cancel, target, held) = {
        let mut st = s.st.lock().unwrap_or_else(|e| e.into_inner());
        let held = std::mem::replace(&mut st.held, false);
        (
            std::mem::take(&mut st.waiting),
            std::mem::take(&mut st.backlog),
            st.on_cancel.take(),
            st.target,
            held,
        )
    };
    for w in waiting {
        if !w.done() {
            w.fulfill(0, rich_error(reason, false));
        }
    }
    for m in backlog {
        fail_message(m, reason);
        release(m as Ptr, "cancel");
    }
    let reason = reason.to_owned();
    if !held {
        retain(addr as Ptr, "cancel");
    }
    dispatch::submit(target, move || {
        if let Some(h) = on_cancel {
            let e = rich_error(&reason, false);
            // xpc/session.h: the error is borrowed by the handler.
            h.0.call((e as Ptr,));
            release(e as Ptr, "xpc_session_cancel_handler_t");
        }
        release(addr as Ptr, "cancel");
    });
}

/// The other end went away: session `addr` is cancelled, not by itself.
fn invalidate(addr: usize, reason: &str) {
    if addr == 0 || !is_live(addr) {
        return;
    }
    let s = session(addr as Ptr, "cancel");
    let was = {
        let mut st = s.st.lock().unwrap_or_else(|e| e.into_inner());
        if st.phase != Phase::Cancelled {
            st.end_reason = reason.to_owned();
        }
        std::mem::replace(&mut st.phase, Phase::Cancelled)
    };
    match was {
        Phase::Active => teardown(addr, reason),
        Phase::Inactive => {
            let backlog = std::mem::take(&mut s.st.lock().unwrap_or_else(|e| e.into_inner()).backlog);
            for m in backlog {
                fail_message(m, reason);
                release(m as Ptr, "cancel");
            }
        }
        Phase::Cancelled => {}
    }
}

/// xpc/session.h `xpc_session_create_mach_service`: a new session (+1) to
/// the Mach service `mach_service`. Active at once, or NULL with
/// `*error_out` (+1) when no listener serves the name; with
/// `XPC_SESSION_CREATE_INACTIVE` inactive, the service looked up by
/// `xpc_session_activate`.
#[no_mangle]
pub extern "C" fn xpc_session_create_mach_service(
    mach_service: *const c_char,
    target_queue: *const libc::c_void,
    flags: u64,
    error_out: *mut Ptr,
) -> Ptr {
    const API: &str = "xpc_session_create_mach_service";
    called(API);
    if mach_service.is_null() {
        misuse(API, "NULL service name");
    }
    // SAFETY: a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(mach_service) }.to_owned();
    let client_q = queue_or_default(target_queue, API);
    let client = new_session(client_q, false, 0, 0, Phase::Inactive);
    session(client as Ptr, API).st.lock().unwrap_or_else(|e| e.into_inner()).service = Some(name);
    if flags & SESSION_CREATE_INACTIVE != 0 {
        return client as Ptr;
    }
    if let Err(e) = connect(client, API) {
        set_error(error_out, e);
        release(client as Ptr, API);
        return std::ptr::null_mut();
    }
    client as Ptr
}

/// Activates client session `client`: finds the listener of its service
/// and hands it a peer session; a +1 error when none listens (the session
/// is then cancelled, never having been active).
fn connect(client: usize, api: &str) -> Result<(), usize> {
    let c = session(client as Ptr, api);
    let name = c.st.lock().unwrap_or_else(|e| e.into_inner()).service.clone().unwrap_or_default();
    let Some(listener) = listeners().lock().unwrap_or_else(|e| e.into_inner()).get(&name).copied() else {
        let mut st = c.st.lock().unwrap_or_else(|e| e.into_inner());
        st.phase = Phase::Cancelled;
        st.end_reason = format!("no service named {} is listening", name.to_string_lossy());
        return Err(rich_error(&st.end_reason, false));
    };
    let l = listener_of(listener as Ptr, api);
    let lq = {
        let st = l.st.lock().unwrap_or_else(|e| e.into_inner());
        dispatch::retain(st.target, api);
        st.target
    };
    let conn = create(Kind::Connection(Connection { id: client_identity() })) as usize;
    retain(listener as Ptr, api);
    let peer = new_session(lq, true, conn, listener, Phase::Inactive);
    {
        let mut st = c.st.lock().unwrap_or_else(|e| e.into_inner());
        st.other = peer;
        st.held = true;
        st.phase = Phase::Active;
    }
    retain(client as Ptr, api);
    session(peer as Ptr, api).st.lock().unwrap_or_else(|e| e.into_inner()).other = client;
    dispatch::submit(lq, move || handoff(listener, peer));
    Ok(())
}

/// xpc/session.h `xpc_session_activate`: false with `*error_out` (+1) when
/// no listener serves the session's name. Activating a session twice, or a
/// peer session (the listener activates those), aborts.
#[no_mangle]
pub extern "C" fn xpc_session_activate(session_: Ptr, error_out: *mut Ptr) -> bool {
    const API: &str = "xpc_session_activate";
    called(API);
    let s = session(session_, API);
    {
        let st = s.st.lock().unwrap_or_else(|e| e.into_inner());
        if st.is_peer {
            misuse(API, "a peer session is activated by its listener, not by the handler");
        }
        if st.phase != Phase::Inactive {
            misuse(API, "the session was activated before (xpc/session.h: activate once)");
        }
    }
    match connect(session_ as usize, API) {
        Ok(()) => true,
        Err(e) => {
            set_error(error_out, e);
            false
        }
    }
}

/// On the listener's queue: the listener's requirement, then its
/// incoming-session handler, then activation of the peer it accepted.
fn handoff(listener: usize, peer: usize) {
    const API: &str = "xpc_listener_incoming_session_handler_t";
    let l = listener_of(listener as Ptr, API);
    let (phase, incoming, requirement) = {
        let st = l.st.lock().unwrap_or_else(|e| e.into_inner());
        (st.phase, st.incoming.clone(), st.requirement_matches(peer))
    };
    let s = session(peer as Ptr, API);
    let cancelled = s.st.lock().unwrap_or_else(|e| e.into_inner()).phase == Phase::Cancelled;
    if !cancelled {
        if phase != Phase::Active {
            reject(peer, "the listener was cancelled");
        } else if let Err(why) = requirement {
            reject(peer, &why);
        } else if let Some(h) = incoming {
            // xpc/listener.h: the peer session is borrowed by the handler.
            h.0.call((peer as Ptr,));
            let mut st = s.st.lock().unwrap_or_else(|e| e.into_inner());
            if st.phase == Phase::Inactive {
                if st.on_message.is_none() {
                    misuse(
                        API,
                        "the handler returned without setting the peer's incoming message handler (xpc/listener.h: accept by setting it, refuse with xpc_listener_reject_peer)",
                    );
                }
                st.phase = Phase::Active;
                st.held = true;
                let backlog = std::mem::take(&mut st.backlog);
                drop(st);
                retain(peer as Ptr, API);
                for m in backlog {
                    deliver(peer, m);
                }
            }
        }
    }
    let l_ref = std::mem::replace(&mut s.st.lock().unwrap_or_else(|e| e.into_inner()).listener, 0);
    if l_ref != 0 {
        release(l_ref as Ptr, API);
    }
    release(peer as Ptr, API);
}

/// Refuses an inactive peer: it is cancelled and its client told why.
fn reject(peer: usize, reason: &str) {
    let s = session(peer as Ptr, "xpc_listener_reject_peer");
    let (other, backlog) = {
        let mut st = s.st.lock().unwrap_or_else(|e| e.into_inner());
        st.phase = Phase::Cancelled;
        (st.other, std::mem::take(&mut st.backlog))
    };
    for m in backlog {
        fail_message(m, reason);
        release(m as Ptr, "xpc_listener_reject_peer");
    }
    invalidate(other, &format!("the peer was rejected: {reason}"));
}

fn before_activation<'a>(s: &'a Session, api: &str) -> std::sync::MutexGuard<'a, SessionState> {
    let st = s.st.lock().unwrap_or_else(|e| e.into_inner());
    if st.phase != Phase::Inactive {
        misuse(api, "called after the session was activated (xpc/session.h: handlers are set before activation)");
    }
    st
}

/// xpc/session.h `xpc_session_set_incoming_message_handler`: copies the block.
#[no_mangle]
pub extern "C" fn xpc_session_set_incoming_message_handler(session_: Ptr, handler: &Block<dyn Fn(Ptr)>) {
    const API: &str = "xpc_session_set_incoming_message_handler";
    called(API);
    let s = session(session_, API);
    before_activation(s, API).on_message = Some(Arc::new(Kept(handler.copy())));
}

/// xpc/session.h `xpc_session_set_cancel_handler`: copies the block.
#[no_mangle]
pub extern "C" fn xpc_session_set_cancel_handler(session_: Ptr, cancel_handler: &Block<dyn Fn(Ptr)>) {
    const API: &str = "xpc_session_set_cancel_handler";
    called(API);
    let s = session(session_, API);
    before_activation(s, API).on_cancel = Some(Arc::new(Kept(cancel_handler.copy())));
}

/// xpc/session.h `xpc_session_cancel`: idempotent on an active or
/// cancelled session; the cancel handler runs once on the target queue.
/// Aborts on a session never activated.
#[no_mangle]
pub extern "C" fn xpc_session_cancel(session_: Ptr) {
    const API: &str = "xpc_session_cancel";
    called(API);
    let addr = session_ as usize;
    let s = session(session_, API);
    let other = {
        let mut st = s.st.lock().unwrap_or_else(|e| e.into_inner());
        match st.phase {
            Phase::Inactive => misuse(
                API,
                "the session was never activated (an incoming peer is refused with xpc_listener_reject_peer, xpc/listener.h)",
            ),
            Phase::Cancelled => return,
            Phase::Active => {
                st.phase = Phase::Cancelled;
                st.cancelled_here = true;
                st.other
            }
        }
    };
    teardown(addr, "the session was cancelled");
    invalidate(other, "the peer cancelled the session");
}

enum Send_ {
    Sync,
    Async(Handler2),
}

/// The copy the peer receives, answering to `waiter` if any.
fn message_for_peer(msg: Ptr, from: &SessionState, waiter: Option<Arc<ReplyWaiter>>, api: &str) -> usize {
    if !matches!(get(msg, api).kind, Kind::Dictionary(_)) {
        // XPC sends dictionaries only (xpc/session.h: "message: a dictionary").
        misuse(api, "the message is not a dictionary");
    }
    let copy = deep_copy(msg as usize, api) as usize;
    let Kind::Dictionary(d) = &get(copy as Ptr, api).kind else { unreachable!() };
    let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
    d.reply_to = waiter;
    // The receiver of a client's message sees the client's connection.
    let peer_conn = if from.other != 0 && is_live(from.other) {
        session(from.other as Ptr, api).st.lock().unwrap_or_else(|e| e.into_inner()).connection
    } else {
        0
    };
    if peer_conn != 0 {
        retain(peer_conn as Ptr, api);
        d.remote = peer_conn;
    }
    copy
}

fn send_with_reply(session_: Ptr, message: Ptr, how: Send_, api: &str) -> Result<Arc<ReplyWaiter>, usize> {
    let s = session(session_, api);
    let mut st = s.st.lock().unwrap_or_else(|e| e.into_inner());
    match st.phase {
        Phase::Inactive => misuse(api, "the session is not activated (xpc/session.h)"),
        Phase::Cancelled if st.cancelled_here && matches!(how, Send_::Async(_)) => {
            misuse(api, "the session was cancelled by this process; a cancelled session cannot send (xpc/session.h)")
        }
        Phase::Cancelled if st.cancelled_here => return Err(rich_error("the session was cancelled", false)),
        Phase::Cancelled => return Err(rich_error(&st.end_reason, false)),
        Phase::Active => {}
    }
    if matches!(how, Send_::Sync) && dispatch::current() == st.target {
        misuse(api, "called on the session's own target queue, where its reply would be delivered: a deadlock (xpc/session.h)");
    }
    let handler = match how {
        Send_::Sync => None,
        Send_::Async(h) => Some((h, st.target)),
    };
    let waiter = ReplyWaiter::new(handler);
    st.waiting.retain(|w| !w.done());
    st.waiting.push(Arc::clone(&waiter));
    let copy = message_for_peer(message, &st, Some(Arc::clone(&waiter)), api);
    let other = st.other;
    drop(st);
    deliver(other, copy);
    Ok(waiter)
}

/// xpc/session.h `xpc_session_send_message_with_reply_sync`: the reply
/// (+1), or NULL with `*error_out` (+1).
#[no_mangle]
pub extern "C" fn xpc_session_send_message_with_reply_sync(session_: Ptr, message: Ptr, error_out: *mut Ptr) -> Ptr {
    const API: &str = "xpc_session_send_message_with_reply_sync";
    called(API);
    let (reply, err) = match send_with_reply(session_, message, Send_::Sync, API) {
        Ok(w) => w.wait(),
        Err(e) => (0, e),
    };
    if err != 0 {
        set_error(error_out, err);
    }
    reply as Ptr
}

/// xpc/session.h `xpc_session_send_message_with_reply_async`: the handler
/// gets the reply or an error, borrowed, on the session's target queue.
#[no_mangle]
pub extern "C" fn xpc_session_send_message_with_reply_async(
    session_: Ptr,
    message: Ptr,
    reply_handler: &Block<dyn Fn(Ptr, Ptr)>,
) {
    const API: &str = "xpc_session_send_message_with_reply_async";
    called(API);
    let h: Handler2 = Arc::new(Kept(reply_handler.copy()));
    if let Err(e) = send_with_reply(session_, message, Send_::Async(Arc::clone(&h)), API) {
        let q = session(session_, API).st.lock().unwrap_or_else(|e| e.into_inner()).target;
        let w = ReplyWaiter::new(Some((h, q)));
        w.fulfill(0, e);
    }
}

/// xpc/session.h `xpc_session_send_message`: NULL when sent, else a rich
/// error (+1). A reply made by `xpc_dictionary_create_reply` goes to the
/// sender waiting for it.
#[no_mangle]
pub extern "C" fn xpc_session_send_message(session_: Ptr, message: Ptr) -> Ptr {
    const API: &str = "xpc_session_send_message";
    called(API);
    let s = session(session_, API);
    let st = s.st.lock().unwrap_or_else(|e| e.into_inner());
    match st.phase {
        Phase::Inactive => misuse(API, "the session is not activated (xpc/session.h)"),
        Phase::Cancelled => return rich_error("the session was cancelled", false) as Ptr,
        Phase::Active => {}
    }
    let reply_to = match &get(message, API).kind {
        Kind::Dictionary(d) => d.lock().unwrap_or_else(|e| e.into_inner()).is_reply.clone(),
        _ => None,
    };
    let copy = message_for_peer(message, &st, None, API);
    let other = st.other;
    drop(st);
    match reply_to {
        Some(w) => w.fulfill(copy, 0),
        None => deliver(other, copy),
    }
    std::ptr::null_mut()
}

// ---------------------------------------------------------------------------
// Listeners (xpc/listener.h)
// ---------------------------------------------------------------------------

pub struct Listener {
    st: Mutex<ListenerState>,
}

enum Requirement {
    CodeSigning(CString),
    Peer(usize),
}

struct ListenerState {
    name: CString,
    phase: Phase,
    target: usize,
    incoming: Option<Handler1>,
    requirement: Option<Requirement>,
}

impl ListenerState {
    /// Whether the client of `peer` meets the listener's requirement. The
    /// model cannot evaluate the code-signing requirement language: a
    /// requirement string admits clients with the listener's own CDHash.
    fn requirement_matches(&self, peer: usize) -> Result<(), String> {
        let conn = session(peer as Ptr, "requirement").st.lock().unwrap_or_else(|e| e.into_inner()).connection;
        let id = connection(conn as Ptr, "requirement").id;
        match &self.requirement {
            None => Ok(()),
            Some(Requirement::CodeSigning(text)) => {
                if id.cdhash == crate::control::own_identity().cdhash {
                    Ok(())
                } else {
                    Err(format!("peer does not satisfy the code signing requirement {}", text.to_string_lossy()))
                }
            }
            Some(Requirement::Peer(req)) => lwcr_matches(*req, &id),
        }
    }
}

impl Listener {
    pub fn dispose(&self) {
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        if st.phase == Phase::Inactive {
            misuse("xpc_release", "an inactive listener was released without xpc_listener_cancel (xpc/listener.h)");
        }
        st.incoming = None;
        let target = std::mem::replace(&mut st.target, 0);
        let req = st.requirement.take();
        drop(st);
        if target != 0 && target != dispatch::default_queue() {
            dispatch::release(target, "xpc_release(listener)");
        }
        if let Some(Requirement::Peer(r)) = req {
            release(r as Ptr, "xpc_release(listener)");
        }
    }
}

fn listeners() -> &'static Mutex<HashMap<CString, usize>> {
    static L: OnceLock<Mutex<HashMap<CString, usize>>> = OnceLock::new();
    L.get_or_init(|| Mutex::new(HashMap::new()))
}

fn listener_of<'a>(ptr: Ptr, api: &str) -> &'a Listener {
    match &get(ptr, api).kind {
        Kind::Listener(l) => l,
        other => misuse(api, &format!("object is not a listener but a {}", other.type_name())),
    }
}

/// Registers an activated listener's name; false if another has it.
fn activate(addr: usize, error_out: *mut Ptr) -> bool {
    let l = listener_of(addr as Ptr, "xpc_listener_activate");
    let mut st = l.st.lock().unwrap_or_else(|e| e.into_inner());
    match st.phase {
        Phase::Active => misuse("xpc_listener_activate", "the listener is already active (xpc/listener.h: activate once)"),
        Phase::Cancelled => misuse("xpc_listener_activate", "the listener was cancelled"),
        Phase::Inactive => {}
    }
    let mut names = listeners().lock().unwrap_or_else(|e| e.into_inner());
    if names.contains_key(&st.name) {
        set_error(error_out, rich_error(&format!("{} already has a listener", st.name.to_string_lossy()), false));
        return false;
    }
    names.insert(st.name.clone(), addr);
    st.phase = Phase::Active;
    drop(st);
    retain(addr as Ptr, "xpc_listener_activate");
    true
}

/// xpc/listener.h `xpc_listener_create`: a new listener (+1) for a Mach
/// service launchd advertises for this job, or NULL with `*error_out`.
/// Active at once unless `XPC_LISTENER_CREATE_INACTIVE`.
#[no_mangle]
pub extern "C" fn xpc_listener_create(
    service: *const c_char,
    target_queue: *const libc::c_void,
    flags: u64,
    incoming_session_handler: &Block<dyn Fn(Ptr)>,
    error_out: *mut Ptr,
) -> Ptr {
    const API: &str = "xpc_listener_create";
    called(API);
    if service.is_null() {
        misuse(API, "NULL service name");
    }
    // SAFETY: a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(service) }.to_owned();
    if !advertised(&name) {
        set_error(
            error_out,
            rich_error(&format!("{} is not a Mach service launchd advertises for this job", name.to_string_lossy()), false),
        );
        return std::ptr::null_mut();
    }
    let target = queue_or_default(target_queue, API);
    let addr = create(Kind::Listener(Listener {
        st: Mutex::new(ListenerState {
            name,
            phase: Phase::Inactive,
            target,
            incoming: Some(Arc::new(Kept(incoming_session_handler.copy()))),
            requirement: None,
        }),
    })) as usize;
    if flags & LISTENER_CREATE_INACTIVE == 0 && !activate(addr, error_out) {
        xpc_listener_cancel(addr as Ptr);
        release(addr as Ptr, API);
        return std::ptr::null_mut();
    }
    addr as Ptr
}

/// xpc/listener.h `xpc_listener_activate`: once.
#[no_mangle]
pub extern "C" fn xpc_listener_activate(listener: Ptr, error_out: *mut Ptr) -> bool {
    called("xpc_listener_activate");
    activate(listener as usize, error_out)
}

/// xpc/listener.h `xpc_listener_cancel`: no new sessions; open ones go on.
#[no_mangle]
pub extern "C" fn xpc_listener_cancel(listener: Ptr) {
    const API: &str = "xpc_listener_cancel";
    called(API);
    let l = listener_of(listener, API);
    let mut st = l.st.lock().unwrap_or_else(|e| e.into_inner());
    let was = std::mem::replace(&mut st.phase, Phase::Cancelled);
    if was == Phase::Active {
        listeners().lock().unwrap_or_else(|e| e.into_inner()).remove(&st.name);
        drop(st);
        release(listener, API);
    }
}

/// xpc/listener.h `xpc_listener_reject_peer`: refuses a peer handed to the
/// incoming-session handler (still inactive).
#[no_mangle]
pub extern "C" fn xpc_listener_reject_peer(peer: Ptr, reason: *const c_char) {
    const API: &str = "xpc_listener_reject_peer";
    called(API);
    let s = session(peer, API);
    {
        let st = s.st.lock().unwrap_or_else(|e| e.into_inner());
        if !(st.is_peer && st.phase == Phase::Inactive) {
            misuse(API, "only a peer session not yet accepted, inside the incoming-session handler (xpc/listener.h)");
        }
    }
    let reason = if reason.is_null() {
        String::new()
    } else {
        // SAFETY: a NUL-terminated reason.
        unsafe { CStr::from_ptr(reason) }.to_string_lossy().into_owned()
    };
    reject(peer as usize, &reason);
}

fn set_requirement(listener: Ptr, req: Requirement, api: &str) {
    let l = listener_of(listener, api);
    let mut st = l.st.lock().unwrap_or_else(|e| e.into_inner());
    if st.phase != Phase::Inactive {
        misuse(api, "called after the listener was activated (xpc/listener.h)");
    }
    if st.requirement.is_some() {
        misuse(api, "the listener already has a peer requirement (xpc/listener.h: one per listener)");
    }
    st.requirement = Some(req);
}

/// xpc/listener.h `xpc_listener_set_peer_code_signing_requirement`: 0 on
/// success. The requirement text is kept, not parsed (see
/// `requirement_matches`).
#[no_mangle]
pub extern "C" fn xpc_listener_set_peer_code_signing_requirement(listener: Ptr, requirement: *const c_char) -> c_int {
    const API: &str = "xpc_listener_set_peer_code_signing_requirement";
    called(API);
    if requirement.is_null() {
        misuse(API, "NULL requirement");
    }
    // SAFETY: a NUL-terminated requirement.
    let text = unsafe { CStr::from_ptr(requirement) }.to_owned();
    set_requirement(listener, Requirement::CodeSigning(text), API);
    0
}

/// xpc/listener.h `xpc_listener_set_peer_requirement`: retains it.
#[no_mangle]
pub extern "C" fn xpc_listener_set_peer_requirement(listener: Ptr, requirement: Ptr) {
    const API: &str = "xpc_listener_set_peer_requirement";
    called(API);
    peer_requirement(requirement, API);
    retain(requirement, API);
    set_requirement(listener, Requirement::Peer(requirement as usize), API);
}

// ---------------------------------------------------------------------------
// Peer requirements (xpc/peer_requirement.h)
// ---------------------------------------------------------------------------

/// An LWCR requirement: a copy of its dictionary (one reference).
pub struct PeerRequirement {
    lwcr: Mutex<usize>,
}

impl PeerRequirement {
    pub fn dispose(&self) {
        let d = std::mem::replace(&mut *self.lwcr.lock().unwrap_or_else(|e| e.into_inner()), 0);
        if d != 0 {
            release(d as Ptr, "xpc_release(peer requirement)");
        }
    }
}

fn peer_requirement<'a>(ptr: Ptr, api: &str) -> &'a PeerRequirement {
    match &get(ptr, api).kind {
        Kind::PeerRequirement(r) => r,
        other => misuse(api, &format!("object is not a peer requirement but a {}", other.type_name())),
    }
}

/// The model evaluates the LWCR key `cdhash` (data) against the client's
/// CDHash; any other key fails (not modelled).
fn lwcr_matches(req: usize, id: &Identity) -> Result<(), String> {
    let r = peer_requirement(req as Ptr, "requirement");
    let lwcr = *r.lwcr.lock().unwrap_or_else(|e| e.into_inner());
    let Kind::Dictionary(d) = &get(lwcr as Ptr, "requirement").kind else { unreachable!() };
    let entries: Vec<(CString, usize)> =
        d.lock().unwrap_or_else(|e| e.into_inner()).entries.iter().map(|(k, v)| (k.clone(), *v)).collect();
    for (k, v) in entries {
        match (k.to_bytes(), &get(v as Ptr, "requirement").kind) {
            (b"cdhash", Kind::Data(h)) if h.as_slice() == id.cdhash => {}
            (b"cdhash", _) => return Err("peer requirement not satisfied: CDHash differs".into()),
            (other, _) => return Err(format!("LWCR key {} is not modelled", String::from_utf8_lossy(other))),
        }
    }
    Ok(())
}

/// xpc/peer_requirement.h `xpc_peer_requirement_create_lwcr`: +1, or NULL
/// with `*error_out` when `lwcr` is not a dictionary.
#[no_mangle]
pub extern "C" fn xpc_peer_requirement_create_lwcr(lwcr: Ptr, error_out: *mut Ptr) -> Ptr {
    const API: &str = "xpc_peer_requirement_create_lwcr";
    called(API);
    if !matches!(get(lwcr, API).kind, Kind::Dictionary(_)) {
        set_error(error_out, rich_error("the LWCR is not a dictionary", false));
        return std::ptr::null_mut();
    }
    let copy = deep_copy(lwcr as usize, API) as usize;
    create(Kind::PeerRequirement(PeerRequirement { lwcr: Mutex::new(copy) }))
}

/// xpc/peer_requirement.h `xpc_peer_requirement_match_received_message`:
/// whether the sender of a received message meets the requirement; false
/// with `*error_out` (+1) if not.
#[no_mangle]
pub extern "C" fn xpc_peer_requirement_match_received_message(
    peer_requirement_: Ptr,
    message: Ptr,
    error_out: *mut Ptr,
) -> bool {
    const API: &str = "xpc_peer_requirement_match_received_message";
    called(API);
    peer_requirement(peer_requirement_, API);
    let remote = match &get(message, API).kind {
        Kind::Dictionary(d) => d.lock().unwrap_or_else(|e| e.into_inner()).remote as Ptr,
        _ => std::ptr::null_mut(),
    };
    if remote.is_null() {
        misuse(API, "the message was not received from a peer");
    }
    let id = connection(remote, API).id;
    match lwcr_matches(peer_requirement_ as usize, &id) {
        Ok(()) => true,
        Err(why) => {
            set_error(error_out, rich_error(&why, false));
            false
        }
    }
}
