// File: genie/core/graph.cc
// The graph IR's implementation: dtype tables, views, the graph container, its checks,
// listing and fingerprint, dependency analysis, dead-code elimination and the binary form.
#include "genie/core/graph.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iterator>
#include <limits>
#include <queue>
#include <tuple>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "genie/core/status.h"

namespace genie::core {
namespace {

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();
constexpr std::string_view kGraphMagic = "GNIEGRPH";

// Minimum encoded sizes, so a count is checked against the bytes left before reserve().
constexpr size_t kMinTensorRefBytes = 4 + 1 + 4 + 4 + 8;
constexpr size_t kMinArgBytes = 1;
constexpr size_t kMinBufferBytes = 1 + 8 + 1 + 4 + 8 + 4;
constexpr size_t kMinNodeBytes = 4 + 4 + 4 + 4 + 4;
constexpr size_t kMinStringBytes = 4;

constexpr uint8_t kMaxBufferKind = static_cast<uint8_t>(BufferKind::kResident);
constexpr uint8_t kMaxArgKind = static_cast<uint8_t>(ArgKind::kComplex);

// Debian's Abseil has its own string_view type (ABSL_USES_STD_STRING_VIEW is off).
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

uint64_t DoubleBits(double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits;
}

bool SameDoubles(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return false;
  for (size_t k = 0; k < a.size(); ++k) {
    if (DoubleBits(a[k]) != DoubleBits(b[k])) return false;
  }
  return true;
}

// offset + 1 + sum((size - 1) * stride), or 0 for an empty view; false on overflow.
bool StorageExtent(const TensorRef& t, int64_t* extent) {
  size_t rank = std::min(t.sizes.size(), t.strides.size());
  for (size_t k = 0; k < rank; ++k) {
    if (t.sizes[k] == 0) {
      *extent = 0;
      return true;
    }
  }
  int64_t e = 0;
  if (__builtin_add_overflow(t.storage_offset, int64_t{1}, &e)) return false;
  for (size_t k = 0; k < rank; ++k) {
    int64_t last, term;
    if (__builtin_sub_overflow(t.sizes[k], int64_t{1}, &last)) return false;
    if (__builtin_mul_overflow(last, t.strides[k], &term)) return false;
    if (__builtin_add_overflow(e, term, &e)) return false;
  }
  *extent = e;
  return true;
}

absl::Status WithContext(const absl::Status& status, std::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(Sv(context), ": ", status.message()));
}

// ---- Dump helpers -----------------------------------------------------------------

// The shortest decimal that reads back as `v`, always marked as a double ("1.0").
std::string FormatDouble(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string s(buf);
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

std::string FormatDims(absl::Span<const int64_t> dims) {
  return absl::StrCat("[", absl::StrJoin(dims, ","), "]");
}

std::string FormatBufferId(BufferId id) {
  return id == kNoBuffer ? std::string("b?") : absl::StrCat("b", id);
}

std::string FormatTensorRef(const TensorRef& t) {
  std::string s =
      absl::StrCat(FormatBufferId(t.buffer), ":", DTypeName(t.dtype), FormatDims(t.sizes));
  bool show_strides = t.sizes.size() != t.strides.size() || !t.is_contiguous();
  if (show_strides || t.storage_offset != 0) {
    std::vector<std::string> parts;
    if (show_strides) parts.push_back(absl::StrCat("strides=", FormatDims(t.strides)));
    if (t.storage_offset != 0) parts.push_back(absl::StrCat("offset=", t.storage_offset));
    absl::StrAppend(&s, "{", absl::StrJoin(parts, ", "), "}");
  }
  return s;
}

std::string FormatDevice(absl::Span<const int64_t> ints) {
  if (ints.size() != 2) return absl::StrCat("device", FormatDims(ints));
  std::string type;
  switch (ints[0]) {
    case 0:
      type = "cpu";
      break;
    case 1:
      type = "cuda";
      break;
    case 9:
      type = "meta";
      break;
    case kRemoteDeviceType:
      type = "remote_accelerator";
      break;
    default:
      type = absl::StrCat("device_type_", ints[0]);
  }
  if (ints[1] < 0) return absl::StrCat("device(", type, ")");
  return absl::StrCat("device(", type, ":", ints[1], ")");
}

std::string FormatArg(const Arg& a) {
  switch (a.kind) {
    case ArgKind::kNone:
      return "None";
    case ArgKind::kTensor:
      return a.tensors.empty() ? std::string("<no tensor>") : FormatTensorRef(a.tensors[0]);
    case ArgKind::kTensorList:
      return absl::StrCat("[",
                          absl::StrJoin(a.tensors, ", ",
                                        [](std::string* out, const TensorRef& t) {
                                          out->append(FormatTensorRef(t));
                                        }),
                          "]");
    case ArgKind::kOptionalTensorList: {
      std::vector<std::string> parts;
      for (size_t k = 0; k < a.tensors.size(); ++k) {
        bool present = k < a.present.size() && a.present[k] != 0;
        parts.push_back(present ? FormatTensorRef(a.tensors[k]) : std::string("None"));
      }
      return absl::StrCat("[", absl::StrJoin(parts, ", "), "]");
    }
    case ArgKind::kInt:
      return absl::StrCat(a.i);
    case ArgKind::kDouble:
      return FormatDouble(a.d);
    case ArgKind::kBool:
      return a.i != 0 ? "true" : "false";
    case ArgKind::kString:
      return absl::StrCat("\"", absl::CEscape(a.s), "\"");
    case ArgKind::kIntList:
      return FormatDims(a.ints);
    case ArgKind::kDoubleList:
      return absl::StrCat(
          "[",
          absl::StrJoin(a.doubles, ",",
                        [](std::string* out, double d) { out->append(FormatDouble(d)); }),
          "]");
    case ArgKind::kBoolList:
      return absl::StrCat("[",
                          absl::StrJoin(a.ints, ",",
                                        [](std::string* out, int64_t b) {
                                          out->append(b != 0 ? "true" : "false");
                                        }),
                          "]");
    case ArgKind::kDevice:
      return FormatDevice(a.ints);
    case ArgKind::kComplex:
      if (a.doubles.size() != 2) return "complex(?)";
      return absl::StrCat("complex(", FormatDouble(a.doubles[0]), ", ", FormatDouble(a.doubles[1]),
                          ")");
  }
  return absl::StrCat("<arg kind ", static_cast<int>(a.kind), ">");
}

// ---- Fingerprint ------------------------------------------------------------------

// Hashes a Graph's structure (see Graph::Fingerprint for what is in and out).
struct StructureOf {
  const Graph* graph;
};

template <typename H>
H HashTensorRef(H h, const TensorRef& t) {
  return H::combine(std::move(h), t.buffer, static_cast<uint8_t>(t.dtype), t.sizes, t.strides,
                    t.storage_offset);
}

template <typename H>
H HashTensorRefs(H h, absl::Span<const TensorRef> ts) {
  h = H::combine(std::move(h), ts.size());
  for (const TensorRef& t : ts) h = HashTensorRef(std::move(h), t);
  return h;
}

template <typename H>
H HashDoubles(H h, const std::vector<double>& ds) {
  h = H::combine(std::move(h), ds.size());
  for (double d : ds) h = H::combine(std::move(h), DoubleBits(d));
  return h;
}

template <typename H>
H HashArg(H h, const Arg& a) {
  h = H::combine(std::move(h), static_cast<uint8_t>(a.kind));
  switch (a.kind) {
    case ArgKind::kNone:
      return h;
    case ArgKind::kTensor:
    case ArgKind::kTensorList:
      return HashTensorRefs(std::move(h), a.tensors);
    case ArgKind::kOptionalTensorList:
      return H::combine(HashTensorRefs(std::move(h), a.tensors), a.present);
    case ArgKind::kInt:
    case ArgKind::kBool:
      return H::combine(std::move(h), a.i);
    case ArgKind::kDouble:
      return H::combine(std::move(h), DoubleBits(a.d));
    case ArgKind::kString:
      return H::combine(std::move(h), a.s);
    case ArgKind::kIntList:
    case ArgKind::kBoolList:
    case ArgKind::kDevice:
      return H::combine(std::move(h), a.ints);
    case ArgKind::kDoubleList:
    case ArgKind::kComplex:
      return HashDoubles(std::move(h), a.doubles);
  }
  return h;
}

template <typename H>
H AbslHashValue(H h, const StructureOf& s) {
  const Graph& g = *s.graph;
  const std::string kUnknown = "?";
  auto op_name = [&](OpId op) -> const std::string& {
    return op < g.num_ops() ? g.OpName(op) : kUnknown;
  };
  auto scope_name = [&](ScopeId scope) -> const std::string& {
    return scope < g.num_scopes() ? g.ScopeName(scope) : kUnknown;
  };
  h = H::combine(std::move(h), g.buffers().size());
  for (const Buffer& b : g.buffers()) {
    h = H::combine(std::move(h), static_cast<uint8_t>(b.kind), static_cast<uint8_t>(b.dtype),
                   b.numel, b.producer);
    if (b.kind == BufferKind::kParameter) h = H::combine(std::move(h), b.name);
  }
  h = H::combine(std::move(h), g.nodes().size());
  for (const Node& n : g.nodes()) {
    h = H::combine(std::move(h), op_name(n.op), scope_name(n.scope), n.args.size());
    for (const Arg& a : n.args) h = HashArg(std::move(h), a);
    h = HashTensorRefs(std::move(h), n.outputs);
    h = H::combine(std::move(h), n.writes);
  }
  return HashTensorRefs(std::move(h), g.outputs());
}

// ---- Dependency analysis ----------------------------------------------------------

// How one node touches one buffer.
struct Access {
  BufferId buffer;
  bool reads = false;    // an input view of it
  bool writes = false;   // in `writes`, or an output view of it
  bool defines = false;  // its producer, writing it from nothing (not also reading it)
};

std::vector<Access> NodeAccesses(const Graph& g, const Node& n) {
  std::vector<Access> accesses;
  auto find = [&](BufferId b) -> Access* {
    if (b >= g.buffers().size()) return nullptr;  // Validate reports it
    for (Access& a : accesses) {
      if (a.buffer == b) return &a;
    }
    accesses.push_back(Access{b});
    return &accesses.back();
  };
  for (const TensorRef* t : n.Inputs()) {
    if (Access* a = find(t->buffer)) a->reads = true;
  }
  for (BufferId b : n.writes) {
    if (Access* a = find(b)) a->writes = true;
  }
  for (const TensorRef& t : n.outputs) {
    if (Access* a = find(t.buffer)) a->writes = true;
  }
  for (Access& a : accesses) {
    a.defines = a.writes && !a.reads && g.buffer(a.buffer).producer == n.id;
  }
  return accesses;
}

std::vector<NodeId> TopologicalOrderFrom(size_t num_nodes, const std::vector<Dependency>& deps) {
  std::vector<std::vector<NodeId>> successors(num_nodes);
  std::vector<size_t> in_degree(num_nodes, 0);
  for (const Dependency& d : deps) {
    if (d.from >= num_nodes || d.to >= num_nodes) continue;
    successors[d.from].push_back(d.to);
    ++in_degree[d.to];
  }
  std::priority_queue<NodeId, std::vector<NodeId>, std::greater<NodeId>> ready;
  for (NodeId n = 0; n < num_nodes; ++n) {
    if (in_degree[n] == 0) ready.push(n);
  }
  std::vector<NodeId> order;
  order.reserve(num_nodes);
  std::vector<bool> placed(num_nodes, false);
  while (!ready.empty()) {
    NodeId n = ready.top();
    ready.pop();
    order.push_back(n);
    placed[n] = true;
    for (NodeId s : successors[n]) {
      if (--in_degree[s] == 0) ready.push(s);
    }
  }
  // A cycle (only in an invalid graph): keep the rest in capture order.
  for (NodeId n = 0; n < num_nodes; ++n) {
    if (!placed[n]) order.push_back(n);
  }
  return order;
}

// ---- Binary form ------------------------------------------------------------------

void WriteTensorRef(ByteWriter& w, const TensorRef& t) {
  w.WriteU32(t.buffer);
  w.WriteU8(static_cast<uint8_t>(t.dtype));
  w.WriteI64Span(t.sizes);
  w.WriteI64Span(t.strides);
  w.WriteI64(t.storage_offset);
}

void WriteTensorRefs(ByteWriter& w, absl::Span<const TensorRef> ts, std::string_view what) {
  w.WriteCount(ts.size(), what);
  for (const TensorRef& t : ts) WriteTensorRef(w, t);
}

void WriteArg(ByteWriter& w, const Arg& a) {
  w.WriteU8(static_cast<uint8_t>(a.kind));
  switch (a.kind) {
    case ArgKind::kNone:
      break;
    case ArgKind::kTensor:
    case ArgKind::kTensorList:
      WriteTensorRefs(w, a.tensors, "argument tensors");
      break;
    case ArgKind::kOptionalTensorList:
      WriteTensorRefs(w, a.tensors, "argument tensors");
      w.WriteU8Span(a.present);
      break;
    case ArgKind::kInt:
    case ArgKind::kBool:
      w.WriteI64(a.i);
      break;
    case ArgKind::kDouble:
      w.WriteF64(a.d);
      break;
    case ArgKind::kString:
      w.WriteString(a.s);
      break;
    case ArgKind::kIntList:
    case ArgKind::kBoolList:
    case ArgKind::kDevice:
      w.WriteI64Span(a.ints);
      break;
    case ArgKind::kDoubleList:
    case ArgKind::kComplex:
      w.WriteF64Span(a.doubles);
      break;
  }
}

absl::StatusOr<DType> ReadDType(ByteReader& r, std::string_view what) {
  GENIE_ASSIGN_OR_RETURN(uint8_t code, r.ReadU8(what));
  if (!IsKnownDType(code)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown dtype code ", static_cast<int>(code),
                                                   " for ", Sv(what), " at offset ",
                                                   r.offset() - 1));
  }
  return static_cast<DType>(code);
}

absl::StatusOr<TensorRef> ReadTensorRef(ByteReader& r) {
  TensorRef t;
  GENIE_ASSIGN_OR_RETURN(t.buffer, r.ReadU32("view buffer id"));
  GENIE_ASSIGN_OR_RETURN(t.dtype, ReadDType(r, "view dtype"));
  GENIE_RETURN_IF_ERROR(r.ReadI64List("view sizes", &t.sizes));
  GENIE_RETURN_IF_ERROR(r.ReadI64List("view strides", &t.strides));
  GENIE_ASSIGN_OR_RETURN(t.storage_offset, r.ReadI64("view storage offset"));
  return t;
}

template <typename Refs>  // std::vector<TensorRef> or Arg::tensors
absl::Status ReadTensorRefs(ByteReader& r, std::string_view what, Refs* out) {
  GENIE_ASSIGN_OR_RETURN(uint32_t n, r.ReadCount(what, kMinTensorRefBytes));
  out->clear();
  out->reserve(n);
  for (uint32_t k = 0; k < n; ++k) {
    absl::StatusOr<TensorRef> t = ReadTensorRef(r);
    if (!t.ok()) return WithContext(t.status(), absl::StrCat(Sv(what), "[", k, "]"));
    out->push_back(*std::move(t));
  }
  return absl::OkStatus();
}

absl::StatusOr<Arg> ReadArg(ByteReader& r) {
  Arg a;
  GENIE_ASSIGN_OR_RETURN(uint8_t kind, r.ReadU8("argument kind"));
  if (kind > kMaxArgKind) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown argument kind code ", static_cast<int>(kind), " at offset ", r.offset() - 1));
  }
  a.kind = static_cast<ArgKind>(kind);
  switch (a.kind) {
    case ArgKind::kNone:
      break;
    case ArgKind::kTensor:
    case ArgKind::kTensorList:
      GENIE_RETURN_IF_ERROR(ReadTensorRefs(r, "argument tensors", &a.tensors));
      break;
    case ArgKind::kOptionalTensorList:
      GENIE_RETURN_IF_ERROR(ReadTensorRefs(r, "argument tensors", &a.tensors));
      GENIE_RETURN_IF_ERROR(r.ReadU8List("argument present flags", &a.present));
      break;
    case ArgKind::kInt:
    case ArgKind::kBool: {
      GENIE_ASSIGN_OR_RETURN(a.i, r.ReadI64("integer argument"));
      break;
    }
    case ArgKind::kDouble: {
      GENIE_ASSIGN_OR_RETURN(a.d, r.ReadF64("double argument"));
      break;
    }
    case ArgKind::kString: {
      GENIE_ASSIGN_OR_RETURN(a.s, r.ReadString("string argument"));
      break;
    }
    case ArgKind::kIntList:
    case ArgKind::kBoolList:
    case ArgKind::kDevice:
      GENIE_RETURN_IF_ERROR(r.ReadI64List("integer list argument", &a.ints));
      break;
    case ArgKind::kDoubleList:
    case ArgKind::kComplex:
      GENIE_RETURN_IF_ERROR(r.ReadF64List("double list argument", &a.doubles));
      break;
  }
  return a;
}

absl::StatusOr<Node> ReadNode(ByteReader& r) {
  Node n;
  GENIE_ASSIGN_OR_RETURN(n.op, r.ReadU32("node op id"));
  GENIE_ASSIGN_OR_RETURN(n.scope, r.ReadU32("node scope id"));
  GENIE_ASSIGN_OR_RETURN(uint32_t num_args, r.ReadCount("node argument count", kMinArgBytes));
  n.args.reserve(num_args);
  for (uint32_t k = 0; k < num_args; ++k) {
    absl::StatusOr<Arg> a = ReadArg(r);
    if (!a.ok()) return WithContext(a.status(), absl::StrCat("argument ", k));
    n.args.push_back(*std::move(a));
  }
  GENIE_RETURN_IF_ERROR(ReadTensorRefs(r, "node outputs", &n.outputs));
  GENIE_RETURN_IF_ERROR(r.ReadU32List("node writes", &n.writes));
  return n;
}

absl::StatusOr<Buffer> ReadBuffer(ByteReader& r) {
  Buffer b;
  GENIE_ASSIGN_OR_RETURN(b.dtype, ReadDType(r, "buffer dtype"));
  GENIE_ASSIGN_OR_RETURN(b.numel, r.ReadI64("buffer numel"));
  GENIE_ASSIGN_OR_RETURN(uint8_t kind, r.ReadU8("buffer kind"));
  if (kind > kMaxBufferKind) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown buffer kind code ", static_cast<int>(kind), " at offset ", r.offset() - 1));
  }
  b.kind = static_cast<BufferKind>(kind);
  GENIE_ASSIGN_OR_RETURN(b.name, r.ReadString("buffer name"));
  GENIE_ASSIGN_OR_RETURN(b.handle, r.ReadU64("buffer handle"));
  GENIE_ASSIGN_OR_RETURN(b.producer, r.ReadU32("buffer producer"));
  return b;
}

absl::StatusOr<Graph> DecodeGraph(std::string_view bytes, const WireLimits& limits) {
  ByteReader r(bytes, limits);
  GENIE_RETURN_IF_ERROR(r.Expect(kGraphMagic, "magic (expected \"GNIEGRPH\", a Genie graph)"));
  GENIE_ASSIGN_OR_RETURN(uint32_t version, r.ReadU32("format version"));
  if (version != kGraphWireVersion) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unsupported graph format version ", version, "; this build reads version ",
        kGraphWireVersion, ": build the sender and receiver from the same Genie revision"));
  }
  Graph g;
  GENIE_ASSIGN_OR_RETURN(uint32_t num_ops, r.ReadCount("op name count", kMinStringBytes));
  for (uint32_t k = 0; k < num_ops; ++k) {
    GENIE_ASSIGN_OR_RETURN(std::string_view name, r.ReadStringView("op name"));
    if (g.InternOp(name) != k) {
      return absl::InvalidArgumentError(
          absl::StrCat("op name ", k, " \"", absl::CEscape(Sv(name)), "\" appears twice"));
    }
  }
  GENIE_ASSIGN_OR_RETURN(uint32_t num_scopes, r.ReadCount("scope name count", kMinStringBytes));
  if (num_scopes == 0) {
    return absl::InvalidArgumentError("the scope table is empty; scope 0 must be the root \"\"");
  }
  for (uint32_t k = 0; k < num_scopes; ++k) {
    GENIE_ASSIGN_OR_RETURN(std::string_view name, r.ReadStringView("scope name"));
    if (g.InternScope(name) != k || (k == 0) != name.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("scope name ", k, " \"", absl::CEscape(Sv(name)),
                       "\" is a duplicate or misplaced (scope 0 must be \"\", the others unique)"));
    }
  }
  GENIE_ASSIGN_OR_RETURN(uint32_t num_buffers, r.ReadCount("buffer count", kMinBufferBytes));
  std::vector<NodeId> producers;
  producers.reserve(num_buffers);
  for (uint32_t k = 0; k < num_buffers; ++k) {
    absl::StatusOr<Buffer> b = ReadBuffer(r);
    if (!b.ok()) return WithContext(b.status(), absl::StrCat("buffer b", k));
    producers.push_back(b->producer);
    b->producer = kNoNode;
    g.AddBuffer(*std::move(b));
  }
  GENIE_ASSIGN_OR_RETURN(uint32_t num_nodes, r.ReadCount("node count", kMinNodeBytes));
  for (uint32_t k = 0; k < num_nodes; ++k) {
    absl::StatusOr<Node> n = ReadNode(r);
    if (!n.ok()) return WithContext(n.status(), absl::StrCat("node %", k));
    g.AddNode(*std::move(n));
  }
  // Exactly what was sent, not what AddNode inferred; Validate checks they agree.
  for (uint32_t k = 0; k < num_buffers; ++k) g.mutable_buffer(k).producer = producers[k];
  GENIE_RETURN_IF_ERROR(ReadTensorRefs(r, "graph outputs", &g.outputs()));
  GENIE_RETURN_IF_ERROR(r.ExpectEnd("the graph"));
  GENIE_RETURN_IF_ERROR(WithContext(g.Validate(), "decoded graph is inconsistent"));
  return g;
}

}  // namespace

// ---- DType --------------------------------------------------------------------------

bool IsKnownDType(uint8_t code) { return code <= 11 || code == 15; }

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kUInt8:
    case DType::kInt8:
    case DType::kBool:
      return 1;
    case DType::kInt16:
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    case DType::kInt32:
    case DType::kFloat32:
    case DType::kComplexHalf:
      return 4;
    case DType::kInt64:
    case DType::kFloat64:
    case DType::kComplexFloat:
      return 8;
    case DType::kComplexDouble:
      return 16;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kUInt8:
      return "u8";
    case DType::kInt8:
      return "i8";
    case DType::kInt16:
      return "i16";
    case DType::kInt32:
      return "i32";
    case DType::kInt64:
      return "i64";
    case DType::kFloat16:
      return "f16";
    case DType::kFloat32:
      return "f32";
    case DType::kFloat64:
      return "f64";
    case DType::kComplexHalf:
      return "c32";
    case DType::kComplexFloat:
      return "c64";
    case DType::kComplexDouble:
      return "c128";
    case DType::kBool:
      return "bool";
    case DType::kBFloat16:
      return "bf16";
  }
  return "dtype?";
}

const char* BufferKindName(BufferKind kind) {
  switch (kind) {
    case BufferKind::kIntermediate:
      return "intermediate";
    case BufferKind::kHostInput:
      return "host_input";
    case BufferKind::kParameter:
      return "parameter";
    case BufferKind::kResident:
      return "resident";
  }
  return "kind?";
}

const char* ArgKindName(ArgKind kind) {
  switch (kind) {
    case ArgKind::kNone:
      return "None";
    case ArgKind::kTensor:
      return "Tensor";
    case ArgKind::kTensorList:
      return "Tensor[]";
    case ArgKind::kOptionalTensorList:
      return "Tensor?[]";
    case ArgKind::kInt:
      return "int";
    case ArgKind::kDouble:
      return "float";
    case ArgKind::kBool:
      return "bool";
    case ArgKind::kString:
      return "str";
    case ArgKind::kIntList:
      return "int[]";
    case ArgKind::kDoubleList:
      return "float[]";
    case ArgKind::kBoolList:
      return "bool[]";
    case ArgKind::kDevice:
      return "Device";
    case ArgKind::kComplex:
      return "complex";
  }
  return "kind?";
}

const char* DependencyKindName(DependencyKind kind) {
  switch (kind) {
    case DependencyKind::kReadAfterWrite:
      return "RAW";
    case DependencyKind::kWriteAfterRead:
      return "WAR";
    case DependencyKind::kWriteAfterWrite:
      return "WAW";
  }
  return "dependency?";
}

// ---- TensorRef ----------------------------------------------------------------------

Dims ContiguousStrides(absl::Span<const int64_t> sizes) {
  Dims strides(sizes.size());
  int64_t stride = 1;
  for (size_t k = sizes.size(); k-- > 0;) {
    strides[k] = stride;
    // Saturates on absurd sizes; Validate refuses such a view.
    if (__builtin_mul_overflow(stride, std::max<int64_t>(sizes[k], 1), &stride)) stride = kInt64Max;
  }
  return strides;
}

TensorRef TensorRef::Contiguous(BufferId buffer, DType dtype, absl::Span<const int64_t> sizes) {
  TensorRef t;
  t.buffer = buffer;
  t.dtype = dtype;
  t.sizes.assign(sizes.begin(), sizes.end());
  t.strides = ContiguousStrides(sizes);
  return t;
}

int64_t TensorRef::numel() const {
  int64_t n = 1;
  for (int64_t s : sizes) {
    if (s == 0) return 0;
  }
  for (int64_t s : sizes) {
    if (__builtin_mul_overflow(n, s, &n)) return kInt64Max;  // saturates; Validate refuses it
  }
  return n;
}

bool TensorRef::is_contiguous() const {
  if (sizes.size() != strides.size()) return false;
  if (numel() == 0) return true;
  int64_t expected = 1;
  for (size_t k = sizes.size(); k-- > 0;) {
    if (sizes[k] == 1) continue;
    if (strides[k] != expected) return false;
    if (__builtin_mul_overflow(expected, sizes[k], &expected)) return false;
  }
  return true;
}

int64_t TensorRef::required_storage_numel() const {
  int64_t extent;
  return StorageExtent(*this, &extent) ? extent : kInt64Max;
}

bool operator==(const TensorRef& a, const TensorRef& b) {
  return a.buffer == b.buffer && a.dtype == b.dtype && a.sizes == b.sizes &&
         a.strides == b.strides && a.storage_offset == b.storage_offset;
}

// ---- Arg ----------------------------------------------------------------------------

Arg Arg::Tensor(TensorRef t) {
  Arg a;
  a.kind = ArgKind::kTensor;
  a.tensors.push_back(std::move(t));
  return a;
}

Arg Arg::TensorList(std::vector<TensorRef> ts) {
  Arg a;
  a.kind = ArgKind::kTensorList;
  a.tensors.assign(std::make_move_iterator(ts.begin()), std::make_move_iterator(ts.end()));
  return a;
}

Arg Arg::OptionalTensorList(std::vector<TensorRef> ts, std::vector<uint8_t> present) {
  Arg a;
  a.kind = ArgKind::kOptionalTensorList;
  a.tensors.assign(std::make_move_iterator(ts.begin()), std::make_move_iterator(ts.end()));
  a.present = std::move(present);
  return a;
}

Arg Arg::Int(int64_t v) {
  Arg a;
  a.kind = ArgKind::kInt;
  a.i = v;
  return a;
}

Arg Arg::Double(double v) {
  Arg a;
  a.kind = ArgKind::kDouble;
  a.d = v;
  return a;
}

Arg Arg::Bool(bool v) {
  Arg a;
  a.kind = ArgKind::kBool;
  a.i = v ? 1 : 0;
  return a;
}

Arg Arg::String(std::string v) {
  Arg a;
  a.kind = ArgKind::kString;
  a.s = std::move(v);
  return a;
}

Arg Arg::IntList(std::vector<int64_t> v) {
  Arg a;
  a.kind = ArgKind::kIntList;
  a.ints = std::move(v);
  return a;
}

Arg Arg::DoubleList(std::vector<double> v) {
  Arg a;
  a.kind = ArgKind::kDoubleList;
  a.doubles = std::move(v);
  return a;
}

Arg Arg::BoolList(std::vector<int64_t> v) {
  Arg a;
  a.kind = ArgKind::kBoolList;
  a.ints = std::move(v);
  return a;
}

Arg Arg::Device(int64_t type, int64_t index) {
  Arg a;
  a.kind = ArgKind::kDevice;
  a.ints = {type, index};
  return a;
}

Arg Arg::Complex(double re, double im) {
  Arg a;
  a.kind = ArgKind::kComplex;
  a.doubles = {re, im};
  return a;
}

bool operator==(const Arg& a, const Arg& b) {
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case ArgKind::kNone:
      return true;
    case ArgKind::kTensor:
    case ArgKind::kTensorList:
      return a.tensors == b.tensors;
    case ArgKind::kOptionalTensorList:
      return a.tensors == b.tensors && a.present == b.present;
    case ArgKind::kInt:
    case ArgKind::kBool:
      return a.i == b.i;
    case ArgKind::kDouble:
      return DoubleBits(a.d) == DoubleBits(b.d);
    case ArgKind::kString:
      return a.s == b.s;
    case ArgKind::kIntList:
    case ArgKind::kBoolList:
    case ArgKind::kDevice:
      return a.ints == b.ints;
    case ArgKind::kDoubleList:
    case ArgKind::kComplex:
      return SameDoubles(a.doubles, b.doubles);
  }
  return false;  // an unknown kind code: equal to nothing
}

// ---- Node ---------------------------------------------------------------------------

std::vector<const TensorRef*> Node::Inputs() const {
  std::vector<const TensorRef*> inputs;
  ForEachInput([&](const TensorRef& t) { inputs.push_back(&t); });
  return inputs;
}

// ---- Graph --------------------------------------------------------------------------

Graph::Graph() : names_(std::make_shared<Names>()), nodes_(std::make_shared<std::vector<Node>>()) {
  names_->scopes.emplace_back();
  names_->scope_index.emplace(std::string(), 0);
}

Graph::Names& Graph::MutableNames() {
  if (names_.use_count() > 1) names_ = std::make_shared<Names>(*names_);
  return *names_;
}

std::vector<Node>& Graph::MutableNodes() {
  if (nodes_.use_count() > 1) nodes_ = std::make_shared<std::vector<Node>>(*nodes_);
  return *nodes_;
}

Graph Graph::Prefix(size_t num_nodes, size_t num_buffers) const {
  Graph g;
  num_nodes = std::min(num_nodes, nodes_->size());
  // Names up to the largest id the prefix uses: a graph interned in first-use order
  // (as capture does) gets exactly the table a capture of the prefix alone would make.
  size_t ops = 0, scopes = 1;
  for (size_t n = 0; n < num_nodes; ++n) {
    ops = std::max<size_t>(ops, (*nodes_)[n].op + size_t{1});
    scopes = std::max<size_t>(scopes, (*nodes_)[n].scope + size_t{1});
  }
  if (ops == names_->ops.size() && scopes == names_->scopes.size()) {
    g.names_ = names_;
  } else {
    for (size_t k = 0; k < ops && k < names_->ops.size(); ++k) g.InternOp(names_->ops[k]);
    for (size_t k = 1; k < scopes && k < names_->scopes.size(); ++k) g.InternScope(names_->scopes[k]);
  }
  g.buffers_.assign(buffers_.begin(), buffers_.begin() + static_cast<std::ptrdiff_t>(
                                                             std::min(num_buffers, buffers_.size())));
  for (Buffer& b : g.buffers_) {
    if (b.producer != kNoNode && b.producer >= num_nodes) b.producer = kNoNode;
  }
  g.nodes_->reserve(nodes_->size());
  g.nodes_->assign(nodes_->begin(), nodes_->begin() + static_cast<std::ptrdiff_t>(num_nodes));
  return g;
}

OpId Graph::InternOp(std::string_view qualified_name) {
  auto it = names_->op_index.find(Sv(qualified_name));
  if (it != names_->op_index.end()) return it->second;
  Names& names = MutableNames();
  OpId id = static_cast<OpId>(names.ops.size());
  names.ops.emplace_back(qualified_name);
  names.op_index.emplace(std::string(qualified_name), id);
  return id;
}

ScopeId Graph::InternScope(std::string_view path) {
  auto it = names_->scope_index.find(Sv(path));
  if (it != names_->scope_index.end()) return it->second;
  Names& names = MutableNames();
  ScopeId id = static_cast<ScopeId>(names.scopes.size());
  names.scopes.emplace_back(path);
  names.scope_index.emplace(std::string(path), id);
  return id;
}

BufferId Graph::AddBuffer(Buffer buffer) {
  BufferId id = static_cast<BufferId>(buffers_.size());
  buffer.id = id;
  buffers_.push_back(std::move(buffer));
  return id;
}

NodeId Graph::AddNode(Node node) {
  std::vector<Node>& nodes = MutableNodes();
  NodeId id = static_cast<NodeId>(nodes.size());
  node.id = id;
  for (const TensorRef& t : node.outputs) {
    if (t.buffer >= buffers_.size() || buffers_[t.buffer].producer != kNoNode) continue;
    // An in-place or out= op returns a buffer it was given: it does not create it.
    bool is_argument = false;
    node.ForEachInput([&](const TensorRef& in) { is_argument |= in.buffer == t.buffer; });
    if (!is_argument) buffers_[t.buffer].producer = id;
  }
  nodes.push_back(std::move(node));
  return id;
}

absl::Status Graph::Validate() const {
  auto invalid = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("invalid graph: ", parts...));
  };
  if (names_->scopes.empty() || !names_->scopes[0].empty()) {
    return invalid("scope 0 must be the root scope \"\"");
  }
  // A view: ids, dtype, geometry, and that it fits its buffer (compared in bytes).
  auto check_view = [&](const TensorRef& t, const std::string& where) -> absl::Status {
    if (t.buffer >= buffers_.size()) {
      return invalid(where, " names buffer ", FormatBufferId(t.buffer), " but the graph has ",
                     buffers_.size(), " buffers");
    }
    if (!IsKnownDType(static_cast<uint8_t>(t.dtype))) {
      return invalid(where, " has unknown dtype code ", static_cast<int>(t.dtype));
    }
    if (t.sizes.size() != t.strides.size()) {
      return invalid(where, " has ", t.sizes.size(), " sizes but ", t.strides.size(), " strides");
    }
    for (size_t k = 0; k < t.sizes.size(); ++k) {
      if (t.sizes[k] < 0 || t.strides[k] < 0) {
        return invalid(where, " has a negative size or stride: sizes ", FormatDims(t.sizes),
                       " strides ", FormatDims(t.strides));
      }
    }
    if (t.storage_offset < 0) {
      return invalid(where, " has negative storage offset ", t.storage_offset);
    }
    const Buffer& b = buffers_[t.buffer];
    int64_t extent, view_bytes, buffer_bytes;
    if (!StorageExtent(t, &extent) ||
        __builtin_mul_overflow(extent, static_cast<int64_t>(DTypeSize(t.dtype)), &view_bytes) ||
        __builtin_mul_overflow(b.numel, static_cast<int64_t>(DTypeSize(b.dtype)), &buffer_bytes) ||
        view_bytes > buffer_bytes) {
      return invalid(where, " ", FormatTensorRef(t), " reaches past its buffer ",
                     FormatBufferId(t.buffer), " (", b.numel, " x ", DTypeName(b.dtype), ")");
    }
    return absl::OkStatus();
  };

  for (size_t k = 0; k < buffers_.size(); ++k) {
    const Buffer& b = buffers_[k];
    std::string where = absl::StrCat("buffer b", k);
    if (b.id != k) return invalid(where, " has id ", b.id, "; ids must equal the index");
    if (!IsKnownDType(static_cast<uint8_t>(b.dtype))) {
      return invalid(where, " has unknown dtype code ", static_cast<int>(b.dtype));
    }
    if (static_cast<uint8_t>(b.kind) > kMaxBufferKind) {
      return invalid(where, " has unknown kind code ", static_cast<int>(b.kind));
    }
    if (b.numel < 0 || b.numel > kInt64Max / 16) {
      return invalid(where, " has impossible numel ", b.numel);
    }
    if (b.producer != kNoNode) {
      if (b.producer >= nodes_->size()) {
        return invalid(where, " names producer %", b.producer, " but the graph has ", nodes_->size(),
                       " nodes");
      }
      const std::vector<TensorRef>& outs = (*nodes_)[b.producer].outputs;
      bool found =
          std::any_of(outs.begin(), outs.end(), [&](const TensorRef& t) { return t.buffer == k; });
      if (!found)
        return invalid(where, " names producer %", b.producer, " which does not output it");
    } else if (b.kind == BufferKind::kIntermediate) {
      return invalid(where,
                     " is an intermediate but no node produces it; add its node or give "
                     "it the kind of where its data comes from");
    }
  }

  for (size_t k = 0; k < nodes_->size(); ++k) {
    const Node& n = (*nodes_)[k];
    std::string where = absl::StrCat("node %", k);
    if (n.id != k) return invalid(where, " has id ", n.id, "; ids must equal the index");
    if (n.op >= names_->ops.size()) {
      return invalid(where, " has op id ", n.op, " but ", names_->ops.size(), " ops are interned");
    }
    absl::StrAppend(&where, " (", names_->ops[n.op], ")");
    if (n.scope >= names_->scopes.size()) {
      return invalid(where, " has scope id ", n.scope, " but ", names_->scopes.size(),
                     " scopes are interned");
    }
    for (size_t j = 0; j < n.args.size(); ++j) {
      const Arg& a = n.args[j];
      std::string arg_where = absl::StrCat(where, " argument ", j);
      if (static_cast<uint8_t>(a.kind) > kMaxArgKind) {
        return invalid(arg_where, " has unknown kind code ", static_cast<int>(a.kind));
      }
      switch (a.kind) {
        case ArgKind::kTensor:
          if (a.tensors.size() != 1) {
            return invalid(arg_where, " is a Tensor with ", a.tensors.size(), " views");
          }
          break;
        case ArgKind::kOptionalTensorList:
          if (a.present.size() != a.tensors.size()) {
            return invalid(arg_where, " has ", a.tensors.size(), " views but ", a.present.size(),
                           " present flags");
          }
          for (uint8_t p : a.present) {
            if (p > 1) return invalid(arg_where, " has present flag ", static_cast<int>(p));
          }
          break;
        case ArgKind::kBool:
          if (a.i != 0 && a.i != 1) return invalid(arg_where, " is a bool holding ", a.i);
          break;
        case ArgKind::kBoolList:
          for (int64_t v : a.ints) {
            if (v != 0 && v != 1) return invalid(arg_where, " is a bool list holding ", v);
          }
          break;
        case ArgKind::kDevice:
          if (a.ints.size() != 2) return invalid(arg_where, " is a Device without {type, index}");
          break;
        case ArgKind::kComplex:
          if (a.doubles.size() != 2) return invalid(arg_where, " is a complex without {re, im}");
          break;
        default:
          break;
      }
    }
    absl::Status input_status;
    size_t j = 0;
    n.ForEachInput([&](const TensorRef& in) {
      if (!input_status.ok()) return;
      input_status = check_view(in, absl::StrCat(where, " input ", j++));
      if (!input_status.ok()) return;
      NodeId producer = buffers_[in.buffer].producer;
      if (producer != kNoNode && producer > k) {
        input_status = invalid(where, " reads ", FormatBufferId(in.buffer),
                               " before its producer %", producer);
      }
    });
    GENIE_RETURN_IF_ERROR(input_status);
    for (size_t j = 0; j < n.outputs.size(); ++j) {
      GENIE_RETURN_IF_ERROR(check_view(n.outputs[j], absl::StrCat(where, " output ", j)));
    }
    for (BufferId w : n.writes) {
      bool read = false;
      n.ForEachInput([&](const TensorRef& t) { read |= t.buffer == w; });
      if (!read) {
        return invalid(where, " writes ", FormatBufferId(w),
                       " which is not one of its tensor arguments");
      }
    }
  }
  for (size_t k = 0; k < outputs_.size(); ++k) {
    GENIE_RETURN_IF_ERROR(check_view(outputs_[k], absl::StrCat("graph output ", k)));
  }
  return absl::OkStatus();
}

std::string Graph::DumpBuffer(BufferId id) const {
  if (id >= buffers_.size()) return absl::StrCat(FormatBufferId(id), ": ?");
  const Buffer& b = buffers_[id];
  std::string line = absl::StrCat("b", id, ": ", BufferKindName(b.kind), " ", DTypeName(b.dtype),
                                  "[", b.numel, "]");
  if (!b.name.empty()) absl::StrAppend(&line, " \"", absl::CEscape(b.name), "\"");
  if (b.producer != kNoNode) absl::StrAppend(&line, " <- %", b.producer);
  if (b.handle != 0) absl::StrAppend(&line, " handle=0x", absl::Hex(b.handle));
  return line;
}

std::string Graph::DumpNode(NodeId id) const {
  if (id >= nodes_->size()) return absl::StrCat("%", id, " = ?");
  const Node& n = (*nodes_)[id];
  std::string line =
      absl::StrCat("%", id, " = ", n.op < names_->ops.size() ? names_->ops[n.op] : "?", "(",
                   absl::StrJoin(n.args, ", ",
                                 [](std::string* out, const Arg& a) { out->append(FormatArg(a)); }),
                   ") -> ");
  auto join_refs = [](const std::vector<TensorRef>& ts) {
    return absl::StrJoin(
        ts, ", ", [](std::string* out, const TensorRef& t) { out->append(FormatTensorRef(t)); });
  };
  if (n.outputs.size() == 1) {
    absl::StrAppend(&line, join_refs(n.outputs));
  } else {
    absl::StrAppend(&line, "(", join_refs(n.outputs), ")");
  }
  if (!n.writes.empty()) {
    absl::StrAppend(
        &line, "  writes(",
        absl::StrJoin(n.writes, ",",
                      [](std::string* out, BufferId b) { out->append(FormatBufferId(b)); }),
        ")");
  }
  if (n.scope >= names_->scopes.size()) {
    absl::StrAppend(&line, "  @?");
  } else if (n.scope != 0) {
    absl::StrAppend(&line, "  @", names_->scopes[n.scope]);
  }
  return line;
}

std::string Graph::Dump() const {
  return Dump([](NodeId, std::string*) {});
}

std::string Graph::Dump(absl::FunctionRef<void(NodeId, std::string*)> node_suffix) const {
  std::string out = absl::StrCat("graph: ", buffers_.size(), " buffers, ", nodes_->size(),
                                 " nodes, ", outputs_.size(), " outputs\n");
  for (BufferId b = 0; b < buffers_.size(); ++b) absl::StrAppend(&out, DumpBuffer(b), "\n");
  for (NodeId n = 0; n < nodes_->size(); ++n) {
    std::string line = DumpNode(n);
    node_suffix(n, &line);
    absl::StrAppend(&out, line, "\n");
  }
  absl::StrAppend(
      &out, "outputs: ",
      absl::StrJoin(outputs_, ", ",
                    [](std::string* o, const TensorRef& t) { o->append(FormatTensorRef(t)); }),
      "\n");
  return out;
}

uint64_t Graph::Fingerprint() const {
  return static_cast<uint64_t>(absl::Hash<StructureOf>{}(StructureOf{this}));
}

// ---- Analyses -----------------------------------------------------------------------

std::vector<Dependency> Dependencies(const Graph& graph) {
  struct Step {
    NodeId node;
    Access access;
  };
  std::vector<std::vector<Step>> per_buffer(graph.buffers().size());
  for (const Node& n : graph.nodes()) {
    for (const Access& a : NodeAccesses(graph, n)) per_buffer[a.buffer].push_back({n.id, a});
  }
  std::vector<Dependency> deps;
  for (BufferId b = 0; b < per_buffer.size(); ++b) {
    std::vector<Step>& steps = per_buffer[b];
    // The producer accesses its buffer first, even if it was appended later.
    NodeId producer = graph.buffer(b).producer;
    auto first =
        std::find_if(steps.begin(), steps.end(), [&](const Step& s) { return s.node == producer; });
    if (first != steps.end()) std::rotate(steps.begin(), first, first + 1);

    NodeId last_writer = kNoNode;
    std::vector<NodeId> readers;  // since last_writer
    for (const Step& s : steps) {
      if (s.access.reads && last_writer != kNoNode) {
        deps.push_back({last_writer, s.node, b, DependencyKind::kReadAfterWrite});
      }
      if (s.access.writes) {
        for (NodeId r : readers) deps.push_back({r, s.node, b, DependencyKind::kWriteAfterRead});
        if (!s.access.reads && last_writer != kNoNode) {
          deps.push_back({last_writer, s.node, b, DependencyKind::kWriteAfterWrite});
        }
        last_writer = s.node;
        readers.clear();
      } else if (s.access.reads) {
        readers.push_back(s.node);
      }
    }
  }
  std::sort(deps.begin(), deps.end(), [](const Dependency& x, const Dependency& y) {
    return std::tie(x.to, x.from, x.buffer, x.kind) < std::tie(y.to, y.from, y.buffer, y.kind);
  });
  return deps;
}

std::vector<NodeId> TopologicalOrder(const Graph& graph) {
  return TopologicalOrderFrom(graph.nodes().size(), Dependencies(graph));
}

std::vector<NodeId> LiveNodes(const Graph& graph, absl::Span<const BufferId> keep) {
  const size_t num_buffers = graph.buffers().size();
  // needed[b]: some live node later in the order, or the caller, uses b's current version.
  std::vector<bool> needed(num_buffers, false);
  for (BufferId b : keep) {
    if (b < num_buffers) needed[b] = true;
  }
  for (const TensorRef& t : graph.outputs()) {
    if (t.buffer < num_buffers) needed[t.buffer] = true;
  }
  std::vector<bool> live(graph.nodes().size(), false);
  std::vector<NodeId> order = TopologicalOrder(graph);
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    std::vector<Access> accesses = NodeAccesses(graph, graph.node(*it));
    bool is_live = std::any_of(accesses.begin(), accesses.end(),
                               [&](const Access& a) { return a.writes && needed[a.buffer]; });
    if (!is_live) continue;
    live[*it] = true;
    for (const Access& a : accesses) {
      // Its producer makes the buffer from nothing; anyone else reads the version before.
      needed[a.buffer] = !a.defines;
    }
  }
  std::vector<NodeId> result;
  for (NodeId n = 0; n < live.size(); ++n) {
    if (live[n]) result.push_back(n);
  }
  return result;
}

Graph EliminateDeadCode(const Graph& graph, absl::Span<const BufferId> keep,
                        std::vector<BufferId>* old_to_new) {
  const size_t num_buffers = graph.buffers().size();
  std::vector<NodeId> live = LiveNodes(graph, keep);
  std::vector<NodeId> node_map(graph.nodes().size(), kNoNode);
  for (size_t k = 0; k < live.size(); ++k) node_map[live[k]] = static_cast<NodeId>(k);

  std::vector<bool> touched(num_buffers, false);
  auto touch = [&](BufferId b) {
    if (b < num_buffers) touched[b] = true;
  };
  for (NodeId n : live) {
    const Node& node = graph.node(n);
    for (const TensorRef* t : node.Inputs()) touch(t->buffer);
    for (const TensorRef& t : node.outputs) touch(t.buffer);
    for (BufferId b : node.writes) touch(b);
  }
  for (const TensorRef& t : graph.outputs()) touch(t.buffer);

  Graph out;
  // Op and scope tables are copied whole, so ids keep their meaning.
  for (size_t k = 0; k < graph.num_ops(); ++k) out.InternOp(graph.OpName(static_cast<OpId>(k)));
  for (size_t k = 1; k < graph.num_scopes(); ++k) {
    out.InternScope(graph.ScopeName(static_cast<ScopeId>(k)));
  }
  std::vector<BufferId> buffer_map(num_buffers, kNoBuffer);
  for (BufferId b = 0; b < num_buffers; ++b) {
    if (!touched[b]) continue;
    Buffer copy = graph.buffer(b);
    copy.producer = copy.producer < node_map.size() ? node_map[copy.producer] : kNoNode;
    buffer_map[b] = out.AddBuffer(std::move(copy));
  }
  auto remap = [&](TensorRef t) {
    t.buffer = t.buffer < num_buffers ? buffer_map[t.buffer] : kNoBuffer;
    return t;
  };
  for (NodeId n : live) {
    Node copy = graph.node(n);
    for (Arg& a : copy.args) {
      for (TensorRef& t : a.tensors) t = remap(std::move(t));
    }
    for (TensorRef& t : copy.outputs) t = remap(std::move(t));
    for (BufferId& b : copy.writes) b = b < num_buffers ? buffer_map[b] : kNoBuffer;
    out.AddNode(std::move(copy));
  }
  for (const TensorRef& t : graph.outputs()) out.outputs().push_back(remap(t));
  if (old_to_new != nullptr) *old_to_new = std::move(buffer_map);
  return out;
}

// ---- Binary form --------------------------------------------------------------------

std::string Serialize(const Graph& graph) {
  // Limits as large as the format allows: the reader's limits decide what it accepts.
  WireLimits limits;
  limits.max_count = std::numeric_limits<uint32_t>::max();
  limits.max_string_bytes = std::numeric_limits<uint32_t>::max();
  ByteWriter w(limits);
  w.WriteRaw(kGraphMagic);
  w.WriteU32(kGraphWireVersion);
  w.WriteCount(graph.num_ops(), "op names");
  for (size_t k = 0; k < graph.num_ops(); ++k) w.WriteString(graph.OpName(static_cast<OpId>(k)));
  w.WriteCount(graph.num_scopes(), "scope names");
  for (size_t k = 0; k < graph.num_scopes(); ++k) {
    w.WriteString(graph.ScopeName(static_cast<ScopeId>(k)));
  }
  w.WriteCount(graph.buffers().size(), "buffers");
  for (const Buffer& b : graph.buffers()) {
    w.WriteU8(static_cast<uint8_t>(b.dtype));
    w.WriteI64(b.numel);
    w.WriteU8(static_cast<uint8_t>(b.kind));
    w.WriteString(b.name);
    w.WriteU64(b.handle);
    w.WriteU32(b.producer);
  }
  w.WriteCount(graph.nodes().size(), "nodes");
  for (const Node& n : graph.nodes()) {
    w.WriteU32(n.op);
    w.WriteU32(n.scope);
    w.WriteCount(n.args.size(), "node arguments");
    for (const Arg& a : n.args) WriteArg(w, a);
    WriteTensorRefs(w, n.outputs, "node outputs");
    w.WriteU32Span(n.writes);
  }
  WriteTensorRefs(w, graph.outputs(), "graph outputs");
  return w.Release();
}

absl::StatusOr<Graph> Deserialize(std::string_view bytes) {
  return Deserialize(bytes, WireLimits());
}

absl::StatusOr<Graph> Deserialize(std::string_view bytes, const WireLimits& limits) {
  absl::StatusOr<Graph> graph = DecodeGraph(bytes, limits);
  if (!graph.ok()) return WithContext(graph.status(), "Deserialize(graph)");
  return graph;
}

}  // namespace genie::core
