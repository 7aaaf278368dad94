// File: genie/plan/messages.cc
// Encoders and checking decoders for the client <-> genie-node messages (messages.h).
#include "genie/plan/messages.h"

#include <algorithm>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "genie/core/status.h"
#include "genie/core/wire.h"

namespace genie::plan {
namespace {

constexpr size_t kPrefixBytes = 2 + 1;
constexpr size_t kUploadEntryBytes = 4 + 1 + 8 + 8;
constexpr size_t kOutputPlacementBytes = 4 + 8 + 8;
constexpr size_t kStatsBytes = 1 + 8 * 5;
// NodeStatus after its device string: uptime, sessions (4 + 8), runs, errors, bytes in and
// out, programs, resident, budget; the gpu flag, four GPU sizes, graph replays.
constexpr size_t kNodeStatusFixedBytes = 8 + 4 + 8 + 8 * 7 + 1 + 8 * 4 + 8;

std::string_view StdView(absl::string_view s) { return std::string_view(s.data(), s.size()); }

absl::Status Invalid(std::string message) {
  return absl::InvalidArgumentError(std::move(message));
}

void WritePrefix(core::ByteWriter& w, MessageType type) {
  w.WriteU16(kMessageVersion);
  w.WriteU8(static_cast<uint8_t>(type));
}

absl::StatusOr<MessageType> ReadPrefix(core::ByteReader& r) {
  GENIE_ASSIGN_OR_RETURN(uint16_t version, r.ReadU16("message version"));
  if (version != kMessageVersion) {
    return Invalid(absl::StrCat("message version ", version,
                                " is not supported (this build speaks version ", kMessageVersion,
                                "); run the same Genie release on client and node"));
  }
  GENIE_ASSIGN_OR_RETURN(uint8_t type, r.ReadU8("message type"));
  if (type < static_cast<uint8_t>(MessageType::kNodeInfo) ||
      type > static_cast<uint8_t>(MessageType::kNodeStatus)) {
    return Invalid(absl::StrCat("unknown message type ", static_cast<int>(type)));
  }
  return static_cast<MessageType>(type);
}

absl::Status ExpectType(core::ByteReader& r, MessageType want) {
  GENIE_ASSIGN_OR_RETURN(MessageType got, ReadPrefix(r));
  if (got != want) {
    return Invalid(absl::StrCat("expected a ", MessageTypeName(want), " message, got ",
                                MessageTypeName(got)));
  }
  return absl::OkStatus();
}

// A u32 count no larger than `limit` (and than the bytes left allow).
absl::StatusOr<uint32_t> ReadBoundedCount(core::ByteReader& r, std::string_view what,
                                          size_t element_bytes, uint32_t limit) {
  GENIE_ASSIGN_OR_RETURN(uint32_t n, r.ReadCount(what, element_bytes));
  if (n > limit) {
    return Invalid(absl::StrCat(absl::string_view(what.data(), what.size()), " count ", n,
                                " is above the limit of ", limit));
  }
  return n;
}

absl::Status ReadHandles(core::ByteReader& r, std::string_view what, uint32_t limit,
                         std::vector<uint64_t>* out) {
  GENIE_ASSIGN_OR_RETURN(uint32_t n, ReadBoundedCount(r, what, 8, limit));
  out->clear();
  out->reserve(n);
  for (uint32_t k = 0; k < n; ++k) {
    GENIE_ASSIGN_OR_RETURN(uint64_t h, r.ReadU64(what));
    out->push_back(h);
  }
  return absl::OkStatus();
}

void WriteHandles(core::ByteWriter& w, const std::vector<uint64_t>& handles) {
  w.WriteCount(handles.size(), "handles");
  for (uint64_t h : handles) w.WriteU64(h);
}

core::WireLimits WireFor(uint64_t max_string_bytes) {
  core::WireLimits wire;
  wire.max_count = 0xffffffffu;  // counts are checked against MessageLimits here
  wire.max_string_bytes =
      static_cast<uint32_t>(std::min<uint64_t>(max_string_bytes, uint64_t{0xffffffffu}));
  return wire;
}

}  // namespace

const char* MessageTypeName(MessageType type) {
  switch (type) {
    case MessageType::kNodeInfo:
      return "NodeInfo";
    case MessageType::kLoadProgram:
      return "LoadProgram";
    case MessageType::kRun:
      return "Run";
    case MessageType::kResult:
      return "Result";
    case MessageType::kError:
      return "Error";
    case MessageType::kPeerSend:
      return "PeerSend";
    case MessageType::kPeerPut:
      return "PeerPut";
    case MessageType::kStatusQuery:
      return "StatusQuery";
    case MessageType::kNodeStatus:
      return "NodeStatus";
  }
  return "unknown";
}

absl::StatusOr<MessageType> PeekMessageType(absl::string_view bytes) {
  core::ByteReader r(StdView(bytes));
  return ReadPrefix(r);
}

// ---- NodeInfo -----------------------------------------------------------------------

std::string EncodeNodeInfo(const NodeInfoMessage& m) {
  core::ByteWriter w;
  WritePrefix(w, MessageType::kNodeInfo);
  w.WriteString(m.device);
  w.WriteU64(m.max_program_bytes);
  w.WriteU32(m.max_cached_programs);
  w.WriteI64(m.memory_budget_bytes);
  return w.Release();
}

absl::StatusOr<NodeInfoMessage> DecodeNodeInfo(absl::string_view bytes,
                                               const MessageLimits& limits) {
  if (bytes.size() > MaxNodeInfoBytes(limits)) {
    return Invalid(absl::StrCat("NodeInfo message of ", bytes.size(), " bytes is too large"));
  }
  core::ByteReader r(StdView(bytes), WireFor(limits.max_string_bytes));
  GENIE_RETURN_IF_ERROR(ExpectType(r, MessageType::kNodeInfo));
  NodeInfoMessage m;
  GENIE_ASSIGN_OR_RETURN(m.device, r.ReadString("node device"));
  GENIE_ASSIGN_OR_RETURN(m.max_program_bytes, r.ReadU64("node max program bytes"));
  GENIE_ASSIGN_OR_RETURN(m.max_cached_programs, r.ReadU32("node max cached programs"));
  GENIE_ASSIGN_OR_RETURN(m.memory_budget_bytes, r.ReadI64("node memory budget"));
  if (m.memory_budget_bytes < 0) return Invalid("node memory budget is negative");
  GENIE_RETURN_IF_ERROR(r.ExpectEnd("NodeInfo message"));
  return m;
}

// ---- StatusQuery / NodeStatus -------------------------------------------------------

std::string EncodeStatusQuery() {
  core::ByteWriter w;
  WritePrefix(w, MessageType::kStatusQuery);
  return w.Release();
}

absl::Status DecodeStatusQuery(absl::string_view bytes) {
  if (bytes.size() > MaxStatusQueryBytes()) {
    return Invalid(absl::StrCat("StatusQuery message of ", bytes.size(),
                                " bytes is too large (it has no fields)"));
  }
  core::ByteReader r(StdView(bytes));
  GENIE_RETURN_IF_ERROR(ExpectType(r, MessageType::kStatusQuery));
  return r.ExpectEnd("StatusQuery message");
}

std::string EncodeNodeStatus(const NodeStatusMessage& m) {
  core::ByteWriter w;
  WritePrefix(w, MessageType::kNodeStatus);
  w.WriteString(m.device);
  w.WriteI64(m.uptime_micros);
  w.WriteU32(m.open_sessions);
  w.WriteU64(m.sessions_served);
  w.WriteU64(m.runs);
  w.WriteU64(m.run_errors);
  w.WriteU64(m.bytes_received);
  w.WriteU64(m.bytes_sent);
  w.WriteU64(m.programs_cached);
  w.WriteI64(m.resident_bytes);
  w.WriteI64(m.memory_budget_bytes);
  w.WriteU8(m.gpu ? 1 : 0);
  w.WriteI64(m.gpu_allocated_bytes);
  w.WriteI64(m.gpu_reserved_bytes);
  w.WriteI64(m.gpu_free_bytes);
  w.WriteI64(m.gpu_total_bytes);
  w.WriteU64(m.graph_replays);
  return w.Release();
}

absl::StatusOr<NodeStatusMessage> DecodeNodeStatus(absl::string_view bytes,
                                                   const MessageLimits& limits) {
  if (bytes.size() > MaxNodeStatusBytes(limits)) {
    return Invalid(absl::StrCat("NodeStatus message of ", bytes.size(),
                                " bytes is above the limit of ", MaxNodeStatusBytes(limits)));
  }
  core::ByteReader r(StdView(bytes), WireFor(limits.max_string_bytes));
  GENIE_RETURN_IF_ERROR(ExpectType(r, MessageType::kNodeStatus));
  NodeStatusMessage m;
  GENIE_ASSIGN_OR_RETURN(m.device, r.ReadString("node device"));
  GENIE_ASSIGN_OR_RETURN(m.uptime_micros, r.ReadI64("node uptime"));
  GENIE_ASSIGN_OR_RETURN(m.open_sessions, r.ReadU32("open sessions"));
  GENIE_ASSIGN_OR_RETURN(m.sessions_served, r.ReadU64("sessions served"));
  GENIE_ASSIGN_OR_RETURN(m.runs, r.ReadU64("runs"));
  GENIE_ASSIGN_OR_RETURN(m.run_errors, r.ReadU64("run errors"));
  GENIE_ASSIGN_OR_RETURN(m.bytes_received, r.ReadU64("bytes received"));
  GENIE_ASSIGN_OR_RETURN(m.bytes_sent, r.ReadU64("bytes sent"));
  GENIE_ASSIGN_OR_RETURN(m.programs_cached, r.ReadU64("programs cached"));
  GENIE_ASSIGN_OR_RETURN(m.resident_bytes, r.ReadI64("resident bytes"));
  GENIE_ASSIGN_OR_RETURN(m.memory_budget_bytes, r.ReadI64("memory budget"));
  GENIE_ASSIGN_OR_RETURN(uint8_t gpu, r.ReadU8("gpu flag"));
  if (gpu > 1) {
    return Invalid(absl::StrCat("NodeStatus gpu flag ", static_cast<int>(gpu), " is not 0 or 1"));
  }
  m.gpu = gpu == 1;
  GENIE_ASSIGN_OR_RETURN(m.gpu_allocated_bytes, r.ReadI64("GPU allocated bytes"));
  GENIE_ASSIGN_OR_RETURN(m.gpu_reserved_bytes, r.ReadI64("GPU reserved bytes"));
  GENIE_ASSIGN_OR_RETURN(m.gpu_free_bytes, r.ReadI64("GPU free bytes"));
  GENIE_ASSIGN_OR_RETURN(m.gpu_total_bytes, r.ReadI64("GPU total bytes"));
  GENIE_ASSIGN_OR_RETURN(m.graph_replays, r.ReadU64("graph replays"));
  GENIE_RETURN_IF_ERROR(r.ExpectEnd("NodeStatus message"));
  if (m.uptime_micros < 0 || m.resident_bytes < 0 || m.memory_budget_bytes < 0 ||
      m.gpu_allocated_bytes < 0 || m.gpu_reserved_bytes < 0 || m.gpu_free_bytes < 0 ||
      m.gpu_total_bytes < 0) {
    return Invalid("NodeStatus message has a negative time or size");
  }
  if (!m.gpu && (m.gpu_allocated_bytes != 0 || m.gpu_reserved_bytes != 0 || m.gpu_free_bytes != 0 ||
                 m.gpu_total_bytes != 0 || m.graph_replays != 0)) {
    return Invalid("NodeStatus message has GPU figures but says the node has no GPU");
  }
  if (m.gpu_free_bytes > m.gpu_total_bytes) {
    return Invalid(absl::StrCat("NodeStatus message says ", m.gpu_free_bytes,
                                " GPU bytes are free of ", m.gpu_total_bytes));
  }
  return m;
}

// ---- LoadProgram --------------------------------------------------------------------

std::string EncodeLoadProgram(uint64_t program_id, absl::string_view program_bytes) {
  core::ByteWriter w(WireFor(~uint64_t{0}));
  WritePrefix(w, MessageType::kLoadProgram);
  w.WriteU64(program_id);
  w.WriteString(StdView(program_bytes));
  return w.Release();
}

absl::StatusOr<LoadProgramMessage> DecodeLoadProgram(absl::string_view bytes,
                                                     const MessageLimits& limits) {
  if (bytes.size() > MaxLoadProgramBytes(limits)) {
    return Invalid(absl::StrCat("LoadProgram message of ", bytes.size(),
                                " bytes is above the limit of ", MaxLoadProgramBytes(limits),
                                " (raise --max_program_bytes on the node if it is legitimate)"));
  }
  core::ByteReader r(StdView(bytes), WireFor(limits.max_program_bytes));
  GENIE_RETURN_IF_ERROR(ExpectType(r, MessageType::kLoadProgram));
  LoadProgramMessage m;
  GENIE_ASSIGN_OR_RETURN(m.program_id, r.ReadU64("program id"));
  GENIE_ASSIGN_OR_RETURN(std::string_view program, r.ReadStringView("program bytes"));
  m.program = absl::string_view(program.data(), program.size());
  GENIE_RETURN_IF_ERROR(r.ExpectEnd("LoadProgram message"));
  return m;
}

// ---- Run ----------------------------------------------------------------------------

std::string EncodeRun(const RunMessage& m) {
  core::ByteWriter w(WireFor(~uint64_t{0}));
  WritePrefix(w, MessageType::kRun);
  w.WriteU64(m.program_id);
  WriteHandles(w, m.binding.release);
  WriteHandles(w, m.binding.resident_handles);
  WriteHandles(w, m.binding.keep_handles);
  w.WriteCount(m.uploads.size(), "upload entries");
  for (const UploadEntry& u : m.uploads) {
    w.WriteU32(u.buffer);
    w.WriteU8(static_cast<uint8_t>(u.upload_class));
    w.WriteU64(u.nbytes);
    w.WriteU64(u.pool_offset);
  }
  w.WriteCount(m.outputs_in_pool.size(), "outputs in pool");
  for (const OutputPlacement& o : m.outputs_in_pool) {
    w.WriteU32(o.output);
    w.WriteU64(o.pool_offset);
    w.WriteU64(o.nbytes);
  }
  return w.Release();
}

absl::Status DecodeRun(absl::string_view bytes, const MessageLimits& limits, RunMessage* out) {
  if (bytes.size() > MaxRunBytes(limits)) {
    return Invalid(absl::StrCat("Run message of ", bytes.size(), " bytes is above the limit of ",
                                MaxRunBytes(limits)));
  }
  core::ByteReader r(StdView(bytes), WireFor(0));
  GENIE_RETURN_IF_ERROR(ExpectType(r, MessageType::kRun));
  GENIE_ASSIGN_OR_RETURN(out->program_id, r.ReadU64("program id"));
  GENIE_RETURN_IF_ERROR(ReadHandles(r, "release handles", limits.max_handles, &out->binding.release));
  GENIE_RETURN_IF_ERROR(
      ReadHandles(r, "resident handles", limits.max_handles, &out->binding.resident_handles));
  GENIE_RETURN_IF_ERROR(
      ReadHandles(r, "keep handles", limits.max_handles, &out->binding.keep_handles));
  GENIE_ASSIGN_OR_RETURN(uint32_t n, ReadBoundedCount(r, "upload entries", kUploadEntryBytes,
                                                      limits.max_uploads));
  out->uploads.clear();
  out->uploads.reserve(n);
  uint64_t total = 0;
  bool seen_activations = false;
  for (uint32_t k = 0; k < n; ++k) {
    UploadEntry u;
    GENIE_ASSIGN_OR_RETURN(u.buffer, r.ReadU32("upload buffer"));
    GENIE_ASSIGN_OR_RETURN(uint8_t c, r.ReadU8("upload class"));
    if (c != static_cast<uint8_t>(UploadClass::kWeights) &&
        c != static_cast<uint8_t>(UploadClass::kActivations)) {
      return Invalid(absl::StrCat("upload entry ", k, " has unknown class ", static_cast<int>(c)));
    }
    u.upload_class = static_cast<UploadClass>(c);
    if (u.upload_class == UploadClass::kActivations) {
      seen_activations = true;
    } else if (seen_activations) {
      return Invalid(absl::StrCat("upload entry ", k, " lists weights after activations"));
    }
    GENIE_ASSIGN_OR_RETURN(u.nbytes, r.ReadU64("upload bytes"));
    if (u.nbytes > limits.max_bytes_per_upload) {
      return Invalid(absl::StrCat("upload entry ", k, " has ", u.nbytes,
                                  " bytes, above the limit of ", limits.max_bytes_per_upload));
    }
    total += u.nbytes;  // cannot overflow: n * max_bytes_per_upload < 2^64 for sane limits
    if (total > limits.max_run_upload_bytes) {
      return Invalid(absl::StrCat("Run uploads more than ", limits.max_run_upload_bytes,
                                  " bytes in all"));
    }
    GENIE_ASSIGN_OR_RETURN(u.pool_offset, r.ReadU64("upload pool offset"));
    if (u.pooled() && (u.nbytes == 0 || u.pool_offset > ~uint64_t{0} - u.nbytes)) {
      return Invalid(absl::StrCat("upload entry ", k, " references ", u.nbytes,
                                  " pool bytes at offset ", u.pool_offset,
                                  " (a pool reference needs 1 or more bytes within 2^64)"));
    }
    out->uploads.push_back(u);
  }
  GENIE_ASSIGN_OR_RETURN(uint32_t m, ReadBoundedCount(r, "outputs in pool", kOutputPlacementBytes,
                                                      limits.max_outputs));
  out->outputs_in_pool.clear();
  out->outputs_in_pool.reserve(m);
  for (uint32_t k = 0; k < m; ++k) {
    OutputPlacement o;
    GENIE_ASSIGN_OR_RETURN(o.output, r.ReadU32("pooled output index"));
    GENIE_ASSIGN_OR_RETURN(o.pool_offset, r.ReadU64("pooled output offset"));
    GENIE_ASSIGN_OR_RETURN(o.nbytes, r.ReadU64("pooled output bytes"));
    if (k > 0 && o.output <= out->outputs_in_pool.back().output) {
      return Invalid(absl::StrCat("pooled output ", o.output, " is listed after output ",
                                  out->outputs_in_pool.back().output,
                                  " (the list must increase)"));
    }
    if (o.nbytes == 0 || o.nbytes > limits.max_bytes_per_output ||
        o.pool_offset > ~uint64_t{0} - o.nbytes) {
      return Invalid(absl::StrCat("pooled output ", o.output, " reserves ", o.nbytes,
                                  " bytes at offset ", o.pool_offset, " (needs 1 to ",
                                  limits.max_bytes_per_output, " bytes)"));
    }
    out->outputs_in_pool.push_back(o);
  }
  return r.ExpectEnd("Run message");
}

absl::Status CheckPoolReferences(const RunMessage& run, uint64_t pool_bytes,
                                 std::vector<std::pair<uint64_t, uint64_t>>* scratch) {
  // (offset, index): uploads by entry index, outputs after them.
  scratch->clear();
  const size_t n_uploads = run.uploads.size();
  for (size_t k = 0; k < n_uploads; ++k) {
    if (run.uploads[k].pooled()) scratch->emplace_back(run.uploads[k].pool_offset, k);
  }
  for (size_t k = 0; k < run.outputs_in_pool.size(); ++k) {
    scratch->emplace_back(run.outputs_in_pool[k].pool_offset, n_uploads + k);
  }
  if (scratch->empty()) return absl::OkStatus();
  auto what = [&](uint64_t index) {
    if (index < n_uploads) {
      const UploadEntry& e = run.uploads[index];
      return absl::StrCat("upload entry ", index, " (b", e.buffer, ", ", e.nbytes,
                          " bytes at pool offset ", e.pool_offset, ")");
    }
    const OutputPlacement& o = run.outputs_in_pool[index - n_uploads];
    return absl::StrCat("output ", o.output, " (", o.nbytes, " bytes at pool offset ",
                        o.pool_offset, ")");
  };
  auto length = [&](uint64_t index) {
    return index < n_uploads ? run.uploads[index].nbytes
                             : run.outputs_in_pool[index - n_uploads].nbytes;
  };
  if (pool_bytes == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the Run references the shared tensor pool (", what(scratch->front().second),
        ") but this connection has none: connect over transport::Shm with a pool "
        "(kPoolBytes > 0), or send the bytes in transfer frames"));
  }
  std::sort(scratch->begin(), scratch->end());
  uint64_t end_of_previous = 0;
  for (size_t i = 0; i < scratch->size(); ++i) {
    const auto [offset, index] = (*scratch)[i];
    const uint64_t n = length(index);
    if (offset % kPoolOffsetAlignment != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          what(index), " is not at a multiple of ", kPoolOffsetAlignment,
          " bytes in the tensor pool; a Genie client only names aligned blocks, so the client "
          "is broken or is not the same Genie build as this node (run the same build on both)"));
    }
    if (offset > pool_bytes || n > pool_bytes - offset) {
      return absl::InvalidArgumentError(absl::StrCat(
          what(index), " reaches outside the connection's ", pool_bytes,
          "-byte tensor pool; the client's pool bookkeeping is broken (reconnect)"));
    }
    if (i > 0 && offset < end_of_previous) {
      return absl::InvalidArgumentError(absl::StrCat(
          what(index), " overlaps ", what((*scratch)[i - 1].second),
          " in the tensor pool; every reference of a run needs its own block"));
    }
    end_of_previous = offset + n;
  }
  return absl::OkStatus();
}

// ---- Result -------------------------------------------------------------------------

std::string EncodeResult(const ResultMessage& m) {
  core::ByteWriter w(WireFor(~uint64_t{0}));
  WritePrefix(w, MessageType::kResult);
  w.WriteU8(m.stats.program_cache_hit ? 1 : 0);
  w.WriteI64(m.stats.nodes_executed);
  w.WriteI64(m.stats.bytes_uploaded);
  w.WriteI64(m.stats.bytes_downloaded);
  w.WriteI64(m.stats.resident_bytes);
  w.WriteI64(m.node_micros);
  w.WriteCount(m.output_bytes.size(), "outputs");
  for (uint64_t n : m.output_bytes) w.WriteU64(n);
  w.WriteCount(m.pooled_outputs.size(), "pooled outputs");
  for (uint32_t k : m.pooled_outputs) w.WriteU32(k);
  return w.Release();
}

absl::Status DecodeResult(absl::string_view bytes, const MessageLimits& limits,
                          ResultMessage* out) {
  if (bytes.size() > MaxResultBytes(limits)) {
    return Invalid(absl::StrCat("Result message of ", bytes.size(),
                                " bytes is above the limit of ", MaxResultBytes(limits)));
  }
  core::ByteReader r(StdView(bytes), WireFor(0));
  GENIE_RETURN_IF_ERROR(ExpectType(r, MessageType::kResult));
  GENIE_ASSIGN_OR_RETURN(out->stats.program_cache_hit, r.ReadBool("program cache hit"));
  GENIE_ASSIGN_OR_RETURN(out->stats.nodes_executed, r.ReadI64("nodes executed"));
  GENIE_ASSIGN_OR_RETURN(out->stats.bytes_uploaded, r.ReadI64("bytes uploaded"));
  GENIE_ASSIGN_OR_RETURN(out->stats.bytes_downloaded, r.ReadI64("bytes downloaded"));
  GENIE_ASSIGN_OR_RETURN(out->stats.resident_bytes, r.ReadI64("resident bytes"));
  GENIE_ASSIGN_OR_RETURN(out->node_micros, r.ReadI64("node micros"));
  if (out->stats.nodes_executed < 0 || out->stats.bytes_uploaded < 0 ||
      out->stats.bytes_downloaded < 0 || out->stats.resident_bytes < 0 || out->node_micros < 0) {
    return Invalid("Result message has a negative statistic");
  }
  GENIE_ASSIGN_OR_RETURN(uint32_t n, ReadBoundedCount(r, "outputs", 8, limits.max_outputs));
  out->output_bytes.clear();
  out->output_bytes.reserve(n);
  for (uint32_t k = 0; k < n; ++k) {
    GENIE_ASSIGN_OR_RETURN(uint64_t b, r.ReadU64("output bytes"));
    if (b > limits.max_bytes_per_output) {
      return Invalid(absl::StrCat("output ", k, " has ", b, " bytes, above the limit of ",
                                  limits.max_bytes_per_output));
    }
    out->output_bytes.push_back(b);
  }
  GENIE_ASSIGN_OR_RETURN(uint32_t p, ReadBoundedCount(r, "pooled outputs", 4, n));
  out->pooled_outputs.clear();
  out->pooled_outputs.reserve(p);
  for (uint32_t k = 0; k < p; ++k) {
    GENIE_ASSIGN_OR_RETURN(uint32_t i, r.ReadU32("pooled output"));
    if (i >= n || (k > 0 && i <= out->pooled_outputs.back())) {
      return Invalid(absl::StrCat("pooled output ", i, " is out of range or out of order (",
                                  n, " outputs)"));
    }
    out->pooled_outputs.push_back(i);
  }
  return r.ExpectEnd("Result message");
}

// ---- Error --------------------------------------------------------------------------

std::string EncodeError(const absl::Status& status, bool unknown_program,
                        const MessageLimits& limits) {
  core::ByteWriter w(WireFor(~uint64_t{0}));
  WritePrefix(w, MessageType::kError);
  const absl::StatusCode code =
      status.ok() ? absl::StatusCode::kUnknown : status.code();
  w.WriteU32(static_cast<uint32_t>(code));
  w.WriteU8(unknown_program ? 1 : 0);
  absl::string_view message = status.message();
  if (message.size() > limits.max_error_bytes) message = message.substr(0, limits.max_error_bytes);
  w.WriteString(StdView(message));
  return w.Release();
}

absl::StatusOr<ErrorMessage> DecodeError(absl::string_view bytes, const MessageLimits& limits) {
  if (bytes.size() > MaxErrorBytes(limits)) {
    return Invalid(absl::StrCat("Error message of ", bytes.size(), " bytes is above the limit of ",
                                MaxErrorBytes(limits)));
  }
  core::ByteReader r(StdView(bytes), WireFor(limits.max_error_bytes));
  GENIE_RETURN_IF_ERROR(ExpectType(r, MessageType::kError));
  GENIE_ASSIGN_OR_RETURN(uint32_t code, r.ReadU32("status code"));
  if (code == 0 || code > static_cast<uint32_t>(absl::StatusCode::kUnauthenticated)) {
    return Invalid(absl::StrCat("Error message has invalid status code ", code));
  }
  ErrorMessage m;
  m.code = static_cast<absl::StatusCode>(code);
  GENIE_ASSIGN_OR_RETURN(m.unknown_program, r.ReadBool("unknown program flag"));
  GENIE_ASSIGN_OR_RETURN(m.message, r.ReadString("error message"));
  GENIE_RETURN_IF_ERROR(r.ExpectEnd("Error message"));
  return m;
}

// ---- Bounds and transfer grouping ---------------------------------------------------

uint64_t MaxNodeInfoBytes(const MessageLimits& limits) {
  return kPrefixBytes + 4 + limits.max_string_bytes + 8 + 4 + 8;
}

uint64_t MaxStatusQueryBytes() { return kPrefixBytes; }

uint64_t MaxNodeStatusBytes(const MessageLimits& limits) {
  return kPrefixBytes + 4 + limits.max_string_bytes + kNodeStatusFixedBytes;
}

uint64_t MaxLoadProgramBytes(const MessageLimits& limits) {
  return kPrefixBytes + 8 + 4 + limits.max_program_bytes;
}

uint64_t MaxRunBytes(const MessageLimits& limits) {
  return kPrefixBytes + 8 + 3 * (4 + uint64_t{8} * limits.max_handles) + 4 +
         uint64_t{kUploadEntryBytes} * limits.max_uploads + 4 +
         uint64_t{kOutputPlacementBytes} * limits.max_outputs;
}

uint64_t MaxResultBytes(const MessageLimits& limits) {
  return kPrefixBytes + kStatsBytes + 4 + uint64_t{8} * limits.max_outputs + 4 +
         uint64_t{4} * limits.max_outputs;
}

uint64_t MaxErrorBytes(const MessageLimits& limits) {
  return kPrefixBytes + 4 + 1 + 4 + limits.max_error_bytes;
}

// ---- PeerSend / PeerPut -------------------------------------------------------------

namespace {

// handle, dtype and numel: shared by PeerSend and PeerPut.
absl::Status ReadBufferFields(core::ByteReader& r, const MessageLimits& limits,
                              absl::string_view what, uint64_t* handle, core::DType* dtype,
                              int64_t* numel) {
  GENIE_ASSIGN_OR_RETURN(*handle, r.ReadU64("peer buffer handle"));
  if (*handle == 0) return Invalid(absl::StrCat(what, " names handle 0 (no storage)"));
  GENIE_ASSIGN_OR_RETURN(uint8_t code, r.ReadU8("peer buffer dtype"));
  if (!core::IsKnownDType(code)) {
    return Invalid(absl::StrCat(what, " has unknown dtype code ", static_cast<int>(code)));
  }
  *dtype = static_cast<core::DType>(code);
  GENIE_ASSIGN_OR_RETURN(*numel, r.ReadI64("peer buffer numel"));
  if (*numel < 0) return Invalid(absl::StrCat(what, " has a negative element count"));
  const uint64_t size = core::DTypeSize(*dtype);
  if (static_cast<uint64_t>(*numel) > limits.max_bytes_per_upload / size) {
    return Invalid(absl::StrCat(what, " of ", *numel, " elements is above the limit of ",
                                limits.max_bytes_per_upload, " bytes per buffer"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string EncodePeerSend(const PeerSendMessage& m) {
  core::ByteWriter w(WireFor(~uint64_t{0}));
  WritePrefix(w, MessageType::kPeerSend);
  w.WriteU64(m.handle);
  w.WriteU8(static_cast<uint8_t>(m.dtype));
  w.WriteI64(m.numel);
  w.WriteString(m.peer_host);
  w.WriteU16(m.peer_port);
  w.WriteU64(m.peer_handle);
  w.WriteU8(m.release ? 1 : 0);
  return w.Release();
}

absl::StatusOr<PeerSendMessage> DecodePeerSend(absl::string_view bytes, const MessageLimits& limits) {
  if (bytes.size() > MaxPeerSendBytes(limits)) {
    return Invalid(absl::StrCat("PeerSend message of ", bytes.size(), " bytes is too large"));
  }
  core::ByteReader r(StdView(bytes), WireFor(limits.max_string_bytes));
  GENIE_RETURN_IF_ERROR(ExpectType(r, MessageType::kPeerSend));
  PeerSendMessage m;
  GENIE_RETURN_IF_ERROR(ReadBufferFields(r, limits, "PeerSend", &m.handle, &m.dtype, &m.numel));
  GENIE_ASSIGN_OR_RETURN(m.peer_host, r.ReadString("peer host"));
  if (m.peer_host.empty()) return Invalid("PeerSend names no peer host");
  GENIE_ASSIGN_OR_RETURN(m.peer_port, r.ReadU16("peer port"));
  if (m.peer_port == 0) return Invalid("PeerSend names peer port 0");
  GENIE_ASSIGN_OR_RETURN(m.peer_handle, r.ReadU64("peer handle"));
  if (m.peer_handle == 0) return Invalid("PeerSend names peer handle 0 (no storage)");
  GENIE_ASSIGN_OR_RETURN(uint8_t release, r.ReadU8("peer release flag"));
  if (release > 1) return Invalid(absl::StrCat("PeerSend release flag ", static_cast<int>(release), " is not 0 or 1"));
  m.release = release == 1;
  GENIE_RETURN_IF_ERROR(r.ExpectEnd("PeerSend message"));
  return m;
}

std::string EncodePeerPut(const PeerPutMessage& m) {
  core::ByteWriter w;
  WritePrefix(w, MessageType::kPeerPut);
  w.WriteU64(m.handle);
  w.WriteU8(static_cast<uint8_t>(m.dtype));
  w.WriteI64(m.numel);
  w.WriteString(m.cuda_ipc);
  return w.Release();
}

absl::StatusOr<PeerPutMessage> DecodePeerPut(absl::string_view bytes, const MessageLimits& limits) {
  if (bytes.size() > MaxPeerPutBytes(limits)) {
    return Invalid(absl::StrCat("PeerPut message of ", bytes.size(), " bytes is too large"));
  }
  core::ByteReader r(StdView(bytes), WireFor(PeerPutMessage::kMaxCudaIpcBytes));
  GENIE_RETURN_IF_ERROR(ExpectType(r, MessageType::kPeerPut));
  PeerPutMessage m;
  GENIE_RETURN_IF_ERROR(ReadBufferFields(r, limits, "PeerPut", &m.handle, &m.dtype, &m.numel));
  GENIE_ASSIGN_OR_RETURN(m.cuda_ipc, r.ReadString("PeerPut CUDA IPC descriptor"));
  GENIE_RETURN_IF_ERROR(r.ExpectEnd("PeerPut message"));
  return m;
}

uint64_t MaxPeerSendBytes(const MessageLimits& limits) {
  return kPrefixBytes + 8 + 1 + 8 + 4 + limits.max_string_bytes + 2 + 8 + 1;
}

uint64_t MaxPeerPutBytes(const MessageLimits& limits) {
  (void)limits;
  return kPrefixBytes + 8 + 1 + 8 + 4 + PeerPutMessage::kMaxCudaIpcBytes;
}

std::vector<TransferFrame> GroupTransfers(absl::Span<const UploadEntry> entries,
                                          uint64_t max_frame_bytes) {
  std::vector<TransferFrame> frames;
  TransferFrame current;
  bool open = false;
  for (size_t k = 0; k < entries.size(); ++k) {
    const UploadEntry& e = entries[k];
    if (e.pooled()) {  // its bytes are in the pool: it ends the open frame, in none itself
      if (open) frames.push_back(current);
      open = false;
      continue;
    }
    if (e.nbytes == 0) {
      if (open) ++current.count;
      continue;
    }
    if (open && (e.upload_class != current.upload_class ||
                 current.bytes + e.nbytes > max_frame_bytes)) {
      frames.push_back(current);
      open = false;
    }
    if (!open) {
      current = TransferFrame{e.upload_class, static_cast<uint32_t>(k), 0, 0};
      open = true;
    }
    ++current.count;
    current.bytes += e.nbytes;
  }
  if (open) frames.push_back(current);
  return frames;
}

}  // namespace genie::plan
