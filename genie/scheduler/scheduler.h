// File: genie/scheduler/scheduler.h
// Turns a scheduler policy into the executor that places and runs a graph. Closed:
// a policy without a specialization here fails to compile with a sentence.
//
//   scheduler::ScheduledExecutor<scheduler::BlindScheduler> blind({node});
//   scheduler::ScheduledExecutor<scheduler::SemanticScheduler<
//       scheduler::ResidentWeights, scheduler::KvCacheColocation,
//       scheduler::JustInTimeTransfers>> smart({node});
//   smart.Execute(request, semantic::Analyze(*request.graph, request.keep));
//
//   // Across several nodes (vision on node 0, language on node 1, ...):
//   scheduler::ScheduledExecutor<scheduler::SemanticScheduler<
//       scheduler::ResidentWeights, scheduler::KvCacheColocation,
//       scheduler::JustInTimeTransfers, scheduler::ModalityPlacement>> placed({n0, n1});
//   placed.placement().node_to_node_bytes;
//
//   // Decode steps of several streams in one graph run their weight matmuls once:
//   scheduler::ScheduledExecutor<scheduler::SemanticScheduler<
//       scheduler::ResidentWeights, scheduler::KvCacheColocation,
//       scheduler::JustInTimeTransfers, scheduler::DecodeBatching>> batched({node});
//   batched.decode_batching().batched_runs;
#ifndef GENIE_SCHEDULER_SCHEDULER_H_
#define GENIE_SCHEDULER_SCHEDULER_H_

#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "genie/core/executor.h"
#include "genie/core/type_traits.h"
#include "genie/scheduler/decode_batching.h"
#include "genie/scheduler/placement_executor.h"
#include "genie/scheduler/policies.h"
#include "genie/scheduler/residency_executor.h"
#include "genie/semantic/semantics.h"

namespace genie::scheduler {

template <class O>
inline constexpr bool is_optimization_v =
    std::is_same_v<O, ResidentWeights> || std::is_same_v<O, KvCacheColocation> ||
    std::is_same_v<O, JustInTimeTransfers> || std::is_same_v<O, ModalityPlacement> ||
    std::is_same_v<O, DecodeBatching>;

template <class S>
struct is_scheduler_policy : std::false_type {};
template <>
struct is_scheduler_policy<BlindScheduler> : std::true_type {};
template <class... Os>
struct is_scheduler_policy<SemanticScheduler<Os...>> : std::bool_constant<(is_optimization_v<Os> && ...)> {};
template <class S>
inline constexpr bool is_scheduler_policy_v = is_scheduler_policy<S>::value;

template <class S>
class ScheduledExecutor {
  static_assert(core::dependent_false<S>::value,
                "no executor for this scheduler policy: use scheduler::BlindScheduler or "
                "scheduler::SemanticScheduler<optimizations...>");
};

template <>
class ScheduledExecutor<BlindScheduler> {
 public:
  explicit ScheduledExecutor(std::vector<std::shared_ptr<core::Executor>> nodes)
      : residency_(nodes.at(0), ShipPolicy{true, true, true}) {}

  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& request,
                                              const semantic::GraphSemantics& semantics) {
    return residency_.Execute(request, semantics);
  }
  std::string Describe() const { return absl::StrCat("blind on ", residency_.Describe()); }
  absl::Status Drain() { return residency_.Drain(); }
  bool AcceptsWithoutWaiting() const { return residency_.AcceptsWithoutWaiting(); }
  // The baseline ships every buffer with the segment that reads it.
  bool UploadsAhead(size_t) const { return false; }
  core::HostBuffer Staging(size_t nbytes) { return residency_.Staging(nbytes); }
  DataTraffic traffic() const { return residency_.traffic(); }
  PlacementStats placement() const { return PlacementStats{}; }  // one node: nothing placed
  PlacementExecutor* placer() { return nullptr; }
  DecodeBatchingStats decode_batching() const { return DecodeBatchingStats{}; }  // never batches

 private:
  ResidencyExecutor residency_;
};

template <class... Os>
class ScheduledExecutor<SemanticScheduler<Os...>> {
  static_assert((is_optimization_v<Os> && ...),
                "SemanticScheduler<...> takes scheduler optimizations only (ResidentWeights, "
                "KvCacheColocation, JustInTimeTransfers, ModalityPlacement, DecodeBatching)");
  template <class O>
  static constexpr bool kHas = (std::is_same_v<O, Os> || ...);
  template <class O>
  static constexpr int kCount = (int{std::is_same_v<O, Os>} + ...);
  static_assert(((kCount<Os> == 1) && ...),
                "SemanticScheduler<...> lists an optimization twice: name each once");
  static_assert(!kHas<ModalityPlacement> || kHas<JustInTimeTransfers>,
                "ModalityPlacement keeps intermediates on nodes between the parts of a graph: "
                "compose it with JustInTimeTransfers");

 public:
  // What does not stay resident ships, as in the blind baseline.
  static constexpr ShipPolicy kPolicy{!kHas<ResidentWeights>, !kHas<KvCacheColocation>,
                                      !kHas<JustInTimeTransfers>};

  // With ModalityPlacement and more than one node, graphs are placed across all of them;
  // otherwise everything runs on the first node.
  explicit ScheduledExecutor(std::vector<std::shared_ptr<core::Executor>> nodes)
      : residency_(nodes.at(0), kPolicy) {
    if constexpr (kHas<ModalityPlacement>) {
      if (nodes.size() > 1) placed_ = std::make_unique<PlacementExecutor>(std::move(nodes), kPolicy);
    }
  }

  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& request,
                                              const semantic::GraphSemantics& semantics) {
    auto run = [this](const core::ExecuteRequest& r, const semantic::GraphSemantics& s) {
      if (placed_ != nullptr) return placed_->Execute(r, s);
      return residency_.Execute(r, s);
    };
    if constexpr (kHas<DecodeBatching>) return batcher_.Execute(request, semantics, run);
    return run(request, semantics);
  }
  std::string Describe() const {
    return absl::StrCat("semantic on ", placed_ != nullptr ? placed_->Describe() : residency_.Describe());
  }
  // Waits for the nodes' runs accepted without waiting (core::Executor::Drain).
  absl::Status Drain() { return placed_ != nullptr ? placed_->Drain() : residency_.Drain(); }
  // Placement waits for each part, and decode batching may hold a step for others to join
  // it; one node on its own may accept runs without waiting.
  bool AcceptsWithoutWaiting() const {
    return !kHas<DecodeBatching> && placed_ == nullptr && residency_.AcceptsWithoutWaiting();
  }
  // Host data goes ahead to the one node that runs everything, never to one of several
  // (where it is needed is known only once the graph reading it is placed).
  bool UploadsAhead(size_t nbytes) const {
    return AcceptsWithoutWaiting() && residency_.UploadsAhead(nbytes);
  }
  // What decode batching did (zeros without DecodeBatching).
  DecodeBatchingStats decode_batching() const {
    if constexpr (kHas<DecodeBatching>) return batcher_.stats();
    return DecodeBatchingStats{};
  }
  DataTraffic traffic() const { return placed_ != nullptr ? placed_->traffic() : residency_.traffic(); }
  // Staging memory of the first node (where unplaced graphs run; a run placed elsewhere
  // sends such an upload through its own node's path).
  core::HostBuffer Staging(size_t nbytes) { return residency_.Staging(nbytes); }
  // Where modules ran and what moved node to node (empty with one node).
  PlacementStats placement() const { return placed_ != nullptr ? placed_->stats() : PlacementStats{}; }
  // The multi-node executor (Submit/Wait keep several runs in flight), or null with one node.
  PlacementExecutor* placer() { return placed_.get(); }

 private:
  ResidencyExecutor residency_;
  std::unique_ptr<PlacementExecutor> placed_;
  DecodeBatcher batcher_;  // used with DecodeBatching only
};

}  // namespace genie::scheduler

#endif  // GENIE_SCHEDULER_SCHEDULER_H_
