// File: genie/plan/program.cc
// Lowering an ExecuteRequest into a node Program, binding later requests to it, checking a
// program against its graph, and the Program's binary form.
#include "genie/plan/program.h"

#include <algorithm>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "genie/core/status.h"
#include "genie/core/wire.h"

namespace genie::plan {
namespace {

using core::BufferId;
using core::BufferKind;

constexpr std::string_view kProgramMagic = "GNIEPROG";
constexpr size_t kUploadSlotBytes = 4 + 8 + 1;
constexpr size_t kOutputSlotBytes = 8;
constexpr size_t kResidentSlotBytes = 4 + 8;

std::string_view StdView(absl::string_view s) { return std::string_view(s.data(), s.size()); }

absl::Status Invalid(std::string message) {
  return absl::InvalidArgumentError(std::move(message));
}

bool IsUploadKind(BufferKind kind) {
  return kind == BufferKind::kHostInput || kind == BufferKind::kParameter;
}

uint64_t OutputBytes(const core::TensorRef& t) {
  return static_cast<uint64_t>(t.numel()) * core::DTypeSize(t.dtype);
}

std::string DescribeBuffer(const core::Graph& g, BufferId id) {
  if (id >= g.buffers().size()) return absl::StrCat("b", id, " (out of range)");
  const core::Buffer& b = g.buffer(id);
  return absl::StrCat("b", id, " (", core::BufferKindName(b.kind),
                      b.name.empty() ? "" : absl::StrCat(" \"", b.name, "\""), ")");
}

}  // namespace

const char* UploadClassName(UploadClass c) {
  switch (c) {
    case UploadClass::kWeights:
      return "weights";
    case UploadClass::kActivations:
      return "activations";
  }
  return "unknown";
}

UploadClass UploadClassOf(BufferKind kind) {
  return kind == BufferKind::kParameter ? UploadClass::kWeights : UploadClass::kActivations;
}

int64_t Program::upload_bytes() const {
  int64_t total = 0;
  for (const UploadSlot& u : uploads) total += static_cast<int64_t>(u.nbytes);
  return total;
}

int64_t Program::output_bytes() const {
  int64_t total = 0;
  for (const OutputSlot& o : outputs) total += static_cast<int64_t>(o.nbytes);
  return total;
}

std::string Program::Summary() const {
  return absl::StrCat("program: ", graph.nodes().size(), " nodes, ", graph.buffers().size(),
                      " buffers; uploads ", uploads.size(), " (", upload_bytes(), " B); outputs ",
                      outputs.size(), " (", output_bytes(), " B); keep ", keep.size(),
                      "; resident ", resident.size());
}

absl::StatusOr<Program> LowerProgram(const core::ExecuteRequest& request) {
  if (request.graph == nullptr) return Invalid("cannot lower an execute request without a graph");
  const core::Graph& g = *request.graph;
  Program p;
  p.graph = g;
  // Uploads: request order, weights first (stable), so each traffic class travels together.
  for (int pass = 0; pass < 2; ++pass) {
    const UploadClass want = pass == 0 ? UploadClass::kWeights : UploadClass::kActivations;
    for (const core::Upload& u : request.uploads) {
      if (u.buffer >= g.buffers().size()) {
        return Invalid(absl::StrCat("upload names buffer b", u.buffer, " but the graph has ",
                                    g.buffers().size(), " buffers"));
      }
      const core::Buffer& b = g.buffer(u.buffer);
      if (UploadClassOf(b.kind) != want) continue;
      p.uploads.push_back(UploadSlot{u.buffer, static_cast<uint64_t>(u.bytes.nbytes), want});
    }
  }
  for (const core::TensorRef& t : g.outputs()) p.outputs.push_back(OutputSlot{OutputBytes(t)});
  for (BufferId b : request.keep) {
    if (b >= g.buffers().size()) {
      return Invalid(absl::StrCat("keep names buffer b", b, " but the graph has ",
                                  g.buffers().size(), " buffers"));
    }
    p.keep.push_back(ResidentSlot{b, g.buffer(b).handle});
  }
  for (const core::Buffer& b : g.buffers()) {
    if (b.kind == BufferKind::kResident) p.resident.push_back(ResidentSlot{b.id, b.handle});
  }
  GENIE_RETURN_IF_ERROR(ValidateProgram(p));
  return p;
}

absl::StatusOr<RunBinding> BindRun(const Program& program, const core::ExecuteRequest& request,
                                   std::vector<uint32_t>* upload_order) {
  auto mismatch = [](absl::string_view what) {
    return absl::FailedPreconditionError(
        absl::StrCat("request does not fit the cached program: ", what, "; lower it again"));
  };
  if (request.graph == nullptr) return Invalid("cannot bind an execute request without a graph");
  const core::Graph& g = *request.graph;
  const core::Graph& pg = program.graph;
  if (g.nodes().size() != pg.nodes().size() || g.buffers().size() != pg.buffers().size() ||
      g.outputs().size() != program.outputs.size()) {
    return mismatch("graph size differs");
  }
  if (request.uploads.size() != program.uploads.size()) return mismatch("upload count differs");
  // slot_of[buffer] = 1 + the request upload that carries it.
  std::vector<uint32_t> slot_of(g.buffers().size(), 0);
  for (size_t k = 0; k < request.uploads.size(); ++k) {
    const core::Upload& u = request.uploads[k];
    if (u.buffer >= slot_of.size() || slot_of[u.buffer] != 0) return mismatch("uploads differ");
    slot_of[u.buffer] = static_cast<uint32_t>(k + 1);
  }
  if (upload_order != nullptr) {
    upload_order->clear();
    upload_order->reserve(program.uploads.size());
  }
  for (const UploadSlot& s : program.uploads) {
    const uint32_t k = s.buffer < slot_of.size() ? slot_of[s.buffer] : 0;
    if (k == 0) return mismatch("uploads name other buffers");
    if (request.uploads[k - 1].bytes.nbytes != s.nbytes) return mismatch("an upload's size differs");
    if (UploadClassOf(g.buffer(s.buffer).kind) != s.upload_class) return mismatch("buffer kinds differ");
    if (upload_order != nullptr) upload_order->push_back(k - 1);
  }
  if (request.keep.size() != program.keep.size()) return mismatch("keep count differs");
  RunBinding run;
  run.release = request.release;
  run.keep_handles.reserve(program.keep.size());
  for (size_t k = 0; k < program.keep.size(); ++k) {
    const BufferId b = request.keep[k];
    if (b != program.keep[k].buffer || b >= g.buffers().size()) return mismatch("keep differs");
    run.keep_handles.push_back(g.buffer(b).handle);
  }
  run.resident_handles.reserve(program.resident.size());
  for (const ResidentSlot& s : program.resident) {
    const core::Buffer& b = g.buffer(s.buffer);
    if (b.kind != BufferKind::kResident) return mismatch("resident buffers differ");
    run.resident_handles.push_back(b.handle);
  }
  for (size_t k = 0; k < program.outputs.size(); ++k) {
    if (OutputBytes(g.outputs()[k]) != program.outputs[k].nbytes) return mismatch("outputs differ");
  }
  return run;
}

absl::Status ValidateProgram(const Program& p, const MessageLimits& limits) {
  const core::Graph& g = p.graph;
  const size_t n = g.buffers().size();
  if (p.uploads.size() > limits.max_uploads) {
    return Invalid(absl::StrCat("program has ", p.uploads.size(), " uploads, above the limit of ",
                                limits.max_uploads));
  }
  if (p.outputs.size() > limits.max_outputs) {
    return Invalid(absl::StrCat("program has ", p.outputs.size(), " outputs, above the limit of ",
                                limits.max_outputs));
  }
  if (p.keep.size() > limits.max_handles || p.resident.size() > limits.max_handles) {
    return Invalid(absl::StrCat("program keeps ", p.keep.size(), " and reads ", p.resident.size(),
                                " resident buffers, above the limit of ", limits.max_handles));
  }
  std::vector<uint8_t> uploaded(n, 0);
  bool seen_activations = false;
  for (const UploadSlot& u : p.uploads) {
    if (u.buffer >= n) {
      return Invalid(absl::StrCat("upload slot names buffer b", u.buffer, " of ", n));
    }
    const core::Buffer& b = g.buffer(u.buffer);
    if (!IsUploadKind(b.kind)) {
      return Invalid(absl::StrCat("upload slot names ", DescribeBuffer(g, u.buffer),
                                  ": only host inputs and parameters are uploaded"));
    }
    if (uploaded[u.buffer]) {
      return Invalid(absl::StrCat("buffer ", DescribeBuffer(g, u.buffer), " is uploaded twice"));
    }
    uploaded[u.buffer] = 1;
    if (u.nbytes != static_cast<uint64_t>(b.nbytes())) {
      return Invalid(absl::StrCat("upload of ", DescribeBuffer(g, u.buffer), " has ", u.nbytes,
                                  " bytes, the buffer has ", b.nbytes()));
    }
    if (u.nbytes > limits.max_bytes_per_upload) {
      return Invalid(absl::StrCat("upload of ", DescribeBuffer(g, u.buffer), " has ", u.nbytes,
                                  " bytes, above the limit of ", limits.max_bytes_per_upload));
    }
    if (u.upload_class != UploadClassOf(b.kind)) {
      return Invalid(absl::StrCat("upload of ", DescribeBuffer(g, u.buffer), " is marked ",
                                  UploadClassName(u.upload_class), ", expected ",
                                  UploadClassName(UploadClassOf(b.kind))));
    }
    if (u.upload_class == UploadClass::kActivations) {
      seen_activations = true;
    } else if (seen_activations) {
      return Invalid("upload slots must list weights before activations");
    }
  }
  if (static_cast<uint64_t>(p.upload_bytes()) > limits.max_run_upload_bytes) {
    return Invalid(absl::StrCat("program uploads ", p.upload_bytes(),
                                " bytes per run, above the limit of ",
                                limits.max_run_upload_bytes));
  }
  if (p.outputs.size() != g.outputs().size()) {
    return Invalid(absl::StrCat("program lists ", p.outputs.size(), " outputs, the graph has ",
                                g.outputs().size()));
  }
  for (size_t k = 0; k < p.outputs.size(); ++k) {
    if (p.outputs[k].nbytes != OutputBytes(g.outputs()[k])) {
      return Invalid(absl::StrCat("output ", k, " is listed with ", p.outputs[k].nbytes,
                                  " bytes, its view has ", OutputBytes(g.outputs()[k])));
    }
    if (p.outputs[k].nbytes > limits.max_bytes_per_output) {
      return Invalid(absl::StrCat("output ", k, " has ", p.outputs[k].nbytes,
                                  " bytes, above the limit of ", limits.max_bytes_per_output));
    }
  }
  for (const ResidentSlot& s : p.keep) {
    if (s.buffer >= n) return Invalid(absl::StrCat("keep slot names buffer b", s.buffer, " of ", n));
  }
  size_t resident_buffers = 0;
  for (const core::Buffer& b : g.buffers()) resident_buffers += b.kind == BufferKind::kResident;
  if (p.resident.size() != resident_buffers) {
    return Invalid(absl::StrCat("program lists ", p.resident.size(), " resident buffers, the graph has ",
                                resident_buffers));
  }
  BufferId previous = 0;
  for (size_t k = 0; k < p.resident.size(); ++k) {
    const ResidentSlot& s = p.resident[k];
    if (s.buffer >= n || g.buffer(s.buffer).kind != BufferKind::kResident) {
      return Invalid(absl::StrCat("resident slot names ", DescribeBuffer(g, s.buffer),
                                  ", which is not a resident buffer"));
    }
    if (k > 0 && s.buffer <= previous) return Invalid("resident slots must be in buffer order");
    previous = s.buffer;
  }
  return absl::OkStatus();
}

absl::Status ApplyBinding(const RunBinding& binding, Program* program) {
  if (binding.resident_handles.size() != program->resident.size() ||
      binding.keep_handles.size() != program->keep.size()) {
    return Invalid(absl::StrCat("run binds ", binding.resident_handles.size(), " resident and ",
                                binding.keep_handles.size(), " keep handles; the program has ",
                                program->resident.size(), " and ", program->keep.size()));
  }
  for (size_t k = 0; k < program->resident.size(); ++k) {
    ResidentSlot& s = program->resident[k];
    s.handle = binding.resident_handles[k];
    program->graph.mutable_buffer(s.buffer).handle = s.handle;
  }
  for (size_t k = 0; k < program->keep.size(); ++k) {
    ResidentSlot& s = program->keep[k];
    s.handle = binding.keep_handles[k];
    program->graph.mutable_buffer(s.buffer).handle = s.handle;
  }
  return absl::OkStatus();
}

std::string EncodeProgram(const Program& p) {
  core::ByteWriter w;
  w.WriteRaw(kProgramMagic);
  w.WriteU32(kProgramWireVersion);
  w.WriteString(core::Serialize(p.graph));
  w.WriteCount(p.uploads.size(), "upload slots");
  for (const UploadSlot& u : p.uploads) {
    w.WriteU32(u.buffer);
    w.WriteU64(u.nbytes);
    w.WriteU8(static_cast<uint8_t>(u.upload_class));
  }
  w.WriteCount(p.outputs.size(), "output slots");
  for (const OutputSlot& o : p.outputs) w.WriteU64(o.nbytes);
  for (const std::vector<ResidentSlot>* table : {&p.keep, &p.resident}) {
    w.WriteCount(table->size(), "resident slots");
    for (const ResidentSlot& s : *table) {
      w.WriteU32(s.buffer);
      w.WriteU64(s.handle);
    }
  }
  return w.Release();
}

absl::StatusOr<Program> DecodeProgram(absl::string_view bytes, const MessageLimits& limits) {
  if (bytes.size() > limits.max_program_bytes) {
    return Invalid(absl::StrCat("program of ", bytes.size(), " bytes is above the limit of ",
                                limits.max_program_bytes,
                                " (raise --max_program_bytes on the node if it is legitimate)"));
  }
  core::WireLimits wire;
  wire.max_count = limits.max_graph_count;
  wire.max_string_bytes = static_cast<uint32_t>(
      std::min<uint64_t>(limits.max_program_bytes, uint64_t{0xffffffffu}));
  core::ByteReader r(StdView(bytes), wire);
  GENIE_RETURN_IF_ERROR(r.Expect(kProgramMagic, "program magic"));
  GENIE_ASSIGN_OR_RETURN(uint32_t version, r.ReadU32("program version"));
  if (version != kProgramWireVersion) {
    return Invalid(absl::StrCat("program wire version ", version, " is not supported (this build reads ",
                                kProgramWireVersion, "); run the same Genie version on client and node"));
  }
  GENIE_ASSIGN_OR_RETURN(std::string_view graph_bytes, r.ReadStringView("program graph"));
  Program p;
  {
    absl::StatusOr<core::Graph> g = core::Deserialize(graph_bytes, wire);
    if (!g.ok()) {
      return absl::Status(g.status().code(),
                          absl::StrCat("program graph: ", g.status().message()));
    }
    p.graph = std::move(*g);
  }
  GENIE_ASSIGN_OR_RETURN(uint32_t uploads, r.ReadCount("upload slots", kUploadSlotBytes));
  if (uploads > limits.max_uploads) {
    return Invalid(absl::StrCat("program has ", uploads, " upload slots, above the limit of ",
                                limits.max_uploads));
  }
  p.uploads.reserve(uploads);
  for (uint32_t k = 0; k < uploads; ++k) {
    UploadSlot u;
    GENIE_ASSIGN_OR_RETURN(u.buffer, r.ReadU32("upload slot buffer"));
    GENIE_ASSIGN_OR_RETURN(u.nbytes, r.ReadU64("upload slot bytes"));
    GENIE_ASSIGN_OR_RETURN(uint8_t c, r.ReadU8("upload slot class"));
    if (c != static_cast<uint8_t>(UploadClass::kWeights) &&
        c != static_cast<uint8_t>(UploadClass::kActivations)) {
      return Invalid(absl::StrCat("upload slot ", k, " has unknown class ", static_cast<int>(c)));
    }
    u.upload_class = static_cast<UploadClass>(c);
    p.uploads.push_back(u);
  }
  GENIE_ASSIGN_OR_RETURN(uint32_t outputs, r.ReadCount("output slots", kOutputSlotBytes));
  if (outputs > limits.max_outputs) {
    return Invalid(absl::StrCat("program has ", outputs, " output slots, above the limit of ",
                                limits.max_outputs));
  }
  p.outputs.reserve(outputs);
  for (uint32_t k = 0; k < outputs; ++k) {
    OutputSlot o;
    GENIE_ASSIGN_OR_RETURN(o.nbytes, r.ReadU64("output slot bytes"));
    p.outputs.push_back(o);
  }
  for (std::vector<ResidentSlot>* table : {&p.keep, &p.resident}) {
    const char* what = table == &p.keep ? "keep slots" : "resident slots";
    GENIE_ASSIGN_OR_RETURN(uint32_t count, r.ReadCount(what, kResidentSlotBytes));
    if (count > limits.max_handles) {
      return Invalid(absl::StrCat("program has ", count, " ", what, ", above the limit of ",
                                  limits.max_handles));
    }
    table->reserve(count);
    for (uint32_t k = 0; k < count; ++k) {
      ResidentSlot s;
      GENIE_ASSIGN_OR_RETURN(s.buffer, r.ReadU32(what));
      GENIE_ASSIGN_OR_RETURN(s.handle, r.ReadU64(what));
      table->push_back(s);
    }
  }
  GENIE_RETURN_IF_ERROR(r.ExpectEnd("program"));
  GENIE_RETURN_IF_ERROR(ValidateProgram(p, limits));
  return p;
}

}  // namespace genie::plan
