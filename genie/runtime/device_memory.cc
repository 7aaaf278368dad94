// File: genie/runtime/device_memory.cc
// QueryDeviceMemory (device_memory.h): the caching allocator's counts and cudaMemGetInfo on
// CUDA builds; no GPU elsewhere.
#include "genie/runtime/device_memory.h"

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

#if GENIE_WITH_CUDA
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>
#endif

namespace genie::runtime {

absl::StatusOr<DeviceMemory> QueryDeviceMemory(absl::string_view device) {
  if (device == "cpu") return DeviceMemory{};
  int index = 0;
  const bool cuda = device == "cuda" || (absl::StartsWith(device, "cuda:") &&
                                         absl::SimpleAtoi(device.substr(5), &index) && index >= 0);
  if (!cuda) {
    return absl::InvalidArgumentError(
        absl::StrCat("device '", device, "' is neither cpu nor cuda:N"));
  }
#if GENIE_WITH_CUDA
  DeviceMemory m;
  m.gpu = true;
  // Before the node's first CUDA allocation the caching allocator may not be set up yet
  // (it then refuses to report): it holds nothing.
  try {
    const c10::CachingDeviceAllocator::DeviceStats stats =
        c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
    constexpr size_t kAll = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    m.allocated_bytes = stats.allocated_bytes[kAll].current;
    m.reserved_bytes = stats.reserved_bytes[kAll].current;
  } catch (const c10::Error&) {
    m.allocated_bytes = m.reserved_bytes = 0;
  }
  int previous = 0;
  cudaError_t e = cudaGetDevice(&previous);
  if (e == cudaSuccess) e = cudaSetDevice(index);
  size_t free_bytes = 0, total_bytes = 0;
  if (e == cudaSuccess) e = cudaMemGetInfo(&free_bytes, &total_bytes);
  (void)cudaSetDevice(previous);
  if (e != cudaSuccess) {
    return absl::UnavailableError(
        absl::StrCat("cannot read the memory of ", device, ": ", cudaGetErrorString(e)));
  }
  m.free_bytes = static_cast<int64_t>(free_bytes);
  m.total_bytes = static_cast<int64_t>(total_bytes);
  return m;
#else
  return absl::InvalidArgumentError(absl::StrCat(
      "device '", device, "' needs a CUDA build of genie-node (bazel build --config=cuda)"));
#endif
}

}  // namespace genie::runtime
