//! Bakes the libtorch lib folder into the binary's rpath so `lth-worker` runs without
//! LD_LIBRARY_PATH. `$ORIGIN/libtorch` and `$ORIGIN/../lib/libtorch` are searched too, for a binary
//! shipped beside its libraries (containers, GPU nodes).
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        let lib = std::path::Path::new(&dir).join("lib");
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/libtorch:$ORIGIN/../lib/libtorch");
    // libtorch_cpu.so is needed even if no symbol of it is referenced directly by Rust code
    // (torch-sys links through the C++ shim); keep it from being dropped by --as-needed.
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
}
