// File: genie/runtime/device_memory.h
// What a node's GPU holds, for the node's answer to genie-smi (plan::NodeStatusMessage):
// the bytes libtorch's CUDA caching allocator has handed to tensors and has reserved from
// the driver, and the driver's free and total memory of the whole device.
//
//   absl::StatusOr<runtime::DeviceMemory> m = runtime::QueryDeviceMemory("cuda:0");
//   if (m.ok() && m->gpu) std::printf("%lld of %lld bytes free\n", m->free_bytes, ...);
//
// On "cpu", and in a build without CUDA (no --config=cuda), there is no GPU: `gpu` is false
// and every size is zero. This header does not include libtorch.
#ifndef GENIE_RUNTIME_DEVICE_MEMORY_H_
#define GENIE_RUNTIME_DEVICE_MEMORY_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace genie::runtime {

struct DeviceMemory {
  bool gpu = false;
  int64_t allocated_bytes = 0;  // held by tensors (caching allocator, all pools)
  int64_t reserved_bytes = 0;   // reserved from the driver by the caching allocator
  int64_t free_bytes = 0;       // cudaMemGetInfo: the device as a whole, other processes too
  int64_t total_bytes = 0;
};

// The memory of `device` ("cpu", "cuda", "cuda:N"). InvalidArgument for a device name this
// build does not run on; the CUDA error when the driver cannot be asked.
absl::StatusOr<DeviceMemory> QueryDeviceMemory(absl::string_view device);

}  // namespace genie::runtime

#endif  // GENIE_RUNTIME_DEVICE_MEMORY_H_
