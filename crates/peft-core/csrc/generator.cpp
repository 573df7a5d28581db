// Random draws from an explicit CPU generator (PyTorch's `torch.Generator().manual_seed(seed)`), which tch
// does not expose. Methods that seed their own generator (VeRA's projections, FourierFT's frequency
// locations, ...) draw exactly the numbers PEFT draws without touching libtorch's global generator.
//
// C ABI: tensors cross as `at::Tensor*` (tch's `C_tensor`); results are heap-allocated tensors owned by
// the caller; errors come back as a malloc'ed message freed with peft_core_free_error.

#include "peft_ffi.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>

namespace {

at::Generator& gen_of(void* g) { return *static_cast<at::Generator*>(g); }

}  // namespace

extern "C" {

// A fresh CPU generator seeded with `seed` (the state torch.Generator().manual_seed(seed) has).
void* peft_core_generator_new(uint64_t seed) {
  try {
    return new at::Generator(at::make_generator<at::CPUGeneratorImpl>(seed));
  } catch (...) {
    return nullptr;
  }
}

void peft_core_generator_free(void* g) { delete static_cast<at::Generator*>(g); }

// tensor.uniform_(from, to, generator=g)
char* peft_core_uniform_(at::Tensor* t, double from, double to, void* g) {
  return peft_ffi::guarded([&] { t->uniform_(from, to, gen_of(g)); });
}

// tensor.normal_(mean, std, generator=g)
char* peft_core_normal_(at::Tensor* t, double mean, double std, void* g) {
  return peft_ffi::guarded([&] { t->normal_(mean, std, gen_of(g)); });
}

// torch.randperm(n, generator=g) (int64, CPU)
char* peft_core_randperm(int64_t n, void* g, at::Tensor** out) {
  return peft_ffi::guarded([&] { *out = new at::Tensor(at::randperm(n, gen_of(g), at::TensorOptions().dtype(at::kLong))); });
}

// torch.rand(shape, generator=g) (f32, CPU)
char* peft_core_rand(const int64_t* shape, size_t ndim, void* g, at::Tensor** out) {
  return peft_ffi::guarded([&] { *out = new at::Tensor(at::rand(at::IntArrayRef(shape, ndim), gen_of(g), at::TensorOptions())); });
}

// torch.randn(shape, generator=g) (f32, CPU)
char* peft_core_randn(const int64_t* shape, size_t ndim, void* g, at::Tensor** out) {
  return peft_ffi::guarded([&] { *out = new at::Tensor(at::randn(at::IntArrayRef(shape, ndim), gen_of(g), at::TensorOptions())); });
}

// torch.randn(shape, dtype=dtype, generator=g) (CPU); `dtype` is a c10::ScalarType code.
char* peft_core_randn_kind(const int64_t* shape, size_t ndim, int dtype, void* g, at::Tensor** out) {
  return peft_ffi::guarded([&] {
    auto options = at::TensorOptions().dtype(static_cast<at::ScalarType>(dtype));
    *out = new at::Tensor(at::randn(at::IntArrayRef(shape, ndim), gen_of(g), options));
  });
}

// torch.get_rng_state(): the default CPU generator's state (a uint8 tensor).
char* peft_core_default_cpu_state(at::Tensor** out) {
  return peft_ffi::guarded([&] {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    *out = new at::Tensor(gen.get_state());
  });
}

// torch.set_rng_state(state) for the default CPU generator.
char* peft_core_set_default_cpu_state(at::Tensor* state) {
  return peft_ffi::guarded([&] {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(*state);
  });
}

void peft_core_free_error(char* msg) { std::free(msg); }

}  // extern "C"
