// File: genie/runtime/interpreter.h
// Executes captured graphs with ATen: the engine behind the in-process executor and the
// genie-node process. Buffers of a run live as at::Tensors; those the request keeps stay
// resident by handle (weights uploaded once, KV caches that never travel). Programs are
// prepared once per fingerprint: operator handles are resolved then, never per op per run.
//
//   runtime::Interpreter cpu;                                  // ATen on the CPU
//   absl::StatusOr<core::ExecuteResult> r = cpu.Execute(request);
//
// On CUDA ("cuda:N") a program runs on the interpreter's own streams: its independent
// branches (runtime::PlanStreams) each on a stream, joined by events; uploads go through
// pinned staging buffers with non-blocking copies, and the host waits only when it reads
// outputs back. A program that ran once eagerly and passes the capture rule below is
// captured into a CUDA graph on its second run and replayed from then on.
//
// CUDA-graph rule: a program is captured when (1) the device is CUDA and `cuda_graphs` is
// on, (2) it already ran once eagerly (warm-up: cuBLAS handles, lazy kernels), (3) none of
// its ops takes a generator (random ops), names a device other than the node's, or is one
// that synchronizes with the host or has data-dependent output sizes (item, nonzero,
// masked_select, unique, ...), (4) its warm-up run left every tensor on the GPU (no CPU
// fallback), and (5) capture itself succeeds. A replay requires the same uploads (same
// buffers and sizes, fixed by the fingerprint) and the same resident tensors at the same
// device addresses as at capture; otherwise the graph is dropped (recaptured at most
// kMaxRecaptures times). Resident inputs that moved and that no op of the program writes
// (tensors crossing the cut of an auto-dispatched step are new every step) are from then on
// read from a private copy that each replay refreshes first, and the program is recaptured
// at once; a moved input that an op writes makes the run eager. Kept buffers that the graph
// produced are cloned after a replay, since the next replay overwrites the graph's memory.
//
// On a node, uploads arrive in PinnedUploadArena (page-locked) or in a client's shared tensor
// pool (RegisterHostMemory) and are copied to the GPU from there without a staging copy;
// outputs with a destination (ExecuteRequest::output_to) are written there directly.
//
// This header does not include libtorch.
#ifndef GENIE_RUNTIME_INTERPRETER_H_
#define GENIE_RUNTIME_INTERPRETER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "genie/core/executor.h"

namespace genie::runtime {

struct InterpreterOptions {
  std::string device = "cpu";       // "cpu" or "cuda:N"
  int64_t memory_budget_bytes = 0;  // resident + uploaded bytes allowed; 0 = unlimited
  size_t max_cached_programs = 256;
  int cuda_streams = 4;         // streams per program on CUDA (1: everything on one stream)
  bool cuda_graphs = true;      // capture repeated static programs into CUDA graphs
  size_t max_cuda_graphs = 32;  // captured graphs kept per interpreter (each holds memory)
  // On the CPU: lanes for a program's independent branches (runtime/cpu_lanes.h), each on a
  // thread of its own; 1 runs every op on the calling thread.
  int cpu_lanes = 1;
  // cpu_lanes was chosen automatically: a program gets runtime::AutomaticLanesFor(cpu_lanes,
  // the intra-op threads of the thread it is prepared on) lanes.
  bool automatic_cpu_lanes = false;
};

// Process-wide counts, for tests and logs (all interpreters of the process together).
struct InterpreterCounters {
  int64_t graph_captures = 0;     // programs captured into a CUDA graph
  int64_t graph_replays = 0;      // runs served by replaying a graph
  int64_t graph_refusals = 0;     // programs the capture rule refused (static screen or capture)
  int64_t graph_drops = 0;        // graphs dropped because resident inputs moved
  int64_t multi_stream_runs = 0;  // eager or captured runs that used more than one stream
  int64_t cross_stream_waits = 0;
  int64_t cpu_multi_lane_runs = 0;  // CPU runs whose branches ran on several threads
};
InterpreterCounters GetInterpreterCounters();

class Interpreter final : public core::Executor {
 public:
  explicit Interpreter(InterpreterOptions options = {});
  ~Interpreter() override;

  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& request) override;
  // The same, except that what the run leaves behind (its intermediate tensors, residents
  // it released) is kept until ReleaseRetired() (or the next run) instead of freed as it
  // returns: a node answers first and frees after, since a few hundred device tensors take
  // tens of microseconds to free.
  absl::StatusOr<core::ExecuteResult> ExecuteRetiring(const core::ExecuteRequest& request);
  std::string Describe() const override;

  // Node to node on one host (runtime/cuda_peer.h), CUDA only. The device memory of
  // resident `handle`, for a CudaIpcExporter: the allocation's base, the buffer's offset in
  // it, the interpreter's main stream (the buffer is complete once the work queued there
  // is), and an owner that keeps the memory from being reused until it is dropped.
  struct DeviceBuffer {
    void* base = nullptr;
    uint64_t offset = 0;
    uint64_t nbytes = 0;
    void* stream = nullptr;  // cudaStream_t
    std::shared_ptr<const void> owner;
  };
  absl::StatusOr<DeviceBuffer> ResidentDeviceBuffer(uint64_t handle);
  // Makes `numel` elements of `dtype` resident under `handle`: allocates them on this
  // interpreter's device and calls fill(dst, nbytes, stream) on its main stream (for
  // example CudaIpcImporter::CopyIn), which must return once the bytes are there.
  absl::Status AdoptDeviceBuffer(
      uint64_t handle, core::DType dtype, int64_t numel,
      absl::FunctionRef<absl::Status(void* dst, uint64_t nbytes, void* stream)> fill);

  // CUDA only (FailedPrecondition elsewhere): page-locked host memory of at least `bytes`
  // for the next run's uploads, which then go to the device without a staging copy (a
  // node receives uploads straight into it). Valid until the next call, which first waits
  // until the copies of the last run that read from it are done. Null for 0 bytes.
  absl::StatusOr<char*> PinnedUploadArena(uint64_t bytes);

  // Page-locks host memory the node did not allocate (a client's shared tensor pool, once
  // per connection) so uploads are copied from it and outputs (ExecuteRequest::output_to)
  // into it by DMA, without staging; a run that touched it returns only after those copies.
  // No-op on the CPU. Unregister (after the last run that uses it) before it is unmapped.
  absl::Status RegisterHostMemory(void* base, uint64_t bytes);
  void UnregisterHostMemory(void* base);
  bool IsRegisteredHostMemory(const void* data, uint64_t nbytes) const;

  // Frees what the last ExecuteRetiring left behind.
  void ReleaseRetired();

  int64_t resident_bytes() const;
  size_t resident_buffers() const;
  size_t cached_programs() const;
  // Runs this interpreter served by replaying a CUDA graph (GetInterpreterCounters counts
  // the whole process's).
  int64_t graph_replays() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace genie::runtime

#endif  // GENIE_RUNTIME_INTERPRETER_H_
