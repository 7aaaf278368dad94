// File: genie/runtime/stream_plan.h
// Splits a captured graph into independent branches ("lanes") so an executor can run each
// lane on its own CUDA stream, with events only where a node depends on another lane. It
// is computed once at program load from core::Dependencies (read-after-write,
// write-after-read, write-after-write on buffers) and core::TopologicalOrder. No libtorch.
//
//   runtime::StreamPlan plan = runtime::PlanStreams(graph, /*max_lanes=*/4);
//   for (core::NodeId n : plan.order) {
//     for (uint32_t e : plan.waits[n]) lane_stream(plan.lane[n]).wait(event[e]);
//     run(n) on lane_stream(plan.lane[n]);
//     if (plan.record_after[n] != StreamPlan::kNoEvent) event[plan.record_after[n]].record(...);
//   }
//
// Lane 0 is the executor's main stream. A node continues the lane of a predecessor whose
// lane it ends (a chain); a node whose predecessors' lanes have moved on, or that has none,
// starts on the least recently used lane. Waits are pruned: a lane that already waited for a
// later node of another lane does not wait again for an earlier one.
#ifndef GENIE_RUNTIME_STREAM_PLAN_H_
#define GENIE_RUNTIME_STREAM_PLAN_H_

#include <cstdint>
#include <vector>

#include "genie/core/graph.h"

namespace genie::runtime {

struct StreamPlan {
  static constexpr uint32_t kNoEvent = ~0u;

  int num_lanes = 1;                         // lanes actually used (1: one stream)
  std::vector<core::NodeId> order;           // execution order (topological)
  std::vector<uint8_t> lane;                 // by NodeId
  std::vector<std::vector<uint32_t>> waits;  // by NodeId: events to wait for before the node
  std::vector<uint32_t> record_after;        // by NodeId: event recorded after it, or kNoEvent
  uint32_t num_events = 0;
  int64_t cross_lane_waits = 0;              // total waits (what a run pays in events)

  bool multi_lane() const { return num_lanes > 1; }
};

// `max_lanes` in [1, 16]; 1 gives every node lane 0, no events, and capture order.
StreamPlan PlanStreams(const core::Graph& graph, int max_lanes);

}  // namespace genie::runtime

#endif  // GENIE_RUNTIME_STREAM_PLAN_H_
