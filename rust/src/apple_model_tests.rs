//! The Apple modules run against the model of Apple's libraries
//! (rust/apple-model; docs/macos.md "The model"). Built only in the model
//! build (`apple_api` on Linux, the `apple-model` feature), run by
//! scripts/apple-model.
//!
//! Each test runs in a process of its own ([`own_process`]), because the
//! model accounts for objects per process: when the test body returns, the
//! model's queues are let finish and every XPC object or dispatch queue
//! still alive fails the test as a leak. A test of an Apple trap expects
//! its process to abort with the model's line naming the API and the rule.

use std::ffi::{c_char, CStr, CString};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

mod batch_io;
mod broker;
mod launchd;
mod objects;
mod sessions;
mod vmnet;

extern "C" {
    fn vmnet_model_settle(timeout_ms: u32) -> bool;
    fn vmnet_model_leak_report() -> *mut c_char;
    fn vmnet_model_launchd_advertise(name: *const c_char);
    fn vmnet_model_set_client(uid: u32, gid: u32, pid: i32, cdhash: *const u8);
    fn vmnet_model_own_cdhash(out: *mut u8);
}

const CHILD_ENV: &str = "VMNET_RS_APPLE_MODEL_TEST";

/// How a test's process must end.
pub enum Expect {
    /// The body returns and nothing is left alive.
    Pass,
    /// The process aborts and the model's line contains this text.
    Abort(&'static str),
    /// The body returns but leaves objects alive: the leak check fails
    /// with this text in its report.
    Leak(&'static str),
}

/// Lets the model's queues finish their work; what is still alive then, as
/// the model words it (empty when nothing is).
pub fn leaks() -> String {
    // SAFETY: model calls without arguments to check.
    let settled = unsafe { vmnet_model_settle(10_000) };
    assert!(settled, "the model's queues did not finish their work within 10 s");
    // SAFETY: the report is a malloc'ed C string, freed here.
    unsafe {
        let p = vmnet_model_leak_report();
        let text = CStr::from_ptr(p).to_string_lossy().into_owned();
        libc::free(p.cast());
        text
    }
}

/// Runs `body` in a new process running only test `name` (its path below
/// the crate, e.g. `apple_model_tests::objects::round_trip`), then checks
/// how that process ended against `expect`.
pub fn own_process(name: &str, expect: Expect, body: impl FnOnce()) {
    if std::env::var(CHILD_ENV).as_deref() == Ok(name) {
        body();
        let left = leaks();
        assert!(left.is_empty(), "leaked at the end of the test: {left}");
        return;
    }
    let out = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .output()
        .expect("run the test in its own process");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    match expect {
        Expect::Pass => assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{name} failed in its own process ({}):\n{stdout}\n{stderr}",
            out.status
        ),
        Expect::Abort(text) => {
            assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{name} did not abort ({}):\n{stdout}\n{stderr}", out.status);
            assert!(stderr.contains(text), "{name} aborted without {text:?}:\n{stderr}");
            eprintln!("{name}: the trap fired as expected: {}", stderr.lines().find(|l| l.contains("apple model:")).unwrap_or(""));
        }
        Expect::Leak(text) => {
            assert!(!out.status.success(), "{name} leaked nothing, yet a leak was expected:\n{stdout}\n{stderr}");
            let all = format!("{stdout}{stderr}");
            assert!(all.contains("leaked at the end of the test") && all.contains(text), "{name} failed otherwise:\n{all}");
        }
    }
}

/// The test's name for [`own_process`], from `module_path!()` and the
/// function's name.
#[macro_export]
macro_rules! model_test_name {
    ($f:literal) => {
        concat!(module_path!(), "::", $f).split_once("::").map(|(_, rest)| rest).unwrap_or($f)
    };
}

/// Advertises `name` as launchd does for the broker's job.
pub fn advertise(name: &str) {
    let c = CString::new(name).expect("no NUL");
    // SAFETY: a C string for the call.
    unsafe { vmnet_model_launchd_advertise(c.as_ptr()) };
}

/// The next sessions' client is another executable (another CDHash), or
/// with `None` this one again.
pub fn set_client(other: Option<(u32, u32, i32, [u8; 20])>) {
    // SAFETY: 20 readable bytes or NULL.
    unsafe {
        match other {
            Some((uid, gid, pid, hash)) => vmnet_model_set_client(uid, gid, pid, hash.as_ptr()),
            None => vmnet_model_set_client(0, 0, 0, std::ptr::null()),
        }
    }
}

/// The model's CDHash of this process.
pub fn own_cdhash() -> [u8; 20] {
    let mut h = [0u8; 20];
    // SAFETY: 20 writable bytes.
    unsafe { vmnet_model_own_cdhash(h.as_mut_ptr()) };
    h
}
