// FRoD's sparse `S` as PEFT builds it: `torch.sparse_coo_tensor(indices, values, size)` through the
// dispatcher (`at::sparse_coo_tensor`), so the result stays differentiable in `values`. tch's binding goes
// through the `torch::` factory wrapper instead, which makes a fresh leaf and drops the graph.
//
// C ABI: tensors cross as `at::Tensor*` (tch's `C_tensor`); the result is a heap-allocated tensor owned by
// the caller; errors come back as a malloc'ed message (freed by peft_core's `take_error`).

#include "peft_ffi.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <exception>

extern "C" {

char* peft_frod_sparse_coo_tensor(const at::Tensor* indices, const at::Tensor* values, const int64_t* size,
                                  size_t ndim, at::Tensor** out) {
  try {
    *out = new at::Tensor(at::sparse_coo_tensor(*indices, *values, at::IntArrayRef(size, ndim)));
    return nullptr;
  } catch (const std::exception& e) {
    return peft_ffi::error(e.what());
  }
}

}  // extern "C"
