// File: genie/scheduler/placement_executor_test.cc
// ScheduledExecutor<SemanticScheduler<..., ModalityPlacement>> over two fake nodes that
// compute elementwise ops on float buffers and send resident buffers to each other: the
// answer matches one node, weights go up once and stay on their node, the crossing
// tensor goes node to node, and no temporary outlives its run.
#include <gtest/gtest.h>

#include <cstring>

#include "absl/container/flat_hash_map.h"
#include "genie/scheduler/scheduler.h"

namespace genie::scheduler {
namespace {

using core::BufferId;
using core::BufferKind;
using core::DType;
using core::TensorRef;
using semantic::ModalityKind;

class FakeNode;
absl::flat_hash_map<std::string, FakeNode*>& Registry() {
  static auto* r = new absl::flat_hash_map<std::string, FakeNode*>();
  return *r;
}

// Elementwise add/mul on float views starting at element 0 (operands broadcast cyclically).
class FakeNode final : public core::Executor, public core::PeerSender {
 public:
  explicit FakeNode(std::string address) : address_(std::move(address)) { Registry()[address_] = this; }
  ~FakeNode() override { Registry().erase(address_); }

  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& r) override {
    const core::Graph& g = *r.graph;
    std::vector<std::vector<float>> data(g.buffers().size());
    for (const core::Buffer& b : g.buffers()) data[b.id].assign(b.numel, 0.f);
    for (const core::Upload& u : r.uploads) {
      uploaded += static_cast<int64_t>(u.bytes.nbytes);
      std::memcpy(data[u.buffer].data(), u.bytes.data, u.bytes.nbytes);
    }
    for (const core::Buffer& b : g.buffers()) {
      if (b.kind != BufferKind::kResident) continue;
      auto it = resident.find(b.handle);
      if (it == resident.end()) return absl::FailedPreconditionError(absl::StrCat("handle ", b.handle, " not resident"));
      data[b.id] = it->second;
    }
    for (const core::Node& n : g.nodes()) {
      const TensorRef& a = n.args[0].tensors[0];
      const TensorRef& b = n.args[1].tensors[0];
      const TensorRef& o = n.outputs[0];
      const bool add = g.OpName(n.op) == "aten::add.Tensor";
      for (int64_t i = 0; i < o.numel(); ++i) {
        const float x = data[a.buffer][i % a.numel()], y = data[b.buffer][i % b.numel()];
        data[o.buffer][i] = add ? x + y : x * y;
      }
      ++ops;
    }
    core::ExecuteResult result;
    for (const TensorRef& o : g.outputs()) {
      std::string bytes(o.numel() * 4, '\0');
      std::memcpy(bytes.data(), data[o.buffer].data(), bytes.size());
      result.outputs.push_back(core::HostBytes::Owned(std::move(bytes)));
    }
    for (BufferId b : r.keep) resident[g.buffer(b).handle] = data[b];
    for (uint64_t h : r.release) resident.erase(h);
    return result;
  }
  std::string Describe() const override { return "fake " + address_; }
  std::string peer_address() const override { return address_; }
  absl::StatusOr<int64_t> SendToPeer(const core::PeerSend& s) override {
    auto it = resident.find(s.handle);
    if (it == resident.end()) return absl::NotFoundError("nothing to send");
    FakeNode* peer = Registry()[s.peer];
    if (peer == nullptr) return absl::UnavailableError("no such peer");
    peer->resident[s.peer_handle] = it->second;
    const int64_t bytes = static_cast<int64_t>(it->second.size() * 4);
    if (s.release) resident.erase(it);
    return bytes;
  }

  std::string address_;
  absl::flat_hash_map<uint64_t, std::vector<float>> resident;
  int64_t uploaded = 0, ops = 0;
};

TensorRef Vec(BufferId b, int64_t n) { return TensorRef::Contiguous(b, DType::kFloat32, {n}); }

// v = img * vision.w; l = txt * language.w; f = v + l. Weights resident after run 1.
struct Model {
  core::Graph g;
  semantic::GraphSemantics s;
  std::vector<BufferId> keep;
  std::vector<core::Upload> uploads;
  std::vector<std::string> storage;

  explicit Model(bool weights_resident) {
    const BufferKind wk = weights_resident ? BufferKind::kResident : BufferKind::kParameter;
    const BufferId img = g.AddBuffer({DType::kFloat32, 8, BufferKind::kHostInput, "", 11});
    const BufferId vw = g.AddBuffer({DType::kFloat32, 1, wk, "vision.w", 12});
    const BufferId txt = g.AddBuffer({DType::kFloat32, 8, BufferKind::kHostInput, "", 13});
    const BufferId lw = g.AddBuffer({DType::kFloat32, 1, wk, "language.w", 14});
    const BufferId v = g.AddBuffer({DType::kFloat32, 8});
    const BufferId l = g.AddBuffer({DType::kFloat32, 8});
    const BufferId f = g.AddBuffer({DType::kFloat32, 8});
    Op("aten::mul.Tensor", img, vw, v, "vision.enc", ModalityKind::kVision);
    Op("aten::mul.Tensor", txt, lw, l, "language.enc", ModalityKind::kLanguage);
    Op("aten::add.Tensor", v, l, f, "fusion", ModalityKind::kFusion);
    g.outputs().push_back(Vec(f, 8));
    keep = {vw, lw};
    Upload(img, std::vector<float>(8, 2.f));
    Upload(txt, {1, 2, 3, 4, 5, 6, 7, 8});
    if (!weights_resident) {
      Upload(vw, {10.f});
      Upload(lw, {100.f});
    }
  }
  void Upload(BufferId b, std::vector<float> values) {
    std::string bytes(values.size() * 4, '\0');
    std::memcpy(bytes.data(), values.data(), bytes.size());
    uploads.push_back({b, core::HostBytes::Owned(std::move(bytes))});
  }
  void Op(const char* name, BufferId a, BufferId b, BufferId out, const char* module, ModalityKind m) {
    core::Node n;
    n.op = g.InternOp(name);
    n.args = {core::Arg::Tensor(Vec(a, g.buffer(a).numel)), core::Arg::Tensor(Vec(b, g.buffer(b).numel))};
    n.outputs = {Vec(out, 8)};
    n.scope = g.InternScope(module);
    g.AddNode(std::move(n));
    s.module.push_back(module);
    s.modality.push_back(m);
  }
  core::ExecuteRequest Request() const {
    core::ExecuteRequest r;
    r.graph = &g;
    r.fingerprint = g.Fingerprint();
    r.uploads = uploads;
    r.keep = keep;
    return r;
  }
};

std::vector<float> Floats(const core::HostBytes& b) {
  std::vector<float> out(b.nbytes / 4);
  std::memcpy(out.data(), b.data, b.nbytes);
  return out;
}

using Placed = ScheduledExecutor<SemanticScheduler<ResidentWeights, KvCacheColocation,
                                                   JustInTimeTransfers, ModalityPlacement>>;

TEST(PlacementExecutorTest, TwoNodesMatchOneAndMoveTheCrossingTensorNodeToNode) {
  auto n0 = std::make_shared<FakeNode>("a:1");
  auto n1 = std::make_shared<FakeNode>("b:2");
  Placed placed({n0, n1});
  const std::vector<float> expected = {120, 220, 320, 420, 520, 620, 720, 820};
  for (int run = 0; run < 3; ++run) {
    Model m(/*weights_resident=*/run > 0);
    absl::StatusOr<core::ExecuteResult> r = placed.Execute(m.Request(), m.s);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->outputs.size(), 1u);
    EXPECT_EQ(Floats(r->outputs[0]), expected) << "run " << run;
  }
  // Vision on node 0, language and fusion (the same bytes: ties stay put) on node 1.
  const PlacementStats st = placed.placement();
  EXPECT_EQ(st.NodeOf("vision"), 0);
  EXPECT_EQ(st.NodeOf("language"), 1);
  EXPECT_EQ(st.runs, 3);
  EXPECT_EQ(st.transfers, 3);
  EXPECT_EQ(st.node_to_node_bytes, 3 * 32);
  // Weights went up once, each to its node, and stay there; no temporary is left.
  EXPECT_EQ(n0->resident.size(), 1u);
  EXPECT_TRUE(n0->resident.contains(12));
  EXPECT_EQ(n1->resident.size(), 1u);
  EXPECT_TRUE(n1->resident.contains(14));
  const DataTraffic t = placed.traffic();
  EXPECT_EQ(t.up[static_cast<int>(StorageClass::kWeight)], 8);
  EXPECT_EQ(t.up[static_cast<int>(StorageClass::kActivation)], 3 * 64);
  EXPECT_EQ(t.down[static_cast<int>(StorageClass::kActivation)], 3 * 32);
  EXPECT_NE(st.last_report.find("transfer"), std::string::npos);
}

TEST(PlacementExecutorTest, AFailedTransferFailsTheRunAndTheNextRunStartsClean) {
  auto n0 = std::make_shared<FakeNode>("d:4");
  auto n1 = std::make_shared<FakeNode>("e:5");
  Placed placed({n0, n1});
  Registry().erase("e:5");  // node 0 cannot reach node 1
  Model m(false);
  absl::StatusOr<core::ExecuteResult> r = placed.Execute(m.Request(), m.s);
  EXPECT_TRUE(absl::IsUnavailable(r.status())) << r.status();
  Registry()["e:5"] = n1.get();
  r = placed.Execute(m.Request(), m.s);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Floats(r->outputs[0]), (std::vector<float>{120, 220, 320, 420, 520, 620, 720, 820}));
  // The failed run's temporary is left on node 0 under a handle the next run did not reuse.
  int temporaries = 0;
  for (const auto& [h, data] : n0->resident) temporaries += h >= kTemporaryHandleBase;
  EXPECT_EQ(temporaries, 1);
  EXPECT_EQ(placed.placement().runs, 1);
}

TEST(PlacementExecutorTest, OneNodeRunsAsBefore) {
  auto n0 = std::make_shared<FakeNode>("c:3");
  Placed placed({n0});
  Model m(false);
  absl::StatusOr<core::ExecuteResult> r = placed.Execute(m.Request(), m.s);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(placed.placement().runs, 0);
  EXPECT_EQ(n0->ops, 3);
  EXPECT_EQ(n0->resident.size(), 2u);
}

}  // namespace
}  // namespace genie::scheduler
