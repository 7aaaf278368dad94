// File: tests/gpu/two_chains.h
// A hand-built graph with two independent branches, for the stream tests and benchmarks:
// x -> mm(., w) -> ... (chain A, `depth` products) and x -> mm(w, .) -> ... (chain B),
// joined by add. Inputs x and w are host uploads of [n, n] fp32.
//
//   testing_gpu::TwoChains chains(/*n=*/256, /*depth=*/8);
//   req.graph = &chains.graph;  // upload chains.x and chains.w
#ifndef GENIE_TESTS_GPU_TWO_CHAINS_H_
#define GENIE_TESTS_GPU_TWO_CHAINS_H_

#include <cstdint>
#include <utility>

#include "genie/core/graph.h"

namespace genie::testing_gpu {

struct TwoChains {
  core::Graph graph;
  core::BufferId x = core::kNoBuffer;
  core::BufferId w = core::kNoBuffer;
  int64_t n = 0;
  int depth = 0;

  TwoChains(int64_t n_in, int depth_in) : n(n_in), depth(depth_in) {
    using core::Arg;
    using core::DType;
    using core::TensorRef;
    x = graph.AddBuffer(core::Buffer{DType::kFloat32, n * n, core::BufferKind::kHostInput});
    w = graph.AddBuffer(core::Buffer{DType::kFloat32, n * n, core::BufferKind::kHostInput});
    auto mm = [&](core::BufferId a, core::BufferId b) {
      core::BufferId out = graph.AddBuffer(core::Buffer{DType::kFloat32, n * n});
      core::Node node;
      node.op = graph.InternOp("aten::mm");
      node.args = {Arg::Tensor(TensorRef::Contiguous(a, DType::kFloat32, {n, n})),
                   Arg::Tensor(TensorRef::Contiguous(b, DType::kFloat32, {n, n}))};
      node.outputs = {TensorRef::Contiguous(out, DType::kFloat32, {n, n})};
      graph.AddNode(std::move(node));
      return out;
    };
    core::BufferId a = x, b = x;
    for (int i = 0; i < depth; ++i) {
      a = mm(a, w);
      b = mm(w, b);
    }
    core::BufferId y = graph.AddBuffer(core::Buffer{DType::kFloat32, n * n});
    core::Node add;
    add.op = graph.InternOp("aten::add.Tensor");
    add.args = {Arg::Tensor(TensorRef::Contiguous(a, DType::kFloat32, {n, n})),
                Arg::Tensor(TensorRef::Contiguous(b, DType::kFloat32, {n, n})), Arg::Double(1.0)};
    add.outputs = {TensorRef::Contiguous(y, DType::kFloat32, {n, n})};
    graph.AddNode(std::move(add));
    graph.outputs().push_back(TensorRef::Contiguous(y, DType::kFloat32, {n, n}));
  }
};

}  // namespace genie::testing_gpu

#endif  // GENIE_TESTS_GPU_TWO_CHAINS_H_
