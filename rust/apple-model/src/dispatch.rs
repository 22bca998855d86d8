//! The part of libdispatch vmnet-rs uses, as serial queues of our own
//! (Debian has no libdispatch): `dispatch_queue_create` (dispatch/queue.h:
//! "Dispatch queues invoke workitems submitted to them serially in FIFO
//! order" for a NULL, serial, attribute), `dispatch_retain` and
//! `dispatch_release` (dispatch/object.h). The model's XPC objects submit
//! their callbacks here, on the queue the caller chose, so handlers run on
//! the thread of their queue, one at a time.
//!
//! Each queue has one thread, which ends once the last reference is gone and
//! its work is done. Queues are accounted like XPC objects: one still
//! retained when a test ends is a leak.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::control::called;
use crate::misuse;

type Job = Box<dyn FnOnce() + Send>;

struct Inner {
    jobs: Mutex<(VecDeque<Job>, bool)>,
    cv: Condvar,
}

/// One serial queue.
pub struct Queue {
    refs: AtomicUsize,
    pub label: String,
    internal: bool,
    inner: Arc<Inner>,
}

fn queues() -> &'static Mutex<HashMap<usize, &'static Queue>> {
    static Q: OnceLock<Mutex<HashMap<usize, &'static Queue>>> = OnceLock::new();
    Q.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Work submitted and not yet finished, on every queue.
fn in_flight() -> &'static (Mutex<usize>, Condvar) {
    static F: OnceLock<(Mutex<usize>, Condvar)> = OnceLock::new();
    F.get_or_init(|| (Mutex::new(0), Condvar::new()))
}

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The queue whose work this thread is running, or 0.
pub fn current() -> usize {
    CURRENT.with(|c| c.get())
}

fn new_queue(label: String, internal: bool) -> usize {
    let inner = Arc::new(Inner { jobs: Mutex::new((VecDeque::new(), false)), cv: Condvar::new() });
    let q: &'static Queue = Box::leak(Box::new(Queue { refs: AtomicUsize::new(1), label, internal, inner }));
    let addr = q as *const Queue as usize;
    queues().lock().unwrap_or_else(|e| e.into_inner()).insert(addr, q);
    let inner = Arc::clone(&q.inner);
    std::thread::Builder::new()
        .name(format!("model-queue {}", q.label))
        .spawn(move || {
            CURRENT.with(|c| c.set(addr));
            loop {
                let job = {
                    let mut g = inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        if let Some(job) = g.0.pop_front() {
                            break Some(job);
                        }
                        if g.1 {
                            break None;
                        }
                        g = inner.cv.wait(g).unwrap_or_else(|e| e.into_inner());
                    }
                };
                let Some(job) = job else { return };
                job();
                let (m, cv) = in_flight();
                let mut n = m.lock().unwrap_or_else(|e| e.into_inner());
                *n -= 1;
                cv.notify_all();
            }
        })
        .expect("spawn a queue thread");
    addr
}

/// libdispatch's default target queue (`DISPATCH_TARGET_QUEUE_DEFAULT`),
/// where XPC delivers a session's events when it was given no queue. The
/// model's is one serial queue, never released.
pub fn default_queue() -> usize {
    static D: OnceLock<usize> = OnceLock::new();
    *D.get_or_init(|| new_queue("default".into(), true))
}

fn queue(ptr: usize, api: &str) -> &'static Queue {
    if ptr == 0 {
        misuse(api, "NULL dispatch object (dispatch/object.h)");
    }
    match queues().lock().unwrap_or_else(|e| e.into_inner()).get(&ptr) {
        Some(q) => q,
        None => misuse(api, &format!("dispatch object {ptr:#x} used after its last release (dispatch/object.h, dispatch_release)")),
    }
}

/// Runs `job` on queue `ptr` after the work already there.
pub fn submit(ptr: usize, job: impl FnOnce() + Send + 'static) {
    let q = queue(ptr, "dispatch_async");
    {
        let (m, _) = in_flight();
        *m.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }
    let mut g = q.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
    g.0.push_back(Box::new(job));
    q.inner.cv.notify_one();
}

pub fn retain(ptr: usize, api: &str) {
    queue(ptr, api).refs.fetch_add(1, Ordering::AcqRel);
}

/// Drops one reference; the last one lets the queue's thread finish the
/// work already submitted and end (dispatch/object.h: a queue is freed once
/// released and its pending blocks have run).
pub fn release(ptr: usize, api: &str) {
    let q = queue(ptr, api);
    let before = q.refs.fetch_sub(1, Ordering::AcqRel);
    if before == 0 {
        misuse(api, "dispatch object over-released (dispatch/object.h)");
    }
    if before == 1 {
        if q.internal {
            misuse(api, "the default target queue cannot be released");
        }
        queues().lock().unwrap_or_else(|e| e.into_inner()).remove(&ptr);
        let mut g = q.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
        g.1 = true;
        q.inner.cv.notify_all();
    }
}

/// Queues still retained, by label, except the model's own.
pub fn live_queues() -> Vec<String> {
    queues().lock().unwrap_or_else(|e| e.into_inner()).values().filter(|q| !q.internal).map(|q| q.label.clone()).collect()
}

/// Waits until no submitted work is pending or running, at most `limit`.
pub fn settle(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let (m, cv) = in_flight();
    let mut n = m.lock().unwrap_or_else(|e| e.into_inner());
    while *n > 0 {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        n = cv.wait_timeout(n, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
    }
    true
}

/// dispatch/queue.h `dispatch_queue_create`: a new queue (+1). The model
/// makes serial queues only (NULL and `DISPATCH_QUEUE_SERIAL` attributes);
/// vmnet-rs asks for no other.
#[no_mangle]
pub extern "C" fn dispatch_queue_create(label: *const c_char, attr: *const c_void) -> *mut c_void {
    called("dispatch_queue_create");
    if !attr.is_null() {
        misuse("dispatch_queue_create", "the model makes serial queues only (attr must be NULL)");
    }
    let label = if label.is_null() {
        String::new()
    } else {
        // SAFETY: a NUL-terminated label (dispatch/queue.h).
        unsafe { CStr::from_ptr(label) }.to_string_lossy().into_owned()
    };
    new_queue(label, false) as *mut c_void
}

/// dispatch/object.h `dispatch_retain`.
#[no_mangle]
pub extern "C" fn dispatch_retain(object: *mut c_void) {
    called("dispatch_retain");
    retain(object as usize, "dispatch_retain");
}

/// dispatch/object.h `dispatch_release`.
#[no_mangle]
pub extern "C" fn dispatch_release(object: *mut c_void) {
    called("dispatch_release");
    release(object as usize, "dispatch_release");
}
