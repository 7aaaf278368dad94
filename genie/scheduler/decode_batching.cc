// File: genie/scheduler/decode_batching.cc
// Finding the decode streams of a graph and batching their weight matmuls (see the
// header for the rules).
#include "genie/scheduler/decode_batching.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"

namespace genie::scheduler {
namespace {

using core::Arg;
using core::ArgKind;
using core::BufferId;
using core::BufferKind;
using core::Graph;
using core::kNoBuffer;
using core::Node;
using core::NodeId;
using core::TensorRef;

absl::Status Refuse(std::string why) { return absl::FailedPreconditionError(std::move(why)); }

// Union-find over node ids.
class Components {
 public:
  explicit Components(size_t n) : parent_(n) { std::iota(parent_.begin(), parent_.end(), 0); }
  NodeId Find(NodeId x) {
    while (parent_[x] != x) x = parent_[x] = parent_[parent_[x]];
    return x;
  }
  void Join(NodeId a, NodeId b) {
    a = Find(a);
    b = Find(b);
    if (a != b) parent_[std::max(a, b)] = std::min(a, b);
  }

 private:
  std::vector<NodeId> parent_;
};

// Calls f(buffer) for every buffer `node` reads, writes or produces.
template <class F>
void ForEachBuffer(const Node& node, F&& f) {
  node.ForEachInput([&](const TensorRef& t) { f(t.buffer); });
  for (const TensorRef& t : node.outputs) f(t.buffer);
  for (BufferId b : node.writes) f(b);
}

// Whether tensor `t` of argument `a` is a tensor: a None entry of a Tensor?[] argument
// (present[t] == 0) is a view of no buffer.
bool Present(const Arg& a, size_t t) {
  return a.kind != ArgKind::kOptionalTensorList || (t < a.present.size() && a.present[t] != 0);
}

bool SameView(const TensorRef& a, const TensorRef& b) {
  return a.dtype == b.dtype && a.sizes == b.sizes && a.strides == b.strides &&
         a.storage_offset == b.storage_offset;
}

// Everything of an argument but the buffers its tensors view (doubles bit for bit).
bool SameScalars(const Arg& a, const Arg& b) {
  if (a.kind != b.kind || a.i != b.i || a.s != b.s || a.ints != b.ints || a.present != b.present ||
      a.doubles.size() != b.doubles.size() || a.tensors.size() != b.tensors.size() ||
      std::memcmp(&a.d, &b.d, sizeof(double)) != 0) {
    return false;
  }
  for (size_t k = 0; k < a.doubles.size(); ++k) {
    if (std::memcmp(&a.doubles[k], &b.doubles[k], sizeof(double)) != 0) return false;
  }
  return true;
}

// Matches stream i's buffers to stream 0's, one to one.
class BufferMatch {
 public:
  explicit BufferMatch(const Graph& g)
      : g_(g),
        to_first_(g.buffers().size(), kNoBuffer),
        from_first_(g.buffers().size(), kNoBuffer) {}
  bool Pair(BufferId mine, BufferId first) {
    if (mine >= to_first_.size() || first >= to_first_.size()) return false;
    const core::Buffer& a = g_.buffer(mine);
    const core::Buffer& b = g_.buffer(first);
    if (a.kind != b.kind || a.dtype != b.dtype || a.numel != b.numel) return false;
    if (to_first_[mine] == kNoBuffer && from_first_[first] == kNoBuffer) {
      to_first_[mine] = first;
      from_first_[first] = mine;
      return true;
    }
    return to_first_[mine] == first && from_first_[first] == mine;
  }
  bool PairView(const TensorRef& mine, const TensorRef& first) {
    return SameView(mine, first) && Pair(mine.buffer, first.buffer);
  }

 private:
  const Graph& g_;
  std::vector<BufferId> to_first_, from_first_;
};

// Whether node `b` (of stream i) is node `a` (of stream 0) over stream i's buffers.
bool SameStep(const Node& a, const Node& b, BufferMatch& match) {
  if (a.op != b.op || a.scope != b.scope || a.args.size() != b.args.size() ||
      a.outputs.size() != b.outputs.size() || a.writes.size() != b.writes.size()) {
    return false;
  }
  for (size_t k = 0; k < a.args.size(); ++k) {
    if (!SameScalars(a.args[k], b.args[k])) return false;
    for (size_t t = 0; t < a.args[k].tensors.size(); ++t) {
      if (!Present(a.args[k], t)) continue;  // None in both (SameScalars compared `present`)
      if (!match.PairView(b.args[k].tensors[t], a.args[k].tensors[t])) return false;
    }
  }
  for (size_t k = 0; k < a.outputs.size(); ++k) {
    if (!match.PairView(b.outputs[k], a.outputs[k])) return false;
  }
  for (size_t k = 0; k < a.writes.size(); ++k) {
    if (!match.Pair(b.writes[k], a.writes[k])) return false;
  }
  return true;
}

// A batchable op: which argument is the activation, which are the shared weights.
struct MatmulShape {
  int activation = -1;
  std::vector<int> weights;  // tensor arguments identical in every stream (None skipped)
};

// The weight-matmul ops batching understands; false for any other op or shape.
bool AsWeightMatmul(const Graph& g, const Node& n, MatmulShape* out) {
  const std::string& op = g.OpName(n.op);
  auto tensor = [&](size_t k) -> const TensorRef* {
    return k < n.args.size() && n.args[k].kind == ArgKind::kTensor && n.args[k].tensors.size() == 1
               ? &n.args[k].tensors[0]
               : nullptr;
  };
  const TensorRef* x = tensor(0);
  const TensorRef* w = tensor(1);
  if (x == nullptr || w == nullptr || w->sizes.size() != 2 || n.outputs.size() != 1) return false;
  if (op == "aten::matmul" || op == "aten::mm") {
    // [.., K] @ [K, N]: each row of x gives its row of the result.
    if (n.args.size() != 2 || x->sizes.size() < 2 || (op == "aten::mm" && x->sizes.size() != 2))
      return false;
    *out = MatmulShape{0, {1}};
    return true;
  }
  if (op == "aten::linear") {
    // linear(x [.., K], weight [N, K], bias [N] or None).
    if (n.args.size() != 3 || x->sizes.size() < 2) return false;
    *out = MatmulShape{0, {1}};
    if (n.args[2].kind == ArgKind::kNone) return true;
    const TensorRef* bias = tensor(2);
    if (bias == nullptr || bias->sizes.size() != 1) return false;
    out->weights.push_back(2);
    return true;
  }
  return false;
}

// Why running KV-cache append `node` again over the same inputs could write other values
// into the buffers it writes; empty when it rewrites the same ones. Only index_copy_,
// copy_ and index_put_ / _index_put_impl_ without accumulate, whose destination is their
// argument 0 and whose other arguments do not read what they write, are repeatable.
std::string NotRepeatable(const Graph& g, const Node& node) {
  const std::string& op = g.OpName(node.op);
  if (op == "aten::index_put_" || op == "aten::_index_put_impl_") {
    // (self, indices, values, accumulate=False[, unsafe]): accumulating adds again.
    if (node.args.size() > 3 && node.args[3].kind == ArgKind::kBool && node.args[3].i != 0) {
      return "accumulates (accumulate=True)";
    }
  } else if (op != "aten::index_copy_" && op != "aten::copy_") {
    return "is not an index_copy_, index_put_ or copy_";
  }
  for (size_t k = 1; k < node.args.size(); ++k) {
    const Arg& a = node.args[k];
    for (size_t t = 0; t < a.tensors.size(); ++t) {
      if (!Present(a, t)) continue;
      const BufferId b = a.tensors[t].buffer;
      if (std::find(node.writes.begin(), node.writes.end(), b) != node.writes.end()) {
        return absl::StrCat("reads b", b, ", which it writes, in its argument ", k);
      }
    }
  }
  return "";
}

bool IsWeight(const Graph& g, BufferId b, const std::vector<bool>& read_only) {
  const BufferKind k = g.buffer(b).kind;
  return read_only[b] && (k == BufferKind::kParameter || k == BufferKind::kResident);
}

core::Dims Stacked(const core::Dims& sizes, int64_t n) {
  core::Dims out = sizes;
  out[0] *= n;
  return out;
}

}  // namespace

absl::StatusOr<BatchedDecode> BatchDecodeStreams(const Graph& g, absl::Span<const BufferId> keep,
                                                 const semantic::GraphSemantics& s) {
  if (s.phase_of_graph != semantic::PhaseKind::kDecode) {
    return Refuse(absl::StrCat("not an LLM decode step (phase ",
                               semantic::PhaseName(s.phase_of_graph),
                               "): only decode steps are batched"));
  }
  const size_t n_nodes = g.nodes().size(), n_buffers = g.buffers().size();
  if (s.pattern.size() != n_nodes) return absl::InvalidArgumentError("semantics of another graph");

  // Read-only buffers from outside the graph (weights, inputs) do not tie streams together.
  std::vector<bool> read_only(n_buffers, true);
  for (const Node& n : g.nodes()) {
    for (const TensorRef& t : n.outputs) read_only[t.buffer] = false;
    for (BufferId b : n.writes) read_only[b] = false;
  }
  // (Kept ones too: resident weights are kept run after run, unchanged.)
  for (const core::Buffer& b : g.buffers())
    read_only[b.id] = read_only[b.id] && b.kind != BufferKind::kIntermediate;
  Components parts(n_nodes);
  std::vector<NodeId> first_user(n_buffers, core::kNoNode);
  for (const Node& n : g.nodes()) {
    ForEachBuffer(n, [&](BufferId b) {
      if (read_only[b]) return;
      if (first_user[b] == core::kNoNode) {
        first_user[b] = n.id;
      } else {
        parts.Join(first_user[b], n.id);
      }
    });
  }
  // Streams in order of their first op; each stream's ops in capture order.
  std::vector<std::vector<NodeId>> streams;
  {
    absl::flat_hash_map<NodeId, size_t> index;
    for (NodeId id = 0; id < n_nodes; ++id) {
      auto [it, fresh] = index.try_emplace(parts.Find(id), streams.size());
      if (fresh) streams.emplace_back();
      streams[it->second].push_back(id);
    }
  }
  const int n = static_cast<int>(streams.size());
  if (n < 2) return Refuse("one decode stream in the graph: nothing to batch");
  const size_t steps = streams[0].size();
  for (int i = 1; i < n; ++i) {
    if (streams[i].size() != steps) {
      return Refuse(absl::StrCat("the graph's ", n, " independent parts differ in length (", steps,
                                 " and ", streams[i].size(), " ops): not the same decode step"));
    }
    BufferMatch match(g);
    for (size_t k = 0; k < steps; ++k) {
      if (!SameStep(g.node(streams[0][k]), g.node(streams[i][k]), match)) {
        return Refuse(absl::StrCat("stream ", i, " differs from stream 0 at its op ", k, " (",
                                   g.DumpNode(streams[i][k]), " vs ", g.DumpNode(streams[0][k]),
                                   "): not the same decode step"));
      }
    }
  }
  // Each stream is a decode step of its own, and writes resident buffers only as KV-cache
  // appends that rewrite the same values when run again (a failed batched run is retried).
  for (int i = 0; i < n; ++i) {
    bool attention = false, append = false;
    for (NodeId id : streams[i]) {
      const Node& node = g.node(id);
      if (s.pattern[id] == semantic::PatternKind::kAttention && !node.args.empty() &&
          node.args[0].kind == ArgKind::kTensor && node.args[0].tensors.size() == 1) {
        const core::Dims& q = node.args[0].tensors[0].sizes;
        attention |= q.size() >= 2 && q[q.size() - 2] == 1;
      }
      append |= s.pattern[id] == semantic::PatternKind::kKvCacheAppend;
      for (BufferId b : node.writes) {
        if (g.buffer(b).kind == BufferKind::kIntermediate) continue;
        if (s.pattern[id] != semantic::PatternKind::kKvCacheAppend) {
          return Refuse(absl::StrCat("op ", g.DumpNode(id), " writes b", b, " (",
                                     BufferKindName(g.buffer(b).kind),
                                     ") in place and is not a KV-cache append: not batched"));
        }
        const std::string why = NotRepeatable(g, node);
        if (!why.empty()) {
          return Refuse(
              absl::StrCat("KV-cache append ", g.DumpNode(id), " ", why,
                           ": running it again would not rewrite the same values, not batched"));
        }
      }
    }
    if (!attention || !append) {
      return Refuse(
          absl::StrCat("stream ", i, " has no ",
                       !attention ? "decode attention (query length 1)" : "KV-cache append",
                       ": not a decode stream"));
    }
  }

  // Which steps run once for all streams.
  std::vector<MatmulShape> batched(steps);
  std::vector<bool> is_batched(steps, false);
  int batched_ops = 0;
  for (size_t k = 0; k < steps; ++k) {
    const Node& first = g.node(streams[0][k]);
    MatmulShape shape;
    if (!AsWeightMatmul(g, first, &shape)) continue;
    bool ok = true;
    for (int w : shape.weights) {
      const BufferId b = first.args[w].tensors[0].buffer;
      ok &= IsWeight(g, b, read_only);
      for (int i = 1; i < n && ok; ++i) ok &= g.node(streams[i][k]).args[w].tensors[0].buffer == b;
    }
    // Each stream's result is a whole fresh buffer this op makes (it becomes a slice).
    for (int i = 0; i < n && ok; ++i) {
      const Node& node = g.node(streams[i][k]);
      const TensorRef& o = node.outputs[0];
      ok &= o.is_contiguous() && o.storage_offset == 0 && o.numel() == g.buffer(o.buffer).numel &&
            g.buffer(o.buffer).producer == node.id && !o.sizes.empty();
    }
    if (!ok) continue;
    batched[k] = shape;
    is_batched[k] = true;
    ++batched_ops;
  }
  if (batched_ops == 0) return Refuse("no weight matmul shared by the streams: nothing to batch");

  // The batched graph: every buffer but the batched results (now slices of one buffer per
  // op), which stay only when kept (then a clone at the end fills them).
  absl::flat_hash_map<BufferId, bool> kept;
  for (BufferId b : keep) kept[b] = true;
  struct Slice {
    size_t step = 0;
    int64_t offset = 0;
  };
  absl::flat_hash_map<BufferId, Slice> slices;  // stream result -> where it lives
  for (size_t k = 0; k < steps; ++k) {
    if (!is_batched[k]) continue;
    for (int i = 0; i < n; ++i) {
      const TensorRef& o = g.node(streams[i][k]).outputs[0];
      slices[o.buffer] = Slice{k, static_cast<int64_t>(i) * o.numel()};
    }
  }
  BatchedDecode out;
  out.streams = n;
  out.batched_ops = batched_ops;
  out.ops_per_stream = static_cast<int>(steps);
  Graph& ng = out.graph;
  out.new_of_old.assign(n_buffers, kNoBuffer);
  for (const core::Buffer& b : g.buffers()) {
    if (slices.contains(b.id) && !kept.contains(b.id)) continue;
    core::Buffer copy = b;
    copy.producer = core::kNoNode;
    out.new_of_old[b.id] = ng.AddBuffer(std::move(copy));
  }
  std::vector<BufferId> stacked_input(steps, kNoBuffer), stacked_output(steps, kNoBuffer);
  for (size_t k = 0; k < steps; ++k) {
    if (!is_batched[k]) continue;
    const Node& first = g.node(streams[0][k]);
    const TensorRef& x = first.args[batched[k].activation].tensors[0];
    const TensorRef& o = first.outputs[0];
    stacked_input[k] =
        ng.AddBuffer(core::Buffer{x.dtype, n * x.numel(), BufferKind::kIntermediate});
    stacked_output[k] =
        ng.AddBuffer(core::Buffer{o.dtype, n * o.numel(), BufferKind::kIntermediate});
  }
  auto remap = [&](TensorRef t) {
    auto it = slices.find(t.buffer);
    if (it != slices.end()) {
      t.storage_offset += it->second.offset;
      t.buffer = stacked_output[it->second.step];
    } else {
      t.buffer = out.new_of_old[t.buffer];
    }
    return t;
  };
  auto remap_buffer = [&](BufferId b) {
    auto it = slices.find(b);
    return it != slices.end() ? stacked_output[it->second.step] : out.new_of_old[b];
  };
  auto copy_node = [&](const Node& node) {
    Node c;
    c.op = ng.InternOp(g.OpName(node.op));
    c.scope = ng.InternScope(g.ScopeName(node.scope));
    c.args = node.args;
    for (Arg& a : c.args) {
      for (size_t t = 0; t < a.tensors.size(); ++t) {
        if (Present(a, t)) a.tensors[t] = remap(a.tensors[t]);
      }
    }
    for (const TensorRef& t : node.outputs) c.outputs.push_back(remap(t));
    for (BufferId b : node.writes) c.writes.push_back(remap_buffer(b));
    return c;
  };
  // In lockstep: the streams are independent (they share only buffers nobody writes), so
  // any order that keeps each stream's own order computes the same values.
  for (size_t k = 0; k < steps; ++k) {
    if (!is_batched[k]) {
      for (int i = 0; i < n; ++i) ng.AddNode(copy_node(g.node(streams[i][k])));
      continue;
    }
    const Node& first = g.node(streams[0][k]);
    const int a = batched[k].activation;
    const TensorRef& x = first.args[a].tensors[0];
    std::vector<TensorRef> rows;
    for (int i = 0; i < n; ++i) rows.push_back(remap(g.node(streams[i][k]).args[a].tensors[0]));
    Node cat;
    cat.op = ng.InternOp("aten::cat");
    cat.scope = ng.InternScope(g.ScopeName(first.scope));
    cat.args = {Arg::TensorList(std::move(rows)), Arg::Int(0)};  // [N * rows, ..]
    cat.outputs = {TensorRef::Contiguous(stacked_input[k], x.dtype, Stacked(x.sizes, n))};
    ng.AddNode(std::move(cat));
    Node once = copy_node(first);
    once.args[a].tensors[0] = TensorRef::Contiguous(stacked_input[k], x.dtype, Stacked(x.sizes, n));
    const TensorRef& o = first.outputs[0];
    once.outputs = {TensorRef::Contiguous(stacked_output[k], o.dtype, Stacked(o.sizes, n))};
    ng.AddNode(std::move(once));
  }
  // Kept results of batched ops: copied out of the batched buffer once every write is done.
  for (size_t k = 0; k < steps; ++k) {
    if (!is_batched[k]) continue;
    for (int i = 0; i < n; ++i) {
      const Node& node = g.node(streams[i][k]);
      const TensorRef& o = node.outputs[0];
      if (!kept.contains(o.buffer)) continue;
      Node clone;
      clone.op = ng.InternOp("aten::clone");
      clone.scope = ng.InternScope(g.ScopeName(node.scope));
      clone.args = {Arg::Tensor(remap(o)), Arg::Int(0)};  // memory_format: contiguous
      clone.outputs = {TensorRef::Contiguous(out.new_of_old[o.buffer], o.dtype, o.sizes)};
      ng.AddNode(std::move(clone));
    }
  }
  for (const TensorRef& t : g.outputs()) ng.outputs().push_back(remap(t));
  for (BufferId b : keep) {
    if (b < n_buffers && out.new_of_old[b] != kNoBuffer) out.keep.push_back(out.new_of_old[b]);
  }
  absl::Status valid = ng.Validate();
  if (!valid.ok()) {
    return absl::InternalError(
        absl::StrCat("decode batching built an invalid graph (a bug): ", valid.message()));
  }
  out.semantics = semantic::Analyze(ng, out.keep);
  return out;
}

std::string DecodeBatchingStats::ToString() const {
  std::vector<std::string> sizes;
  for (const auto& [size, runs] : batch_sizes)
    sizes.push_back(absl::StrCat(size, " streams x", runs));
  std::string out = absl::StrCat(batched_runs, " of ", decode_graphs, " decode steps batched");
  if (!sizes.empty()) absl::StrAppend(&out, " (", absl::StrJoin(sizes, ", "), ")");
  absl::StrAppend(&out, ", ", ops_batched, " ops run once for all streams");
  if (fallbacks > 0)
    absl::StrAppend(&out, ", ", fallbacks, " fell back to unbatched (", last_fallback, ")");
  if (not_batched > 0)
    absl::StrAppend(&out, "; ", not_batched, " not batched (last: ", last_refusal, ")");
  if (other_graphs > 0) absl::StrAppend(&out, "; ", other_graphs, " other graphs");
  return out;
}

std::shared_ptr<const DecodeBatcher::Plan> DecodeBatcher::PlanFor(
    const core::ExecuteRequest& request, const semantic::GraphSemantics& semantics) {
  if (request.fingerprint != 0) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = plans_.find(request.fingerprint);
    if (it != plans_.end()) return it->second;
  }
  auto plan = std::make_shared<Plan>();
  plan->batched = BatchDecodeStreams(*request.graph, request.keep, semantics);
  plan->keep = request.keep;
  if (request.fingerprint != 0) {
    std::lock_guard<std::mutex> lock(mu_);
    if (plans_.size() >= kMaxPlans) plans_.clear();
    plans_[request.fingerprint] = plan;
  }
  return plan;
}

absl::StatusOr<core::ExecuteResult> DecodeBatcher::Execute(
    const core::ExecuteRequest& request, const semantic::GraphSemantics& semantics, RunFn run) {
  if (request.graph == nullptr)
    return absl::InvalidArgumentError("execute request without a graph");
  if (semantics.phase_of_graph != semantic::PhaseKind::kDecode) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.other_graphs;
    }
    return run(request, semantics);
  }
  std::shared_ptr<const Plan> plan = PlanFor(request, semantics);
  // Runs the request as captured: a decode graph not batched, for `why`.
  auto run_captured = [&](absl::string_view why) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.decode_graphs;
      ++stats_.not_batched;
      stats_.last_refusal = std::string(why);
    }
    return run(request, semantics);
  };
  // Puts `replacement` (or nothing) where `plan` is cached, unless another took its place.
  auto replace_plan = [&](std::shared_ptr<const Plan> replacement) {
    if (request.fingerprint == 0) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = plans_.find(request.fingerprint);
    if (it == plans_.end() || it->second != plan) return;
    if (replacement == nullptr) {
      plans_.erase(it);
    } else {
      it->second = std::move(replacement);
    }
  };
  if (!plan->batched.ok()) return run_captured(plan->batched.status().message());
  const BatchedDecode& b = *plan->batched;
  const core::Graph& in = *request.graph;
  if (plan->keep != request.keep) {
    // The plan keeps (and copies out of its batches) what its first request kept.
    return run_captured(
        "the cached decode batching plan of this fingerprint was made for another keep");
  }
  if (b.new_of_old.size() != in.buffers().size()) {
    replace_plan(nullptr);
    return run_captured("a decode batching plan of another graph (fingerprint collision): dropped");
  }
  // This run's storages in the batched graph (the structure is the plan's).
  core::Graph graph = b.graph;
  for (core::BufferId old = 0; old < in.buffers().size(); ++old) {
    if (b.new_of_old[old] == core::kNoBuffer) continue;
    graph.mutable_buffer(b.new_of_old[old]).handle = in.buffer(old).handle;
    graph.mutable_buffer(b.new_of_old[old]).name = in.buffer(old).name;
  }
  core::ExecuteRequest batched;
  batched.graph = &graph;
  batched.fingerprint =
      request.fingerprint == 0
          ? 0
          : absl::Hash<std::pair<uint64_t, uint64_t>>{}({request.fingerprint, 0xBA7C4ED});
  batched.keep = b.keep;
  batched.release = request.release;
  batched.uploads.reserve(request.uploads.size());
  for (const core::Upload& u : request.uploads) {
    if (u.buffer >= b.new_of_old.size() || b.new_of_old[u.buffer] == core::kNoBuffer) {
      return absl::InvalidArgumentError(
          absl::StrCat("upload for buffer b", u.buffer, " that the graph does not read"));
    }
    batched.uploads.push_back(core::Upload{b.new_of_old[u.buffer], u.bytes});
  }
  absl::StatusOr<core::ExecuteResult> result = run(batched, b.semantics);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.decode_graphs;
    if (result.ok()) {
      plan->transient_failures = 0;
      ++stats_.batched_runs;
      stats_.streams_batched += b.streams;
      stats_.ops_batched += b.batched_ops;
      ++stats_.batch_sizes[b.streams];
      return result;
    }
    ++stats_.fallbacks;
    stats_.last_fallback = std::string(result.status().message());
  }
  // Run it as captured: the same answer (or error) as without batching. Safe to repeat:
  // the only resident writes are KV-cache appends, which write the same values again.
  absl::StatusOr<core::ExecuteResult> captured = run(request, semantics);
  if (!captured.ok()) {
    return absl::Status(captured.status().code(),
                        absl::StrCat(captured.status().message(), "; after a batched run of ",
                                     b.streams, " streams failed: ", result.status().message()));
  }
  // The batched graph failed where the captured one ran. A failure a retry can outlive is
  // forgiven a few times in a row; any other means the batched graph is at fault: do not
  // try it again every step.
  const bool transient = IsTransient(result.status());
  if (transient) {
    std::lock_guard<std::mutex> lock(mu_);
    if (++plan->transient_failures < kMaxTransientFailures) return captured;
  }
  auto refusal = std::make_shared<Plan>();
  refusal->batched = Refuse(
      absl::StrCat("a batched run of ", b.streams,
                   " streams failed where the unbatched run of the same graph ran",
                   transient ? absl::StrCat(", ", kMaxTransientFailures, " times in a row") : "",
                   ": ", result.status().message()));
  refusal->keep = request.keep;
  replace_plan(std::move(refusal));
  return captured;
}

bool DecodeBatcher::IsTransient(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:       // a lost connection or node
    case absl::StatusCode::kDeadlineExceeded:  // a late one
      return true;
    default:
      return false;
  }
}

DecodeBatchingStats DecodeBatcher::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace genie::scheduler
