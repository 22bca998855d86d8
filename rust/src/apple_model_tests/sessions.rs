//! `xpc/apple/listener.rs` and `client.rs` against the model's sessions
//! and listeners: requests and replies both ways (sync and timed), who the
//! peer is, disconnection, the fallback reply, refused peers, and the traps
//! of session and listener misuse.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use block2::RcBlock;

use super::{advertise, leaks, own_cdhash, own_process, set_client, Expect};
use crate::model_test_name;
use crate::xpc::apple::ffi;
use crate::xpc::apple::{serve, Client, ServeOptions};
use crate::xpc::peer_policy::{ListenerRequirement, PeerPolicy};
use crate::xpc::{Dict, Error, Handler, Peer, Value};

const SERVICE: &str = "org.vmnet-rs.model-test";
const OTHER_CDHASH: [u8; 20] = [0x42; 20];

/// Answers with the request and who sent it; "deep" asks for a reply
/// nested past what XPC conversion carries.
#[derive(Default)]
struct Echo {
    disconnected: Mutex<Vec<u64>>,
}

impl Handler for Echo {
    fn request(&self, peer: &Peer, message: Dict) -> Dict {
        if message.get_str("op") == Some("deep") {
            let mut deep = Dict::new().with("leaf", Value::Int(0));
            for _ in 0..40 {
                deep = Dict::new().with("d", Value::Dict(deep));
            }
            return deep;
        }
        message
            .with("uid", Value::Int(peer.uid.into()))
            .with("pid", Value::Int(peer.pid.into()))
            .with("connection", Value::Int(peer.connection as i64))
    }

    fn disconnected(&self, peer: &Peer) {
        self.disconnected.lock().unwrap().push(peer.connection);
    }

    fn malformed(&self, _peer: &Peer, error: &Error) -> Dict {
        Dict::new().with("Error", Value::String(error.to_string()))
    }

    fn refused(&self, _peer: Option<&Peer>, reason: &str) -> Dict {
        Dict::new().with("Error", Value::String(format!("refused: {reason}")))
    }
}

/// Admits everyone; with `serialization_same_executable`, requests with
/// op "serialization" need this executable's CDHash (the pre-26.2 rule).
struct Policy {
    serialization_same_executable: bool,
}

impl PeerPolicy for Policy {
    fn admit(&self, _peer: &Peer) -> Result<(), String> {
        Ok(())
    }
    fn checks_same_executable(&self) -> bool {
        self.serialization_same_executable
    }
    fn same_executable_only(&self, request: &Dict) -> bool {
        request.get_str("op") == Some("serialization")
    }
}

fn options(requirement: Option<ListenerRequirement>, same_executable: bool) -> ServeOptions {
    ServeOptions { policy: Arc::new(Policy { serialization_same_executable: same_executable }), requirement }
}

fn op(name: &str) -> Dict {
    Dict::new().with("op", Value::String(name.into()))
}

#[test]
fn a_request_is_answered_and_a_gone_client_disconnects() {
    own_process(model_test_name!("a_request_is_answered_and_a_gone_client_disconnects"), Expect::Pass, || {
        advertise(SERVICE);
        let handler = Arc::new(Echo::default());
        let listener = serve(SERVICE, handler.clone(), options(None, false)).expect("serve");
        let client = Client::connect(SERVICE, false).expect("connect");
        let reply = client.request(&op("hello")).expect("a reply");
        assert_eq!(reply.get_str("op"), Some("hello"));
        // SAFETY: plain id getters.
        let (uid, pid) = unsafe { (libc::geteuid(), libc::getpid()) };
        assert_eq!(reply.get_int("uid"), Some(uid.into()), "the peer's uid, from its connection");
        assert_eq!(reply.get_int("pid"), Some(pid.into()));
        // The timed path: the reply arrives through the async reply handler.
        client.set_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let again = client.request(&op("again")).expect("a reply within the timeout");
        assert_eq!(again.get_int("connection"), reply.get_int("connection"), "one session, one connection id");
        assert_eq!(listener.connection_count(), 1);
        drop(client);
        leaks();
        assert_eq!(*handler.disconnected.lock().unwrap(), vec![reply.get_int("connection").unwrap() as u64]);
        assert_eq!(listener.connection_count(), 0, "the cancel handler ran");
        drop(listener);
    });
}

#[test]
fn a_reply_too_large_to_encode_is_answered_with_an_error() {
    own_process(model_test_name!("a_reply_too_large_to_encode_is_answered_with_an_error"), Expect::Pass, || {
        advertise(SERVICE);
        let listener = serve(SERVICE, Arc::new(Echo::default()), options(None, false)).expect("serve");
        let client = Client::connect(SERVICE, false).expect("connect");
        client.set_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let reply = client.request(&op("deep")).expect("the fallback reply arrives");
        let text = reply.get_str("Error").expect("an Error entry");
        assert!(text.contains("could not be encoded") && text.contains("deeper"), "{text}");
        assert_eq!(reply.len(), 1, "nothing of the failed reply is left in it");
        drop(client);
        drop(listener);
    });
}

#[test]
fn a_service_launchd_does_not_advertise_is_refused_with_the_fix() {
    own_process(model_test_name!("a_service_launchd_does_not_advertise_is_refused_with_the_fix"), Expect::Pass, || {
        let err = serve("org.vmnet-rs.unadvertised", Arc::new(Echo::default()), options(None, false))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("launchd plist"), "{err}");
        let err = Client::connect("org.vmnet-rs.unadvertised", false).err().expect("nobody listens");
        assert!(matches!(err, Error::Unavailable(_)), "{err}");
    });
}

/// A peer that does not meet `requirement` is rejected before any of its
/// messages reaches the handler; the broker's own process is then admitted.
fn a_stranger_is_rejected_and_the_own_process_admitted(requirement: ListenerRequirement) {
    advertise(SERVICE);
    let listener = serve(SERVICE, Arc::new(Echo::default()), options(Some(requirement), false)).expect("serve");
    set_client(Some((501, 20, 4242, OTHER_CDHASH)));
    let stranger = Client::connect(SERVICE, false).expect("the session opens; the listener rejects it");
    // The rejection's reason reaches the client as its session's
    // cancellation; whether the request sees the reason or only the
    // cancellation depends on which it meets first.
    let err = stranger.request(&op("hello")).expect_err("rejected");
    assert!(matches!(err, Error::Transport(_)), "{err}");
    leaks();
    assert_eq!(listener.connection_count(), 0, "the stranger's session was never accepted");
    set_client(None);
    let same = Client::connect(SERVICE, false).expect("connect");
    assert_eq!(same.request(&op("hello")).expect("admitted").get_str("op"), Some("hello"));
    assert_eq!(listener.connection_count(), 1, "only the admitted session was accepted");
    drop((stranger, same, listener));
}

#[test]
fn a_peer_without_the_listener_requirement_is_rejected() {
    own_process(model_test_name!("a_peer_without_the_listener_requirement_is_rejected"), Expect::Pass, || {
        a_stranger_is_rejected_and_the_own_process_admitted(ListenerRequirement::SameCdhash(own_cdhash()))
    });
}

#[test]
fn a_peer_without_the_code_signing_requirement_is_rejected() {
    own_process(model_test_name!("a_peer_without_the_code_signing_requirement_is_rejected"), Expect::Pass, || {
        a_stranger_is_rejected_and_the_own_process_admitted(ListenerRequirement::CodeSigning("anchor apple generic".into()))
    });
}

#[test]
fn a_rejected_peer_sees_its_session_end_and_the_listener_goes_on() {
    own_process(model_test_name!("a_rejected_peer_sees_its_session_end_and_the_listener_goes_on"), Expect::Pass, || {
        let x = ffi::xpc().expect("xpc");
        let reject = x.xpc_listener_reject_peer;
        // SAFETY: the inactive peer handed to the handler, refused the way
        // listener.h allows.
        let incoming = RcBlock::new(move |peer: ffi::xpc_session_t| unsafe { reject(peer, c"not today".as_ptr()) });
        let l = raw_listener(x, 0, &incoming);
        let client = Client::connect(SERVICE, false).expect("connect");
        let err = client.request(&op("hello")).expect_err("rejected");
        assert!(matches!(err, Error::Transport(_)), "{err}");
        drop(client);
        // SAFETY: the listener is live and ours; cancelled, then released.
        unsafe {
            (x.xpc_listener_cancel)(l);
            ffi::xpc_release(l);
        }
    });
}

#[test]
fn before_26_2_a_serialization_needs_the_same_executable() {
    own_process(model_test_name!("before_26_2_a_serialization_needs_the_same_executable"), Expect::Pass, || {
        advertise(SERVICE);
        let listener = serve(SERVICE, Arc::new(Echo::default()), options(None, true)).expect("serve");
        set_client(Some((501, 20, 4242, OTHER_CDHASH)));
        let stranger = Client::connect(SERVICE, false).expect("connect");
        let refused = stranger.request(&op("serialization")).expect("a reply");
        assert!(refused.get_str("Error").unwrap_or("").contains("same executable"), "{refused:?}");
        assert_eq!(stranger.request(&op("hello")).expect("a reply").get_str("op"), Some("hello"), "other requests pass");
        assert_eq!(refused.get_int("uid"), None);
        let peer = stranger.request(&op("who")).expect("a reply");
        assert_eq!((peer.get_int("uid"), peer.get_int("pid")), (Some(501), Some(4242)), "the peer as its connection says");
        set_client(None);
        let same = Client::connect(SERVICE, false).expect("connect");
        assert_eq!(same.request(&op("serialization")).expect("a reply").get_str("op"), Some("serialization"));
        drop((stranger, same, listener));
    });
}

// Traps: each fires in the model as it does in libxpc.

fn raw_listener(x: &ffi::Xpc, flags: u64, incoming: &ffi::IncomingSessionHandler) -> ffi::xpc_listener_t {
    advertise(SERVICE);
    let name = std::ffi::CString::new(SERVICE).unwrap();
    let mut err: ffi::xpc_rich_error_t = std::ptr::null_mut();
    // SAFETY: a C string, the default queue, a live block, an out-pointer.
    let l = unsafe { (x.xpc_listener_create)(name.as_ptr(), std::ptr::null(), flags, incoming, &mut err) };
    assert!(!l.is_null(), "listener");
    l
}

fn raw_session(x: &ffi::Xpc) -> ffi::xpc_session_t {
    let name = std::ffi::CString::new(SERVICE).unwrap();
    let mut err: ffi::xpc_rich_error_t = std::ptr::null_mut();
    // SAFETY: a C string, the default queue, an out-pointer.
    let s = unsafe { (x.xpc_session_create_mach_service)(name.as_ptr(), std::ptr::null(), 0, &mut err) };
    assert!(!s.is_null(), "session");
    s
}

#[test]
fn trap_listener_activated_twice() {
    own_process(model_test_name!("trap_listener_activated_twice"), Expect::Abort("xpc_listener_activate: the listener is already active"), || {
        let x = ffi::xpc().expect("xpc");
        let incoming = RcBlock::new(|_peer: ffi::xpc_session_t| {});
        let l = raw_listener(x, ffi::XPC_LISTENER_CREATE_INACTIVE, &incoming);
        let mut err: ffi::xpc_rich_error_t = std::ptr::null_mut();
        // SAFETY: a live, inactive listener; the second call is the misuse.
        unsafe {
            assert!((x.xpc_listener_activate)(l, &mut err));
            (x.xpc_listener_activate)(l, &mut err);
        }
    });
}

#[test]
fn trap_session_handler_set_after_activation() {
    own_process(model_test_name!("trap_session_handler_set_after_activation"), Expect::Abort("xpc_session_set_cancel_handler: called after the session was activated"), || {
        let x = ffi::xpc().expect("xpc");
        let listener = serve(SERVICE, Arc::new(Echo::default()), { advertise(SERVICE); options(None, false) }).expect("serve");
        let session = raw_session(x);
        let on_cancel = RcBlock::new(|_e: ffi::xpc_rich_error_t| {});
        // SAFETY: a live session, active since creation: the misuse.
        unsafe { (x.xpc_session_set_cancel_handler)(session, &on_cancel) };
        drop(listener);
    });
}

#[test]
fn trap_cancelling_a_peer_never_activated() {
    own_process(model_test_name!("trap_cancelling_a_peer_never_activated"), Expect::Abort("xpc_session_cancel: the session was never activated"), || {
        let x = ffi::xpc().expect("xpc");
        let cancel = x.xpc_session_cancel;
        // SAFETY: the peer handed to the handler is still inactive: the misuse.
        let incoming = RcBlock::new(move |peer: ffi::xpc_session_t| unsafe { cancel(peer) });
        let _l = raw_listener(x, 0, &incoming);
        let _s = raw_session(x);
        leaks();
    });
}

#[test]
fn trap_async_send_on_a_cancelled_session() {
    own_process(model_test_name!("trap_async_send_on_a_cancelled_session"), Expect::Abort("xpc_session_send_message_with_reply_async: the session was cancelled by this process"), || {
        let x = ffi::xpc().expect("xpc");
        let listener = serve(SERVICE, Arc::new(Echo::default()), { advertise(SERVICE); options(None, false) }).expect("serve");
        let session = raw_session(x);
        let msg = crate::xpc::apple::object::to_xpc(&op("late")).expect("message");
        let on_reply = RcBlock::new(|_r: ffi::xpc_object_t, _e: ffi::xpc_rich_error_t| {});
        // SAFETY: a live session, cancelled, then used: the misuse.
        unsafe {
            (x.xpc_session_cancel)(session);
            (x.xpc_session_send_message_with_reply_async)(session, msg.as_ptr(), &on_reply);
        }
        drop(listener);
    });
}

#[test]
fn trap_session_activated_twice() {
    own_process(model_test_name!("trap_session_activated_twice"), Expect::Abort("xpc_session_activate: the session was activated before"), || {
        let x = ffi::xpc().expect("xpc");
        let listener = serve(SERVICE, Arc::new(Echo::default()), { advertise(SERVICE); options(None, false) }).expect("serve");
        let name = std::ffi::CString::new(SERVICE).unwrap();
        let mut err: ffi::xpc_rich_error_t = std::ptr::null_mut();
        // SAFETY: an inactive session, activated, then activated again: the misuse.
        unsafe {
            let s = (x.xpc_session_create_mach_service)(name.as_ptr(), std::ptr::null(), ffi::XPC_SESSION_CREATE_INACTIVE, &mut err);
            assert!((x.xpc_session_activate)(s, &mut err));
            (x.xpc_session_activate)(s, &mut err);
        }
        drop(listener);
    });
}

#[test]
fn trap_sync_send_on_the_sessions_own_queue() {
    own_process(model_test_name!("trap_sync_send_on_the_sessions_own_queue"), Expect::Abort("xpc_session_send_message_with_reply_sync: called on the session's own target queue"), || {
        let x = ffi::xpc().expect("xpc");
        let (set_handler, sync) = (x.xpc_session_set_incoming_message_handler, x.xpc_session_send_message_with_reply_sync);
        let incoming = RcBlock::new(move |peer: ffi::xpc_session_t| {
            let peer_addr = peer as usize;
            // The handler runs on the peer's own queue: a sync send from it
            // would wait for a reply that queue can never deliver.
            let on_message = RcBlock::new(move |message: ffi::xpc_object_t| {
                let mut err: ffi::xpc_rich_error_t = std::ptr::null_mut();
                // SAFETY: the live peer session and message: the misuse.
                unsafe { sync(peer_addr as ffi::xpc_session_t, message, &mut err) };
            });
            // SAFETY: the inactive peer handed to the handler.
            unsafe { set_handler(peer, &on_message) };
        });
        let _l = raw_listener(x, 0, &incoming);
        let client = Client::connect(SERVICE, false).expect("connect");
        client.set_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let _ = client.request(&op("hello"));
    });
}

#[test]
fn trap_second_peer_requirement() {
    own_process(model_test_name!("trap_second_peer_requirement"), Expect::Abort("the listener already has a peer requirement"), || {
        let x = ffi::xpc().expect("xpc");
        let incoming = RcBlock::new(|_peer: ffi::xpc_session_t| {});
        let l = raw_listener(x, ffi::XPC_LISTENER_CREATE_INACTIVE, &incoming);
        // SAFETY: an inactive listener given two requirements: the misuse.
        unsafe {
            assert_eq!((x.xpc_listener_set_peer_code_signing_requirement)(l, c"anchor apple".as_ptr()), 0);
            (x.xpc_listener_set_peer_code_signing_requirement)(l, c"anchor apple".as_ptr());
        }
    });
}

#[test]
fn trap_inactive_listener_released_uncancelled() {
    own_process(model_test_name!("trap_inactive_listener_released_uncancelled"), Expect::Abort("an inactive listener was released without xpc_listener_cancel"), || {
        let x = ffi::xpc().expect("xpc");
        let incoming = RcBlock::new(|_peer: ffi::xpc_session_t| {});
        let l = raw_listener(x, ffi::XPC_LISTENER_CREATE_INACTIVE, &incoming);
        // SAFETY: the last release of an inactive listener: the misuse.
        unsafe { ffi::xpc_release(l) };
    });
}

#[test]
fn trap_incoming_session_neither_accepted_nor_rejected() {
    own_process(model_test_name!("trap_incoming_session_neither_accepted_nor_rejected"), Expect::Abort("the handler returned without setting the peer's incoming message handler"), || {
        let x = ffi::xpc().expect("xpc");
        let incoming = RcBlock::new(|_peer: ffi::xpc_session_t| {});
        let _l = raw_listener(x, 0, &incoming);
        let _s = raw_session(x);
        leaks();
    });
}
