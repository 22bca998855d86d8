//! The client side: one XPC session to the broker's Mach service, kept for
//! the client's life (the broker leases networks to the session, so closing
//! it releases them).
//!
//! Threads: `request` blocks the calling thread until the reply arrives (or
//! the timeout passes) and must not run on a dispatch queue the session
//! targets (it targets the default queue, which callers never block). The
//! reply handler of a timed request runs on that queue and only converts and
//! hands over the reply. Safe to share between threads.

use std::ffi::CString;
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;
use std::time::Duration;

use block2::RcBlock;

use super::ffi;
use super::object::{from_xpc, take_rich_error, to_xpc, Object};
use crate::xpc::{Dict, Error};

/// A session to a Mach service.
pub struct Client {
    session: Object,
    service: String,
    x: &'static ffi::Xpc,
    timeout: Mutex<Option<Duration>>,
}

impl Client {
    /// Opens a session to `service`. `privileged`: the service is a
    /// LaunchDaemon in the system domain rather than a per-user LaunchAgent.
    pub fn connect(service: &str, privileged: bool) -> Result<Client, Error> {
        let c = CString::new(service)
            .map_err(|_| Error::Transport(format!("Mach service name {service:?} contains a NUL byte")))?;
        let x = ffi::xpc()?;
        let flags = if privileged { ffi::XPC_SESSION_CREATE_MACH_PRIVILEGED } else { ffi::XPC_SESSION_CREATE_NONE };
        let mut err: ffi::xpc_rich_error_t = std::ptr::null_mut();
        // SAFETY: a valid C string, the default queue (NULL), and an error
        // out-pointer; the result is +1 or NULL with a +1 error.
        let raw = unsafe { (x.xpc_session_create_mach_service)(c.as_ptr(), std::ptr::null(), flags, &mut err) };
        // SAFETY: `raw` is NULL or ours.
        match unsafe { Object::from_owned(raw) } {
            Some(session) => {
                // SAFETY: `err` is NULL or ours.
                unsafe { take_rich_error(err) };
                Ok(Client { session, service: service.to_owned(), x, timeout: Mutex::new(None) })
            }
            None => {
                // SAFETY: `err` is NULL or ours.
                let text = unsafe { take_rich_error(err) }.map(|(t, _)| t).unwrap_or_default();
                Err(Error::Transport(format!(
                    "cannot open a session to {service}: {text}; is the broker installed (vmnet-rs install)?"
                )))
            }
        }
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

    /// Sends `message` and waits for the reply.
    pub fn request(&self, message: &Dict) -> Result<Dict, Error> {
        let msg = to_xpc(message)?;
        if let Some(timeout) = *self.timeout.lock().unwrap_or_else(|e| e.into_inner()) {
            return self.request_within(&msg, timeout);
        }
        let mut err: ffi::xpc_rich_error_t = std::ptr::null_mut();
        // SAFETY: the session and message are live; not called on the
        // session's target queue (see module doc). The reply is +1 or NULL
        // with a +1 error.
        let raw =
            unsafe { (self.x.xpc_session_send_message_with_reply_sync)(self.session.as_ptr(), msg.as_ptr(), &mut err) };
        // SAFETY: `raw` is NULL or ours.
        let Some(reply) = (unsafe { Object::from_owned(raw) }) else {
            // SAFETY: `err` is NULL or ours.
            let text = unsafe { take_rich_error(err) }.map(|(t, _)| t).unwrap_or_default();
            return Err(Error::Transport(format!("request to {} failed: {text}", self.service)));
        };
        // SAFETY: `err` is NULL or ours.
        unsafe { take_rich_error(err) };
        // SAFETY: `reply` is live for the call.
        unsafe { from_xpc(reply.as_ptr()) }
    }
}

impl Client {
    fn request_within(&self, msg: &Object, timeout: Duration) -> Result<Dict, Error> {
        let (tx, rx) = sync_channel::<Result<Dict, Error>>(1);
        let tx = Mutex::new(Some(tx));
        let handler = RcBlock::new(move |reply: ffi::xpc_object_t, err: ffi::xpc_rich_error_t| {
            let result = if reply.is_null() {
                // SAFETY: the error is borrowed for the block's duration;
                // retain it so `take_rich_error` can release its own reference.
                let text = unsafe { take_rich_error(if err.is_null() { err } else { ffi::xpc_retain(err) }) }
                    .map(|(t, _)| t)
                    .unwrap_or_else(|| "no reply".into());
                Err(Error::Transport(text))
            } else {
                // SAFETY: the reply is live for the block's duration; it is
                // copied out.
                unsafe { from_xpc(reply) }
            };
            if let Some(tx) = tx.lock().ok().and_then(|mut g| g.take()) {
                let _ = tx.try_send(result);
            }
        });
        // SAFETY: session and message are live; libxpc copies the block.
        unsafe { (self.x.xpc_session_send_message_with_reply_async)(self.session.as_ptr(), msg.as_ptr(), &handler) };
        match rx.recv_timeout(timeout) {
            Ok(result) => result.map_err(|e| match e {
                Error::Transport(t) => Error::Transport(format!("request to {} failed: {t}", self.service)),
                other => other,
            }),
            Err(_) => Err(Error::Transport(format!(
                "no reply from {} within {:.1} s; is the broker busy or stuck? (vmnet-rs status)",
                self.service,
                timeout.as_secs_f64()
            ))),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // SAFETY: the session is live and active; `Object` then releases it.
        unsafe { (self.x.xpc_session_cancel)(self.session.as_ptr()) };
    }
}
