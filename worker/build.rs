//! Compiles the C++ shim (`shim/lth_shim.cpp`: fused SGD, foreach mask multiply and gradient
//! zeroing, which tch 0.24 does not bind) against the headers of the libtorch torch-sys links, and
//! bakes the libtorch lib folder into the binary's rpath so `lth-worker` runs without
//! LD_LIBRARY_PATH. `$ORIGIN/libtorch` and `$ORIGIN/../lib/libtorch` are searched too, for a binary
//! shipped beside its libraries (containers, GPU nodes).
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=shim/lth_shim.cpp");
    // torch-sys (`links = "tch"`) publishes the lib folder it resolved (LIBTORCH, a Python torch or
    // a download) as DEP_TCH_LIBTORCH_LIB; LIBTORCH is the fallback.
    let lib: Option<PathBuf> = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .ok()
        .map(PathBuf::from)
        .or_else(|| std::env::var("LIBTORCH").ok().map(|d| Path::new(&d).join("lib")));
    let Some(lib) = lib else {
        panic!("lth-worker's build needs libtorch: set LIBTORCH to the folder holding include/ and lib/ (see README)");
    };
    let lib = lib.canonicalize().unwrap_or(lib);
    let root = lib.parent().expect("libtorch lib folder has a parent").to_path_buf();
    let include = root.join("include");
    if !include.join("ATen/ops/_fused_sgd.h").exists() {
        panic!("{} has no ATen/ops/_fused_sgd.h: the worker's shim needs libtorch's headers (libtorch ≥ 2.4, include/ beside lib/)", include.display());
    }
    // torch-sys's own default; the PyPI wheels of torch 2.x are built with the C++11 ABI.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .opt_level(2)
        .file("shim/lth_shim.cpp")
        .compile("lth_shim");

    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/libtorch:$ORIGIN/../lib/libtorch");
    // libtorch_cpu.so is needed even if no symbol of it is referenced directly by Rust code
    // (torch-sys links through the C++ shim); keep it from being dropped by --as-needed.
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
}
