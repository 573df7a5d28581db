// The two tensor operations AdaMSS's ASA needs that tch does not expose, done with the same ATen calls
// as PEFT's Python:
//  * `param.grad = None` for a masked subspace (tch can zero a gradient but not drop it; an optimizer
//    skips a parameter only when its gradient is undefined, as torch's do);
//  * the EMA update `acc.mul_(beta).add_(x, alpha=1 - beta)` (ATen's add with alpha, whose kernel fuses
//    the multiply-add; an unfused `acc * beta + x * (1 - beta)` rounds differently).
//
// C ABI: tensors cross as `at::Tensor*` (tch's `C_tensor`); errors come back as a malloc'ed message (freed
// by peft_core's `take_error`).

#include "peft_ffi.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/variable.h>

#include <cstdlib>
#include <cstring>
#include <exception>

extern "C" {

// `param.grad = None`.
char* peft_adamss_clear_grad(const at::Tensor* param) {
  try {
    param->mutable_grad().reset();
    return nullptr;
  } catch (const std::exception& e) {
    return peft_ffi::error(e.what());
  }
}

// `acc.mul_(beta).add_(x, alpha=1 - beta)` under no_grad.
char* peft_adamss_ema(const at::Tensor* acc, const at::Tensor* x, double beta) {
  try {
    at::NoGradGuard guard;
    at::Tensor a = *acc;
    a.mul_(beta).add_(*x, 1.0 - beta);
    return nullptr;
  } catch (const std::exception& e) {
    return peft_ffi::error(e.what());
  }
}

}  // extern "C"
