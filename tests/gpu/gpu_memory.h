// File: tests/gpu/gpu_memory.h
// GPU memory of the process on cuda:0, as the CUDA caching allocator counts it, for the GPU
// tests and benchmarks: what is in live tensors and what the allocator holds reserved, and
// a way to ask it to empty its cache.
//
//   const genie::testing::GpuMemory before = genie::testing::GpuMemoryNow();
//   ...                                   // sessions come and go
//   EXPECT_LE(GpuMemoryNow().reserved - before.reserved, int64_t{2} << 20);
#ifndef GENIE_TESTS_GPU_GPU_MEMORY_H_
#define GENIE_TESTS_GPU_GPU_MEMORY_H_

#include <cstdint>
#include <exception>
#include <string>

#if GENIE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace genie::testing {

struct GpuMemory {
  int64_t allocated = 0;  // bytes in live tensors
  int64_t reserved = 0;   // bytes the allocator holds from the device
};

// Zeros in a build without CUDA (--config=cuda).
inline GpuMemory GpuMemoryNow() {
#if GENIE_WITH_CUDA
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(0);
  const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  return {stats.allocated_bytes[all].current, stats.reserved_bytes[all].current};
#else
  return {};
#endif
}

// Asks the caching allocator to return its cached blocks to the device: "" when it did,
// else the allocator's refusal (it refuses while it counts a CUDA-graph capture as under
// way). "" in a build without CUDA.
inline std::string EmptyCudaCache() {
#if GENIE_WITH_CUDA
  try {
    c10::cuda::CUDACachingAllocator::emptyCache();
  } catch (const std::exception& e) {
    return e.what();
  }
#endif
  return "";
}

}  // namespace genie::testing

#endif  // GENIE_TESTS_GPU_GPU_MEMORY_H_
