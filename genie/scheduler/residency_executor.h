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

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
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

enum class StorageClass : uint8_t { kWeight = 0, kKvCache = 1, kActivation = 2 };
const char* StorageClassName(StorageClass c);

// Bytes the client shipped to and from the node, by what they are.
struct DataTraffic {
  int64_t up[3] = {};    // by StorageClass
  int64_t down[3] = {};  // by StorageClass
  int64_t total() const { return up[0] + up[1] + up[2] + down[0] + down[1] + down[2]; }
  int64_t of(StorageClass c) const { return up[static_cast<int>(c)] + down[static_cast<int>(c)]; }
  std::string ToString() const;  // "weights 1.2 MiB up, KV cache 0 B, activations 24 KiB up / 8 KiB down"
};

class ResidencyExecutor {
 public:
  ResidencyExecutor(std::shared_ptr<core::Executor> node, ShipPolicy policy)
      : node_(std::move(node)), policy_(policy) {}

  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& request,
                                              const semantic::GraphSemantics& semantics);
  std::string Describe() const { return node_->Describe(); }
  // Waits for the node's runs accepted without waiting (core::Executor::Drain).
  absl::Status Drain() { return node_->Drain(); }
  // Whether a run without outputs returns before the node ran it: only when nothing kept
  // comes back to the client (no kept buffer of a shipped class turns into an output).
  bool AcceptsWithoutWaiting() const {
    return !policy_.weights && !policy_.kv_cache && !policy_.activations &&
           node_->AcceptsWithoutWaiting();
  }
  // Whether host data goes to the node at once (core::Executor::UploadsAhead): only when
  // activations stay there (a shipped one would come straight back to the client).
  bool UploadsAhead(size_t nbytes) const {
    return !policy_.activations && node_->UploadsAhead(nbytes);
  }
  // The node's staging memory (core::Executor::Staging: its shared tensor pool, if any).
  core::HostBuffer Staging(size_t nbytes) { return node_->Staging(nbytes); }
  const ShipPolicy& policy() const { return policy_; }
  int64_t client_held_bytes() const;  // what the client holds on the node's behalf
  DataTraffic traffic() const;
  size_t tracked_storages() const { return class_.size(); }
  // The class storage `handle` was given, if it has one yet.
  std::optional<StorageClass> class_of(uint64_t handle) const {
    auto it = class_.find(handle);
    if (it == class_.end()) return std::nullopt;
    return it->second;
  }

 private:
  bool Ships(StorageClass c) const;
  // The class of buffer `b` of `g`: as first seen by handle, else by its kind.
  StorageClass ClassOf(const core::Graph& g, core::BufferId b) const;

  std::shared_ptr<core::Executor> node_;
  ShipPolicy policy_;
  absl::flat_hash_map<uint64_t, StorageClass> class_;      // by storage handle
  absl::flat_hash_map<uint64_t, core::HostBytes> held_;    // client copies, by handle
  std::atomic<int64_t> up_[3] = {};    // read by other threads while runs go on
  std::atomic<int64_t> down_[3] = {};
};

}  // namespace genie::scheduler

#endif  // GENIE_SCHEDULER_RESIDENCY_EXECUTOR_H_
