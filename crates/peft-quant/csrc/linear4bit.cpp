// A libtorch autograd function for linear layers on a frozen 4-bit weight (QLoRA's matmul).
//
// Plain tensor ops would save the dequantized weight for the backward pass, so every 4-bit layer would
// hold a dense copy of its weight until backward — the memory QLoRA exists to save. This function saves
// only the packed codes and the per-block maxima, and dequantizes again in backward. The arithmetic is
// the same as bitsandbytes' CPU path: code[nibble] * absmax[block] in f32, cast, then F.linear.
//
// C ABI: tensors cross as `at::Tensor*` (what tch's `C_tensor` is); results are heap-allocated tensors
// owned by the caller; errors are returned as a malloc'ed message (free with peft_quant_free_error).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// One pass over the packed bytes on CPU: code[nibble] * absmax[block] in f32, rounded once to the output
// dtype — the same values as the tensor-op version below, without its index and gather temporaries.
template <typename T>
void dequantize_cpu(const uint8_t* packed, const float* code, const float* absmax, int64_t blocksize, int64_t n,
                    T* out) {
  // Work in whole blocks: one scale per block, no division per element. Block sizes are even, so a
  // block never splits a byte; only the last value of an odd-sized tensor has no partner.
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  at::parallel_for(0, blocks, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float scale = absmax[b];
      const int64_t first = b * blocksize;
      const int64_t last = std::min(n, first + blocksize);
      int64_t j = first;
      for (; j + 1 < last; j += 2) {
        const uint8_t byte = packed[j >> 1];
        out[j] = static_cast<T>(code[byte >> 4] * scale);
        out[j + 1] = static_cast<T>(code[byte & 15] * scale);
      }
      if (j < last) out[j] = static_cast<T>(code[packed[j >> 1] >> 4] * scale);
    }
  });
}

at::Tensor dequantize(const at::Tensor& packed, const at::Tensor& code, const at::Tensor& absmax,
                      int64_t blocksize, int64_t out_features, int64_t in_features, at::ScalarType kind) {
  const int64_t n = out_features * in_features;
  if (packed.device().is_cpu() && (kind == at::kFloat || kind == at::kBFloat16 || kind == at::kHalf)) {
    at::Tensor p = packed.contiguous();
    at::Tensor c = code.to(at::kFloat).contiguous();
    at::Tensor a = absmax.to(at::kFloat).contiguous();
    at::Tensor out = at::empty({out_features, in_features}, packed.options().dtype(kind));
    const uint8_t* pp = p.data_ptr<uint8_t>();
    const float* cp = c.data_ptr<float>();
    const float* ap = a.data_ptr<float>();
    if (kind == at::kFloat) {
      dequantize_cpu(pp, cp, ap, blocksize, n, out.data_ptr<float>());
    } else if (kind == at::kBFloat16) {
      dequantize_cpu(pp, cp, ap, blocksize, n, out.data_ptr<at::BFloat16>());
    } else {
      dequantize_cpu(pp, cp, ap, blocksize, n, out.data_ptr<at::Half>());
    }
    return out;
  }
  at::Tensor flat = packed.reshape({-1}).to(at::kLong);
  at::Tensor idx = at::stack({flat.bitwise_right_shift(4), flat.bitwise_and(15)}, 1).view({-1}).narrow(0, 0, n);
  at::Tensor values = code.to(at::kFloat).index_select(0, idx);
  const int64_t rem = n % blocksize;
  const int64_t full = n - rem;
  const int64_t blocks = full / blocksize;
  at::Tensor a = absmax.reshape({-1});
  at::Tensor out = (values.narrow(0, 0, full).view({blocks, blocksize}) * a.narrow(0, 0, blocks).view({-1, 1})).view({full});
  if (rem != 0) {
    out = at::cat({out, values.narrow(0, full, rem) * a[blocks]}, 0);
  }
  return out.to(kind).view({out_features, in_features});
}

struct Linear4bitFunction : public torch::autograd::Function<Linear4bitFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& packed, const at::Tensor& code,
                            const at::Tensor& absmax, const at::Tensor& bias, bool has_bias, int64_t blocksize,
                            int64_t out_features, int64_t in_features) {
    at::Tensor w = dequantize(packed, code, absmax, blocksize, out_features, in_features, x.scalar_type());
    ctx->save_for_backward({packed, code, absmax});
    ctx->saved_data["blocksize"] = blocksize;
    ctx->saved_data["out_features"] = out_features;
    ctx->saved_data["in_features"] = in_features;
    std::optional<at::Tensor> b;
    if (has_bias) b = bias.to(x.scalar_type());
    return at::linear(x, w, b);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& grad = grad_outputs[0];
    at::Tensor w = dequantize(saved[0], saved[1], saved[2], ctx->saved_data["blocksize"].toInt(),
                              ctx->saved_data["out_features"].toInt(), ctx->saved_data["in_features"].toInt(),
                              grad.scalar_type());
    at::Tensor grad_x = at::matmul(grad, w);
    return {grad_x,       at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(),   at::Tensor(), at::Tensor()};
  }
};

char* error_message(const char* what) {
  const size_t len = std::strlen(what);
  char* msg = static_cast<char*>(std::malloc(len + 1));
  if (msg != nullptr) std::memcpy(msg, what, len + 1);
  return msg;
}

}  // namespace

extern "C" {

// `x @ dequantize(packed).T + bias` with a backward that re-dequantizes. `bias` may be null; `absmax` holds
// the f32 per-block maxima (double quantization already undone). On success writes a new tensor to `*out`
// and returns null; on failure returns the error message.
char* peft_quant_linear4bit(const at::Tensor* x, const at::Tensor* packed, const at::Tensor* code,
                            const at::Tensor* absmax, const at::Tensor* bias, int64_t blocksize, int64_t out_features,
                            int64_t in_features, at::Tensor** out) {
  try {
    // Every tensor argument of an autograd function must be defined: no bias travels as an empty tensor.
    const bool has_bias = bias != nullptr;
    at::Tensor b = has_bias ? *bias : at::empty({0}, x->options());
    at::Tensor y =
        Linear4bitFunction::apply(*x, *packed, *code, *absmax, b, has_bias, blocksize, out_features, in_features);
    *out = new at::Tensor(std::move(y));
    return nullptr;
  } catch (const std::exception& e) {
    return error_message(e.what());
  }
}

// The dequantized (out_features, in_features) weight in dtype `kind` (a c10::ScalarType value).
char* peft_quant_dequantize4bit(const at::Tensor* packed, const at::Tensor* code, const at::Tensor* absmax,
                                int64_t blocksize, int64_t out_features, int64_t in_features, int kind,
                                at::Tensor** out) {
  try {
    at::Tensor w =
        dequantize(*packed, *code, *absmax, blocksize, out_features, in_features, static_cast<at::ScalarType>(kind));
    *out = new at::Tensor(std::move(w));
    return nullptr;
  } catch (const std::exception& e) {
    return error_message(e.what());
  }
}

void peft_quant_free_error(char* msg) { std::free(msg); }

}  // extern "C"
