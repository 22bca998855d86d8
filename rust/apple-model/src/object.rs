//! XPC objects and values (xpc/base.h, xpc/xpc.h).
//!
//! Ownership as the headers state it: `*_create*` and `*_copy*` return a
//! new reference (+1) the caller releases; `*_get_*` borrow; a dictionary or
//! array retains what is set or appended into it and releases it when
//! replaced or when it goes. An object's memory is never reused: after its
//! last `xpc_release` its address stays out of the live table, so any later
//! use is caught and aborts ("used after its last release"), as is a release
//! too many (xpc_abort(3): "if the retain count of an object underflows by
//! calling xpc_release on it too many times, XPC will abort the process").
//!
//! Threads: any; the live table and each container have their own lock,
//! never held while a block runs.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use block2::Block;

use crate::control::called;
use crate::misuse;
use crate::session::{Connection, Listener, PeerRequirement, ReplyWaiter, RichError, Session};

/// An `xpc_object_t` as C sees it.
pub type Ptr = *mut c_void;

/// `struct _xpc_type_s` (xpc/xpc.h): the model keeps the type's name in it.
#[repr(C)]
pub struct XpcType {
    name: [u8; 24],
}

const fn type_named(name: &str) -> XpcType {
    let mut out = [0u8; 24];
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() && i < 23 {
        out[i] = b[i];
        i += 1;
    }
    XpcType { name: out }
}

macro_rules! xpc_types {
    ($($sym:ident = $name:literal),* $(,)?) => {
        $(
            /// `XPC_TYPE_*` (xpc/xpc.h): `&_xpc_type_*`, compared by address.
            #[no_mangle]
            pub static $sym: XpcType = type_named($name);
        )*
    };
}

xpc_types! {
    _xpc_type_dictionary = "dictionary",
    _xpc_type_string = "string",
    _xpc_type_int64 = "int64",
    _xpc_type_uint64 = "uint64",
    _xpc_type_bool = "bool",
    _xpc_type_data = "data",
    _xpc_type_fd = "fd",
    _xpc_type_uuid = "uuid",
    _xpc_type_double = "double",
    _xpc_type_null = "null",
    _xpc_type_array = "array",
    _xpc_type_error = "error",
    _xpc_type_session = "session",
    _xpc_type_listener = "listener",
    _xpc_type_connection = "connection",
    _xpc_type_rich_error = "rich_error",
    _xpc_type_peer_requirement = "peer_requirement",
}

/// One XPC object.
pub struct Obj {
    refs: AtomicUsize,
    pub kind: Kind,
}

pub enum Kind {
    Null,
    Bool(bool),
    Int64(i64),
    Uint64(u64),
    Double(f64),
    String(CString),
    Data(Vec<u8>),
    Uuid([u8; 16]),
    Fd(Mutex<Option<OwnedFd>>),
    Dictionary(Mutex<Dictionary>),
    Array(Mutex<Vec<usize>>),
    Session(Session),
    Listener(Listener),
    Connection(Connection),
    RichError(RichError),
    PeerRequirement(PeerRequirement),
}

/// A dictionary's entries (each holds one reference) and, for a message
/// received from a peer, how to answer it.
#[derive(Default)]
pub struct Dictionary {
    pub entries: BTreeMap<CString, usize>,
    /// A received message whose sender waits for a reply.
    pub reply_to: Option<Arc<ReplyWaiter>>,
    /// `xpc_dictionary_create_reply` already made this message's reply.
    pub reply_created: bool,
    /// This dictionary is a reply: sending it answers this waiter.
    pub is_reply: Option<Arc<ReplyWaiter>>,
    /// The connection a received message came over (one reference).
    pub remote: usize,
}

impl Kind {
    pub fn type_ptr(&self) -> *const XpcType {
        match self {
            Kind::Null => &_xpc_type_null,
            Kind::Bool(_) => &_xpc_type_bool,
            Kind::Int64(_) => &_xpc_type_int64,
            Kind::Uint64(_) => &_xpc_type_uint64,
            Kind::Double(_) => &_xpc_type_double,
            Kind::String(_) => &_xpc_type_string,
            Kind::Data(_) => &_xpc_type_data,
            Kind::Uuid(_) => &_xpc_type_uuid,
            Kind::Fd(_) => &_xpc_type_fd,
            Kind::Dictionary(_) => &_xpc_type_dictionary,
            Kind::Array(_) => &_xpc_type_array,
            Kind::Session(_) => &_xpc_type_session,
            Kind::Listener(_) => &_xpc_type_listener,
            Kind::Connection(_) => &_xpc_type_connection,
            Kind::RichError(_) => &_xpc_type_rich_error,
            Kind::PeerRequirement(_) => &_xpc_type_peer_requirement,
        }
    }

    pub fn type_name(&self) -> String {
        // SAFETY: every XpcType's name is NUL-terminated (type_named).
        let name = unsafe { CStr::from_ptr((*self.type_ptr()).name.as_ptr().cast()) };
        name.to_string_lossy().into_owned()
    }
}

/// Live objects by address, and a few words on where each was made.
fn live() -> &'static Mutex<HashMap<usize, &'static Obj>> {
    static LIVE: OnceLock<Mutex<HashMap<usize, &'static Obj>>> = OnceLock::new();
    LIVE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The live objects, counted by type (`control::vmnet_model_leak_report`).
pub fn live_by_type() -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for obj in live().lock().unwrap_or_else(|e| e.into_inner()).values() {
        *out.entry(obj.kind.type_name()).or_insert(0) += 1;
    }
    out
}

/// A new object with one reference, owned by the caller.
pub fn create(kind: Kind) -> Ptr {
    let obj: &'static Obj = Box::leak(Box::new(Obj { refs: AtomicUsize::new(1), kind }));
    let addr = obj as *const Obj as usize;
    live().lock().unwrap_or_else(|e| e.into_inner()).insert(addr, obj);
    addr as Ptr
}

/// The live object at `ptr`, or an abort naming `api`.
pub fn get(ptr: *const c_void, api: &str) -> &'static Obj {
    if ptr.is_null() {
        misuse(api, "called with a NULL object (xpc/base.h: XPC_NONNULL arguments)");
    }
    match live().lock().unwrap_or_else(|e| e.into_inner()).get(&(ptr as usize)) {
        Some(obj) => obj,
        None => misuse(api, &format!("object {ptr:p} used after its last release (xpc/base.h, xpc_release)")),
    }
}

/// Whether `ptr` is a live object (no abort).
pub fn is_live(ptr: usize) -> bool {
    live().lock().unwrap_or_else(|e| e.into_inner()).contains_key(&ptr)
}

pub fn retain(ptr: *const c_void, api: &str) {
    let obj = get(ptr, api);
    obj.refs.fetch_add(1, Ordering::AcqRel);
}

/// Drops one reference; the last one disposes of the object.
pub fn release(ptr: *const c_void, api: &str) {
    let obj = get(ptr, api);
    let before = obj.refs.fetch_sub(1, Ordering::AcqRel);
    if before == 0 {
        misuse(api, "reference count underflow (xpc_abort(3))");
    }
    if before == 1 {
        live().lock().unwrap_or_else(|e| e.into_inner()).remove(&(ptr as usize));
        dispose(obj, api);
    }
}

/// Releases what a dead object held.
fn dispose(obj: &'static Obj, api: &str) {
    match &obj.kind {
        Kind::Dictionary(d) => {
            let (entries, remote) = {
                let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
                (std::mem::take(&mut d.entries), std::mem::replace(&mut d.remote, 0))
            };
            for v in entries.into_values() {
                release(v as Ptr, api);
            }
            if remote != 0 {
                release(remote as Ptr, api);
            }
        }
        Kind::Array(a) => {
            let items = std::mem::take(&mut *a.lock().unwrap_or_else(|e| e.into_inner()));
            for v in items {
                release(v as Ptr, api);
            }
        }
        Kind::Fd(fd) => drop(fd.lock().unwrap_or_else(|e| e.into_inner()).take()),
        Kind::Session(s) => s.dispose(),
        Kind::Listener(l) => l.dispose(),
        Kind::PeerRequirement(r) => r.dispose(),
        _ => {}
    }
}

/// A copy as the receiving side of a message sees it (XPC serialises
/// messages): values copied, fds duplicated, no reply state.
pub fn deep_copy(ptr: usize, api: &str) -> Ptr {
    let obj = get(ptr as Ptr, api);
    let kind = match &obj.kind {
        Kind::Null => Kind::Null,
        Kind::Bool(b) => Kind::Bool(*b),
        Kind::Int64(v) => Kind::Int64(*v),
        Kind::Uint64(v) => Kind::Uint64(*v),
        Kind::Double(v) => Kind::Double(*v),
        Kind::String(s) => Kind::String(s.clone()),
        Kind::Data(d) => Kind::Data(d.clone()),
        Kind::Uuid(u) => Kind::Uuid(*u),
        Kind::Fd(fd) => {
            let fd = fd.lock().unwrap_or_else(|e| e.into_inner());
            Kind::Fd(Mutex::new(fd.as_ref().and_then(|f| f.try_clone().ok())))
        }
        Kind::Dictionary(d) => {
            let entries: Vec<(CString, usize)> =
                d.lock().unwrap_or_else(|e| e.into_inner()).entries.iter().map(|(k, v)| (k.clone(), *v)).collect();
            let mut out = Dictionary::default();
            for (k, v) in entries {
                out.entries.insert(k, deep_copy(v, api) as usize);
            }
            Kind::Dictionary(Mutex::new(out))
        }
        Kind::Array(a) => {
            let items: Vec<usize> = a.lock().unwrap_or_else(|e| e.into_inner()).clone();
            Kind::Array(Mutex::new(items.into_iter().map(|v| deep_copy(v, api) as usize).collect()))
        }
        other => misuse(api, &format!("an object of type {} cannot be sent in a message", other.type_name())),
    };
    create(kind)
}

fn dict_of<'a>(obj: &'a Obj, api: &str) -> &'a Mutex<Dictionary> {
    match &obj.kind {
        Kind::Dictionary(d) => d,
        other => misuse(api, &format!("object is not a dictionary but a {}", other.type_name())),
    }
}

fn key_of(key: *const c_char, api: &str) -> CString {
    if key.is_null() {
        misuse(api, "NULL key");
    }
    // SAFETY: the caller passes a NUL-terminated key (xpc/xpc.h).
    unsafe { CStr::from_ptr(key) }.to_owned()
}

/// Sets (or with NULL removes) `key`, retaining the new value and releasing
/// the old one (xpc/xpc.h, xpc_dictionary_set_value: "If the value is NULL,
/// the key will be removed").
pub fn dict_set(xdict: Ptr, key: *const c_char, value: Ptr, api: &str) {
    let d = dict_of(get(xdict, api), api);
    let key = key_of(key, api);
    if !value.is_null() {
        retain(value, api);
    }
    let old = {
        let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
        if value.is_null() {
            d.entries.remove(&key)
        } else {
            d.entries.insert(key, value as usize)
        }
    };
    if let Some(old) = old {
        release(old as Ptr, api);
    }
}

/// Sets a new value the dictionary alone owns.
fn dict_set_new(xdict: Ptr, key: *const c_char, kind: Kind, api: &str) {
    let v = create(kind);
    dict_set(xdict, key, v, api);
    release(v, api);
}

pub fn dict_get(xdict: Ptr, key: *const c_char, api: &str) -> Ptr {
    let d = dict_of(get(xdict, api), api);
    let key = key_of(key, api);
    d.lock().unwrap_or_else(|e| e.into_inner()).entries.get(&key).map_or(std::ptr::null_mut(), |v| *v as Ptr)
}

// xpc/base.h: object lifetime.

/// xpc/base.h `xpc_retain`: returns the object.
#[no_mangle]
pub extern "C" fn xpc_retain(object: Ptr) -> Ptr {
    called("xpc_retain");
    retain(object, "xpc_retain");
    object
}

/// xpc/base.h `xpc_release`.
#[no_mangle]
pub extern "C" fn xpc_release(object: Ptr) {
    called("xpc_release");
    release(object, "xpc_release");
}

/// xpc/xpc.h `xpc_get_type`.
#[no_mangle]
pub extern "C" fn xpc_get_type(object: Ptr) -> *const XpcType {
    called("xpc_get_type");
    get(object, "xpc_get_type").kind.type_ptr()
}

/// xpc/xpc.h `xpc_type_get_name` (macOS 10.15): a static string.
#[no_mangle]
pub extern "C" fn xpc_type_get_name(ty: *const XpcType) -> *const c_char {
    called("xpc_type_get_name");
    if ty.is_null() {
        misuse("xpc_type_get_name", "NULL type");
    }
    // SAFETY: types are the statics above; their names live forever.
    unsafe { (*ty).name.as_ptr().cast() }
}

/// xpc/xpc.h `xpc_equal`: same type and same contents, compared deeply.
#[no_mangle]
pub extern "C" fn xpc_equal(object1: Ptr, object2: Ptr) -> bool {
    called("xpc_equal");
    equal(object1 as usize, object2 as usize)
}

fn equal(a: usize, b: usize) -> bool {
    let (x, y) = (get(a as Ptr, "xpc_equal"), get(b as Ptr, "xpc_equal"));
    match (&x.kind, &y.kind) {
        (Kind::Null, Kind::Null) => true,
        (Kind::Bool(p), Kind::Bool(q)) => p == q,
        (Kind::Int64(p), Kind::Int64(q)) => p == q,
        (Kind::Uint64(p), Kind::Uint64(q)) => p == q,
        (Kind::Double(p), Kind::Double(q)) => p == q,
        (Kind::String(p), Kind::String(q)) => p == q,
        (Kind::Data(p), Kind::Data(q)) => p == q,
        (Kind::Uuid(p), Kind::Uuid(q)) => p == q,
        (Kind::Dictionary(p), Kind::Dictionary(q)) => {
            let p: Vec<(CString, usize)> =
                p.lock().unwrap_or_else(|e| e.into_inner()).entries.iter().map(|(k, v)| (k.clone(), *v)).collect();
            let q: Vec<(CString, usize)> =
                q.lock().unwrap_or_else(|e| e.into_inner()).entries.iter().map(|(k, v)| (k.clone(), *v)).collect();
            p.len() == q.len() && p.iter().zip(q.iter()).all(|((ka, va), (kb, vb))| ka == kb && equal(*va, *vb))
        }
        (Kind::Array(p), Kind::Array(q)) => {
            let p = p.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let q = q.lock().unwrap_or_else(|e| e.into_inner()).clone();
            p.len() == q.len() && p.iter().zip(q.iter()).all(|(va, vb)| equal(*va, *vb))
        }
        _ => a == b,
    }
}

// xpc/xpc.h: values. Getters on an object of another type return the
// header's "0"/NULL/false.

#[no_mangle]
pub extern "C" fn xpc_null_create() -> Ptr {
    called("xpc_null_create");
    create(Kind::Null)
}

#[no_mangle]
pub extern "C" fn xpc_bool_create(value: bool) -> Ptr {
    called("xpc_bool_create");
    create(Kind::Bool(value))
}

#[no_mangle]
pub extern "C" fn xpc_bool_get_value(xbool: Ptr) -> bool {
    called("xpc_bool_get_value");
    matches!(get(xbool, "xpc_bool_get_value").kind, Kind::Bool(true))
}

#[no_mangle]
pub extern "C" fn xpc_int64_create(value: i64) -> Ptr {
    called("xpc_int64_create");
    create(Kind::Int64(value))
}

#[no_mangle]
pub extern "C" fn xpc_int64_get_value(xint: Ptr) -> i64 {
    called("xpc_int64_get_value");
    match get(xint, "xpc_int64_get_value").kind {
        Kind::Int64(v) => v,
        _ => 0,
    }
}

#[no_mangle]
pub extern "C" fn xpc_uint64_create(value: u64) -> Ptr {
    called("xpc_uint64_create");
    create(Kind::Uint64(value))
}

#[no_mangle]
pub extern "C" fn xpc_uint64_get_value(xuint: Ptr) -> u64 {
    called("xpc_uint64_get_value");
    match get(xuint, "xpc_uint64_get_value").kind {
        Kind::Uint64(v) => v,
        _ => 0,
    }
}

#[no_mangle]
pub extern "C" fn xpc_double_create(value: f64) -> Ptr {
    called("xpc_double_create");
    create(Kind::Double(value))
}

#[no_mangle]
pub extern "C" fn xpc_double_get_value(xdouble: Ptr) -> f64 {
    called("xpc_double_get_value");
    match get(xdouble, "xpc_double_get_value").kind {
        Kind::Double(v) => v,
        _ => f64::NAN,
    }
}

/// xpc/xpc.h `xpc_string_create`: copies the C string.
#[no_mangle]
pub extern "C" fn xpc_string_create(string: *const c_char) -> Ptr {
    called("xpc_string_create");
    let s = key_of(string, "xpc_string_create");
    create(Kind::String(s))
}

#[no_mangle]
pub extern "C" fn xpc_string_get_length(xstring: Ptr) -> usize {
    called("xpc_string_get_length");
    match &get(xstring, "xpc_string_get_length").kind {
        Kind::String(s) => s.as_bytes().len(),
        _ => 0,
    }
}

/// Borrowed; valid while the string object lives.
#[no_mangle]
pub extern "C" fn xpc_string_get_string_ptr(xstring: Ptr) -> *const c_char {
    called("xpc_string_get_string_ptr");
    match &get(xstring, "xpc_string_get_string_ptr").kind {
        Kind::String(s) => s.as_ptr(),
        _ => std::ptr::null(),
    }
}

/// xpc/xpc.h `xpc_data_create`: copies `length` bytes.
#[no_mangle]
pub extern "C" fn xpc_data_create(bytes: *const c_void, length: usize) -> Ptr {
    called("xpc_data_create");
    let data = if length == 0 {
        Vec::new()
    } else {
        if bytes.is_null() {
            misuse("xpc_data_create", "NULL bytes with a non-zero length");
        }
        // SAFETY: the caller passes `length` readable bytes (xpc/xpc.h).
        unsafe { std::slice::from_raw_parts(bytes.cast::<u8>(), length) }.to_vec()
    };
    create(Kind::Data(data))
}

#[no_mangle]
pub extern "C" fn xpc_data_get_length(xdata: Ptr) -> usize {
    called("xpc_data_get_length");
    match &get(xdata, "xpc_data_get_length").kind {
        Kind::Data(d) => d.len(),
        _ => 0,
    }
}

#[no_mangle]
pub extern "C" fn xpc_data_get_bytes_ptr(xdata: Ptr) -> *const c_void {
    called("xpc_data_get_bytes_ptr");
    match &get(xdata, "xpc_data_get_bytes_ptr").kind {
        Kind::Data(d) if !d.is_empty() => d.as_ptr().cast(),
        _ => std::ptr::null(),
    }
}

/// xpc/xpc.h `xpc_uuid_create`: copies 16 bytes.
#[no_mangle]
pub extern "C" fn xpc_uuid_create(uuid: *const u8) -> Ptr {
    called("xpc_uuid_create");
    if uuid.is_null() {
        misuse("xpc_uuid_create", "NULL uuid");
    }
    let mut bytes = [0u8; 16];
    // SAFETY: a uuid_t is 16 readable bytes (xpc/xpc.h).
    bytes.copy_from_slice(unsafe { std::slice::from_raw_parts(uuid, 16) });
    create(Kind::Uuid(bytes))
}

#[no_mangle]
pub extern "C" fn xpc_uuid_get_bytes(xuuid: Ptr) -> *const u8 {
    called("xpc_uuid_get_bytes");
    match &get(xuuid, "xpc_uuid_get_bytes").kind {
        Kind::Uuid(u) => u.as_ptr(),
        _ => std::ptr::null(),
    }
}

fn dup_fd(fd: c_int) -> Option<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a caller's fd; a new fd or -1.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    // SAFETY: `new` is a fresh fd we own.
    (new >= 0).then(|| unsafe { OwnedFd::from_raw_fd(new) })
}

/// xpc/xpc.h `xpc_fd_create`: "The caller is responsible for closing the
/// descriptor": the object holds its own duplicate. NULL if `fd` is invalid.
#[no_mangle]
pub extern "C" fn xpc_fd_create(fd: c_int) -> Ptr {
    called("xpc_fd_create");
    match dup_fd(fd) {
        Some(own) => create(Kind::Fd(Mutex::new(Some(own)))),
        None => std::ptr::null_mut(),
    }
}

/// xpc/xpc.h `xpc_fd_dup`: a new descriptor the caller owns, or -1.
#[no_mangle]
pub extern "C" fn xpc_fd_dup(xfd: Ptr) -> c_int {
    called("xpc_fd_dup");
    match &get(xfd, "xpc_fd_dup").kind {
        Kind::Fd(fd) => {
            let fd = fd.lock().unwrap_or_else(|e| e.into_inner());
            match fd.as_ref().and_then(|f| dup_fd(f.as_raw_fd())) {
                Some(own) => {
                    use std::os::fd::IntoRawFd;
                    own.into_raw_fd()
                }
                None => -1,
            }
        }
        _ => -1,
    }
}

// xpc/xpc.h: arrays.

/// xpc/xpc.h `xpc_array_create`: retains each of the `count` objects.
#[no_mangle]
pub extern "C" fn xpc_array_create(objects: *const Ptr, count: usize) -> Ptr {
    called("xpc_array_create");
    let mut items = Vec::with_capacity(count);
    for i in 0..count {
        // SAFETY: the caller passes `count` objects (xpc/xpc.h).
        let v = unsafe { *objects.add(i) };
        retain(v, "xpc_array_create");
        items.push(v as usize);
    }
    create(Kind::Array(Mutex::new(items)))
}

fn array_of<'a>(obj: &'a Obj, api: &str) -> &'a Mutex<Vec<usize>> {
    match &obj.kind {
        Kind::Array(a) => a,
        other => misuse(api, &format!("object is not an array but a {}", other.type_name())),
    }
}

/// xpc/xpc.h `xpc_array_append_value`: retains `value`.
#[no_mangle]
pub extern "C" fn xpc_array_append_value(xarray: Ptr, value: Ptr) {
    called("xpc_array_append_value");
    let a = array_of(get(xarray, "xpc_array_append_value"), "xpc_array_append_value");
    retain(value, "xpc_array_append_value");
    a.lock().unwrap_or_else(|e| e.into_inner()).push(value as usize);
}

/// xpc/xpc.h `xpc_array_apply`: calls the applier synchronously, in order,
/// until it returns false; returns whether every element was applied.
#[no_mangle]
pub extern "C" fn xpc_array_apply(xarray: Ptr, applier: &Block<dyn Fn(usize, Ptr) -> u8>) -> bool {
    called("xpc_array_apply");
    let a = array_of(get(xarray, "xpc_array_apply"), "xpc_array_apply");
    let items = a.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (i, v) in items.iter().enumerate() {
        if applier.call((i, *v as Ptr)) == 0 {
            return false;
        }
    }
    true
}

// xpc/xpc.h: dictionaries.

/// xpc/xpc.h `xpc_dictionary_create`: retains each value.
#[no_mangle]
pub extern "C" fn xpc_dictionary_create(keys: *const *const c_char, values: *const Ptr, count: usize) -> Ptr {
    called("xpc_dictionary_create");
    let out = create(Kind::Dictionary(Mutex::new(Dictionary::default())));
    for i in 0..count {
        // SAFETY: the caller passes `count` keys and values (xpc/xpc.h).
        let (k, v) = unsafe { (*keys.add(i), *values.add(i)) };
        dict_set(out, k, v, "xpc_dictionary_create");
    }
    out
}

/// xpc/xpc.h `xpc_dictionary_create_reply`: a new dictionary that answers
/// `original`, or NULL when `original` expects no reply. Only one reply is
/// made per message: asked again, NULL (the reply context is consumed by
/// the first call).
#[no_mangle]
pub extern "C" fn xpc_dictionary_create_reply(original: Ptr) -> Ptr {
    called("xpc_dictionary_create_reply");
    let obj = get(original, "xpc_dictionary_create_reply");
    let Kind::Dictionary(d) = &obj.kind else {
        return std::ptr::null_mut();
    };
    let waiter = {
        let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
        if d.reply_created {
            return std::ptr::null_mut();
        }
        let Some(w) = d.reply_to.clone() else {
            return std::ptr::null_mut();
        };
        d.reply_created = true;
        w
    };
    create(Kind::Dictionary(Mutex::new(Dictionary { is_reply: Some(waiter), ..Dictionary::default() })))
}

#[no_mangle]
pub extern "C" fn xpc_dictionary_set_value(xdict: Ptr, key: *const c_char, value: Ptr) {
    called("xpc_dictionary_set_value");
    dict_set(xdict, key, value, "xpc_dictionary_set_value");
}

/// Borrowed; NULL when absent.
#[no_mangle]
pub extern "C" fn xpc_dictionary_get_value(xdict: Ptr, key: *const c_char) -> Ptr {
    called("xpc_dictionary_get_value");
    dict_get(xdict, key, "xpc_dictionary_get_value")
}

/// xpc/xpc.h `xpc_dictionary_apply`: synchronously, until the applier
/// returns false; the key and value are borrowed for the call.
#[no_mangle]
pub extern "C" fn xpc_dictionary_apply(xdict: Ptr, applier: &Block<dyn Fn(*const c_char, Ptr) -> u8>) -> bool {
    called("xpc_dictionary_apply");
    let d = dict_of(get(xdict, "xpc_dictionary_apply"), "xpc_dictionary_apply");
    let entries: Vec<(CString, usize)> =
        d.lock().unwrap_or_else(|e| e.into_inner()).entries.iter().map(|(k, v)| (k.clone(), *v)).collect();
    for (k, v) in &entries {
        if applier.call((k.as_ptr(), *v as Ptr)) == 0 {
            return false;
        }
    }
    true
}

/// xpc/xpc.h `xpc_dictionary_set_bool`: a new bool value the dictionary owns.
#[no_mangle]
pub extern "C" fn xpc_dictionary_set_bool(xdict: Ptr, key: *const c_char, value: bool) {
    called("xpc_dictionary_set_bool");
    dict_set_new(xdict, key, Kind::Bool(value), "xpc_dictionary_set_bool");
}

/// xpc/xpc.h `xpc_dictionary_get_remote_connection`: borrowed; NULL for a
/// dictionary that did not arrive from a peer.
#[no_mangle]
pub extern "C" fn xpc_dictionary_get_remote_connection(xdict: Ptr) -> Ptr {
    called("xpc_dictionary_get_remote_connection");
    let d = dict_of(get(xdict, "xpc_dictionary_get_remote_connection"), "xpc_dictionary_get_remote_connection");
    d.lock().unwrap_or_else(|e| e.into_inner()).remote as Ptr
}
