// File: genie/semantic/semantics.h
// Semantic analysis of a captured graph: what each op means to the application.
// Recognised from the graph itself, never from user hints:
//   - module path of each op (from the dotted names of the parameters it reads, else
//     the user's Scope, else its data-flow neighbours);
//   - modality by lineage: convolutions start vision, token embeddings language,
//     embedding bags recommendation; where vision and language meet is fusion;
//   - structural patterns: attention, MLP, conv stack, embedding lookup, norm, KV-cache
//     append (a cat onto, or a write into, a resident buffer that attention reads);
//   - LLM phase: decode when attention queries have length 1 and the KV cache grows;
//     prefill when queries are longer and causal (is_causal, triu/tril masks) or the
//     keys/values outlive the graph as a cache;
//   - one workload class per graph; anything unrecognised is kUnknown, which gets the
//     default policy.
//
//   semantic::GraphSemantics s = semantic::Analyze(graph, request.keep);
//   if (s.workload == semantic::WorkloadClass::kLlmDecode) { ... }
//   std::cout << s.Summary(graph);
//
// The annotation tags (ModulePath, Phase, Modality, Pattern) plug into
// core::AnnotatedGraph; the analyzer policies (ModulePathAnalyzer, PhaseDetector,
// ModalityDetector, PatternRecognizer, WorkloadClassifier) copy an analysis into the
// annotations a deployment composed.
#ifndef GENIE_SEMANTIC_SEMANTICS_H_
#define GENIE_SEMANTIC_SEMANTICS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/types/span.h"
#include "genie/core/graph.h"

namespace genie::semantic {

enum class PhaseKind : uint8_t { kNone = 0, kPrefill = 1, kDecode = 2 };
enum class ModalityKind : uint8_t {
  kUnknown = 0,
  kVision = 1,
  kLanguage = 2,
  kFusion = 3,
  kRecommendation = 4,
};
enum class PatternKind : uint8_t {
  kNone = 0,
  kAttention = 1,
  kMlp = 2,
  kConvStack = 3,
  kEmbeddingLookup = 4,
  kNorm = 5,
  kKvCacheAppend = 6,
};
enum class WorkloadClass : uint8_t {
  kUnknown = 0,
  kLlmPrefill = 1,
  kLlmDecode = 2,
  kVisionCnn = 3,
  kVisionTransformer = 4,
  kTextEncoder = 5,
  kMultimodalFusion = 6,
  kRecommender = 7,
};

const char* PhaseName(PhaseKind p);
const char* ModalityName(ModalityKind m);
const char* PatternName(PatternKind p);
const char* WorkloadName(WorkloadClass w);

// Annotation tags for core::AnnotatedGraph.
struct ModulePath {
  using value_type = std::string;
  static constexpr std::string_view kName = "module";
};
struct Phase {
  using value_type = PhaseKind;
  static constexpr std::string_view kName = "phase";
  static constexpr value_type kDefault = PhaseKind::kNone;
  static std::string ToString(PhaseKind p) { return PhaseName(p); }
};
struct Modality {
  using value_type = ModalityKind;
  static constexpr std::string_view kName = "modality";
  static constexpr value_type kDefault = ModalityKind::kUnknown;
  static std::string ToString(ModalityKind m) { return ModalityName(m); }
};
struct Pattern {
  using value_type = PatternKind;
  static constexpr std::string_view kName = "pattern";
  static constexpr value_type kDefault = PatternKind::kNone;
  static std::string ToString(PatternKind p) { return PatternName(p); }
};

struct GraphSemantics {
  // Per node, indexed by NodeId.
  std::vector<std::string> module;
  std::vector<ModalityKind> modality;
  std::vector<PatternKind> pattern;
  std::vector<PhaseKind> phase;

  // Per graph.
  WorkloadClass workload = WorkloadClass::kUnknown;
  PhaseKind phase_of_graph = PhaseKind::kNone;
  int64_t attention_ops = 0;
  int64_t max_query_len = 0;            // longest attention query seen (0: no attention)
  bool causal = false;                  // a causal mask or is_causal attention
  std::vector<core::BufferId> kv_cache;  // resident buffers the graph appends to / writes
  int64_t kv_cache_bytes = 0;
  bool has_vision = false, has_language = false, has_recommendation = false;

  // "llm_decode: 36 attention ops, query 1, kv cache 4 buffers (1.5 MiB); modules: ..."
  std::string Summary(const core::Graph& graph) const;
};

// Analyzes `graph`. `keep` lists buffers that outlive it (core::ExecuteRequest::keep):
// keys and values kept after a prefill are how a KV cache is born.
GraphSemantics Analyze(const core::Graph& graph, absl::Span<const core::BufferId> keep = {});

// The module an op belongs to, from a parameter name: "enc.0.fc1.weight" -> "enc.0.fc1".
std::string ModuleOfParameter(std::string_view parameter_name);

// ---- Analyzer policies: copy an analysis into the annotations a deployment composed.
// Each is a tag with kName and a static Annotate(AnnotatedGraph&, const GraphSemantics&).
// An analyzer whose annotation the deployment did not compose fails to compile.

// Copies one per-node column of the analysis into annotation A.
template <class A, const std::vector<typename A::value_type> GraphSemantics::*kColumn>
struct ColumnAnalyzer {
  static constexpr std::string_view kName = A::kName;
  template <class G>
  static void Annotate(G& g, const GraphSemantics& s) {
    static_assert(G::template Has<A>(),
                  "this analyzer writes an annotation the deployment did not compose (the A of "
                  "ColumnAnalyzer<A, ...>): add it to the deployment's Annotations<...>");
    const auto& column = s.*kColumn;
    for (core::NodeId n = 0; n < column.size(); ++n) g.template Set<A>(n, column[n]);
  }
};

using ModulePathAnalyzer = ColumnAnalyzer<ModulePath, &GraphSemantics::module>;
using PhaseDetector = ColumnAnalyzer<Phase, &GraphSemantics::phase>;
using ModalityDetector = ColumnAnalyzer<Modality, &GraphSemantics::modality>;
using PatternRecognizer = ColumnAnalyzer<Pattern, &GraphSemantics::pattern>;

// Graph-level: the class lives in GraphSemantics::workload; no per-node column.
struct WorkloadClassifier {
  static constexpr std::string_view kName = "workload";
  template <class G>
  static void Annotate(G&, const GraphSemantics&) {}
};

}  // namespace genie::semantic

#endif  // GENIE_SEMANTIC_SEMANTICS_H_
