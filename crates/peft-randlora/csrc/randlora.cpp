// RandLoRA's scaled basis as a libtorch autograd function with PEFT's own backward
// (`peft.tuners.randlora.layer.UniqueBaseGrad`). Forward: lambda[:, :, None] * A * gamma[None] (r, n, m).
// PEFT's backward reduces with two einsums instead of autograd's broadcast-mul-then-sum, so the gradients
// differ from plain autograd's in the last bits; replaying the same einsums (contracted left to right, as
// torch.einsum does without opt_einsum) gives PEFT's gradients and optimizer steps exactly. It also saves
// only the three inputs, not the (r, n, m) intermediate autograd would keep.
//
// C ABI: tensors cross as `at::Tensor*` (tch's `C_tensor`); the result is a heap-allocated tensor owned by
// the caller; errors come back as a malloc'ed message (freed by peft_core's `take_error`).

#include "peft_ffi.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct UniqueBaseGrad : public torch::autograd::Function<UniqueBaseGrad> {
  // a (r, 1, m) frozen, lambda (r, n), gamma (n, m) -> (r, n, m)
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& lambda,
                            const at::Tensor& gamma) {
    at::Tensor out = lambda.unsqueeze(2) * a * gamma.unsqueeze(0);
    ctx->save_for_backward({a, lambda, gamma});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& grad = grad_outputs[0];
    // PEFT casts the saved tensors to the gradient's dtype first.
    const at::Tensor a = saved[0].to(grad.scalar_type());
    const at::Tensor lambda = saved[1].to(grad.scalar_type());
    const at::Tensor gamma = saved[2].to(grad.scalar_type());
    at::Tensor grad_lambda = at::einsum("kbj,kvj,bj->kb", {grad, a, gamma});
    at::Tensor grad_gamma = at::einsum("kbj,kvj,kb->bj", {grad, a, lambda});
    return {at::Tensor(), grad_lambda, grad_gamma};
  }
};

}  // namespace

extern "C" {

char* peft_randlora_unique_base_grad(const at::Tensor* a, const at::Tensor* lambda, const at::Tensor* gamma,
                                     at::Tensor** out) {
  try {
    *out = new at::Tensor(UniqueBaseGrad::apply(*a, *lambda, *gamma));
    return nullptr;
  } catch (const std::exception& e) {
    return peft_ffi::error(e.what());
  }
}

}  // extern "C"
