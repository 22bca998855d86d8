//! CoreFoundation and Security objects (CoreFoundation/CFBase.h,
//! CFString.h, CFNumber.h; Security/SecTask.h): vmnet's configurations and
//! networks, and the entitlement check's task, string and boolean, in one
//! table so `CFRelease` (CFBase.h: "cf must not be NULL") serves them all.
//! A use after the last release aborts, as CoreFoundation crashes there.
//!
//! Entitlements: the model's process has those a test grants it
//! (`vmnet_model_grant_entitlement`), as a signed executable has those of
//! its signature.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::control::called;
use crate::misuse;
use crate::vmnet::{Config, Switch};

pub enum Cf {
    Config(Mutex<Config>),
    Network(Arc<Switch>),
    Task,
    String(CString),
    Boolean(bool),
}

impl Cf {
    fn type_id(&self) -> usize {
        match self {
            Cf::Config(_) => 1001,
            Cf::Network(_) => 1002,
            Cf::Task => 1003,
            Cf::String(_) => 7,
            Cf::Boolean(_) => BOOLEAN_TYPE_ID,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Cf::Config(_) => "vmnet network configuration",
            Cf::Network(_) => "vmnet network",
            Cf::Task => "SecTask",
            Cf::String(_) => "CFString",
            Cf::Boolean(_) => "CFBoolean",
        }
    }
}

const BOOLEAN_TYPE_ID: usize = 21;

pub struct CfObj {
    refs: AtomicUsize,
    pub cf: Cf,
}

fn cfs() -> &'static Mutex<HashMap<usize, &'static CfObj>> {
    static C: OnceLock<Mutex<HashMap<usize, &'static CfObj>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

fn entitlements() -> &'static Mutex<BTreeSet<CString>> {
    static E: OnceLock<Mutex<BTreeSet<CString>>> = OnceLock::new();
    E.get_or_init(|| Mutex::new(BTreeSet::new()))
}

/// Live CF objects, for the leak report.
pub fn live() -> Vec<String> {
    cfs().lock().unwrap_or_else(|e| e.into_inner()).values().map(|o| o.cf.name().to_owned()).collect()
}

/// A new CF object (+1).
pub fn new_cf(cf: Cf) -> *mut c_void {
    let o: &'static CfObj = Box::leak(Box::new(CfObj { refs: AtomicUsize::new(1), cf }));
    let addr = o as *const CfObj as usize;
    cfs().lock().unwrap_or_else(|e| e.into_inner()).insert(addr, o);
    addr as *mut c_void
}

/// The live CF object at `ptr`, or an abort naming `api`.
pub fn cf(ptr: *const c_void, api: &str) -> &'static CfObj {
    if ptr.is_null() {
        misuse(api, "NULL CoreFoundation object");
    }
    match cfs().lock().unwrap_or_else(|e| e.into_inner()).get(&(ptr as usize)) {
        Some(o) => o,
        None => misuse(api, &format!("object {ptr:p} is not a live CoreFoundation object (used after CFRelease?)")),
    }
}

/// CoreFoundation/CFBase.h `CFRelease`.
#[no_mangle]
pub extern "C" fn CFRelease(obj: *const c_void) {
    called("CFRelease");
    let o = cf(obj, "CFRelease");
    if o.refs.fetch_sub(1, Ordering::AcqRel) == 1 {
        cfs().lock().unwrap_or_else(|e| e.into_inner()).remove(&(obj as usize));
    }
}

/// CoreFoundation/CFBase.h `CFGetTypeID`.
#[no_mangle]
pub extern "C" fn CFGetTypeID(obj: *const c_void) -> usize {
    called("CFGetTypeID");
    cf(obj, "CFGetTypeID").cf.type_id()
}

/// CoreFoundation/CFNumber.h `CFBooleanGetTypeID`.
#[no_mangle]
pub extern "C" fn CFBooleanGetTypeID() -> usize {
    called("CFBooleanGetTypeID");
    BOOLEAN_TYPE_ID
}

/// CoreFoundation/CFNumber.h `CFBooleanGetValue`: aborts on another type
/// (CF asserts the type).
#[no_mangle]
pub extern "C" fn CFBooleanGetValue(boolean: *const c_void) -> u8 {
    called("CFBooleanGetValue");
    match cf(boolean, "CFBooleanGetValue").cf {
        Cf::Boolean(b) => b as u8,
        _ => misuse("CFBooleanGetValue", "the object is not a CFBoolean"),
    }
}

/// CoreFoundation/CFString.h `CFStringCreateWithCString`: +1; UTF-8
/// (kCFStringEncodingUTF8, 0x08000100) only; NULL for invalid bytes.
#[no_mangle]
pub extern "C" fn CFStringCreateWithCString(_alloc: *const c_void, c_str: *const c_char, encoding: u32) -> *const c_void {
    called("CFStringCreateWithCString");
    if c_str.is_null() {
        misuse("CFStringCreateWithCString", "NULL string");
    }
    if encoding != 0x0800_0100 {
        misuse("CFStringCreateWithCString", "the model knows kCFStringEncodingUTF8 only");
    }
    // SAFETY: a NUL-terminated string (CFString.h).
    let s = unsafe { CStr::from_ptr(c_str) };
    if std::str::from_utf8(s.to_bytes()).is_err() {
        return std::ptr::null();
    }
    new_cf(Cf::String(s.to_owned()))
}

/// Security/SecTask.h `SecTaskCreateFromSelf`: +1 task of this process.
#[no_mangle]
pub extern "C" fn SecTaskCreateFromSelf(_allocator: *const c_void) -> *const c_void {
    called("SecTaskCreateFromSelf");
    new_cf(Cf::Task)
}

/// Security/SecTask.h `SecTaskCopyValueForEntitlement`: +1 value of the
/// entitlement (a CFBoolean true for a granted boolean one), or NULL when
/// the executable's signature has no such entitlement.
#[no_mangle]
pub extern "C" fn SecTaskCopyValueForEntitlement(task: *const c_void, entitlement: *const c_void, _error: *mut *const c_void) -> *const c_void {
    const API: &str = "SecTaskCopyValueForEntitlement";
    called(API);
    if !matches!(cf(task, API).cf, Cf::Task) {
        misuse(API, "the task is not a SecTask");
    }
    let Cf::String(name) = &cf(entitlement, API).cf else {
        misuse(API, "the entitlement is not a CFString");
    };
    if entitlements().lock().unwrap_or_else(|e| e.into_inner()).contains(name) {
        new_cf(Cf::Boolean(true))
    } else {
        std::ptr::null()
    }
}

/// Grants this process the boolean entitlement `name` (as its signature
/// would).
#[no_mangle]
pub extern "C" fn vmnet_model_grant_entitlement(name: *const c_char) {
    // SAFETY: a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name) }.to_owned();
    entitlements().lock().unwrap_or_else(|e| e.into_inner()).insert(name);
}
