// Reading a `torch.save` file (the zip format PyTorch writes since 1.6, e.g. a legacy PEFT
// `adapter_model.bin`) through libtorch's own unpickler, which tch does not expose.
//
// C ABI: each (key, tensor) of the saved dict is handed to `f` as a heap `at::Tensor*` the callee owns;
// errors come back as a malloc'ed message (peft_ffi::error), freed by the Rust side.

#include "peft_ffi.h"

#include <ATen/ATen.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

extern "C" {

char* peft_cli_pickle_load(const char* path, void* data, void (*f)(void*, const char*, at::Tensor*)) {
  return peft_ffi::guarded([&] {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open the file");
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    c10::IValue value = torch::jit::pickle_load(bytes);
    if (!value.isGenericDict()) {
      throw std::runtime_error("not a state dict: the file holds a " + value.tagKind() + ", not a dict");
    }
    for (const auto& entry : value.toGenericDict()) {
      if (!entry.key().isString()) {
        throw std::runtime_error("not a state dict: a key is a " + entry.key().tagKind() + ", not a string");
      }
      const std::string key = entry.key().toStringRef();
      if (!entry.value().isTensor()) {
        throw std::runtime_error("`" + key + "` is a " + entry.value().tagKind() + ", not a tensor");
      }
      f(data, key.c_str(), new at::Tensor(entry.value().toTensor()));
    }
  });
}

}  // extern "C"
