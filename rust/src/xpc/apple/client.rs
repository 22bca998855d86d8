//! The client side: one XPC session to the broker's Mach service, kept for
//! the client's life (the broker leases networks to the session, so closing
//! it releases them).
//!
//! Threads: `request` blocks the calling thread until the reply arrives and
//! must not run on a dispatch queue the session targets (it targets the
//! default queue, which callers never block). Safe to share between threads.

use std::ffi::CString;

use super::ffi;
use super::object::{from_xpc, take_rich_error, to_xpc, Object};
use crate::xpc::{Dict, Error};

/// A session to a Mach service.
pub struct Client {
    session: Object,
    service: String,
    x: &'static ffi::Xpc,
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
                Ok(Client { session, service: service.to_owned(), x })
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

    /// Sends `message` and waits for the reply.
    pub fn request(&self, message: &Dict) -> Result<Dict, Error> {
        let msg = to_xpc(message)?;
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

impl Drop for Client {
    fn drop(&mut self) {
        // SAFETY: the session is live and active; `Object` then releases it.
        unsafe { (self.x.xpc_session_cancel)(self.session.as_ptr()) };
    }
}
