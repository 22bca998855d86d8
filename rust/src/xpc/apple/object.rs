//! Owned XPC objects and the conversion between XPC dictionaries and the
//! portable [`Dict`].
//!
//! Runs on whatever thread calls it (listener queue, client thread, vmnet
//! queues). Invariants: an [`Object`] holds exactly one reference and
//! releases it once on drop; borrowed `xpc_object_t`s (handler messages,
//! dictionary values) are never released here.
//!
//! What converts (XPC -> `Value`): string (UTF-8 only), int64, bool, data,
//! dictionary, fd (dup'ed into an `OwnedFd`). uint64, uuid, double, null and
//! array become tagged dictionaries (`xpc::tagged`) and convert back
//! to the same XPC type, so a vmnet serialization survives the round trip.
//! Refused with `Error::Malformed` naming the key and type: everything else
//! (date, shmem, mach send/receive rights, endpoints, connections, errors),
//! strings that are not UTF-8, keys with NUL bytes, nesting deeper than
//! [`MAX_DEPTH`], and the reserved tag key itself in an incoming dictionary
//! (so a peer cannot forge a tag).
//!
//! [`Kept`]: an XPC object passed through a `Dict` untouched. The broker
//! hands out a vmnet serialization as the very object vmnet returned (as
//! Lima does), not rebuilt from its conversion: the network keeps the object
//! under a handle, its `Dict` form is a `Tagged::Object` tag naming the
//! handle, and `to_xpc`/`fill` put the kept object itself into the reply.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::{addr_of, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use block2::StackBlock;

use super::ffi;
use crate::xpc::tagged::{self, Tagged, TAG_TYPE_KEY};
use crate::xpc::{Dict, Error, Value};

/// Deepest nesting converted either way.
pub const MAX_DEPTH: usize = 32;

/// One owned reference to an XPC object.
#[derive(Debug)]
pub struct Object(NonNull<c_void>);

// SAFETY: XPC objects are reference counted with atomic operations and may be
// retained, released and read from any thread (xpc/base.h); this crate never
// mutates a dictionary after it has been shared.
unsafe impl Send for Object {}
// SAFETY: see `Send`; shared access is read-only.
unsafe impl Sync for Object {}

impl Object {
    /// Takes over a +1 reference (`*_create*`, `*_copy*`); `None` for NULL.
    ///
    /// # Safety
    /// `ptr` must be NULL or an XPC object whose reference the caller owns.
    pub unsafe fn from_owned(ptr: ffi::xpc_object_t) -> Option<Object> {
        NonNull::new(ptr).map(Object)
    }

    pub fn as_ptr(&self) -> ffi::xpc_object_t {
        self.0.as_ptr()
    }

    /// A second reference to the same object.
    pub fn retained(&self) -> Object {
        // SAFETY: the object is live (type invariant); the new reference is
        // owned by the returned `Object`.
        unsafe { ffi::xpc_retain(self.0.as_ptr()) };
        Object(self.0)
    }

    /// A new, empty XPC dictionary (`xpc_dictionary_create(NULL, NULL, 0)`,
    /// macOS 10.7, rather than `xpc_dictionary_create_empty`, 11.0).
    pub fn empty_dictionary() -> Result<Object, Error> {
        // SAFETY: no keys or values; the result is +1 or NULL.
        created(unsafe { ffi::xpc_dictionary_create(std::ptr::null(), std::ptr::null(), 0) }, "dictionary")
    }

    /// A new, empty XPC array (`xpc_array_create(NULL, 0)`, 10.7).
    pub fn empty_array() -> Result<Object, Error> {
        // SAFETY: no objects; the result is +1 or NULL.
        created(unsafe { ffi::xpc_array_create(std::ptr::null(), 0) }, "array")
    }
}

/// XPC objects passed through `Dict`s as they are, by handle.
fn kept_objects() -> &'static Mutex<BTreeMap<u64, Object>> {
    static KEPT: OnceLock<Mutex<BTreeMap<u64, Object>>> = OnceLock::new();
    KEPT.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// One XPC object kept under a process-local handle for as long as this
/// value lives (a vmnet network keeps its serialization so). Its [`Kept::tag`]
/// stands for the object in a `Dict`; converting that `Dict` to XPC puts the
/// object itself there, so it reaches the peer exactly as it was.
pub struct Kept {
    handle: u64,
}

impl Kept {
    pub fn new(object: &Object) -> Kept {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let handle = NEXT.fetch_add(1, Ordering::Relaxed);
        kept_objects().lock().unwrap_or_else(|e| e.into_inner()).insert(handle, object.retained());
        Kept { handle }
    }

    /// The `Dict` form: a `Tagged::Object` tag naming the handle.
    pub fn tag(&self) -> Dict {
        tagged::object_tag(self.handle)
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let removed = kept_objects().lock().unwrap_or_else(|e| e.into_inner()).remove(&self.handle);
        drop(removed);
    }
}

/// The kept object behind `handle` (a new reference), if it is still kept.
fn kept(handle: u64) -> Option<Object> {
    kept_objects().lock().unwrap_or_else(|e| e.into_inner()).get(&handle).map(Object::retained)
}

/// Whether `object` (a dictionary) survives the conversion to `Dict` and
/// back unchanged (`xpc_equal`). The broker never relies on it (it passes
/// the kept object on); it is logged, because clients that rebuild a
/// serialization from its `Dict` form (the VZ path through Python) do.
///
/// # Safety
/// `object` must be a live XPC object.
pub unsafe fn round_trips(object: ffi::xpc_object_t) -> Result<bool, Error> {
    // SAFETY: caller's contract.
    let dict = unsafe { from_xpc(object) }?;
    let back = to_xpc(&dict)?;
    // SAFETY: both objects are live.
    Ok(unsafe { ffi::xpc_equal(object, back.as_ptr()) })
}

impl Drop for Object {
    fn drop(&mut self) {
        // SAFETY: `self` owns exactly one reference (type invariant).
        unsafe { ffi::xpc_release(self.0.as_ptr()) }
    }
}

/// # Safety
/// `obj` must be a live XPC object.
pub unsafe fn is_type(obj: ffi::xpc_object_t, ty: ffi::xpc_type_t) -> bool {
    // SAFETY: caller's contract.
    unsafe { ffi::xpc_get_type(obj) == ty }
}

/// `xpc_type_get_name` (10.15), looked up once.
fn type_get_name() -> Option<ffi::TypeGetName> {
    static FN: OnceLock<Option<ffi::TypeGetName>> = OnceLock::new();
    *FN.get_or_init(|| {
        // SAFETY: RTLD_DEFAULT and a NUL-terminated name.
        let sym = unsafe { super::dynamic::symbol(libc::RTLD_DEFAULT, c"xpc_type_get_name") }?;
        // SAFETY: the symbol is libxpc's function of this signature (xpc/xpc.h).
        Some(unsafe { std::mem::transmute::<*mut c_void, ffi::TypeGetName>(sym) })
    })
}

/// # Safety
/// `obj` must be a live XPC object.
unsafe fn type_name(obj: ffi::xpc_object_t) -> String {
    let Some(get_name) = type_get_name() else {
        return "unknown".into();
    };
    // SAFETY: caller's contract; the name is a static C string.
    unsafe {
        let name = get_name(ffi::xpc_get_type(obj));
        if name.is_null() {
            "unknown".into()
        } else {
            CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    }
}

/// Text of a rich error, consuming the +1 reference. `None` for NULL.
///
/// # Safety
/// `err` must be NULL or a rich error the caller owns.
pub unsafe fn take_rich_error(err: ffi::xpc_rich_error_t) -> Option<(String, bool)> {
    // SAFETY: caller's contract; released exactly once by `Object`.
    let err = unsafe { Object::from_owned(err)? };
    // Rich errors only come from calls in the run-time table, so it loaded.
    let Ok(x) = ffi::xpc() else {
        return Some(("unknown XPC error".into(), false));
    };
    // SAFETY: `err` is a live rich error.
    let retry = unsafe { (x.xpc_rich_error_can_retry)(err.as_ptr()) };
    // SAFETY: as above; the description is malloc'ed and freed here.
    let text = unsafe { take_c_string((x.xpc_rich_error_copy_description)(err.as_ptr())) };
    Some((text.unwrap_or_else(|| "unknown XPC error".into()), retry))
}

/// # Safety
/// `ptr` must be NULL or a malloc'ed C string the caller owns.
pub unsafe fn take_c_string(ptr: *mut c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: caller's contract.
    let text = unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned();
    // SAFETY: malloc'ed by libxpc, ours to free.
    unsafe { libc::free(ptr.cast()) };
    Some(text)
}

fn c_key(key: &str) -> Result<CString, Error> {
    CString::new(key).map_err(|_| Error::Malformed(format!("key {key:?} contains a NUL byte")))
}

// ---------------------------------------------------------------------------
// Dict -> XPC
// ---------------------------------------------------------------------------

/// A new XPC dictionary holding `dict` (fds are dup'ed; `dict` keeps its own).
pub fn to_xpc(dict: &Dict) -> Result<Object, Error> {
    let out = Object::empty_dictionary()?;
    fill(&out, dict, 0)?;
    Ok(out)
}

/// The XPC object `dict` stands for: the tagged value when `dict` is a tag
/// (e.g. a kept serialization), else a dictionary as [`to_xpc`] makes.
pub fn value_to_xpc_object(dict: &Dict) -> Result<Object, Error> {
    if dict.contains_key(TAG_TYPE_KEY) {
        let owned = dict.try_clone().map_err(|source| Error::Io { op: "duplicate fd in tagged value", source })?;
        return value_to_xpc(&Value::Dict(owned), 0);
    }
    to_xpc(dict)
}

/// Sets every entry of `dict` into the existing XPC dictionary `target`
/// (e.g. a reply from `xpc_dictionary_create_reply`).
pub fn fill(target: &Object, dict: &Dict, depth: usize) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(Error::Malformed(format!("message nests deeper than {MAX_DEPTH} dictionaries")));
    }
    for (key, value) in dict.iter() {
        let k = c_key(key)?;
        let v = value_to_xpc(value, depth + 1).map_err(|e| prefix(key, e))?;
        // SAFETY: both are live XPC objects; set_value retains `v`, which we
        // then release through `Object`'s drop.
        unsafe { ffi::xpc_dictionary_set_value(target.as_ptr(), k.as_ptr(), v.as_ptr()) };
    }
    Ok(())
}

fn prefix(key: &str, e: Error) -> Error {
    match e {
        Error::Malformed(m) => Error::Malformed(format!("{key}: {m}")),
        other => other,
    }
}

fn created(ptr: ffi::xpc_object_t, what: &str) -> Result<Object, Error> {
    // SAFETY: every caller passes the +1 result of an `xpc_*_create` call.
    unsafe { Object::from_owned(ptr) }.ok_or_else(|| Error::Transport(format!("xpc_{what}_create returned NULL")))
}

fn value_to_xpc(value: &Value, depth: usize) -> Result<Object, Error> {
    // SAFETY: (all calls below) the create functions take plain values or
    // pointers valid for the duration of the call and return +1 objects.
    unsafe {
        match value {
            Value::String(s) => {
                let c = CString::new(s.as_str())
                    .map_err(|_| Error::Malformed("string value contains a NUL byte".into()))?;
                created(ffi::xpc_string_create(c.as_ptr()), "string")
            }
            Value::Int(v) => created(ffi::xpc_int64_create(*v), "int64"),
            Value::Bool(v) => created(ffi::xpc_bool_create(*v), "bool"),
            Value::Data(d) => created(ffi::xpc_data_create(d.as_ptr().cast(), d.len()), "data"),
            Value::Fd(fd) => created(ffi::xpc_fd_create(fd.as_raw_fd()), "fd"),
            Value::Dict(d) if d.contains_key(TAG_TYPE_KEY) => {
                let owned = d.try_clone().map_err(|source| Error::Io { op: "duplicate fd in tagged value", source })?;
                match tagged::untag(owned)? {
                    Ok(tagged) => tagged_to_xpc(tagged, depth),
                    Err(_) => unreachable_plain(),
                }
            }
            Value::Dict(d) => {
                let out = Object::empty_dictionary()?;
                fill(&out, d, depth)?;
                Ok(out)
            }
        }
    }
}

/// `untag` hands back a plain dictionary only when the tag key is absent,
/// which the caller has just ruled out.
fn unreachable_plain() -> Result<Object, Error> {
    Err(Error::Malformed("dictionary with a tag key is not a tagged value".into()))
}

fn tagged_to_xpc(tagged: Tagged, depth: usize) -> Result<Object, Error> {
    if depth > MAX_DEPTH {
        return Err(Error::Malformed(format!("message nests deeper than {MAX_DEPTH} levels")));
    }
    // SAFETY: (all calls below) as in `value_to_xpc`.
    unsafe {
        match tagged {
            Tagged::Uint64(v) => created(ffi::xpc_uint64_create(v), "uint64"),
            Tagged::Double(v) => created(ffi::xpc_double_create(v), "double"),
            Tagged::Uuid(bytes) => created(ffi::xpc_uuid_create(bytes.as_ptr()), "uuid"),
            Tagged::Null => created(ffi::xpc_null_create(), "null"),
            Tagged::Object(handle) => kept(handle).ok_or_else(|| {
                Error::Malformed(format!("kept XPC object {handle} is gone (its network was removed meanwhile)"))
            }),
            Tagged::Array(items) => {
                let out = Object::empty_array()?;
                for item in &items {
                    let v = value_to_xpc(item, depth + 1)?;
                    // Retains `v`; our reference drops at the end of the loop.
                    ffi::xpc_array_append_value(out.as_ptr(), v.as_ptr());
                }
                Ok(out)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// XPC -> Dict
// ---------------------------------------------------------------------------

/// Converts a borrowed XPC dictionary.
///
/// # Safety
/// `obj` must be a live XPC object for the duration of the call.
pub unsafe fn from_xpc(obj: ffi::xpc_object_t) -> Result<Dict, Error> {
    // SAFETY: caller's contract.
    unsafe { dict_from_xpc(obj, 0) }
}

/// # Safety
/// `obj` must be a live XPC object.
unsafe fn dict_from_xpc(obj: ffi::xpc_object_t, depth: usize) -> Result<Dict, Error> {
    if depth > MAX_DEPTH {
        return Err(Error::Malformed(format!("message nests deeper than {MAX_DEPTH} dictionaries")));
    }
    // SAFETY: caller's contract.
    if !unsafe { is_type(obj, addr_of!(ffi::_xpc_type_dictionary)) } {
        // SAFETY: caller's contract.
        return Err(Error::Malformed(format!("expected a dictionary, got {}", unsafe { type_name(obj) })));
    }
    let out = RefCell::new(Dict::new());
    let failure: RefCell<Option<Error>> = RefCell::new(None);
    let applier = StackBlock::new(|key: *const c_char, value: ffi::xpc_object_t| -> u8 {
        // SAFETY: libxpc passes a valid C string key and a live value for the
        // duration of this call.
        let key = unsafe { CStr::from_ptr(key) }.to_string_lossy().into_owned();
        if key == TAG_TYPE_KEY {
            // Only this module makes tags; one arriving from a peer could
            // otherwise name a kept object (another network's serialization).
            *failure.borrow_mut() = Some(Error::Malformed(format!("key {TAG_TYPE_KEY:?} is reserved")));
            return 0;
        }
        // SAFETY: as above.
        match unsafe { value_from_xpc(value, depth + 1) } {
            Ok(v) => {
                out.borrow_mut().insert(key, v);
                1
            }
            Err(e) => {
                *failure.borrow_mut() = Some(prefix(&key, e));
                0
            }
        }
    });
    // SAFETY: `obj` is a live dictionary; the block outlives the call, which
    // invokes it synchronously.
    unsafe { ffi::xpc_dictionary_apply(obj, &applier) };
    match failure.into_inner() {
        Some(e) => Err(e),
        None => Ok(out.into_inner()),
    }
}

/// # Safety
/// `value` must be a live XPC object.
unsafe fn value_from_xpc(value: ffi::xpc_object_t, depth: usize) -> Result<Value, Error> {
    if depth > MAX_DEPTH {
        return Err(Error::Malformed(format!("message nests deeper than {MAX_DEPTH} levels")));
    }
    // SAFETY: (all calls below) `value` is live (caller's contract) and each
    // getter is called only on an object of its own type.
    unsafe {
        let ty = ffi::xpc_get_type(value);
        if ty == addr_of!(ffi::_xpc_type_string) {
            let ptr = ffi::xpc_string_get_string_ptr(value);
            let len = ffi::xpc_string_get_length(value);
            let bytes = std::slice::from_raw_parts(ptr.cast::<u8>(), len);
            return String::from_utf8(bytes.to_vec())
                .map(Value::String)
                .map_err(|_| Error::Malformed("string value is not UTF-8".into()));
        }
        if ty == addr_of!(ffi::_xpc_type_int64) {
            return Ok(Value::Int(ffi::xpc_int64_get_value(value)));
        }
        if ty == addr_of!(ffi::_xpc_type_bool) {
            return Ok(Value::Bool(ffi::xpc_bool_get_value(value)));
        }
        if ty == addr_of!(ffi::_xpc_type_data) {
            let len = ffi::xpc_data_get_length(value);
            let ptr = ffi::xpc_data_get_bytes_ptr(value);
            let bytes = if len == 0 || ptr.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(ptr.cast::<u8>(), len).to_vec()
            };
            return Ok(Value::Data(bytes));
        }
        if ty == addr_of!(ffi::_xpc_type_fd) {
            let fd = ffi::xpc_fd_dup(value);
            if fd < 0 {
                return Err(Error::Io { op: "xpc_fd_dup", source: std::io::Error::last_os_error() });
            }
            return Ok(Value::Fd(OwnedFd::from_raw_fd(fd)));
        }
        if ty == addr_of!(ffi::_xpc_type_dictionary) {
            return dict_from_xpc(value, depth).map(Value::Dict);
        }
        if ty == addr_of!(ffi::_xpc_type_uint64) {
            return Ok(tagged::tag(Tagged::Uint64(ffi::xpc_uint64_get_value(value))));
        }
        if ty == addr_of!(ffi::_xpc_type_double) {
            return Ok(tagged::tag(Tagged::Double(ffi::xpc_double_get_value(value))));
        }
        if ty == addr_of!(ffi::_xpc_type_null) {
            return Ok(tagged::tag(Tagged::Null));
        }
        if ty == addr_of!(ffi::_xpc_type_uuid) {
            let ptr = ffi::xpc_uuid_get_bytes(value);
            let mut bytes = [0u8; 16];
            if !ptr.is_null() {
                bytes.copy_from_slice(std::slice::from_raw_parts(ptr, 16));
            }
            return Ok(tagged::tag(Tagged::Uuid(bytes)));
        }
        if ty == addr_of!(ffi::_xpc_type_array) {
            return array_from_xpc(value, depth).map(|items| tagged::tag(Tagged::Array(items)));
        }
        Err(Error::Malformed(format!("XPC type {} cannot be carried in a message", type_name(value))))
    }
}

/// # Safety
/// `array` must be a live XPC array.
unsafe fn array_from_xpc(array: ffi::xpc_object_t, depth: usize) -> Result<Vec<Value>, Error> {
    let out = RefCell::new(Vec::new());
    let failure: RefCell<Option<Error>> = RefCell::new(None);
    let applier = StackBlock::new(|index: usize, value: ffi::xpc_object_t| -> u8 {
        // SAFETY: libxpc passes a live value for the duration of this call.
        match unsafe { value_from_xpc(value, depth + 1) } {
            Ok(v) => {
                out.borrow_mut().push(v);
                1
            }
            Err(e) => {
                *failure.borrow_mut() = Some(prefix(&format!("[{index}]"), e));
                0
            }
        }
    });
    // SAFETY: `array` is live; the block is invoked synchronously.
    unsafe { ffi::xpc_array_apply(array, &applier) };
    match failure.into_inner() {
        Some(e) => Err(e),
        None => Ok(out.into_inner()),
    }
}
