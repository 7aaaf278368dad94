// File: genie/scheduler/residency_executor.h
// Decides what stays on the node between runs and what the client holds instead.
// Every storage that outlives a run falls in one class, fixed when first seen:
// weights (parameters), KV cache (found by semantic analysis), or other activations.
// A class that "ships" is held by the client: downloaded after each run that writes it
// and uploaded to each run that reads it; the node keeps nothing of it.
//
//   ShipPolicy blind{.weights = true, .kv_cache = true, .activations = true};  // baseline
//   ResidencyExecutor exec(node, ShipPolicy{});   // ships nothing: all resident
//   exec.Execute(request, semantics);
#ifndef GENIE_SCHEDULER_RESIDENCY_EXECUTOR_H_
#define GENIE_SCHEDULER_RESIDENCY_EXECUTOR_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "genie/core/executor.h"
#include "genie/semantic/semantics.h"

namespace genie::scheduler {

struct ShipPolicy {
  bool weights = false;
  bool kv_cache = false;
  bool activations = false;
};

enum class StorageClass : uint8_t { kWeight, kKvCache, kActivation };

class ResidencyExecutor {
 public:
  ResidencyExecutor(std::shared_ptr<core::Executor> node, ShipPolicy policy)
      : node_(std::move(node)), policy_(policy) {}

  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& request,
                                              const semantic::GraphSemantics& semantics);
  std::string Describe() const { return node_->Describe(); }
  const ShipPolicy& policy() const { return policy_; }
  int64_t client_held_bytes() const;  // what the client holds on the node's behalf

 private:
  bool Ships(StorageClass c) const;

  std::shared_ptr<core::Executor> node_;
  ShipPolicy policy_;
  absl::flat_hash_map<uint64_t, StorageClass> class_;      // by storage handle
  absl::flat_hash_map<uint64_t, core::HostBytes> held_;    // client copies, by handle
};

}  // namespace genie::scheduler

#endif  // GENIE_SCHEDULER_RESIDENCY_EXECUTOR_H_
