// File: genie/core/graph.h
// Genie's graph IR: what capture records and every later stage reads. No libtorch here.
//
// A Graph is one captured segment of a program: the ATen ops recorded since the last
// materialization, in capture order. Ops read and write *views of buffers*: a buffer is
// one lazy storage (a weight, an input, an op's fresh output); a TensorRef is a view of
// it (dtype, sizes, strides, offset). View ops therefore need no node of their own: a
// view is just another TensorRef on the same buffer, and an executor rebuilds it with
// as_strided. In-place and out= ops list the buffers they write, so each write makes a
// new version of that buffer; ordering and liveness follow from reads and writes
// (an SSA over buffer versions: the functional graph underneath the trace).
//
//   Graph g;
//   BufferId x = g.AddBuffer(Buffer{DType::kFloat32, 16, BufferKind::kHostInput});
//   BufferId w = g.AddBuffer(Buffer{DType::kFloat32, 64, BufferKind::kParameter, "fc.weight"});
//   BufferId y = g.AddBuffer(Buffer{DType::kFloat32, 16});  // kIntermediate
//   Node n;
//   n.op = g.InternOp("aten::mm");
//   n.args = {Arg::Tensor(TensorRef::Contiguous(x, DType::kFloat32, {2, 8})),
//             Arg::Tensor(TensorRef::Contiguous(w, DType::kFloat32, {8, 8}))};
//   n.outputs = {TensorRef::Contiguous(y, DType::kFloat32, {2, 8})};
//   n.scope = g.InternScope("encoder.fc1");
//   NodeId mm = g.AddNode(std::move(n));  // sets g.buffer(y).producer = mm
//   g.outputs().push_back(g.node(mm).outputs[0]);
//   GENIE_RETURN_IF_ERROR(g.Validate());
//   std::cout << g.Dump();
//   // graph: 3 buffers, 1 nodes, 1 outputs
//   // b0: host_input f32[16]
//   // b1: parameter f32[64] "fc.weight"
//   // b2: intermediate f32[16] <- %0
//   // %0 = aten::mm(b0:f32[2,8], b1:f32[8,8]) -> b2:f32[2,8]  @encoder.fc1
//   // outputs: b2:f32[2,8]
//   std::string bytes = Serialize(g);          // deterministic
//   absl::StatusOr<Graph> back = Deserialize(bytes);  // validated
#ifndef GENIE_CORE_GRAPH_H_
#define GENIE_CORE_GRAPH_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "genie/core/wire.h"

namespace genie::core {

// Element types. The numeric codes are c10::ScalarType's, so the frontend converts with a
// cast (and checks that with static_asserts); core never includes libtorch.
enum class DType : uint8_t {
  kUInt8 = 0,
  kInt8 = 1,
  kInt16 = 2,
  kInt32 = 3,
  kInt64 = 4,
  kFloat16 = 5,
  kFloat32 = 6,
  kFloat64 = 7,
  kComplexHalf = 8,
  kComplexFloat = 9,
  kComplexDouble = 10,
  kBool = 11,
  kBFloat16 = 15,
};

bool IsKnownDType(uint8_t code);
size_t DTypeSize(DType dtype);
const char* DTypeName(DType dtype);  // "f32", "i64", "bf16", ...

using Dims = absl::InlinedVector<int64_t, 6>;
using BufferId = uint32_t;
using NodeId = uint32_t;
using OpId = uint32_t;
using ScopeId = uint32_t;  // 0 is the root scope ""

inline constexpr BufferId kNoBuffer = ~0u;
inline constexpr NodeId kNoNode = ~0u;

// Row-major strides for `sizes`.
Dims ContiguousStrides(absl::Span<const int64_t> sizes);

// A view of a buffer: what an op reads or produces.
struct TensorRef {
  BufferId buffer = kNoBuffer;
  DType dtype = DType::kFloat32;
  Dims sizes;    // e.g. [batch, heads, seq, dim]
  Dims strides;  // in elements
  int64_t storage_offset = 0;

  static TensorRef Contiguous(BufferId buffer, DType dtype, absl::Span<const int64_t> sizes);
  int64_t numel() const;
  bool is_contiguous() const;
  // Number of storage elements this view touches from element 0 (offset + extent).
  int64_t required_storage_numel() const;
  friend bool operator==(const TensorRef& a, const TensorRef& b);
  friend bool operator!=(const TensorRef& a, const TensorRef& b) { return !(a == b); }
};

enum class BufferKind : uint8_t {
  kIntermediate = 0,  // produced by a node of this graph
  kHostInput = 1,     // data uploaded by the client (tensor.to(remote), copy_ from CPU)
  kParameter = 2,     // a module parameter or registered buffer (named), uploaded once
  kResident = 3,      // produced by an earlier graph; already lives where it was computed
};
const char* BufferKindName(BufferKind kind);

struct Buffer {
  DType dtype = DType::kFloat32;
  int64_t numel = 0;  // storage elements
  BufferKind kind = BufferKind::kIntermediate;
  std::string name;           // dotted parameter name ("encoder.layer0.fc1.weight") or empty
  uint64_t handle = 0;        // session-wide identity of the storage (0: none)
  NodeId producer = kNoNode;  // set by Graph::AddNode for buffers a node creates
  BufferId id = kNoBuffer;    // set by Graph::AddBuffer

  int64_t nbytes() const { return numel * static_cast<int64_t>(DTypeSize(dtype)); }
};

// One argument of an op, as the op's schema sees it (a boxed IValue without libtorch).
enum class ArgKind : uint8_t {
  kNone = 0,
  kTensor = 1,              // tensors[0]
  kTensorList = 2,          // tensors
  kOptionalTensorList = 3,  // tensors, with present[k] == 0 meaning None at k
  kInt = 4,                 // i (also ScalarType, Layout, MemoryFormat codes, SymInt)
  kDouble = 5,              // d
  kBool = 6,                // i (0 or 1)
  kString = 7,              // s
  kIntList = 8,             // ints
  kDoubleList = 9,          // doubles
  kBoolList = 10,           // ints (0 or 1)
  kDevice = 11,             // ints = {device type code, index}; see kRemoteDeviceType
  kComplex = 12,            // doubles = {real, imag}
};
const char* ArgKindName(ArgKind kind);

// c10::DeviceType::PrivateUse1: a device argument that names remote_accelerator. An
// executor replaces it with the device it runs on.
inline constexpr int64_t kRemoteDeviceType = 20;

struct Arg {
  ArgKind kind = ArgKind::kNone;
  int64_t i = 0;
  double d = 0;
  std::string s;
  std::vector<int64_t> ints;
  std::vector<double> doubles;
  // One inline view: a kTensor argument (the common case) allocates nothing.
  absl::InlinedVector<TensorRef, 1> tensors;
  std::vector<uint8_t> present;

  static Arg None() { return Arg{}; }
  static Arg Tensor(TensorRef t);
  static Arg TensorList(std::vector<TensorRef> ts);
  static Arg OptionalTensorList(std::vector<TensorRef> ts, std::vector<uint8_t> present);
  static Arg Int(int64_t v);
  static Arg Double(double v);
  static Arg Bool(bool v);
  static Arg String(std::string v);
  static Arg IntList(std::vector<int64_t> v);
  static Arg DoubleList(std::vector<double> v);
  static Arg BoolList(std::vector<int64_t> v);
  static Arg Device(int64_t type, int64_t index);
  static Arg Complex(double re, double im);

  // Compares what `kind` uses (a kInt ignores `doubles`); doubles compare bit for bit,
  // so NaN == NaN and 0.0 != -0.0, as Serialize round-trips them.
  friend bool operator==(const Arg& a, const Arg& b);
  friend bool operator!=(const Arg& a, const Arg& b) { return !(a == b); }
};

struct Node {
  OpId op = 0;                     // Graph::OpName(op) == "aten::add.Tensor"
  std::vector<Arg> args;           // in schema order
  std::vector<TensorRef> outputs;  // flattened tensor outputs (lists expanded)
  std::vector<BufferId> writes;    // buffers mutated in place (self of add_, out= targets)
  ScopeId scope = 0;               // module path / user scope the op was captured in
  NodeId id = kNoNode;             // set by Graph::AddNode

  // Every TensorRef the node reads, in argument order.
  std::vector<const TensorRef*> Inputs() const;
  // Calls `f(const TensorRef&)` for each of Inputs(), in the same order, without
  // building a vector (for hot loops).
  template <typename F>
  void ForEachInput(F&& f) const {
    for (const Arg& a : args) {
      switch (a.kind) {
        case ArgKind::kTensor:
          if (!a.tensors.empty()) f(a.tensors[0]);
          break;
        case ArgKind::kTensorList:
          for (const TensorRef& t : a.tensors) f(t);
          break;
        case ArgKind::kOptionalTensorList:
          for (size_t k = 0; k < a.tensors.size(); ++k) {
            if (k < a.present.size() && a.present[k] != 0) f(a.tensors[k]);
          }
          break;
        default:
          break;
      }
    }
  }
};

class Graph {
 public:
  Graph();

  OpId InternOp(std::string_view qualified_name);  // "aten::add.Tensor"
  const std::string& OpName(OpId op) const { return names_->ops[op]; }
  size_t num_ops() const { return names_->ops.size(); }

  ScopeId InternScope(std::string_view path);  // "" is 0; "vision.blocks.0.attn"
  const std::string& ScopeName(ScopeId scope) const { return names_->scopes[scope]; }
  size_t num_scopes() const { return names_->scopes.size(); }

  BufferId AddBuffer(Buffer buffer);  // assigns buffer.id
  // Capacity hint (capture expects about as many nodes and buffers as the last graph).
  void Reserve(size_t nodes, size_t buffers) {
    MutableNodes().reserve(nodes);
    buffers_.reserve(buffers);
  }
  // The first `num_nodes` nodes and `num_buffers` buffers of this graph (a capture that
  // replayed a recorded step up to where it diverged), with the interned names up to
  // the largest id those nodes use: for a graph interned in first-use order, the same
  // table a capture of the prefix alone makes. A kept buffer whose producer is not kept
  // has none in the prefix.
  Graph Prefix(size_t num_nodes, size_t num_buffers) const;
  // Appends a node; sets `producer` of each output buffer that has none yet, except
  // buffers the node also takes as a tensor argument (the self an in-place op returns, an
  // out= target): a node produces the buffers it creates, not the ones it was given.
  NodeId AddNode(Node node);

  const std::vector<Node>& nodes() const { return *nodes_; }
  const std::vector<Buffer>& buffers() const { return buffers_; }
  const Node& node(NodeId id) const { return (*nodes_)[id]; }
  const Buffer& buffer(BufferId id) const { return buffers_[id]; }
  Buffer& mutable_buffer(BufferId id) { return buffers_[id]; }

  // The views the client wants back when this graph runs.
  std::vector<TensorRef>& outputs() { return outputs_; }
  const std::vector<TensorRef>& outputs() const { return outputs_; }

  // Ids in range, outputs of each node inside their buffer, dtypes known, writes name
  // buffers the node reads. What a deserialized or hand-built graph must satisfy.
  // Also: node/buffer ids equal their index, scope 0 is "", argument payloads match
  // their kind, views have non-negative sizes/strides/offset and fit their buffer (in
  // bytes, so a dtype-reinterpreting view is allowed), a buffer's producer outputs it,
  // every kIntermediate buffer has a producer, and no node reads a buffer before the
  // node that produces it. The error names the node/buffer and what is wrong.
  absl::Status Validate() const;

  // A stable, human-readable listing: a header line, one line per buffer and per node,
  // and the outputs, e.g.
  //   b2: intermediate f32[16] <- %3
  //   %3 = aten::mm(b1:f32[2,8], b0:f32[8,8]) -> b2:f32[2,8]  @encoder.fc1
  // Buffers are bN, nodes %N. A view shows {strides=[..]} when not contiguous and
  // {offset=N} when it does not start at element 0; in-place writes show as
  // `writes(bN)`; scalars print as literals (ints 3, doubles 3.0, true, "str", None).
  // Out-of-range ids print as `?` rather than crash (Validate says what is wrong).
  std::string Dump() const;
  // Same, with `node_suffix(id, &line)` appending to each node line (annotations use it).
  std::string Dump(absl::FunctionRef<void(NodeId, std::string*)> node_suffix) const;
  // One line of the listing, without its newline.
  std::string DumpNode(NodeId id) const;
  std::string DumpBuffer(BufferId id) const;

  // Structural identity: ops, arguments, views, buffer kinds/dtypes/sizes and scopes.
  // Not buffer handles or data: two decode steps of the same shape fingerprint equal.
  // Included: op and scope *names* (not their interned ids), every argument, every
  // view, writes, outputs, buffer kind/dtype/numel/producer, and the name of kParameter
  // buffers (which weights a graph uses decides placement and residency, so layer 0 and
  // layer 1 of a model are different graphs). Excluded: handles, and names of other
  // buffers. Built on absl::Hash, which is seeded per process: use it as an in-process
  // cache key, never store it or send it to another process.
  uint64_t Fingerprint() const;

 private:
  // Copies of a graph share their nodes and interned names until one of them changes
  // them (copy on write), so copying a graph costs its buffers and outputs only: a
  // replayed decode step reuses the last step's nodes with new buffer handles. A shared
  // part is never written, so copies may be read from several threads.
  struct Names {
    std::vector<std::string> ops;
    absl::flat_hash_map<std::string, OpId> op_index;
    std::vector<std::string> scopes;
    absl::flat_hash_map<std::string, ScopeId> scope_index;
  };
  Names& MutableNames();
  std::vector<Node>& MutableNodes();

  std::shared_ptr<Names> names_;
  std::vector<Buffer> buffers_;
  std::shared_ptr<std::vector<Node>> nodes_;
  std::vector<TensorRef> outputs_;
};

// One ordering constraint between two nodes that touch the same buffer.
enum class DependencyKind : uint8_t {
  kReadAfterWrite = 0,   // `to` reads what `from` wrote (includes producer -> consumer)
  kWriteAfterRead = 1,   // `to` overwrites what `from` read
  kWriteAfterWrite = 2,  // `to` overwrites, without reading it, what `from` wrote
};
const char* DependencyKindName(DependencyKind kind);  // "RAW", "WAR", "WAW"

struct Dependency {
  NodeId from = kNoNode;
  NodeId to = kNoNode;
  BufferId buffer = kNoBuffer;
  DependencyKind kind = DependencyKind::kReadAfterWrite;
  friend bool operator==(const Dependency& a, const Dependency& b) {
    return a.from == b.from && a.to == b.to && a.buffer == b.buffer && a.kind == b.kind;
  }
};

// Every buffer dependency, per buffer in access order. A node reads the buffers of its
// Inputs() and writes its `writes` and the buffers of its `outputs`; a buffer's producer
// accesses it first even if it was appended later. Sorted by (to, from, buffer, kind).
std::vector<Dependency> Dependencies(const Graph& graph);

// Nodes in an order that respects every dependency: read-after-write, write-after-read
// and write-after-write on buffers, and producer-before-consumer. Capture order is one
// such order; this computes it from the edges (stable: ties keep capture order).
std::vector<NodeId> TopologicalOrder(const Graph& graph);

// The nodes needed to produce `graph.outputs()` and the final contents of `keep`
// (buffers that outlive the graph: live storages, resident KV caches). Everything else
// is dead. Returns the live node ids in capture order.
//
// Walking back from the end: a node is live if it writes (produces, or mutates in place)
// a buffer whose current version is still needed: one in outputs() or `keep`, or one a
// later live node reads. A live node needs every buffer it reads, and the previous
// version of every buffer it mutates (a partial in-place write keeps the rest); only a
// buffer's producer starts it from nothing. So a write after the last live read of a
// buffer that is not kept is dead, and so is a node with no outputs and no writes.
std::vector<NodeId> LiveNodes(const Graph& graph, absl::Span<const BufferId> keep);

// A copy of `graph` with only `LiveNodes(graph, keep)` and the buffers they touch,
// renumbered densely. `old_to_new` (optional) receives the buffer id mapping
// (kNoBuffer for dropped buffers).
Graph EliminateDeadCode(const Graph& graph, absl::Span<const BufferId> keep,
                        std::vector<BufferId>* old_to_new = nullptr);

// Binary form (versioned, little-endian, length-checked). Deserialize refuses truncated,
// oversized or inconsistent input with a clear error; it never crashes.
// Layout: "GNIEGRPH", u32 version (kGraphWireVersion), then counted sequences of op
// names, scope names, buffers, nodes and output views (see graph.cc). Deserialize checks
// every count against `limits`, every enum code and every id, then runs Validate.
inline constexpr uint32_t kGraphWireVersion = 1;
std::string Serialize(const Graph& graph);
absl::StatusOr<Graph> Deserialize(std::string_view bytes);
absl::StatusOr<Graph> Deserialize(std::string_view bytes, const WireLimits& limits);

}  // namespace genie::core

#endif  // GENIE_CORE_GRAPH_H_
