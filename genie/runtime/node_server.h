// File: genie/runtime/node_server.h
// The genie-node side of the client <-> node protocol (genie/plan/messages.h): authenticate
// every connection before anything else, then serve LoadProgram / Run / Ping until the
// client leaves. Each connection is one client session with its own runtime::Interpreter
// (its resident tensors) and its own bounded program cache. A malformed or hostile message
// gets an Error frame and that connection closes; errors of one run (an op that fails, the
// memory budget) get an Error frame and the session goes on.
//
//   // One session over any transport (an InProcess pair in tests):
//   std::atomic<bool> stop{false};
//   std::thread node([&] { (void)runtime::ServeConnection(server_end, key, NodeOptions{}, stop);
//   });
//
//   // The genie-node process: one thread per connection on a Tcp listener (plus a Shm one
//   // for clients of the same host with NodeOptions::shm_socket).
//   GENIE_ASSIGN_OR_RETURN(std::unique_ptr<runtime::NodeServer> server,
//                          runtime::NodeServer::Create("127.0.0.1", 0, key, NodeOptions{}));
//   std::printf("listening on %s:%d\n", server->host().c_str(), server->port());
//   server->Serve(&stop);  // until `stop` or Shutdown()
//
// Node to node: a client may ask this node (kPeerSend) to send one of its resident buffers
// to another genie-node; this node pushes the bytes (kPeerPut + one kTransfer frame) over
// its PeerPool's connection to that node: one authenticated connection per peer, opened on
// first use and reused by every later transfer (a broken one is replaced once, then the
// transfer fails naming the peer). The receiving node keeps the bytes in its PeerInbox
// until a run of any of its sessions reads that handle as a resident buffer; the inbox
// holds at most NodeOptions::peer_inbox_bytes (--peer_inbox_bytes) and refuses a put above
// that with ResourceExhausted naming the sizes (the sender's client sees the error; nothing
// the inbox accepted is ever dropped).
//
// genie-smi: any authenticated connection may ask for the node's status (a kStats frame
// holding plan::StatusQuery) between its messages; the node answers with node-wide figures
// (plan::NodeStatusMessage, from its NodeTelemetry and, on CUDA, runtime::QueryDeviceMemory)
// and the connection's session goes on untouched.
//
// Logs one line per connection and per run to stderr (peer, program id, nodes, bytes in and
// out, milliseconds). This header does not include libtorch.
#ifndef GENIE_RUNTIME_NODE_SERVER_H_
#define GENIE_RUNTIME_NODE_SERVER_H_

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
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
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "genie/core/executor.h"
#include "genie/core/timeline.h"
#include "genie/plan/messages.h"
#include "genie/plan/program.h"
#include "genie/runtime/cuda_peer.h"
#include "genie/runtime/interpreter.h"
#include "genie/transport/auth.h"
#include "genie/transport/counters.h"
#include "genie/transport/frame.h"
#include "genie/transport/pool.h"
#include "genie/transport/traits.h"

namespace genie::runtime {

struct NodeOptions {
  std::string device = "cpu";          // "cpu"; "cuda:N" where built with CUDA
  int64_t memory_budget_bytes = 0;     // per session: resident + uploaded bytes; 0 = unlimited
  uint32_t max_cached_programs = 256;  // per connection, least recently used evicted first
  int cuda_streams = 4;                // on CUDA: streams per program (InterpreterOptions)
  bool cuda_graphs = true;             // on CUDA: replay repeated static programs as CUDA graphs
  plan::MessageLimits limits;          // limits.max_program_bytes is --max_program_bytes
  absl::Duration auth_timeout = absl::Seconds(10);
  absl::Duration io_timeout = absl::Seconds(30);  // one send, or the rest of a frame
  // How often an idle session or the accept loop looks at the stop flag.
  absl::Duration poll_interval = absl::Milliseconds(100);
  bool log_connections = true;
  bool log_runs = true;
  // Bytes other nodes may push here that no run has read yet (node-wide); 0 = unlimited.
  int64_t peer_inbox_bytes = int64_t{1} << 30;
  // Runs of all sessions executing at once (node-wide); 0 = no limit (each session runs
  // as soon as its run arrives). With a limit, waiting runs are admitted by RunGate.
  int run_slots = 0;
  // With run_slots: admit LLM decode steps (recognised from the program at load) ahead of
  // waiting prefills and other runs; false: in arrival order.
  bool decode_first = true;
  // On CUDA: send to a peer node on this host (a loopback address) GPU to GPU through CUDA
  // IPC (runtime/cuda_peer.h) instead of through host memory and TCP; a peer that cannot
  // take it that way (no GPU, IPC refused) gets the bytes over TCP from then on.
  bool peer_cuda_ipc = true;
  // Spin this long on a client's socket before sleeping when waiting for its next message
  // (transport::ConnectionOptions::busy_poll): lower latency per run for a spinning core.
  absl::Duration busy_poll = absl::ZeroDuration();
  // Also accept clients of this host over shared memory (transport::Shm) on this Unix socket
  // path (--shm_socket); empty: Tcp only. Those sessions are the same as Tcp ones.
  std::string shm_socket;
  // On CUDA: a Shm client's tensor pool is page-locked (cudaHostRegister) only up to this
  // many bytes, and not above memory_budget_bytes when that is set and smaller
  // (MaxRegisteredPoolBytes): the client picks the pool's size (up to 64 GiB). A larger
  // pool is used through staging copies. 0: never page-locked.
  int64_t max_registered_pool_bytes = int64_t{1} << 30;
  // Threads ATen's CPU kernels use for a session's ops (runtime/intra_op_threads.h), set on
  // the session's thread. 0 (the default): per program, one thread when all its ops are
  // small (runtime::IntraOpThreadsFor: an OpenMP fork and join per op costs more than it
  // saves on them), else the threads the session thread inherited (libtorch's default, or
  // what the process set). N > 0: N for every program.
  int intra_op_threads = 0;
  // On the CPU: threads per session for a program's independent branches (a VQA model's
  // vision and language encoders; runtime/cpu_lanes.h); 1 runs every op on the session
  // thread. 0 (the default): runtime::AutomaticCpuLanes(), 2 on a machine of 2 or more
  // cores, per program runtime::AutomaticLanesFor (on fewer than 4 cores, only programs
  // whose ops run on one intra-op thread get 2).
  int cpu_lanes = 0;
  // Tcp: sockets a client may open in all (transport::Connection<Tcp>::AcceptLanes): large
  // frames are striped over them, each copied by a thread of its own on both sides. 1: none.
  // 0 (the default): half this machine's usable cores, at least 1 and at most 8
  // (MaxLanesFor), as a client asks for at most half of its own.
  int max_lanes = 0;
  // Tcp: sockets this node asks a peer node for in all when it opens a connection to it for
  // node-to-node transfers (PeerPool), granted up to the peer's max_lanes. 0 (the default):
  // as a client asks (transport::Tcp: up to 4, at most half the usable cores); 1: one socket.
  int peer_lanes = 0;
};

// The sockets a session grants a Tcp client in all under `options` (NodeOptions::max_lanes).
int MaxLanesFor(const NodeOptions& options);

// The largest client tensor pool a session page-locks under `options`: the smaller of
// max_registered_pool_bytes and memory_budget_bytes (when > 0).
uint64_t MaxRegisteredPoolBytes(const NodeOptions& options);

// Admission of runs to the node's compute, shared by every session. At most `slots` runs
// execute at once (0: no gate). Waiting runs are admitted decode first when
// `decode_first`: an LLM decode step is short and latency-bound, so it goes ahead of a
// queued prefill, and the decode steps of several clients waiting together run back to
// back before the next prefill; with two or more slots, other runs also leave the last
// free slot to decode steps. A run that decode steps went ahead of kMaxOvertakes times
// is admitted next (no prefill starves). Otherwise in arrival order. Thread-safe.
//
//   RunGate gate(1, /*decode_first=*/true);
//   gate.Enter(/*decode=*/true);   // blocks until admitted
//   ... execute ...
//   gate.Leave();
class RunGate {
 public:
  struct Stats {
    int64_t admitted = 0;
    int64_t decode_admitted = 0;
    int64_t decode_ahead = 0;  // decode runs admitted while an earlier other run waited
    int64_t waited = 0;        // runs that found no free slot
  };
  static constexpr int kMaxOvertakes = 8;
  RunGate(int slots, bool decode_first)
      : slots_(slots), free_(slots), decode_first_(decode_first) {}
  void Enter(bool decode);
  void Leave();
  int waiting() const;
  Stats stats() const;

 private:
  struct Waiter {
    uint64_t ticket;
    bool decode;
    int overtaken;  // decode runs admitted ahead of this one
  };
  // The waiter to admit next (under mu_), or null.
  const Waiter* Next() const;

  const int slots_;
  int free_;
  const bool decode_first_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Waiter> waiting_;  // in arrival order
  uint64_t next_ticket_ = 1;
  Stats stats_;
};

// What this node sent to and received from other nodes (never client traffic).
struct PeerStats {
  int64_t sends = 0;  // kPeerSend requests served
  int64_t bytes_sent = 0;
  int64_t puts = 0;  // kPeerPut messages accepted
  int64_t bytes_received = 0;
  int64_t puts_refused = 0;  // over the inbox bound
  int64_t inbox_bytes = 0;   // received, not yet read by a run
  int64_t inbox_buffers = 0;
  int64_t connections_opened = 0;  // to other nodes (PeerPool), reconnects included
  int64_t connections_reused = 0;  // transfers that went over an open pooled connection
  int64_t lanes_opened = 0;        // Tcp lanes those connections got, beyond their first socket
  int64_t cuda_ipc_sends = 0;      // of `sends`, those that went GPU to GPU over CUDA IPC
  int64_t cuda_ipc_puts = 0;       // of `puts`, those taken GPU to GPU over CUDA IPC
};

// Buffers other nodes pushed here, by the handle the next run will read them under.
// Shared by all sessions of a node; thread-safe.
class PeerInbox {
 public:
  struct Entry {
    core::DType dtype = core::DType::kFloat32;
    int64_t numel = 0;
    std::string bytes;
    // Taken over CUDA IPC: the bytes are in device memory of this node's GPU instead,
    // kept alive by `device` (then `bytes` is empty).
    std::shared_ptr<const void> device;
    const void* device_data = nullptr;
    int64_t held_bytes() const {
      return device ? numel * static_cast<int64_t>(core::DTypeSize(dtype))
                    : static_cast<int64_t>(bytes.size());
    }
  };
  // max_bytes: most bytes held at once (0 = unlimited).
  explicit PeerInbox(int64_t max_bytes = 0) : max_bytes_(max_bytes) {}
  // Keeps `entry` under `handle` (replacing what the handle held), or ResourceExhausted,
  // keeping nothing, when that would hold more than max_bytes.
  absl::Status Put(uint64_t handle, Entry entry);
  // Moves the entry for `handle` into *out; false when there is none.
  bool Take(uint64_t handle, Entry* out);
  bool empty() const { return size_.load(std::memory_order_acquire) == 0; }
  void CountSend(int64_t bytes, bool cuda_ipc = false);
  // A transfer over a pooled connection (`reused`) or a new one with `lanes` sockets.
  void CountConnection(bool reused, int lanes = 1);
  PeerStats stats() const;

 private:
  const int64_t max_bytes_;
  mutable std::mutex mu_;
  absl::flat_hash_map<uint64_t, Entry> entries_;
  std::atomic<size_t> size_{0};
  int64_t held_ = 0;
  PeerStats stats_;
};

// This node's authenticated connections to other nodes, one per "host:port", opened on
// first use and reused by every transfer to that peer (node-wide, thread-safe; transfers to
// one peer take turns on its connection). A connection that broke since its last use (the
// peer restarted, or closed it) is replaced once; a second failure is the transfer's error.
class PeerPool {
 public:
  PeerPool(std::string key, const NodeOptions& options, PeerInbox* counters);
  ~PeerPool();  // says goodbye on every open connection
  PeerPool(const PeerPool&) = delete;
  PeerPool& operator=(const PeerPool&) = delete;

  // Pushes `bytes` to the peer, which keeps them under m.handle; the bytes it took, or an
  // error naming the peer and what failed (connecting, authenticating, sending, the
  // peer's refusal).
  // With m.cuda_ipc set, no bytes follow (the peer copies from this node's GPU).
  absl::StatusOr<int64_t> Put(const std::string& host, uint16_t port, const plan::PeerPutMessage& m,
                              const void* bytes, size_t nbytes);
  // Whether transfers to this peer may go over CUDA IPC: true until NoCudaIpc for it.
  bool MayUseCudaIpc(const std::string& host, uint16_t port);
  void NoCudaIpc(const std::string& host, uint16_t port);

 private:
  struct Link;
  std::string key_;
  NodeOptions options_;
  PeerInbox* counters_;
  std::mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Link>> links_;
  absl::flat_hash_map<std::string, bool> no_cuda_ipc_;  // peers that refused CUDA IPC
};

// A node's figures for genie-smi (plan::NodeStatusMessage), shared by every session of the
// node; thread-safe. Runs, programs and resident bytes are relaxed atomics changed once per
// run or load, never per op. Bytes in and out are each connection's own transport counters
// (relaxed atomics too), summed only when someone asks: a mutex guards the list of open
// connections, taken when a session opens, when it closes, and by each query.
class NodeTelemetry {
 public:
  NodeTelemetry() : start_(absl::Now()) {}
  NodeTelemetry(const NodeTelemetry&) = delete;
  NodeTelemetry& operator=(const NodeTelemetry&) = delete;

  // A session authenticated on a connection that counts its traffic in `traffic` (valid
  // until the matching Close).
  void Open(const transport::TrafficCounters* traffic);
  // That session ended: its bytes join the totals of closed sessions.
  void Close(const transport::TrafficCounters* traffic);
  void CountRun(bool ok) { (ok ? runs_ : run_errors_).fetch_add(1, std::memory_order_relaxed); }
  void AddPrograms(int64_t delta) { programs_.fetch_add(delta, std::memory_order_relaxed); }
  void AddResident(int64_t delta) { resident_.fetch_add(delta, std::memory_order_relaxed); }
  void AddGraphReplays(int64_t n) { graph_replays_.fetch_add(n, std::memory_order_relaxed); }
  // Runs this node's sessions served by replaying a CUDA graph, over the node's life.
  uint64_t graph_replays() const { return graph_replays_.load(std::memory_order_relaxed); }
  // The node-wide figures (device, budget and GPU fields left unset); the open connection
  // counting into `asker` is not counted among the open sessions.
  plan::NodeStatusMessage Snapshot(const transport::TrafficCounters* asker) const;

 private:
  const absl::Time start_;
  std::atomic<uint64_t> runs_{0};
  std::atomic<uint64_t> run_errors_{0};
  std::atomic<int64_t> programs_{0};
  std::atomic<int64_t> resident_{0};
  std::atomic<uint64_t> graph_replays_{0};
  mutable std::mutex mu_;
  std::vector<const transport::TrafficCounters*> open_;
  transport::TrafficSnapshot closed_;
  uint64_t sessions_served_ = 0;
};

namespace node_internal {

// One client session's state and the node's cold paths (node_server.cc): program cache,
// binding runs to programs, the interpreter, logging.
class Session {
 public:
  Session(const NodeOptions& options, std::string peer);
  ~Session();

  const NodeOptions& options() const { return options_; }
  const plan::MessageLimits& limits() const { return options_.limits; }
  plan::NodeInfoMessage Info() const;

  // Decodes, validates and caches a LoadProgram payload. An error means the peer sent
  // something no Genie client sends: refuse and close.
  absl::Status Load(absl::string_view payload);

  // Memory for `bytes` of uploads (reused across runs; page-locked on a CUDA node, see
  // Interpreter::PinnedUploadArena), or ResourceExhausted when over the session's memory
  // budget or when it cannot be allocated.
  absl::StatusOr<char*> UploadArena(uint64_t bytes);

  // The connection's shared tensor pool (null: none). Runs may then name uploads and
  // outputs in it; on CUDA it is page-locked (Interpreter::RegisterHostMemory) at the first
  // run that does (if that is refused, copies go through staging instead).
  void AttachPool(std::shared_ptr<transport::SharedPool> pool) { shared_pool_ = std::move(pool); }
  // The run's pool references checked against the pool (plan::CheckPoolReferences): an
  // error fails this run only.
  absl::Status CheckPool(const plan::RunMessage& run);

  // Runs `run` (its ring upload bytes in the arena, in table order; pooled ones in the
  // pool) on the interpreter, writing the outputs it reserved pool blocks for there.
  // *unknown_program is set when the run names a program this session does not have.
  absl::StatusOr<const core::ExecuteResult*> Run(const plan::RunMessage& run,
                                                 bool* unknown_program);

  // Node to node: the key to authenticate to peers with and this node's inbox (null: this
  // node takes no kPeerSend / kPeerPut).
  // `pool`: the node's connections to peers (null: this session opens its own pool).
  void AttachPeers(std::string key, PeerInbox* inbox, PeerPool* pool);
  // Runs of this session are admitted by the node-wide `gate` (null: none).
  void AttachGate(RunGate* gate) { gate_ = gate; }
  // This session counts into the node's `telemetry` (null: into one of its own).
  void AttachTelemetry(NodeTelemetry* telemetry) {
    telemetry_ = telemetry != nullptr ? telemetry : &own_telemetry_;
  }
  // The session authenticated on a connection counting its traffic in `traffic` (valid for
  // the session's life): it is one of the node's open sessions until it is destroyed.
  void Opened(const transport::TrafficCounters* traffic);
  // One run ended (ok: it executed; else it failed or was refused and the session goes on).
  void CountRun(bool ok) { telemetry_->CountRun(ok); }
  // The node's status for genie-smi: node-wide figures, this session not counted as open.
  plan::NodeStatusMessage Status() const;
  bool has_peers() const { return inbox_ != nullptr; }
  // Sends resident `m.handle` to the peer node; the bytes sent.
  absl::StatusOr<int64_t> SendToPeer(const plan::PeerSendMessage& m);
  // Keeps bytes a peer pushed until a run reads them.
  absl::Status AcceptPut(const plan::PeerPutMessage& m, std::string bytes);
  // Takes a buffer a peer on this host offers over CUDA IPC (m.cuda_ipc): copies it GPU to
  // GPU into this node's device memory, kept in the inbox. FailedPrecondition when this
  // node cannot (no GPU, the mapping failed): the peer then sends over TCP.
  absl::Status AcceptCudaIpcPut(const plan::PeerPutMessage& m);

  // Scratch reused across messages.
  std::string& message() { return message_; }
  plan::RunMessage& run_message() { return run_message_; }
  std::vector<plan::UploadEntry>& output_entries() { return output_entries_; }
  transport::FrameBatch& batch() { return batch_; }  // the answer's frames
  int64_t last_run_micros() const { return last_run_micros_; }
  // Frees what the last Run left behind (its tensors), after its answer went out.
  void ReleaseRetired() { interpreter_.ReleaseRetired(); }

  void LogConnected() const;
  void LogClosed(const absl::Status& why) const;
  void LogRefused(absl::string_view what, const absl::Status& why) const;
  void LogLanes(int lanes, absl::string_view note) const;

 private:
  struct Loaded {
    plan::Program program;
    uint64_t fingerprint = 0;  // this session's own key for the interpreter's cache
    bool decode = false;       // an LLM decode step (semantic analysis at load)
    int intra_op_threads = 1;  // what its ops run on (NodeOptions::intra_op_threads)
    std::list<uint64_t>::iterator recency;  // its place in recency_
  };

  // Makes what peers pushed under the handles this run reads resident on this session.
  absl::Status AdoptPeerBuffers(const plan::RunBinding& binding);
  // SendToPeer over CUDA IPC; FailedPrecondition when the peer cannot take it that way.
  absl::StatusOr<int64_t> SendToPeerOverCudaIpc(const plan::PeerSendMessage& m);
  // Tells the node's telemetry that this session now keeps `bytes` resident, and the CUDA
  // graph replays its runs added since the last call.
  void PublishFigures(int64_t resident_bytes);

  NodeOptions options_;
  std::string peer_;
  std::string key_;
  PeerInbox* inbox_ = nullptr;
  PeerPool* pool_ = nullptr;
  std::unique_ptr<PeerPool> own_pool_;
  RunGate* gate_ = nullptr;
  NodeTelemetry own_telemetry_;
  NodeTelemetry* telemetry_ = &own_telemetry_;
  const transport::TrafficCounters* traffic_ = nullptr;  // set by Opened
  int64_t published_resident_ = 0;
  int64_t published_replays_ = 0;  // of interpreter_.graph_replays(), in the telemetry
  Interpreter interpreter_;
  int cuda_device_ = -1;                       // N of "cuda:N"; -1 on the CPU
  std::unique_ptr<CudaIpcExporter> exporter_;  // made on first use
  std::unique_ptr<CudaIpcImporter> importer_;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Loaded>> programs_;  // by client program id
  std::list<uint64_t> recency_;  // program ids, least recently loaded or run first
  uint64_t next_fingerprint_ = 1;
  std::string arena_;
  char* upload_base_ = nullptr;  // where UploadArena put the run's uploads (arena_ or pinned)
  std::shared_ptr<transport::SharedPool> shared_pool_;  // the client's tensor pool
  bool pool_registered_ = false;
  bool pool_register_failed_ = false;
  std::vector<std::pair<uint64_t, uint64_t>> pool_scratch_;
  core::ExecuteRequest request_;
  absl::StatusOr<core::ExecuteResult> result_;
  std::string message_;
  plan::RunMessage run_message_;
  std::vector<plan::UploadEntry> output_entries_;
  transport::FrameBatch batch_;
  absl::Time start_;
  int64_t last_run_micros_ = 0;
  int64_t runs_ = 0;
  int inherited_threads_ = 1;  // the session thread's intra-op threads when it started
  int threads_now_ = 1;        // its intra-op threads now
};

// Sends kError for `status` (best effort) and closes the connection.
template <class Conn>
absl::Status RefuseAndClose(Conn& conn, Session& session, uint64_t request_id,
                            absl::string_view what, const absl::Status& status) {
  session.LogRefused(what, status);
  (void)conn.SendBytes(transport::MessageKind::kError, request_id,
                       plan::EncodeError(status, false, session.limits()));
  conn.Close();
  return status;
}

// Where a run's uploads lie in the session's upload arena: one after another, each at a
// multiple of kUploadAlignment (libtorch's own CPU alignment), so that a CPU node computes
// on them in place (core::Upload::in_place). Pooled entries take no arena bytes.
inline constexpr uint64_t kUploadAlignment = 64;
inline uint64_t AlignUploadOffset(uint64_t offset) {
  return (offset + kUploadAlignment - 1) & ~(kUploadAlignment - 1);
}
inline uint64_t UploadArenaBytes(absl::Span<const plan::UploadEntry> entries) {
  uint64_t bytes = 0;
  for (const plan::UploadEntry& e : entries) {
    if (!e.pooled()) bytes = AlignUploadOffset(bytes) + e.nbytes;
  }
  return bytes;
}

// Receives the bytes of `entries` in the kTransfer frames of request `request_id` into
// `dst` (laid out as UploadArenaBytes says), or drops them when `dst` is null. A frame of the wrong
// kind, class or size sets *protocol_error (the stream is no longer trusted).
template <class Conn>
absl::Status ReceiveUploads(Conn& conn, uint64_t request_id,
                            absl::Span<const plan::UploadEntry> entries, char* dst,
                            absl::Duration timeout, bool* protocol_error) {
  uint64_t frame_left = 0;
  uint64_t offset = 0;
  for (const plan::UploadEntry& e : entries) {
    if (e.nbytes == 0 || e.pooled()) continue;  // pooled: the bytes are in the shared pool
    offset = AlignUploadOffset(offset);
    if (frame_left == 0) {
      absl::StatusOr<transport::FrameHeader> h = conn.ReceiveHeader(timeout);
      if (!h.ok()) return h.status();
      if (h->kind != transport::MessageKind::kTransfer || h->request_id != request_id ||
          static_cast<uint8_t>(h->traffic) != static_cast<uint8_t>(e.upload_class) ||
          h->payload_bytes == 0) {
        *protocol_error = true;
        return absl::InvalidArgumentError(absl::StrCat(
            "expected a ", plan::UploadClassName(e.upload_class), " transfer frame for request ",
            request_id, ", got ", transport::MessageKindName(h->kind), " (",
            transport::TrafficClassName(h->traffic), ", request ", h->request_id, ", ",
            h->payload_bytes, " bytes)"));
      }
      frame_left = h->payload_bytes;
    }
    if (e.nbytes > frame_left) {
      *protocol_error = true;
      return absl::InvalidArgumentError(absl::StrCat("upload of buffer b", e.buffer, " (", e.nbytes,
                                                     " bytes) spans transfer frames"));
    }
    if (dst != nullptr) {
      absl::Status s = conn.ReceivePayload(dst + offset, static_cast<size_t>(e.nbytes));
      if (!s.ok()) return s;
    } else {
      char sink[16 * 1024];
      for (uint64_t left = e.nbytes; left > 0;) {
        const size_t n = static_cast<size_t>(left < sizeof(sink) ? left : sizeof(sink));
        absl::Status s = conn.ReceivePayload(sink, n);
        if (!s.ok()) return s;
        left -= n;
      }
    }
    offset += e.nbytes;
    frame_left -= e.nbytes;
  }
  if (frame_left != 0) {
    *protocol_error = true;
    return absl::InvalidArgumentError("transfer frame longer than the run's upload table");
  }
  return absl::OkStatus();
}

// Whether a connection can open lanes (transport::Connection<Tcp>).
template <class C, class = void>
struct AcceptsLanes : std::false_type {};
template <class C>
struct AcceptsLanes<C, std::void_t<decltype(std::declval<C&>().AcceptLanes(
                           std::declval<const transport::FrameHeader&>(), 1, absl::Duration()))>>
    : std::true_type {};

// Serves an authenticated session until the peer leaves, a protocol error, or `stop`.
template <class Conn>
absl::Status ServeSession(Conn& conn, Session& session, const std::atomic<bool>& stop) {
  using transport::MessageKind;
  session.AttachPool(transport::PoolOf(conn));
  if (timeline::Enabled()) timeline::NameThread("genie-node session");
  const plan::MessageLimits& limits = session.limits();
  const absl::Duration io_timeout = session.options().io_timeout;
  while (!stop.load(std::memory_order_relaxed)) {
    absl::StatusOr<transport::FrameHeader> header =
        conn.ReceiveHeader(session.options().poll_interval);
    if (!header.ok()) {
      if (absl::IsDeadlineExceeded(header.status()) && !conn.broken()) continue;
      return header.status();  // the client left or the stream broke
    }
    const uint64_t id = header->request_id;
    std::string& message = session.message();
    auto receive_message = [&](uint64_t max_bytes) -> absl::Status {
      if (header->payload_bytes > max_bytes) {
        return absl::InvalidArgumentError(absl::StrCat(
            transport::MessageKindName(header->kind), " frame of ", header->payload_bytes,
            " bytes is above this node's limit of ", max_bytes));
      }
      message.resize(static_cast<size_t>(header->payload_bytes));
      return conn.ReceivePayload(message.data(), message.size());
    };
    switch (header->kind) {
      case MessageKind::kPing: {
        if (header->payload_bytes != 0) {
          return RefuseAndClose(conn, session, id, "ping",
                                absl::InvalidArgumentError("kPing with a payload"));
        }
        absl::Status s =
            conn.SendBytes(MessageKind::kPong, id, plan::EncodeNodeInfo(session.Info()));
        if (!s.ok()) return s;
        break;
      }
      case MessageKind::kStats: {  // genie-smi: node-wide figures; the session is untouched
        absl::Status s = receive_message(plan::MaxStatusQueryBytes());
        if (!s.ok() && conn.broken()) return s;
        if (s.ok()) s = plan::DecodeStatusQuery(message);
        if (!s.ok()) return RefuseAndClose(conn, session, id, "StatusQuery", s);
        s = conn.SendBytes(MessageKind::kStats, id, plan::EncodeNodeStatus(session.Status()));
        if (!s.ok()) return s;
        break;
      }
      case MessageKind::kLoadProgram: {
        absl::Status s = receive_message(plan::MaxLoadProgramBytes(limits));
        if (!s.ok() && conn.broken()) return s;
        if (s.ok()) s = session.Load(message);
        if (!s.ok()) return RefuseAndClose(conn, session, id, "LoadProgram", s);
        break;
      }
      case MessageKind::kRun: {
        std::optional<timeline::Span> step;
        step.emplace("receive run", "bytes", static_cast<int64_t>(header->payload_bytes));
        absl::Status s = receive_message(plan::MaxRunBytes(limits));
        if (!s.ok() && conn.broken()) return s;
        plan::RunMessage& run = session.run_message();
        if (s.ok()) s = plan::DecodeRun(message, limits, &run);
        if (!s.ok()) return RefuseAndClose(conn, session, id, "Run", s);
        // A pool reference that is wrong fails this run only (its ring bytes are drained).
        const uint64_t upload_bytes = UploadArenaBytes(run.uploads);
        absl::Status pool_refs = session.CheckPool(run);
        absl::StatusOr<char*> arena =
            pool_refs.ok() ? session.UploadArena(upload_bytes) : absl::StatusOr<char*>(pool_refs);
        bool protocol_error = false;
        s = ReceiveUploads(conn, id, run.uploads, arena.ok() ? *arena : nullptr, io_timeout,
                           &protocol_error);
        if (protocol_error) return RefuseAndClose(conn, session, id, "Run uploads", s);
        if (!s.ok()) return s;
        bool unknown_program = false;
        step.emplace("run", "program", static_cast<int64_t>(run.program_id));
        absl::StatusOr<const core::ExecuteResult*> result =
            arena.ok() ? session.Run(run, &unknown_program)
                       : absl::StatusOr<const core::ExecuteResult*>(arena.status());
        if (!arena.ok()) session.LogRefused("run", arena.status());
        session.CountRun(result.ok());
        if (!result.ok()) {
          s = conn.SendBytes(MessageKind::kError, id,
                             plan::EncodeError(result.status(), unknown_program, limits));
          session.ReleaseRetired();
          if (!s.ok()) return s;
          break;
        }
        step.emplace("send result");
        plan::ResultMessage out;
        out.stats = (*result)->stats;
        std::vector<plan::UploadEntry>& entries = session.output_entries();
        entries.clear();
        for (const core::HostBytes& b : (*result)->outputs) {
          out.output_bytes.push_back(b.nbytes);
          entries.push_back(plan::UploadEntry{core::kNoBuffer, plan::UploadClass::kActivations,
                                              static_cast<uint64_t>(b.nbytes)});
        }
        // Outputs in their pool blocks (Session::Run put them there) travel in no frame.
        for (const plan::OutputPlacement& o : run.outputs_in_pool) {
          entries[o.output].pool_offset = o.pool_offset;
          out.pooled_outputs.push_back(o.output);
        }
        out.node_micros = session.last_run_micros();
        // The Result and the outputs' transfer frames in one write (SendFrames).
        const std::string result_message = plan::EncodeResult(out);
        transport::FrameBatch& batch = session.batch();
        batch.Clear();
        batch.Begin(MessageKind::kResult, id, transport::TrafficClass::kControl);
        batch.Add(result_message.data(), result_message.size());
        for (const plan::TransferFrame& f : plan::GroupTransfers(
                 entries, transport::transport_traits<typename Conn::Policy>::max_frame_bytes)) {
          batch.Begin(MessageKind::kTransfer, id, transport::TrafficClass::kActivations);
          for (uint32_t k = f.first; k < f.first + f.count; ++k) {
            if (entries[k].pooled()) continue;  // already in its pool block
            const core::HostBytes& b = (*result)->outputs[k];
            if (b.nbytes != 0) batch.Add(b.data, b.nbytes);
          }
        }
        s = conn.SendFrames(batch.frames());
        if (!s.ok()) return s;
        session.ReleaseRetired();  // while the client takes the answer
        break;
      }
      case MessageKind::kPeerSend: {
        absl::Status s = receive_message(plan::MaxPeerSendBytes(limits));
        if (!s.ok() && conn.broken()) return s;
        absl::StatusOr<plan::PeerSendMessage> send = s.ok()
                                                         ? plan::DecodePeerSend(message, limits)
                                                         : absl::StatusOr<plan::PeerSendMessage>(s);
        if (!send.ok()) return RefuseAndClose(conn, session, id, "PeerSend", send.status());
        absl::StatusOr<int64_t> sent =
            session.has_peers() ? session.SendToPeer(*send)
                                : absl::StatusOr<int64_t>(absl::FailedPreconditionError(
                                      "this node does not send to other nodes (no peer inbox)"));
        if (!sent.ok()) {
          s = conn.SendBytes(MessageKind::kError, id,
                             plan::EncodeError(sent.status(), false, limits));
        } else {
          plan::ResultMessage done;
          done.stats.bytes_uploaded = *sent;
          s = conn.SendBytes(MessageKind::kResult, id, plan::EncodeResult(done));
        }
        if (!s.ok()) return s;
        break;
      }
      case MessageKind::kPeerPut: {
        absl::Status s = receive_message(plan::MaxPeerPutBytes(limits));
        if (!s.ok() && conn.broken()) return s;
        absl::StatusOr<plan::PeerPutMessage> put =
            s.ok() ? plan::DecodePeerPut(message, limits) : absl::StatusOr<plan::PeerPutMessage>(s);
        if (!put.ok()) return RefuseAndClose(conn, session, id, "PeerPut", put.status());
        if (!session.has_peers()) {
          return RefuseAndClose(conn, session, id, "PeerPut",
                                absl::FailedPreconditionError(
                                    "this node takes no buffers from other nodes (no peer inbox)"));
        }
        const plan::UploadEntry entry{core::kNoBuffer, plan::UploadClass::kActivations,
                                      put->nbytes()};
        if (!put->cuda_ipc.empty()) {
          s = session.AcceptCudaIpcPut(*put);  // no transfer frame: GPU to GPU
        } else {
          absl::StatusOr<char*> arena = session.UploadArena(entry.nbytes);
          bool protocol_error = false;
          s = ReceiveUploads(conn, id, absl::Span<const plan::UploadEntry>(&entry, 1),
                             arena.ok() ? *arena : nullptr, io_timeout, &protocol_error);
          if (protocol_error) return RefuseAndClose(conn, session, id, "PeerPut bytes", s);
          if (!s.ok()) return s;
          s = arena.ok() ? session.AcceptPut(*put, std::string(*arena, entry.nbytes))
                         : arena.status();
        }
        if (!s.ok()) {
          s = conn.SendBytes(MessageKind::kError, id, plan::EncodeError(s, false, limits));
        } else {
          plan::ResultMessage done;
          done.stats.bytes_uploaded = static_cast<int64_t>(entry.nbytes);
          s = conn.SendBytes(MessageKind::kResult, id, plan::EncodeResult(done));
        }
        if (!s.ok()) return s;
        break;
      }
      case MessageKind::kLanes: {
        if constexpr (AcceptsLanes<Conn>::value) {
          auto lanes = conn.AcceptLanes(*header, MaxLanesFor(session.options()),
                                        session.options().auth_timeout);
          if (!lanes.ok()) return RefuseAndClose(conn, session, id, "Lanes", lanes.status());
          session.LogLanes(lanes->lanes, lanes->note);
        } else {
          return RefuseAndClose(
              conn, session, id, "Lanes",
              absl::InvalidArgumentError(absl::StrCat(
                  "kLanes: this connection's transport has no lanes (only Tcp has them)")));
        }
        break;
      }
      case MessageKind::kGoodbye:
        (void)conn.DiscardPayload();
        conn.Close();
        return absl::OkStatus();
      default:
        return RefuseAndClose(
            conn, session, id, "frame",
            absl::InvalidArgumentError(absl::StrCat(
                "unexpected ", transport::MessageKindName(header->kind),
                " frame (this node takes kPing, kStats, kLoadProgram, kRun, kPeerSend, "
                "kPeerPut, kGoodbye)")));
    }
  }
  (void)conn.SendBytes(MessageKind::kGoodbye, 0, "node shutting down");
  conn.Close();
  return absl::CancelledError("node shutting down");
}

}  // namespace node_internal

// Authenticates `conn` with `key`, then serves it until the client leaves, it breaks the
// protocol, or `stop` becomes true. Returns why the session ended (OK: the client said
// goodbye or closed). With `inbox`, the session also sends to and takes from other nodes
// (over `pool`'s connections; null: a pool of the session's own). With `gate`, its runs
// are admitted by that node-wide RunGate. With `telemetry`, it counts into the node's
// figures for genie-smi (null: a status query on it sees this session alone).
template <class Conn>
absl::Status ServeConnection(Conn& conn, absl::string_view key, const NodeOptions& options,
                             const std::atomic<bool>& stop, PeerInbox* inbox = nullptr,
                             PeerPool* pool = nullptr, RunGate* gate = nullptr,
                             NodeTelemetry* telemetry = nullptr) {
  node_internal::Session session(options, conn.peer());
  if (inbox != nullptr) session.AttachPeers(std::string(key), inbox, pool);
  session.AttachGate(gate);
  session.AttachTelemetry(telemetry);
  absl::Status s = transport::AuthenticateServer(conn, key, options.auth_timeout);
  if (!s.ok()) {
    session.LogRefused("authentication", s);
    conn.Close();
    return s;
  }
  session.LogConnected();
  session.Opened(&conn.counters());
  s = node_internal::ServeSession(conn, session, stop);
  session.LogClosed(s);
  return s;
}

// A Tcp listener (and, with NodeOptions::shm_socket, a Shm listener beside it) with one
// thread (and one session) per connection: what genie-node runs.
class NodeServer {
 public:
  static absl::StatusOr<std::unique_ptr<NodeServer>> Create(absl::string_view host, uint16_t port,
                                                            std::string key, NodeOptions options);
  ~NodeServer();

  const std::string& host() const;
  uint16_t port() const;
  // The Unix socket path Shm clients connect to; empty without NodeOptions::shm_socket.
  const std::string& shm_socket() const;
  // Accepts and serves until Shutdown() or `*stop` (if given) becomes true, then stops every
  // session (each within about options.poll_interval, or when its current run ends) and
  // returns.
  void Serve(const std::atomic<bool>* stop = nullptr);
  // Makes Serve return; safe from any thread.
  void Shutdown();
  // Sessions currently open.
  int active_sessions() const;
  // What this node sent to and received from other nodes.
  PeerStats peer_stats() const;
  // How runs were admitted (zeros without NodeOptions::run_slots).
  RunGate::Stats gate_stats() const;

 private:
  struct Impl;
  explicit NodeServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace genie::runtime

#endif  // GENIE_RUNTIME_NODE_SERVER_H_
