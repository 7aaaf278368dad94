// File: genie/scheduler/placement_executor.h
// Runs each graph across several nodes: Place() splits it into per-node parts, each part
// runs through that node's ResidencyExecutor (so weights, KV cache and activations follow
// the ship policy as on one node), and buffers that cross nodes go node to node through
// core::PeerSender before the part that reads them. Residency sticks: the node that keeps
// a storage is its home for later runs.
//
//   PlacementExecutor exec({node0, node1}, ShipPolicy{});
//   exec.Execute(request, semantics);
//   exec.stats().node_to_node_bytes;   // never part of the client's traffic
#ifndef GENIE_SCHEDULER_PLACEMENT_EXECUTOR_H_
#define GENIE_SCHEDULER_PLACEMENT_EXECUTOR_H_

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
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
  std::vector<ModulePlacement> modules;
  std::string last_report;  // Placement::Report of the last run
  // The node most of `module`'s ops ran on, or -1 when it never ran.
  int NodeOf(const std::string& module) const;
};

class PlacementExecutor {
 public:
  PlacementExecutor(std::vector<std::shared_ptr<core::Executor>> nodes, ShipPolicy policy,
                    std::vector<int64_t> capacity_bytes = {});

  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& request,
                                              const semantic::GraphSemantics& semantics);
  std::string Describe() const;
  DataTraffic traffic() const;  // client <-> nodes, summed over nodes
  PlacementStats stats() const;

 private:
  absl::StatusOr<core::ExecuteResult> Run(const core::ExecuteRequest& request,
                                          const semantic::GraphSemantics& semantics);

  std::vector<std::shared_ptr<core::Executor>> nodes_;
  std::vector<std::unique_ptr<ResidencyExecutor>> residency_;
  std::vector<int64_t> capacity_bytes_;
  absl::flat_hash_map<uint64_t, int> home_;                 // handle -> node
  std::vector<std::vector<uint64_t>> pending_release_;      // per node
  // Temporaries of a run are all released by its end, so runs reuse one range; a failed
  // run may leave some behind (on a node, or in a node's peer inbox), so the next run
  // moves to a fresh range that cannot meet them. Each executor starts at a random range
  // so that clients sharing nodes do not meet each other's temporaries in a peer inbox.
  uint64_t temporary_base_;
  mutable std::mutex mu_;                                   // guards stats_
  PlacementStats stats_;
  std::vector<std::array<int64_t, 5>> modality_votes_;  // per stats_.modules entry
};

}  // namespace genie::scheduler

#endif  // GENIE_SCHEDULER_PLACEMENT_EXECUTOR_H_
