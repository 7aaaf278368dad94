// File: genie/runtime/node_server.cc
// genie-node's cold paths: a session's program cache, binding a Run to its program and
// running it on the session's interpreter, logging; and the Tcp accept loop with one thread
// per connection. The per-message loop itself is the template in node_server.h.
#include "genie/runtime/node_server.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <list>
#include <mutex>
#include <new>
#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "genie/core/cpu_cores.h"
#include "genie/core/status.h"
#include "genie/runtime/cpu_lanes.h"
#include "genie/runtime/device_memory.h"
#include "genie/runtime/intra_op_threads.h"
#include "genie/semantic/semantics.h"
#include "genie/transport/shm.h"
#include "genie/transport/tcp.h"

namespace genie::runtime {

// ---- PeerInbox ----------------------------------------------------------------------

absl::Status PeerInbox::Put(uint64_t handle, Entry entry) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t bytes = entry.held_bytes();
  auto it = entries_.find(handle);
  const int64_t replaced = it == entries_.end() ? 0 : it->second.held_bytes();
  if (max_bytes_ > 0 && held_ - replaced + bytes > max_bytes_) {
    ++stats_.puts_refused;
    return absl::ResourceExhaustedError(absl::StrCat(
        "this node's peer inbox holds ", held_, " bytes in ", entries_.size(),
        " buffers that no run has read yet; handle ", handle, " (", bytes,
        " bytes) would take it past --peer_inbox_bytes=", max_bytes_,
        "; start genie-node with a larger --peer_inbox_bytes (0: no bound), or run the "
        "parts that read what was sent before sending more"));
  }
  ++stats_.puts;
  if (entry.device) ++stats_.cuda_ipc_puts;
  stats_.bytes_received += bytes;
  held_ += bytes - replaced;
  entries_[handle] = std::move(entry);
  size_.store(entries_.size(), std::memory_order_release);
  return absl::OkStatus();
}

bool PeerInbox::Take(uint64_t handle, Entry* out) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(handle);
  if (it == entries_.end()) return false;
  *out = std::move(it->second);
  held_ -= out->held_bytes();
  entries_.erase(it);
  size_.store(entries_.size(), std::memory_order_release);
  return true;
}

void PeerInbox::CountSend(int64_t bytes, bool cuda_ipc) {
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.sends;
  if (cuda_ipc) ++stats_.cuda_ipc_sends;
  stats_.bytes_sent += bytes;
}

void PeerInbox::CountConnection(bool reused, int lanes) {
  std::lock_guard<std::mutex> lock(mu_);
  ++(reused ? stats_.connections_reused : stats_.connections_opened);
  if (!reused) stats_.lanes_opened += std::max(0, lanes - 1);
}

PeerStats PeerInbox::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  PeerStats out = stats_;
  out.inbox_bytes = held_;
  out.inbox_buffers = static_cast<int64_t>(entries_.size());
  return out;
}

// ---- RunGate ------------------------------------------------------------------------

const RunGate::Waiter* RunGate::Next() const {
  if (waiting_.empty()) return nullptr;
  // A run that decode steps went ahead of kMaxOvertakes times goes next: decode first,
  // but no prefill starves.
  if (decode_first_ && waiting_.front().overtaken < kMaxOvertakes) {
    for (const Waiter& w : waiting_) {
      if (w.decode) return &w;
    }
  }
  return &waiting_.front();
}

void RunGate::Enter(bool decode) {
  if (slots_ <= 0) return;
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t ticket = next_ticket_++;
  waiting_.push_back(Waiter{ticket, decode, 0});
  if (free_ < (decode || !decode_first_ || slots_ == 1 ? 1 : 2) || Next()->ticket != ticket) {
    ++stats_.waited;
  }
  // With several slots and decode first, other runs leave the last slot to decode steps:
  // a prefill never makes a decode step wait for a slot.
  const int needed = decode || !decode_first_ || slots_ == 1 ? 1 : 2;
  cv_.wait(lock, [&] { return free_ >= needed && Next()->ticket == ticket; });
  // Admitted: a decode run that leaves earlier waiters behind went ahead of them.
  if (decode && waiting_.front().ticket != ticket) {
    ++stats_.decode_ahead;
    for (Waiter& w : waiting_) {
      if (w.ticket == ticket) break;
      ++w.overtaken;
    }
  }
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    if (it->ticket == ticket) {
      waiting_.erase(it);
      break;
    }
  }
  --free_;
  ++stats_.admitted;
  if (decode) ++stats_.decode_admitted;
  cv_.notify_all();  // another slot may be free for the next waiter
}

void RunGate::Leave() {
  if (slots_ <= 0) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++free_;
  }
  cv_.notify_all();
}

int RunGate::waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(waiting_.size());
}

RunGate::Stats RunGate::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

// ---- PeerPool -----------------------------------------------------------------------

struct PeerPool::Link {
  std::mutex mu;  // one transfer at a time on this connection
  std::unique_ptr<transport::Connection<transport::Tcp>> conn;
  uint64_t next_id = 1;
};

PeerPool::PeerPool(std::string key, const NodeOptions& options, PeerInbox* counters)
    : key_(std::move(key)), options_(options), counters_(counters) {}

PeerPool::~PeerPool() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [peer, link] : links_) {
    std::lock_guard<std::mutex> link_lock(link->mu);
    if (link->conn != nullptr && !link->conn->broken()) {
      (void)link->conn->SendBytes(transport::MessageKind::kGoodbye, 0, "");
      link->conn->Close();
    }
  }
}

absl::StatusOr<int64_t> PeerPool::Put(const std::string& host, uint16_t port,
                                      const plan::PeerPutMessage& m, const void* bytes,
                                      size_t nbytes) {
  using transport::MessageKind;
  const std::string peer = absl::StrCat(host, ":", port);
  std::shared_ptr<Link> link;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::shared_ptr<Link>& slot = links_[peer];
    if (slot == nullptr) slot = std::make_shared<Link>();
    link = slot;
  }
  std::lock_guard<std::mutex> link_lock(link->mu);
  const plan::MessageLimits& limits = options_.limits;
  for (int attempt = 0;; ++attempt) {
    const bool reused = link->conn != nullptr && !link->conn->broken();
    int socket_count = 1;
    if (!reused) {
      link->conn.reset();
      transport::ConnectionOptions conn_options;
      conn_options.send_timeout = options_.io_timeout;
      conn_options.payload_timeout = options_.io_timeout;
      absl::StatusOr<transport::Connection<transport::Tcp>> conn =
          transport::Connection<transport::Tcp>::Connect(host, port, options_.io_timeout,
                                                         conn_options);
      if (!conn.ok()) {
        return absl::Status(conn.status().code(),
                            absl::StrCat("connecting (is the peer node up and reachable from "
                                         "this node?): ",
                                         conn.status().message()));
      }
      absl::Status auth = transport::AuthenticateClient(*conn, key_, options_.auth_timeout);
      if (!auth.ok()) {
        return absl::Status(auth.code(), absl::StrCat("authenticating (do both nodes use the same "
                                                      "key?): ",
                                                      auth.message()));
      }
      // Large transfers are striped over lanes, as a client's uploads are; lanes the peer
      // does not grant leave one socket.
      absl::StatusOr<transport::LaneResult> lanes =
          conn->OpenLanes(options_.io_timeout, options_.peer_lanes);
      if (!lanes.ok()) {
        return absl::Status(lanes.status().code(), absl::StrCat("opening lanes to the peer node: ",
                                                                lanes.status().message()));
      }
      socket_count = lanes->lanes;
      link->conn = std::make_unique<transport::Connection<transport::Tcp>>(std::move(*conn));
    }
    counters_->CountConnection(reused, socket_count);
    transport::Connection<transport::Tcp>& conn = *link->conn;
    const uint64_t id = link->next_id++;
    // A transport failure on a connection that sat in the pool: it went stale (the peer
    // restarted or closed it); replace it once. Anything else is this transfer's error.
    auto lost = [&](absl::string_view doing, const absl::Status& why) -> absl::Status {
      conn.Close();
      link->conn.reset();
      return absl::Status(why.code(), absl::StrCat(doing, ": ", why.message()));
    };
    absl::Status s = conn.SendBytes(MessageKind::kPeerPut, id, plan::EncodePeerPut(m));
    if (s.ok() && nbytes > 0 && m.cuda_ipc.empty()) {
      const transport::Piece piece{bytes, nbytes};
      s = conn.Send(MessageKind::kTransfer, id, absl::Span<const transport::Piece>(&piece, 1),
                    transport::TrafficClass::kActivations);
    }
    if (!s.ok()) {
      s = lost("sending", s);
      if (reused && attempt == 0) continue;
      return s;
    }
    absl::StatusOr<transport::FrameHeader> header = conn.ReceiveHeader(options_.io_timeout);
    if (!header.ok() || header->kind == MessageKind::kGoodbye) {
      s = lost("waiting for the peer's answer",
               header.ok() ? absl::UnavailableError("the peer node closed the connection")
                           : header.status());
      if (reused && attempt == 0) continue;
      return s;
    }
    if (header->payload_bytes >
            std::max(plan::MaxResultBytes(limits), plan::MaxErrorBytes(limits)) ||
        header->request_id != id ||
        (header->kind != MessageKind::kResult && header->kind != MessageKind::kError)) {
      return lost("reading the peer's answer",
                  absl::InvalidArgumentError(absl::StrCat(
                      "unexpected ", transport::MessageKindName(header->kind), " frame of ",
                      header->payload_bytes, " bytes for request ", header->request_id)));
    }
    std::string answer(static_cast<size_t>(header->payload_bytes), '\0');
    s = conn.ReceivePayload(answer.data(), answer.size());
    if (!s.ok()) return lost("reading the peer's answer", s);
    if (header->kind == MessageKind::kError) {
      absl::StatusOr<plan::ErrorMessage> e = plan::DecodeError(answer, limits);
      if (!e.ok()) return lost("reading the peer's refusal", e.status());
      const absl::Status refused = e->ToStatus();
      return absl::Status(refused.code(), absl::StrCat("the peer refused: ", refused.message()));
    }
    plan::ResultMessage done;
    s = plan::DecodeResult(answer, limits, &done);
    if (!s.ok()) return lost("reading the peer's answer", s);
    const uint64_t expected = m.cuda_ipc.empty() ? nbytes : m.nbytes();
    if (done.stats.bytes_uploaded != static_cast<int64_t>(expected)) {
      return absl::DataLossError(
          absl::StrCat("the peer took ", done.stats.bytes_uploaded, " bytes of ", expected));
    }
    return static_cast<int64_t>(expected);
  }
}

bool PeerPool::MayUseCudaIpc(const std::string& host, uint16_t port) {
  std::lock_guard<std::mutex> lock(mu_);
  return !no_cuda_ipc_.contains(absl::StrCat(host, ":", port));
}

void PeerPool::NoCudaIpc(const std::string& host, uint16_t port) {
  std::lock_guard<std::mutex> lock(mu_);
  no_cuda_ipc_[absl::StrCat(host, ":", port)] = true;
}

// ---- NodeTelemetry ------------------------------------------------------------------

void NodeTelemetry::Open(const transport::TrafficCounters* traffic) {
  std::lock_guard<std::mutex> lock(mu_);
  open_.push_back(traffic);
  ++sessions_served_;
}

void NodeTelemetry::Close(const transport::TrafficCounters* traffic) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = std::find(open_.begin(), open_.end(), traffic);
  if (it == open_.end()) return;
  closed_ = closed_ + traffic->Snapshot();
  open_.erase(it);
}

plan::NodeStatusMessage NodeTelemetry::Snapshot(const transport::TrafficCounters* asker) const {
  plan::NodeStatusMessage m;
  m.uptime_micros = absl::ToInt64Microseconds(absl::Now() - start_);
  m.runs = runs_.load(std::memory_order_relaxed);
  m.run_errors = run_errors_.load(std::memory_order_relaxed);
  m.programs_cached =
      static_cast<uint64_t>(std::max<int64_t>(0, programs_.load(std::memory_order_relaxed)));
  m.resident_bytes = std::max<int64_t>(0, resident_.load(std::memory_order_relaxed));
  std::lock_guard<std::mutex> lock(mu_);
  transport::TrafficSnapshot traffic = closed_;
  uint32_t open = 0;
  for (const transport::TrafficCounters* c : open_) {
    traffic = traffic + c->Snapshot();
    if (c != asker) ++open;
  }
  m.open_sessions = open;
  m.sessions_served = sessions_served_;
  m.bytes_received = traffic.TotalBytes(transport::Direction::kReceived);
  m.bytes_sent = traffic.TotalBytes(transport::Direction::kSent);
  return m;
}

uint64_t MaxRegisteredPoolBytes(const NodeOptions& options) {
  uint64_t limit = static_cast<uint64_t>(std::max<int64_t>(0, options.max_registered_pool_bytes));
  if (options.memory_budget_bytes > 0) {
    limit = std::min(limit, static_cast<uint64_t>(options.memory_budget_bytes));
  }
  return limit;
}

int MaxLanesFor(const NodeOptions& options) {
  if (options.max_lanes > 0) return options.max_lanes;
  static const int automatic = std::clamp(core::UsableCores() / 2, 1, 8);
  return automatic;
}

namespace node_internal {
namespace {

std::string FormatBytes(uint64_t n) {
  if (n < 1024) return absl::StrCat(n, " B");
  if (n < (uint64_t{1} << 20)) return absl::StrFormat("%.1f KiB", n / 1024.0);
  if (n < (uint64_t{1} << 30)) return absl::StrFormat("%.1f MiB", n / 1048576.0);
  return absl::StrFormat("%.2f GiB", n / 1073741824.0);
}

void LogLine(const std::string& line) {
  // One write per line, so lines of concurrent sessions do not interleave.
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

InterpreterOptions InterpreterOptionsFor(const NodeOptions& options) {
  InterpreterOptions o;
  o.device = options.device;
  o.memory_budget_bytes = options.memory_budget_bytes;
  o.max_cached_programs = options.max_cached_programs;
  o.cuda_streams = options.cuda_streams;
  o.cuda_graphs = options.cuda_graphs;
  o.cpu_lanes = options.cpu_lanes > 0 ? options.cpu_lanes : AutomaticCpuLanes();
  o.automatic_cpu_lanes = options.cpu_lanes == 0;
  return o;
}

}  // namespace

Session::Session(const NodeOptions& options, std::string peer)
    : options_(options),
      peer_(std::move(peer)),
      interpreter_(InterpreterOptionsFor(options)),
      start_(absl::Now()) {
  int index = 0;
  if (options_.device == "cuda") {
    cuda_device_ = 0;
  } else if (absl::StartsWith(options_.device, "cuda:") &&
             absl::SimpleAtoi(options_.device.substr(5), &index)) {
    cuda_device_ = index;
  }
  // The session's ops run on the thread that constructs it (ServeConnection's).
  inherited_threads_ = threads_now_ = IntraOpThreadsOfThisThread();
}

Session::~Session() {
  // Before the pool can be unmapped (this session may hold its last reference).
  if (pool_registered_) interpreter_.UnregisterHostMemory(shared_pool_->base());
  // What this session held leaves the node's figures with it.
  telemetry_->AddPrograms(-static_cast<int64_t>(programs_.size()));
  telemetry_->AddResident(-published_resident_);
  if (traffic_ != nullptr) telemetry_->Close(traffic_);
}

void Session::Opened(const transport::TrafficCounters* traffic) {
  traffic_ = traffic;
  telemetry_->Open(traffic);
}

void Session::PublishFigures(int64_t resident_bytes) {
  telemetry_->AddResident(resident_bytes - published_resident_);
  published_resident_ = resident_bytes;
  const int64_t replays = interpreter_.graph_replays();
  telemetry_->AddGraphReplays(replays - published_replays_);
  published_replays_ = replays;
}

plan::NodeStatusMessage Session::Status() const {
  plan::NodeStatusMessage m = telemetry_->Snapshot(traffic_);
  m.device = options_.device;
  m.memory_budget_bytes = options_.memory_budget_bytes;
  absl::StatusOr<DeviceMemory> memory = QueryDeviceMemory(options_.device);
  if (!memory.ok()) {
    // Said in the node's log; the answer goes out without GPU figures.
    if (options_.log_connections) {
      LogLine(absl::StrCat("genie-node: status for ", peer_,
                           " without GPU figures: ", memory.status().ToString()));
    }
  } else if (memory->gpu) {
    m.gpu = true;
    m.gpu_allocated_bytes = memory->allocated_bytes;
    m.gpu_reserved_bytes = memory->reserved_bytes;
    m.gpu_free_bytes = memory->free_bytes;
    m.gpu_total_bytes = std::max(memory->total_bytes, memory->free_bytes);
    m.graph_replays = telemetry_->graph_replays();
  }
  return m;
}

absl::Status Session::CheckPool(const plan::RunMessage& run) {
  GENIE_RETURN_IF_ERROR(plan::CheckPoolReferences(
      run, shared_pool_ != nullptr ? shared_pool_->bytes() : 0, &pool_scratch_));
  if (shared_pool_ == nullptr || pool_registered_ || pool_register_failed_ || cuda_device_ < 0 ||
      pool_scratch_.empty()) {
    return absl::OkStatus();
  }
  // Page-locked once per connection, so the GPU copies from and into it by DMA. If that is
  // refused, the pool still works, through staging copies: said once, never retried. The
  // client chose its size: above the node's limit it is not page-locked at all.
  const uint64_t limit = MaxRegisteredPoolBytes(options_);
  if (shared_pool_->bytes() > limit) {
    pool_register_failed_ = true;
    if (options_.log_connections) {
      LogLine(absl::StrCat(
          "genie-node: session ", peer_, ": its tensor pool of ",
          FormatBytes(shared_pool_->bytes()), " is above this node's limit of ", FormatBytes(limit),
          " for page-locked memory (--max_registered_pool_bytes, and --memory_budget when set), "
          "so it is used through staging copies; for direct GPU copies use a smaller pool "
          "(kPoolBytes in the client's Shm policy) or start genie-node with a larger "
          "--max_registered_pool_bytes"));
    }
    return absl::OkStatus();
  }
  pool_registered_ = true;
  absl::Status s = interpreter_.RegisterHostMemory(shared_pool_->base(), shared_pool_->bytes());
  if (!s.ok()) {
    pool_registered_ = false;
    pool_register_failed_ = true;
    if (options_.log_connections) {
      LogLine(absl::StrCat("genie-node: session ", peer_, ": ", s.message(),
                           "; its tensor pool is used through staging copies (a smaller "
                           "kPoolBytes may be page-locked)"));
    }
  }
  return absl::OkStatus();
}

plan::NodeInfoMessage Session::Info() const {
  plan::NodeInfoMessage info;
  info.device = options_.device;
  info.max_program_bytes = options_.limits.max_program_bytes;
  info.max_cached_programs = options_.max_cached_programs;
  info.memory_budget_bytes = options_.memory_budget_bytes;
  return info;
}

absl::Status Session::Load(absl::string_view payload) {
  GENIE_ASSIGN_OR_RETURN(plan::LoadProgramMessage load, plan::DecodeLoadProgram(payload, limits()));
  absl::StatusOr<plan::Program> program = plan::DecodeProgram(load.program, limits());
  if (!program.ok()) {
    return absl::Status(
        program.status().code(),
        absl::StrCat("program ", load.program_id, " refused: ", program.status().message()));
  }
  auto loaded = std::make_unique<Loaded>();
  loaded->program = std::move(*program);
  // The interpreter caches resolved operators by fingerprint: give every load its own, so a
  // reused program id can never run with another graph's operators.
  loaded->fingerprint = next_fingerprint_++;
  if (options_.run_slots > 0) {
    // Phase from the graph itself (KV cache growth, one query position): decode steps are
    // admitted ahead of other runs.
    std::vector<core::BufferId> keep;
    for (const plan::ResidentSlot& k : loaded->program.keep) keep.push_back(k.buffer);
    loaded->decode = semantic::Analyze(loaded->program.graph, keep).phase_of_graph ==
                     semantic::PhaseKind::kDecode;
  }
  loaded->intra_op_threads = options_.intra_op_threads > 0
                                 ? options_.intra_op_threads
                                 : IntraOpThreadsFor(loaded->program.graph, inherited_threads_);
  auto it = programs_.find(load.program_id);
  if (it != programs_.end()) {
    loaded->recency = it->second->recency;
    recency_.splice(recency_.end(), recency_, loaded->recency);
    it->second = std::move(loaded);
    return absl::OkStatus();
  }
  const size_t before = programs_.size();
  while (programs_.size() >= std::max<uint32_t>(1, options_.max_cached_programs) &&
         !recency_.empty()) {
    programs_.erase(recency_.front());  // the client, also LRU, reloads it if it comes back
    recency_.pop_front();
  }
  loaded->recency = recency_.insert(recency_.end(), load.program_id);
  programs_.emplace(load.program_id, std::move(loaded));
  telemetry_->AddPrograms(static_cast<int64_t>(programs_.size()) - static_cast<int64_t>(before));
  return absl::OkStatus();
}

absl::StatusOr<char*> Session::UploadArena(uint64_t bytes) {
  if (options_.memory_budget_bytes > 0 &&
      bytes > static_cast<uint64_t>(options_.memory_budget_bytes)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "a run uploads ", bytes, " bytes, above this node's memory budget of ",
        options_.memory_budget_bytes,
        " bytes; send less per run or start genie-node with a larger --memory_budget"));
  }
  if (bytes > 0 && cuda_device_ >= 0) {
    // Received straight into page-locked memory: the run copies it to the GPU without a
    // staging copy.
    absl::StatusOr<char*> pinned = interpreter_.PinnedUploadArena(bytes);
    if (!pinned.ok()) return pinned.status();
    upload_base_ = *pinned;
    return upload_base_;
  }
  constexpr uint64_t kKeepArenaBytes = uint64_t{64} << 20;
  const uint64_t with_slack = bytes + kUploadAlignment;  // room to align the base
  try {
    if (arena_.size() > kKeepArenaBytes && arena_.size() > 2 * with_slack) {
      std::string().swap(arena_);
    }
    if (arena_.size() < with_slack) arena_.resize(static_cast<size_t>(with_slack));
  } catch (const std::bad_alloc&) {
    std::string().swap(arena_);
    return absl::ResourceExhaustedError(absl::StrCat(
        "this node cannot allocate ", bytes, " bytes for a run's uploads; send less per run"));
  } catch (const std::length_error&) {
    std::string().swap(arena_);
    return absl::ResourceExhaustedError(
        absl::StrCat("a run's uploads of ", bytes, " bytes cannot be held by this node"));
  }
  const auto base = reinterpret_cast<uintptr_t>(arena_.data());
  upload_base_ = arena_.data() + (AlignUploadOffset(base) - base);
  return upload_base_;
}

absl::StatusOr<const core::ExecuteResult*> Session::Run(const plan::RunMessage& run,
                                                        bool* unknown_program) {
  auto it = programs_.find(run.program_id);
  if (it == programs_.end()) {
    *unknown_program = true;
    return absl::NotFoundError(absl::StrCat(
        "program ", run.program_id,
        " is not loaded on this connection (never sent, or evicted); send LoadProgram first"));
  }
  Loaded& loaded = *it->second;
  recency_.splice(recency_.end(), recency_, loaded.recency);  // most recently used
  plan::Program& program = loaded.program;
  if (run.uploads.size() != program.uploads.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("run of program ", run.program_id, " uploads ", run.uploads.size(),
                     " buffers, the program takes ", program.uploads.size()));
  }
  for (size_t k = 0; k < run.uploads.size(); ++k) {
    const plan::UploadEntry& e = run.uploads[k];
    const plan::UploadSlot& s = program.uploads[k];
    if (e.buffer != s.buffer || e.nbytes != s.nbytes || e.upload_class != s.upload_class) {
      return absl::InvalidArgumentError(absl::StrCat(
          "upload ", k, " of program ", run.program_id, " is b", e.buffer, " with ", e.nbytes,
          " bytes (", plan::UploadClassName(e.upload_class), "); the program expects b", s.buffer,
          " with ", s.nbytes, " bytes (", plan::UploadClassName(s.upload_class), ")"));
    }
  }
  // Checked before anything changes: a refused run takes nothing from the peer inbox.
  for (const plan::OutputPlacement& o : run.outputs_in_pool) {
    if (o.output >= program.outputs.size() || o.nbytes != program.outputs[o.output].nbytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the run reserves ", o.nbytes, " pool bytes for output ", o.output, " of program ",
          run.program_id, ", which has ", program.outputs.size(), " outputs",
          o.output < program.outputs.size()
              ? absl::StrCat(" (that one of ", program.outputs[o.output].nbytes, " bytes)")
              : std::string()));
    }
  }
  GENIE_RETURN_IF_ERROR(plan::ApplyBinding(run.binding, &program));
  if (inbox_ != nullptr && !inbox_->empty()) GENIE_RETURN_IF_ERROR(AdoptPeerBuffers(run.binding));

  request_.graph = &program.graph;
  request_.fingerprint = loaded.fingerprint;
  request_.uploads.clear();
  uint64_t offset = 0;
  for (size_t k = 0; k < program.uploads.size(); ++k) {
    const plan::UploadSlot& s = program.uploads[k];
    const plan::UploadEntry& e = run.uploads[k];
    if (e.pooled()) {  // CheckPool found it inside the pool
      request_.uploads.push_back(
          core::Upload{s.buffer, core::HostBytes{shared_pool_->base() + e.pool_offset,
                                                 static_cast<size_t>(s.nbytes), nullptr}});
      continue;
    }
    offset = AlignUploadOffset(offset);  // as ReceiveUploads laid them out
    // The arena is this session's until the run's tensors are released: computed on in place.
    request_.uploads.push_back(core::Upload{
        s.buffer, core::HostBytes{upload_base_ + offset, static_cast<size_t>(s.nbytes), nullptr},
        /*in_place=*/true});
    offset += s.nbytes;
  }
  request_.output_to.clear();
  if (!run.outputs_in_pool.empty()) {
    request_.output_to.resize(program.outputs.size());
    for (const plan::OutputPlacement& o : run.outputs_in_pool) {  // checked above
      request_.output_to[o.output] = core::HostDestination{shared_pool_->base() + o.pool_offset,
                                                           static_cast<size_t>(o.nbytes)};
    }
  }
  request_.keep.clear();
  for (const plan::ResidentSlot& s : program.keep) request_.keep.push_back(s.buffer);
  request_.release.assign(run.binding.release.begin(), run.binding.release.end());

  if (loaded.intra_op_threads != threads_now_) {
    const absl::Status s = SetIntraOpThreadsOfThisThread(loaded.intra_op_threads);
    if (!s.ok() && options_.log_connections) LogLine(absl::StrCat("genie-node: ", s.ToString()));
    threads_now_ = loaded.intra_op_threads;  // not retried on every run
  }
  if (gate_ != nullptr) gate_->Enter(loaded.decode);
  const absl::Time start = absl::Now();
  {
    timeline::Span span("execute");
    result_ = interpreter_.ExecuteRetiring(request_);  // freed once answered
  }
  last_run_micros_ = absl::ToInt64Microseconds(absl::Now() - start);
  if (gate_ != nullptr) gate_->Leave();
  ++runs_;
  PublishFigures(result_.ok() ? result_->stats.resident_bytes : interpreter_.resident_bytes());
  if (options_.log_runs) {
    if (result_.ok()) {
      LogLine(absl::StrFormat(
          "genie-node: run %s program=%d nodes=%d in=%s out=%s resident=%s %.3f ms%s", peer_,
          run.program_id, result_->stats.nodes_executed, FormatBytes(offset),
          FormatBytes(static_cast<uint64_t>(result_->stats.bytes_downloaded)),
          FormatBytes(static_cast<uint64_t>(result_->stats.resident_bytes)),
          last_run_micros_ / 1000.0, result_->stats.program_cache_hit ? " (cached)" : ""));
    } else {
      LogLine(
          absl::StrFormat("genie-node: run %s program=%d nodes=%d in=%s failed after %.3f ms: %s",
                          peer_, run.program_id, program.graph.nodes().size(), FormatBytes(offset),
                          last_run_micros_ / 1000.0, result_.status().ToString()));
    }
  }
  if (!result_.ok()) return result_.status();
  // An output the interpreter could not write in place (a CPU fallback on a CUDA node) is
  // copied into its block: every reserved block is filled.
  for (const plan::OutputPlacement& o : run.outputs_in_pool) {
    core::HostBytes& b = result_->outputs[o.output];
    unsigned char* dst = shared_pool_->base() + o.pool_offset;
    if (b.data != dst) {
      if (b.nbytes != o.nbytes) {
        return absl::InternalError(absl::StrCat(
            "output ", o.output, " has ", b.nbytes, " bytes, its pool block ", o.nbytes,
            ": an inconsistency inside the node (not the client's fault); the run failed. "
            "Please report it with the program that ran"));
      }
      std::memcpy(dst, b.data, b.nbytes);
      b = core::HostBytes{dst, b.nbytes, nullptr};
    }
  }
  return &*result_;
}

absl::Status Session::AdoptPeerBuffers(const plan::RunBinding& binding) {
  for (uint64_t h : binding.resident_handles) {
    PeerInbox::Entry entry;
    if (!inbox_->Take(h, &entry)) continue;
    if (entry.device) {
      // Taken over CUDA IPC by another session of this node: already on this GPU.
      absl::Status s = interpreter_.AdoptDeviceBuffer(
          h, entry.dtype, entry.numel, [&](void* dst, uint64_t nbytes, void* stream) {
            return CopyOnDevice(dst, entry.device_data, nbytes, stream);
          });
      if (!s.ok()) {
        return absl::Status(s.code(), absl::StrCat("cannot keep handle ", h,
                                                   " that another node sent: ", s.message()));
      }
      continue;
    }
    core::Graph g;
    const core::BufferId b =
        g.AddBuffer(core::Buffer{entry.dtype, entry.numel, core::BufferKind::kHostInput, "", h});
    core::ExecuteRequest r;
    r.graph = &g;
    r.uploads.push_back(
        core::Upload{b, core::HostBytes{entry.bytes.data(), entry.bytes.size(), nullptr}});
    r.keep = {b};
    absl::StatusOr<core::ExecuteResult> kept = interpreter_.Execute(r);
    if (!kept.ok()) {
      return absl::Status(kept.status().code(),
                          absl::StrCat("cannot keep handle ", h,
                                       " that another node sent: ", kept.status().message()));
    }
  }
  return absl::OkStatus();
}

void Session::AttachPeers(std::string key, PeerInbox* inbox, PeerPool* pool) {
  key_ = std::move(key);
  inbox_ = inbox;
  pool_ = pool;
  if (pool_ == nullptr) {
    own_pool_ = std::make_unique<PeerPool>(key_, options_, inbox_);
    pool_ = own_pool_.get();
  }
}

absl::StatusOr<int64_t> Session::SendToPeerOverCudaIpc(const plan::PeerSendMessage& m) {
  GENIE_ASSIGN_OR_RETURN(Interpreter::DeviceBuffer buf,
                         interpreter_.ResidentDeviceBuffer(m.handle));
  if (buf.nbytes != m.nbytes()) {
    return absl::InvalidArgumentError(absl::StrCat("handle ", m.handle, " holds ", buf.nbytes,
                                                   " bytes, the send names ", m.nbytes()));
  }
  if (exporter_ == nullptr) {
    absl::StatusOr<std::unique_ptr<CudaIpcExporter>> e = CudaIpcExporter::Create(cuda_device_);
    if (!e.ok()) return absl::FailedPreconditionError(e.status().message());
    exporter_ = std::move(*e);
  }
  absl::StatusOr<CudaIpcDescriptor> d =
      exporter_->Export(buf.base, buf.offset, buf.nbytes, buf.stream, std::move(buf.owner));
  if (!d.ok()) return absl::FailedPreconditionError(d.status().message());
  plan::PeerPutMessage put{m.peer_handle, m.dtype, m.numel};
  put.cuda_ipc = d->Encode();
  absl::StatusOr<int64_t> sent = pool_->Put(m.peer_host, m.peer_port, put, nullptr, 0);
  // The peer answers only after its copy (or without mapping anything, when it refuses),
  // so the memory may be reused. A transfer that broke leaves the export pending: the peer
  // might still be reading, so the memory stays held until this session ends.
  if (sent.ok() || absl::IsFailedPrecondition(sent.status()))
    (void)exporter_->Release(d->export_id);
  return sent;
}

absl::StatusOr<int64_t> Session::SendToPeer(const plan::PeerSendMessage& m) {
  const absl::Time start = absl::Now();
  const std::string peer = absl::StrCat(m.peer_host, ":", m.peer_port);
  auto failed = [&](absl::string_view doing, const absl::Status& why) {
    return absl::Status(
        why.code(), absl::StrCat("sending handle ", m.handle, " (", m.nbytes(), " bytes) to node ",
                                 peer, " failed while ", doing, ": ", why.message()));
  };
  auto finish = [&](int64_t nbytes, bool cuda_ipc) {
    if (m.release) {
      core::Graph none;
      core::ExecuteRequest forget;
      forget.graph = &none;
      forget.release = {m.handle};
      (void)interpreter_.Execute(forget);
      PublishFigures(interpreter_.resident_bytes());
    }
    inbox_->CountSend(nbytes, cuda_ipc);
    if (options_.log_runs) {
      LogLine(absl::StrFormat("genie-node: sent handle %d (%s) to node %s for %s in %.3f ms%s",
                              m.handle, FormatBytes(static_cast<uint64_t>(nbytes)), peer, peer_,
                              absl::ToDoubleMilliseconds(absl::Now() - start),
                              cuda_ipc ? " (CUDA IPC)" : ""));
    }
    return nbytes;
  };
  if (options_.peer_cuda_ipc && cuda_device_ >= 0 && IsLoopbackHost(m.peer_host) &&
      pool_->MayUseCudaIpc(m.peer_host, m.peer_port)) {
    absl::StatusOr<int64_t> sent = SendToPeerOverCudaIpc(m);
    if (sent.ok()) return finish(*sent, /*cuda_ipc=*/true);
    // The peer (or this node) cannot do it GPU to GPU: TCP from now on for that peer.
    if (!absl::IsFailedPrecondition(sent.status()))
      return failed("pushing it over CUDA IPC", sent.status());
    pool_->NoCudaIpc(m.peer_host, m.peer_port);
    if (options_.log_connections) {
      LogLine(absl::StrCat("genie-node: node ", peer, " takes no CUDA IPC (",
                           sent.status().message(), "); sending over TCP"));
    }
  }
  // Read the resident buffer as one contiguous output of a graph without ops.
  core::Graph g;
  const core::BufferId b =
      g.AddBuffer(core::Buffer{m.dtype, m.numel, core::BufferKind::kResident, "", m.handle});
  g.outputs().push_back(core::TensorRef::Contiguous(b, m.dtype, {m.numel}));
  core::ExecuteRequest read;
  read.graph = &g;
  absl::StatusOr<core::ExecuteResult> got = interpreter_.Execute(read);
  if (!got.ok()) return failed("reading it", got.status());
  const core::HostBytes& bytes = got->outputs.at(0);

  absl::StatusOr<int64_t> sent =
      pool_->Put(m.peer_host, m.peer_port, plan::PeerPutMessage{m.peer_handle, m.dtype, m.numel},
                 bytes.data, bytes.nbytes);
  if (!sent.ok()) return failed("pushing it", sent.status());
  return finish(static_cast<int64_t>(bytes.nbytes), /*cuda_ipc=*/false);
}

absl::Status Session::AcceptPut(const plan::PeerPutMessage& m, std::string bytes) {
  if (bytes.size() != m.nbytes()) {
    return absl::InvalidArgumentError(absl::StrCat("PeerPut of handle ", m.handle, " carried ",
                                                   bytes.size(), " bytes, expected ", m.nbytes()));
  }
  if (options_.log_runs) {
    LogLine(absl::StrFormat("genie-node: received handle %d (%s) from node %s", m.handle,
                            FormatBytes(bytes.size()), peer_));
  }
  return inbox_->Put(m.handle, PeerInbox::Entry{m.dtype, m.numel, std::move(bytes)});
}

absl::Status Session::AcceptCudaIpcPut(const plan::PeerPutMessage& m) {
  if (cuda_device_ < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("this node runs on ", options_.device, ": it takes no buffers over CUDA IPC"));
  }
  absl::StatusOr<CudaIpcDescriptor> d = CudaIpcDescriptor::Decode(m.cuda_ipc);
  if (!d.ok())
    return absl::FailedPreconditionError(
        absl::StrCat("unusable CUDA IPC descriptor: ", d.status().message()));
  if (d->nbytes != m.nbytes()) {
    return absl::InvalidArgumentError(absl::StrCat("PeerPut of handle ", m.handle, " offers ",
                                                   d->nbytes, " bytes over CUDA IPC, expected ",
                                                   m.nbytes()));
  }
  if (importer_ == nullptr) {
    absl::StatusOr<std::unique_ptr<CudaIpcImporter>> i = CudaIpcImporter::Create(cuda_device_);
    if (!i.ok()) return absl::FailedPreconditionError(i.status().message());
    importer_ = std::move(*i);
  }
  // Copied into this session's interpreter under the sender's handle (this node-to-node
  // session has no tensors of its own), then handed to the node's inbox as device memory.
  absl::Status s = interpreter_.AdoptDeviceBuffer(
      m.handle, m.dtype, m.numel, [&](void* dst, uint64_t nbytes, void* stream) {
        return importer_->CopyIn(*d, dst, nbytes, stream);
      });
  if (!s.ok())
    return absl::FailedPreconditionError(
        absl::StrCat("taking it over CUDA IPC failed: ", s.message()));
  absl::StatusOr<Interpreter::DeviceBuffer> buf = interpreter_.ResidentDeviceBuffer(m.handle);
  core::Graph none;
  core::ExecuteRequest forget;
  forget.graph = &none;
  forget.release = {m.handle};
  (void)interpreter_.Execute(forget);
  if (!buf.ok()) return buf.status();
  PeerInbox::Entry e;
  e.dtype = m.dtype;
  e.numel = m.numel;
  e.device_data = static_cast<const char*>(buf->base) + buf->offset;
  e.device = std::move(buf->owner);
  if (options_.log_runs) {
    LogLine(absl::StrFormat("genie-node: received handle %d (%s) from node %s over CUDA IPC",
                            m.handle, FormatBytes(m.nbytes()), peer_));
  }
  return inbox_->Put(m.handle, std::move(e));
}

void Session::LogConnected() const {
  if (!options_.log_connections) return;
  LogLine(
      absl::StrCat("genie-node: session ", peer_, " authenticated (device ", options_.device, ")"));
}

void Session::LogLanes(int lanes, absl::string_view note) const {
  if (!options_.log_connections) return;
  LogLine(absl::StrCat("genie-node: session ", peer_, ": ", lanes,
                       lanes == 1 ? " socket" : " lanes", note.empty() ? "" : " (", note,
                       note.empty() ? "" : ")"));
}

void Session::LogClosed(const absl::Status& why) const {
  if (!options_.log_connections) return;
  LogLine(absl::StrFormat("genie-node: session %s closed after %d runs, %.1f s: %s", peer_, runs_,
                          absl::ToDoubleSeconds(absl::Now() - start_),
                          why.ok() ? std::string("client said goodbye") : why.ToString()));
}

void Session::LogRefused(absl::string_view what, const absl::Status& why) const {
  if (!options_.log_connections) return;
  LogLine(absl::StrCat("genie-node: refused ", peer_, " (", what, "): ", why.ToString()));
}

}  // namespace node_internal

// ---- NodeServer ---------------------------------------------------------------------

struct NodeServer::Impl {
  struct Worker {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };

  transport::Listener<transport::Tcp> listener;
  std::optional<transport::Listener<transport::Shm>> shm_listener;
  std::string host;
  std::string key;
  NodeOptions options;
  std::atomic<bool> stop{false};
  std::atomic<int> active{0};
  std::list<Worker> workers;      // touched only by the Tcp accept loop
  std::list<Worker> shm_workers;  // touched only by the Shm accept loop
  PeerInbox inbox;                // shared by every session of this node
  PeerPool pool;                  // this node's connections to other nodes
  RunGate gate;                   // admission of runs (no-op without options.run_slots)
  NodeTelemetry telemetry;        // genie-smi's figures, over every session

  Impl(transport::Listener<transport::Tcp> l, std::string h, std::string k, NodeOptions o)
      : listener(std::move(l)),
        host(std::move(h)),
        key(std::move(k)),
        options(std::move(o)),
        inbox(options.peer_inbox_bytes),
        pool(key, options, &inbox),
        gate(options.run_slots, options.decode_first) {}

  static void Reap(std::list<Worker>& workers, bool all) {
    for (auto it = workers.begin(); it != workers.end();) {
      if (all || it->done->load()) {
        it->thread.join();
        it = workers.erase(it);
      } else {
        ++it;
      }
    }
  }
};

absl::StatusOr<std::unique_ptr<NodeServer>> NodeServer::Create(absl::string_view host,
                                                               uint16_t port, std::string key,
                                                               NodeOptions options) {
  GENIE_RETURN_IF_ERROR(transport::ValidateKey(key));
  absl::StatusOr<transport::Listener<transport::Tcp>> listener =
      transport::Listener<transport::Tcp>::Create(host, port);
  if (!listener.ok()) {
    return absl::Status(listener.status().code(),
                        absl::StrCat("genie-node cannot listen on ", host, ":", port, ": ",
                                     listener.status().message(),
                                     " (is another node using the port? use port 0 for any)"));
  }
  std::optional<transport::Listener<transport::Shm>> shm_listener;
  if (!options.shm_socket.empty()) {
    absl::StatusOr<transport::Listener<transport::Shm>> shm =
        transport::Listener<transport::Shm>::Create(options.shm_socket);
    if (!shm.ok()) {
      return absl::Status(shm.status().code(),
                          absl::StrCat("genie-node cannot listen for shared-memory clients: ",
                                       shm.status().message()));
    }
    shm_listener.emplace(std::move(*shm));
  }
  auto impl = std::make_unique<Impl>(std::move(*listener), std::string(host), std::move(key),
                                     std::move(options));
  impl->shm_listener = std::move(shm_listener);
  return std::unique_ptr<NodeServer>(new NodeServer(std::move(impl)));
}

NodeServer::NodeServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

NodeServer::~NodeServer() {
  impl_->stop = true;
  Impl::Reap(impl_->workers, /*all=*/true);
  Impl::Reap(impl_->shm_workers, /*all=*/true);
}

const std::string& NodeServer::host() const { return impl_->host; }
uint16_t NodeServer::port() const { return impl_->listener.port(); }
const std::string& NodeServer::shm_socket() const {
  static const std::string* const kNone = new std::string();
  return impl_->shm_listener ? impl_->shm_listener->path() : *kNone;
}
int NodeServer::active_sessions() const { return impl_->active.load(); }
PeerStats NodeServer::peer_stats() const { return impl_->inbox.stats(); }
RunGate::Stats NodeServer::gate_stats() const { return impl_->gate.stats(); }
void NodeServer::Shutdown() { impl_->stop = true; }

namespace {

// Accepts on `listener` until `s.stop` or `*stop`, one thread (and session) per connection.
template <class Listener, class Impl>
void AcceptLoop(Listener& listener, std::list<typename Impl::Worker>& workers, Impl& s,
                const transport::ConnectionOptions& conn_options, const std::atomic<bool>* stop) {
  while (!s.stop.load() && (stop == nullptr || !stop->load())) {
    Impl::Reap(workers, /*all=*/false);
    auto conn = listener.Accept(s.options.poll_interval, conn_options);
    if (!conn.ok()) {
      if (!absl::IsDeadlineExceeded(conn.status())) {
        node_internal::LogLine(
            absl::StrCat("genie-node: accept failed: ", conn.status().ToString()));
        absl::SleepFor(s.options.poll_interval);
      }
      continue;
    }
    if (s.options.log_connections) {
      node_internal::LogLine(absl::StrCat("genie-node: connection from ", conn->peer()));
    }
    auto done = std::make_shared<std::atomic<bool>>(false);
    s.active.fetch_add(1);
    workers.push_back(typename Impl::Worker{std::thread([&s, done, c = std::move(*conn)]() mutable {
                                              (void)ServeConnection(c, s.key, s.options, s.stop,
                                                                    &s.inbox, &s.pool, &s.gate,
                                                                    &s.telemetry);
                                              s.active.fetch_sub(1);
                                              done->store(true);
                                            }),
                                            done});
  }
  s.stop = true;
  Impl::Reap(workers, /*all=*/true);
}

}  // namespace

void NodeServer::Serve(const std::atomic<bool>* stop) {
  Impl& s = *impl_;
  transport::ConnectionOptions conn_options;
  conn_options.send_timeout = s.options.io_timeout;
  conn_options.payload_timeout = s.options.io_timeout;
  conn_options.busy_poll = s.options.busy_poll;
  std::thread shm_loop;
  if (s.shm_listener) {
    shm_loop =
        std::thread([&] { AcceptLoop(*s.shm_listener, s.shm_workers, s, conn_options, stop); });
  }
  AcceptLoop(s.listener, s.workers, s, conn_options, stop);
  if (shm_loop.joinable()) shm_loop.join();
}

}  // namespace genie::runtime
