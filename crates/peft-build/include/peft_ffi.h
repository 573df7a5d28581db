// What every peft-rs C++ shim shares across its C ABI (compile_cpp puts this directory on the include
// path): errors cross to Rust as a malloc'ed copy of the message, which the Rust side frees after
// reading it (peft_core's `take_error`, or the crate's own `*_free_error`).
#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>

namespace peft_ffi {

// A malloc'ed copy of `what` for Rust to take and free; nullptr only when out of memory.
inline char* error(const char* what) {
  const size_t len = std::strlen(what);
  char* msg = static_cast<char*>(std::malloc(len + 1));
  if (msg != nullptr) std::memcpy(msg, what, len + 1);
  return msg;
}

// Runs `f`; a C++ exception becomes its message (see `error`), success nullptr.
template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const std::exception& e) {
    return error(e.what());
  }
}

}  // namespace peft_ffi
