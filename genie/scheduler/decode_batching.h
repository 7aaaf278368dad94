// File: genie/scheduler/decode_batching.h
// Phase-aware batching of LLM decode steps: when one graph holds the decode steps of
// several generation streams of the same model (one client serving N streams captures
// each stream's step, then reads their logits back in one run), the streams' weight
// matmuls run once over their stacked rows, so each weight is read once per step for all
// streams; each stream's own parts (its KV-cache append, its attention over its own cache,
// its positions and masks) stay per stream, unchanged.
//
// What is batched is recognised from the graph, never from hints:
//   - the graph is an LLM decode step (semantic::Analyze: queries of length 1 over a KV
//     cache); prefill and every other class run as captured;
//   - it splits into N >= 2 streams: the connected parts of its data flow once read-only
//     weights and inputs are left out; each is the same op sequence (ops, arguments,
//     views, scopes) over its own buffers, reading the same weights at the same places,
//     and each has its own decode attention and KV-cache append;
//   - the only resident buffers written are KV-cache appends that rewrite the same values
//     when run again (index_copy_, copy_, index_put_ without accumulate, none reading the
//     buffer it writes but as its destination), so a failed batched run can be retried
//     stream by stream;
//   - batched: aten::matmul / aten::mm / aten::linear whose weight is the same resident or
//     parameter matrix in every stream and whose activation has at least two dimensions
//     (stacking along dim 0 keeps each row's product). Its N activations are concatenated
//     along dim 0 (aten::cat), the op runs once, and each stream reads its rows of the
//     result as a view (an offset into the batched buffer).
// Anything else (one stream, streams that differ, another op writing a resident buffer,
// no weight matmul) is refused with the reason, and the graph runs as captured.
//
//   absl::StatusOr<BatchedDecode> b = BatchDecodeStreams(graph, request.keep, semantics);
//   if (b.ok()) {   // b->graph runs all streams; its outputs are graph.outputs() in order
//     std::cout << b->streams << " streams, " << b->batched_ops << " ops batched\n";
//   } else {
//     std::cout << b.status().message();  // "one decode stream in the graph: nothing to batch"
//   }
//
//   // In a deployment: compose scheduler::DecodeBatching (SemanticScheduler<...>); its
//   // DecodeBatcher caches the rewrite per program fingerprint and keeps the stats.
#ifndef GENIE_SCHEDULER_DECODE_BATCHING_H_
#define GENIE_SCHEDULER_DECODE_BATCHING_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "genie/core/executor.h"
#include "genie/core/graph.h"
#include "genie/semantic/semantics.h"

namespace genie::scheduler {

// One decode graph rewritten to batch its streams.
struct BatchedDecode {
  core::Graph graph;                 // all streams, weight matmuls batched; Validate()d
  std::vector<core::BufferId> keep;  // the request's keep, in this graph's ids
  // Per buffer of the captured graph: its id here (kNoBuffer for a batched op's output
  // that only lives inside the batched buffer now).
  std::vector<core::BufferId> new_of_old;
  semantic::GraphSemantics semantics;  // of `graph` (the scheduler classifies storages by it)
  int streams = 0;                     // N
  int batched_ops = 0;                 // ops run once for all streams (per step)
  int ops_per_stream = 0;
};

// Rewrites `graph` (a decode graph with `keep` surviving it, analysed as `semantics`) so
// its streams' weight matmuls run once; FailedPrecondition saying why when it cannot.
absl::StatusOr<BatchedDecode> BatchDecodeStreams(const core::Graph& graph,
                                                 absl::Span<const core::BufferId> keep,
                                                 const semantic::GraphSemantics& semantics);

// What decode batching did, since the start.
struct DecodeBatchingStats {
  int64_t decode_graphs = 0;           // decode graphs seen
  int64_t batched_runs = 0;            // of those, run batched
  int64_t streams_batched = 0;         // streams in those runs (sum of batch sizes)
  int64_t ops_batched = 0;             // ops run once for all streams, summed over batched runs
  int64_t not_batched = 0;             // decode graphs run as captured (refused)
  int64_t fallbacks = 0;               // batched runs that failed and ran again unbatched
  int64_t other_graphs = 0;            // prefill and other non-decode graphs (never batched)
  std::map<int, int64_t> batch_sizes;  // N -> batched runs
  std::string last_refusal;            // why the last refused decode graph was not batched
  std::string last_fallback;           // the error of the last batched run that failed
  std::string ToString() const;        // "3 of 4 decode steps batched (sizes 4x3), ..."
};

// The batching stage of a scheduler: rewrites decode graphs (cached per fingerprint) and
// runs them through `run`; everything else goes to `run` unchanged. A batched run that
// fails is run again as captured (its streams one after another in one graph, as without
// batching), so batching never changes what a run returns. When that run succeeds, the
// batched graph is to blame and the fingerprint is not batched again (its plan becomes a
// refusal saying why), unless the batched run's error is one a retry can outlive (a lost
// connection or a deadline: kUnavailable, kDeadlineExceeded; not kResourceExhausted, which
// a larger batched graph can hit every time); the fingerprint is then tried batched again
// next time, and refused after kMaxTransientFailures of those in a row (a success resets the
// count). A request whose keep differs from its cached plan's, or whose graph is not the
// plan's, runs as captured. Thread-safe.
class DecodeBatcher {
 public:
  using RunFn = absl::FunctionRef<absl::StatusOr<core::ExecuteResult>(
      const core::ExecuteRequest&, const semantic::GraphSemantics&)>;

  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& request,
                                              const semantic::GraphSemantics& semantics, RunFn run);
  DecodeBatchingStats stats() const;

 private:
  struct Plan {
    absl::StatusOr<BatchedDecode> batched = absl::UnknownError("unset");
    std::vector<core::BufferId> keep;    // the request's keep it was made for
    mutable int transient_failures = 0;  // batched runs in a row that failed transiently (mu_)
  };
  std::shared_ptr<const Plan> PlanFor(const core::ExecuteRequest& request,
                                      const semantic::GraphSemantics& semantics);

  static constexpr size_t kMaxPlans = 256;
  static constexpr int kMaxTransientFailures = 3;
  static bool IsTransient(const absl::Status& status);
  mutable std::mutex mu_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<const Plan>> plans_;  // by fingerprint
  DecodeBatchingStats stats_;
};

}  // namespace genie::scheduler

#endif  // GENIE_SCHEDULER_DECODE_BATCHING_H_
