// File: genie/scheduler/placement_executor.cc
#include "genie/scheduler/placement_executor.h"

#include <algorithm>
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

PlacementExecutor::PlacementExecutor(std::vector<std::shared_ptr<core::Executor>> nodes,
                                     ShipPolicy policy, std::vector<int64_t> capacity_bytes)
    : nodes_(std::move(nodes)),
      capacity_bytes_(std::move(capacity_bytes)),
      pending_release_(nodes_.size()) {
  std::random_device entropy;
  const uint64_t range = (uint64_t{entropy()} << 8 ^ entropy()) & ((uint64_t{1} << 29) - 1);
  temporary_base_ = kTemporaryHandleBase + (range << 32);
  for (const auto& n : nodes_) residency_.push_back(std::make_unique<ResidencyExecutor>(n, policy));
  stats_.num_nodes = static_cast<int>(nodes_.size());
}

std::string PlacementExecutor::Describe() const {
  std::vector<std::string> names;
  for (const auto& n : nodes_) names.push_back(n->Describe());
  return absl::StrCat(nodes_.size(), " nodes placed by modality: ", absl::StrJoin(names, "; "));
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
  absl::StatusOr<core::ExecuteResult> result = Run(request, semantics);
  if (!result.ok()) temporary_base_ += uint64_t{1} << 32;
  return result;
}

absl::StatusOr<core::ExecuteResult> PlacementExecutor::Run(
    const core::ExecuteRequest& request, const semantic::GraphSemantics& semantics) {
  if (request.graph == nullptr) return absl::InvalidArgumentError("execute request without a graph");
  const core::Graph& graph = *request.graph;
  PlacementInput in;
  in.graph = &graph;
  in.semantics = &semantics;
  in.keep = request.keep;
  in.release = request.release;
  in.num_nodes = static_cast<int>(nodes_.size());
  in.capacity_bytes = capacity_bytes_;
  in.home = &home_;
  in.first_temporary_handle = temporary_base_;
  GENIE_ASSIGN_OR_RETURN(Placement placement, Place(in));

  absl::flat_hash_map<core::BufferId, const core::Upload*> upload_of;
  for (const core::Upload& u : request.uploads) upload_of[u.buffer] = &u;

  std::vector<core::ExecuteResult> results(placement.parts.size());
  size_t next_transfer = 0;
  int64_t sent_bytes = 0, sends = 0;
  for (size_t p = 0; p < placement.parts.size(); ++p) {
    const Part& part = placement.parts[p];
    // Node to node, before the part that reads it.
    for (; next_transfer < placement.transfers.size() &&
           placement.transfers[next_transfer].before_part == p;
         ++next_transfer) {
      const Transfer& t = placement.transfers[next_transfer];
      auto* sender = dynamic_cast<core::PeerSender*>(nodes_[t.from].get());
      auto* receiver = dynamic_cast<core::PeerSender*>(nodes_[t.to].get());
      if (sender == nullptr || receiver == nullptr) {
        return absl::FailedPreconditionError(absl::StrCat(
            "placement sends b", t.buffer, " from ", nodes_[t.from]->Describe(), " to ",
            nodes_[t.to]->Describe(), ", but these nodes cannot send to each other; use remote "
            "nodes (client::RemoteExecutor) or drop ModalityPlacement"));
      }
      core::PeerSend send;
      send.handle = t.source_handle;
      send.dtype = t.dtype;
      send.numel = t.numel;
      send.peer = receiver->peer_address();
      send.peer_handle = t.target_handle;
      send.release = t.release_source;
      GENIE_ASSIGN_OR_RETURN(int64_t bytes, sender->SendToPeer(send));
      sent_bytes += bytes;
      ++sends;
    }
    core::ExecuteRequest sub;
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
    std::vector<uint64_t>& pending = pending_release_[part.node];
    sub.release.insert(sub.release.end(), pending.begin(), pending.end());
    pending.clear();
    semantic::GraphSemantics sub_semantics;
    sub_semantics.workload = semantics.workload;
    sub_semantics.phase_of_graph = semantics.phase_of_graph;
    sub_semantics.kv_cache = part.kv_cache;
    for (core::NodeId op : part.ops) {
      sub_semantics.module.push_back(op < semantics.module.size() ? semantics.module[op] : "");
      sub_semantics.modality.push_back(op < semantics.modality.size() ? semantics.modality[op]
                                                                      : semantic::ModalityKind::kUnknown);
    }
    absl::StatusOr<core::ExecuteResult> r = residency_[part.node]->Execute(sub, sub_semantics);
    if (!r.ok()) {
      return absl::Status(r.status().code(),
                          absl::StrCat("part ", p, " of ", placement.parts.size(), " on node ",
                                       part.node, ": ", r.status().message()));
    }
    results[p] = std::move(*r);
  }
  for (const auto& [h, node] : placement.deferred_release) pending_release_[node].push_back(h);
  for (const auto& [h, node] : placement.kept) home_[h] = node;
  for (uint64_t h : request.release) home_.erase(h);

  core::ExecuteResult result;
  result.stats.program_cache_hit = true;
  for (const core::ExecuteResult& r : results) {
    result.stats.program_cache_hit &= r.stats.program_cache_hit;
    result.stats.nodes_executed += r.stats.nodes_executed;
    result.stats.bytes_uploaded += r.stats.bytes_uploaded;
    result.stats.bytes_downloaded += r.stats.bytes_downloaded;
    result.stats.resident_bytes += r.stats.resident_bytes;
  }
  for (size_t i = 0; i < placement.output_part.size(); ++i) {
    const std::vector<core::HostBytes>& outs = results[placement.output_part[i]].outputs;
    if (placement.output_index[i] >= outs.size()) {
      return absl::InternalError(absl::StrCat("part ", placement.output_part[i], " returned ",
                                              outs.size(), " outputs, fewer than placed"));
    }
    result.outputs.push_back(outs[placement.output_index[i]]);
  }

  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.runs;
  stats_.parts += static_cast<int64_t>(placement.parts.size());
  stats_.transfers += sends;
  stats_.node_to_node_bytes += sent_bytes;
  stats_.last_report = placement.Report(graph, semantics);
  for (size_t op = 0; op < placement.node_of_op.size(); ++op) {
    const std::string top = op < semantics.module.size() ? TopLevelModule(semantics.module[op]) : "";
    if (top.empty()) continue;
    size_t i = 0;
    while (i < stats_.modules.size() && stats_.modules[i].module != top) ++i;
    if (i == stats_.modules.size()) {
      stats_.modules.push_back(ModulePlacement{top, semantic::ModalityKind::kUnknown,
                                               std::vector<int64_t>(nodes_.size(), 0)});
      modality_votes_.push_back({});
    }
    ++stats_.modules[i].ops_per_node[placement.node_of_op[op]];
    if (op < semantics.modality.size()) {
      std::array<int64_t, 5>& votes = modality_votes_[i];
      ++votes[static_cast<size_t>(semantics.modality[op])];
      size_t best = 0;
      for (size_t m = 1; m < votes.size(); ++m) best = votes[m] > votes[best] ? m : best;
      stats_.modules[i].modality = static_cast<semantic::ModalityKind>(best);
    }
  }
  return result;
}

}  // namespace genie::scheduler
