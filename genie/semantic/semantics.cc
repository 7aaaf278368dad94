// File: genie/semantic/semantics.cc
// The semantic analysis: one pass in capture order over a graph (data flow through
// buffers: last writer per buffer), then pattern, phase and workload rules on top.
#include "genie/semantic/semantics.h"

#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace genie::semantic {
namespace {

using core::BufferId;
using core::BufferKind;
using core::Graph;
using core::Node;
using core::NodeId;

enum class OpClass : uint8_t {
  kOther,
  kAlloc,
  kLinear,
  kMatmul,
  kConv,
  kAttention,
  kSoftmax,
  kActivation,
  kNorm,
  kEmbedding,
  kEmbeddingBag,
  kCat,
  kCopy,
  kPool,
  kMask,
};

constexpr uint8_t kVisionBit = 1, kLanguageBit = 2, kRecommendationBit = 4;

absl::string_view BaseName(absl::string_view qualified) {
  if (absl::StartsWith(qualified, "aten::")) qualified.remove_prefix(6);
  const size_t dot = qualified.find('.');
  return dot == absl::string_view::npos ? qualified : qualified.substr(0, dot);
}

OpClass Classify(absl::string_view base) {
  static const auto* table = new absl::flat_hash_map<std::string, OpClass>{
      {"empty", OpClass::kAlloc},
      {"empty_strided", OpClass::kAlloc},
      {"linear", OpClass::kLinear},
      {"addmm", OpClass::kLinear},
      {"matmul", OpClass::kMatmul},
      {"mm", OpClass::kMatmul},
      {"bmm", OpClass::kMatmul},
      {"baddbmm", OpClass::kMatmul},
      {"convolution", OpClass::kConv},
      {"_convolution", OpClass::kConv},
      {"conv1d", OpClass::kConv},
      {"conv2d", OpClass::kConv},
      {"conv3d", OpClass::kConv},
      {"scaled_dot_product_attention", OpClass::kAttention},
      {"_scaled_dot_product_flash_attention", OpClass::kAttention},
      {"_scaled_dot_product_efficient_attention", OpClass::kAttention},
      {"_scaled_dot_product_attention_math", OpClass::kAttention},
      {"_softmax", OpClass::kSoftmax},
      {"softmax", OpClass::kSoftmax},
      {"gelu", OpClass::kActivation},
      {"relu", OpClass::kActivation},
      {"relu_", OpClass::kActivation},
      {"silu", OpClass::kActivation},
      {"tanh", OpClass::kActivation},
      {"sigmoid", OpClass::kActivation},
      {"hardtanh", OpClass::kActivation},
      {"leaky_relu", OpClass::kActivation},
      {"elu", OpClass::kActivation},
      {"mish", OpClass::kActivation},
      {"layer_norm", OpClass::kNorm},
      {"native_layer_norm", OpClass::kNorm},
      {"batch_norm", OpClass::kNorm},
      {"native_batch_norm", OpClass::kNorm},
      {"_native_batch_norm_legit_no_training", OpClass::kNorm},
      {"group_norm", OpClass::kNorm},
      {"native_group_norm", OpClass::kNorm},
      {"rms_norm", OpClass::kNorm},
      {"embedding", OpClass::kEmbedding},
      {"embedding_bag", OpClass::kEmbeddingBag},
      {"_embedding_bag", OpClass::kEmbeddingBag},
      {"_embedding_bag_forward_only", OpClass::kEmbeddingBag},
      {"cat", OpClass::kCat},
      {"copy_", OpClass::kCopy},
      {"index_copy_", OpClass::kCopy},
      {"index_copy", OpClass::kCopy},
      {"index_put_", OpClass::kCopy},
      {"_index_put_impl_", OpClass::kCopy},
      {"slice_scatter", OpClass::kCopy},
      {"max_pool2d", OpClass::kPool},
      {"max_pool2d_with_indices", OpClass::kPool},
      {"avg_pool2d", OpClass::kPool},
      {"adaptive_avg_pool2d", OpClass::kPool},
      {"_adaptive_avg_pool2d", OpClass::kPool},
      {"triu", OpClass::kMask},
      {"tril", OpClass::kMask},
  };
  auto it = table->find(std::string(base));
  return it == table->end() ? OpClass::kOther : it->second;
}

ModalityKind FromBits(uint8_t bits) {
  if (bits & kRecommendationBit) return ModalityKind::kRecommendation;
  if ((bits & kVisionBit) && (bits & kLanguageBit)) return ModalityKind::kFusion;
  if (bits & kVisionBit) return ModalityKind::kVision;
  if (bits & kLanguageBit) return ModalityKind::kLanguage;
  return ModalityKind::kUnknown;
}

std::string HumanBytes(int64_t b) {
  if (b >= (int64_t{1} << 20)) return absl::StrCat(b / (int64_t{1} << 20), " MiB");
  if (b >= 1024) return absl::StrCat(b / 1024, " KiB");
  return absl::StrCat(b, " B");
}

}  // namespace

const char* PhaseName(PhaseKind p) {
  switch (p) {
    case PhaseKind::kNone: return "none";
    case PhaseKind::kPrefill: return "prefill";
    case PhaseKind::kDecode: return "decode";
  }
  return "?";
}

const char* ModalityName(ModalityKind m) {
  switch (m) {
    case ModalityKind::kUnknown: return "unknown";
    case ModalityKind::kVision: return "vision";
    case ModalityKind::kLanguage: return "language";
    case ModalityKind::kFusion: return "fusion";
    case ModalityKind::kRecommendation: return "recommendation";
  }
  return "?";
}

const char* PatternName(PatternKind p) {
  switch (p) {
    case PatternKind::kNone: return "none";
    case PatternKind::kAttention: return "attention";
    case PatternKind::kMlp: return "mlp";
    case PatternKind::kConvStack: return "conv_stack";
    case PatternKind::kEmbeddingLookup: return "embedding_lookup";
    case PatternKind::kNorm: return "norm";
    case PatternKind::kKvCacheAppend: return "kv_cache_append";
  }
  return "?";
}

const char* WorkloadName(WorkloadClass w) {
  switch (w) {
    case WorkloadClass::kUnknown: return "unknown";
    case WorkloadClass::kLlmPrefill: return "llm_prefill";
    case WorkloadClass::kLlmDecode: return "llm_decode";
    case WorkloadClass::kVisionCnn: return "vision_cnn";
    case WorkloadClass::kVisionTransformer: return "vision_transformer";
    case WorkloadClass::kTextEncoder: return "text_encoder";
    case WorkloadClass::kMultimodalFusion: return "multimodal_fusion";
    case WorkloadClass::kRecommender: return "recommender";
  }
  return "?";
}

std::string ModuleOfParameter(std::string_view name) {
  const size_t dot = name.rfind('.');
  return dot == std::string_view::npos ? std::string() : std::string(name.substr(0, dot));
}

GraphSemantics Analyze(const Graph& g, absl::Span<const BufferId> keep) {
  const size_t n_nodes = g.nodes().size();
  const size_t n_buffers = g.buffers().size();
  GraphSemantics s;
  s.module.assign(n_nodes, "");
  s.modality.assign(n_nodes, ModalityKind::kUnknown);
  s.pattern.assign(n_nodes, PatternKind::kNone);
  s.phase.assign(n_nodes, PhaseKind::kNone);
  const absl::flat_hash_set<BufferId> kept(keep.begin(), keep.end());

  std::vector<OpClass> op_class(g.num_ops());
  for (core::OpId op = 0; op < g.num_ops(); ++op) op_class[op] = Classify(BaseName(g.OpName(op)));
  auto cls = [&](NodeId n) { return op_class[g.node(n).op]; };

  // Data flow: predecessors (last writer of each input) and first consumer per node.
  std::vector<NodeId> last_writer(n_buffers, core::kNoNode);
  std::vector<std::vector<NodeId>> preds(n_nodes);
  std::vector<NodeId> first_consumer(n_nodes, core::kNoNode);
  std::vector<uint8_t> buffer_bits(n_buffers, 0);
  std::vector<uint8_t> node_bits(n_nodes, 0);
  // Which nodes read each buffer (for "is it read by attention later").
  std::vector<std::vector<NodeId>> readers(n_buffers);

  for (NodeId id = 0; id < n_nodes; ++id) {
    const Node& node = g.node(id);
    uint8_t bits = 0;
    for (const core::TensorRef* in : node.Inputs()) {
      if (in->buffer >= n_buffers) continue;
      readers[in->buffer].push_back(id);
      bits |= buffer_bits[in->buffer];
      const NodeId w = last_writer[in->buffer];
      if (w != core::kNoNode && w != id) {
        if (std::find(preds[id].begin(), preds[id].end(), w) == preds[id].end()) preds[id].push_back(w);
        if (first_consumer[w] == core::kNoNode) first_consumer[w] = id;
      }
    }
    switch (cls(id)) {
      case OpClass::kConv: bits |= kVisionBit; break;
      case OpClass::kEmbedding: bits |= kLanguageBit; break;
      case OpClass::kEmbeddingBag: bits |= kRecommendationBit; break;
      default: break;
    }
    node_bits[id] = bits;
    auto touch = [&](BufferId b) {
      if (b >= n_buffers) return;
      buffer_bits[b] |= bits;
      last_writer[b] = id;
    };
    for (const core::TensorRef& out : node.outputs) touch(out.buffer);
    for (BufferId b : node.writes) touch(b);
  }

  // Modality.
  uint8_t graph_bits = 0;
  for (NodeId id = 0; id < n_nodes; ++id) graph_bits |= node_bits[id];
  s.has_vision = graph_bits & kVisionBit;
  s.has_language = graph_bits & kLanguageBit;
  s.has_recommendation = graph_bits & kRecommendationBit;
  const ModalityKind graph_modality = FromBits(graph_bits);
  for (NodeId id = 0; id < n_nodes; ++id) {
    ModalityKind m = FromBits(node_bits[id]);
    // Ops before any modality source (a dense feature MLP, an allocation) belong to the
    // graph's modality when it has only one.
    if (m == ModalityKind::kUnknown && graph_modality != ModalityKind::kFusion) m = graph_modality;
    s.modality[id] = m;
  }

  // Module paths: parameters read, else scope, else data-flow neighbours.
  for (NodeId id = 0; id < n_nodes; ++id) {
    const Node& node = g.node(id);
    std::string from_param;
    for (const core::TensorRef* in : node.Inputs()) {
      if (in->buffer >= n_buffers) continue;
      const core::Buffer& b = g.buffer(in->buffer);
      // Named storages are a module's parameters or buffers (uploaded now or resident).
      if (!b.name.empty()) {
        from_param = ModuleOfParameter(b.name);
        break;
      }
    }
    const std::string& scope = g.ScopeName(node.scope);
    if (!from_param.empty()) {
      s.module[id] = scope.empty() || absl::StartsWith(from_param, scope)
                         ? from_param
                         : absl::StrCat(scope, ".", from_param);
    } else if (!scope.empty()) {
      s.module[id] = scope;
    } else {
      for (NodeId p : preds[id]) {
        if (!s.module[p].empty()) {
          s.module[id] = s.module[p];
          break;
        }
      }
    }
  }
  for (NodeId id = n_nodes; id-- > 0;) {  // allocations take their first consumer's module
    if (s.module[id].empty() && first_consumer[id] != core::kNoNode) {
      s.module[id] = s.module[first_consumer[id]];
    }
  }

  // Patterns.
  auto read_by_attention_later = [&](BufferId b, NodeId after) {
    for (NodeId r : readers[b]) {
      if (r > after && (cls(r) == OpClass::kAttention || cls(r) == OpClass::kMatmul)) return true;
    }
    return false;
  };
  absl::flat_hash_set<BufferId> cache_buffers;
  for (NodeId id = 0; id < n_nodes; ++id) {
    const Node& node = g.node(id);
    switch (cls(id)) {
      case OpClass::kAttention: {
        s.pattern[id] = PatternKind::kAttention;
        ++s.attention_ops;
        if (!node.args.empty() && node.args[0].kind == core::ArgKind::kTensor) {
          const core::Dims& q = node.args[0].tensors[0].sizes;
          if (q.size() >= 2) s.max_query_len = std::max(s.max_query_len, q[q.size() - 2]);
        }
        if (node.args.size() > 5 && node.args[5].kind == core::ArgKind::kBool && node.args[5].i) {
          s.causal = true;
        }
        for (size_t a = 1; a <= 2 && a < node.args.size(); ++a) {  // key, value
          if (node.args[a].kind != core::ArgKind::kTensor) continue;
          const BufferId b = node.args[a].tensors[0].buffer;
          if (b < n_buffers && (kept.contains(b) || g.buffer(b).kind == BufferKind::kResident)) {
            cache_buffers.insert(b);
          }
        }
        break;
      }
      case OpClass::kSoftmax: {
        bool from_mm = false, to_mm = false;
        for (NodeId p : preds[id]) from_mm |= cls(p) == OpClass::kMatmul;
        const NodeId c = first_consumer[id];
        to_mm = c != core::kNoNode && cls(c) == OpClass::kMatmul;
        if (from_mm && to_mm) {
          s.pattern[id] = s.pattern[c] = PatternKind::kAttention;
          for (NodeId p : preds[id]) {
            if (cls(p) == OpClass::kMatmul) s.pattern[p] = PatternKind::kAttention;
          }
          ++s.attention_ops;
          const core::Dims& scores = node.outputs.empty() ? core::Dims() : node.outputs[0].sizes;
          if (scores.size() >= 2) s.max_query_len = std::max(s.max_query_len, scores[scores.size() - 2]);
        }
        break;
      }
      case OpClass::kActivation: {
        bool from_linear = false;
        for (NodeId p : preds[id]) from_linear |= cls(p) == OpClass::kLinear;
        const NodeId c = first_consumer[id];
        if (from_linear && c != core::kNoNode && cls(c) == OpClass::kLinear) {
          s.pattern[id] = s.pattern[c] = PatternKind::kMlp;
          for (NodeId p : preds[id]) {
            if (cls(p) == OpClass::kLinear) s.pattern[p] = PatternKind::kMlp;
          }
        }
        break;
      }
      case OpClass::kConv:
        s.pattern[id] = PatternKind::kConvStack;
        break;
      case OpClass::kEmbedding:
      case OpClass::kEmbeddingBag:
        s.pattern[id] = PatternKind::kEmbeddingLookup;
        break;
      case OpClass::kMask:
        s.causal = true;
        break;
      case OpClass::kCat: {
        bool onto_resident = false;
        for (const core::TensorRef* in : node.Inputs()) {
          onto_resident |= in->buffer < n_buffers && g.buffer(in->buffer).kind == BufferKind::kResident;
        }
        if (onto_resident && !node.outputs.empty() &&
            read_by_attention_later(node.outputs[0].buffer, id)) {
          s.pattern[id] = PatternKind::kKvCacheAppend;
          cache_buffers.insert(node.outputs[0].buffer);
        }
        break;
      }
      case OpClass::kCopy: {
        for (BufferId b : node.writes) {
          if (b >= n_buffers) continue;
          const bool cache_like = g.buffer(b).kind == BufferKind::kResident || kept.contains(b);
          if (cache_like && read_by_attention_later(b, id)) {
            s.pattern[id] = PatternKind::kKvCacheAppend;
            cache_buffers.insert(b);
          }
        }
        break;
      }
      default:
        break;
    }
  }
  // Norms, activations and pools that follow a convolution belong to the conv stack.
  for (NodeId id = 0; id < n_nodes; ++id) {
    const OpClass c = cls(id);
    if (s.pattern[id] != PatternKind::kNone) continue;
    if (c == OpClass::kNorm || c == OpClass::kActivation || c == OpClass::kPool) {
      bool after_conv = false;
      for (NodeId p : preds[id]) after_conv |= s.pattern[p] == PatternKind::kConvStack;
      s.pattern[id] = after_conv ? PatternKind::kConvStack
                                 : (c == OpClass::kNorm ? PatternKind::kNorm : PatternKind::kNone);
    }
  }
  s.kv_cache.assign(cache_buffers.begin(), cache_buffers.end());
  std::sort(s.kv_cache.begin(), s.kv_cache.end());
  for (BufferId b : s.kv_cache) s.kv_cache_bytes += g.buffer(b).nbytes();

  // Phase: an LLM step is attention over a language stream with a KV cache or a causal
  // mask; decode when queries have length 1.
  const bool language_attention = s.attention_ops > 0 && s.has_language && !s.has_vision;
  if (language_attention && s.max_query_len == 1 && !s.kv_cache.empty()) {
    s.phase_of_graph = PhaseKind::kDecode;
  } else if (language_attention && s.max_query_len > 1 && (s.causal || !s.kv_cache.empty())) {
    s.phase_of_graph = PhaseKind::kPrefill;
  }
  if (s.phase_of_graph != PhaseKind::kNone) {
    std::fill(s.phase.begin(), s.phase.end(), s.phase_of_graph);
  }

  if (s.phase_of_graph == PhaseKind::kDecode) {
    s.workload = WorkloadClass::kLlmDecode;
  } else if (s.phase_of_graph == PhaseKind::kPrefill) {
    s.workload = WorkloadClass::kLlmPrefill;
  } else if (s.has_vision && s.has_language) {
    s.workload = WorkloadClass::kMultimodalFusion;
  } else if (s.has_recommendation) {
    s.workload = WorkloadClass::kRecommender;
  } else if (s.has_vision && s.attention_ops > 0) {
    s.workload = WorkloadClass::kVisionTransformer;
  } else if (s.has_vision) {
    s.workload = WorkloadClass::kVisionCnn;
  } else if (s.has_language && s.attention_ops > 0) {
    s.workload = WorkloadClass::kTextEncoder;
  }
  return s;
}

std::string GraphSemantics::Summary(const Graph& g) const {
  std::vector<std::string> modalities;
  if (has_vision) modalities.push_back("vision");
  if (has_language) modalities.push_back("language");
  if (has_recommendation) modalities.push_back("recommendation");
  // Top-level modules in first-seen order ("vision", "language", "fusion", ...).
  std::vector<std::string> tops;
  for (const std::string& m : module) {
    std::string top = m.substr(0, m.find('.'));
    if (!top.empty() && std::find(tops.begin(), tops.end(), top) == tops.end()) tops.push_back(top);
  }
  return absl::StrCat(WorkloadName(workload), ": ", g.nodes().size(), " ops, ", attention_ops,
                      " attention", attention_ops ? absl::StrCat(" (query ", max_query_len, causal ? ", causal)" : ")") : "",
                      "; phase ", PhaseName(phase_of_graph), "; modalities [",
                      absl::StrJoin(modalities, ", "), "]; kv cache ", kv_cache.size(), " buffers (",
                      HumanBytes(kv_cache_bytes), "); modules [", absl::StrJoin(tops, ", "), "]");
}

}  // namespace genie::semantic
