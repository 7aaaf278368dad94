// File: genie/scheduler/placement.h
// Places one captured graph across several nodes by what it means, and splits it into
// per-node parts with explicit node-to-node transfers. No libtorch here.
//
// Assignment (per op):
//   - residency sticks: an op that touches a storage already resident on node k runs on k
//     (weights never move after the first run; a KV cache stays with its attention);
//   - otherwise by top-level module and modality: vision modules on node 0, language on
//     node 1, recommendation on node 2 (modulo the number of nodes), skipping a node whose
//     capacity the module's parameters would exceed;
//   - fusion, unknown and module-less ops go where their inputs are: the node that holds
//     the most bytes they read;
//   - every op that touches a KV cache buffer runs on one node.
// Split: runs of consecutive ops (capture order) on one node become parts; a run is cut
// where an op first reads what another node made, so the ops before it need nothing from
// other nodes and can run while those nodes work (PlacementExecutor runs parts of
// different nodes concurrently). A buffer a part needs whose current version lives on
// another node is sent there node to node (a Transfer, under a temporary handle) before the
// part runs; one needed by a later part on the same node stays resident there under a
// temporary handle. Host inputs and first-run parameters are uploaded by the client to the node that first reads them.
//
//   PlacementInput in{&graph, &semantics, request.keep, request.release, 2};
//   in.home = &homes;                    // handle -> node, from earlier runs
//   GENIE_ASSIGN_OR_RETURN(Placement p, Place(in));
//   for (const Part& part : p.parts) { ... run part.graph on part.node ... }
//   std::cout << p.Report(graph, semantics);
#ifndef GENIE_SCHEDULER_PLACEMENT_H_
#define GENIE_SCHEDULER_PLACEMENT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "genie/core/graph.h"
#include "genie/semantic/semantics.h"

namespace genie::scheduler {

// Handles Place() gives temporaries start here; the frontend's handles stay far below.
inline constexpr uint64_t kTemporaryHandleBase = uint64_t{1} << 62;

struct PlacementInput {
  const core::Graph* graph = nullptr;
  const semantic::GraphSemantics* semantics = nullptr;
  absl::Span<const core::BufferId> keep;   // core::ExecuteRequest::keep
  absl::Span<const uint64_t> release;      // core::ExecuteRequest::release
  int num_nodes = 1;
  // Bytes of parameters each node may hold (0 or missing: unlimited).
  std::vector<int64_t> capacity_bytes;
  // Where each resident storage lives (handle -> node), from earlier runs.
  const absl::flat_hash_map<uint64_t, int>* home = nullptr;
  // First temporary handle to use (>= kTemporaryHandleBase); Place uses a dense range.
  uint64_t first_temporary_handle = kTemporaryHandleBase;
};

// Bytes that move from node `from` to node `to` before part `before_part` runs.
struct Transfer {
  core::BufferId buffer = core::kNoBuffer;  // in the original graph
  int from = 0, to = 0;
  uint64_t source_handle = 0;  // resident on `from` under this handle
  uint64_t target_handle = 0;  // resident on `to` under this handle afterwards
  int64_t nbytes = 0;
  core::DType dtype = core::DType::kFloat32;
  int64_t numel = 0;
  size_t before_part = 0;
  bool release_source = false;  // `from` forgets source_handle once sent
};

// One node's share of the graph: a valid core::Graph in its own buffer numbering.
struct Part {
  int node = 0;
  core::Graph graph;
  // Original node ids, in order. The graph may end with one more node per kept buffer
  // whose final version is here under a temporary handle: an aten::clone that keeps it
  // under its own handle.
  std::vector<core::NodeId> ops;
  std::vector<core::BufferId> original;      // part buffer id -> original buffer id
  std::vector<core::BufferId> uploads;       // part buffers the client uploads
  std::vector<core::BufferId> keep;          // part buffers kept (original or temporary handle)
  std::vector<uint64_t> release;             // handles this node forgets after the part
  std::vector<core::BufferId> kv_cache;      // part buffers that are KV cache
};

struct Placement {
  std::vector<int> node_of_op;                 // per original NodeId
  std::vector<Part> parts;                     // in execution order
  std::vector<Transfer> transfers;             // sorted by before_part
  // graph.outputs()[i] is part output_part[i]'s output output_index[i].
  std::vector<size_t> output_part, output_index;
  // Original kept handles and the node that keeps each (the new homes).
  std::vector<std::pair<uint64_t, int>> kept;
  // Handles of request.release that live on a node with no part in this run: forget them
  // with that node's next run.
  std::vector<std::pair<uint64_t, int>> deferred_release;
  uint64_t next_temporary_handle = kTemporaryHandleBase;

  // Per top-level module: its node and op count; then parts and transfers.
  //   module vision (vision): node 0, 37 ops
  //   part 0 on node 0: 37 ops; part 1 on node 1: 41 ops
  //   transfer b12 node 0 -> node 1: 8192 B
  std::string Report(const core::Graph& graph, const semantic::GraphSemantics& semantics) const;
};

// Places `in.graph` on `in.num_nodes` nodes. Fails (FailedPrecondition) when a resident
// storage the graph reads has no known home, InvalidArgument on a malformed input.
absl::StatusOr<Placement> Place(const PlacementInput& in);

// The top-level module of a module path: "vision.blocks.0.attn" -> "vision".
std::string TopLevelModule(const std::string& module_path);

}  // namespace genie::scheduler

#endif  // GENIE_SCHEDULER_PLACEMENT_H_
