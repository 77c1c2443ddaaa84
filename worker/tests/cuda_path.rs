//! The CUDA-only code paths, exercised as far as a CPU-only machine allows: device selection
//! falls back to CPU, the autocast entry points resolve in libtorch_cpu and really switch CUDA
//! autocast to bf16/fp16 (and back), and channels-last conversion leaves the network's function
//! unchanged.

use lth_sweep::ModelKind;
use lth_worker::engine::{configure_threads, cuda, init_device, InputShape, Network};
use tch::{Device, Kind, Tensor};

#[test]
fn init_device_never_fails_on_a_cpu_only_machine() {
    assert_eq!(init_device(None, None).unwrap(), Device::Cpu);
    let tmp = tempfile::tempdir().unwrap();
    let d = init_device(Some(tmp.path()), Some(0)).unwrap();
    if !tch::Cuda::is_available() {
        assert_eq!(d, Device::Cpu);
    }
}

#[test]
fn autocast_switches_cuda_dtype_through_libtorch_symbols() {
    cuda::autocast_available().unwrap();
    let (before, _) = cuda::cuda_autocast_state().unwrap();
    assert!(!before);
    let inside = cuda::with_autocast(cuda::SCALAR_BFLOAT16, || cuda::cuda_autocast_state().unwrap()).unwrap();
    assert_eq!(inside, (true, cuda::SCALAR_BFLOAT16));
    let inside = cuda::with_autocast(cuda::SCALAR_HALF, || cuda::cuda_autocast_state().unwrap()).unwrap();
    assert_eq!(inside, (true, cuda::SCALAR_HALF));
    assert!(!cuda::cuda_autocast_state().unwrap().0, "autocast is switched off again");
}

#[test]
fn channels_last_keeps_the_function() {
    configure_threads(Some(1));
    let shape = InputShape { channels: 3, height: 32, width: 32 };
    let net = Network::new(ModelKind::Resnet20, shape, 10, Device::Cpu, 3).unwrap();
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let before = net.forward_t(&x, false);
    net.to_channels_last();
    let w = &net.vs.variables()["conv.weight"];
    assert_eq!(w.stride()[1], 1, "channels are the innermost dimension");
    let after = net.forward_t(&lth_worker::engine::models::to_channels_last(&x), false);
    assert!(before.allclose(&after, 1e-4, 1e-5, false));
}

#[test]
fn autocast_is_switched_off_again_when_the_forward_panics() {
    // A CUDA-graph capture turns a failing tch call's panic into an error and trains on eagerly
    // (engine::graph): autocast must not stay on behind it.
    let r = std::panic::catch_unwind(|| cuda::with_autocast(cuda::SCALAR_BFLOAT16, || panic!("a capture refused this op")));
    assert!(r.is_err());
    assert!(!cuda::cuda_autocast_state().unwrap().0, "autocast is switched off again");
}

#[test]
fn the_cuda_graph_shim_is_built_in_and_refused_without_a_cuda_backend() {
    use lth_worker::engine::graph;
    // scripts/fetch-libtorch.sh unpacks the CUDA runtime headers beside libtorch; with them the
    // build compiles the graph shim and embeds it (worker/build.rs).
    let headers = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../third_party/libtorch/cuda-include/crt/host_config.h");
    if headers.exists() || std::env::var_os("LTH_CUDA_INCLUDE").is_some() {
        assert!(graph::built_in(), "the CUDA headers are there but the shim was not built in");
    }
    if !tch::Cuda::is_available() {
        let e = graph::available().unwrap_err().to_string();
        assert!(e.contains("CUDA backend") || e.contains("built without"), "{e}");
    }
}
