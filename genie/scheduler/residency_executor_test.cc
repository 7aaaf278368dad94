// File: genie/scheduler/residency_executor_test.cc
// What moves under each ship policy, checked against a fake node that stores bytes:
// the blind baseline keeps nothing on the node; the semantic scheduler keeps weights
// and the KV cache resident.
#include "genie/scheduler/residency_executor.h"

#include <gtest/gtest.h>

#include <cstring>

#include "absl/container/flat_hash_map.h"
#include "genie/scheduler/scheduler.h"

namespace genie::scheduler {
namespace {

using core::BufferId;
using core::BufferKind;
using core::DType;

// A node without compute: keeps buffers by handle, returns whole buffers as outputs.
class FakeNode final : public core::Executor {
 public:
  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& r) override {
    ++runs;
    for (uint64_t h : r.release) resident.erase(h);
    absl::flat_hash_map<BufferId, std::string> data;
    for (const core::Upload& u : r.uploads) {
      uploaded_bytes += static_cast<int64_t>(u.bytes.nbytes);
      data[u.buffer] = std::string(static_cast<const char*>(u.bytes.data), u.bytes.nbytes);
    }
    for (const core::Buffer& b : r.graph->buffers()) {
      if (b.kind == BufferKind::kResident) {
        auto it = resident.find(b.handle);
        if (it == resident.end()) return absl::FailedPreconditionError("not resident");
        data[b.id] = it->second;
      }
    }
    core::ExecuteResult result;
    for (const core::TensorRef& o : r.graph->outputs()) {
      result.outputs.push_back(core::HostBytes::Owned(data[o.buffer]));
      downloaded_bytes += static_cast<int64_t>(data[o.buffer].size());
    }
    for (BufferId b : r.keep) resident[r.graph->buffer(b).handle] = data[b];
    return result;
  }
  std::string Describe() const override { return "fake node"; }

  absl::flat_hash_map<uint64_t, std::string> resident;
  int64_t uploaded_bytes = 0, downloaded_bytes = 0;
  int runs = 0;
};

core::HostBytes Bytes(int64_t n, char fill) { return core::HostBytes::Owned(std::string(n, fill)); }

// Step 1: weight w (param, uploaded) and cache c (host input) -> both kept.
// Step 2: both resident, read again and kept.
struct Steps {
  core::Graph first, second;
  std::vector<BufferId> keep_first, keep_second;
  core::HostBytes w = Bytes(400, 'w'), c = Bytes(40, 'c');
};

Steps MakeSteps() {
  Steps s;
  core::Buffer w{DType::kFloat32, 100, BufferKind::kParameter, "fc.weight", 1};
  core::Buffer c{DType::kFloat32, 10, BufferKind::kHostInput, "", 2};
  BufferId w1 = s.first.AddBuffer(w), c1 = s.first.AddBuffer(c);
  s.first.outputs().push_back(core::TensorRef::Contiguous(c1, DType::kFloat32, {10}));
  s.keep_first = {w1, c1};
  w.kind = c.kind = BufferKind::kResident;
  BufferId w2 = s.second.AddBuffer(w), c2 = s.second.AddBuffer(c);
  s.second.outputs().push_back(core::TensorRef::Contiguous(c2, DType::kFloat32, {10}));
  s.keep_second = {w2, c2};
  return s;
}

core::ExecuteResult RunStep(ResidencyExecutor& exec, const core::Graph& g, std::vector<BufferId> keep,
                        std::vector<core::Upload> uploads, semantic::GraphSemantics sem) {
  core::ExecuteRequest r;
  r.graph = &g;
  r.keep = std::move(keep);
  r.uploads = std::move(uploads);
  r.fingerprint = 7;
  absl::StatusOr<core::ExecuteResult> res = exec.Execute(r, sem);
  EXPECT_TRUE(res.ok()) << res.status();
  return res.ok() ? *std::move(res) : core::ExecuteResult{};
}

semantic::GraphSemantics CacheIs(BufferId b) {
  semantic::GraphSemantics s;
  s.kv_cache = {b};
  return s;
}

TEST(ResidencyExecutor, BlindShipsEverythingEveryStepAndKeepsNothingOnTheNode) {
  auto node = std::make_shared<FakeNode>();
  Steps s = MakeSteps();
  ResidencyExecutor blind(node, ShipPolicy{true, true, true});
  RunStep(blind, s.first, s.keep_first, {{0, s.w}, {1, s.c}}, CacheIs(1));
  EXPECT_TRUE(node->resident.empty());
  EXPECT_EQ(blind.client_held_bytes(), 440);
  core::ExecuteResult r2 = RunStep(blind, s.second, s.keep_second, {}, CacheIs(1));
  ASSERT_EQ(r2.outputs.size(), 1u);
  EXPECT_EQ(std::string(static_cast<const char*>(r2.outputs[0].data), 40), std::string(40, 'c'));
  EXPECT_EQ(node->uploaded_bytes, 2 * 440);  // weights and cache up, twice
  EXPECT_EQ(node->downloaded_bytes, 2 * (40 + 440));  // output + both back, twice
  EXPECT_TRUE(node->resident.empty());
  const DataTraffic t = blind.traffic();
  EXPECT_EQ(t.up[static_cast<int>(StorageClass::kWeight)], 2 * 400);
  EXPECT_EQ(t.down[static_cast<int>(StorageClass::kWeight)], 2 * 400);
  EXPECT_EQ(t.of(StorageClass::kKvCache), 4 * 40);
  EXPECT_EQ(t.down[static_cast<int>(StorageClass::kActivation)], 2 * 40);
}

TEST(ResidencyExecutor, SemanticKeepsWeightsAndKvCacheResident) {
  auto node = std::make_shared<FakeNode>();
  Steps s = MakeSteps();
  ResidencyExecutor smart(
      node, ScheduledExecutor<SemanticScheduler<ResidentWeights, KvCacheColocation, JustInTimeTransfers>>::kPolicy);
  RunStep(smart, s.first, s.keep_first, {{0, s.w}, {1, s.c}}, CacheIs(1));
  RunStep(smart, s.second, s.keep_second, {}, CacheIs(1));
  EXPECT_EQ(node->uploaded_bytes, 440);  // once
  EXPECT_EQ(node->downloaded_bytes, 2 * 40);  // only the requested output
  EXPECT_EQ(node->resident.size(), 2u);
  EXPECT_EQ(smart.client_held_bytes(), 0);
  EXPECT_EQ(smart.traffic().of(StorageClass::kWeight), 400);
  EXPECT_EQ(smart.traffic().up[static_cast<int>(StorageClass::kKvCache)], 40);  // first fill only
}

TEST(ResidencyExecutor, WithoutKvCacheColocationTheCacheTravelsButWeightsStay) {
  auto node = std::make_shared<FakeNode>();
  Steps s = MakeSteps();
  ResidencyExecutor exec(node, ScheduledExecutor<SemanticScheduler<ResidentWeights>>::kPolicy);
  RunStep(exec, s.first, s.keep_first, {{0, s.w}, {1, s.c}}, CacheIs(1));
  RunStep(exec, s.second, s.keep_second, {}, CacheIs(1));
  EXPECT_EQ(node->uploaded_bytes, 440 + 40);        // weights once, cache twice
  EXPECT_EQ(node->resident.size(), 1u);             // only the weight
  EXPECT_EQ(exec.client_held_bytes(), 40);
}

TEST(ResidencyExecutor, ReleasedHandlesAreForgottenOnBothSides) {
  auto node = std::make_shared<FakeNode>();
  Steps s = MakeSteps();
  ResidencyExecutor blind(node, ShipPolicy{true, true, true});
  RunStep(blind, s.first, s.keep_first, {{0, s.w}, {1, s.c}}, CacheIs(1));
  core::Graph empty;
  core::ExecuteRequest r;
  r.graph = &empty;
  r.release = {1, 2};
  ASSERT_TRUE(blind.Execute(r, {}).ok());
  EXPECT_EQ(blind.client_held_bytes(), 0);
  EXPECT_EQ(blind.tracked_storages(), 0u);  // nothing about released storages is kept
  r.graph = &s.second;
  r.release.clear();
  r.keep = s.keep_second;
  absl::Status st = blind.Execute(r, CacheIs(1)).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
}

// Host data sent ahead (a run of no nodes that keeps it) gets its class from the first
// graph that reads it: the KV cache by the analysis, a named buffer as a weight.
TEST(ResidencyExecutor, DataSentAheadIsClassedByTheGraphThatReadsIt) {
  auto node = std::make_shared<FakeNode>();
  ResidencyExecutor smart(node, ShipPolicy{});
  core::Graph put;
  BufferId p0 = put.AddBuffer(core::Buffer{DType::kFloat32, 10, BufferKind::kHostInput, "", 5});
  BufferId p1 = put.AddBuffer(core::Buffer{DType::kFloat32, 10, BufferKind::kHostInput, "", 6});
  RunStep(smart, put, {p0, p1}, {{p0, Bytes(40, 'a')}, {p1, Bytes(40, 'b')}}, {});
  EXPECT_EQ(smart.tracked_storages(), 0u);
  EXPECT_EQ(smart.traffic().up[static_cast<int>(StorageClass::kActivation)], 80);
  core::Graph read;
  BufferId r0 = read.AddBuffer(core::Buffer{DType::kFloat32, 10, BufferKind::kResident, "", 5});
  BufferId r1 =
      read.AddBuffer(core::Buffer{DType::kFloat32, 10, BufferKind::kResident, "pos.table", 6});
  read.outputs().push_back(core::TensorRef::Contiguous(r0, DType::kFloat32, {10}));
  RunStep(smart, read, {r0, r1}, {}, CacheIs(r0));
  EXPECT_EQ(smart.tracked_storages(), 2u);
  EXPECT_EQ(smart.class_of(5), StorageClass::kKvCache);
  EXPECT_EQ(smart.class_of(6), StorageClass::kWeight);
  EXPECT_EQ(smart.class_of(7), std::nullopt);
}

static_assert(is_scheduler_policy_v<BlindScheduler>);
static_assert(is_scheduler_policy_v<SemanticScheduler<ResidentWeights, KvCacheColocation>>);
static_assert(!is_scheduler_policy_v<SemanticScheduler<int>>);
static_assert(!is_scheduler_policy_v<int>);

}  // namespace
}  // namespace genie::scheduler
