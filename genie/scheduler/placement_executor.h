// File: genie/scheduler/placement_executor.h
// Runs each graph across several nodes: Place() splits it into per-node parts, each part
// runs through that node's ResidencyExecutor (so weights, KV cache and activations follow
// the ship policy as on one node), and buffers that cross nodes go node to node through
// core::PeerSender before the part that reads them. Residency sticks: the node that keeps
// a storage is its home for later runs.
//
// Concurrency: every node has a lane (one thread, a queue of tasks: its parts and the
// transfers it sends). A lane runs its tasks in submission order, except that a task of a
// later run may go ahead of waiting tasks of earlier runs that touch none of the node
// state it touches (no handle one reads and the other keeps or releases): reading batch
// i's answers does not wait behind batch i+1's fusion. A task waits only for the tasks of
// other lanes it needs (a part for the transfers that bring its inputs, a transfer for the
// transfer that brought its source). So parts on different nodes that do
// not depend on each other run at the same time (VQA: vision on node 0 while language runs
// on node 1), a part starts as soon as its inputs have arrived, and successive runs
// pipeline: Submit() returns once a run is placed and queued, so run i+1's vision part
// runs on node 0 while run i's fusion part runs on node 1. At most `pipeline_depth` runs
// are in flight; each has its own range of temporary handles. A run that sends a kept
// storage to another node under its own handle is queued only once nothing else is in
// flight (the receiving node's inbox is keyed by handle).
//
//   PlacementExecutor exec({node0, node1}, ShipPolicy{});
//   exec.Execute(request, semantics);                 // Submit + Wait
//
//   // Pipelined: keep two runs in flight (each request must live until its Wait).
//   auto t0 = exec.Submit(r0, s);  auto t1 = exec.Submit(r1, s);
//   exec.Wait(*std::move(t0));     auto t2 = exec.Submit(r2, s);  exec.Wait(*std::move(t1)); ...
//   exec.stats().node_to_node_bytes;   // never part of the client's traffic
//   exec.stats().max_parts_in_flight;  // 2: parts of different nodes overlapped
//
// A failed run fails the runs submitted while it was in flight (they were placed on what
// it would have left on the nodes); their errors name the failed run. Later runs start
// clean, under a fresh range of temporary handles.
#ifndef GENIE_SCHEDULER_PLACEMENT_EXECUTOR_H_
#define GENIE_SCHEDULER_PLACEMENT_EXECUTOR_H_

#include <array>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "genie/core/executor.h"
#include "genie/scheduler/placement.h"
#include "genie/scheduler/residency_executor.h"
#include "genie/semantic/semantics.h"

namespace genie::scheduler {

// Ops of one top-level module per node, over all runs so far.
struct ModulePlacement {
  std::string module;
  semantic::ModalityKind modality = semantic::ModalityKind::kUnknown;
  std::vector<int64_t> ops_per_node;
};

struct PlacementStats {
  int num_nodes = 1;
  int64_t runs = 0;
  int64_t parts = 0;
  int64_t transfers = 0;           // node-to-node sends
  int64_t node_to_node_bytes = 0;  // bytes those sends moved (not client traffic)
  // Concurrency seen by the lanes: the most parts executing at one time (on different
  // nodes), and the parts that started while a part of another run was executing on
  // another node (cross-run pipelining).
  int64_t max_parts_in_flight = 0;
  int64_t pipelined_parts = 0;
  std::vector<ModulePlacement> modules;
  std::string last_report;  // Placement::Report of the last run
  // The node most of `module`'s ops ran on, or -1 when it never ran.
  int NodeOf(const std::string& module) const;
};

class PlacementExecutor {
 public:
  class PlacedRun;  // one submitted run (placement_executor.cc)
  // A submitted run; Wait on it exactly once.
  class Ticket {
   public:
    Ticket() = default;
    bool valid() const { return run_ != nullptr; }

   private:
    friend class PlacementExecutor;
    explicit Ticket(std::shared_ptr<PlacedRun> run) : run_(std::move(run)) {}
    std::shared_ptr<PlacedRun> run_;
  };

  PlacementExecutor(std::vector<std::shared_ptr<core::Executor>> nodes, ShipPolicy policy,
                    std::vector<int64_t> capacity_bytes = {}, int pipeline_depth = 2);
  // Finishes the runs in flight, then stops the lanes.
  ~PlacementExecutor();
  PlacementExecutor(const PlacementExecutor&) = delete;
  PlacementExecutor& operator=(const PlacementExecutor&) = delete;

  // Places `request` and queues its parts and transfers on the nodes' lanes; returns at
  // once unless `pipeline_depth` runs are in flight (then it waits for the oldest to
  // finish). `request` (its graph and upload bytes) must stay valid until Wait returns.
  // Submit and Wait may be called from different threads; Submits are serialized.
  absl::StatusOr<Ticket> Submit(const core::ExecuteRequest& request,
                                const semantic::GraphSemantics& semantics);
  // Waits for a submitted run and returns its outputs (or the first error of its parts).
  absl::StatusOr<core::ExecuteResult> Wait(Ticket ticket);
  // Whether a submitted run is done (Wait will not block).
  bool Finished(const Ticket& ticket) const;
  // Submit, then Wait.
  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& request,
                                              const semantic::GraphSemantics& semantics);

  std::string Describe() const;
  // Waits for the nodes' runs accepted without waiting (core::Executor::Drain); the first
  // error.
  absl::Status Drain();
  DataTraffic traffic() const;  // client <-> nodes, summed over nodes
  PlacementStats stats() const;
  int pipeline_depth() const { return depth_; }

 private:
  struct Task {
    std::shared_ptr<PlacedRun> run;
    bool transfer = false;
    size_t index = 0;  // part or transfer index in the run's placement
    // Node state it touches, by handle (sorted): resident buffers it reads; buffers it
    // keeps, releases or (a transfer) forgets once sent.
    std::vector<uint64_t> reads, writes;
  };
  struct Lane {
    std::deque<Task> queue;
    std::thread thread;
  };

  void LaneLoop(int node);
  bool Ready(const Task& task) const;                 // under mu_
  // The first task of `lane` that may start now (under mu_), or lane.queue.end().
  std::deque<Task>::iterator Runnable(Lane& lane);
  absl::Status RunTask(const Task& task, int node, int64_t* sent);  // without mu_
  void Finish(PlacedRun& run);                                       // under mu_
  void Fail(PlacedRun& run, absl::Status why);                       // under mu_
  void Poison(PlacedRun& run);                                       // under mu_
  absl::StatusOr<core::ExecuteResult> Collect(PlacedRun& run);

  std::vector<std::shared_ptr<core::Executor>> nodes_;
  std::vector<std::unique_ptr<ResidencyExecutor>> residency_;  // touched by its lane only
  std::vector<int64_t> capacity_bytes_;
  const int depth_;

  // Placement state, under submit_mu_: homes and deferred releases are updated when a run
  // is placed, so that the next run is placed on what this one will leave behind.
  std::mutex submit_mu_;
  absl::flat_hash_map<uint64_t, int> home_;             // handle -> node
  std::vector<std::vector<uint64_t>> pending_release_;  // per node
  // A run's temporary handles start at range_base_ + (r << 32) for a range r in [0,
  // depth_) no other run in flight uses (range_busy_); a failed run moves range_base_ past
  // every range, so later runs cannot meet what it left behind on a node or in a node's
  // peer inbox. Each executor starts at a random range so that clients sharing nodes do
  // not meet each other's temporaries in a peer inbox.
  uint64_t range_base_;
  uint64_t next_seq_ = 1;

  mutable std::mutex mu_;  // lanes, runs in flight, failures, stats
  std::condition_variable cv_;
  std::vector<Lane> lanes_;
  bool stopping_ = false;
  int in_flight_ = 0;
  uint64_t last_submitted_ = 0;
  uint64_t poisoned_from_ = 0, poisoned_to_ = 0;  // runs failed by an earlier failure
  absl::Status poison_;
  std::vector<uint64_t> executing_;  // per node: run seq of the part executing, 0: none
  std::vector<char> range_busy_;     // per range of temporaries: used by a run in flight
  bool range_moved_ = false;         // a failure asks Submit to move range_base_
  uint64_t failures_ = 0;
  // Homes to restore (seq of the failed run, handle -> previous node or none).
  std::vector<std::pair<uint64_t, std::vector<std::pair<uint64_t, std::optional<int>>>>> rollbacks_;
  PlacementStats stats_;
  std::vector<std::array<int64_t, 5>> modality_votes_;  // per stats_.modules entry
};

}  // namespace genie::scheduler

#endif  // GENIE_SCHEDULER_PLACEMENT_EXECUTOR_H_
