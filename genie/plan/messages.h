// File: genie/plan/messages.h
// The versioned wire format a client and a genie-node exchange inside transport frame
// payloads. Each message is little-endian: u16 kMessageVersion, u8 MessageType, then its
// fields; every count and size is bounded by MessageLimits and every field is checked on
// decode, so a truncated, oversized, wrong-version or random message is refused with an
// error saying what was wrong, never a crash and never a large allocation.
//
//   client                                   node
//   kPing     (empty)                  ->
//                                      <-    kPong    NodeInfo{device, limits}
//   kLoadProgram LoadProgram{id, bytes} ->             (first time this id is used)
//   kRun      Run{id, binding, table}  ->
//   kTransfer upload bytes, raw         ->             (kWeights / kActivations frames)
//                                      <-    kResult  Result{stats, per-output nbytes}
//                                      <-    kTransfer output bytes, raw (kActivations)
//                                  or  <-    kError   Error{status code, message}
//
// Telemetry (genie-smi), on any authenticated connection, between runs; it does not touch
// the connection's session (its programs, resident tensors, pool):
//   kStats    StatusQuery (empty)      ->
//                                      <-    kStats   NodeStatus{device, uptime, sessions,
//                                                     runs, bytes, programs, resident, GPU}
// Both travel in transport kStats frames. A node older than this pair answers the query
// with kError ("unexpected kStats frame") and closes the connection; the pair needed no new
// kMessageVersion (old clients never send it, and every older message is unchanged).
//
// Over a connection with a tensor pool (transport::Shm, genie/transport/pool.h) the client
// may place an upload in the pool and send its offset instead of its bytes (the entry's
// pool_offset; such entries travel in no kTransfer frame), and may reserve pool blocks for
// outputs (Run.outputs_in_pool): the node writes those outputs there, lists them in
// Result.pooled_outputs and sends only the others in kTransfer frames. The node checks every
// reference against its pool (CheckPoolReferences): outside the pool, overlapping another,
// or on a connection without a pool is an Error for that run, and the session goes on. The
// client reuses a block only after the run's Result or Error (the node is done with it
// then); a connection lost mid-run retires its whole pool.
//
// Node to node (ModalityPlacement): the client asks node A to send one of its resident
// buffers to node B; A authenticates to B with the same shared key and pushes the bytes;
// B keeps them until the client's next run there reads them as a resident buffer.
//   client -> A  kPeerSend PeerSend{handle, dtype, numel, B's host:port, B's handle, release}
//   A -> B       kPeerPut  PeerPut{handle, dtype, numel}, then one kTransfer frame (bytes)
//   B -> A       kResult   Result{stats.bytes_uploaded = bytes}   (or kError)
//   A -> client  kResult   Result{stats.bytes_uploaded = bytes}   (or kError)
//
// Upload and output bytes never pass through these encoders: they follow in kTransfer
// frames, gathered straight from (and received straight into) the tensors' memory. The
// tables say how many bytes each entry has; GroupTransfers says how entries share frames.
//
//   std::string run = plan::EncodeRun(plan::RunMessage{id, binding, entries});
//   // ... node:
//   plan::RunMessage decoded;
//   GENIE_RETURN_IF_ERROR(plan::DecodeRun(payload, limits, &decoded));
//
// No libtorch here.
#ifndef GENIE_PLAN_MESSAGES_H_
#define GENIE_PLAN_MESSAGES_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "genie/core/executor.h"
#include "genie/plan/program.h"

namespace genie::plan {

// 2: upload entries carry a pool offset; Run reserves pool blocks for outputs and Result
// lists the outputs placed there.
inline constexpr uint16_t kMessageVersion = 2;

enum class MessageType : uint8_t {
  kNodeInfo = 1,
  kLoadProgram = 2,
  kRun = 3,
  kResult = 4,
  kError = 5,
  kPeerSend = 6,
  kPeerPut = 7,
  kStatusQuery = 8,
  kNodeStatus = 9,
};
const char* MessageTypeName(MessageType type);

// What a node says about itself right after authentication (the answer to kPing).
struct NodeInfoMessage {
  std::string device;                // "cpu", "cuda:0"
  uint64_t max_program_bytes = 0;    // LoadProgram payloads above this are refused
  uint32_t max_cached_programs = 0;  // programs kept per connection (oldest evicted first)
  int64_t memory_budget_bytes = 0;   // 0 = unlimited
};

// What a node says about itself to genie-smi (the answer to a StatusQuery). Node-wide:
// every session of the node together. The GPU fields are set only on a CUDA node (`gpu`);
// elsewhere they are zero, and a decoder refuses a message where they are not.
struct NodeStatusMessage {
  std::string device;            // "cpu", "cuda:0"
  int64_t uptime_micros = 0;     // since the node started
  uint32_t open_sessions = 0;    // authenticated connections open, not counting the asker
  uint64_t sessions_served = 0;  // authenticated connections since the start (asker included)
  uint64_t runs = 0;             // runs executed (successful)
  uint64_t run_errors = 0;       // runs that failed (an op, the memory budget, a bad binding)
  uint64_t bytes_received = 0;   // on all client connections, frame headers included
  uint64_t bytes_sent = 0;
  uint64_t programs_cached = 0;     // programs loaded, over every session's cache
  int64_t resident_bytes = 0;       // tensors kept on the node, over every session
  int64_t memory_budget_bytes = 0;  // per session; 0 = unlimited
  bool gpu = false;
  int64_t gpu_allocated_bytes = 0;  // held by tensors (the caching allocator's count)
  int64_t gpu_reserved_bytes = 0;   // reserved from the driver by the caching allocator
  int64_t gpu_free_bytes = 0;       // the driver's view of the whole device (cudaMemGetInfo)
  int64_t gpu_total_bytes = 0;
  uint64_t graph_replays = 0;  // runs served by replaying a CUDA graph
};

// LoadProgram: the program's encoded bytes (EncodeProgram) under a client-chosen id. On
// decode, `program` points into the decoded payload.
struct LoadProgramMessage {
  uint64_t program_id = 0;
  absl::string_view program;
};

inline constexpr uint64_t kNotPooled = ~uint64_t{0};
// Every pool reference starts at a multiple of this (the client's pool hands out 4 KiB
// granules): the node builds tensors on it, so a misaligned one is refused.
inline constexpr uint64_t kPoolOffsetAlignment = 64;

// One upload's bytes: in the kTransfer frames that follow a Run, in table order, or, with a
// pool_offset, at [pool_offset, pool_offset + nbytes) of the connection's tensor pool.
struct UploadEntry {
  core::BufferId buffer = core::kNoBuffer;
  UploadClass upload_class = UploadClass::kActivations;
  uint64_t nbytes = 0;
  uint64_t pool_offset = kNotPooled;
  bool pooled() const { return pool_offset != kNotPooled; }
};

// A pool block the client reserved for output `output` (its nbytes are the output's).
struct OutputPlacement {
  uint32_t output = 0;
  uint64_t pool_offset = 0;
  uint64_t nbytes = 0;
};

struct RunMessage {
  uint64_t program_id = 0;
  RunBinding binding;
  std::vector<UploadEntry> uploads;             // weights first, then activations
  std::vector<OutputPlacement> outputs_in_pool;  // by increasing output index
};

struct ResultMessage {
  core::ExecuteStats stats;
  int64_t node_micros = 0;              // time the node spent executing
  std::vector<uint64_t> output_bytes;  // one per program output, in order
  std::vector<uint32_t> pooled_outputs;  // outputs written into their pool blocks (increasing)
};

// The node's check of a decoded Run's pool references against its connection's pool of
// `pool_bytes` (0: none): every referenced range starts at a multiple of
// kPoolOffsetAlignment, lies inside the pool, and no two overlap.
// FailedPrecondition when there are references but no pool, InvalidArgument naming the entry
// otherwise. `scratch` is reused across calls.
absl::Status CheckPoolReferences(const RunMessage& run, uint64_t pool_bytes,
                                 std::vector<std::pair<uint64_t, uint64_t>>* scratch);

struct ErrorMessage {
  absl::StatusCode code = absl::StatusCode::kInternal;
  bool unknown_program = false;  // the Run named a program this connection has not loaded
  std::string message;
  absl::Status ToStatus() const { return absl::Status(code, message); }
};

// PeerSend: send resident `handle` (dtype, numel elements) to the node at
// peer_host:peer_port, which keeps it under `peer_handle`; forget it afterwards if
// `release`.
struct PeerSendMessage {
  uint64_t handle = 0;
  core::DType dtype = core::DType::kFloat32;
  int64_t numel = 0;
  std::string peer_host;
  uint16_t peer_port = 0;
  uint64_t peer_handle = 0;
  bool release = false;
  uint64_t nbytes() const { return static_cast<uint64_t>(numel) * core::DTypeSize(dtype); }
};

// PeerPut: the next kTransfer frame holds nbytes() bytes to keep under `handle`; or, with
// `cuda_ipc` set (an encoded runtime::CudaIpcDescriptor, nodes on one host), no frame
// follows and the receiver copies the bytes GPU to GPU from the sender's device memory
// before it answers (the sender holds that memory until the answer).
struct PeerPutMessage {
  static constexpr size_t kMaxCudaIpcBytes = 256;
  uint64_t handle = 0;
  core::DType dtype = core::DType::kFloat32;
  int64_t numel = 0;
  std::string cuda_ipc;
  uint64_t nbytes() const { return static_cast<uint64_t>(numel) * core::DTypeSize(dtype); }
};

// The type of an encoded message after checking its version prefix.
absl::StatusOr<MessageType> PeekMessageType(absl::string_view bytes);

std::string EncodeNodeInfo(const NodeInfoMessage& m);
absl::StatusOr<NodeInfoMessage> DecodeNodeInfo(absl::string_view bytes,
                                               const MessageLimits& limits = {});

// StatusQuery has no fields: the prefix alone (its version is checked by the node).
std::string EncodeStatusQuery();
absl::Status DecodeStatusQuery(absl::string_view bytes);

// Decoders refuse negative sizes, a gpu flag other than 0 or 1, GPU fields on a non-GPU
// status, and more free than total GPU memory.
std::string EncodeNodeStatus(const NodeStatusMessage& m);
absl::StatusOr<NodeStatusMessage> DecodeNodeStatus(absl::string_view bytes,
                                                   const MessageLimits& limits = {});

std::string EncodeLoadProgram(uint64_t program_id, absl::string_view program_bytes);
absl::StatusOr<LoadProgramMessage> DecodeLoadProgram(absl::string_view bytes,
                                                     const MessageLimits& limits = {});

std::string EncodeRun(const RunMessage& m);
// Decodes into `out`, reusing its vectors' capacity (the node's run loop allocates nothing
// here once warm).
absl::Status DecodeRun(absl::string_view bytes, const MessageLimits& limits, RunMessage* out);

std::string EncodeResult(const ResultMessage& m);
absl::Status DecodeResult(absl::string_view bytes, const MessageLimits& limits, ResultMessage* out);

// Decoders refuse a zero handle, an unknown dtype, a negative numel, more than
// limits.max_bytes_per_upload bytes, an empty or over-long host, port 0 and a release flag
// other than 0 or 1.
std::string EncodePeerSend(const PeerSendMessage& m);
absl::StatusOr<PeerSendMessage> DecodePeerSend(absl::string_view bytes,
                                               const MessageLimits& limits = {});
std::string EncodePeerPut(const PeerPutMessage& m);
absl::StatusOr<PeerPutMessage> DecodePeerPut(absl::string_view bytes,
                                             const MessageLimits& limits = {});

// `message` is cut to MessageLimits::max_error_bytes; code kOk is sent as kUnknown.
std::string EncodeError(const absl::Status& status, bool unknown_program = false,
                        const MessageLimits& limits = {});
absl::StatusOr<ErrorMessage> DecodeError(absl::string_view bytes, const MessageLimits& limits = {});

// The largest payload each message may have under `limits`: a receiver refuses a frame
// above it before reading its payload.
uint64_t MaxNodeInfoBytes(const MessageLimits& limits);
uint64_t MaxLoadProgramBytes(const MessageLimits& limits);
uint64_t MaxRunBytes(const MessageLimits& limits);
uint64_t MaxResultBytes(const MessageLimits& limits);
uint64_t MaxErrorBytes(const MessageLimits& limits);
uint64_t MaxPeerSendBytes(const MessageLimits& limits);
uint64_t MaxPeerPutBytes(const MessageLimits& limits);
uint64_t MaxStatusQueryBytes();
uint64_t MaxNodeStatusBytes(const MessageLimits& limits);

// Consecutive entries of one class grouped into frames of at most `max_frame_bytes`
// payload; an entry never spans frames and empty or pooled entries travel in no frame (a
// pooled entry is never inside a frame's [first, first + count): it ends the open one). Both ends
// use it only to send: a receiver reads entries in order and takes the next frame header
// whenever the current frame is used up, checking class and size.
struct TransferFrame {
  UploadClass upload_class = UploadClass::kActivations;
  uint32_t first = 0;  // first entry
  uint32_t count = 0;  // entries in this frame (empty ones included, pooled ones never)
  uint64_t bytes = 0;
};
std::vector<TransferFrame> GroupTransfers(absl::Span<const UploadEntry> entries,
                                          uint64_t max_frame_bytes);

}  // namespace genie::plan

#endif  // GENIE_PLAN_MESSAGES_H_
