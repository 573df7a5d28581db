// C3A's block circular convolution as a libtorch autograd function with PEFT's own backward
// (`peft.tuners.c3a.utils.BlockCircularConvolution`): the gradients are computed with the same FFTs and
// einsums PEFT's hand-written backward uses, so training steps match PEFT's, not just autograd's.
//
// C ABI: tensors cross as `at::Tensor*` (tch's `C_tensor`); the result is a heap-allocated tensor owned by
// the caller; errors come back as a malloc'ed message (freed by peft_core's `take_error`).

#include "peft_ffi.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// `t`'s shape with its last `drop` dimensions replaced by `tail`.
std::vector<int64_t> with_tail(const at::Tensor& t, int64_t drop, std::vector<int64_t> tail) {
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end() - drop);
  shape.insert(shape.end(), tail.begin(), tail.end());
  return shape;
}

struct BlockCircularConvolution : public torch::autograd::Function<BlockCircularConvolution> {
  // x (..., n*b), w (m, n, b) -> (..., m*b)
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w) {
    const int64_t n = w.size(1);
    const int64_t b = w.size(2);
    at::Tensor pieces = x.reshape(with_tail(x, 1, {n, b}));
    ctx->save_for_backward({pieces, w});
    at::Tensor y = at::einsum("...nb,mnb->...mb", {at::fft_ifft(pieces), at::fft_fft(w)});
    y = at::real(at::fft_fft(y));
    return y.reshape(with_tail(y, 2, {-1}));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& w = saved[1];
    const int64_t m = w.size(0);
    const int64_t b = w.size(2);
    at::Tensor grad = grad_outputs[0].reshape(with_tail(grad_outputs[0], 1, {m, b}));
    at::Tensor grad_fft = at::fft_fft(grad);
    at::Tensor x_grad = at::real(at::fft_fft(at::einsum("...mb,mnb->...nb", {grad_fft, at::fft_ifft(w)})));
    x_grad = x_grad.reshape(with_tail(x_grad, 2, {-1}));
    at::Tensor w_grad = at::real(at::fft_fft(at::einsum("...mb,...nb->mnb", {grad_fft, at::fft_ifft(x)})));
    return {x_grad, w_grad};
  }
};

}  // namespace

extern "C" {

char* peft_c3a_block_circular_convolution(const at::Tensor* x, const at::Tensor* w, at::Tensor** out) {
  try {
    *out = new at::Tensor(BlockCircularConvolution::apply(*x, *w));
    return nullptr;
  } catch (const std::exception& e) {
    return peft_ffi::error(e.what());
  }
}

}  // extern "C"
