// Memory statistics of libtorch's caching allocator on accelerators (torch.cuda.max_memory_allocated and
// friends), through the device-generic allocator interface, so no CUDA headers are needed. Same C ABI
// conventions as linear4bit.cpp: errors come back as a malloc'ed message (free with peft_quant_free_error).

#include "peft_ffi.h"

#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/DeviceType.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace {

// The aggregate entry of a StatArray (index 0: all pools).
constexpr size_t kAggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);

}  // namespace

extern "C" {

// out[0..4] = allocated bytes now, allocated bytes at peak, reserved bytes now, reserved bytes at peak, for
// CUDA device `device`.
char* peft_quant_cuda_memory(int device, int64_t* out) {
  try {
    c10::DeviceAllocator* alloc = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    const c10::CachingDeviceAllocator::DeviceStats stats =
        alloc->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    out[0] = stats.allocated_bytes[kAggregate].current;
    out[1] = stats.allocated_bytes[kAggregate].peak;
    out[2] = stats.reserved_bytes[kAggregate].current;
    out[3] = stats.reserved_bytes[kAggregate].peak;
    return nullptr;
  } catch (const std::exception& e) {
    return peft_ffi::error(e.what());
  }
}

// Resets the peaks of peft_quant_cuda_memory (torch.cuda.reset_peak_memory_stats).
char* peft_quant_cuda_reset_peak(int device) {
  try {
    c10::getDeviceAllocator(c10::DeviceType::CUDA)->resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return nullptr;
  } catch (const std::exception& e) {
    return peft_ffi::error(e.what());
  }
}

}  // extern "C"
