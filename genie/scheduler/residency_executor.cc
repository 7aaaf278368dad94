// File: genie/scheduler/residency_executor.cc
#include "genie/scheduler/residency_executor.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "genie/core/status.h"

namespace genie::scheduler {

const char* StorageClassName(StorageClass c) {
  switch (c) {
    case StorageClass::kWeight: return "weights";
    case StorageClass::kKvCache: return "KV cache";
    case StorageClass::kActivation: return "activations";
  }
  return "?";
}

std::string DataTraffic::ToString() const {
  std::string out;
  for (int c = 0; c < 3; ++c) {
    absl::StrAppend(&out, c ? ", " : "", StorageClassName(static_cast<StorageClass>(c)), " ",
                    up[c], " B up / ", down[c], " B down");
  }
  return out;
}

DataTraffic ResidencyExecutor::traffic() const {
  DataTraffic t;
  for (int c = 0; c < 3; ++c) {
    t.up[c] = up_[c].load(std::memory_order_relaxed);
    t.down[c] = down_[c].load(std::memory_order_relaxed);
  }
  return t;
}

bool ResidencyExecutor::Ships(StorageClass c) const {
  switch (c) {
    case StorageClass::kWeight: return policy_.weights;
    case StorageClass::kKvCache: return policy_.kv_cache;
    case StorageClass::kActivation: return policy_.activations;
  }
  return true;
}

StorageClass ResidencyExecutor::ClassOf(const core::Graph& g, core::BufferId b) const {
  const uint64_t h = g.buffer(b).handle;
  auto it = class_.find(h);
  if (h != 0 && it != class_.end()) return it->second;
  return g.buffer(b).kind == core::BufferKind::kParameter ? StorageClass::kWeight
                                                         : StorageClass::kActivation;
}

absl::StatusOr<core::ExecuteResult> ResidencyExecutor::Execute(
    const core::ExecuteRequest& request, const semantic::GraphSemantics& semantics) {
  if (request.graph == nullptr) return absl::InvalidArgumentError("execute request without a graph");
  const core::Graph& in = *request.graph;
  const absl::flat_hash_set<core::BufferId> kv(semantics.kv_cache.begin(), semantics.kv_cache.end());
  // A graph of no nodes and no outputs only keeps host data sent ahead
  // (core::Executor::UploadsAhead): the first graph that reads it says what it is. A named buffer
  // (frontend::NameParameters) that is no KV cache is a module's weight or buffer, whatever its
  // kind by then.
  const bool sent_ahead = in.nodes().empty() && in.outputs().empty();
  for (const core::Buffer& b : in.buffers()) {
    if (b.handle == 0 || sent_ahead || class_.contains(b.handle)) continue;
    class_[b.handle] = b.kind == core::BufferKind::kParameter ? StorageClass::kWeight
                       : kv.contains(b.id)                    ? StorageClass::kKvCache
                       : !b.name.empty()                      ? StorageClass::kWeight
                                                              : StorageClass::kActivation;
  }
  auto ships = [&](uint64_t h) {
    auto it = class_.find(h);
    return h != 0 && it != class_.end() && Ships(it->second);
  };

  if (!policy_.weights && !policy_.kv_cache && !policy_.activations) {
    // Nothing ships: the request goes to the node as it is (no copy of its graph).
    GENIE_ASSIGN_OR_RETURN(core::ExecuteResult result, node_->Execute(request));
    for (const core::Upload& u : request.uploads) {
      up_[static_cast<int>(ClassOf(in, u.buffer))] += static_cast<int64_t>(u.bytes.nbytes);
    }
    for (const core::HostBytes& o : result.outputs) {
      down_[static_cast<int>(StorageClass::kActivation)] += static_cast<int64_t>(o.nbytes);
    }
    for (uint64_t h : request.release) class_.erase(h);
    return result;
  }

  core::ExecuteRequest out;
  out.may_defer = request.may_defer;
  for (uint64_t h : request.release) {
    if (!held_.contains(h)) out.release.push_back(h);  // the node forgets it after the run
  }
  // Buffers the client holds go up again; the rest the node still has.
  core::Graph graph = in;
  out.graph = &graph;
  out.uploads = request.uploads;
  bool changed = false;
  for (const core::Buffer& b : in.buffers()) {
    if (b.kind != core::BufferKind::kResident || !ships(b.handle)) continue;
    auto it = held_.find(b.handle);
    if (it == held_.end()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "buffer b", b.id, " (handle ", b.handle, ") is neither on the node nor held by the client"));
    }
    // Re-uploaded weights stay parameters, so the wire counts them as weights.
    graph.mutable_buffer(b.id).kind = class_[b.handle] == StorageClass::kWeight
                                          ? core::BufferKind::kParameter
                                          : core::BufferKind::kHostInput;
    out.uploads.push_back({b.id, it->second});
    changed = true;
  }
  std::sort(out.uploads.begin(), out.uploads.end(),
            [](const core::Upload& a, const core::Upload& b) { return a.buffer < b.buffer; });
  // Surviving buffers of shipped classes come back instead of staying.
  const size_t n_outputs = graph.outputs().size();
  std::vector<core::BufferId> fetched;
  for (core::BufferId b : request.keep) {
    if (ships(graph.buffer(b).handle)) {
      fetched.push_back(b);
      const core::Buffer& buf = graph.buffer(b);
      graph.outputs().push_back(core::TensorRef::Contiguous(b, buf.dtype, {buf.numel}));
    } else {
      out.keep.push_back(b);
    }
  }
  changed |= !fetched.empty();
  out.fingerprint = changed ? absl::Hash<std::pair<uint64_t, uint64_t>>{}({request.fingerprint, 0x5EEDu})
                            : request.fingerprint;

  GENIE_ASSIGN_OR_RETURN(core::ExecuteResult result, node_->Execute(out));
  auto class_of = [&](core::BufferId b) { return ClassOf(graph, b); };
  for (const core::Upload& u : out.uploads) {
    up_[static_cast<int>(class_of(u.buffer))] += static_cast<int64_t>(u.bytes.nbytes);
  }
  for (size_t k = 0; k < result.outputs.size(); ++k) {
    const StorageClass c = k < n_outputs ? StorageClass::kActivation : class_of(fetched[k - n_outputs]);
    down_[static_cast<int>(c)] += static_cast<int64_t>(result.outputs[k].nbytes);
  }
  if (result.outputs.size() != n_outputs + fetched.size()) {
    return absl::InternalError(absl::StrCat("node returned ", result.outputs.size(), " outputs, expected ",
                                            n_outputs + fetched.size()));
  }
  for (size_t k = 0; k < fetched.size(); ++k) {
    held_[graph.buffer(fetched[k]).handle] = result.outputs[n_outputs + k];
  }
  result.outputs.resize(n_outputs);
  for (uint64_t h : request.release) {  // after the run, which may still read them
    held_.erase(h);
    class_.erase(h);
  }
  return result;
}

int64_t ResidencyExecutor::client_held_bytes() const {
  int64_t total = 0;
  for (const auto& [h, bytes] : held_) total += static_cast<int64_t>(bytes.nbytes);
  return total;
}

}  // namespace genie::scheduler
