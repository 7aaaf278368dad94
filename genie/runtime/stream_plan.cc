// File: genie/runtime/stream_plan.cc
// Lane assignment for multi-stream execution (see stream_plan.h).
#include "genie/runtime/stream_plan.h"

#include <algorithm>

namespace genie::runtime {

StreamPlan PlanStreams(const core::Graph& graph, int max_lanes) {
  const size_t n = graph.nodes().size();
  const int lanes = std::clamp(max_lanes, 1, 16);
  StreamPlan plan;
  plan.lane.assign(n, 0);
  plan.waits.assign(n, {});
  plan.record_after.assign(n, StreamPlan::kNoEvent);
  if (lanes == 1 || n == 0) {
    // Capture order already respects every dependency: no analysis needed on one lane.
    plan.order.resize(n);
    for (size_t i = 0; i < n; ++i) plan.order[i] = static_cast<core::NodeId>(i);
    return plan;
  }
  plan.order = core::TopologicalOrder(graph);

  // Distinct predecessors per node.
  std::vector<std::vector<core::NodeId>> preds(n);
  for (const core::Dependency& d : core::Dependencies(graph)) {
    if (d.from >= n || d.to >= n || d.from == d.to) continue;
    std::vector<core::NodeId>& p = preds[d.to];
    if (std::find(p.begin(), p.end(), d.from) == p.end()) p.push_back(d.from);
  }
  std::vector<size_t> position(n, 0);  // index in plan.order
  for (size_t i = 0; i < plan.order.size(); ++i) position[plan.order[i]] = i;

  std::vector<core::NodeId> tail(lanes, core::kNoNode);
  std::vector<int64_t> last_use(lanes, -1);
  std::vector<size_t> index_in_lane(n, 0);
  std::vector<size_t> lane_size(lanes, 0);
  // covered[a * lanes + b]: lane a has (by waiting or by order) seen the first k nodes of lane b.
  std::vector<size_t> covered(static_cast<size_t>(lanes) * lanes, 0);
  int used = 1;

  for (size_t step = 0; step < plan.order.size(); ++step) {
    const core::NodeId node = plan.order[step];
    int chosen = -1;
    size_t chosen_pos = 0;
    for (core::NodeId p : preds[node]) {
      const int l = plan.lane[p];
      if (tail[l] == p && (chosen < 0 || position[p] > chosen_pos)) {
        chosen = l;
        chosen_pos = position[p];
      }
    }
    if (chosen < 0) {
      chosen = 0;
      for (int l = 1; l < lanes; ++l) {
        if (last_use[l] < last_use[chosen]) chosen = l;
      }
    }
    plan.lane[node] = static_cast<uint8_t>(chosen);
    used = std::max(used, chosen + 1);
    for (core::NodeId p : preds[node]) {
      const int pl = plan.lane[p];
      if (pl == chosen) continue;
      size_t& seen = covered[static_cast<size_t>(chosen) * lanes + pl];
      if (index_in_lane[p] < seen) continue;
      if (plan.record_after[p] == StreamPlan::kNoEvent) plan.record_after[p] = plan.num_events++;
      plan.waits[node].push_back(plan.record_after[p]);
      ++plan.cross_lane_waits;
      seen = index_in_lane[p] + 1;
    }
    index_in_lane[node] = lane_size[chosen]++;
    tail[chosen] = node;
    last_use[chosen] = static_cast<int64_t>(step);
  }
  plan.num_lanes = used;
  return plan;
}

}  // namespace genie::runtime
