//! The client side: one XPC session to the broker's Mach service, kept while
//! it works (the broker leases networks to the session, so closing it
//! releases them).
//!
//! libxpc cancels a client session for good once a request on it fails
//! or the broker drops it (the broker exited or restarted, the connection
//! broke): every later request on that session would fail too, and an
//! asynchronous send on it makes a crash report (xpc/session.h). So an
//! error discards the session (`xpc::session_slot::SessionSlot`), the
//! failing request reports it, and so does the session's cancel handler; the
//! next request opens a new session. Leases held by the old session are gone
//! with it; the error says so.
//!
//! Threads: `request` blocks the calling thread until the reply arrives (or
//! the timeout passes) and must not run on a dispatch queue the session
//! targets (it targets the default queue, which callers never block). The
//! reply handler of a timed request runs on that queue and only converts and
//! hands over the reply. Safe to share between threads.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use block2::RcBlock;

use super::ffi;
use super::object::{from_xpc, take_rich_error, to_xpc, Object};
use crate::xpc::session_slot::SessionSlot;
use crate::xpc::{Dict, Error};

/// One `xpc_session`; cancelled, then released, when the last user drops it.
struct Session {
    x: &'static ffi::Xpc,
    session: Object,
    /// Set by the session's cancel handler: the broker dropped the session
    /// (or it exited), and the session is invalid for good (xpc/xpc.h).
    cancelled: Arc<AtomicBool>,
}

impl Session {
    fn open(x: &'static ffi::Xpc, service: &str, privileged: bool) -> Result<Session, Error> {
        let c = CString::new(service)
            .map_err(|_| Error::Transport(format!("Mach service name {service:?} contains a NUL byte")))?;
        // Inactive, so the cancel handler is in place before anything can
        // cancel it (xpc/session.h).
        let flags = ffi::XPC_SESSION_CREATE_INACTIVE
            | if privileged { ffi::XPC_SESSION_CREATE_MACH_PRIVILEGED } else { ffi::XPC_SESSION_CREATE_NONE };
        let mut err: ffi::xpc_rich_error_t = std::ptr::null_mut();
        // SAFETY: a valid C string, the default queue (NULL), and an error
        // out-pointer; the result is +1 or NULL with a +1 error.
        let raw = unsafe { (x.xpc_session_create_mach_service)(c.as_ptr(), std::ptr::null(), flags, &mut err) };
        // SAFETY: `raw` is NULL or ours.
        match unsafe { Object::from_owned(raw) } {
            Some(session) => {
                // SAFETY: `err` is NULL or ours.
                unsafe { take_rich_error(err) };
                let cancelled = Arc::new(AtomicBool::new(false));
                let flag = Arc::clone(&cancelled);
                let on_cancel = RcBlock::new(move |_error: ffi::xpc_rich_error_t| {
                    flag.store(true, Ordering::Release);
                });
                // Built now, so a failed activation below is cancelled and
                // released by `Drop`.
                let this = Session { x, session, cancelled };
                // SAFETY: the session is live and inactive; libxpc copies the
                // block (ours goes at the end of this scope).
                unsafe { (x.xpc_session_set_cancel_handler)(this.session.as_ptr(), &on_cancel) };
                let mut err: ffi::xpc_rich_error_t = std::ptr::null_mut();
                // SAFETY: the session is live and inactive; `err` is an out-pointer.
                if !unsafe { (x.xpc_session_activate)(this.session.as_ptr(), &mut err) } {
                    // SAFETY: `err` is NULL or ours.
                    let text = unsafe { take_rich_error(err) }.map(|(t, _)| t).unwrap_or_default();
                    return Err(Error::Unavailable(format!("cannot activate a session to {service}: {text}")));
                }
                Ok(this)
            }
            None => {
                // SAFETY: `err` is NULL or ours.
                let text = unsafe { take_rich_error(err) }.map(|(t, _)| t).unwrap_or_default();
                Err(Error::Unavailable(format!(
                    "cannot open a session to {service}: {text}; is the broker installed (vmnet-rs install)?"
                )))
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: the session is live; cancelling an already cancelled
        // session is allowed (xpc/session.h); `Object` then releases it.
        unsafe { (self.x.xpc_session_cancel)(self.session.as_ptr()) };
    }
}

/// A session to a Mach service, reopened after an error.
pub struct Client {
    slot: SessionSlot<Session>,
    service: String,
    privileged: bool,
    x: &'static ffi::Xpc,
    timeout: Mutex<Option<Duration>>,
}

impl Client {
    /// Opens a session to `service`. `privileged`: the service is a
    /// LaunchDaemon in the system domain rather than a per-user LaunchAgent.
    pub fn connect(service: &str, privileged: bool) -> Result<Client, Error> {
        let x = ffi::xpc()?;
        let first = Session::open(x, service, privileged)?;
        Ok(Client {
            slot: SessionSlot::new(first),
            service: service.to_owned(),
            privileged,
            x,
            timeout: Mutex::new(None),
        })
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// How long `request` waits for a reply; `None` (the default) waits as
    /// long as the broker takes. Same shape as `unix::Client::set_timeout`.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), Error> {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner()) = timeout;
        Ok(())
    }

    /// Sends `message` and waits for the reply. After a transport error the
    /// session is dropped and the next call opens a new one.
    pub fn request(&self, message: &Dict) -> Result<Dict, Error> {
        let msg = to_xpc(message)?;
        // A session whose cancel handler ran is replaced before anything is
        // sent on it (sending on a cancelled session makes a crash report).
        let (session, fresh) = self
            .slot
            .get_usable_or_open(|s| !s.cancelled.load(Ordering::Acquire), || Session::open(self.x, &self.service, self.privileged))?;
        if fresh {
            log::info!("opened a new session to {} (the previous one failed)", self.service);
        }
        let timeout = *self.timeout.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = match timeout {
            Some(timeout) => self.request_within(&session, &msg, timeout),
            None => self.request_sync(&session, &msg),
        };
        match outcome {
            Outcome::Reply(result) => result,
            Outcome::SessionFailed(text) => {
                self.slot.discard(&session);
                Err(Error::Transport(format!(
                    "request to {} failed: {text}; the session is closed (networks leased on it are released) and the next request opens a new one",
                    self.service
                )))
            }
            Outcome::TimedOut(after) => Err(Error::Transport(format!(
                "no reply from {} within {:.1} s; is the broker busy or stuck? (vmnet-rs status)",
                self.service,
                after.as_secs_f64()
            ))),
        }
    }
}

/// How one request ended.
enum Outcome {
    /// A reply arrived (converted, or why it could not be).
    Reply(Result<Dict, Error>),
    /// libxpc reported an error: the session is cancelled for good.
    SessionFailed(String),
    /// No reply within the timeout; the session may still be fine.
    TimedOut(Duration),
}

impl Client {
    fn request_sync(&self, session: &Arc<Session>, msg: &Object) -> Outcome {
        if session.cancelled.load(Ordering::Acquire) {
            return Outcome::SessionFailed("the session was cancelled".into());
        }
        let mut err: ffi::xpc_rich_error_t = std::ptr::null_mut();
        // SAFETY: the session and message are live; not called on the
        // session's target queue (see module doc). The reply is +1 or NULL
        // with a +1 error.
        let raw = unsafe {
            (self.x.xpc_session_send_message_with_reply_sync)(session.session.as_ptr(), msg.as_ptr(), &mut err)
        };
        // SAFETY: `raw` is NULL or ours.
        let Some(reply) = (unsafe { Object::from_owned(raw) }) else {
            // SAFETY: `err` is NULL or ours.
            let text = unsafe { take_rich_error(err) }.map(|(t, _)| t).unwrap_or_else(|| "no reply".into());
            return Outcome::SessionFailed(text);
        };
        // SAFETY: `err` is NULL or ours.
        unsafe { take_rich_error(err) };
        // SAFETY: `reply` is live for the call.
        Outcome::Reply(unsafe { from_xpc(reply.as_ptr()) })
    }

    fn request_within(&self, session: &Arc<Session>, msg: &Object, timeout: Duration) -> Outcome {
        let (tx, rx) = sync_channel::<Outcome>(1);
        let tx = Mutex::new(Some(tx));
        let handler = RcBlock::new(move |reply: ffi::xpc_object_t, err: ffi::xpc_rich_error_t| {
            let outcome = if reply.is_null() {
                // SAFETY: the error is borrowed for the block's duration;
                // retain it so `take_rich_error` can release its own reference.
                let text = unsafe { take_rich_error(if err.is_null() { err } else { ffi::xpc_retain(err) }) }
                    .map(|(t, _)| t)
                    .unwrap_or_else(|| "no reply".into());
                Outcome::SessionFailed(text)
            } else {
                // SAFETY: the reply is live for the block's duration; it is
                // copied out.
                Outcome::Reply(unsafe { from_xpc(reply) })
            };
            if let Some(tx) = tx.lock().ok().and_then(|mut g| g.take()) {
                let _ = tx.try_send(outcome);
            }
        });
        if session.cancelled.load(Ordering::Acquire) {
            return Outcome::SessionFailed("the session was cancelled".into());
        }
        // SAFETY: session and message are live and the session was not
        // cancelled a moment ago; libxpc copies the block.
        unsafe {
            (self.x.xpc_session_send_message_with_reply_async)(session.session.as_ptr(), msg.as_ptr(), &handler)
        };
        rx.recv_timeout(timeout).unwrap_or(Outcome::TimedOut(timeout))
    }
}
