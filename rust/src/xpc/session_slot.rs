//! [`SessionSlot`]: a client's XPC session, replaced after an error.
//! Portable (no libxpc) so it is tested on every OS; the macOS client
//! (`xpc/apple/client.rs`) holds one.

use std::sync::{Arc, Mutex};

/// A client's current session, replaced after an error: libxpc cancels a
/// client session for good once a request on it fails, so the next request
/// opens a new session instead of failing like every request since.
/// Thread-safe; requests on one session run concurrently (the lock is held
/// only to take or replace it).
pub struct SessionSlot<T> {
    current: Mutex<Option<Arc<T>>>,
}

impl<T> SessionSlot<T> {
    pub fn new(first: T) -> Self {
        SessionSlot { current: Mutex::new(Some(Arc::new(first))) }
    }

    /// The current session, or a new one from `open` if the last was
    /// discarded; `true` when it was just opened.
    pub fn get_or_open<E>(&self, open: impl FnOnce() -> Result<T, E>) -> Result<(Arc<T>, bool), E> {
        self.get_usable_or_open(|_| true, open)
    }

    /// As [`get_or_open`](Self::get_or_open), and a current session that is
    /// no longer `usable` (its cancel handler ran: the peer dropped it) is
    /// discarded first, so nothing is ever sent on a cancelled session.
    pub fn get_usable_or_open<E>(&self, usable: impl Fn(&T) -> bool, open: impl FnOnce() -> Result<T, E>) -> Result<(Arc<T>, bool), E> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|s| !usable(s)) {
            *current = None;
        }
        if let Some(session) = current.as_ref() {
            return Ok((Arc::clone(session), false));
        }
        let session = Arc::new(open()?);
        *current = Some(Arc::clone(&session));
        Ok((session, true))
    }

    /// Discards `session` after an error on it, if it is still the current
    /// one (another thread may have replaced it already). The session itself
    /// goes when its last user drops it.
    pub fn discard(&self, session: &Arc<T>) -> bool {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, session)) {
            *current = None;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_that_failed_is_replaced_by_the_next_request() {
        let opened = std::cell::Cell::new(1u32);
        let open = || -> Result<u32, String> {
            opened.set(opened.get() + 1);
            Ok(opened.get())
        };
        let slot = SessionSlot::new(1u32);
        let (first, fresh) = slot.get_or_open(open).unwrap();
        assert_eq!((*first, fresh), (1, false), "the first session is kept while it works");
        assert_eq!(*slot.get_or_open(open).unwrap().0, 1);
        assert!(slot.discard(&first), "an error discards the session");
        assert!(!slot.discard(&first), "a second error on the same session changes nothing");
        let (second, fresh) = slot.get_or_open(open).unwrap();
        assert_eq!((*second, fresh), (2, true), "the next request opens a new session");
        assert!(!slot.discard(&first), "a late error on the old session leaves the new one");
        assert_eq!(*slot.get_or_open(open).unwrap().0, 2);
        assert!(slot.discard(&second));
        let failing = || -> Result<u32, String> { Err("no service".into()) };
        assert_eq!(slot.get_or_open(failing).unwrap_err(), "no service");
        assert_eq!(*slot.get_or_open(open).unwrap().0, 3, "a failed open is retried by the next request");
    }

    #[test]
    fn a_session_cancelled_by_the_peer_is_replaced_before_anything_is_sent() {
        use std::sync::atomic::{AtomicBool, Ordering};
        // A session and the flag its cancel handler sets.
        struct S {
            n: u32,
            cancelled: Arc<AtomicBool>,
        }
        let opened = std::cell::Cell::new(1u32);
        let open = || -> Result<S, String> {
            opened.set(opened.get() + 1);
            Ok(S { n: opened.get(), cancelled: Arc::new(AtomicBool::new(false)) })
        };
        let usable = |s: &S| !s.cancelled.load(Ordering::Acquire);
        let slot = SessionSlot::new(S { n: 1, cancelled: Arc::new(AtomicBool::new(false)) });
        let (first, fresh) = slot.get_usable_or_open(usable, open).unwrap();
        assert_eq!((first.n, fresh), (1, false));
        // The broker went away: libxpc runs the session's cancel handler.
        first.cancelled.store(true, Ordering::Release);
        let (second, fresh) = slot.get_usable_or_open(usable, open).unwrap();
        assert_eq!((second.n, fresh), (2, true), "the next request gets a fresh session, not the cancelled one");
        assert!(!slot.discard(&first), "the cancelled one is already gone");
        assert_eq!(slot.get_usable_or_open(usable, open).unwrap().0.n, 2, "a working session is kept");
    }
}
