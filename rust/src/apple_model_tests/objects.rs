//! `xpc/apple/object.rs` against the model's XPC objects: conversion both
//! ways, kept objects, what is refused, and the traps of object lifetime.

use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::addr_of;

use super::{own_process, Expect};
use crate::model_test_name;
use crate::xpc::apple::ffi;
use crate::xpc::apple::object::{from_xpc, round_trips, to_xpc, value_to_xpc_object, Kept, Object};
use crate::xpc::tagged::{self, Tagged};
use crate::xpc::{Dict, Value};

fn inode(fd: &OwnedFd) -> u64 {
    // SAFETY: fstat on our fd into a zeroed struct.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        assert_eq!(libc::fstat(fd.as_raw_fd(), &mut st), 0);
        st.st_ino
    }
}

#[test]
fn every_value_kind_round_trips() {
    own_process(model_test_name!("every_value_kind_round_trips"), Expect::Pass, || {
        let file: OwnedFd = std::fs::File::open("/dev/null").expect("open /dev/null").into();
        let ino = inode(&file);
        let dict = Dict::new()
            .with("s", Value::String("vmnet ✓".into()))
            .with("i", Value::Int(-7))
            .with("b", Value::Bool(true))
            .with("d", Value::Data(vec![0, 1, 2, 255]))
            .with("empty", Value::Data(Vec::new()))
            .with("fd", Value::Fd(file))
            .with("nested", Value::Dict(Dict::new().with("x", Value::Int(1))))
            .with("u", tagged::tag(Tagged::Uint64(u64::MAX)))
            .with("uuid", tagged::tag(Tagged::Uuid([7; 16])))
            .with("null", tagged::tag(Tagged::Null))
            .with("arr", tagged::tag(Tagged::Array(vec![Value::Int(1), Value::String("two".into())])));
        let xpc = to_xpc(&dict).expect("to XPC");
        // SAFETY: a live dictionary.
        let mut back = unsafe { from_xpc(xpc.as_ptr()) }.expect("from XPC");
        assert_eq!(back.get_str("s"), Some("vmnet ✓"));
        assert_eq!(back.get_int("i"), Some(-7));
        assert_eq!(back.get_bool("b"), Some(true));
        assert_eq!(back.get_data("d"), Some(&[0, 1, 2, 255][..]));
        assert_eq!(back.get_data("empty"), Some(&[][..]));
        assert_eq!(back.get_dict("nested").and_then(|d| d.get_int("x")), Some(1));
        let fd = back.take_fd("fd").expect("an fd");
        assert_eq!(inode(&fd), ino, "the fd names the same file");
        for key in ["u", "uuid", "null", "arr"] {
            let Some(Value::Dict(tag)) = back.remove(key) else { panic!("{key} is not a tag") };
            let t = tagged::untag(tag).expect("a tag").expect("a tagged value");
            match (key, t) {
                ("u", Tagged::Uint64(v)) => assert_eq!(v, u64::MAX),
                ("uuid", Tagged::Uuid(b)) => assert_eq!(b, [7; 16]),
                ("null", Tagged::Null) => {}
                ("arr", Tagged::Array(items)) => assert_eq!(items.len(), 2),
                (k, other) => panic!("{k} came back as {other:?}"),
            }
        }
        // fds compare by identity (a copy is a new descriptor): without one,
        // the conversion there and back is equal to the original.
        let no_fd = to_xpc(&Dict::new()
            .with("u", tagged::tag(Tagged::Uint64(u64::MAX)))
            .with("uuid", tagged::tag(Tagged::Uuid([7; 16])))
            .with("null", tagged::tag(Tagged::Null))
            .with("f", tagged::tag(Tagged::Double(0.5)))
            .with("arr", tagged::tag(Tagged::Array(vec![Value::Int(1)]))))
        .expect("to XPC");
        // SAFETY: live dictionaries.
        assert!(unsafe { round_trips(no_fd.as_ptr()) }.expect("converts"), "uint64/uuid/null/array keep their XPC types");
        // SAFETY: as above.
        assert!(!unsafe { round_trips(xpc.as_ptr()) }.expect("converts"), "an fd is a new descriptor after the trip");
    });
}

#[test]
fn a_kept_object_is_passed_on_as_itself() {
    own_process(model_test_name!("a_kept_object_is_passed_on_as_itself"), Expect::Pass, || {
        let serialization = to_xpc(&Dict::new().with("k", Value::Int(3))).expect("to XPC");
        let kept = Kept::new(&serialization);
        let again = value_to_xpc_object(&kept.tag()).expect("the kept object");
        assert_eq!(again.as_ptr(), serialization.as_ptr(), "the very object, not a rebuilt one");
        drop(again);
        drop(kept);
        let gone = value_to_xpc_object(&crate::xpc::tagged::object_tag(u64::MAX));
        assert!(gone.is_err(), "an unknown handle is an error");
    });
}

#[test]
fn a_peer_cannot_forge_a_tag() {
    own_process(model_test_name!("a_peer_cannot_forge_a_tag"), Expect::Pass, || {
        let dict = Object::empty_dictionary().expect("dictionary");
        // SAFETY: a live dictionary, C strings and a +1 value it retains.
        unsafe {
            let v = Object::from_owned(ffi::xpc_int64_create(1)).expect("int64");
            ffi::xpc_dictionary_set_value(dict.as_ptr(), c"$xpc_type".as_ptr(), v.as_ptr());
        }
        assert_eq!(crate::xpc::tagged::TAG_TYPE_KEY, "$xpc_type");
        // SAFETY: a live dictionary.
        let err = unsafe { from_xpc(dict.as_ptr()) }.expect_err("the reserved key is refused");
        assert!(err.to_string().contains("reserved"), "{err}");
    });
}

#[test]
fn what_xpc_cannot_carry_is_refused_by_name() {
    own_process(model_test_name!("what_xpc_cannot_carry_is_refused_by_name"), Expect::Pass, || {
        let bad = Dict::new().with("k", Value::String("nul\0inside".into()));
        let err = to_xpc(&bad).expect_err("a NUL in a string is refused");
        assert!(err.to_string().contains("NUL"), "{err}");
        let mut deep = Dict::new().with("leaf", Value::Int(0));
        for _ in 0..40 {
            deep = Dict::new().with("d", Value::Dict(deep));
        }
        let err = to_xpc(&deep).expect_err("nesting past MAX_DEPTH is refused");
        assert!(err.to_string().contains("deeper"), "{err}");
        // A non-dictionary is not a message.
        // SAFETY: a +1 int64, owned by `int`.
        let int = unsafe { Object::from_owned(ffi::xpc_int64_create(1)) }.expect("int64");
        // SAFETY: a live object.
        let err = unsafe { from_xpc(int.as_ptr()) }.expect_err("not a dictionary");
        assert!(err.to_string().contains("int64"), "the type is named: {err}");
        // SAFETY: a live object.
        assert!(unsafe { crate::xpc::apple::object::is_type(int.as_ptr(), addr_of!(ffi::_xpc_type_int64)) });
    });
}

#[test]
fn trap_use_after_last_release() {
    own_process(model_test_name!("trap_use_after_last_release"), Expect::Abort("used after its last release"), || {
        let obj = Object::empty_dictionary().expect("dictionary");
        let ptr = obj.as_ptr();
        drop(obj);
        // SAFETY: deliberately not: the object is gone, and the model aborts.
        unsafe { ffi::xpc_dictionary_get_value(ptr, c"k".as_ptr()) };
    });
}

#[test]
fn trap_release_too_many() {
    own_process(model_test_name!("trap_release_too_many"), Expect::Abort("xpc_release: object"), || {
        let obj = Object::empty_dictionary().expect("dictionary");
        // SAFETY: deliberately one release too many; `obj` releases again on drop.
        unsafe { ffi::xpc_release(obj.as_ptr()) };
        drop(obj);
    });
}

#[test]
fn trap_a_missing_release_is_a_leak() {
    own_process(model_test_name!("trap_a_missing_release_is_a_leak"), Expect::Leak("1 xpc string"), || {
        // SAFETY: a +1 string, deliberately never released.
        unsafe { ffi::xpc_string_create(c"forgotten".as_ptr()) };
    });
}
