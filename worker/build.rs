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
    println!("cargo:rerun-if-changed=shim/lth_cuda_graph.cpp");
    println!("cargo:rerun-if-env-changed=LTH_CUDA_INCLUDE");
    println!("cargo::rustc-check-cfg=cfg(lth_cuda_graph)");
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

    build_cuda_graph_shim(&include, &root, &abi);

    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/libtorch:$ORIGIN/../lib/libtorch");
    // libtorch_cpu.so is needed even if no symbol of it is referenced directly by Rust code
    // (torch-sys links through the C++ shim); keep it from being dropped by --as-needed.
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
}

/// Compiles `shim/lth_cuda_graph.cpp` into `$OUT_DIR/liblth_cuda_graph.so`, which the binary
/// embeds (`engine/graph.rs`) and dlopens on a GPU node after libtorch_cuda.so. Its CUDA and
/// libtorch_cuda symbols stay undefined here: the CPU subset the worker links has neither, and a
/// shared object may leave them to the process that loads it. Needs the CUDA runtime headers
/// (`LTH_CUDA_INCLUDE`, else `cuda-include/` beside libtorch's lib folder, which
/// scripts/fetch-libtorch.sh unpacks from NVIDIA's runtime and crt wheels); without them the
/// binary is built without CUDA graphs and says so when a recipe asks for one.
fn build_cuda_graph_shim(torch_include: &Path, libtorch_root: &Path, abi: &str) {
    let cuda_include = std::env::var("LTH_CUDA_INCLUDE").map(PathBuf::from).unwrap_or_else(|_| libtorch_root.join("cuda-include"));
    if !cuda_include.join("cuda_runtime_api.h").exists() || !cuda_include.join("crt/host_config.h").exists() {
        println!(
            "cargo:warning=no CUDA runtime headers in {} (run scripts/fetch-libtorch.sh): lth-worker is built without CUDA-graph replay",
            cuda_include.display()
        );
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let so = out.join("liblth_cuda_graph.so");
    let compiler = cc::Build::new().cpp(true).get_compiler();
    let status = compiler
        .to_command()
        .args(["-std=c++17", "-shared", "-fPIC", "-O2", "-w"])
        .arg(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .arg("-DGLOG_USE_GLOG_EXPORT")
        .arg("-I")
        .arg(torch_include)
        .arg("-I")
        .arg(&cuda_include)
        .arg("shim/lth_cuda_graph.cpp")
        .arg("-o")
        .arg(&so)
        .status()
        .expect("running the C++ compiler for shim/lth_cuda_graph.cpp");
    if !status.success() {
        panic!("compiling shim/lth_cuda_graph.cpp failed ({status}); set LTH_CUDA_INCLUDE to a CUDA 13 include folder or remove {} to build without CUDA graphs", cuda_include.display());
    }
    println!("cargo:rustc-cfg=lth_cuda_graph");
}
