// File: genie/scheduler/placement_test.cc
// Placement on hand-built graphs with hand-built semantics: modality anchors, fusion by
// input bytes, residency that sticks, KV caches that stay with their attention, capacity,
// and the parts and node-to-node transfers the split makes.
#include "genie/scheduler/placement.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "genie/core/testing/graph_builder.h"

namespace genie::scheduler {
namespace {

using core::BufferId;
using core::BufferKind;
using core::DType;
using core::TensorRef;
using semantic::ModalityKind;

using core::testing::Vec;

// vision: v = mm(img, vision.w); language: l = mm(txt, language.w); fusion: f = add(v', l')
// where v' and l' are views of the first `fused` elements.
struct TwoTowers {
  core::Graph g;
  semantic::GraphSemantics s;
  BufferId img, vw, txt, lw, v, l, f;

  TwoTowers(int64_t vision_numel, int64_t language_numel, bool language_resident = false,
            uint64_t language_handle = 0) {
    img = g.AddBuffer({DType::kFloat32, vision_numel, BufferKind::kHostInput, "", 11});
    vw = g.AddBuffer({DType::kFloat32, 4, BufferKind::kParameter, "vision.w", 12});
    txt = g.AddBuffer({DType::kFloat32, language_numel, BufferKind::kHostInput, "", 13});
    lw = g.AddBuffer({DType::kFloat32, 4,
                      language_resident ? BufferKind::kResident : BufferKind::kParameter,
                      "language.w", language_handle ? language_handle : 14});
    v = g.AddBuffer({DType::kFloat32, vision_numel});
    l = g.AddBuffer({DType::kFloat32, language_numel});
    f = g.AddBuffer({DType::kFloat32, 2});
    Op("aten::mul.Tensor", {Vec(img, vision_numel), Vec(vw, 1)}, Vec(v, vision_numel),
       "vision.enc", ModalityKind::kVision);
    Op("aten::mul.Tensor", {Vec(txt, language_numel), Vec(lw, 1)}, Vec(l, language_numel),
       "language.enc", ModalityKind::kLanguage);
    Op("aten::add.Tensor", {Vec(v, 2), Vec(l, 2)}, Vec(f, 2), "fusion.head", ModalityKind::kFusion);
    g.outputs().push_back(Vec(f, 2));
  }

  void Op(const char* name, std::vector<TensorRef> in, TensorRef out, const char* module,
          ModalityKind m) {
    core::testing::GraphBuilder(&g).Op(name, std::move(in), out, module);
    s.module.push_back(module);
    s.modality.push_back(m);
  }
};

TEST(PlacementTest, TopLevelModule) {
  EXPECT_EQ(TopLevelModule("vision.blocks.0.attn"), "vision");
  EXPECT_EQ(TopLevelModule("head"), "head");
  EXPECT_EQ(TopLevelModule(""), "");
}

TEST(PlacementTest, OneNodeIsOnePartWithNoTransfers) {
  TwoTowers t(8, 16);
  ASSERT_TRUE(t.g.Validate().ok());
  std::vector<BufferId> keep = {t.vw, t.lw};
  PlacementInput in{&t.g, &t.s, keep, {}, 1};
  absl::StatusOr<Placement> p = Place(in);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->parts.size(), 1u);
  EXPECT_TRUE(p->transfers.empty());
  EXPECT_EQ(p->parts[0].graph.nodes().size(), 3u);
  EXPECT_EQ(p->parts[0].uploads.size(), 4u);
  EXPECT_EQ(p->parts[0].keep.size(), 2u);
  EXPECT_EQ(p->parts[0].graph.outputs().size(), 1u);
  EXPECT_TRUE(p->parts[0].release.empty());
}

TEST(PlacementTest, ModalitiesOnTheirNodesFusionWhereTheLargerInputIs) {
  TwoTowers t(8, 16);  // language output larger: fusion joins node 1
  std::vector<BufferId> keep = {t.vw, t.lw};
  PlacementInput in{&t.g, &t.s, keep, {}, 2};
  absl::StatusOr<Placement> p = Place(in);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->node_of_op, (std::vector<int>{0, 1, 1}));
  // Language needs nothing from node 0: it is a part of its own, so it runs while vision
  // runs; fusion, which reads vision's output, is the next part on node 1.
  ASSERT_EQ(p->parts.size(), 3u);
  EXPECT_EQ(p->parts[0].node, 0);
  EXPECT_EQ(p->parts[1].node, 1);
  EXPECT_EQ(p->parts[2].node, 1);
  EXPECT_EQ(p->parts[1].ops, std::vector<core::NodeId>{1});
  EXPECT_EQ(p->parts[2].ops, std::vector<core::NodeId>{2});
  for (const Part& part : p->parts) EXPECT_TRUE(part.graph.Validate().ok()) << part.graph.Dump();
  // v crosses from node 0 to node 1 under a temporary handle, node to node.
  ASSERT_EQ(p->transfers.size(), 1u);
  const Transfer& x = p->transfers[0];
  EXPECT_EQ(x.buffer, t.v);
  EXPECT_EQ(x.from, 0);
  EXPECT_EQ(x.to, 1);
  EXPECT_EQ(x.before_part, 2u);
  EXPECT_EQ(x.nbytes, 8 * 4);
  EXPECT_GE(x.source_handle, kTemporaryHandleBase);
  EXPECT_TRUE(x.release_source);
  // Part 0 keeps v under the source handle; part 1 reads it resident and then forgets it.
  const Part& p0 = p->parts[0];
  bool kept_v = false;
  for (BufferId b : p0.keep) kept_v |= p0.original[b] == t.v && p0.graph.buffer(b).handle == x.source_handle;
  EXPECT_TRUE(kept_v);
  const Part& p1 = p->parts[2];
  bool reads_v = false;
  for (const core::Buffer& b : p1.graph.buffers()) {
    if (p1.original[b.id] == t.v) {
      reads_v = true;
      EXPECT_EQ(b.kind, BufferKind::kResident);
      EXPECT_EQ(b.handle, x.target_handle);
    }
  }
  EXPECT_TRUE(reads_v);
  // Fusion forgets v and the language output the part before it left resident.
  ASSERT_EQ(p1.release.size(), 2u);
  EXPECT_NE(std::find(p1.release.begin(), p1.release.end(), x.target_handle), p1.release.end());
  EXPECT_EQ(p->parts[1].keep.size(), 2u);  // language.w and the language output
  // Outputs come from node 1; weights are kept where they are read.
  EXPECT_EQ(p->output_part, std::vector<size_t>{2});
  EXPECT_EQ(p->output_index, std::vector<size_t>{0});
  ASSERT_EQ(p->kept.size(), 2u);
  EXPECT_EQ(p->kept[0], (std::pair<uint64_t, int>{12, 0}));
  EXPECT_EQ(p->kept[1], (std::pair<uint64_t, int>{14, 1}));
  EXPECT_EQ(p0.uploads.size(), 2u);
  EXPECT_EQ(p->parts[1].uploads.size(), 2u);  // language input and weight
  EXPECT_TRUE(p1.uploads.empty());
  const std::string report = p->Report(t.g, t.s);
  EXPECT_NE(report.find("module vision (vision): node 0 1 ops"), std::string::npos) << report;
  EXPECT_NE(report.find("module fusion (fusion): node 1 1 ops"), std::string::npos) << report;
  EXPECT_NE(report.find("transfer b4 node 0 -> node 1"), std::string::npos) << report;
}

TEST(PlacementTest, FusionFollowsTheLargerInputToNodeZero) {
  TwoTowers t(32, 4);
  PlacementInput in{&t.g, &t.s, {}, {}, 2};
  absl::StatusOr<Placement> p = Place(in);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->node_of_op, (std::vector<int>{0, 1, 0}));
  ASSERT_EQ(p->parts.size(), 3u);
  ASSERT_EQ(p->transfers.size(), 1u);
  EXPECT_EQ(p->transfers[0].buffer, t.l);
  EXPECT_EQ(p->transfers[0].from, 1);
  EXPECT_EQ(p->transfers[0].to, 0);
  // v stays on node 0 between parts 0 and 2 under a temporary handle.
  EXPECT_EQ(p->parts[0].keep.size(), 1u);
  EXPECT_EQ(p->parts[2].release.size(), 2u);
  for (const Part& part : p->parts) EXPECT_TRUE(part.graph.Validate().ok()) << part.graph.Dump();
}

TEST(PlacementTest, ResidencySticks) {
  TwoTowers t(8, 16, /*language_resident=*/true, /*language_handle=*/99);
  absl::flat_hash_map<uint64_t, int> home = {{99, 0}};
  PlacementInput in{&t.g, &t.s, {}, {}, 2};
  in.home = &home;
  absl::StatusOr<Placement> p = Place(in);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->node_of_op, (std::vector<int>{0, 0, 0}));
  EXPECT_EQ(p->parts.size(), 1u);
  EXPECT_TRUE(p->transfers.empty());
}

TEST(PlacementTest, ResidentWithoutHomeIsRefused) {
  TwoTowers t(8, 16, /*language_resident=*/true, /*language_handle=*/99);
  PlacementInput in{&t.g, &t.s, {}, {}, 2};
  absl::StatusOr<Placement> p = Place(in);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(p.status().message().find("no node is known"), std::string::npos);
}

TEST(PlacementTest, CapacityMovesAModuleToTheNextNode) {
  TwoTowers t(8, 16);
  PlacementInput in{&t.g, &t.s, {}, {}, 2};
  in.capacity_bytes = {8, 0};  // vision.w is 16 bytes: does not fit on node 0
  absl::StatusOr<Placement> p = Place(in);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->node_of_op, (std::vector<int>{1, 1, 1}));
}

TEST(PlacementTest, KvCacheStaysWithItsAttention) {
  // Vision encoder on node 0; a decoder (language) whose KV cache lives on node 0 too,
  // written by a module-less op and read by attention: all of it runs on node 0.
  core::Graph g;
  semantic::GraphSemantics s;
  const BufferId x = g.AddBuffer({DType::kFloat32, 4, BufferKind::kHostInput, "", 1});
  const BufferId kv = g.AddBuffer({DType::kFloat32, 8, BufferKind::kResident, "", 50});
  const BufferId y = g.AddBuffer({DType::kFloat32, 4});
  auto op = [&](const char* name, std::vector<core::Arg> args, std::vector<TensorRef> outs,
                std::vector<BufferId> writes, const char* module, ModalityKind m) {
    core::testing::GraphBuilder(&g).Op(name, std::move(args), std::move(outs), module, std::move(writes));
    s.module.push_back(module);
    s.modality.push_back(m);
  };
  op("aten::copy_", {core::Arg::Tensor(Vec(kv, 4)), core::Arg::Tensor(Vec(x, 4))}, {Vec(kv, 4)},
     {kv}, "", ModalityKind::kUnknown);
  op("aten::mul.Tensor", {core::Arg::Tensor(Vec(x, 4)), core::Arg::Tensor(Vec(kv, 4))}, {Vec(y, 4)},
     {}, "decoder.attn", ModalityKind::kLanguage);
  g.outputs().push_back(Vec(y, 4));
  ASSERT_TRUE(g.Validate().ok()) << g.Validate();
  s.kv_cache = {kv};
  absl::flat_hash_map<uint64_t, int> home = {{50, 0}};
  std::vector<BufferId> keep = {kv};
  PlacementInput in{&g, &s, keep, {}, 2};
  in.home = &home;
  absl::StatusOr<Placement> p = Place(in);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->node_of_op, (std::vector<int>{0, 0}));
  ASSERT_EQ(p->parts.size(), 1u);
  EXPECT_EQ(p->parts[0].kv_cache.size(), 1u);
  EXPECT_EQ(p->parts[0].keep.size(), 1u);
  EXPECT_EQ(p->parts[0].graph.buffer(p->parts[0].keep[0]).handle, 50u);
}

TEST(PlacementTest, ReleaseOnAnIdleNodeIsDeferred) {
  TwoTowers t(8, 16);
  absl::flat_hash_map<uint64_t, int> home = {{77, 1}, {78, 0}};
  std::vector<uint64_t> release = {77, 78, 1234};
  PlacementInput in{&t.g, &t.s, {}, release, 2};
  in.home = &home;
  // Everything on node 0: node 1 has no part, so 77 waits for node 1's next run.
  in.capacity_bytes = {0, 1};
  t.s.modality[1] = ModalityKind::kVision;
  absl::StatusOr<Placement> p = Place(in);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->parts.size(), 1u);
  EXPECT_EQ(p->parts[0].release, std::vector<uint64_t>{78});
  EXPECT_EQ(p->deferred_release, (std::vector<std::pair<uint64_t, int>>{{77, 1}}));
}

}  // namespace
}  // namespace genie::scheduler
