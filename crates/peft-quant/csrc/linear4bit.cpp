// A libtorch autograd function for linear layers on a frozen 4-bit weight (QLoRA's matmul).
//
// Plain tensor ops would save the dequantized weight for the backward pass, so every 4-bit layer would
// hold a dense copy of its weight until backward — the memory QLoRA exists to save. This function saves
// only the packed codes and the per-block maxima, and dequantizes again in backward. The arithmetic is
// the same as bitsandbytes' CPU path: code[nibble] * absmax[block] in f32, cast, then F.linear.
//
// C ABI: tensors cross as `at::Tensor*` (what tch's `C_tensor` is); results are heap-allocated tensors
// owned by the caller; errors are returned as a malloc'ed message (free with peft_quant_free_error).

#include "peft_ffi.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>

// bitsandbytes' C entry points for CUDA tensors, resolved at run time from its shared library by the Rust
// side (peft_quant::cuda) and registered with peft_quant_set_cuda_kernels. Their C signatures
// (bitsandbytes' csrc/pythonInterface.cpp; `half` / `__nv_bfloat16` / `float` outputs and `cudaStream_t`
// are all plain pointers in the ABI):
//   cdequantize_blockwise_{fp32,bf16,fp16}_{nf4,fp4}(code, A, absmax, out, blocksize, n, stream)
//   cdequantize_blockwise_fp32(code, A, absmax, out, blocksize, n, stream)            (8-bit -> f32)
//   cgemm_4bit_{fp32,bf16,fp16}(A, B, absmax, absmax_8bit, absmax_code, absmax_offset, out, bias,
//                               M, N, K, blocksize, quant_type, stream)              (fused 4-bit GEMM)
extern "C" {
typedef void (*PeftBnbDequantFn)(float* code, unsigned char* a, float* absmax, void* out, int blocksize, int n,
                                 void* stream);
typedef void (*PeftBnbGemm4bitFn)(void* a, unsigned char* b, float* absmax, unsigned char* absmax_8bit,
                                  float* absmax_code, float* absmax_offset, void* out, void* bias, int m, int n,
                                  int k, int blocksize, int quant_type, void* stream);

// The kernel table: dequant4[quant type: 0 NF4, 1 FP4][dtype: 0 f32, 1 bf16, 2 f16]; gemm4[dtype] may be
// null (older bitsandbytes), then small-batch inference dequantizes too.
struct PeftQuantCudaKernels {
  PeftBnbDequantFn dequant4[2][3];
  PeftBnbDequantFn dequant8_fp32;
  PeftBnbGemm4bitFn gemm4[3];
};
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The per-block maxima: f32 values, or (double quantization) 8-bit codes of the maxima minus their mean,
// with an f32 maximum per block of `nested_blocksize` codes. A block's scale is then
// nested_code[q] * nested_absmax[b / nested_blocksize] + offset, in f32 — what bitsandbytes'
// dequantize_blockwise followed by `absmax += offset` computes.
struct Stats {
  at::Tensor absmax;
  at::Tensor nested_absmax;
  at::Tensor nested_code;
  bool nested = false;
  int64_t nested_blocksize = 256;
  double offset = 0.0;
  // 0: NF4, 1: FP4, -1: a code bitsandbytes' CUDA kernels do not have (they only run the tensor-op path).
  int quant_type = -1;

  // The f32 maxima as a tensor (for devices without the fused kernel).
  at::Tensor dense() const {
    if (!nested) return absmax.to(at::kFloat);
    at::Tensor values = nested_code.to(at::kFloat).index_select(0, absmax.reshape({-1}).to(at::kLong));
    const int64_t n = values.size(0);
    const int64_t rem = n % nested_blocksize;
    const int64_t full = n - rem;
    at::Tensor na = nested_absmax.reshape({-1}).to(at::kFloat);
    at::Tensor out =
        (values.narrow(0, 0, full).view({full / nested_blocksize, nested_blocksize}) *
         na.narrow(0, 0, full / nested_blocksize).view({-1, 1}))
            .view({full});
    if (rem != 0) out = at::cat({out, values.narrow(0, full, rem) * na[full / nested_blocksize]}, 0);
    return out + at::scalar_tensor(offset, out.options());
  }
};

// One pass over the packed bytes on CPU: code[nibble] * scale[block] in f32, rounded once to the output
// dtype — the same values as the tensor-op version below, without its index and gather temporaries.
// Writes values [first, last) of the flattened weight to out[0 .. last - first).
template <typename T, typename Scale>
void dequantize_range_cpu(const uint8_t* packed, const float* code, Scale scale_of, int64_t blocksize,
                          int64_t first, int64_t last, T* out) {
  // Both values of every byte at once: pairs[byte] = {code[high nibble], code[low nibble]}.
  float pairs[256][2];
  for (int b = 0; b < 256; ++b) {
    pairs[b][0] = code[b >> 4];
    pairs[b][1] = code[b & 15];
  }
  const int64_t b0 = first / blocksize;
  const int64_t b1 = (last + blocksize - 1) / blocksize;
  at::parallel_for(b0, b1, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float scale = scale_of(b);
      const int64_t lo = std::max(first, b * blocksize);
      const int64_t hi = std::min(last, (b + 1) * blocksize);
      int64_t j = lo;
      if ((j & 1) != 0 && j < hi) {  // a range starting on a low nibble
        out[j - first] = static_cast<T>(pairs[packed[j >> 1]][1] * scale);
        ++j;
      }
      T* o = out + (j - first);
      const uint8_t* p = packed + (j >> 1);
      const int64_t pairs_in_block = (hi - j) / 2;
      for (int64_t k = 0; k < pairs_in_block; ++k) {
        const float* v = pairs[p[k]];
        o[2 * k] = static_cast<T>(v[0] * scale);
        o[2 * k + 1] = static_cast<T>(v[1] * scale);
      }
      j += 2 * pairs_in_block;
      if (j < hi) out[j - first] = static_cast<T>(pairs[packed[j >> 1]][0] * scale);
    }
  });
}

template <typename T>
void dequantize_range_typed(const uint8_t* packed, const float* code, const Stats& st, const at::Tensor& absmax,
                            const at::Tensor& nested_absmax, const at::Tensor& nested_code, int64_t blocksize,
                            int64_t first, int64_t last, T* out) {
  if (st.nested) {
    const uint8_t* q = absmax.data_ptr<uint8_t>();
    const float* na = nested_absmax.data_ptr<float>();
    const float* nc = nested_code.data_ptr<float>();
    const int64_t nbs = st.nested_blocksize;
    const float offset = static_cast<float>(st.offset);
    auto scale = [=](int64_t b) {
      float s = nc[q[b]] * na[b / nbs];
      return s + offset;
    };
    dequantize_range_cpu(packed, code, scale, blocksize, first, last, out);
  } else {
    const float* a = absmax.data_ptr<float>();
    auto scale = [=](int64_t b) { return a[b]; };
    dequantize_range_cpu(packed, code, scale, blocksize, first, last, out);
  }
}

// The registered bitsandbytes kernels (null: none; CUDA tensors then take the tensor-op path).
std::atomic<const PeftQuantCudaKernels*> g_cuda_kernels{nullptr};

int dtype_slot(at::ScalarType kind) {
  switch (kind) {
    case at::kFloat:
      return 0;
    case at::kBFloat16:
      return 1;
    case at::kHalf:
      return 2;
    default:
      return -1;
  }
}

// The raw CUDA stream libtorch currently uses on `device` (torch.cuda.current_stream().cuda_stream), read
// through the device-generic guard interface, so this file needs no CUDA headers.
void* current_stream(const at::Device& device) {
  const c10::impl::DeviceGuardImplInterface* impl = c10::impl::getDeviceGuardImpl(device.type());
  return impl->getStreamNativeHandle(impl->getStream(device));
}

bool fits_int(int64_t n) { return n >= 0 && n <= std::numeric_limits<int>::max(); }

// True when bitsandbytes' CUDA kernels can take these operands: everything on one CUDA device, the
// statistics in the dtypes the kernels read, a code they have built in.
bool cuda_operands_ok(const at::Tensor& packed, const Stats& st, int64_t n) {
  if (!packed.is_cuda() || packed.scalar_type() != at::kByte || st.quant_type < 0 || st.quant_type > 1) return false;
  if (!fits_int(n) || !st.absmax.is_cuda() || st.absmax.get_device() != packed.get_device()) return false;
  if (st.nested) {
    return st.absmax.scalar_type() == at::kByte && st.nested_absmax.is_cuda() && st.nested_code.is_cuda() &&
           st.nested_absmax.get_device() == packed.get_device() && st.nested_code.get_device() == packed.get_device() &&
           fits_int(st.absmax.numel()) && st.nested_blocksize > 0 && fits_int(st.nested_blocksize);
  }
  return st.absmax.scalar_type() == at::kFloat;
}

// The f32 block maxima on the GPU: bitsandbytes' dequantize_blockwise of the 8-bit statistics plus the
// offset, as its dequantize_4bit does.
at::Tensor cuda_block_absmax(const PeftQuantCudaKernels& k, const Stats& st, void* stream) {
  if (!st.nested) return st.absmax.contiguous();
  at::Tensor q = st.absmax.contiguous();
  at::Tensor na = st.nested_absmax.to(at::kFloat).contiguous();
  at::Tensor nc = st.nested_code.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({q.numel()}, q.options().dtype(at::kFloat));
  k.dequant8_fp32(nc.data_ptr<float>(), q.data_ptr<uint8_t>(), na.data_ptr<float>(), out.data_ptr(),
                  static_cast<int>(st.nested_blocksize), static_cast<int>(q.numel()), stream);
  return out.add_(st.offset);
}

// The whole dequantized weight through bitsandbytes' kernels, or nothing when they cannot take it.
std::optional<at::Tensor> dequantize_cuda(const at::Tensor& packed, const Stats& st, int64_t blocksize,
                                          int64_t out_features, int64_t in_features, at::ScalarType kind) {
  const PeftQuantCudaKernels* k = g_cuda_kernels.load(std::memory_order_acquire);
  const int slot = dtype_slot(kind);
  const int64_t n = out_features * in_features;
  if (k == nullptr || slot < 0 || !cuda_operands_ok(packed, st, n) || !fits_int(blocksize)) return std::nullopt;
  PeftBnbDequantFn fn = k->dequant4[st.quant_type][slot];
  if (fn == nullptr || (st.nested && k->dequant8_fp32 == nullptr)) return std::nullopt;
  const c10::DeviceGuard guard(packed.device());
  void* stream = current_stream(packed.device());
  at::Tensor p = packed.contiguous();
  at::Tensor absmax = cuda_block_absmax(*k, st, stream);
  at::Tensor out = at::empty({out_features, in_features}, p.options().dtype(kind));
  fn(nullptr, p.data_ptr<uint8_t>(), absmax.data_ptr<float>(), out.data_ptr(), static_cast<int>(blocksize),
     static_cast<int>(n), stream);
  return out;
}

// bitsandbytes' fused 4-bit GEMM for inference with at most this many rows: below it bitsandbytes always
// takes the fused kernel (_GEMM_4BIT_CUSTOM_FLOOR_M); above, dequantize-and-matmul is as fast or faster on
// the data-centre GPUs bitsandbytes calibrated.
constexpr int64_t kGemmMaxRows = 4;

std::optional<at::Tensor> gemm_cuda(const at::Tensor& x, const at::Tensor& packed, const Stats& st,
                                    const at::Tensor* bias, int64_t blocksize, int64_t out_features,
                                    int64_t in_features) {
  const PeftQuantCudaKernels* k = g_cuda_kernels.load(std::memory_order_acquire);
  const int slot = dtype_slot(x.scalar_type());
  if (k == nullptr || slot < 0 || k->gemm4[slot] == nullptr || !x.is_cuda() || x.dim() < 1) return std::nullopt;
  if (x.size(-1) != in_features || in_features % blocksize != 0) return std::nullopt;
  const int64_t rows = in_features == 0 ? 0 : x.numel() / in_features;
  if (rows < 1 || rows > kGemmMaxRows || x.get_device() != packed.get_device()) return std::nullopt;
  if (!cuda_operands_ok(packed, st, out_features * in_features) || !fits_int(in_features) ||
      !fits_int(out_features) || !fits_int(blocksize)) {
    return std::nullopt;
  }
  if (st.nested && st.nested_blocksize != 256) return std::nullopt;  // the kernel decodes blocks of 256
  const c10::DeviceGuard guard(x.device());
  void* stream = current_stream(x.device());
  at::Tensor a = x.contiguous();
  at::Tensor p = packed.contiguous();
  at::Tensor b;
  if (bias != nullptr) b = bias->to(x.scalar_type()).contiguous();
  at::Tensor absmax, absmax_8bit, absmax_code, offset;
  if (st.nested) {
    absmax = st.nested_absmax.to(at::kFloat).contiguous();
    absmax_8bit = st.absmax.contiguous();
    absmax_code = st.nested_code.to(at::kFloat).contiguous();
    offset = at::full({1}, st.offset, a.options().dtype(at::kFloat));
  } else {
    absmax = st.absmax.contiguous();
  }
  auto sizes = a.sizes().vec();
  sizes.back() = out_features;
  at::Tensor out = at::empty(sizes, a.options());
  // bitsandbytes numbers the 4-bit types 1 (FP4) and 2 (NF4) here.
  const int quant_type = st.quant_type == 1 ? 1 : 2;
  k->gemm4[slot](a.data_ptr(), p.data_ptr<uint8_t>(), absmax.data_ptr<float>(),
                 st.nested ? absmax_8bit.data_ptr<uint8_t>() : nullptr,
                 st.nested ? absmax_code.data_ptr<float>() : nullptr, st.nested ? offset.data_ptr<float>() : nullptr,
                 out.data_ptr(), b.defined() ? b.data_ptr() : nullptr, static_cast<int>(rows),
                 static_cast<int>(out_features), static_cast<int>(in_features), static_cast<int>(blocksize),
                 quant_type, stream);
  return out;
}

// Rows [row0, row0 + rows) of the dequantized (out_features, in_features) weight.
at::Tensor dequantize_rows(const at::Tensor& packed, const at::Tensor& code, const Stats& st, int64_t blocksize,
                           int64_t out_features, int64_t in_features, int64_t row0, int64_t rows,
                           at::ScalarType kind) {
  const int64_t n = out_features * in_features;
  const bool cpu_kind = kind == at::kFloat || kind == at::kBFloat16 || kind == at::kHalf;
  const bool stats_ok = st.nested ? st.absmax.scalar_type() == at::kByte : st.absmax.scalar_type() == at::kFloat;
  if (packed.device().is_cpu() && cpu_kind && stats_ok) {
    at::Tensor p = packed.contiguous();
    at::Tensor c = code.to(at::kFloat).contiguous();
    at::Tensor a = st.absmax.contiguous();
    at::Tensor na = st.nested ? st.nested_absmax.to(at::kFloat).contiguous() : at::Tensor();
    at::Tensor nc = st.nested ? st.nested_code.to(at::kFloat).contiguous() : at::Tensor();
    at::Tensor out = at::empty({rows, in_features}, packed.options().dtype(kind));
    const uint8_t* pp = p.data_ptr<uint8_t>();
    const float* cp = c.data_ptr<float>();
    const int64_t first = row0 * in_features;
    const int64_t last = first + rows * in_features;
    if (kind == at::kFloat) {
      dequantize_range_typed(pp, cp, st, a, na, nc, blocksize, first, last, out.data_ptr<float>());
    } else if (kind == at::kBFloat16) {
      dequantize_range_typed(pp, cp, st, a, na, nc, blocksize, first, last, out.data_ptr<at::BFloat16>());
    } else {
      dequantize_range_typed(pp, cp, st, a, na, nc, blocksize, first, last, out.data_ptr<at::Half>());
    }
    return out;
  }
  if (packed.is_cuda()) {
    if (std::optional<at::Tensor> w = dequantize_cuda(packed, st, blocksize, out_features, in_features, kind)) {
      return rows == out_features ? *w : w->narrow(0, row0, rows);
    }
  }
  at::Tensor flat = packed.reshape({-1}).to(at::kLong);
  at::Tensor idx = at::stack({flat.bitwise_right_shift(4), flat.bitwise_and(15)}, 1).view({-1}).narrow(0, 0, n);
  at::Tensor values = code.to(at::kFloat).index_select(0, idx);
  const int64_t rem = n % blocksize;
  const int64_t full = n - rem;
  const int64_t blocks = full / blocksize;
  at::Tensor a = st.dense().reshape({-1});
  at::Tensor out = (values.narrow(0, 0, full).view({blocks, blocksize}) * a.narrow(0, 0, blocks).view({-1, 1})).view({full});
  if (rem != 0) {
    out = at::cat({out, values.narrow(0, full, rem) * a[blocks]}, 0);
  }
  return out.to(kind).view({out_features, in_features}).narrow(0, row0, rows);
}

at::Tensor dequantize(const at::Tensor& packed, const at::Tensor& code, const Stats& st, int64_t blocksize,
                      int64_t out_features, int64_t in_features, at::ScalarType kind) {
  return dequantize_rows(packed, code, st, blocksize, out_features, in_features, 0, out_features, kind);
}

// Weights above this many values are dequantized a slice of rows at a time, so the transient dense copy
// stays at most this big (8 MiB in bf16) however large the layer.
constexpr int64_t kChunkValues = int64_t{1} << 22;

// Only the CPU path dequantizes a slice of rows at a time; on other devices the kernels (bitsandbytes' or
// the tensor ops) produce the whole weight at once, as bitsandbytes does.
int64_t chunk_rows(const at::Tensor& packed, int64_t out_features, int64_t in_features) {
  if (!packed.device().is_cpu() || out_features * in_features <= kChunkValues) return out_features;
  return std::max<int64_t>(1, kChunkValues / in_features);
}

struct Linear4bitFunction : public torch::autograd::Function<Linear4bitFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& packed, const at::Tensor& code,
                            const at::Tensor& absmax, const at::Tensor& nested_absmax, const at::Tensor& nested_code,
                            bool nested, int64_t nested_blocksize, double offset, int64_t quant_type,
                            const at::Tensor& bias, bool has_bias, int64_t blocksize, int64_t out_features,
                            int64_t in_features) {
    // Only the packed codes and the (possibly 8-bit) statistics are kept for backward: no dense weight.
    ctx->save_for_backward({packed, code, absmax, nested_absmax, nested_code});
    ctx->saved_data["nested"] = nested;
    ctx->saved_data["nested_blocksize"] = nested_blocksize;
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["quant_type"] = quant_type;
    ctx->saved_data["blocksize"] = blocksize;
    ctx->saved_data["out_features"] = out_features;
    ctx->saved_data["in_features"] = in_features;
    const Stats st{absmax, nested_absmax, nested_code, nested, nested_blocksize, offset, static_cast<int>(quant_type)};
    std::optional<at::Tensor> b;
    if (has_bias) b = bias.to(x.scalar_type());
    const int64_t step = chunk_rows(packed, out_features, in_features);
    if (step >= out_features) {
      at::Tensor w = dequantize(packed, code, st, blocksize, out_features, in_features, x.scalar_type());
      return at::linear(x, w, b);
    }
    auto sizes = x.sizes().vec();
    sizes.back() = out_features;
    at::Tensor y = at::empty(sizes, x.options());
    for (int64_t r0 = 0; r0 < out_features; r0 += step) {
      const int64_t rows = std::min(step, out_features - r0);
      at::Tensor w = dequantize_rows(packed, code, st, blocksize, out_features, in_features, r0, rows, x.scalar_type());
      std::optional<at::Tensor> bc;
      if (b.has_value()) bc = b->narrow(0, r0, rows);
      y.narrow(-1, r0, rows).copy_(at::linear(x, w, bc));
    }
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& grad = grad_outputs[0];
    const Stats st{saved[2],
                   saved[3],
                   saved[4],
                   ctx->saved_data["nested"].toBool(),
                   ctx->saved_data["nested_blocksize"].toInt(),
                   ctx->saved_data["offset"].toDouble(),
                   static_cast<int>(ctx->saved_data["quant_type"].toInt())};
    const int64_t blocksize = ctx->saved_data["blocksize"].toInt();
    const int64_t out_features = ctx->saved_data["out_features"].toInt();
    const int64_t in_features = ctx->saved_data["in_features"].toInt();
    const int64_t step = chunk_rows(saved[0], out_features, in_features);
    at::Tensor grad_x;
    for (int64_t r0 = 0; r0 < out_features; r0 += step) {
      const int64_t rows = std::min(step, out_features - r0);
      at::Tensor w = dequantize_rows(saved[0], saved[1], st, blocksize, out_features, in_features, r0, rows,
                                     grad.scalar_type());
      at::Tensor part = at::matmul(rows == out_features ? grad : grad.narrow(-1, r0, rows), w);
      grad_x = grad_x.defined() ? grad_x.add_(part) : part;
    }
    variable_list grads(16);
    grads[0] = grad_x;
    return grads;
  }
};

// LLM.int8's training path (bitsandbytes' MatMul8bitFp): W = CB.to(dtype) * (SCB / 127), a dense matmul,
// and a backward that rebuilds W from the int8 codes instead of keeping it.
at::Tensor dequantize_int8(const at::Tensor& cb, const at::Tensor& scb, at::ScalarType kind) {
  return cb.to(kind).mul_(scb.unsqueeze(1).mul(1.0 / 127.0));
}

struct Linear8bitFunction : public torch::autograd::Function<Linear8bitFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cb, const at::Tensor& scb,
                            const at::Tensor& bias, bool has_bias) {
    ctx->save_for_backward({cb, scb});
    std::optional<at::Tensor> b;
    if (has_bias) b = bias.to(x.scalar_type());
    return at::linear(x, dequantize_int8(cb, scb, x.scalar_type()), b);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& grad = grad_outputs[0];
    variable_list grads(5);
    grads[0] = at::matmul(grad, dequantize_int8(saved[0], saved[1], grad.scalar_type()));
    return grads;
  }
};

}  // namespace

// The statistics of a 4-bit weight as they cross the C ABI: `nested_absmax` / `nested_code` are null
// without double quantization (then `absmax` holds f32 maxima).
struct PeftQuantStats {
  const at::Tensor* absmax;
  const at::Tensor* nested_absmax;
  const at::Tensor* nested_code;
  int64_t nested_blocksize;
  double offset;
  int32_t quant_type;  // 0: NF4, 1: FP4, -1: another code
};

Stats stats_of(const PeftQuantStats* s, const at::TensorOptions& opts) {
  const bool nested = s->nested_absmax != nullptr && s->nested_code != nullptr;
  return Stats{*s->absmax, nested ? *s->nested_absmax : at::empty({0}, opts.dtype(at::kFloat)),
               nested ? *s->nested_code : at::empty({0}, opts.dtype(at::kFloat)), nested, s->nested_blocksize,
               s->offset, s->quant_type};
}

extern "C" {

// `x @ dequantize(packed).T + bias` with a backward that re-dequantizes. `bias` may be null. On success
// writes a new tensor to `*out` and returns null; on failure returns the error message.
char* peft_quant_linear4bit(const at::Tensor* x, const at::Tensor* packed, const at::Tensor* code,
                            const PeftQuantStats* stats, const at::Tensor* bias, int64_t blocksize,
                            int64_t out_features, int64_t in_features, at::Tensor** out) {
  try {
    const Stats st = stats_of(stats, x->options());
    // Every tensor argument of an autograd function must be defined: absent ones travel as empty tensors.
    const bool has_bias = bias != nullptr;
    // Inference on a GPU with a handful of rows: bitsandbytes' fused kernel, as its matmul_4bit chooses.
    const bool needs_grad =
        at::GradMode::is_enabled() && (x->requires_grad() || (has_bias && bias->requires_grad()));
    if (!needs_grad && x->is_cuda()) {
      if (std::optional<at::Tensor> y = gemm_cuda(*x, *packed, st, bias, blocksize, out_features, in_features)) {
        *out = new at::Tensor(std::move(*y));
        return nullptr;
      }
    }
    at::Tensor b = has_bias ? *bias : at::empty({0}, x->options());
    at::Tensor y = Linear4bitFunction::apply(*x, *packed, *code, st.absmax, st.nested_absmax, st.nested_code,
                                             st.nested, st.nested_blocksize, st.offset, st.quant_type, b, has_bias,
                                             blocksize, out_features, in_features);
    *out = new at::Tensor(std::move(y));
    return nullptr;
  } catch (const std::exception& e) {
    return peft_ffi::error(e.what());
  }
}

// The dequantized (out_features, in_features) weight in dtype `kind` (a c10::ScalarType value).
char* peft_quant_dequantize4bit(const at::Tensor* packed, const at::Tensor* code, const PeftQuantStats* stats,
                                int64_t blocksize, int64_t out_features, int64_t in_features, int kind,
                                at::Tensor** out) {
  try {
    const Stats st = stats_of(stats, packed->options());
    at::Tensor w =
        dequantize(*packed, *code, st, blocksize, out_features, in_features, static_cast<at::ScalarType>(kind));
    *out = new at::Tensor(std::move(w));
    return nullptr;
  } catch (const std::exception& e) {
    return peft_ffi::error(e.what());
  }
}

// LLM.int8 training-path linear: `x @ (CB * SCB / 127).T + bias`, re-dequantizing in backward.
char* peft_quant_linear8bit(const at::Tensor* x, const at::Tensor* cb, const at::Tensor* scb, const at::Tensor* bias,
                            at::Tensor** out) {
  try {
    const bool has_bias = bias != nullptr;
    at::Tensor b = has_bias ? *bias : at::empty({0}, x->options());
    at::Tensor y = Linear8bitFunction::apply(*x, *cb, *scb, b, has_bias);
    *out = new at::Tensor(std::move(y));
    return nullptr;
  } catch (const std::exception& e) {
    return peft_ffi::error(e.what());
  }
}

void peft_quant_free_error(char* msg) { std::free(msg); }

// Registers bitsandbytes' CUDA kernels (copied; the library stays loaded for the life of the process).
// Null unregisters: CUDA tensors take the tensor-op path again.
void peft_quant_set_cuda_kernels(const PeftQuantCudaKernels* kernels) {
  const PeftQuantCudaKernels* copy = kernels == nullptr ? nullptr : new PeftQuantCudaKernels(*kernels);
  // The previous table is leaked on purpose: another thread may still be reading it.
  g_cuda_kernels.store(copy, std::memory_order_release);
}

}  // extern "C"
