// OSF's orthogonal gradient projection as a libtorch tensor hook, the C++ form of the hooks PEFT's
// `OSFLayer._attach_hooks` registers with `register_hook`: the hook rewrites each gradient of `U_low` /
// `V_low` before autograd accumulates it into `.grad`, so every backward (any loop, any optimizer,
// gradient accumulation included) trains only the subspace orthogonal to the frozen top singular
// directions — with the same matmuls and subtraction as PEFT's Python hook.
//
// C ABI: tensors cross as `at::Tensor*` (tch's `C_tensor`); errors come back as a malloc'ed message (freed
// by peft_core's `take_error`).

#include "peft_ffi.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/variable.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace {

// Which of PEFT's four projections a hook applies (`basis` is the tensor named in each).
enum Projection : int {
  // U square (out <= in): grad -> U_low_init @ (U_low_init^T @ grad).
  kUFromLowInit = 0,
  // U not square: grad -> grad - U_high @ (U_high^T @ grad).
  kUAgainstHigh = 1,
  // V square (out >= in): grad -> (grad @ V_low_init^T) @ V_low_init.
  kVFromLowInit = 2,
  // V not square: grad -> grad - (grad @ V_high^T) @ V_high.
  kVAgainstHigh = 3,
};

}  // namespace

extern "C" {

// Registers the projection `mode` (a `Projection`) with `basis` on the leaf `param`. libtorch only hooks
// tensors that require grad, so a frozen `param` is unfrozen for the registration and frozen again; the
// hook stays with the tensor whatever its `requires_grad` later becomes, as PEFT's does.
char* peft_osf_register_projection(const at::Tensor* param, const at::Tensor* basis, int mode) {
  try {
    if (mode < kUFromLowInit || mode > kVAgainstHigh) return peft_ffi::error("OSF: unknown projection");
    const at::Tensor b = *basis;
    const bool frozen = !param->requires_grad();
    if (frozen) param->set_requires_grad(true);
    param->register_hook([b, mode](const at::Tensor& grad) -> at::Tensor {
      switch (mode) {
        case kUFromLowInit:
          return at::matmul(b, at::matmul(b.transpose(0, 1), grad));
        case kUAgainstHigh:
          return at::sub(grad, at::matmul(b, at::matmul(b.transpose(0, 1), grad)));
        case kVFromLowInit:
          return at::matmul(at::matmul(grad, b.transpose(0, 1)), b);
        default:
          return at::sub(grad, at::matmul(at::matmul(grad, b.transpose(0, 1)), b));
      }
    });
    if (frozen) param->set_requires_grad(false);
    return nullptr;
  } catch (const std::exception& e) {
    return peft_ffi::error(e.what());
  }
}

}  // extern "C"
