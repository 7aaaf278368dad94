// File: genie/core/testing/graph_builder.h
// Small hand-built graphs for tests: buffers by kind, ops from the views they read and
// write, optional module scopes, and float payloads. Test-only.
//
//   core::testing::GraphBuilder b;
//   const BufferId x = b.Buffer(16, BufferKind::kHostInput);
//   const BufferId w = b.Buffer(64, BufferKind::kParameter, "fc.weight", /*handle=*/11);
//   const BufferId y = b.Buffer(16);
//   b.Op("aten::mm", {Mat(x, 2, 8), Mat(w, 8, 8)}, Mat(y, 2, 8), "fc");
//   b.graph().outputs().push_back(Mat(y, 2, 8));
#ifndef GENIE_CORE_TESTING_GRAPH_BUILDER_H_
#define GENIE_CORE_TESTING_GRAPH_BUILDER_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/types/span.h"
#include "genie/core/executor.h"
#include "genie/core/graph.h"

namespace genie::core::testing {

// A contiguous [n] or [rows, cols] view of buffer `b`.
inline TensorRef Vec(BufferId b, int64_t n, DType dtype = DType::kFloat32) {
  return TensorRef::Contiguous(b, dtype, {n});
}
inline TensorRef Mat(BufferId b, int64_t rows, int64_t cols, DType dtype = DType::kFloat32) {
  return TensorRef::Contiguous(b, dtype, {rows, cols});
}

class GraphBuilder {
 public:
  GraphBuilder() = default;
  // Builds into `g` (for fixtures that own their graph).
  explicit GraphBuilder(Graph* g) : g_(g) {}
  GraphBuilder(const GraphBuilder&) = delete;
  GraphBuilder& operator=(const GraphBuilder&) = delete;

  Graph& graph() { return *g_; }

  BufferId Buffer(int64_t numel, BufferKind kind = BufferKind::kIntermediate, std::string name = "",
                  uint64_t handle = 0, DType dtype = DType::kFloat32) {
    core::Buffer b{dtype, numel, kind, std::move(name)};
    b.handle = handle;
    return g_->AddBuffer(std::move(b));
  }

  // `name` reads `args` and writes `outputs` (and mutates `writes` in place); `scope` is its
  // module path (none if null).
  NodeId Op(const char* name, std::vector<Arg> args, std::vector<TensorRef> outputs,
            const char* scope = nullptr, std::vector<BufferId> writes = {}) {
    Node n;
    n.op = g_->InternOp(name);
    n.args = std::move(args);
    n.outputs = std::move(outputs);
    n.writes = std::move(writes);
    if (scope != nullptr) n.scope = g_->InternScope(scope);
    return g_->AddNode(std::move(n));
  }
  // The common case: tensor arguments only, one output.
  NodeId Op(const char* name, std::vector<TensorRef> inputs, TensorRef output,
            const char* scope = nullptr, std::vector<BufferId> writes = {}) {
    std::vector<Arg> args;
    for (TensorRef& t : inputs) args.push_back(Arg::Tensor(std::move(t)));
    return Op(name, std::move(args), std::vector<TensorRef>{std::move(output)}, scope, std::move(writes));
  }

 private:
  Graph own_;
  Graph* g_ = &own_;
};

// Payloads: the bytes of `values`, or of n floats scale * sin(0.37 i + 1) (distinct,
// deterministic), and a non-owning HostBytes of a string.
inline std::string FloatBytes(absl::Span<const float> values) {
  std::string bytes(values.size() * sizeof(float), '\0');
  if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}
inline std::string Floats(int n, float scale) {
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i) v[i] = scale * std::sin(0.37f * i + 1.0f);
  return FloatBytes(v);
}
inline HostBytes Borrow(const std::string& s) { return HostBytes{s.data(), s.size(), nullptr}; }

}  // namespace genie::core::testing

#endif  // GENIE_CORE_TESTING_GRAPH_BUILDER_H_
