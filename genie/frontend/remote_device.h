// File: genie/frontend/remote_device.h
// The `remote_accelerator` device: linking //genie/frontend registers libtorch's
// PrivateUse1 backend under that name, and every ATen op on such a tensor is captured
// into a graph instead of computed. Graphs run when a result is needed (`.to(kCPU)`,
// `.item()`, printing, an op that cannot run remotely) on the installed executor.
//
//   #include <torch/torch.h>
//   #include "genie/frontend/remote_device.h"
//
//   torch::Device dev(genie::frontend::kDeviceName);      // "remote_accelerator"
//   model->to(dev);
//   genie::frontend::NameParameters(*model);               // provenance: dotted names
//   {
//     genie::frontend::Scope vision("vision");             // optional region names
//     auto y = model->forward(x.to(dev));                  // captured, not computed
//     std::cout << y.to(torch::kCPU);                      // runs the captured graph
//   }
//
// Without SetExecutor, graphs run in process on ATen/CPU (runtime::Interpreter).
// This header does not include libtorch.
#ifndef GENIE_FRONTEND_REMOTE_DEVICE_H_
#define GENIE_FRONTEND_REMOTE_DEVICE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "genie/core/executor.h"
#include "genie/core/graph.h"

namespace at {
class Tensor;
}  // namespace at
namespace torch::nn {
class Module;
}  // namespace torch::nn

namespace genie::frontend {

inline constexpr char kDeviceName[] = "remote_accelerator";

// Makes sure the backend is registered (it registers itself when the library loads;
// calling this keeps a static-library link from dropping it). Returns the device name.
const char* EnsureRegistered();

// The executor graphs run on. Not owned by a graph in flight: replace between runs.
void SetExecutor(std::shared_ptr<core::Executor> executor);
std::shared_ptr<core::Executor> GetExecutor();

// Records `module`'s parameters and buffers by dotted name ("encoder.0.fc.weight") as
// the provenance of their storages. Call after module->to(remote device).
void NameParameters(const torch::nn::Module& module, std::string_view prefix = "");

// Names the ops captured while it lives: nested scopes join with '.'.
class Scope {
 public:
  explicit Scope(std::string_view name);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;
};

// Asynchronous dispatch and join. Dispatch hands everything captured so far to the
// executor and returns at once (a worker runs graphs in order, so capture of the next
// step overlaps execution of this one); results stay resident. Reading a tensor waits
// only for the graphs it needs. Join waits for all of them (also those the executor
// accepted without waiting, core::Executor::Drain) and returns the first error since the
// last Join. Flush is Dispatch then Join.
absl::Status Dispatch();
absl::Status Join();
absl::Status Flush();

// Reads several remote tensors back in one run (one graph, one round trip) as contiguous
// CPU tensors, in order: `.to(kCPU)` for many. A client serving several generation streams
// reads all their logits this way, so the streams' decode steps are one graph (with
// scheduler::DecodeBatching, one batched step). Throws c10::Error naming the first
// argument that is not a remote_accelerator tensor.
std::vector<at::Tensor> ToCpu(const std::vector<at::Tensor>& tensors);

// Counters since the last ResetCaptureStats().
struct CaptureStats {
  int64_t ops_captured = 0;     // nodes recorded (views excluded)
  int64_t views = 0;            // view ops (no node, no data)
  int64_t cache_hits = 0;       // ops whose output metadata came from the capture cache
  int64_t ops_replayed = 0;     // of those, ops matched against the last step (no node built)
  int64_t ops_unboxed = 0;      // of those, replayed by a typed kernel (no argument stack)
  int64_t replay_divergences = 0;  // steps whose replay stopped at an op that differed
  int64_t cache_misses = 0;     // ops that ran shape inference (Meta, else CPU on zeros)
  int64_t cpu_shape_inferences = 0;  // misses with no C++ Meta kernel: inferred on CPU
  int64_t cpu_fallbacks = 0;    // ops run on the client CPU (no remote kernel)
  int64_t flushes = 0;          // graphs executed
  int64_t program_cache_hits = 0;  // flushes whose prepared program was reused
  int64_t nodes_executed = 0;
  int64_t nodes_eliminated = 0;  // dead nodes dropped before execution
  int64_t bytes_uploaded = 0;
  int64_t bytes_downloaded = 0;
};
CaptureStats GetCaptureStats();
void ResetCaptureStats();

// The capture cache (on by default); off means every op runs Meta inference.
void SetCaptureCacheEnabled(bool enabled);
void ClearCaptureCache();

// Step replay (on by default; needs the capture cache). The last graphs run (up to 16)
// are kept as templates: while a capture repeats the one it started like op for op (same
// ops, arguments, views, storages in the same roles, scopes), capture only makes each
// op's outputs and checks it against the template, and the graph run is the template's
// with this step's storages; dead-code elimination and the program fingerprint are
// reused too. A step that reads results back mid-way is several graphs, each replayed. At the
// first op that differs, the graph so far is rebuilt from the template and capture goes
// on as usual, so results never depend on it. Random ops always differ (each draws a
// seed), as does anything run on the client CPU.
void SetStepReplayEnabled(bool enabled);

// Uploads ahead. `.to(remote)` (or a copy_ that overwrites a whole remote storage) of data
// the executor wants at once (core::Executor::UploadsAhead: a TCP node, 1 MiB or more, no
// run outstanding) is sent before the call returns, straight from the caller's memory, as a
// run of no ops that keeps it on the node: no snapshot, and the bytes are there before the
// graph reading them is captured. Not for tensors that require grad, storages the graph
// under construction still reads, nor data that needs converting; those, and everything
// when the worker still has dispatched graphs queued, are snapshots as below. A send that
// fails leaves a snapshot, and the next read reports the failure.

// Copy-on-write upload snapshots (off by default). When on, and the executor lends no
// staging memory (every transport but Shm's pool), `.to(remote)` of 64 KiB or more of dense
// CPU memory from the default allocator takes a c10 copy-on-write clone instead of a copy:
// the caller's tensor is not copied unless it is written before the upload's run. Off
// because it changes the caller's storage, which an unmodified program can notice: a write
// through a raw pointer taken before `.to()` reaches the upload; the first data_ptr() of
// that tensor inside at::parallel_for trips c10's assert; two threads taking its data_ptr()
// at once race. Turn it on where the inputs are fresh tensors each step.
void SetCopyOnWriteSnapshots(bool enabled);

// Dispatches the graph under construction whenever it reaches `nodes` nodes (0, the
// default: only at reads and explicit Dispatch), so the executor starts on the first
// part of a long step while the rest is still being captured. Tensors that cross a cut
// stay resident on the executor; each part replays as its own template. With `growth`
// > 1 each next part of a step is that many times longer than the one before (a step
// ends where its results are read): a short first part starts the executor early, and
// the longer later parts cost fewer dispatches.
void SetAutoDispatch(int64_t nodes, int64_t growth = 1);
// The current setting: {nodes, growth}.
std::pair<int64_t, int64_t> GetAutoDispatch();

// Called with each graph just before it executes (after dead-code elimination), for
// tools and tests. Pass nullptr to remove.
using GraphObserver = std::function<void(const core::Graph& graph, const core::ExecuteRequest& request)>;
void SetGraphObserver(GraphObserver observer);

// The graph captured since the last run, as core::Graph::Dump prints it.
std::string DumpPendingGraph();

}  // namespace genie::frontend

#endif  // GENIE_FRONTEND_REMOTE_DEVICE_H_
