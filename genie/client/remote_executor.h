// File: genie/client/remote_executor.h
// RemoteExecutor<P>: a core::Executor that runs captured graphs on a genie-node process over
// transport policy P (Tcp across machines; Shm on the node's own host; InProcess in tests). It authenticates, then for
// each Execute sends LoadProgram the first time a graph's fingerprint is seen on this
// connection (the node caches programs per connection under the id the client chose), then
// Run with the uploads gathered straight from the request's HostBytes (parameters as
// kWeights traffic, host inputs as kActivations), and receives the Result with the output
// bytes straight into freshly allocated result memory.
//
// Over Shm with a tensor pool (transport::Shm's default; genie/transport/pool.h) tensors of
// at least P::kPoolMinBytes skip the ring: an upload that already lies in the pool (the
// frontend's `.to(remote)` snapshot, taken in memory from Staging()) is sent as its offset,
// any other is copied into a pool block once; outputs get pool blocks reserved in the Run,
// the node writes them there (on CUDA by DMA from the GPU), and the result aliases the block
// (HostBytes::exclusive: the frontend's tensor uses it in place; the block returns to the
// pool when that tensor dies, even after the executor is gone). A full pool sends through
// the ring instead; nothing fails for lack of room. A block is reused only after the node
// answered the run; when the connection is lost mid-run the pool is retired (no block of it
// is ever handed out again), since the node may still touch it.
//
//   GENIE_ASSIGN_OR_RETURN(std::string key, transport::LoadKeyFromEnv());
//   GENIE_ASSIGN_OR_RETURN(
//       std::shared_ptr<client::RemoteExecutor<transport::Tcp>> node,
//       client::RemoteExecutor<transport::Tcp>::Connect("10.0.0.7", 7070, key));
//   genie::frontend::SetExecutor(node);          // graphs now run on the node
//   // A node on this host started with --shm_socket=/tmp/genie-node.sock (shm.h):
//   //   client::RemoteExecutor<transport::Shm>::Connect("/tmp/genie-node.sock", key)
//   ...
//   transport::TrafficSnapshot moved = node->traffic();   // bytes per class and direction
//   std::cout << node->Describe();                         // "genie-node 10.0.0.7:7070 (cpu)"
//
// Every call has a timeout (RemoteExecutorOptions). When the node dies, closes the
// connection or stops answering, Execute returns UnavailableError (DeadlineExceeded for a
// run that outlives run_timeout) naming the node and what to do; the connection is then
// closed and every later Execute fails at once the same way: connect again. Errors the node
// reports for one run (an op it cannot run, ResourceExhausted when over its memory budget)
// keep their status code, and the connection stays usable. Execute may be called from
// several threads; calls are serialized.
//
// No libtorch here.
#ifndef GENIE_CLIENT_REMOTE_EXECUTOR_H_
#define GENIE_CLIENT_REMOTE_EXECUTOR_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "genie/core/executor.h"
#include "genie/core/status.h"
#include "genie/core/timeline.h"
#include "genie/plan/messages.h"
#include "genie/plan/program.h"
#include "genie/transport/auth.h"
#include "genie/transport/counters.h"
#include "genie/transport/frame.h"
#include "genie/transport/options.h"
#include "genie/transport/policies.h"
#include "genie/transport/pool.h"
#include "genie/transport/traits.h"

namespace genie::client {

struct RemoteExecutorOptions {
  absl::Duration connect_timeout = absl::Seconds(5);
  absl::Duration auth_timeout = absl::Seconds(5);
  // One send, or the rest of a frame whose header arrived.
  absl::Duration io_timeout = absl::Seconds(30);
  // From the end of the uploads to the first byte of the result.
  absl::Duration run_timeout = absl::Minutes(5);
  // Programs remembered as loaded on the node (capped by what the node says it keeps).
  size_t max_cached_programs = 256;
  plan::MessageLimits limits;
  // Spin this long on the socket before sleeping while waiting for the node
  // (transport::ConnectionOptions::busy_poll); zero never spins.
  absl::Duration busy_poll = absl::ZeroDuration();
  // A run whose graph has no outputs, asked with ExecuteRequest::may_defer (a part of a
  // step the frontend dispatched while it captures the rest), is sent and Execute returns
  // without waiting for the node's answer, when every earlier run was answered or at most
  // kMaxDeferredSendBytes go through the connection (a larger send could block on a node
  // still busy with an earlier run; an idle session reads its uploads at once). The
  // answers are read, in order, before the next run that waits, a node-to-node transfer,
  // Drain or Close, or once max_deferred_runs are outstanding. So the node gets the next
  // part as soon as it is captured, not one round trip later. An error in a deferred run
  // fails the next of those calls, which names it; a run that call asked for is not
  // started. 0: wait for every answer.
  size_t max_deferred_runs = 64;
  // Host data of at least this many bytes moved to the node (`.to(remote)`) is sent at once
  // from the caller's memory, as a run that keeps it on the node
  // (core::Executor::UploadsAhead), when the connection has no tensor pool (over Shm the
  // snapshot already lands where the node reads it) and no run is outstanding (it would
  // wait for them). 0: never; every upload then travels with the run that reads it.
  size_t upload_ahead_min_bytes = size_t{1} << 20;
};

namespace client_internal {

// Host memory for outputs received through a connection and for snapshots of uploads
// (RemoteExecutor::Staging without a tensor pool), handed back for reuse when its last user
// lets go. A fresh multi-megabyte allocation comes from mmap, and every page is then faulted
// in and zeroed while the kernel or the snapshot writes it; a step whose tensors have the
// sizes of the last one's gets that memory back instead. Keeps at most kMaxFree blocks and
// kMaxFreeBytes; thread-safe (tensors die on any thread).
class HostBlockCache : public std::enable_shared_from_this<HostBlockCache> {
 public:
  static constexpr size_t kMinBytes = size_t{256} << 10;  // smaller: plain new
  static constexpr size_t kMaxFree = 8;
  static constexpr size_t kMaxFreeBytes = size_t{256} << 20;

  ~HostBlockCache();
  // `n` bytes, valid while the pointer (or a copy of it) lives.
  std::shared_ptr<char> Get(size_t n);

 private:
  struct Block {
    char* data;
    size_t capacity;
  };
  void Put(Block b);

  std::mutex mu_;
  std::vector<Block> free_;  // guarded by mu_
  size_t free_bytes_ = 0;    // guarded by mu_
};

// Plan-side state of one connection, and its error messages: the cold half of
// RemoteExecutor, kept out of the template (remote_executor.cc).
class Session {
 public:
  // One Execute, ready to send.
  struct PreparedRun {
    uint64_t fingerprint = 0;
    uint64_t program_id = 0;
    std::string load_message;  // empty when the node already has the program
    plan::RunMessage run;      // its upload table; pool references added before Seal
    std::string run_message;   // `run` encoded (Seal)
    std::vector<uint32_t> upload_order;      // request.uploads index per entry
    std::vector<plan::TransferFrame> frames;  // the ring entries of `run` (Seal)
    std::vector<uint64_t> output_bytes;  // expected, per output
  };

  Session(std::string node, plan::NodeInfoMessage info, const RemoteExecutorOptions& options);

  // Finds or lowers the program for `request`, binds it and encodes the messages. Frames
  // are grouped to at most `max_frame_bytes` payload each.
  absl::Status Prepare(const core::ExecuteRequest& request, uint64_t max_frame_bytes,
                       PreparedRun* out);
  // Encodes out->run and groups its ring entries into frames (again after pool references
  // were added to it).
  void Seal(uint64_t max_frame_bytes, PreparedRun* out) const;
  // The node no longer has this program (it evicted it): lower it again next time.
  void Forget(uint64_t fingerprint);

  // "genie-node 127.0.0.1:7070 (cpu)"
  std::string Describe() const;
  const std::string& node() const { return node_; }
  const plan::NodeInfoMessage& info() const { return info_; }
  const plan::MessageLimits& limits() const { return options_.limits; }
  const RemoteExecutorOptions& options() const { return options_; }

  // The transport failed while `doing` ("sending the run", "waiting for the result"):
  // UnavailableError (DeadlineExceeded for a timeout) naming the node and what to do.
  absl::Status Lost(absl::string_view doing, const absl::Status& cause) const;
  // The node answered something this client cannot accept (a protocol violation).
  absl::Status Protocol(absl::string_view what) const;
  // The node's Error message, as a status with its code and the node named.
  absl::Status Refused(const plan::ErrorMessage& error) const;

 private:
  struct CachedProgram {
    uint64_t program_id = 0;
    plan::Program program;
    std::list<uint64_t>::iterator lru;
  };

  std::string node_;
  plan::NodeInfoMessage info_;
  RemoteExecutorOptions options_;
  size_t capacity_;
  uint64_t next_program_id_ = 1;
  absl::flat_hash_map<uint64_t, CachedProgram> programs_;  // by fingerprint
  std::list<uint64_t> lru_;                                // most recent first
  plan::Program transient_;  // the program of a request without a fingerprint
  uint64_t transient_id_ = 0;
};

// The PeerSend message for `send` (its "host:port" or "[v6]:port" parsed), or
// InvalidArgument naming what is wrong with the address.
absl::StatusOr<plan::PeerSendMessage> PeerSendFor(const core::PeerSend& send);

// Setup failures, with the node named and what to do.
absl::Status ConnectFailed(const std::string& node, const absl::Status& cause);
absl::Status AuthFailed(const std::string& node, const absl::Status& cause);
std::string NodeName(absl::string_view host, uint16_t port);
// "shm:/tmp/genie-node.sock": a node reached over shared memory through its Unix socket.
std::string ShmNodeName(absl::string_view socket_path);

}  // namespace client_internal

template <class P>
class RemoteExecutor final : public core::Executor, public core::PeerSender {
  static_assert(transport::is_transport_policy_v<P>,
                "RemoteExecutor<P>: P is not a transport policy (see genie/transport/policies.h)");

 public:
  using Connection = transport::Connection<P>;

  // Connects to a genie-node at host:port, authenticates with `key` and reads what the node
  // says about itself. Unavailable when the node cannot be reached, Unauthenticated when the
  // keys differ; each error names the node.
  static absl::StatusOr<std::unique_ptr<RemoteExecutor>> Connect(
      absl::string_view host, uint16_t port, absl::string_view key,
      const RemoteExecutorOptions& options = {}) {
    const std::string node = client_internal::NodeName(host, port);
    transport::ConnectionOptions conn_options;
    conn_options.send_timeout = options.io_timeout;
    conn_options.payload_timeout = options.io_timeout;
    conn_options.busy_poll = options.busy_poll;
    absl::StatusOr<Connection> conn =
        Connection::Connect(host, port, options.connect_timeout, conn_options);
    if (!conn.ok()) return client_internal::ConnectFailed(node, conn.status());
    return Attach(std::move(*conn), node, key, options);
  }

  // Same host, shared memory (P = transport::Shm or a refinement; include
  // genie/transport/shm.h): connects to the node's Unix socket (genie-node
  // --shm_socket=PATH), then as above. Everything after the connection is the same as Tcp.
  static absl::StatusOr<std::unique_ptr<RemoteExecutor>> Connect(
      absl::string_view socket_path, absl::string_view key,
      const RemoteExecutorOptions& options = {}) {
    static_assert(std::is_same_v<typename transport::transport_traits<P>::backend, transport::Shm>,
                  "RemoteExecutor<P>::Connect(socket_path, ...) needs a shared-memory policy "
                  "(transport::Shm); use Connect(host, port, ...) for Tcp");
    const std::string node = client_internal::ShmNodeName(socket_path);
    transport::ConnectionOptions conn_options;
    conn_options.send_timeout = options.io_timeout;
    conn_options.payload_timeout = options.io_timeout;
    conn_options.busy_poll = options.busy_poll;
    absl::StatusOr<Connection> conn =
        Connection::Connect(socket_path, options.connect_timeout, conn_options);
    if (!conn.ok()) return client_internal::ConnectFailed(node, conn.status());
    return Attach(std::move(*conn), node, key, options);
  }

  // The same over a connection made elsewhere (an InProcess pair in tests). `node` names the
  // node in messages.
  static absl::StatusOr<std::unique_ptr<RemoteExecutor>> Attach(
      Connection conn, const std::string& node, absl::string_view key,
      const RemoteExecutorOptions& options = {}) {
    absl::Status auth = transport::AuthenticateClient(conn, key, options.auth_timeout);
    if (!auth.ok()) return client_internal::AuthFailed(node, auth);
    // Ask the node what it is (device, limits); also proves it speaks our message version.
    absl::Status sent = conn.SendBytes(transport::MessageKind::kPing, 0, "");
    if (!sent.ok()) return client_internal::ConnectFailed(node, sent);
    absl::StatusOr<transport::FrameHeader> header = conn.ReceiveHeader(options.auth_timeout);
    if (!header.ok()) return client_internal::ConnectFailed(node, header.status());
    if (header->payload_bytes > std::max(plan::MaxNodeInfoBytes(options.limits),
                                         plan::MaxErrorBytes(options.limits))) {
      conn.Close();
      return client_internal::ConnectFailed(
          node, absl::InvalidArgumentError("the node's greeting is larger than allowed"));
    }
    std::string payload(static_cast<size_t>(header->payload_bytes), '\0');
    absl::Status got = conn.ReceivePayload(payload.data(), payload.size());
    if (!got.ok()) return client_internal::ConnectFailed(node, got);
    if (header->kind == transport::MessageKind::kError) {
      absl::StatusOr<plan::ErrorMessage> e = plan::DecodeError(payload, options.limits);
      conn.Close();
      return client_internal::ConnectFailed(node, e.ok() ? e->ToStatus() : e.status());
    }
    absl::StatusOr<plan::NodeInfoMessage> info =
        header->kind == transport::MessageKind::kPong
            ? plan::DecodeNodeInfo(payload, options.limits)
            : absl::InvalidArgumentError(absl::StrCat(
                  "expected kPong, got ", transport::MessageKindName(header->kind)));
    if (!info.ok()) {
      conn.Close();
      return client_internal::ConnectFailed(node, info.status());
    }
    if constexpr (transport::transport_traits<P>::lanes > 1) {
      static_assert(
          std::is_same_v<typename transport::transport_traits<P>::backend, transport::Tcp>,
          "RemoteExecutor<P>: kLanes > 1 is for Tcp policies (include "
          "genie/transport/tcp.h)");
      // Lanes the node does not grant leave one socket; only a failed connection is an error.
      auto lanes = conn.OpenLanes(options.connect_timeout);
      if (!lanes.ok()) return client_internal::ConnectFailed(node, lanes.status());
    }
    return std::unique_ptr<RemoteExecutor>(
        new RemoteExecutor(std::move(conn), client_internal::Session(node, *info, options)));
  }

  ~RemoteExecutor() override { Close(); }

  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& request) override {
    std::lock_guard<std::mutex> lock(mu_);
    bool defer = request.may_defer && request.graph != nullptr && request.graph->outputs().empty() &&
                 deferred_.size() < session_.options().max_deferred_runs;
    if (!defer) GENIE_RETURN_IF_ERROR(AwaitDeferred());
    for (int attempt = 0;; ++attempt) {
      if (!lost_.ok()) return lost_;
      if (conn_.broken()) return session_.Lost("starting a run", conn_.status());
      GENIE_RETURN_IF_ERROR(session_.Prepare(request, transport::transport_traits<P>::max_frame_bytes,
                                             &prepared_));
      if (pool_ != nullptr) {
        PlaceInPool(request);
        session_.Seal(transport::transport_traits<P>::max_frame_bytes, &prepared_);
      }
      if (defer && !deferred_.empty() && RingBytes() > kMaxDeferredSendBytes) {
        defer = false;  // wait for this one, and first for those before it
        absl::Status earlier = AwaitDeferred();
        if (!earlier.ok()) {
          // This run is not sent: its blocks go back, and a program it would have loaded is
          // not on the node.
          upload_blocks_.clear();
          output_blocks_.clear();
          if (!prepared_.load_message.empty()) session_.Forget(prepared_.fingerprint);
          return earlier;
        }
      }
      if (defer) return SendDeferred(request);
      bool unknown_program = false;
      absl::StatusOr<core::ExecuteResult> result = RunOnce(request, &unknown_program);
      if (result.ok()) AddDeferredStats(&result->stats);
      // The node answered (or the connection is gone and the pool retired): the blocks of
      // this run's uploads may be reused.
      upload_blocks_.clear();
      output_blocks_.clear();
      // The node evicted a program we thought it had: load it again, once.
      if (result.ok() || !unknown_program || attempt > 0 || !prepared_.load_message.empty()) {
        return result;
      }
      session_.Forget(prepared_.fingerprint);
    }
  }

  std::string Describe() const override { return session_.Describe(); }
  absl::Status Drain() override {
    std::lock_guard<std::mutex> lock(mu_);
    return AwaitDeferred();
  }
  bool AcceptsWithoutWaiting() const override { return session_.options().max_deferred_runs > 0; }
  // Without a pool the run is sent before Execute returns (its bytes are in the socket or
  // the ring by then), and with nothing outstanding it does not wait for the node.
  bool UploadsAhead(size_t nbytes) const override {
    const RemoteExecutorOptions& o = session_.options();
    return pool_ == nullptr && o.upload_ahead_min_bytes != 0 &&
           nbytes >= o.upload_ahead_min_bytes && o.max_deferred_runs > 0 &&
           outstanding_.load(std::memory_order_relaxed) == 0;
  }

  // Memory in this connection's tensor pool for a tensor the frontend snapshots for upload
  // (`.to(remote)`): the next run sends its offset instead of its bytes. Empty without a
  // pool, below P::kPoolMinBytes, or when it would leave less than a quarter of the pool
  // free (the rest is kept for outputs and send-time copies).
  core::HostBuffer Staging(size_t nbytes) override {
    if (pool_ == nullptr) {
      // No pool: reused memory, already faulted in, that the upload is sent from.
      if (nbytes < client_internal::HostBlockCache::kMinBytes) return {};
      std::shared_ptr<char> block = host_blocks_->Get(nbytes);
      char* data = block.get();
      return core::HostBuffer{data, nbytes, std::shared_ptr<void>(std::move(block), data)};
    }
    if (nbytes < transport::transport_traits<P>::pool_min_bytes) return {};
    std::shared_ptr<transport::PoolBlock> block = pool_->Allocate(nbytes, pool_->bytes() / 4);
    if (block == nullptr) return {};
    void* data = block->data();
    return core::HostBuffer{data, nbytes, std::shared_ptr<void>(std::move(block), data),
                            /*shared=*/true};
  }
  // The connection's tensor pool; null without one.
  const std::shared_ptr<transport::SharedPool>& pool() const { return pool_; }
  // Bytes that went through the pool instead of the rings (they are also in traffic()).
  transport::TrafficSnapshot pool_traffic() const { return pooled_.Snapshot(); }

  // Node to node: the node this executor talks to sends its resident buffer to another
  // node (which must be reachable from it at send.peer and share the key); the bytes never
  // pass through this client. Returns the bytes sent.
  std::string peer_address() const override {
    return peer_address_.empty() ? session_.node() : peer_address_;
  }
  // Over Shm the node's name ("shm:PATH") is no address another node can reach: give its
  // TCP address ("host:port") here, before the executor is shared with other threads.
  void set_peer_address(std::string host_port) { peer_address_ = std::move(host_port); }
  absl::StatusOr<int64_t> SendToPeer(const core::PeerSend& send) override {
    using transport::MessageKind;
    std::lock_guard<std::mutex> lock(mu_);
    GENIE_RETURN_IF_ERROR(AwaitDeferred());  // the transfer reads what they leave on the node
    if (!lost_.ok()) return lost_;
    if (conn_.broken()) return session_.Lost("asking for a node-to-node transfer", conn_.status());
    GENIE_ASSIGN_OR_RETURN(plan::PeerSendMessage m, client_internal::PeerSendFor(send));
    const plan::MessageLimits& limits = session_.limits();
    const uint64_t id = ++request_id_;
    absl::Status s = conn_.SendBytes(MessageKind::kPeerSend, id, plan::EncodePeerSend(m));
    if (!s.ok()) return Fail("asking for a node-to-node transfer", s);
    absl::StatusOr<transport::FrameHeader> header = conn_.ReceiveHeader(session_.options().run_timeout);
    if (!header.ok()) return Fail("waiting for a node-to-node transfer", header.status());
    if (header->kind == MessageKind::kGoodbye) {
      return Fail("waiting for a node-to-node transfer",
                  absl::UnavailableError("the node is shutting down and closed the session"));
    }
    if (header->request_id != id) {
      return Violation(absl::StrCat("answer for request ", header->request_id, ", expected ", id));
    }
    const bool error = header->kind == MessageKind::kError;
    if (!error && header->kind != MessageKind::kResult) {
      return Violation(absl::StrCat("expected kResult, got ", transport::MessageKindName(header->kind)));
    }
    if (header->payload_bytes > (error ? plan::MaxErrorBytes(limits) : plan::MaxResultBytes(limits))) {
      return Violation("answer to a node-to-node transfer larger than allowed");
    }
    message_.resize(static_cast<size_t>(header->payload_bytes));
    s = conn_.ReceivePayload(message_.data(), message_.size());
    if (!s.ok()) return Fail("receiving the answer to a node-to-node transfer", s);
    if (error) {
      absl::StatusOr<plan::ErrorMessage> e = plan::DecodeError(message_, limits);
      if (!e.ok()) return Violation(e.status().message());
      return session_.Refused(*e);
    }
    s = plan::DecodeResult(message_, limits, &result_message_);
    if (!s.ok()) return Violation(s.message());
    if (!result_message_.output_bytes.empty() ||
        result_message_.stats.bytes_uploaded != static_cast<int64_t>(m.nbytes())) {
      return Violation("the node's answer to a node-to-node transfer does not match the request");
    }
    return result_message_.stats.bytes_uploaded;
  }

  // Bytes and frames moved on this connection so far, per direction and traffic class.
  // Bytes placed in the tensor pool count as if they had gone through the connection.
  transport::TrafficSnapshot traffic() const {
    return conn_.counters().Snapshot() + pooled_.Snapshot();
  }
  // What the node said about itself at connect.
  const plan::NodeInfoMessage& node_info() const { return session_.info(); }
  // Sockets to the node (Tcp lanes the node granted; 1 for every other transport).
  int lanes() const { return conn_.lane_count(); }
  // The node's execution time of the last successful run, in microseconds.
  int64_t last_node_micros() const { return last_node_micros_.load(std::memory_order_relaxed); }

  // Reads the answers of runs sent without waiting (a failure among them is logged: nobody
  // is left to hear it), says goodbye (best effort) and closes; later Executes fail with
  // Unavailable.
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!deferred_.empty() && lost_.ok() && !conn_.broken()) {
      const absl::Status s = AwaitDeferred();
      if (!s.ok()) std::fprintf(stderr, "genie: closing %s: %s\n", session_.Describe().c_str(),
                                std::string(s.message()).c_str());
    }
    if (!conn_.broken()) {
      (void)conn_.SendBytes(transport::MessageKind::kGoodbye, 0, "");
      conn_.Close();
    }
  }

 private:
  RemoteExecutor(Connection conn, client_internal::Session session)
      : conn_(std::move(conn)), session_(std::move(session)), pool_(transport::PoolOf(conn_)) {}

  // Moves the prepared run's large uploads and outputs to the pool where there is room:
  // an upload already in the pool is referenced where it lies, any other copied into a
  // block; each large output gets a block reserved.
  void PlaceInPool(const core::ExecuteRequest& request) {
    constexpr uint64_t kMin = transport::transport_traits<P>::pool_min_bytes;
    std::vector<plan::UploadEntry>& entries = prepared_.run.uploads;
    in_place_.clear();
    for (size_t k = 0; k < entries.size(); ++k) {
      plan::UploadEntry& e = entries[k];
      if (e.nbytes < kMin || e.nbytes == 0) continue;
      const core::HostBytes& b = request.uploads[prepared_.upload_order[k]].bytes;
      if (pool_->Contains(b.data, b.nbytes) && b.owner != nullptr) {
        // The frontend's snapshot, in a block its owner holds for this run at least (two
        // uploads sharing bytes are not referenced twice: the node refuses overlaps).
        const uint64_t offset = pool_->OffsetOf(b.data);
        bool overlaps = false;
        for (const auto& [o, n] : in_place_) overlaps |= offset < o + n && o < offset + e.nbytes;
        if (!overlaps) {
          e.pool_offset = offset;
          in_place_.emplace_back(offset, e.nbytes);
          continue;
        }
      }
      std::shared_ptr<transport::PoolBlock> block = pool_->Allocate(e.nbytes);
      if (block == nullptr) continue;  // no room: through the ring
      std::memcpy(block->data(), b.data, b.nbytes);
      e.pool_offset = block->offset();
      upload_blocks_.push_back(std::move(block));
    }
    output_blocks_.assign(prepared_.output_bytes.size(), nullptr);
    for (size_t i = 0; i < prepared_.output_bytes.size(); ++i) {
      const uint64_t n = prepared_.output_bytes[i];
      if (n < kMin || n == 0) continue;
      std::shared_ptr<transport::PoolBlock> block = pool_->Allocate(n);
      if (block == nullptr) continue;  // no room: it comes back through the ring
      prepared_.run.outputs_in_pool.push_back(
          plan::OutputPlacement{static_cast<uint32_t>(i), block->offset(), n});
      output_blocks_[i] = std::move(block);
    }
  }

  void CountPooled(transport::Direction d, transport::TrafficClass c, uint64_t n) {
    pooled_.AddBytes(d, c, n);
  }

  // Sends the prepared run and receives its answer. Any transport failure closes the
  // connection (the stream can no longer be trusted to be in step).
  absl::StatusOr<core::ExecuteResult> RunOnce(const core::ExecuteRequest& request,
                                              bool* unknown_program) {
    const uint64_t id = ++request_id_;
    GENIE_RETURN_IF_ERROR(SendRun(request, id));
    return ReceiveAnswer(id, unknown_program);
  }

  // Sends the prepared run as request `id`: its program the first time, the Run, and the
  // uploads that do not lie in the pool.
  absl::Status SendRun(const core::ExecuteRequest& request, uint64_t id) {
    using transport::MessageKind;
    using transport::TrafficClass;
    timeline::Span span("send run", "bytes", static_cast<int64_t>(prepared_.run_message.size()));
    for (const plan::UploadEntry& e : prepared_.run.uploads) {
      if (e.pooled()) {
        CountPooled(transport::Direction::kSent,
                    static_cast<TrafficClass>(static_cast<uint8_t>(e.upload_class)), e.nbytes);
      }
    }
    // The program (first time), the Run and the uploads' transfer frames in one write.
    batch_.Clear();
    if (!prepared_.load_message.empty()) {
      batch_.Begin(MessageKind::kLoadProgram, id, TrafficClass::kControl);
      batch_.Add(prepared_.load_message.data(), prepared_.load_message.size());
    }
    batch_.Begin(MessageKind::kRun, id, TrafficClass::kControl);
    batch_.Add(prepared_.run_message.data(), prepared_.run_message.size());
    for (const plan::TransferFrame& f : prepared_.frames) {
      batch_.Begin(MessageKind::kTransfer, id,
                   static_cast<TrafficClass>(static_cast<uint8_t>(f.upload_class)));
      for (uint32_t k = f.first; k < f.first + f.count; ++k) {
        if (prepared_.run.uploads[k].pooled()) continue;
        const core::HostBytes& b = request.uploads[prepared_.upload_order[k]].bytes;
        if (b.nbytes != 0) batch_.Add(b.data, b.nbytes);
      }
    }
    absl::Status s = conn_.SendFrames(batch_.frames());
    if (!s.ok()) {
      return Fail(prepared_.frames.empty() ? "sending the run" : "sending the run and its uploads",
                  s);
    }
    return absl::OkStatus();
  }

  // Receives the answer to request `id`: its Result and outputs, or the node's Error. The
  // prepared run is the one answered, unless `deferred` (a run without outputs sent earlier).
  absl::StatusOr<core::ExecuteResult> ReceiveAnswer(uint64_t id, bool* unknown_program,
                                                    bool deferred = false) {
    using transport::MessageKind;
    using transport::TrafficClass;
    const plan::MessageLimits& limits = session_.limits();
    static const std::vector<uint64_t> kNoOutputs;
    static const std::vector<plan::OutputPlacement> kNoneInPool;
    const std::vector<uint64_t>& output_bytes = deferred ? kNoOutputs : prepared_.output_bytes;
    const std::vector<plan::OutputPlacement>& in_pool =
        deferred ? kNoneInPool : prepared_.run.outputs_in_pool;
    absl::Status s;
    std::optional<timeline::Span> step;
    step.emplace("wait for the node");
    absl::StatusOr<transport::FrameHeader> header =
        conn_.ReceiveHeader(session_.options().run_timeout);
    step.emplace("receive result");
    if (!header.ok()) return Fail("waiting for the result", header.status());
    if (header->kind == MessageKind::kGoodbye) {
      return Fail("waiting for the result",
                  absl::UnavailableError("the node is shutting down and closed the session"));
    }
    if (header->request_id != id) {
      return Violation(absl::StrCat("answer for request ", header->request_id, ", expected ", id));
    }
    if (header->kind == MessageKind::kError) {
      if (header->payload_bytes > plan::MaxErrorBytes(limits)) {
        return Violation("Error message larger than allowed");
      }
      message_.resize(static_cast<size_t>(header->payload_bytes));
      s = conn_.ReceivePayload(message_.data(), message_.size());
      if (!s.ok()) return Fail("receiving the node's error", s);
      absl::StatusOr<plan::ErrorMessage> error = plan::DecodeError(message_, limits);
      if (!error.ok()) return Violation(error.status().message());
      *unknown_program = error->unknown_program;
      return session_.Refused(*error);
    }
    if (header->kind != MessageKind::kResult) {
      return Violation(absl::StrCat("expected kResult, got ", transport::MessageKindName(header->kind)));
    }
    if (header->payload_bytes > plan::MaxResultBytes(limits)) {
      return Violation("Result message larger than allowed");
    }
    message_.resize(static_cast<size_t>(header->payload_bytes));
    s = conn_.ReceivePayload(message_.data(), message_.size());
    if (!s.ok()) return Fail("receiving the result", s);
    s = plan::DecodeResult(message_, limits, &result_message_);
    if (!s.ok()) return Violation(s.message());
    if (result_message_.output_bytes != output_bytes) {
      return Violation("the result's output sizes differ from the program's");
    }
    bool same_pooled = result_message_.pooled_outputs.size() == in_pool.size();
    for (size_t k = 0; same_pooled && k < result_message_.pooled_outputs.size(); ++k) {
      same_pooled = result_message_.pooled_outputs[k] == in_pool[k].output;
    }
    if (!same_pooled) {
      return Violation("the result's outputs in the tensor pool differ from the blocks reserved");
    }

    core::ExecuteResult result;
    result.outputs.reserve(output_bytes.size());
    uint64_t frame_left = 0;
    for (size_t i = 0; i < output_bytes.size(); ++i) {
      const uint64_t n = output_bytes[i];
      if (n == 0) {
        result.outputs.push_back(core::HostBytes{});
        continue;
      }
      if (i < output_blocks_.size() && output_blocks_[i] != nullptr) {
        // The node wrote it into its block: the result aliases the block, which returns to
        // the pool when the last user of these bytes lets go.
        std::shared_ptr<transport::PoolBlock>& block = output_blocks_[i];
        CountPooled(transport::Direction::kReceived, TrafficClass::kActivations, n);
        const void* data = block->data();
        result.outputs.push_back(core::HostBytes{data, static_cast<size_t>(n),
                                                 std::shared_ptr<const void>(std::move(block), data),
                                                 /*exclusive=*/true});
        continue;
      }
      if (frame_left == 0) {
        absl::StatusOr<transport::FrameHeader> h = conn_.ReceiveHeader(session_.options().io_timeout);
        if (!h.ok()) return Fail("receiving the outputs", h.status());
        if (h->kind != MessageKind::kTransfer || h->traffic != TrafficClass::kActivations ||
            h->request_id != id || h->payload_bytes == 0) {
          return Violation("expected an output transfer frame");
        }
        frame_left = h->payload_bytes;
      }
      if (n > frame_left) return Violation("an output spans transfer frames");
      std::shared_ptr<char> memory = host_blocks_->Get(static_cast<size_t>(n));
      s = conn_.ReceivePayload(memory.get(), static_cast<size_t>(n));
      if (!s.ok()) return Fail("receiving the outputs", s);
      frame_left -= n;
      result.outputs.push_back(core::HostBytes{memory.get(), static_cast<size_t>(n),
                                               std::shared_ptr<const void>(memory, memory.get()),
                                               /*exclusive=*/true});
    }
    if (frame_left != 0) return Violation("output transfer frame longer than the outputs");
    result.stats = result_message_.stats;
    result.stats.program_cache_hit = prepared_.load_message.empty();
    last_node_micros_.store(result_message_.node_micros, std::memory_order_relaxed);
    return result;
  }

  // Behind unanswered runs, a deferred run sends at most this much through the connection
  // itself (its pooled uploads do not count): socket and ring buffers take it without the
  // node reading.
  static constexpr uint64_t kMaxDeferredSendBytes = uint64_t{256} << 10;
  // Bytes the prepared run sends through the connection.
  uint64_t RingBytes() const {
    uint64_t n = prepared_.run_message.size() + prepared_.load_message.size();
    for (const plan::UploadEntry& e : prepared_.run.uploads) n += e.pooled() ? 0 : e.nbytes;
    return n;
  }

  // Sends the prepared run (it has no outputs) and returns without its answer, which
  // AwaitDeferred reads later. The run's uploads stay alive until then: the node may read
  // them from the pool while it runs.
  absl::StatusOr<core::ExecuteResult> SendDeferred(const core::ExecuteRequest& request) {
    const uint64_t id = ++request_id_;
    Deferred d;
    d.id = id;
    d.fingerprint = prepared_.fingerprint;
    d.nodes = request.graph->nodes().size();
    for (const core::Upload& u : request.uploads) d.upload_bytes += u.bytes.nbytes;
    absl::Status sent = SendRun(request, id);
    d.blocks = std::move(upload_blocks_);
    upload_blocks_.clear();
    output_blocks_.clear();
    if (!sent.ok()) return sent;
    for (size_t k = 0; k < prepared_.run.uploads.size(); ++k) {
      // What the node reads where it lies (the frontend's snapshots in the pool).
      const core::HostBytes& b = request.uploads[prepared_.upload_order[k]].bytes;
      if (prepared_.run.uploads[k].pooled() && b.owner != nullptr) d.owners.push_back(b.owner);
    }
    deferred_.push_back(std::move(d));
    outstanding_.store(deferred_.size(), std::memory_order_relaxed);
    core::ExecuteResult result;
    result.stats.program_cache_hit = prepared_.load_message.empty();
    return result;
  }

  // Reads the answers of the runs sent without waiting, oldest first. The first that failed
  // fails this call, naming that run; the caller's own run is then not started.
  absl::Status AwaitDeferred() {
    absl::Status first_error;
    while (!deferred_.empty()) {
      Deferred& d = deferred_.front();
      if (!lost_.ok()) return lost_;
      bool unknown_program = false;
      absl::StatusOr<core::ExecuteResult> answer =
          ReceiveAnswer(d.id, &unknown_program, /*deferred=*/true);
      if (!lost_.ok()) return lost_;  // the connection is gone: nothing more will answer
      if (answer.ok()) {
        if (!answer->outputs.empty()) {
          return Violation("the answer to a run without outputs carries outputs");
        }
        deferred_stats_.nodes_executed += answer->stats.nodes_executed;
        deferred_stats_.bytes_uploaded += answer->stats.bytes_uploaded;
        deferred_stats_.bytes_downloaded += answer->stats.bytes_downloaded;
        deferred_stats_.resident_bytes = answer->stats.resident_bytes;
      } else {
        // The node evicted the program: the next run of it loads it again.
        if (unknown_program) session_.Forget(d.fingerprint);
        if (first_error.ok()) {
          first_error = absl::Status(
              answer.status().code(),
              absl::StrCat(d.nodes == 0
                               ? absl::StrCat("keeping ", d.upload_bytes,
                                              " bytes of host data sent ahead on ")
                               : absl::StrCat("a run of ", d.nodes, " ops dispatched earlier to "),
                           session_.Describe(), " failed: ", answer.status().message(),
                           unknown_program ? " (the node had evicted its program; it is loaded "
                                             "again next time)"
                                           : "",
                           ". A run asked for now was not started, since it may read what "
                           "that one should have left on the node; rerun from the inputs"));
        }
      }
      deferred_.pop_front();  // its uploads may be reused now
      outstanding_.store(deferred_.size(), std::memory_order_relaxed);
    }
    return first_error;
  }

  // Adds what the node reported for deferred runs to the stats of the run that followed
  // them, so totals over results stay whole.
  void AddDeferredStats(core::ExecuteStats* stats) {
    stats->nodes_executed += deferred_stats_.nodes_executed;
    stats->bytes_uploaded += deferred_stats_.bytes_uploaded;
    stats->bytes_downloaded += deferred_stats_.bytes_downloaded;
    deferred_stats_ = core::ExecuteStats{};
  }

  // The connection is unusable from here on; later Executes return the same error. The node
  // may still read or write pool blocks of this run: the pool hands out nothing more.
  absl::Status Fail(absl::string_view doing, const absl::Status& cause) {
    if (pool_ != nullptr) pool_->Close();
    conn_.Close();
    lost_ = session_.Lost(doing, cause);
    return lost_;
  }
  absl::Status Violation(absl::string_view what) {
    if (pool_ != nullptr) pool_->Close();
    conn_.Close();
    lost_ = session_.Protocol(what);
    return lost_;
  }

  std::mutex mu_;
  Connection conn_;
  client_internal::Session session_;
  std::string peer_address_;  // set before sharing; empty: session_.node()
  uint64_t request_id_ = 0;
  absl::Status lost_;  // why the connection was given up, once it was
  std::atomic<int64_t> last_node_micros_{0};
  // Reused across runs.
  client_internal::Session::PreparedRun prepared_;
  transport::FrameBatch batch_;  // SendRun's frames
  std::string message_;
  plan::ResultMessage result_message_;
  std::shared_ptr<client_internal::HostBlockCache> host_blocks_ =
      std::make_shared<client_internal::HostBlockCache>();
  // The tensor pool (null: none) and the blocks of the run in flight.
  std::shared_ptr<transport::SharedPool> pool_;
  std::vector<std::shared_ptr<transport::PoolBlock>> upload_blocks_;
  std::vector<std::shared_ptr<transport::PoolBlock>> output_blocks_;  // per output, or null
  std::vector<std::pair<uint64_t, uint64_t>> in_place_;  // uploads referenced where they lie
  transport::TrafficCounters pooled_;
  // Runs sent whose answers are not read yet (RemoteExecutorOptions::max_deferred_runs).
  struct Deferred {
    uint64_t id = 0;
    uint64_t fingerprint = 0;
    size_t nodes = 0;  // 0: host data sent ahead (core::Executor::UploadsAhead)
    uint64_t upload_bytes = 0;
    std::vector<std::shared_ptr<transport::PoolBlock>> blocks;  // its uploads' pool blocks
    std::vector<std::shared_ptr<const void>> owners;            // its in-place uploads' memory
  };
  std::deque<Deferred> deferred_;
  std::atomic<size_t> outstanding_{0};  // deferred_.size(), read without mu_ (UploadsAhead)
  core::ExecuteStats deferred_stats_;  // what answered deferred runs reported, not yet added
};

}  // namespace genie::client

#endif  // GENIE_CLIENT_REMOTE_EXECUTOR_H_
