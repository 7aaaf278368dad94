// File: genie/runtime/cpu_lanes.h
// Inter-op parallelism for the CPU interpreter: the independent branches of a graph (a VQA
// model's vision encoder and its language encoder) run on threads of their own within one
// node, joined where a node reads both (fusion). The CPU counterpart of the CUDA streams
// of runtime::PlanStreams: the same StreamPlan (lanes, events), but coarse lanes, since a
// hand-off between threads costs microseconds where one between streams costs nothing.
//
//   StreamPlan plan = runtime::PlanBranches(graph, /*max_lanes=*/2);  // once, at load
//   runtime::CpuLanes lanes(plan.num_lanes - 1);                      // worker threads
//   auto run = [&](core::NodeId n, int lane) -> absl::Status { ... };  // runs one node
//   absl::Status s = lanes.Run(plan, run);  // lane 0 on this thread, lane k on worker k-1
//
// Branches: every node is labelled with the uploaded inputs (BufferKind::kHostInput) it
// depends on, through any chain of dependencies. Nodes that depend on exactly one input form
// that input's branch; nodes that depend on none (a weight's transpose) join the branch of
// their first consumer; nodes that depend on several (a join) go to lane 0. The largest
// branches with at least `min_branch_nodes` nodes get lanes 1, 2, ... of their own (up to
// max_lanes - 1 of them); the rest run on lane 0. A graph with fewer than two such branches
// gets one lane: no threads, no events, capture order.
//
// Runs: lane 0 runs on the calling thread, lane k on worker thread k-1 (started with the
// CpuLanes, kept for every later run), each in plan.order; before a node a lane waits for the
// events of other lanes it reads from. A failing node stops its lane and every lane that
// waits for it; Run returns the first failure once all lanes stopped. Workers run in
// c10::InferenceMode with the calling thread's intra-op threads. One Run at a time.
#ifndef GENIE_RUNTIME_CPU_LANES_H_
#define GENIE_RUNTIME_CPU_LANES_H_

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "genie/core/graph.h"
#include "genie/runtime/stream_plan.h"

namespace genie::runtime {

StreamPlan PlanBranches(const core::Graph& graph, int max_lanes, int min_branch_nodes = 8);

// Lanes a node uses when not told: 2 where 2 or more cores are usable, each program's then
// chosen by AutomaticLanesFor.
int AutomaticCpuLanes();

// A program's lanes when they are chosen automatically: all `lanes` where 4 or more cores
// are usable; on fewer, no more than fit the cores with the threads each lane's
// ops run on (lanes x intra_op_threads <= cores); at least 1. Measured:
//   - 2-vCPU VM: the toy VQA (one intra-op thread) 1.1-1.3x faster on 2 lanes, one batch
//     at a time or dispatched; the 37 MB VQA (2 intra-op threads) no faster, at times
//     1.4x slower.
//   - 16-core host: the 37 MB VQA 1.26x faster on 2 lanes (each with libtorch's default
//     threads) than on 1.
int AutomaticLanesFor(int lanes, int intra_op_threads);

class CpuLanes {
 public:
  explicit CpuLanes(int workers);
  ~CpuLanes();
  CpuLanes(const CpuLanes&) = delete;
  CpuLanes& operator=(const CpuLanes&) = delete;

  int workers() const { return static_cast<int>(threads_.size()); }

  // run_node(core::NodeId, int lane) -> absl::Status, called for every node of `plan`, from
  // the thread of its lane. plan.num_lanes must be at most workers() + 1.
  template <class RunNode>
  absl::Status Run(const StreamPlan& plan, RunNode& run_node) {
    if (plan.num_lanes > workers() + 1) {
      return absl::InvalidArgumentError("plan has more lanes than CpuLanes has threads");
    }
    return RunErased(plan, &run_node, &CallRunNode<RunNode>);
  }

 private:
  using NodeFn = absl::Status (*)(void* ctx, core::NodeId node, int lane);
  template <class RunNode>
  static absl::Status CallRunNode(void* ctx, core::NodeId node, int lane) {
    return (*static_cast<RunNode*>(ctx))(node, lane);
  }

  absl::Status RunErased(const StreamPlan& plan, void* ctx, NodeFn fn);
  void RunLane(int lane);  // the nodes of `lane` in the current run
  void WorkerLoop(int lane);
  bool WaitEvent(uint32_t e);  // false: the run was aborted
  void RecordEvent(uint32_t e);
  void Abort(absl::Status s);

  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable work_cv_;   // workers wait for a run
  std::condition_variable event_cv_;  // lanes wait for events; the caller for the workers
  bool stop_ = false;
  // The current run (written by the caller under mu_ before the workers start).
  uint64_t epoch_ = 0;
  const StreamPlan* plan_ = nullptr;
  void* ctx_ = nullptr;
  NodeFn fn_ = nullptr;
  int intra_op_threads_ = 1;
  int lanes_running_ = 0;  // workers not done with the current run
  bool aborted_ = false;
  absl::Status status_;
  std::vector<uint64_t> event_epoch_;  // by event: the run that recorded it
};

}  // namespace genie::runtime

#endif  // GENIE_RUNTIME_CPU_LANES_H_
