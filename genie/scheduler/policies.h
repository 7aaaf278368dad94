// File: genie/scheduler/policies.h
// Scheduler policy tags: only tags and tiny constexpr settings live here.
//
//   using Blind = genie::scheduler::BlindScheduler;               // the baseline
//   using Smart = genie::scheduler::SemanticScheduler<
//       genie::scheduler::ResidentWeights, genie::scheduler::KvCacheColocation>;
//   using Batched = genie::scheduler::SemanticScheduler<        // + decode streams batched
//       genie::scheduler::ResidentWeights, genie::scheduler::KvCacheColocation,
//       genie::scheduler::DecodeBatching>;
#ifndef GENIE_SCHEDULER_POLICIES_H_
#define GENIE_SCHEDULER_POLICIES_H_

namespace genie::scheduler {

// Semantics-blind remoting, like API remoting (rCUDA-style) at segment granularity:
// nothing stays on a node between runs; every input of a segment (weights, KV cache,
// activations) is shipped to the node and every surviving tensor is shipped back.
// Every claim Genie makes is measured against this policy.
struct BlindScheduler {
  static constexpr const char* kName = "blind";
};

// Optimizations a SemanticScheduler composes.
struct ResidentWeights {  // parameters uploaded once, then resident
  static constexpr const char* kName = "resident_weights";
};
struct KvCacheColocation {  // the KV cache lives where decode runs and never travels
  static constexpr const char* kName = "kv_cache_colocation";
};
struct JustInTimeTransfers {  // only live inputs move; intermediates never leave a node
  static constexpr const char* kName = "just_in_time_transfers";
};

// Places a graph across several nodes by its semantics (genie/scheduler/placement.h):
// vision and language modules on their own nodes, fusion where its larger inputs are, a
// KV cache with its attention; tensors that cross nodes go node to node, never through
// the client. With one node it changes nothing. Needs JustInTimeTransfers (intermediates
// stay on nodes between the parts of a graph).
struct ModalityPlacement {
  static constexpr const char* kName = "modality_placement";
};

// Phase-aware batching (genie/scheduler/decode_batching.h): a decode graph that holds the
// steps of several generation streams of one model runs their weight matmuls once over the
// stacked rows of all streams; each stream's KV-cache append and attention stay its own.
// Prefill and other graphs run as captured. It rewrites the graph before the other
// optimizations see it, so it composes with any of them.
struct DecodeBatching {
  static constexpr const char* kName = "decode_batching";
};

template <class... Optimizations>
struct SemanticScheduler {
  static constexpr const char* kName = "semantic";
};

}  // namespace genie::scheduler

#endif  // GENIE_SCHEDULER_POLICIES_H_
