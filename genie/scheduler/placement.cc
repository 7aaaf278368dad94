// File: genie/scheduler/placement.cc
#include "genie/scheduler/placement.h"

#include <algorithm>
#include <array>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "genie/core/status.h"

namespace genie::scheduler {
namespace {

using core::BufferId;
using core::BufferKind;
using core::NodeId;
using semantic::ModalityKind;

// Buffers an op writes: in-place targets and its outputs.
std::vector<BufferId> Written(const core::Node& n) {
  std::vector<BufferId> out(n.writes.begin(), n.writes.end());
  for (const core::TensorRef& t : n.outputs) out.push_back(t.buffer);
  return out;
}

// The anchor node of a modality, or -1 for one that goes where its inputs are.
int AnchorOf(ModalityKind m, int num_nodes) {
  switch (m) {
    case ModalityKind::kVision: return 0;
    case ModalityKind::kLanguage: return 1 % num_nodes;
    case ModalityKind::kRecommendation: return 2 % num_nodes;
    default: return -1;
  }
}

// One copy of a buffer's current version.
struct Copy {
  int node = 0;
  uint64_t handle = 0;         // 0: not kept yet (kept lazily by `part` when needed)
  int part = -1;               // the part whose buffer `local` holds it, or -1: resident
  BufferId local = core::kNoBuffer;
};

class Builder {
 public:
  Builder(const PlacementInput& in, Placement* out) : in_(in), g_(*in.graph), out_(out) {}

  absl::Status Run() {
    AssignNodes();
    MakeParts();
    GENIE_RETURN_IF_ERROR(BuildParts());
    return absl::OkStatus();
  }

 private:
  int64_t Bytes(BufferId b) const { return g_.buffer(b).nbytes(); }

  int HomeOf(BufferId b) const {
    const core::Buffer& buf = g_.buffer(b);
    if (buf.kind != BufferKind::kResident || in_.home == nullptr) return -1;
    auto it = in_.home->find(buf.handle);
    return it == in_.home->end() ? -1 : it->second;
  }

  // ---- Assignment -------------------------------------------------------------------
  void AssignNodes() {
    const size_t n_ops = g_.nodes().size();
    const int n = in_.num_nodes;
    const semantic::GraphSemantics& s = *in_.semantics;
    std::vector<int>& node_of = out_->node_of_op;
    node_of.assign(n_ops, -1);
    if (n == 1) {
      std::fill(node_of.begin(), node_of.end(), 0);
      return;
    }
    auto module_of = [&](NodeId op) {
      return op < s.module.size() ? TopLevelModule(s.module[op]) : std::string();
    };
    auto modality_of = [&](NodeId op) {
      return op < s.modality.size() ? s.modality[op] : ModalityKind::kUnknown;
    };
    // Residency sticks: the homed storage with the most bytes an op touches.
    std::vector<int> pinned(n_ops, -1);
    for (NodeId op = 0; op < n_ops; ++op) {
      const core::Node& node = g_.node(op);
      int64_t best = -1;
      auto consider = [&](BufferId b) {
        const int home = HomeOf(b);
        if (home >= 0 && home < n && Bytes(b) > best) {
          best = Bytes(b);
          pinned[op] = home;
        }
      };
      for (const core::TensorRef* t : node.Inputs()) consider(t->buffer);
      for (BufferId b : Written(node)) consider(b);
    }
    // Groups by top-level module, with their most common modality and parameter bytes.
    std::vector<std::string> names;
    absl::flat_hash_map<std::string, size_t> group_index;
    std::vector<size_t> group_of(n_ops, 0);
    std::vector<std::array<int64_t, 5>> votes;
    std::vector<int64_t> param_bytes;
    std::vector<absl::flat_hash_set<BufferId>> params;
    for (NodeId op = 0; op < n_ops; ++op) {
      const std::string top = module_of(op);
      auto [it, inserted] = group_index.emplace(top, names.size());
      if (inserted) {
        names.push_back(top);
        votes.push_back({});
        param_bytes.push_back(0);
        params.emplace_back();
      }
      const size_t gi = it->second;
      group_of[op] = gi;
      ++votes[gi][static_cast<size_t>(modality_of(op))];
      for (const core::TensorRef* t : g_.node(op).Inputs()) {
        if (g_.buffer(t->buffer).kind == BufferKind::kParameter &&
            params[gi].insert(t->buffer).second) {
          param_bytes[gi] += Bytes(t->buffer);
        }
      }
    }
    std::vector<int> group_node(names.size(), -1);
    std::vector<int64_t> used(n, 0);
    auto capacity = [&](int k) {
      return static_cast<size_t>(k) < in_.capacity_bytes.size() ? in_.capacity_bytes[k] : 0;
    };
    for (size_t gi = 0; gi < names.size(); ++gi) {
      if (names[gi].empty()) continue;  // module-less ops are placed one by one
      ModalityKind m = ModalityKind::kUnknown;
      int64_t best = 0;
      for (size_t k = 0; k < votes[gi].size(); ++k) {
        if (votes[gi][k] > best) {
          best = votes[gi][k];
          m = static_cast<ModalityKind>(k);
        }
      }
      const int anchor = AnchorOf(m, n);
      if (anchor < 0) continue;
      int chosen = anchor;
      for (int step = 0; step < n; ++step) {
        const int k = (anchor + step) % n;
        if (capacity(k) <= 0 || used[k] + param_bytes[gi] <= capacity(k)) {
          chosen = k;
          break;
        }
      }
      group_node[gi] = chosen;
      used[chosen] += param_bytes[gi];
    }
    // Anchored ops first, so the free ones can look at where their inputs are.
    for (NodeId op = 0; op < n_ops; ++op) {
      if (pinned[op] >= 0) {
        node_of[op] = pinned[op];
      } else if (group_node[group_of[op]] >= 0) {
        node_of[op] = group_node[group_of[op]];
      }
    }
    // Free ops: by the bytes of their inputs per node (a free module decides once, for all
    // its ops); ties stay with the previous op's node.
    auto input_bytes = [&](NodeId op, std::vector<int64_t>* per_node) {
      for (const core::TensorRef* t : g_.node(op).Inputs()) {
        const core::Buffer& buf = g_.buffer(t->buffer);
        int where = -1;
        if (buf.producer != core::kNoNode && buf.producer < n_ops &&
            (names[group_of[op]].empty() || group_of[buf.producer] != group_of[op])) {
          where = node_of[buf.producer];
        } else if (buf.producer == core::kNoNode) {
          where = HomeOf(t->buffer);
        }
        if (where >= 0) (*per_node)[where] += buf.nbytes();
      }
    };
    int previous = 0;
    for (NodeId op = 0; op < n_ops; ++op) {
      if (node_of[op] >= 0) {
        previous = node_of[op];
        continue;
      }
      const size_t gi = group_of[op];
      std::vector<int64_t> per_node(n, 0);
      if (names[gi].empty()) {
        input_bytes(op, &per_node);
      } else {
        for (NodeId o = op; o < n_ops; ++o) {
          if (group_of[o] == gi && node_of[o] < 0) input_bytes(o, &per_node);
        }
      }
      int chosen = previous;
      for (int k = 0; k < n; ++k) {
        if (per_node[k] > per_node[chosen]) chosen = k;
      }
      if (names[gi].empty()) {
        node_of[op] = chosen;
      } else {
        group_node[gi] = chosen;
        for (NodeId o = op; o < n_ops; ++o) {
          if (group_of[o] == gi && node_of[o] < 0) node_of[o] = chosen;
        }
      }
      previous = node_of[op];
    }
    // A KV cache never leaves the attention that reads it: every op touching it runs on
    // its home (or where the first op touching it runs).
    for (BufferId kv : s.kv_cache) {
      if (kv >= g_.buffers().size()) continue;
      int target = HomeOf(kv);
      std::vector<NodeId> touching;
      for (NodeId op = 0; op < n_ops; ++op) {
        const core::Node& node = g_.node(op);
        bool touches = false;
        for (const core::TensorRef* t : node.Inputs()) touches |= t->buffer == kv;
        for (BufferId b : Written(node)) touches |= b == kv;
        if (touches) touching.push_back(op);
      }
      if (touching.empty()) continue;
      if (target < 0 || target >= n) target = node_of[touching.front()];
      for (NodeId op : touching) node_of[op] = target;
    }
  }

  void MakeParts() {
    const std::vector<int>& node_of = out_->node_of_op;
    part_of_op_.assign(node_of.size(), -1);
    // A new part where the node changes, and where a part that so far needs nothing from
    // other nodes first reads what another node made: the ops before that point can start
    // at once (VQA: language runs on node 1 while vision runs on node 0; fusion, the next
    // part on node 1, waits for vision's output).
    bool reads_other_node = false;
    for (NodeId op = 0; op < node_of.size(); ++op) {
      bool needs_other_node = false;
      g_.node(op).ForEachInput([&](const core::TensorRef& t) {
        const NodeId producer = g_.buffer(t.buffer).producer;
        needs_other_node |= producer != core::kNoNode && producer < node_of.size() &&
                            node_of[producer] != node_of[op];
      });
      if (out_->parts.empty() || out_->parts.back().node != node_of[op] ||
          (needs_other_node && !reads_other_node)) {
        out_->parts.emplace_back();
        out_->parts.back().node = node_of[op];
        reads_other_node = false;
      }
      reads_other_node |= needs_other_node;
      out_->parts.back().ops.push_back(op);
      part_of_op_[op] = static_cast<int>(out_->parts.size()) - 1;
    }
    if (out_->parts.empty()) out_->parts.emplace_back();  // a graph without ops
    final_part_.assign(g_.buffers().size(), -1);
    for (NodeId op = 0; op < node_of.size(); ++op) {
      for (BufferId b : Written(g_.node(op))) final_part_[b] = part_of_op_[op];
    }
  }

  // ---- Split ------------------------------------------------------------------------
  uint64_t NewTemporary() { return out_->next_temporary_handle++; }

  bool IsKept(BufferId b) const { return keep_.contains(b); }

  // Whether the copy made by part `q` is the version kept under the buffer's own handle.
  bool KeptBy(BufferId b, int q) const {
    if (!IsKept(b) || g_.buffer(b).handle == 0) return false;
    return final_part_[b] >= 0 ? final_part_[b] == q : keep_part_[b] == q;
  }

  void Use(int node, uint64_t handle, int event, int transfer = -1) {
    Last& l = last_use_[{node, handle}];
    if (event >= l.event) l = Last{event, transfer};
  }

  // Makes `copy` resident under a handle (keeping it from its part if needed) and
  // returns the handle.
  uint64_t Export(BufferId b, Copy& copy) {
    if (copy.handle != 0) return copy.handle;
    Part& q = out_->parts[copy.part];
    copy.handle = KeptBy(b, copy.part) ? g_.buffer(b).handle : NewTemporary();
    q.graph.mutable_buffer(copy.local).handle = copy.handle;
    if (std::find(q.keep.begin(), q.keep.end(), copy.local) == q.keep.end()) {
      q.keep.push_back(copy.local);
    }
    Use(copy.node, copy.handle, 2 * copy.part + 1);
    return copy.handle;
  }

  // A part's buffer standing for original buffer `buf`: same dtype, size, name and handle;
  // kind and producer are the part's.
  static core::Buffer Like(const core::Buffer& buf) {
    core::Buffer nb;
    nb.dtype = buf.dtype;
    nb.numel = buf.numel;
    nb.name = buf.name;
    nb.handle = buf.handle;
    return nb;
  }

  // The local id of original buffer `b` in part `p`, bringing its current version there.
  absl::StatusOr<BufferId> Local(BufferId b, int p) {
    if (b >= g_.buffers().size()) {
      return absl::InvalidArgumentError(absl::StrCat("an op names buffer b", b, ", not in the graph"));
    }
    std::vector<BufferId>& map = local_[p];
    if (map[b] != core::kNoBuffer) return map[b];
    Part& part = out_->parts[p];
    const core::Buffer& buf = g_.buffer(b);
    core::Buffer nb = Like(buf);
    if (buf.producer != core::kNoNode && buf.producer < part_of_op_.size() &&
        part_of_op_[buf.producer] == p) {
      nb.kind = BufferKind::kIntermediate;
    } else {
      std::vector<Copy>& copies = current_[b];
      Copy* here = nullptr;
      for (Copy& c : copies) {
        if (c.node == part.node) here = &c;
      }
      if (here != nullptr) {
        nb.kind = BufferKind::kResident;
        nb.handle = Export(b, *here);
        Use(part.node, nb.handle, 2 * p + 1);
      } else if (!copies.empty()) {
        Copy& from = copies.front();
        const uint64_t source = Export(b, from);
        Transfer t;
        t.buffer = b;
        t.from = from.node;
        t.to = part.node;
        t.source_handle = source;
        t.target_handle = KeptBy(b, p) ? buf.handle : NewTemporary();
        t.nbytes = buf.nbytes();
        t.dtype = buf.dtype;
        t.numel = buf.numel;
        t.before_part = static_cast<size_t>(p);
        out_->transfers.push_back(t);
        const int ti = static_cast<int>(out_->transfers.size()) - 1;
        Use(from.node, source, 2 * p, ti);
        Use(part.node, t.target_handle, 2 * p + 1);
        copies.push_back(Copy{part.node, t.target_handle, -1, core::kNoBuffer});
        nb.kind = BufferKind::kResident;
        nb.handle = t.target_handle;
      } else if (buf.kind == BufferKind::kParameter || buf.kind == BufferKind::kHostInput) {
        nb.kind = buf.kind;
      } else if (buf.kind == BufferKind::kResident) {
        return absl::FailedPreconditionError(absl::StrCat(
            "buffer b", b, " (handle ", buf.handle,
            ") is resident but no node is known to hold it; run every graph of a session "
            "through the same placement scheduler"));
      } else {
        return absl::InternalError(absl::StrCat("buffer b", b, " is read before it is produced"));
      }
    }
    const BufferId local = part.graph.AddBuffer(std::move(nb));
    map[b] = local;
    part.original.push_back(b);
    if (part.graph.buffer(local).kind == BufferKind::kParameter ||
        part.graph.buffer(local).kind == BufferKind::kHostInput) {
      part.uploads.push_back(local);
      if (IsKept(b) && keep_part_[b] < 0) keep_part_[b] = p;
      current_[b].push_back(Copy{part.node, 0, p, local});
    }
    return local;
  }

  // Appends `copy = aten::clone(local)` to part `p` and returns `copy`, which carries
  // original buffer `b`'s own handle.
  BufferId KeepCopy(BufferId b, int p, BufferId local) {
    Part& part = out_->parts[p];
    const core::Buffer& buf = g_.buffer(b);
    core::Buffer nb = Like(buf);
    nb.kind = BufferKind::kIntermediate;
    const BufferId copy = part.graph.AddBuffer(std::move(nb));
    part.original.push_back(b);
    core::Node clone;
    clone.op = part.graph.InternOp("aten::clone");
    clone.args = {core::Arg::Tensor(core::TensorRef::Contiguous(local, buf.dtype, {buf.numel})),
                  core::Arg::None()};  // memory_format
    clone.outputs = {core::TensorRef::Contiguous(copy, buf.dtype, {buf.numel})};
    if (!part.ops.empty()) clone.scope = part.graph.node(part.graph.nodes().size() - 1).scope;
    part.graph.AddNode(std::move(clone));
    local_[p][b] = copy;
    return copy;
  }

  absl::Status MapRef(core::TensorRef& t, int p) {
    absl::StatusOr<BufferId> local = Local(t.buffer, p);
    if (!local.ok()) return local.status();
    t.buffer = *local;
    return absl::OkStatus();
  }

  absl::Status BuildParts() {
    const size_t n_buffers = g_.buffers().size();
    keep_.insert(in_.keep.begin(), in_.keep.end());
    for (BufferId b : in_.keep) {
      if (b >= n_buffers) return absl::InvalidArgumentError(absl::StrCat("keep names b", b, ", not in the graph"));
    }
    keep_part_.assign(n_buffers, -1);
    current_.assign(n_buffers, {});
    for (BufferId b = 0; b < n_buffers; ++b) {
      const int home = HomeOf(b);
      if (home >= 0) current_[b].push_back(Copy{home, g_.buffer(b).handle, -1, core::kNoBuffer});
    }
    std::vector<Part>& parts = out_->parts;
    local_.assign(parts.size(), std::vector<BufferId>(n_buffers, core::kNoBuffer));
    for (size_t p = 0; p < parts.size(); ++p) {
      const int pi = static_cast<int>(p);
      for (NodeId op : parts[p].ops) {
        core::Node node = g_.node(op);
        for (core::Arg& arg : node.args) {
          if (arg.kind != core::ArgKind::kTensor && arg.kind != core::ArgKind::kTensorList &&
              arg.kind != core::ArgKind::kOptionalTensorList) {
            continue;
          }
          for (size_t i = 0; i < arg.tensors.size(); ++i) {
            if (arg.kind == core::ArgKind::kOptionalTensorList &&
                (i >= arg.present.size() || arg.present[i] == 0)) {
              continue;
            }
            if (arg.kind == core::ArgKind::kTensor && i > 0) break;
            GENIE_RETURN_IF_ERROR(MapRef(arg.tensors[i], pi));
          }
        }
        for (core::TensorRef& t : node.outputs) GENIE_RETURN_IF_ERROR(MapRef(t, pi));
        for (BufferId& b : node.writes) {
          absl::StatusOr<BufferId> local = Local(b, pi);
          if (!local.ok()) return local.status();
          b = *local;
        }
        node.id = core::kNoNode;
        node.op = parts[p].graph.InternOp(g_.OpName(node.op));
        node.scope = parts[p].graph.InternScope(g_.ScopeName(node.scope));
        const std::vector<BufferId> written = Written(g_.node(op));
        parts[p].graph.AddNode(std::move(node));
        for (BufferId b : written) {
          current_[b].assign(1, Copy{parts[p].node, 0, pi, local_[p][b]});
        }
      }
    }
    // Outputs: from the part that holds the final version (untouched ones: the last part).
    const int last = static_cast<int>(parts.size()) - 1;
    for (const core::TensorRef& o : g_.outputs()) {
      if (o.buffer >= n_buffers) return absl::InvalidArgumentError("an output names a buffer not in the graph");
      const int p = final_part_[o.buffer] >= 0 ? final_part_[o.buffer] : last;
      core::TensorRef t = o;
      GENIE_RETURN_IF_ERROR(MapRef(t, p));
      out_->output_part.push_back(static_cast<size_t>(p));
      out_->output_index.push_back(parts[p].graph.outputs().size());
      parts[p].graph.outputs().push_back(t);
    }
    // Kept storages: under their own handle, by the part with the final version.
    for (BufferId b : in_.keep) {
      const core::Buffer& buf = g_.buffer(b);
      int p = final_part_[b] >= 0 ? final_part_[b] : keep_part_[b];
      if (p < 0) {
        const int home = HomeOf(b);
        if (home >= 0) {
          out_->kept.push_back({buf.handle, home});  // untouched, stays where it is
          continue;
        }
        p = last;
        GENIE_RETURN_IF_ERROR(Local(b, p).status());
        keep_part_[b] = p;
      }
      BufferId local = local_[p][b];
      if (parts[p].graph.buffer(local).handle != buf.handle) {
        // The final version lives here under a temporary handle (it was exported for
        // another node, or brought here, before a later op of this part wrote it): the
        // part ends with a copy of it kept under the buffer's own handle.
        local = KeepCopy(b, p, local);
      }
      if (std::find(parts[p].keep.begin(), parts[p].keep.end(), local) == parts[p].keep.end()) {
        parts[p].keep.push_back(local);
      }
      out_->kept.push_back({buf.handle, parts[p].node});
      // A copy left on another node under the same handle is stale now.
      if (const int home = HomeOf(b); home >= 0 && home != parts[p].node) {
        stale_.push_back({home, buf.handle});
      }
    }
    // KV cache buffers per part.
    for (BufferId kv : in_.semantics->kv_cache) {
      if (kv >= n_buffers) continue;
      for (size_t p = 0; p < parts.size(); ++p) {
        if (local_[p][kv] != core::kNoBuffer) parts[p].kv_cache.push_back(local_[p][kv]);
      }
    }
    // Releases: temporaries after their last use; the request's (and stale copies) on
    // their home after its last use or its last part there.
    std::vector<int> last_part_on(in_.num_nodes, -1);
    for (size_t p = 0; p < parts.size(); ++p) last_part_on[parts[p].node] = static_cast<int>(p);
    auto release_after_last_use = [&](int node, uint64_t handle, bool defer_if_idle) {
      auto it = last_use_.find({node, handle});
      int event = it == last_use_.end() ? -1 : it->second.event;
      const int lp = node < in_.num_nodes ? last_part_on[node] : -1;
      if (lp >= 0 && 2 * lp + 1 >= event) {
        parts[lp].release.push_back(handle);
      } else if (it != last_use_.end() && it->second.transfer >= 0) {
        out_->transfers[it->second.transfer].release_source = true;
      } else if (it != last_use_.end()) {
        parts[(event - 1) / 2].release.push_back(handle);
      } else if (defer_if_idle) {
        out_->deferred_release.push_back({handle, node});
      }
    };
    for (const auto& [key, use] : last_use_) {
      if (key.second < kTemporaryHandleBase) continue;
      if (use.transfer >= 0) {
        out_->transfers[use.transfer].release_source = true;
      } else {
        parts[(use.event - 1) / 2].release.push_back(key.second);
      }
    }
    for (uint64_t h : in_.release) {
      if (in_.home == nullptr) continue;
      auto it = in_.home->find(h);
      if (it == in_.home->end()) continue;
      release_after_last_use(it->second, h, true);
    }
    for (const auto& [node, h] : stale_) release_after_last_use(node, h, true);
    for (Part& part : parts) {
      std::sort(part.release.begin(), part.release.end());
      part.release.erase(std::unique(part.release.begin(), part.release.end()), part.release.end());
    }
    for (size_t p = 0; p < parts.size(); ++p) {
      absl::Status valid = parts[p].graph.Validate();
      if (!valid.ok()) {
        return absl::InternalError(absl::StrCat("placement made an invalid part ", p, " for node ",
                                                parts[p].node, ": ", valid.message()));
      }
    }
    return absl::OkStatus();
  }

  struct Last {
    int event = -1;
    int transfer = -1;  // the transfer of that event, or -1: a part
  };

  const PlacementInput& in_;
  const core::Graph& g_;
  Placement* out_;
  std::vector<int> part_of_op_;
  std::vector<int> final_part_;  // part of the last write per buffer, or -1
  std::vector<int> keep_part_;   // for kept buffers never written: part that first got it
  absl::flat_hash_set<BufferId> keep_;
  std::vector<std::vector<Copy>> current_;
  std::vector<std::vector<BufferId>> local_;  // per part, original -> local
  absl::flat_hash_map<std::pair<int, uint64_t>, Last> last_use_;
  std::vector<std::pair<int, uint64_t>> stale_;
};

}  // namespace

std::string TopLevelModule(const std::string& module_path) {
  return module_path.substr(0, module_path.find('.'));
}

absl::StatusOr<Placement> Place(const PlacementInput& in) {
  if (in.graph == nullptr || in.semantics == nullptr) {
    return absl::InvalidArgumentError("placement needs a graph and its semantics");
  }
  if (in.num_nodes < 1) {
    return absl::InvalidArgumentError(absl::StrCat("placement needs at least one node, got ", in.num_nodes));
  }
  if (in.first_temporary_handle < kTemporaryHandleBase) {
    return absl::InvalidArgumentError("temporary handles must start at kTemporaryHandleBase or above");
  }
  Placement p;
  p.next_temporary_handle = in.first_temporary_handle;
  Builder builder(in, &p);
  absl::Status s = builder.Run();
  if (!s.ok()) return s;
  std::stable_sort(p.transfers.begin(), p.transfers.end(),
                   [](const Transfer& a, const Transfer& b) { return a.before_part < b.before_part; });
  return p;
}

std::string Placement::Report(const core::Graph& graph,
                              const semantic::GraphSemantics& semantics) const {
  std::string out;
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> ops_per_node;
  std::vector<std::array<int64_t, 5>> votes;
  int max_node = 0;
  for (int k : node_of_op) max_node = std::max(max_node, k);
  for (size_t op = 0; op < node_of_op.size(); ++op) {
    std::string top = op < semantics.module.size() ? TopLevelModule(semantics.module[op]) : "";
    if (top.empty()) top = "(no module)";
    size_t i = std::find(names.begin(), names.end(), top) - names.begin();
    if (i == names.size()) {
      names.push_back(top);
      ops_per_node.emplace_back(max_node + 1, 0);
      votes.push_back({});
    }
    ++ops_per_node[i][node_of_op[op]];
    if (op < semantics.modality.size()) ++votes[i][static_cast<size_t>(semantics.modality[op])];
  }
  for (size_t i = 0; i < names.size(); ++i) {
    size_t best = 0;
    for (size_t m = 1; m < votes[i].size(); ++m) best = votes[i][m] > votes[i][best] ? m : best;
    absl::StrAppend(&out, "module ", names[i], " (",
                    semantic::ModalityName(static_cast<ModalityKind>(best)), "):");
    for (size_t k = 0; k < ops_per_node[i].size(); ++k) {
      if (ops_per_node[i][k] > 0) absl::StrAppend(&out, " node ", k, " ", ops_per_node[i][k], " ops");
    }
    absl::StrAppend(&out, "\n");
  }
  for (size_t p = 0; p < parts.size(); ++p) {
    absl::StrAppend(&out, "part ", p, " on node ", parts[p].node, ": ", parts[p].ops.size(), " ops\n");
  }
  for (const Transfer& t : transfers) {
    absl::StrAppend(&out, "transfer b", t.buffer, " node ", t.from, " -> node ", t.to, ": ", t.nbytes,
                    " B before part ", t.before_part, "\n");
  }
  (void)graph;
  return out;
}

}  // namespace genie::scheduler
