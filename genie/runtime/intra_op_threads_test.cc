// File: genie/runtime/intra_op_threads_test.cc
#include "genie/runtime/intra_op_threads.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <thread>

#include "genie/core/testing/graph_builder.h"

namespace genie::runtime {
namespace {

TEST(IntraOpThreadsTest, SetsTheCallingThreadOnly) {
  const int before = IntraOpThreadsOfThisThread();
  const int other_count = before + 3;  // a count no default gives
  int in_thread = 0, in_thread_after_op = 0;
  std::thread t([&] {
    ASSERT_TRUE(SetIntraOpThreadsOfThisThread(other_count).ok());
    in_thread = IntraOpThreadsOfThisThread();
    // A parallel op does not re-initialise the count (ATen's lazy per-thread init).
    (void)at::ones({1 << 16}).add(1).sum();
    in_thread_after_op = IntraOpThreadsOfThisThread();
  });
  t.join();
  EXPECT_EQ(in_thread, other_count);
  EXPECT_EQ(in_thread_after_op, other_count);
  // Neither this thread nor a thread started later inherits it (at::set_num_threads would
  // have changed the process default).
  EXPECT_EQ(IntraOpThreadsOfThisThread(), before);
  int later = 0;
  std::thread u([&] { later = IntraOpThreadsOfThisThread(); });
  u.join();
  EXPECT_NE(later, other_count);
}

TEST(IntraOpThreadsTest, OneThreadGivesTheSameResults) {
  const at::Tensor a = at::randn({64, 300});
  const at::Tensor b = at::randn({300, 70});
  const at::Tensor x = at::randn({1 << 17});
  at::Tensor mm_one, sum_one;
  std::thread t([&] {
    ASSERT_TRUE(SetIntraOpThreadsOfThisThread(1).ok());
    mm_one = at::mm(a, b);
    sum_one = (x * 2).relu();
  });
  t.join();
  EXPECT_TRUE(at::allclose(mm_one, at::mm(a, b), 1e-5, 1e-5));
  EXPECT_TRUE(at::equal(sum_one, (x * 2).relu()));
}

TEST(IntraOpThreadsTest, ProgramsOfSmallOpsGetOneThread) {
  using core::BufferKind;
  using core::testing::Vec;
  // An op whose output is one element below ATen's grain, reading a large weight: small.
  core::testing::GraphBuilder small;
  const core::BufferId w = small.Buffer(4 * kParallelGrain, BufferKind::kResident, "w", 1);
  const core::BufferId y = small.Buffer(kParallelGrain - 1);
  small.Op("aten::relu", {Vec(w, kParallelGrain - 1)}, Vec(y, kParallelGrain - 1));
  EXPECT_EQ(IntraOpThreadsFor(small.graph(), 8), 1);
  // One output of kParallelGrain elements: worth the threads.
  core::testing::GraphBuilder large;
  const core::BufferId x = large.Buffer(kParallelGrain, BufferKind::kHostInput);
  const core::BufferId z = large.Buffer(kParallelGrain);
  large.Op("aten::relu", {Vec(x, 16)}, Vec(z, 16));
  large.Op("aten::relu", {Vec(x, kParallelGrain)}, Vec(z, kParallelGrain));
  EXPECT_EQ(IntraOpThreadsFor(large.graph(), 8), 8);
  EXPECT_EQ(IntraOpThreadsFor(large.graph(), 0), 1);
  EXPECT_EQ(IntraOpThreadsFor(core::Graph(), 8), 1);
}

TEST(IntraOpThreadsTest, RefusesLessThanOne) {
  const int before = IntraOpThreadsOfThisThread();
  EXPECT_EQ(SetIntraOpThreadsOfThisThread(0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SetIntraOpThreadsOfThisThread(-2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(IntraOpThreadsOfThisThread(), before);
}

}  // namespace
}  // namespace genie::runtime
