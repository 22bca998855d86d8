//! Gives the model library the name the loader records for it
//! (`libvmnet_apple_model.so`), also when a program links it through the
//! `libdispatch.so` name that dispatch2 asks for on Linux (the main crate's
//! build.rs links both names to this one file).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_VENDOR").as_deref() != Ok("apple") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libvmnet_apple_model.so");
    }
}
