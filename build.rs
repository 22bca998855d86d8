//! With the `bundle-broker` feature (wheel builds: pyproject.toml's
//! `[tool.maturin] features`), also builds the `vmnet-rs-broker` executable
//! (the workspace member in rust/broker-bin) and copies it into
//! `rust/broker-bin/wheel-data/scripts/`, the wheel's data directory
//! (`[tool.maturin] data`), whose `scripts/` maturin installs into the
//! environment's `bin/`. maturin cannot yet put a binary and a PyO3 module of
//! one crate into one wheel; docs/packaging.md explains this choice.
//!
//! The nested `cargo build` uses the same profile, target, linker and
//! rustflags as the outer build (a wheel built with `maturin build --zig`
//! links both through zig against the wheel's oldest glibc), its own target
//! directory (the outer build holds the lock of its own), the same Cargo.lock,
//! and an environment without the outer build's other CARGO_*/PyO3 variables,
//! so the executable is built as `cargo build -p vmnet-rs-broker --target
//! TARGET` would build it with that linker.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    apple_api();
    if env::var_os("CARGO_FEATURE_BUNDLE_BROKER").is_none() {
        return;
    }
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    for p in ["rust/src", "rust/broker-bin/src", "rust/broker-bin/Cargo.toml", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = out_dir.join("broker-bin-target");
    let target = env::var("TARGET").expect("cargo sets TARGET");
    for v in ["RUSTC_LINKER", "CARGO_ENCODED_RUSTFLAGS"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    // PROFILE is "release" for release-based profiles, else "debug".
    let release = env::var("PROFILE").map(|p| p == "release").unwrap_or(false);
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    // Build from a copy of the crate's manifest that is its own workspace and
    // names the sources and the core by absolute path: a source distribution
    // (maturin rewrites the root manifest's [workspace] to the module's crate
    // alone) has no workspace that lists rust/broker-bin.
    let manifest = generated_manifest(&root, &out_dir.join("broker-bin"));
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&root).args(["build", "--bin", "vmnet-rs-broker", "--manifest-path"]).arg(&manifest);
    cmd.arg("--target-dir").arg(&target_dir);
    if release {
        cmd.arg("--release");
    }
    // Always an explicit target, so the target's linker and rustflags below
    // apply to the executable only, not to build scripts run on this host.
    cmd.args(["--target", &target]);
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy();
        let scrub = (k.starts_with("CARGO_") && !keep_cargo_var(&k, &target))
            || k.starts_with("PYO3_")
            || k.starts_with("DEP_")
            || matches!(k.as_ref(), "OUT_DIR" | "TARGET" | "HOST" | "PROFILE" | "OPT_LEVEL" | "DEBUG" | "NUM_JOBS" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER" | "RUSTC_LINKER");
        if scrub {
            cmd.env_remove(k.as_ref());
        }
    }
    // The linker cargo resolved for the outer build's target, from whichever
    // source (CARGO_TARGET_<TRIPLE>_LINKER, which `maturin build --zig` sets
    // to its zig wrapper, or a config file's `target.<triple>.linker`).
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        cmd.env(target_var(&target, "LINKER"), linker);
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("could not run {cargo:?} to build vmnet-rs-broker: {e}"));
    if !status.success() {
        panic!("building vmnet-rs-broker failed ({status}); try `cargo build -p vmnet-rs-broker` to see why");
    }
    let profile_dir = if release { "release" } else { "debug" };
    let built = target_dir.join(&target).join(profile_dir).join("vmnet-rs-broker");
    let scripts = root.join("rust/broker-bin/wheel-data/scripts");
    copy(&built, &scripts.join("vmnet-rs-broker"));
}

/// The `apple_api` cfg: on for macOS builds and, with the `apple-model`
/// feature, for Linux builds of the same Apple modules, linked against the
/// model of Apple's libraries (rust/apple-model; docs/macos.md, "The
/// model"). The model is found where cargo builds it in the same target
/// directory (`cargo build -p vmnet-apple-model` first, as
/// scripts/apple-model does), or in `$VMNET_RS_APPLE_MODEL_DIR`; the
/// loader's search path (rpath) names that directory, so the programs need
/// no environment to find it. dispatch2 asks for `-ldispatch` on Linux:
/// a `libdispatch.so` link beside the model names the same library (one
/// file, one soname, as libSystem holds both libxpc and libdispatch).
fn apple_api() {
    println!("cargo::rustc-check-cfg=cfg(apple_api)");
    let macos = env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos");
    let model = env::var_os("CARGO_FEATURE_APPLE_MODEL").is_some();
    if macos || model {
        println!("cargo::rustc-cfg=apple_api");
    }
    if !model || macos {
        return;
    }
    println!("cargo:rerun-if-env-changed=VMNET_RS_APPLE_MODEL_DIR");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let dir = env::var_os("VMNET_RS_APPLE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| out_dir.ancestors().nth(3).expect("OUT_DIR is inside the target directory").to_path_buf());
    let lib = dir.join("libvmnet_apple_model.so");
    println!("cargo:rerun-if-changed={}", lib.display());
    if !lib.is_file() {
        panic!("the apple-model feature links {}: build it first with `cargo build -p vmnet-apple-model` (scripts/apple-model does)", lib.display());
    }
    let link = out_dir.join("libdispatch.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&lib, &link).unwrap_or_else(|e| panic!("link {}: {e}", link.display()));
    println!("cargo:rustc-link-search=native={}", out_dir.display());
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=dylib=vmnet_apple_model");
    println!("cargo:rustc-env=VMNET_RS_APPLE_MODEL_LIB={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
}

/// The outer build's CARGO_* variables the nested build keeps: where cargo
/// and its registries live, and the settings of the target being built (its
/// `CARGO_TARGET_<TRIPLE>_*` linker, rustflags and runner, and the rustflags
/// cargo resolved for it, `CARGO_ENCODED_RUSTFLAGS`).
fn keep_cargo_var(name: &str, target: &str) -> bool {
    name == "CARGO_HOME"
        || name == "CARGO_ENCODED_RUSTFLAGS"
        || name.starts_with("CARGO_REGISTRIES")
        || name.starts_with("CARGO_NET")
        || name.starts_with(&target_var(target, ""))
}

/// `CARGO_TARGET_<TRIPLE>_<key>`, the triple upper-cased with `-`/`.` as `_`.
fn target_var(target: &str, key: &str) -> String {
    let triple: String = target.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("CARGO_TARGET_{triple}_{key}")
}

/// Writes `dir/Cargo.toml`: rust/broker-bin/Cargo.toml with absolute paths,
/// an empty `[workspace]` and the root's profiles, and the root's Cargo.lock beside it (the same
/// dependency versions as the module). Returns the manifest's path.
fn generated_manifest(root: &Path, dir: &Path) -> PathBuf {
    let crate_dir = root.join("rust/broker-bin");
    let text = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap_or_else(|e| panic!("read rust/broker-bin/Cargo.toml: {e}"));
    let quoted = |p: &Path| format!("{:?}", p.display().to_string());
    let text = text
        .replace("path = \"../..\"", &format!("path = {}", quoted(root)))
        .replace("path = \"src/main.rs\"", &format!("path = {}", quoted(&crate_dir.join("src/main.rs"))));
    // The root's [profile.*] sections (a workspace's profiles come from its root).
    let root_text = std::fs::read_to_string(root.join("Cargo.toml")).unwrap_or_else(|e| panic!("read Cargo.toml: {e}"));
    let mut profiles = String::new();
    let mut in_profile = false;
    for line in root_text.lines() {
        if line.starts_with('[') {
            in_profile = line.starts_with("[profile.");
        }
        if in_profile {
            profiles.push_str(line);
            profiles.push('\n');
        }
    }
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let manifest = dir.join("Cargo.toml");
    std::fs::write(&manifest, format!("{text}\n[workspace]\n\n{profiles}")).unwrap_or_else(|e| panic!("write {}: {e}", manifest.display()));
    if root.join("Cargo.lock").is_file() {
        std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap_or_else(|e| panic!("copy Cargo.lock: {e}"));
    }
    manifest
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().expect("a file has a parent")).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), tmp.display()));
    std::fs::rename(&tmp, to).unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), to.display()));
}
