// File: genie/scheduler/placement_executor.cc
// Placement across nodes, and the lanes that run the parts: one thread per node, tasks in
// submission order, cross-lane dependencies only where data moves between nodes.
#include "genie/scheduler/placement_executor.h"

#include <algorithm>
#include <optional>
#include <random>
#include <tuple>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "genie/core/status.h"

namespace genie::scheduler {

int PlacementStats::NodeOf(const std::string& module) const {
  for (const ModulePlacement& m : modules) {
    if (m.module != module) continue;
    int best = -1;
    for (size_t k = 0; k < m.ops_per_node.size(); ++k) {
      if (m.ops_per_node[k] > 0 && (best < 0 || m.ops_per_node[k] > m.ops_per_node[best])) {
        best = static_cast<int>(k);
      }
    }
    return best;
  }
  return -1;
}

// One submitted run: its placement, the per-part requests, and progress (under mu_).
class PlacementExecutor::PlacedRun {
 public:
  uint64_t seq = 0;
  int range = 0;  // its temporaries: range_base_ + range << 32
  Placement placement;
  std::vector<core::ExecuteRequest> subs;                  // per part
  std::vector<semantic::GraphSemantics> sub_semantics;    // per part
  std::vector<core::ExecuteResult> results;                // per part
  std::vector<std::vector<size_t>> part_deps;             // transfers each part waits for
  std::vector<int> transfer_dep;                          // transfer it waits for, or -1
  std::vector<char> part_done, transfer_done;
  size_t remaining = 0;
  bool finished = false;
  absl::Status status;
  int64_t sent_bytes = 0, sends = 0;
  // For stats and for undoing homes when the run fails.
  std::string report;
  std::vector<std::string> top_of_op;
  std::vector<semantic::ModalityKind> modality_of_op;
  std::vector<std::pair<uint64_t, std::optional<int>>> previous_homes;
};

PlacementExecutor::PlacementExecutor(std::vector<std::shared_ptr<core::Executor>> nodes,
                                     ShipPolicy policy, std::vector<int64_t> capacity_bytes,
                                     int pipeline_depth)
    : nodes_(std::move(nodes)),
      capacity_bytes_(std::move(capacity_bytes)),
      depth_(std::max(1, pipeline_depth)),
      pending_release_(nodes_.size()),
      lanes_(nodes_.size()),
      executing_(nodes_.size(), 0),
      range_busy_(static_cast<size_t>(depth_), 0) {
  std::random_device entropy;
  const uint64_t range = (uint64_t{entropy()} << 8 ^ entropy()) & ((uint64_t{1} << 28) - 1);
  range_base_ = kTemporaryHandleBase + (range << 32);
  for (const auto& n : nodes_) residency_.push_back(std::make_unique<ResidencyExecutor>(n, policy));
  stats_.num_nodes = static_cast<int>(nodes_.size());
  for (size_t k = 0; k < lanes_.size(); ++k) {
    lanes_[k].thread = std::thread([this, k] { LaneLoop(static_cast<int>(k)); });
  }
}

PlacementExecutor::~PlacementExecutor() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return in_flight_ == 0; });
    stopping_ = true;
  }
  cv_.notify_all();
  for (Lane& lane : lanes_) lane.thread.join();
}

absl::Status PlacementExecutor::Drain() {
  absl::Status first;
  for (const std::shared_ptr<core::Executor>& n : nodes_) {
    absl::Status s = n->Drain();
    if (first.ok()) first = s;
  }
  return first;
}

std::string PlacementExecutor::Describe() const {
  std::vector<std::string> names;
  for (const auto& n : nodes_) names.push_back(n->Describe());
  return absl::StrCat(nodes_.size(), " nodes placed by modality, pipelined ", depth_,
                      " runs deep: ", absl::StrJoin(names, "; "));
}

DataTraffic PlacementExecutor::traffic() const {
  DataTraffic total;
  for (const auto& r : residency_) {
    const DataTraffic t = r->traffic();
    for (int c = 0; c < 3; ++c) {
      total.up[c] += t.up[c];
      total.down[c] += t.down[c];
    }
  }
  return total;
}

PlacementStats PlacementExecutor::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

absl::StatusOr<core::ExecuteResult> PlacementExecutor::Execute(
    const core::ExecuteRequest& request, const semantic::GraphSemantics& semantics) {
  GENIE_ASSIGN_OR_RETURN(Ticket ticket, Submit(request, semantics));
  return Wait(std::move(ticket));
}

absl::StatusOr<PlacementExecutor::Ticket> PlacementExecutor::Submit(
    const core::ExecuteRequest& request, const semantic::GraphSemantics& semantics) {
  if (request.graph == nullptr) return absl::InvalidArgumentError("execute request without a graph");
  const core::Graph& graph = *request.graph;
  std::lock_guard<std::mutex> submit_lock(submit_mu_);
  uint64_t failures_seen = 0;
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return in_flight_ < depth_; });
    if (range_moved_) {
      // A run failed: later runs use ranges no run in flight used...
      range_base_ += static_cast<uint64_t>(depth_) << 32;
      range_moved_ = false;
      // ...and are placed on what the nodes really hold: undo the failed runs' homes,
      // latest first.
      std::sort(rollbacks_.begin(), rollbacks_.end(),
                [](const auto& a, const auto& b) { return a.first > b.first; });
      for (const auto& [seq, homes] : rollbacks_) {
        for (auto it = homes.rbegin(); it != homes.rend(); ++it) {
          if (it->second.has_value()) {
            home_[it->first] = *it->second;
          } else {
            home_.erase(it->first);
          }
        }
      }
      rollbacks_.clear();
    }
    failures_seen = failures_;
  }
  auto run = std::make_shared<PlacedRun>();
  run->seq = next_seq_;  // taken (++next_seq_) only once the run is queued
  {
    // A range no run in flight uses (runs may finish out of submission order).
    std::lock_guard<std::mutex> lock(mu_);
    while (range_busy_[run->range]) ++run->range;
  }
  PlacementInput in;
  in.graph = &graph;
  in.semantics = &semantics;
  in.keep = request.keep;
  in.release = request.release;
  in.num_nodes = static_cast<int>(nodes_.size());
  in.capacity_bytes = capacity_bytes_;
  in.home = &home_;
  in.first_temporary_handle = range_base_ + (static_cast<uint64_t>(run->range) << 32);
  GENIE_ASSIGN_OR_RETURN(run->placement, Place(in));
  Placement& placement = run->placement;

  absl::flat_hash_map<core::BufferId, const core::Upload*> upload_of;
  for (const core::Upload& u : request.uploads) upload_of[u.buffer] = &u;
  const size_t n_parts = placement.parts.size();
  run->subs.resize(n_parts);
  run->sub_semantics.resize(n_parts);
  run->results.resize(n_parts);
  run->part_deps.resize(n_parts);
  run->part_done.assign(n_parts, 0);
  for (size_t p = 0; p < n_parts; ++p) {
    const Part& part = placement.parts[p];
    core::ExecuteRequest& sub = run->subs[p];
    sub.graph = &part.graph;
    sub.fingerprint = absl::Hash<std::tuple<uint64_t, int, uint64_t>>{}(
        std::make_tuple(part.graph.Fingerprint(), part.node, uint64_t{0x91ACE}));
    for (core::BufferId local : part.uploads) {
      auto it = upload_of.find(part.original[local]);
      if (it == upload_of.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "buffer b", part.original[local], " must be uploaded but the request has no bytes for it"));
      }
      sub.uploads.push_back(core::Upload{local, it->second->bytes});
    }
    std::sort(sub.uploads.begin(), sub.uploads.end(),
              [](const core::Upload& a, const core::Upload& b) { return a.buffer < b.buffer; });
    sub.keep = part.keep;
    sub.release = part.release;
    semantic::GraphSemantics& ss = run->sub_semantics[p];
    ss.workload = semantics.workload;
    ss.phase_of_graph = semantics.phase_of_graph;
    ss.kv_cache = part.kv_cache;
    for (core::NodeId op : part.ops) {
      ss.module.push_back(op < semantics.module.size() ? semantics.module[op] : "");
      ss.modality.push_back(op < semantics.modality.size() ? semantics.modality[op]
                                                          : semantic::ModalityKind::kUnknown);
    }
    // Copies placement added to keep a buffer under its own handle: no module of their own.
    ss.module.resize(part.graph.nodes().size());
    ss.modality.resize(part.graph.nodes().size(), semantic::ModalityKind::kUnknown);
  }
  // Checks that cannot fail later, before anything is queued.
  for (const Transfer& t : placement.transfers) {
    if (dynamic_cast<core::PeerSender*>(nodes_[t.from].get()) == nullptr ||
        dynamic_cast<core::PeerSender*>(nodes_[t.to].get()) == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          "placement sends b", t.buffer, " from ", nodes_[t.from]->Describe(), " to ",
          nodes_[t.to]->Describe(), ", but these nodes cannot send to each other; use remote "
          "nodes (client::RemoteExecutor) or drop ModalityPlacement"));
    }
  }
  run->transfer_dep.assign(placement.transfers.size(), -1);
  run->transfer_done.assign(placement.transfers.size(), 0);
  for (size_t t = 0; t < placement.transfers.size(); ++t) {
    const Transfer& tr = placement.transfers[t];
    run->part_deps[tr.before_part].push_back(t);
    for (size_t u = 0; u < t; ++u) {
      const Transfer& earlier = placement.transfers[u];
      if (earlier.to == tr.from && earlier.target_handle == tr.source_handle) {
        run->transfer_dep[t] = static_cast<int>(u);
      }
    }
  }
  // Deferred releases ride with the node's next part, in this run or a later one.
  std::vector<bool> seen(nodes_.size(), false);
  for (size_t p = 0; p < n_parts; ++p) {
    const int node = placement.parts[p].node;
    if (seen[node]) continue;
    seen[node] = true;
    std::vector<uint64_t>& pending = pending_release_[node];
    run->subs[p].release.insert(run->subs[p].release.end(), pending.begin(), pending.end());
    pending.clear();
  }
  for (const auto& [h, node] : placement.deferred_release) pending_release_[node].push_back(h);
  for (const auto& [h, node] : placement.kept) {
    auto it = home_.find(h);
    run->previous_homes.push_back(
        {h, it == home_.end() ? std::nullopt : std::optional<int>(it->second)});
    home_[h] = node;
  }
  for (uint64_t h : request.release) {
    auto it = home_.find(h);
    if (it == home_.end()) continue;
    run->previous_homes.push_back({h, it->second});
    home_.erase(it);
  }
  run->report = placement.Report(graph, semantics);
  run->top_of_op.resize(placement.node_of_op.size());
  run->modality_of_op.resize(placement.node_of_op.size(), semantic::ModalityKind::kUnknown);
  for (size_t op = 0; op < placement.node_of_op.size(); ++op) {
    if (op < semantics.module.size()) run->top_of_op[op] = TopLevelModule(semantics.module[op]);
    if (op < semantics.modality.size()) run->modality_of_op[op] = semantics.modality[op];
  }

  // A transfer into a storage's own handle (a kept buffer crossing nodes) lands in the
  // receiving node's inbox, where any later run there would take it: such a run waits
  // until nothing else is in flight. Transfers under temporary handles (a range per run)
  // never meet another run's.
  bool barrier = false;
  for (const Transfer& t : placement.transfers) barrier |= t.target_handle < kTemporaryHandleBase;
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (barrier) cv_.wait(lock, [&] { return in_flight_ == 0; });
    run->remaining = n_parts + placement.transfers.size();
    size_t next_transfer = 0;
    for (size_t p = 0; p < n_parts; ++p) {
      for (; next_transfer < placement.transfers.size() &&
             placement.transfers[next_transfer].before_part == p;
           ++next_transfer) {
        const Transfer& t = placement.transfers[next_transfer];
        Task task{run, true, next_transfer, {t.source_handle}, {}};
        if (t.release_source) task.writes.push_back(t.source_handle);
        lanes_[t.from].queue.push_back(std::move(task));
      }
      const Part& part = placement.parts[p];
      Task task{run, false, p, {}, run->subs[p].release};
      for (const core::Buffer& b : part.graph.buffers()) {
        if (b.kind == core::BufferKind::kResident) task.reads.push_back(b.handle);
      }
      for (core::BufferId k : part.keep) task.writes.push_back(part.graph.buffer(k).handle);
      std::sort(task.reads.begin(), task.reads.end());
      std::sort(task.writes.begin(), task.writes.end());
      lanes_[part.node].queue.push_back(std::move(task));
    }
    ++in_flight_;
    ++next_seq_;
    range_busy_[run->range] = 1;
    last_submitted_ = run->seq;
    // A run failed while this one was being placed: it may have been placed on what that
    // run would have left behind.
    if (failures_ != failures_seen) Poison(*run);
  }
  cv_.notify_all();
  return Ticket(std::move(run));
}

bool PlacementExecutor::Ready(const Task& task) const {
  const PlacedRun& run = *task.run;
  if (!run.status.ok()) return true;  // skipped
  if (task.transfer) {
    const int dep = run.transfer_dep[task.index];
    return dep < 0 || run.transfer_done[dep];
  }
  for (size_t t : run.part_deps[task.index]) {
    if (!run.transfer_done[t]) return false;
  }
  return true;
}

void PlacementExecutor::Fail(PlacedRun& run, absl::Status why) {
  run.status = std::move(why);
  ++failures_;
  range_moved_ = true;
  rollbacks_.push_back({run.seq, std::move(run.previous_homes)});
}

void PlacementExecutor::Poison(PlacedRun& run) {
  Fail(run, absl::Status(poison_.code(),
                         absl::StrCat("run ", run.seq, " was placed while an earlier run was in "
                                      "flight, and that run failed: ", poison_.message())));
}

namespace {

bool Intersect(const std::vector<uint64_t>& a, const std::vector<uint64_t>& b) {
  auto i = a.begin(), j = b.begin();
  while (i != a.end() && j != b.end()) {
    if (*i == *j) return true;
    *i < *j ? ++i : ++j;
  }
  return false;
}

}  // namespace

std::deque<PlacementExecutor::Task>::iterator PlacementExecutor::Runnable(Lane& lane) {
  for (auto it = lane.queue.begin(); it != lane.queue.end(); ++it) {
    bool conflicts = false;
    for (auto earlier = lane.queue.begin(); earlier != it && !conflicts; ++earlier) {
      // Tasks of one run keep their order; across runs, only what touches the same state.
      conflicts = earlier->run == it->run || Intersect(it->reads, earlier->writes) ||
                  Intersect(it->writes, earlier->reads) || Intersect(it->writes, earlier->writes);
    }
    if (!conflicts && Ready(*it)) return it;
  }
  return lane.queue.end();
}

void PlacementExecutor::LaneLoop(int node) {
  Lane& lane = lanes_[node];
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    std::deque<Task>::iterator next = lane.queue.end();
    cv_.wait(lock, [&] {
      if (lane.queue.empty()) return stopping_;
      next = Runnable(lane);
      return next != lane.queue.end();
    });
    if (lane.queue.empty()) return;  // stopping
    Task task = std::move(*next);
    lane.queue.erase(next);
    PlacedRun& run = *task.run;
    if (run.status.ok() && run.seq >= poisoned_from_ && run.seq <= poisoned_to_) Poison(run);
    if (run.status.ok()) {
      if (!task.transfer) {
        int in_flight = 1;
        bool overlaps_other_run = false;
        for (size_t k = 0; k < executing_.size(); ++k) {
          if (executing_[k] == 0) continue;
          ++in_flight;
          overlaps_other_run |= executing_[k] != run.seq;
        }
        executing_[node] = run.seq;
        stats_.max_parts_in_flight = std::max<int64_t>(stats_.max_parts_in_flight, in_flight);
        if (overlaps_other_run) ++stats_.pipelined_parts;
      }
      lock.unlock();
      int64_t sent = 0;
      absl::Status s = RunTask(task, node, &sent);
      lock.lock();
      if (!task.transfer) executing_[node] = 0;
      if (task.transfer && s.ok()) {
        run.sent_bytes += sent;
        ++run.sends;
      }
      if (!s.ok() && run.status.ok()) {
        Fail(run, std::move(s));
        // Runs placed while this one was in flight assumed what it would leave behind.
        poisoned_from_ = run.seq + 1;
        poisoned_to_ = last_submitted_;
        poison_ = run.status;
      }
    }
    (task.transfer ? run.transfer_done[task.index] : run.part_done[task.index]) = 1;
    if (--run.remaining == 0) Finish(run);
    cv_.notify_all();
  }
}

absl::Status PlacementExecutor::RunTask(const Task& task, int node, int64_t* sent) {
  PlacedRun& run = *task.run;
  const Placement& placement = run.placement;
  if (task.transfer) {
    const Transfer& t = placement.transfers[task.index];
    auto* sender = dynamic_cast<core::PeerSender*>(nodes_[t.from].get());
    auto* receiver = dynamic_cast<core::PeerSender*>(nodes_[t.to].get());
    core::PeerSend send;
    send.handle = t.source_handle;
    send.dtype = t.dtype;
    send.numel = t.numel;
    send.peer = receiver->peer_address();
    send.peer_handle = t.target_handle;
    send.release = t.release_source;
    absl::StatusOr<int64_t> bytes = sender->SendToPeer(send);
    if (!bytes.ok()) return bytes.status();
    *sent = *bytes;
    return absl::OkStatus();
  }
  const size_t p = task.index;
  absl::StatusOr<core::ExecuteResult> r =
      residency_[node]->Execute(run.subs[p], run.sub_semantics[p]);
  // A part counts as done when the node has run it: other lanes start on what it leaves
  // there (a node may have accepted it without waiting, core::Executor::Drain).
  if (r.ok()) {
    absl::Status ran = nodes_[node]->Drain();
    if (!ran.ok()) r = ran;
  }
  if (!r.ok()) {
    return absl::Status(r.status().code(), absl::StrCat("part ", p, " of ", placement.parts.size(),
                                                        " on node ", node, ": ", r.status().message()));
  }
  run.results[p] = std::move(*r);
  return absl::OkStatus();
}

void PlacementExecutor::Finish(PlacedRun& run) {
  run.finished = true;
  --in_flight_;
  range_busy_[run.range] = 0;
  if (!run.status.ok()) return;
  ++stats_.runs;
  stats_.parts += static_cast<int64_t>(run.placement.parts.size());
  stats_.transfers += run.sends;
  stats_.node_to_node_bytes += run.sent_bytes;
  stats_.last_report = run.report;
  for (size_t op = 0; op < run.placement.node_of_op.size(); ++op) {
    const std::string& top = run.top_of_op[op];
    if (top.empty()) continue;
    size_t i = 0;
    while (i < stats_.modules.size() && stats_.modules[i].module != top) ++i;
    if (i == stats_.modules.size()) {
      stats_.modules.push_back(ModulePlacement{top, semantic::ModalityKind::kUnknown,
                                               std::vector<int64_t>(nodes_.size(), 0)});
      modality_votes_.push_back({});
    }
    ++stats_.modules[i].ops_per_node[run.placement.node_of_op[op]];
    std::array<int64_t, 5>& votes = modality_votes_[i];
    ++votes[static_cast<size_t>(run.modality_of_op[op])];
    size_t best = 0;
    for (size_t m = 1; m < votes.size(); ++m) best = votes[m] > votes[best] ? m : best;
    stats_.modules[i].modality = static_cast<semantic::ModalityKind>(best);
  }
}

bool PlacementExecutor::Finished(const Ticket& ticket) const {
  if (!ticket.valid()) return true;
  std::lock_guard<std::mutex> lock(mu_);
  return ticket.run_->finished;
}

absl::StatusOr<core::ExecuteResult> PlacementExecutor::Wait(Ticket ticket) {
  if (!ticket.valid()) return absl::InvalidArgumentError("Wait on an empty ticket (submitted?)");
  PlacedRun& run = *ticket.run_;
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return run.finished; });
  }
  if (!run.status.ok()) return run.status;
  return Collect(run);
}

absl::StatusOr<core::ExecuteResult> PlacementExecutor::Collect(PlacedRun& run) {
  core::ExecuteResult result;
  result.stats.program_cache_hit = true;
  for (const core::ExecuteResult& r : run.results) {
    result.stats.program_cache_hit &= r.stats.program_cache_hit;
    result.stats.nodes_executed += r.stats.nodes_executed;
    result.stats.bytes_uploaded += r.stats.bytes_uploaded;
    result.stats.bytes_downloaded += r.stats.bytes_downloaded;
    result.stats.resident_bytes += r.stats.resident_bytes;
  }
  const Placement& placement = run.placement;
  for (size_t i = 0; i < placement.output_part.size(); ++i) {
    const std::vector<core::HostBytes>& outs = run.results[placement.output_part[i]].outputs;
    if (placement.output_index[i] >= outs.size()) {
      return absl::InternalError(absl::StrCat("part ", placement.output_part[i], " returned ",
                                              outs.size(), " outputs, fewer than placed"));
    }
    result.outputs.push_back(outs[placement.output_index[i]]);
  }
  return result;
}

}  // namespace genie::scheduler
