// File: genie/client/session.h
// A Session connects a libtorch program to Genie nodes through one deployment type:
// graphs captured on remote_accelerator run through the pipeline's analyzers, its
// scheduler and its transport. Without node addresses it starts an embedded node on
// loopback (a real genie-node server in this process, over real sockets; with a Shm
// transport the session reaches it through shared memory and a Unix socket of its own).
//
//   using Deployment = genie::Pipeline<genie::Annotations<...>, genie::Analyzers<...>,
//                                      genie::scheduler::SemanticScheduler<...>,
//                                      genie::transport::Tcp>;
//   auto session = genie::Session<Deployment>::Start({});           // embedded node
//   model->to(torch::Device(session->device()));
//   auto y = model->forward(x.to(torch::Device(session->device())));
//   session->Dispatch();                  // returns at once; the node works
//   std::cout << y.to(torch::kCPU);       // waits for what it needs
//   session->traffic();                   // bytes per class and direction
#ifndef GENIE_CLIENT_SESSION_H_
#define GENIE_CLIENT_SESSION_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "genie/client/pipeline.h"
#include "genie/client/remote_executor.h"
#include "genie/core/status.h"
#include "genie/frontend/remote_device.h"
#include "genie/runtime/node_server.h"
#include "genie/transport/counters.h"
#include "genie/transport/shm.h"  // the backends sessions connect over
#include "genie/transport/tcp.h"

namespace genie {

struct SessionOptions {
  // "host:port" (Tcp), or "shm:/path/to/node.sock" (Shm: a node of this host started with
  // --shm_socket); empty: embedded nodes on 127.0.0.1 (over Shm: each on its own socket).
  std::vector<std::string> nodes;
  int embedded_nodes = 1;          // how many embedded nodes when `nodes` is empty
  std::string key;                 // shared node key; empty with an embedded node: random
  runtime::NodeOptions embedded;   // options of the embedded node
  client::RemoteExecutorOptions connection;
  bool record_dumps = false;       // keep the annotated graph of each run in its record
  // With ModalityPlacement on several nodes: Dispatch queues each graph on the nodes and
  // returns, so successive batches pipeline across nodes; a queued run's failure comes
  // back from the next run or from Join (PipelineExecutor).
  bool pipelined = false;
  // When every node of the session executes on a GPU, each step is cut into parts as it is
  // captured (frontend::SetAutoDispatch(gpu_dispatch_first_part, gpu_dispatch_growth): parts
  // of 16, 64, 256, ... nodes), so the GPU starts on the first part while the client
  // captures the rest; the frontend's own setting comes back when the session ends. 0 leaves
  // the setting alone. Nodes on the CPU are not cut: there the node and the client share cores.
  int64_t gpu_dispatch_first_part = 16;
  int64_t gpu_dispatch_growth = 4;
};

namespace session_internal {

// An in-process genie-node on 127.0.0.1 (ephemeral port), served by its own thread.
class EmbeddedNode {
 public:
  static absl::StatusOr<std::unique_ptr<EmbeddedNode>> Start(const std::string& key,
                                                              runtime::NodeOptions options);
  ~EmbeddedNode();
  std::string address() const;  // "127.0.0.1:PORT"
  std::string shm_address() const;  // "shm:PATH" (started with NodeOptions::shm_socket)
  runtime::PeerStats peer_stats() const;  // what it sent to and received from other nodes
  runtime::RunGate::Stats gate_stats() const;  // how its runs were admitted

 private:
  std::unique_ptr<runtime::NodeServer> server_;
  std::thread thread_;
};

absl::StatusOr<std::pair<std::string, uint16_t>> ParseHostPort(const std::string& address);
// The socket path of a "shm:PATH" node address.
absl::StatusOr<std::string> ParseShmAddress(const std::string& address);
// A fresh Unix socket path for an embedded node's Shm listener.
std::string EmbeddedShmSocketPath();
absl::StatusOr<std::string> RandomKey();

}  // namespace session_internal

template <class P>
class Session {
  static_assert(is_pipeline_v<P>, "Session<P> needs a genie::Pipeline<...>");
  using Transport = typename P::transport_policy;
  using Node = client::RemoteExecutor<Transport>;
  static constexpr bool kShm =
      std::is_same_v<typename transport::transport_traits<Transport>::backend, transport::Shm>;

 public:
  static absl::StatusOr<std::unique_ptr<Session>> Start(SessionOptions options) {
    std::unique_ptr<Session> s(new Session());
    frontend::EnsureRegistered();
    if (options.nodes.empty()) {
      if (options.key.empty()) {
        GENIE_ASSIGN_OR_RETURN(options.key, session_internal::RandomKey());
      }
      if (options.embedded_nodes < 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            "SessionOptions::embedded_nodes is ", options.embedded_nodes, "; use 1 or more"));
      }
      for (int k = 0; k < options.embedded_nodes; ++k) {
        runtime::NodeOptions node_options = options.embedded;
        if constexpr (kShm) node_options.shm_socket = session_internal::EmbeddedShmSocketPath();
        GENIE_ASSIGN_OR_RETURN(std::unique_ptr<session_internal::EmbeddedNode> node,
                               session_internal::EmbeddedNode::Start(options.key, node_options));
        options.nodes.push_back(kShm ? node->shm_address() : node->address());
        s->embedded_.push_back(std::move(node));
      }
    }
    std::vector<std::shared_ptr<core::Executor>> executors;
    for (size_t k = 0; k < options.nodes.size(); ++k) {
      const std::string& address = options.nodes[k];
      std::unique_ptr<Node> node;
      if constexpr (kShm) {
        GENIE_ASSIGN_OR_RETURN(std::string path, session_internal::ParseShmAddress(address));
        GENIE_ASSIGN_OR_RETURN(node, Node::Connect(path, options.key, options.connection));
        // Nodes reach each other over TCP.
        if (k < s->embedded_.size()) node->set_peer_address(s->embedded_[k]->address());
      } else {
        GENIE_ASSIGN_OR_RETURN(auto host_port, session_internal::ParseHostPort(address));
        GENIE_ASSIGN_OR_RETURN(node, Node::Connect(host_port.first, host_port.second,
                                                   options.key, options.connection));
      }
      std::shared_ptr<Node> shared = std::move(node);
      s->nodes_.push_back(shared);
      executors.push_back(shared);
    }
    s->executor_ = std::make_shared<PipelineExecutor<P>>(std::move(executors), options.record_dumps,
                                                         options.pipelined);
    s->previous_ = frontend::GetExecutor();
    frontend::SetExecutor(s->executor_);
    bool all_gpu = !s->nodes_.empty();
    for (const auto& n : s->nodes_) all_gpu = all_gpu && absl::StartsWith(n->node_info().device, "cuda");
    if (all_gpu && options.gpu_dispatch_first_part > 0) {
      s->previous_dispatch_ = frontend::GetAutoDispatch();
      frontend::SetAutoDispatch(options.gpu_dispatch_first_part, options.gpu_dispatch_growth);
    }
    return s;
  }

  ~Session() {
    (void)Join();
    frontend::SetExecutor(previous_);
    if (previous_dispatch_) frontend::SetAutoDispatch(previous_dispatch_->first, previous_dispatch_->second);
  }

  // The device to move modules and tensors to.
  static constexpr const char* device() { return "remote_accelerator:0"; }

  absl::Status Dispatch() { return frontend::Dispatch(); }
  // Waits for every dispatched graph (queued runs of a pipelined session included); the
  // first error since the last Join.
  absl::Status Join() {
    absl::Status s = frontend::Join();
    absl::Status queued = executor_->Drain();
    return s.ok() ? queued : s;
  }

  // What the pipeline saw and did for each run since the last call.
  std::vector<PipelineRecord> TakeRecords() { return executor_->TakeRecords(); }

  // Bytes and frames moved, per class and direction, over all node connections.
  transport::TrafficSnapshot traffic() const {
    transport::TrafficSnapshot total;
    for (const auto& n : nodes_) total = total + n->traffic();
    return total;
  }

  // Of traffic(), the bytes that went through Shm tensor pools instead of the rings.
  transport::TrafficSnapshot pool_traffic() const {
    transport::TrafficSnapshot total;
    for (const auto& n : nodes_) total = total + n->pool_traffic();
    return total;
  }

  // What the scheduler shipped to and from the nodes, by kind.
  scheduler::DataTraffic data_traffic() const { return executor_->traffic(); }

  // Where each module ran and the bytes nodes sent each other (these never appear in
  // traffic()); empty unless the scheduler places across several nodes.
  scheduler::PlacementStats placement() const { return executor_->placement(); }

  // Decode steps whose streams ran batched (scheduler::DecodeBatching), batch sizes, and
  // why other decode steps were not.
  scheduler::DecodeBatchingStats decode_batching() const { return executor_->decode_batching(); }

  std::vector<std::string> node_descriptions() const {
    std::vector<std::string> out;
    for (const auto& n : nodes_) out.push_back(n->Describe());
    return out;
  }
  bool embedded() const { return !embedded_.empty(); }
  // Node-to-node bytes each embedded node sent and received (empty with remote nodes).
  std::vector<runtime::PeerStats> embedded_peer_stats() const {
    std::vector<runtime::PeerStats> out;
    for (const auto& n : embedded_) out.push_back(n->peer_stats());
    return out;
  }
  // How each embedded node admitted runs (SessionOptions::embedded.run_slots).
  std::vector<runtime::RunGate::Stats> embedded_gate_stats() const {
    std::vector<runtime::RunGate::Stats> out;
    for (const auto& n : embedded_) out.push_back(n->gate_stats());
    return out;
  }
  std::string scheduler_description() const { return executor_->Describe(); }
  // The deployment's executor (analysis, annotations, scheduler), for tools that drive the
  // scheduler directly (pipelined runs of captured graphs).
  PipelineExecutor<P>& pipeline() { return *executor_; }
  // Node execution time of each node's last run, in microseconds, summed over nodes.
  int64_t last_node_micros() const {
    int64_t total = 0;
    for (const auto& n : nodes_) total += n->last_node_micros();
    return total;
  }

 private:
  Session() = default;

  std::vector<std::unique_ptr<session_internal::EmbeddedNode>> embedded_;  // destroyed last
  std::vector<std::shared_ptr<Node>> nodes_;
  std::shared_ptr<PipelineExecutor<P>> executor_;
  std::shared_ptr<core::Executor> previous_;
  std::optional<std::pair<int64_t, int64_t>> previous_dispatch_;  // set when this session cut steps
};

}  // namespace genie

#endif  // GENIE_CLIENT_SESSION_H_
