// lth's CUDA-graph shim: captures one whole training step (forward, backward, fused SGD, masks)
// into an `at::cuda::CUDAGraph` and replays it, which removes the per-kernel launch cost that
// dominates small networks on a GPU (ResNet-20 b128: ~10 ms a step, launch-bound; DESIGN.md).
//
// Why a library of its own: the graph API lives in libtorch_cuda.so and libc10_cuda.so, which the
// worker does not link (it links the CPU subset so that one binary serves CPU and GPU nodes and
// dlopens libtorch_cuda.so on a GPU node, engine/cuda.rs). worker/build.rs compiles this file
// into a shared object with its CUDA symbols left undefined, the binary embeds it, and on a GPU
// node the worker writes it to a memfd and dlopens it after libtorch_cuda.so (RTLD_GLOBAL), which
// resolves them. On a CPU node it is never loaded.
//
// Streams: capture must not run on the legacy default stream, so every graph owns a side stream
// from libtorch's pool. `lth_graph_enter` makes it the current stream (after it waits for the
// work already queued on the caller's stream) and `lth_graph_leave` restores the caller's stream
// (which then waits for the side stream). The first steps of a run go through enter/leave
// eagerly (warm-up: cuDNN's benchmark search, cuBLAS workspaces and the gradients' memory are
// created outside the capture), then one step is captured, and every later step is a replay.
//
// Every entry point catches C++ exceptions and returns non-zero with the message kept per thread
// (`lth_graph_last_error`); nothing is thrown across the C ABI.

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <exception>
#include <optional>
#include <string>

namespace {

thread_local std::string last_error;

template <typename F>
int guarded(F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    last_error = e.what_without_backtrace();
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return 1;
}

// `later` waits (on the device, no host sync) for the work queued so far on `earlier`.
// (The CUDA runtime API directly: ATen's CUDAEvent.h needs nvcc's headers, which the runtime
// wheel that fetch-libtorch unpacks does not ship.)
void order(const c10::cuda::CUDAStream& earlier, const c10::cuda::CUDAStream& later) {
  cudaEvent_t ev;
  C10_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  cudaError_t rec = cudaEventRecord(ev, earlier.stream());
  cudaError_t wait = rec == cudaSuccess ? cudaStreamWaitEvent(later.stream(), ev, 0) : rec;
  // Destroying a recorded event is safe: the wait keeps what it needs.
  cudaEventDestroy(ev);
  C10_CUDA_CHECK(rec);
  C10_CUDA_CHECK(wait);
}

}  // namespace

struct LthGraph {
  c10::DeviceIndex device;
  at::cuda::CUDAGraph graph;
  c10::cuda::CUDAStream side;
  std::optional<c10::cuda::CUDAStream> caller;
  bool capturing = false;
  bool captured = false;

  explicit LthGraph(c10::DeviceIndex d) : device(d), graph(), side(c10::cuda::getStreamFromPool(false, d)) {}
};

extern "C" {

const char* lth_graph_last_error() { return last_error.c_str(); }

// A graph (not yet captured) for CUDA device `device`, with its side stream.
LthGraph* lth_graph_new(int device) {
  LthGraph* g = nullptr;
  int rc = guarded([&] { g = new LthGraph(static_cast<c10::DeviceIndex>(device)); });
  return rc == 0 ? g : nullptr;
}

void lth_graph_free(LthGraph* g) {
  if (g == nullptr) return;
  // Leaving a capture open would poison the side stream for the rest of the process.
  if (g->capturing) {
    try {
      g->graph.capture_end();
    } catch (...) {
    }
  }
  if (g->caller) {
    try {
      c10::cuda::setCurrentCUDAStream(*g->caller);
    } catch (...) {
    }
  }
  delete g;
}

// Makes the side stream current (it first waits for the caller's queued work).
int lth_graph_enter(LthGraph* g) {
  return guarded([&] {
    TORCH_CHECK(!g->caller, "lth_graph_enter called twice without lth_graph_leave");
    auto caller = c10::cuda::getCurrentCUDAStream(g->device);
    order(caller, g->side);
    g->caller = caller;
    c10::cuda::setCurrentCUDAStream(g->side);
  });
}

// Restores the caller's stream; it waits (on the device) for what the side stream queued.
int lth_graph_leave(LthGraph* g) {
  return guarded([&] {
    TORCH_CHECK(g->caller.has_value(), "lth_graph_leave without lth_graph_enter");
    auto caller = *g->caller;
    g->caller.reset();
    c10::cuda::setCurrentCUDAStream(caller);
    order(g->side, caller);
  });
}

// Starts capturing on the side stream (enters it). Everything the calling thread queues until
// lth_graph_capture_end is recorded, not run; the autograd engine's device thread records onto
// the same stream (backward runs on its forward op's stream). Global capture mode, PyTorch's
// default for torch.cuda.graph: an unsafe call from any thread fails the capture loudly.
int lth_graph_capture_begin(LthGraph* g) {
  if (lth_graph_enter(g) != 0) return 1;
  int rc = guarded([&] {
    TORCH_CHECK(!g->captured, "this graph is already captured");
    g->graph.capture_begin({0, 0}, cudaStreamCaptureModeGlobal);
    g->capturing = true;
  });
  if (rc != 0) {
    std::string why = last_error;
    lth_graph_leave(g);
    last_error = why;
  }
  return rc;
}

// Ends the capture and instantiates the graph; leaves the side stream. On failure (an operation
// that cannot be captured: a host sync, a CPU tensor, an allocation outside the pool...) the
// graph is reset and the error returned; the caller falls back to eager steps.
int lth_graph_capture_end(LthGraph* g) {
  int rc = guarded([&] {
    TORCH_CHECK(g->capturing, "lth_graph_capture_end without lth_graph_capture_begin");
    g->capturing = false;
    g->graph.capture_end();
    g->captured = true;
  });
  std::string why = last_error;
  if (rc != 0) {
    try {
      g->graph.reset();
    } catch (...) {
    }
  }
  if (g->caller) lth_graph_leave(g);
  if (rc != 0) last_error = why;
  return rc;
}

// Abandons an open capture (the step's Rust side failed half-way); leaves the side stream.
int lth_graph_capture_abort(LthGraph* g) {
  int rc = guarded([&] {
    if (g->capturing) {
      g->capturing = false;
      try {
        g->graph.capture_end();
      } catch (...) {
      }
    }
    g->graph.reset();
  });
  if (g->caller) lth_graph_leave(g);
  return rc;
}

// Runs the captured step on the caller's current stream.
int lth_graph_replay(LthGraph* g) {
  return guarded([&] {
    TORCH_CHECK(g->captured, "replay of a graph that was not captured");
    g->graph.replay();
  });
}

}  // extern "C"
