// File: genie/runtime/cpu_lanes_test.cc
// Branch planning, the lane threads, and the CPU interpreter running branches on them.
#include "genie/runtime/cpu_lanes.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "genie/core/cpu_cores.h"
#include "genie/core/executor.h"
#include "genie/core/graph.h"
#include "genie/core/testing/graph_builder.h"
#include "genie/runtime/interpreter.h"
#include "genie/runtime/intra_op_threads.h"

namespace genie::runtime {
namespace {

using core::Arg;
using core::Buffer;
using core::BufferId;
using core::BufferKind;
using core::DType;
using core::NodeId;
using core::TensorRef;
using core::testing::Floats;

TensorRef T(BufferId b) { return TensorRef::Contiguous(b, DType::kFloat32, {4, 4}); }

// Two branches joined at the end: x -> `x_ops` unary ops; y and t(w) -> mm, then
// `y_ops - 1` unary ops; out = x_branch + y_branch. All [4, 4] floats.
struct TwoBranches {
  core::Graph g;
  BufferId x, y, w, out;
  NodeId transpose = core::kNoNode, mm = core::kNoNode, join = core::kNoNode;
  std::vector<NodeId> x_nodes, y_nodes;

  BufferId Unary(const char* op, BufferId in, std::vector<NodeId>* nodes) {
    core::testing::GraphBuilder b(&g);
    const BufferId o = b.Buffer(16);
    nodes->push_back(b.Op(op, {T(in)}, T(o)));
    return o;
  }

  // bad_mm: the mm reads y as [2, 8], which ATen refuses (mm of [2, 8] by [4, 4]).
  TwoBranches(int x_ops, int y_ops, bool second_input = true, bool bad_mm = false) {
    x = g.AddBuffer(Buffer{DType::kFloat32, 16, BufferKind::kHostInput});
    y = second_input ? g.AddBuffer(Buffer{DType::kFloat32, 16, BufferKind::kHostInput})
                     : g.AddBuffer(Buffer{DType::kFloat32, 16, BufferKind::kParameter, "y"});
    w = g.AddBuffer(Buffer{DType::kFloat32, 16, BufferKind::kParameter, "w"});
    const char* kOps[] = {"aten::sin", "aten::tanh", "aten::cos"};
    BufferId a = x;
    for (int k = 0; k < x_ops; ++k) a = Unary(kOps[k % 3], a, &x_nodes);
    // Interleave the capture order: the y branch starts with a weight-only op.
    std::vector<NodeId> none;
    const BufferId wt = Unary("aten::t", w, &none);
    transpose = none[0];
    core::testing::GraphBuilder gb(&g);
    const BufferId m = gb.Buffer(16);
    mm = gb.Op("aten::mm", {bad_mm ? core::testing::Mat(y, 2, 8) : T(y), T(wt)}, T(m));
    y_nodes.push_back(mm);
    BufferId b = m;
    for (int k = 1; k < y_ops; ++k) b = Unary(kOps[(k + 1) % 3], b, &y_nodes);
    out = gb.Buffer(16);
    join = gb.Op("aten::add.Tensor", {Arg::Tensor(T(a)), Arg::Tensor(T(b)), Arg::Int(1)}, {T(out)});
    g.outputs().push_back(T(out));
  }
};

TEST(PlanBranchesTest, OneLanePerInputBranchJoinsOnLaneZero) {
  TwoBranches b(/*x_ops=*/5, /*y_ops=*/4);
  const StreamPlan plan = PlanBranches(b.g, /*max_lanes=*/2, /*min_branch_nodes=*/3);
  ASSERT_EQ(plan.num_lanes, 2);
  // One branch (either: x has 5 nodes, y 5 with the transpose) shares lane 0 with the join;
  // the other has lane 1; the weight-only transpose goes with the mm that reads it.
  const int x_lane = plan.lane[b.x_nodes[0]];
  const int y_lane = plan.lane[b.mm];
  EXPECT_NE(x_lane, y_lane);
  for (NodeId n : b.x_nodes) EXPECT_EQ(plan.lane[n], x_lane);
  for (NodeId n : b.y_nodes) EXPECT_EQ(plan.lane[n], y_lane);
  EXPECT_EQ(plan.lane[b.transpose], y_lane);
  EXPECT_EQ(plan.lane[b.join], 0);
  // The join waits once, for the last node of the other lane; nothing else waits.
  const NodeId other_last = x_lane == 0 ? b.y_nodes.back() : b.x_nodes.back();
  ASSERT_EQ(plan.waits[b.join].size(), 1u);
  EXPECT_EQ(plan.waits[b.join][0], plan.record_after[other_last]);
  EXPECT_EQ(plan.cross_lane_waits, 1);
  EXPECT_EQ(plan.num_events, 1u);
}

TEST(PlanBranchesTest, OneLaneWithoutTwoLargeBranches) {
  // Only one uploaded input: everything depends on it or on nothing.
  TwoBranches one_input(5, 5, /*second_input=*/false);
  EXPECT_EQ(PlanBranches(one_input.g, 2, 3).num_lanes, 1);
  // Two inputs, but one branch below the minimum.
  TwoBranches small(6, 1);  // y's branch: the transpose and the mm
  EXPECT_EQ(PlanBranches(small.g, 2, 3).num_lanes, 1);
  // max_lanes 1.
  TwoBranches big(6, 6);
  EXPECT_EQ(PlanBranches(big.g, 1, 3).num_lanes, 1);
  EXPECT_EQ(PlanBranches(big.g, 2, 3).num_lanes, 2);
}

TEST(CpuLanesTest, RunsEachLaneOnItsThreadAfterWhatItWaitsFor) {
  TwoBranches b(6, 6);
  const StreamPlan plan = PlanBranches(b.g, 2, 3);
  ASSERT_EQ(plan.num_lanes, 2);
  CpuLanes lanes(1);
  for (int round = 0; round < 3; ++round) {  // the workers are reused across runs
    std::vector<std::thread::id> ran_on(b.g.nodes().size());
    std::vector<int> finished_at(b.g.nodes().size(), -1);
    std::atomic<int> clock{0};
    auto run = [&](NodeId n, int lane) -> absl::Status {
      if (lane != plan.lane[n]) return absl::InternalError("node run on another lane");
      ran_on[n] = std::this_thread::get_id();
      finished_at[n] = clock.fetch_add(1);
      return absl::OkStatus();
    };
    ASSERT_TRUE(lanes.Run(plan, run).ok());
    for (size_t n = 0; n < ran_on.size(); ++n) {
      ASSERT_GE(finished_at[n], 0) << "node " << n << " never ran";
      EXPECT_EQ(ran_on[n] == std::this_thread::get_id(), plan.lane[n] == 0) << "node " << n;
    }
    // The join ran after both branches ended.
    EXPECT_GT(finished_at[b.join], finished_at[b.x_nodes.back()]);
    EXPECT_GT(finished_at[b.join], finished_at[b.y_nodes.back()]);
  }
}

TEST(CpuLanesTest, AFailingLaneStopsTheRunWithItsError) {
  TwoBranches b(6, 6);
  const StreamPlan plan = PlanBranches(b.g, 2, 3);
  ASSERT_EQ(plan.num_lanes, 2);
  CpuLanes lanes(1);
  const NodeId failing = plan.lane[b.mm] == 1 ? b.mm : b.x_nodes[0];
  std::atomic<bool> join_ran{false};
  auto run = [&](NodeId n, int) -> absl::Status {
    if (n == failing) return absl::InternalError("boom");
    if (n == b.join) join_ran = true;
    return absl::OkStatus();
  };
  const absl::Status s = lanes.Run(plan, run);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(s.message(), "boom");
  EXPECT_FALSE(join_ran.load());  // it waits for the failed lane
  // The next run goes on normally.
  auto ok = [](NodeId, int) { return absl::OkStatus(); };
  EXPECT_TRUE(lanes.Run(plan, ok).ok());
}

// The interpreter with cpu_lanes = 2 gives the bytes of the one-thread run.
TEST(CpuLanesTest, InterpreterResultsMatchOneLane) {
  TwoBranches b(12, 12);
  b.g.mutable_buffer(b.w).handle = 7;
  const std::string x = Floats(16, 1.0f), y = Floats(16, -0.5f), w = Floats(16, 0.75f);
  auto request = [&]() {
    core::ExecuteRequest r;
    r.graph = &b.g;
    r.fingerprint = 42;
    r.uploads = {{b.x, core::HostBytes{x.data(), x.size(), nullptr}},
                 {b.y, core::HostBytes{y.data(), y.size(), nullptr}},
                 {b.w, core::HostBytes{w.data(), w.size(), nullptr}}};
    return r;
  };
  InterpreterOptions one_options;
  one_options.cpu_lanes = 1;
  Interpreter one(one_options);
  InterpreterOptions two_options;
  two_options.cpu_lanes = 2;
  Interpreter two(two_options);
  absl::StatusOr<core::ExecuteResult> expected = one.Execute(request());
  ASSERT_TRUE(expected.ok()) << expected.status();
  const int64_t before = GetInterpreterCounters().cpu_multi_lane_runs;
  for (int k = 0; k < 3; ++k) {
    absl::StatusOr<core::ExecuteResult> got = two.Execute(request());
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->stats.nodes_executed, expected->stats.nodes_executed);
    ASSERT_EQ(got->outputs.size(), 1u);
    ASSERT_EQ(got->outputs[0].nbytes, expected->outputs[0].nbytes);
    EXPECT_EQ(std::memcmp(got->outputs[0].data, expected->outputs[0].data, got->outputs[0].nbytes),
              0);
  }
  EXPECT_EQ(GetInterpreterCounters().cpu_multi_lane_runs - before, 3);
}

// Automatic lanes: all of them where 4 or more cores are usable; on fewer, never more
// threads than the cores (lanes x intra-op threads <= cores); within [1, lanes].
TEST(CpuLanesTest, AutomaticLanesFitSmallMachines) {
  const int cores = core::UsableCores();
  EXPECT_EQ(AutomaticLanesFor(2, 1), std::min(2, cores));
  EXPECT_EQ(AutomaticLanesFor(2, cores), cores >= 4 ? 2 : 1);
  EXPECT_EQ(AutomaticLanesFor(0, 1), 1);
  for (int lanes = 1; lanes <= 4; ++lanes) {
    for (int threads = 0; threads <= 2 * cores; ++threads) {
      const int got = AutomaticLanesFor(lanes, threads);
      EXPECT_GE(got, 1);
      EXPECT_LE(got, lanes);
      if (cores >= 4) {
        EXPECT_EQ(got, lanes);
      } else if (got > 1) {
        EXPECT_LE(got * std::max(1, threads), cores)
            << lanes << " lanes, " << threads << " threads";
      }
    }
  }
}

// With automatic lanes, a program prepared on a thread that runs its ops on one intra-op
// thread gets two lanes (on a machine of 2 or more cores); on as many intra-op threads as
// there are cores, two only on a machine of 4 or more.
TEST(CpuLanesTest, InterpreterCapsAutomaticLanesByIntraOpThreads) {
  const int cores = core::UsableCores();
  TwoBranches b(12, 12);
  const std::string x = Floats(16, 1.0f), y = Floats(16, -0.5f), w = Floats(16, 0.75f);
  InterpreterOptions options;
  options.cpu_lanes = 2;
  options.automatic_cpu_lanes = true;
  const int original = IntraOpThreadsOfThisThread();
  if (!SetIntraOpThreadsOfThisThread(original).ok()) {
    GTEST_SKIP() << "this libtorch cannot set a thread's intra-op threads (no OpenMP)";
  }
  absl::Cleanup restore = [original] { (void)SetIntraOpThreadsOfThisThread(original); };
  for (const int threads : {cores, 1}) {
    ASSERT_TRUE(SetIntraOpThreadsOfThisThread(threads).ok());
    Interpreter interpreter(options);
    core::ExecuteRequest r;
    r.graph = &b.g;
    r.fingerprint = 45;
    r.uploads = {{b.x, core::HostBytes{x.data(), x.size(), nullptr}},
                 {b.y, core::HostBytes{y.data(), y.size(), nullptr}},
                 {b.w, core::HostBytes{w.data(), w.size(), nullptr}}};
    const int64_t before = GetInterpreterCounters().cpu_multi_lane_runs;
    ASSERT_TRUE(interpreter.Execute(r).ok());
    const bool multi_lane = GetInterpreterCounters().cpu_multi_lane_runs > before;
    EXPECT_EQ(multi_lane, AutomaticLanesFor(2, threads) > 1) << threads << " intra-op threads";
    EXPECT_EQ(multi_lane, threads == 1 ? cores >= 2 : cores >= 4) << threads << " intra-op threads";
  }
}

// An op that fails on a worker lane: a clear error, and the interpreter runs on.
TEST(CpuLanesTest, InterpreterReportsAFailingOpOnAWorkerLane) {
  TwoBranches b(12, 10, /*second_input=*/true, /*bad_mm=*/true);  // y's branch the smaller
  const std::string x = Floats(16, 1.0f), y = Floats(16, -0.5f), w = Floats(16, 0.75f);
  InterpreterOptions options;
  options.cpu_lanes = 2;
  Interpreter two(options);
  core::ExecuteRequest r;
  r.graph = &b.g;
  r.fingerprint = 43;
  r.uploads = {{b.x, core::HostBytes{x.data(), x.size(), nullptr}},
               {b.y, core::HostBytes{y.data(), y.size(), nullptr}},
               {b.w, core::HostBytes{w.data(), w.size(), nullptr}}};
  ASSERT_EQ(PlanBranches(b.g, 2).lane[b.mm], 1);  // the mm runs on the worker
  absl::StatusOr<core::ExecuteResult> got = two.Execute(r);
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("aten::mm"), std::string::npos) << got.status();
  // The same interpreter runs the next program.
  TwoBranches fine(12, 12);
  r.graph = &fine.g;
  r.fingerprint = 44;
  EXPECT_TRUE(two.Execute(r).ok());
}

}  // namespace
}  // namespace genie::runtime
