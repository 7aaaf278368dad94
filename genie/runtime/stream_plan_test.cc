// File: genie/runtime/stream_plan_test.cc
#include "genie/runtime/stream_plan.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace genie::runtime {
namespace {

using core::Arg;
using core::BufferId;
using core::DType;
using core::Graph;
using core::NodeId;
using core::TensorRef;

// mm(a, b) -> fresh buffer; returns the node id and sets *out.
NodeId Mm(Graph& g, BufferId a, BufferId b, BufferId* out) {
  *out = g.AddBuffer(core::Buffer{DType::kFloat32, 16});
  core::Node n;
  n.op = g.InternOp("aten::mm");
  n.args = {Arg::Tensor(TensorRef::Contiguous(a, DType::kFloat32, {4, 4})),
            Arg::Tensor(TensorRef::Contiguous(b, DType::kFloat32, {4, 4}))};
  n.outputs = {TensorRef::Contiguous(*out, DType::kFloat32, {4, 4})};
  return g.AddNode(std::move(n));
}

// Two chains x -> a1 -> a2 and x -> b1 -> b2, then add(a2, b2).
struct TwoBranches {
  Graph g;
  NodeId a1, a2, b1, b2, join;
  TwoBranches() {
    BufferId x = g.AddBuffer(core::Buffer{DType::kFloat32, 16, core::BufferKind::kHostInput});
    BufferId w = g.AddBuffer(core::Buffer{DType::kFloat32, 16, core::BufferKind::kParameter, "w"});
    BufferId ya1, ya2, yb1, yb2, y;
    a1 = Mm(g, x, w, &ya1);
    b1 = Mm(g, x, w, &yb1);
    a2 = Mm(g, ya1, w, &ya2);
    b2 = Mm(g, yb1, w, &yb2);
    join = Mm(g, ya2, yb2, &y);
    g.outputs().push_back(TensorRef::Contiguous(y, DType::kFloat32, {4, 4}));
  }
};

TEST(StreamPlanTest, OneLaneHasNoEvents) {
  TwoBranches t;
  StreamPlan p = PlanStreams(t.g, 1);
  EXPECT_EQ(p.num_lanes, 1);
  EXPECT_EQ(p.num_events, 0u);
  EXPECT_EQ(p.order.size(), 5u);
  for (uint8_t l : p.lane) EXPECT_EQ(l, 0);
}

TEST(StreamPlanTest, IndependentChainsGetTheirOwnLanesAndJoinWithOneWait) {
  TwoBranches t;
  StreamPlan p = PlanStreams(t.g, 4);
  EXPECT_EQ(p.num_lanes, 2);
  EXPECT_EQ(p.lane[t.a1], p.lane[t.a2]);
  EXPECT_EQ(p.lane[t.b1], p.lane[t.b2]);
  EXPECT_NE(p.lane[t.a1], p.lane[t.b1]);
  // The join continues one chain and waits for the other's last node only.
  ASSERT_EQ(p.waits[t.join].size(), 1u);
  const NodeId other = p.lane[t.join] == p.lane[t.a2] ? t.b2 : t.a2;
  EXPECT_EQ(p.waits[t.join][0], p.record_after[other]);
  EXPECT_EQ(p.cross_lane_waits, 1);
  EXPECT_EQ(p.num_events, 1u);
}

TEST(StreamPlanTest, EveryDependencyIsOrderedBySameLaneOrAWait) {
  TwoBranches t;
  StreamPlan p = PlanStreams(t.g, 3);
  std::vector<size_t> pos(p.order.size());
  for (size_t i = 0; i < p.order.size(); ++i) pos[p.order[i]] = i;
  for (const core::Dependency& d : core::Dependencies(t.g)) {
    EXPECT_LT(pos[d.from], pos[d.to]);
    if (p.lane[d.from] == p.lane[d.to]) continue;
    // A cross-lane edge: `to` waits for `from` or for a later node of from's lane.
    bool covered = false;
    for (uint32_t e : p.waits[d.to]) {
      for (NodeId m = 0; m < p.lane.size(); ++m) {
        if (p.record_after[m] == e && p.lane[m] == p.lane[d.from] && pos[m] >= pos[d.from]) covered = true;
      }
    }
    EXPECT_TRUE(covered) << d.from << " -> " << d.to;
  }
}

TEST(StreamPlanTest, AChainStaysOnOneLane) {
  Graph g;
  BufferId x = g.AddBuffer(core::Buffer{DType::kFloat32, 16, core::BufferKind::kHostInput});
  BufferId cur = x;
  for (int i = 0; i < 6; ++i) Mm(g, cur, x, &cur);
  StreamPlan p = PlanStreams(g, 8);
  EXPECT_EQ(p.num_lanes, 1);
  EXPECT_EQ(p.cross_lane_waits, 0);
}

}  // namespace
}  // namespace genie::runtime
