// lth's C++ shim over libtorch ops that tch 0.24 does not bind (its generator skips the
// `_foreach_*` and `_fused_*` prefixes): the fused SGD step, the foreach mask multiply and the
// foreach zeroing of gradients, on lists of tensors held once per trainer.
//
// Tensors cross from Rust as tch's C handles, which are `torch::Tensor*` (= `at::Tensor*`).
// Every entry point catches C++ exceptions and returns non-zero with the message kept per
// thread (`lth_shim_last_error`); nothing is thrown across the C ABI.
//
// Compiled by worker/build.rs against the headers of the libtorch that torch-sys links
// (LIBTORCH), with the same C++ ABI flag as torch-sys.

#include <ATen/core/Tensor.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_zero.h>
#include <ATen/ops/_fused_sgd.h>
#include <ATen/ops/full.h>
#include <c10/core/GradMode.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <vector>

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

std::vector<at::Tensor> list_of(at::Tensor* const* ts, size_t n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (size_t i = 0; i < n; i++) v.push_back(*ts[i]);
  return v;
}

}  // namespace

// The optimizer's and masks' tensor lists, built once (the lists share storage with the
// network's variables and the trainer's momentum buffers: updates are in place).
struct LthStep {
  std::vector<at::Tensor> params;
  std::vector<at::Tensor> bufs;
  std::vector<at::Tensor> weights;
  std::vector<at::Tensor> masks;
  // Per-step scratch, reused: the parameters whose gradient is defined, with their buffers.
  std::vector<at::Tensor> p_live, g_live, b_live;
  std::optional<at::Tensor> grad_scale;
};

extern "C" {

const char* lth_shim_last_error() { return last_error.c_str(); }

// `bufs` may be null when momentum is 0 (then `n_bufs` must be 0).
LthStep* lth_step_new(at::Tensor* const* params, size_t n_params, at::Tensor* const* bufs, size_t n_bufs,
                      at::Tensor* const* weights, at::Tensor* const* masks, size_t n_masks, double grad_scale) {
  LthStep* s = nullptr;
  int rc = guarded([&] {
    TORCH_CHECK(n_bufs == 0 || n_bufs == n_params, "momentum buffers: ", n_bufs, " for ", n_params, " parameters");
    auto st = new LthStep();
    st->params = list_of(params, n_params);
    st->bufs = list_of(bufs, n_bufs);
    st->weights = list_of(weights, n_masks);
    st->masks = list_of(masks, n_masks);
    st->p_live.reserve(n_params);
    st->g_live.reserve(n_params);
    st->b_live.reserve(n_params);
    if (grad_scale != 1.0 && n_params > 0) {
      // The fused kernel divides each gradient by *grad_scale (a float on the parameters' device).
      st->grad_scale = at::full({}, grad_scale, st->params[0].options().dtype(at::kFloat));
    }
    s = st;
  });
  return rc == 0 ? s : nullptr;
}

void lth_step_free(LthStep* s) { delete s; }

// One SGD step on every parameter with a defined gradient (PyTorch's SGD, dampening 0, through
// at::_fused_sgd_). The momentum buffers must already hold a value (zeros at the start: then
// m·0 + d = d exactly, which is what is_first_step would store), so is_first_step is false.
int lth_step_sgd(LthStep* s, double weight_decay, double momentum, double lr, bool nesterov) {
  return guarded([&] {
    c10::AutoGradMode no_grad(false);
    s->p_live.clear();
    s->g_live.clear();
    s->b_live.clear();
    bool with_bufs = momentum != 0.0;
    TORCH_CHECK(!with_bufs || s->bufs.size() == s->params.size(), "momentum ", momentum, " without momentum buffers");
    for (size_t i = 0; i < s->params.size(); i++) {
      const at::Tensor& g = s->params[i].grad();
      if (!g.defined()) continue;
      s->p_live.push_back(s->params[i]);
      s->g_live.push_back(g);
      if (with_bufs) s->b_live.push_back(s->bufs[i]);
    }
    if (s->p_live.empty()) return;
    at::_fused_sgd_(s->p_live, s->g_live, s->b_live, weight_decay, momentum, lr, /*dampening=*/0.0, nesterov,
                    /*maximize=*/false, /*is_first_step=*/false, s->grad_scale, std::nullopt);
  });
}

// The same with the learning rate as a tensor (a device scalar: CUDA-graph replay needs it).
int lth_step_sgd_tensor_lr(LthStep* s, double weight_decay, double momentum, const at::Tensor* lr, bool nesterov) {
  return guarded([&] {
    c10::AutoGradMode no_grad(false);
    s->p_live.clear();
    s->g_live.clear();
    s->b_live.clear();
    bool with_bufs = momentum != 0.0;
    for (size_t i = 0; i < s->params.size(); i++) {
      const at::Tensor& g = s->params[i].grad();
      if (!g.defined()) continue;
      s->p_live.push_back(s->params[i]);
      s->g_live.push_back(g);
      if (with_bufs) s->b_live.push_back(s->bufs[i]);
    }
    if (s->p_live.empty()) return;
    at::_fused_sgd_(s->p_live, s->g_live, s->b_live, weight_decay, momentum, *lr, 0.0, nesterov, false, false,
                    s->grad_scale, std::nullopt);
  });
}

// weights[i] *= masks[i] for every masked weight (at::_foreach_mul_).
int lth_step_masks(LthStep* s) {
  return guarded([&] {
    if (s->weights.empty()) return;
    c10::AutoGradMode no_grad(false);
    at::_foreach_mul_(s->weights, s->masks);
  });
}

// Zeroes every defined gradient in place (at::_foreach_zero_): the gradient tensors are kept, so
// backward accumulates into the same memory every step.
int lth_step_zero_grad(LthStep* s) {
  return guarded([&] {
    c10::AutoGradMode no_grad(false);
    s->g_live.clear();
    for (auto& p : s->params) {
      const at::Tensor& g = p.grad();
      if (g.defined()) s->g_live.push_back(g);
    }
    if (!s->g_live.empty()) at::_foreach_zero_(s->g_live);
  });
}

// Drops every gradient (PyTorch's zero_grad(set_to_none=True)): backward then stores its result
// as the gradient instead of adding it to zeros.
int lth_step_clear_grad(LthStep* s) {
  return guarded([&] {
    for (auto& p : s->params) {
      if (p.grad().defined()) p.mutable_grad().reset();
    }
  });
}

}  // extern "C"
