// File: genie/core/executor.h
// The seam between capture and execution: what the frontend hands over when a captured
// graph must run, and what comes back. No libtorch: data travels as bytes, so the same
// request runs in process (runtime::Interpreter on ATen) or on a remote node.
//
//   core::ExecuteRequest req;
//   req.graph = &graph;
//   req.fingerprint = graph.Fingerprint();
//   req.uploads.push_back({weight_buffer_id, HostBytes::Borrow(ptr, nbytes, owner)});
//   req.keep = {kv_cache_buffer_id};           // stays resident after the run
//   absl::StatusOr<core::ExecuteResult> res = executor.Execute(req);
//   // res->outputs[i] holds graph.outputs()[i] as contiguous bytes.
//
// Residency: a buffer of kind kResident is found by its handle among the buffers an
// earlier Execute kept. After a run, each buffer in `keep` is kept under its handle
// (replacing what that handle held). `release` names handles to forget once the run is
// over: a storage that died while this graph was captured may still be read by it.
#ifndef GENIE_CORE_EXECUTOR_H_
#define GENIE_CORE_EXECUTOR_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "genie/core/graph.h"

namespace genie::core {

// Contiguous bytes of a buffer or view, with whatever keeps them alive.
struct HostBytes {
  const void* data = nullptr;
  size_t nbytes = 0;
  std::shared_ptr<const void> owner;  // keeps `data` valid; may be null for borrowed data
  // The bytes are this result's alone (nothing else reads or writes them while `owner`
  // lives), so a receiver may alias them instead of copying. An executor whose outputs may
  // share memory with its own state (the in-process interpreter) leaves it false.
  bool exclusive = false;

  static HostBytes Owned(std::string bytes) {
    auto holder = std::make_shared<const std::string>(std::move(bytes));
    return HostBytes{holder->data(), holder->size(), holder};
  }
};

// Writable host memory an executor lends for data to be uploaded later (Executor::Staging).
struct HostBuffer {
  void* data = nullptr;
  size_t nbytes = 0;
  std::shared_ptr<void> owner;  // the memory stays valid while it lives
  bool shared = false;          // the node reads the bytes where they are (a shared pool)
};

// Where an executor writes one output (ExecuteRequest::output_to).
struct HostDestination {
  void* data = nullptr;
  size_t nbytes = 0;
};

struct Upload {
  BufferId buffer = kNoBuffer;  // a kHostInput or kParameter buffer of the graph
  HostBytes bytes;              // the buffer's whole storage, buffer.nbytes() bytes
  // The bytes are the executor's to read and write until the run's tensors are freed (a
  // node's upload arena): a CPU executor may compute on them in place instead of copying
  // them into a tensor of its own. Buffers the run keeps resident are still copied out.
  bool in_place = false;
};

struct ExecuteRequest {
  const Graph* graph = nullptr;
  // Structural identity of `graph` (Graph::Fingerprint or the capture cache's chain):
  // an executor may reuse the program it prepared for an equal fingerprint.
  uint64_t fingerprint = 0;
  std::vector<Upload> uploads;
  std::vector<BufferId> keep;     // buffers whose final contents stay resident by handle
  std::vector<uint64_t> release;  // handles to forget after this run
  // Empty, or one per graph->outputs(): an entry with data set and nbytes equal to the
  // output's size receives that output's bytes, and ExecuteResult::outputs[i] then points
  // there (a node writes outputs straight into a client's shared pool this way).
  std::vector<HostDestination> output_to;
  // The caller lets the executor return before the run is done when the graph has no
  // outputs (core::Executor::AcceptsWithoutWaiting): the frontend's Dispatch does, and
  // learns of a failure at the next read, Join or Drain. Others wait for every run.
  bool may_defer = false;
};

struct ExecuteStats {
  bool program_cache_hit = false;
  int64_t nodes_executed = 0;
  int64_t bytes_uploaded = 0;
  int64_t bytes_downloaded = 0;
  int64_t resident_bytes = 0;  // after the run
};

struct ExecuteResult {
  std::vector<HostBytes> outputs;  // one per graph->outputs(), contiguous row-major
  ExecuteStats stats;
};

// Runs captured graphs. Called once per materialization (a cold boundary: virtual is fine).
class Executor {
 public:
  virtual ~Executor() = default;
  virtual absl::StatusOr<ExecuteResult> Execute(const ExecuteRequest& request) = 0;
  // Where work runs, for messages: "local CPU", "node 127.0.0.1:7070 (cuda:0)".
  virtual std::string Describe() const = 0;
  // Memory for `nbytes` of host data that a later Execute will upload: where the node reads
  // it in place (a shared tensor pool; HostBuffer::shared), or memory the executor reuses
  // from earlier uploads (already faulted in); an empty HostBuffer when it has neither (the
  // caller allocates ordinary memory).
  virtual HostBuffer Staging(size_t nbytes) {
    (void)nbytes;
    return {};
  }
  // Waits for the runs this executor accepted without waiting for them (a remote node's
  // runs without outputs, client::RemoteExecutorOptions::max_deferred_runs); the first error
  // among them since the last call. Executors that always wait have none.
  virtual absl::Status Drain() { return absl::OkStatus(); }
  // Whether Execute of a graph without outputs, asked with ExecuteRequest::may_defer,
  // returns once the run is handed on (to a node that runs it meanwhile), not when it is
  // done: the frontend then dispatches on the capturing thread instead of handing the graph
  // to its worker thread.
  virtual bool AcceptsWithoutWaiting() const { return false; }
  // Whether host data of `nbytes` that the caller moves to this executor (`.to(remote)`)
  // should go at once, as a run of no nodes that uploads it and keeps it (ExecuteRequest
  // with one kHostInput buffer in `keep` and may_defer), rather than as a snapshot that a
  // later run uploads. True only where Execute of such a run has read every upload byte when
  // it returns (sent through the connection or copied), so the upload may point into the
  // caller's own memory, and returns without waiting for the node: the bytes then travel
  // while the caller goes on capturing, and need no snapshot. A hint, asked right before.
  virtual bool UploadsAhead(size_t nbytes) const {
    (void)nbytes;
    return false;
  }
};

// One node-to-node transfer: the sending node reads its resident buffer `handle` and sends
// it to the node at `peer` ("host:port"), which keeps it under `peer_handle` for the
// client's next run there.
struct PeerSend {
  uint64_t handle = 0;
  DType dtype = DType::kFloat32;
  int64_t numel = 0;
  std::string peer;
  uint64_t peer_handle = 0;
  bool release = false;  // the sender forgets `handle` once sent
};

// A node that can send its resident buffers straight to another node (the bytes never
// pass through the client). Executors of remote nodes implement it beside Executor.
class PeerSender {
 public:
  virtual ~PeerSender() = default;
  // "host:port" at which other nodes reach this node.
  virtual std::string peer_address() const = 0;
  // Bytes sent node to node, or an error naming both nodes.
  virtual absl::StatusOr<int64_t> SendToPeer(const PeerSend& send) = 0;
};

}  // namespace genie::core

#endif  // GENIE_CORE_EXECUTOR_H_
