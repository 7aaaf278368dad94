// File: genie/runtime/cpu_lanes.cc
// Branch planning and the threads that run a program's lanes (see cpu_lanes.h).
#include "genie/runtime/cpu_lanes.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <utility>
#include <vector>

#include "genie/core/cpu_cores.h"
#include "genie/runtime/intra_op_threads.h"

namespace genie::runtime {

int AutomaticCpuLanes() {
  static const int lanes = core::UsableCores() >= 2 ? 2 : 1;
  return lanes;
}

int AutomaticLanesFor(int lanes, int intra_op_threads) {
  static const int cores = core::UsableCores();
  if (cores >= 4) return std::max(1, lanes);
  return std::clamp(cores / std::max(1, intra_op_threads), 1, std::max(1, lanes));
}

namespace {

constexpr int32_t kNone = -1;   // depends on no uploaded input
constexpr int32_t kMixed = -2;  // depends on several

int32_t Combine(int32_t a, int32_t b) {
  if (a == kNone) return b;
  if (b == kNone || a == b) return a;
  return kMixed;
}

}  // namespace

StreamPlan PlanBranches(const core::Graph& graph, int max_lanes, int min_branch_nodes) {
  const size_t n = graph.nodes().size();
  const int lanes = std::clamp(max_lanes, 1, 16);
  StreamPlan one = PlanStreams(graph, 1);
  if (lanes == 1 || n == 0) return one;

  std::vector<core::NodeId> order = core::TopologicalOrder(graph);
  std::vector<std::vector<core::NodeId>> preds(n), succs(n);
  for (const core::Dependency& d : core::Dependencies(graph)) {
    if (d.from >= n || d.to >= n || d.from == d.to) continue;
    std::vector<core::NodeId>& p = preds[d.to];
    if (std::find(p.begin(), p.end(), d.from) != p.end()) continue;
    p.push_back(d.from);
    succs[d.from].push_back(d.to);
  }
  std::vector<size_t> position(n, 0);
  for (size_t i = 0; i < order.size(); ++i) position[order[i]] = i;

  // Which uploaded input each node depends on (forward), then inputs-free nodes take their
  // first consumer's (backward).
  std::vector<int32_t> label(n, kNone);
  for (core::NodeId id : order) {
    int32_t l = kNone;
    graph.node(id).ForEachInput([&](const core::TensorRef& r) {
      if (r.buffer < graph.buffers().size() &&
          graph.buffer(r.buffer).kind == core::BufferKind::kHostInput) {
        l = Combine(l, static_cast<int32_t>(r.buffer));
      }
    });
    for (core::NodeId p : preds[id]) l = Combine(l, label[p]);
    label[id] = l;
  }
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    if (label[*it] != kNone) continue;
    core::NodeId first = core::kNoNode;
    for (core::NodeId s : succs[*it]) {
      if (first == core::kNoNode || position[s] < position[first]) first = s;
    }
    if (first != core::kNoNode) label[*it] = label[first];
  }

  // The largest branches get lanes of their own.
  std::vector<std::pair<int64_t, int32_t>> sizes;  // (nodes, input)
  for (int32_t l : label) {
    if (l < 0) continue;
    auto it =
        std::find_if(sizes.begin(), sizes.end(), [&](const auto& s) { return s.second == l; });
    if (it == sizes.end()) {
      sizes.push_back({1, l});
    } else {
      ++it->first;
    }
  }
  std::sort(sizes.begin(), sizes.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  while (!sizes.empty() && sizes.back().first < min_branch_nodes) sizes.pop_back();
  if (sizes.size() < 2) return one;
  if (sizes.size() > static_cast<size_t>(lanes)) sizes.resize(lanes);

  StreamPlan plan;
  plan.order = std::move(order);
  plan.lane.assign(n, 0);
  plan.waits.assign(n, {});
  plan.record_after.assign(n, StreamPlan::kNoEvent);
  // The largest branch stays on lane 0 (the calling thread) with the joins.
  for (size_t id = 0; id < n; ++id) {
    for (size_t k = 1; k < sizes.size(); ++k) {
      if (label[id] == sizes[k].second) plan.lane[id] = static_cast<uint8_t>(k);
    }
  }
  plan.num_lanes = static_cast<int>(sizes.size());

  // Events where a node reads from another lane; a lane that already waited for a later
  // node of that lane does not wait again (lanes run their nodes in plan order).
  const int used = plan.num_lanes;
  std::vector<size_t> index_in_lane(n, 0), lane_size(used, 0);
  std::vector<size_t> covered(static_cast<size_t>(used) * used, 0);
  for (core::NodeId node : plan.order) {
    const int l = plan.lane[node];
    std::vector<core::NodeId> from = preds[node];
    // Latest first, so one wait covers the earlier nodes of the same lane.
    std::sort(from.begin(), from.end(),
              [&](core::NodeId a, core::NodeId b) { return position[a] > position[b]; });
    for (core::NodeId p : from) {
      const int pl = plan.lane[p];
      if (pl == l) continue;
      size_t& seen = covered[static_cast<size_t>(l) * used + pl];
      if (index_in_lane[p] < seen) continue;
      if (plan.record_after[p] == StreamPlan::kNoEvent) plan.record_after[p] = plan.num_events++;
      plan.waits[node].push_back(plan.record_after[p]);
      ++plan.cross_lane_waits;
      seen = index_in_lane[p] + 1;
    }
    index_in_lane[node] = lane_size[l]++;
  }
  return plan;
}

CpuLanes::CpuLanes(int workers) {
  for (int k = 0; k < workers; ++k) threads_.emplace_back([this, k] { WorkerLoop(k + 1); });
}

CpuLanes::~CpuLanes() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

absl::Status CpuLanes::RunErased(const StreamPlan& plan, void* ctx, NodeFn fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++epoch_;
    plan_ = &plan;
    ctx_ = ctx;
    fn_ = fn;
    intra_op_threads_ = IntraOpThreadsOfThisThread();
    lanes_running_ = plan.num_lanes - 1;
    aborted_ = false;
    status_ = absl::OkStatus();
    if (event_epoch_.size() < plan.num_events) event_epoch_.resize(plan.num_events, 0);
  }
  work_cv_.notify_all();
  RunLane(0);
  std::unique_lock<std::mutex> lock(mu_);
  event_cv_.wait(lock, [&] { return lanes_running_ == 0; });
  plan_ = nullptr;
  return status_;
}

void CpuLanes::WorkerLoop(int lane) {
  c10::InferenceMode inference;
  uint64_t seen = 0;
  int threads = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stop_ || epoch_ != seen; });
      if (stop_) return;
      seen = epoch_;
      if (plan_ == nullptr || lane >= plan_->num_lanes) continue;  // not a lane of this run
      if (threads != intra_op_threads_) {
        threads = intra_op_threads_;
        (void)SetIntraOpThreadsOfThisThread(threads);
      }
    }
    RunLane(lane);
    {
      std::lock_guard<std::mutex> lock(mu_);
      --lanes_running_;
    }
    event_cv_.notify_all();
  }
}

void CpuLanes::RunLane(int lane) {
  const StreamPlan& plan = *plan_;
  for (core::NodeId id : plan.order) {
    if (plan.lane[id] != lane) continue;
    for (uint32_t e : plan.waits[id]) {
      if (!WaitEvent(e)) return;
    }
    absl::Status s;
    try {
      s = fn_(ctx_, id, lane);
    } catch (const std::exception& e) {
      s = absl::InternalError(e.what());
    }
    if (!s.ok()) {
      Abort(std::move(s));
      return;
    }
    if (plan.record_after[id] != StreamPlan::kNoEvent) RecordEvent(plan.record_after[id]);
  }
}

bool CpuLanes::WaitEvent(uint32_t e) {
  std::unique_lock<std::mutex> lock(mu_);
  event_cv_.wait(lock, [&] { return aborted_ || event_epoch_[e] == epoch_; });
  return !aborted_;
}

void CpuLanes::RecordEvent(uint32_t e) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    event_epoch_[e] = epoch_;
  }
  event_cv_.notify_all();
}

void CpuLanes::Abort(absl::Status s) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!aborted_) status_ = std::move(s);
    aborted_ = true;
  }
  event_cv_.notify_all();
}

}  // namespace genie::runtime
