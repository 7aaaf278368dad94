// File: genie/client/remote_executor.cc
// The cold half of RemoteExecutor: the per-connection program cache (lowering, binding,
// encoding of LoadProgram and Run) and every error message a client shows about a node.
#include "genie/client/remote_executor.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "genie/transport/address.h"

namespace genie::client::client_internal {

HostBlockCache::~HostBlockCache() {
  for (const Block& b : free_) delete[] b.data;
}

std::shared_ptr<char> HostBlockCache::Get(size_t n) {
  if (n < kMinBytes) return std::shared_ptr<char>(new char[n], std::default_delete<char[]>());
  Block block{nullptr, 0};
  {
    std::lock_guard<std::mutex> lock(mu_);
    // The smallest free block that holds n without wasting more than a quarter of itself.
    size_t best = free_.size();
    for (size_t k = 0; k < free_.size(); ++k) {
      const size_t c = free_[k].capacity;
      if (c >= n && c - n <= c / 4 && (best == free_.size() || c < free_[best].capacity)) best = k;
    }
    if (best != free_.size()) {
      block = free_[best];
      free_[best] = free_.back();
      free_.pop_back();
      free_bytes_ -= block.capacity;
    }
  }
  if (block.data == nullptr) block = Block{new char[n], n};
  // The block comes back here when the last user lets go (or is freed if this is gone).
  std::weak_ptr<HostBlockCache> home = weak_from_this();
  return std::shared_ptr<char>(block.data, [home, block](char*) {
    if (std::shared_ptr<HostBlockCache> memory = home.lock()) {
      memory->Put(block);
    } else {
      delete[] block.data;
    }
  });
}

void HostBlockCache::Put(Block b) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.size() < kMaxFree && free_bytes_ + b.capacity <= kMaxFreeBytes) {
      free_.push_back(b);
      free_bytes_ += b.capacity;
      return;
    }
  }
  delete[] b.data;
}

absl::StatusOr<plan::PeerSendMessage> PeerSendFor(const core::PeerSend& send) {
  plan::PeerSendMessage m;
  m.handle = send.handle;
  m.dtype = send.dtype;
  m.numel = send.numel;
  m.peer_handle = send.peer_handle;
  m.release = send.release;
  const size_t colon = send.peer.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == send.peer.size()) {
    return absl::InvalidArgumentError(absl::StrCat("peer address \"", send.peer,
                                                   "\" is not host:port"));
  }
  absl::StatusOr<transport::HostPort> peer = transport::ParseHostPort(send.peer);
  if (!peer.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("peer address \"", send.peer, "\" has a bad port"));
  }
  m.peer_host = std::move(peer->host);
  m.peer_port = peer->port;
  return m;
}

std::string NodeName(absl::string_view host, uint16_t port) {
  if (host.find(':') != absl::string_view::npos) return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host, ":", port);
}

std::string ShmNodeName(absl::string_view socket_path) {
  return absl::StrCat("shm:", socket_path);
}

absl::Status ConnectFailed(const std::string& node, const absl::Status& cause) {
  if (absl::StartsWith(node, "shm:")) {
    return absl::UnavailableError(absl::StrCat(
        "cannot use genie-node ", node, ": ", cause.message(),
        ". Check that genie-node runs on this host with --shm_socket=", node.substr(4),
        " (shared memory reaches only a node on the same host; use host:port otherwise)"));
  }
  return absl::UnavailableError(absl::StrCat(
      "cannot use genie-node ", node, ": ", cause.message(),
      ". Check that genie-node runs there (genie-node --listen=", node,
      " --key_file=...), that host and port are right and that the network lets you through"));
}

absl::Status AuthFailed(const std::string& node, const absl::Status& cause) {
  if (absl::IsUnauthenticated(cause)) {
    return absl::UnauthenticatedError(absl::StrCat(
        "genie-node ", node, " refused authentication: ", cause.message(),
        ". Client and node must use the same key (GENIE_KEY or --key_file on both sides)"));
  }
  return ConnectFailed(node, cause);
}

Session::Session(std::string node, plan::NodeInfoMessage info,
                 const RemoteExecutorOptions& options)
    : node_(std::move(node)), info_(std::move(info)), options_(options) {
  capacity_ = std::max<size_t>(1, options_.max_cached_programs);
  if (info_.max_cached_programs > 0) {
    capacity_ = std::min<size_t>(capacity_, info_.max_cached_programs);
  }
  // Never send a program the node will refuse.
  if (info_.max_program_bytes > 0) {
    options_.limits.max_program_bytes =
        std::min(options_.limits.max_program_bytes, info_.max_program_bytes);
  }
}

std::string Session::Describe() const {
  return absl::StrCat("genie-node ", node_, " (", info_.device, ")");
}

absl::Status Session::Prepare(const core::ExecuteRequest& request, uint64_t max_frame_bytes,
                              PreparedRun* out) {
  if (request.graph == nullptr) {
    return absl::InvalidArgumentError("execute request without a graph");
  }
  out->fingerprint = request.fingerprint;
  out->load_message.clear();

  CachedProgram* cached = nullptr;
  plan::RunBinding binding;
  if (request.fingerprint != 0) {
    auto it = programs_.find(request.fingerprint);
    if (it != programs_.end()) {
      absl::StatusOr<plan::RunBinding> bound =
          plan::BindRun(it->second.program, request, &out->upload_order);
      if (bound.ok()) {
        cached = &it->second;
        binding = std::move(*bound);
        lru_.splice(lru_.begin(), lru_, cached->lru);
      } else {
        Forget(request.fingerprint);  // same fingerprint, other tables: lower again
      }
    }
  }
  if (cached == nullptr) {
    absl::StatusOr<plan::Program> lowered = plan::LowerProgram(request);
    if (!lowered.ok()) {
      return absl::Status(lowered.status().code(),
                          absl::StrCat("cannot run this graph on ", Describe(), ": ",
                                       lowered.status().message()));
    }
    absl::StatusOr<plan::RunBinding> bound = plan::BindRun(*lowered, request, &out->upload_order);
    if (!bound.ok()) return bound.status();  // a fresh lowering always binds
    binding = std::move(*bound);
    const uint64_t program_id = next_program_id_++;
    const std::string program_bytes = plan::EncodeProgram(*lowered);
    if (program_bytes.size() > options_.limits.max_program_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the graph's program is ", program_bytes.size(), " bytes, above the ",
          options_.limits.max_program_bytes, "-byte limit of ", Describe(),
          "; split the work into smaller graphs or start the node with a larger "
          "--max_program_bytes"));
    }
    out->load_message = plan::EncodeLoadProgram(program_id, program_bytes);
    if (request.fingerprint != 0) {
      while (programs_.size() >= capacity_ && !lru_.empty()) Forget(lru_.back());
      lru_.push_front(request.fingerprint);
      CachedProgram& slot = programs_[request.fingerprint];
      slot.program_id = program_id;
      slot.program = std::move(*lowered);
      slot.lru = lru_.begin();
      cached = &slot;
    } else {
      // No identity: use it once. Keep the tables for this run only.
      transient_ = std::move(*lowered);
      transient_id_ = program_id;
    }
  }
  const plan::Program& program = cached != nullptr ? cached->program : transient_;
  out->program_id = cached != nullptr ? cached->program_id : transient_id_;

  out->output_bytes.clear();
  for (const plan::OutputSlot& o : program.outputs) out->output_bytes.push_back(o.nbytes);

  plan::RunMessage& run = out->run;
  run.program_id = out->program_id;
  run.binding = std::move(binding);
  run.uploads.clear();
  for (const plan::UploadSlot& slot : program.uploads) {
    run.uploads.push_back(plan::UploadEntry{slot.buffer, slot.upload_class, slot.nbytes});
  }
  run.outputs_in_pool.clear();
  if (run.binding.release.size() > options_.limits.max_handles) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a run releases ", run.binding.release.size(), " resident tensors, above the limit of ",
        options_.limits.max_handles, "; materialize more often"));
  }
  Seal(max_frame_bytes, out);
  return absl::OkStatus();
}

void Session::Seal(uint64_t max_frame_bytes, PreparedRun* out) const {
  out->frames = plan::GroupTransfers(out->run.uploads, max_frame_bytes);
  out->run_message = plan::EncodeRun(out->run);
}

void Session::Forget(uint64_t fingerprint) {
  auto it = programs_.find(fingerprint);
  if (it == programs_.end()) return;
  lru_.erase(it->second.lru);
  programs_.erase(it);
}

absl::Status Session::Lost(absl::string_view doing, const absl::Status& cause) const {
  const std::string what = absl::StrCat(
      "lost genie-node ", node_, " while ", doing, ": ", cause.message(),
      ". The node exited, was killed or the network failed; its resident tensors are gone. "
      "Check the node's log (stderr), restart it, and connect again "
      "(RemoteExecutor::Connect, then frontend::SetExecutor)");
  if (absl::IsDeadlineExceeded(cause)) {
    return absl::DeadlineExceededError(absl::StrCat(
        "genie-node ", node_, " did not answer in time while ", doing, ": ", cause.message(),
        ". The connection was closed; if the work is legitimately long, raise "
        "RemoteExecutorOptions::run_timeout, then connect again"));
  }
  return absl::UnavailableError(what);
}

absl::Status Session::Protocol(absl::string_view what) const {
  return absl::UnavailableError(absl::StrCat(
      "genie-node ", node_, " sent an answer this client cannot accept (", what,
      "); the connection was closed. Run the same Genie release on client and node, "
      "then connect again"));
}

absl::Status Session::Refused(const plan::ErrorMessage& error) const {
  return absl::Status(error.code, absl::StrCat(Describe(), ": ", error.message));
}

}  // namespace genie::client::client_internal
