//! Builds the kernel programs (dockexpose-ebpf) for bpfel-unknown-none and hands the
//! object to `src/kernel/loader/mod.rs`, which embeds it: `cargo build --release` gives a
//! standalone binary.
//!
//! The eBPF crate needs `-Z build-std=core`, i.e. a compiler with its library source:
//! - a rustup nightly with `rust-src` (the usual developer set-up) when there is one;
//! - otherwise Debian's `rustc-web` + `rust-web-src` (/usr/bin/rustc, sources under
//!   /usr/lib/rustlib/src), unlocked with RUSTC_BOOTSTRAP=1.
//!
//! `cargo xtask setup` installs the second route and bpf-linker on a fresh machine.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

const TARGET: &str = "bpfel-unknown-none";

/// How the eBPF crate gets compiled.
enum Route {
    /// `rustup run nightly cargo ...`
    RustupNightly,
    /// The outer cargo with RUSTC=/usr/bin/rustc and RUSTC_BOOTSTRAP=1.
    DebianRustc(PathBuf),
}

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("dockexpose/ sits in the workspace").to_path_buf();
    let ebpf_dir = root.join("dockexpose-ebpf");
    for watched in ["dockexpose-ebpf/src", "dockexpose-ebpf/Cargo.toml", "dockexpose-common/src"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=DOCKEXPOSE_EBPF_ROUTE");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let route = choose_route().unwrap_or_else(|msg| fail(&msg));
    let linker = find_bpf_linker().unwrap_or_else(|| {
        fail(
            "bpf-linker was not found on PATH or in ~/.cargo/bin.\n  \
             Fix: run `cargo xtask setup` (it builds bpf-linker 0.13 against Debian's LLVM 22).",
        )
    });

    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = match &route {
        Route::RustupNightly => {
            let mut c = Command::new("rustup");
            c.args(["run", "nightly", "cargo"]);
            c
        }
        Route::DebianRustc(_) => Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into())),
    };
    scrub_cargo_env(&mut cmd);
    if let Route::DebianRustc(rustc) = &route {
        cmd.env("RUSTC", rustc);
    }
    let path = prepend_path(linker.parent().expect("a file has a folder"));
    cmd.current_dir(&ebpf_dir)
        .env("PATH", path)
        .env("RUSTC_BOOTSTRAP", "1")
        // BTF in the object: lets bpftool and the kernel describe the maps.
        .env("CARGO_ENCODED_RUSTFLAGS", ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f"))
        .args(["build", "--release", "--package", "dockexpose-ebpf", "--target", TARGET])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir);
    let status = cmd.status().unwrap_or_else(|e| fail(&format!("could not run cargo for the eBPF crate: {e}")));
    if !status.success() {
        fail(&format!("building dockexpose-ebpf for {TARGET} failed ({status}); see the errors above"));
    }
    let built = target_dir.join(TARGET).join("release").join("dockexpose-ebpf");
    let dest = out_dir.join("dockexpose-ebpf.o");
    std::fs::copy(&built, &dest).unwrap_or_else(|e| fail(&format!("copying {} failed: {e}", built.display())));
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    println!("cargo:warning={}", msg.lines().next().unwrap_or(msg));
    std::process::exit(1);
}

fn choose_route() -> Result<Route, String> {
    let forced = env::var("DOCKEXPOSE_EBPF_ROUTE").ok();
    if forced.as_deref() != Some("debian") && nightly_has_rust_src() {
        return Ok(Route::RustupNightly);
    }
    let rustc = PathBuf::from("/usr/bin/rustc");
    let src = Path::new("/usr/lib/rustlib/src/rust/library/core");
    if rustc.exists() && src.exists() {
        return Ok(Route::DebianRustc(rustc));
    }
    Err(format!(
        "no Rust compiler with its library source was found, and the eBPF crate needs one \
         (-Z build-std=core).\n  Looked for: a rustup nightly with rust-src; Debian's rustc-web at {} \
         with rust-web-src at {}.\n  Fix: run `cargo xtask setup` (installs rustc-web and \
         rust-web-src with apt-get), or `rustup component add rust-src --toolchain nightly`.",
        rustc.display(),
        src.display()
    ))
}

fn nightly_has_rust_src() -> bool {
    let Ok(out) = Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]).output() else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot).join("lib/rustlib/src/rust/library/core").exists()
}

fn find_bpf_linker() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::split_paths(&env::var_os("PATH").unwrap_or_default()).collect();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join("bpf-linker")).find(|p| p.is_file())
}

fn prepend_path(dir: &Path) -> OsString {
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    env::join_paths(dirs).expect("PATH entries have no separator")
}

/// The outer cargo passes its own settings to build scripts through the environment;
/// they are meant for the host build and would break the eBPF one.
fn scrub_cargo_env(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let inherited = (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || matches!(
                key,
                "RUSTC"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTFLAGS"
                    | "RUSTDOC"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "RUSTC_LINKER"
            );
        if inherited {
            cmd.env_remove(key);
        }
    }
}
