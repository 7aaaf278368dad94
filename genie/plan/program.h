// File: genie/plan/program.h
// A node Program: what a remote node needs to run one captured graph, lowered once from a
// core::ExecuteRequest and cached on the node under a client-chosen program id. The graph
// (already dead-code-eliminated by the frontend) plus explicit tables that say which
// buffers arrive (uploads, with byte sizes and whether they are weights or activations),
// which leave (outputs), which stay resident after the run (keep) and which are read from
// residency (kResident buffers). What varies from one run of the same program to the next
// (resident handles, handles kept under, releases) is a RunBinding, sent with every Run.
//
//   GENIE_ASSIGN_OR_RETURN(plan::Program program, plan::LowerProgram(request));
//   GENIE_ASSIGN_OR_RETURN(plan::RunBinding run, plan::BindRun(program, request));
//   std::string bytes = plan::EncodeProgram(program);          // LoadProgram's payload
//   // ... on the node:
//   GENIE_ASSIGN_OR_RETURN(plan::Program loaded, plan::DecodeProgram(bytes, limits));
//   GENIE_RETURN_IF_ERROR(plan::ApplyBinding(run, &loaded));  // this run's handles
//
// No libtorch here.
#ifndef GENIE_PLAN_PROGRAM_H_
#define GENIE_PLAN_PROGRAM_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "genie/core/executor.h"
#include "genie/core/graph.h"

namespace genie::plan {

// Bounds every decoder in genie/plan applies; a count or size above them is refused before
// anything is allocated.
struct MessageLimits {
  uint64_t max_program_bytes = uint64_t{64} << 20;  // an encoded Program (LoadProgram)
  uint32_t max_graph_count = 1u << 22;              // one counted sequence inside the graph
  uint32_t max_uploads = 1u << 14;                  // upload entries of one Run
  uint64_t max_bytes_per_upload = uint64_t{1} << 30;
  uint64_t max_run_upload_bytes = uint64_t{16} << 30;  // all uploads of one Run
  uint32_t max_outputs = 1u << 14;
  uint64_t max_bytes_per_output = uint64_t{1} << 30;
  uint32_t max_handles = 1u << 16;  // release / resident / keep handles of one Run
  uint32_t max_error_bytes = 1u << 16;
  uint32_t max_string_bytes = 1u << 12;  // short strings (device names)
};

// Which traffic an upload is: a parameter (kWeights, usually sent once and kept) or
// anything else the client produced on the host (kActivations). The numeric codes are
// transport::TrafficClass's, so the client maps them with a cast.
enum class UploadClass : uint8_t {
  kWeights = 1,
  kActivations = 2,
};
const char* UploadClassName(UploadClass c);  // "weights", "activations"
UploadClass UploadClassOf(core::BufferKind kind);

struct UploadSlot {
  core::BufferId buffer = core::kNoBuffer;  // a kHostInput or kParameter buffer
  uint64_t nbytes = 0;                      // the buffer's whole storage
  UploadClass upload_class = UploadClass::kActivations;
  friend bool operator==(const UploadSlot& a, const UploadSlot& b) {
    return a.buffer == b.buffer && a.nbytes == b.nbytes && a.upload_class == b.upload_class;
  }
};

struct OutputSlot {
  uint64_t nbytes = 0;  // graph.outputs()[i] as contiguous bytes
  friend bool operator==(const OutputSlot& a, const OutputSlot& b) { return a.nbytes == b.nbytes; }
};

// A buffer and the session-wide handle it is kept under or read from. In a Program the
// handle is the one seen when the program was lowered (for inspection); the node uses the
// handles of each Run's binding.
struct ResidentSlot {
  core::BufferId buffer = core::kNoBuffer;
  uint64_t handle = 0;
  friend bool operator==(const ResidentSlot& a, const ResidentSlot& b) {
    return a.buffer == b.buffer && a.handle == b.handle;
  }
};

struct Program {
  core::Graph graph;
  std::vector<UploadSlot> uploads;     // in the order their bytes travel
  std::vector<OutputSlot> outputs;     // one per graph.outputs()
  std::vector<ResidentSlot> keep;      // stay resident after the run
  std::vector<ResidentSlot> resident;  // every kResident buffer of the graph, by id

  int64_t upload_bytes() const;
  int64_t output_bytes() const;
  // "program: 12 nodes, 9 buffers; uploads 3 (2.0 KiB); outputs 1 (64 B); keep 2; resident 4"
  std::string Summary() const;
};

// What changes between runs of one program: which handles to forget before the run, and the
// handles of the program's resident and keep slots (in slot order).
struct RunBinding {
  std::vector<uint64_t> release;
  std::vector<uint64_t> resident_handles;  // one per Program::resident
  std::vector<uint64_t> keep_handles;      // one per Program::keep
};

// Lowers `request` (graph, uploads, keep) into a Program. Uploads keep the request's order,
// stably grouped weights first. Refuses a request whose uploads name buffers that are not
// kHostInput/kParameter, sizes that differ from the buffer, duplicates, or keep ids out of
// range, with an error naming the buffer.
absl::StatusOr<Program> LowerProgram(const core::ExecuteRequest& request);

// The binding of `request` to an already lowered `program`: FailedPrecondition when the
// request does not fit the program's tables (other uploads, keeps or buffers), which means
// the caller must lower it again. `upload_order` (optional) receives, per program upload
// slot, the index of the request upload that carries its bytes.
absl::StatusOr<RunBinding> BindRun(const Program& program, const core::ExecuteRequest& request,
                                   std::vector<uint32_t>* upload_order = nullptr);

// Checks `program`'s tables against its graph: every id in range, upload slots are
// kHostInput/kParameter buffers of the right size and class, no duplicates, every kResident
// buffer listed once in `resident` and nothing else there, outputs match the graph's output
// views. The node runs this on every program it loads.
absl::Status ValidateProgram(const Program& program, const MessageLimits& limits = {});

// Checks that `binding` fits `program` (one handle per resident and keep slot) and writes
// its handles into those slots and into the matching buffers of program->graph, so the
// graph runs against this run's resident storages. O(slots), no allocation.
absl::Status ApplyBinding(const RunBinding& binding, Program* program);

// Binary form: "GNIEPROG", u32 kProgramWireVersion, the graph (core::Serialize, length
// prefixed), then the four tables, each u32 count + fixed-size entries. DecodeProgram
// refuses truncated, oversized, wrong-version or inconsistent bytes and runs ValidateProgram.
inline constexpr uint32_t kProgramWireVersion = 1;
std::string EncodeProgram(const Program& program);
absl::StatusOr<Program> DecodeProgram(absl::string_view bytes, const MessageLimits& limits = {});

}  // namespace genie::plan

#endif  // GENIE_PLAN_PROGRAM_H_
