// File: genie/scheduler/placement_executor_test.cc
// ScheduledExecutor<SemanticScheduler<..., ModalityPlacement>> over two fake nodes that
// compute elementwise ops on float buffers and send resident buffers to each other: the
// answer matches one node, weights go up once and stay on their node, the crossing
// tensor goes node to node, and no temporary outlives its run. Concurrency is shown with
// rendezvous, never with clocks: a part that waits for another node's part to start can
// only see it start when the two run at the same time.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "genie/core/testing/graph_builder.h"
#include "genie/scheduler/scheduler.h"

namespace genie::scheduler {
namespace {

using core::BufferId;
using core::BufferKind;
using core::DType;
using core::TensorRef;
using core::testing::GraphBuilder;
using core::testing::Vec;
using semantic::ModalityKind;

class FakeNode;
std::mutex registry_mu;
absl::flat_hash_map<std::string, FakeNode*>& Registry() {
  static auto* r = new absl::flat_hash_map<std::string, FakeNode*>();
  return *r;
}

// Counts events by name; Await waits (at most 20 s, a guard against a hang) for a count.
class Rendezvous {
 public:
  void Arrive(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    ++count_[what];
    cv_.notify_all();
  }
  bool Await(const std::string& what, int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(20), [&] { return count_[what] >= n; });
  }
  int count(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    return count_[what];
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, int> count_;
};

// Elementwise add/mul on float views starting at element 0 (operands broadcast cyclically).
class FakeNode final : public core::Executor, public core::PeerSender {
 public:
  explicit FakeNode(std::string address) : address_(std::move(address)) {
    std::lock_guard<std::mutex> lock(registry_mu);
    Registry()[address_] = this;
  }
  ~FakeNode() override {
    std::lock_guard<std::mutex> lock(registry_mu);
    Registry().erase(address_);
  }

  absl::StatusOr<core::ExecuteResult> Execute(const core::ExecuteRequest& r) override {
    const core::Graph& g = *r.graph;
    // Called with the scope of the part's first op, before it runs (no lock held).
    if (on_part && !g.nodes().empty()) {
      absl::Status s = on_part(g.ScopeName(g.nodes().front().scope));
      if (!s.ok()) return s;
    }
    std::lock_guard<std::mutex> lock(mu);
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
      const TensorRef& o = n.outputs[0];
      const std::string name(g.OpName(n.op));
      if (name == "aten::clone") {
        for (int64_t i = 0; i < o.numel(); ++i) data[o.buffer][i] = data[a.buffer][i];
        ++ops;
        continue;
      }
      const TensorRef& b = n.args[1].tensors[0];
      const bool add = name == "aten::add.Tensor" || name == "aten::add_.Tensor";
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
    std::lock_guard<std::mutex> lock(mu);
    auto it = resident.find(s.handle);
    if (it == resident.end()) return absl::NotFoundError("nothing to send");
    FakeNode* peer = nullptr;
    {
      std::lock_guard<std::mutex> registry_lock(registry_mu);
      peer = Registry()[s.peer];
    }
    if (peer == nullptr) return absl::UnavailableError("no such peer");
    {
      std::lock_guard<std::mutex> peer_lock(peer->mu);
      peer->resident[s.peer_handle] = it->second;
    }
    const int64_t bytes = static_cast<int64_t>(it->second.size() * 4);
    if (s.release) resident.erase(it);
    return bytes;
  }

  std::string address_;
  std::mutex mu;
  absl::flat_hash_map<uint64_t, std::vector<float>> resident;
  int64_t uploaded = 0, ops = 0;
  std::function<absl::Status(const std::string& first_scope)> on_part;
};

// Appends op `name` in `module` to `g` (in place: it mutates its output's buffer) and its
// module and modality to `s`.
void AddOp(core::Graph* g, semantic::GraphSemantics* s, const char* name, std::vector<TensorRef> in,
           TensorRef out, const char* module, ModalityKind m, bool in_place = false) {
  s->module.push_back(module);
  s->modality.push_back(m);
  std::vector<BufferId> writes;
  if (in_place) writes.push_back(out.buffer);
  GraphBuilder(g).Op(name, std::move(in), out, module, std::move(writes));
}

// out = in * weight in `module`: a graph of one op that reads a resident weight, for runs
// beside a Model's.
struct OneOp {
  core::Graph g;
  semantic::GraphSemantics s;
  BufferId in, out;
  OneOp(uint64_t in_handle, const char* weight, uint64_t weight_handle, const char* module,
        ModalityKind m) {
    GraphBuilder b(&g);
    in = b.Buffer(8, BufferKind::kHostInput, "", in_handle);
    const BufferId w = b.Buffer(1, BufferKind::kResident, weight, weight_handle);
    out = b.Buffer(8);
    AddOp(&g, &s, "aten::mul.Tensor", {Vec(in, 8), Vec(w, 1)}, Vec(out, 8), module, m);
    g.outputs().push_back(Vec(out, 8));
  }
  core::ExecuteRequest Request(core::HostBytes in_bytes) const {
    core::ExecuteRequest r;
    r.graph = &g;
    r.uploads = {core::Upload{in, std::move(in_bytes)}};
    return r;
  }
};

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
    AddOp(&g, &s, name, {Vec(a, g.buffer(a).numel), Vec(b, g.buffer(b).numel)}, Vec(out, 8), module, m);
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
  {
    std::lock_guard<std::mutex> lock(registry_mu);
    Registry().erase("e:5");  // node 0 cannot reach node 1
  }
  Model m(false);
  absl::StatusOr<core::ExecuteResult> r = placed.Execute(m.Request(), m.s);
  EXPECT_TRUE(absl::IsUnavailable(r.status())) << r.status();
  {
    std::lock_guard<std::mutex> lock(registry_mu);
    Registry()["e:5"] = n1.get();
  }
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

const std::vector<float> kExpected = {120, 220, 320, 420, 520, 620, 720, 820};

// v = img * vision.w (kept under handle 50); l = txt * language.w; f = v + l[:8] on node 1
// (language's bytes are larger), so v goes to node 1 under a temporary handle; then
// vision.post writes v in place on node 0: the final version of a kept buffer lives under
// the temporary handle it was exported with. Placement keeps a copy under handle 50.
TEST(PlacementExecutorTest, AKeptBufferWhoseFinalVersionWasExportedIsKeptUnderItsOwnHandle) {
  auto n0 = std::make_shared<FakeNode>("l:12");
  auto n1 = std::make_shared<FakeNode>("m:13");
  Placed placed({n0, n1});
  Model m(false);
  core::Graph& g = m.g;
  // Rebuild: a fresh graph with a larger language side and the in-place vision op.
  g = core::Graph();
  m.s = semantic::GraphSemantics();
  m.uploads.clear();
  const BufferId img = g.AddBuffer({DType::kFloat32, 8, BufferKind::kHostInput, "", 11});
  const BufferId vw = g.AddBuffer({DType::kFloat32, 1, BufferKind::kParameter, "vision.w", 12});
  const BufferId txt = g.AddBuffer({DType::kFloat32, 16, BufferKind::kHostInput, "", 13});
  const BufferId lw = g.AddBuffer({DType::kFloat32, 1, BufferKind::kParameter, "language.w", 14});
  const BufferId v = g.AddBuffer({DType::kFloat32, 8, BufferKind::kIntermediate, "", 50});
  const BufferId l = g.AddBuffer({DType::kFloat32, 16});
  const BufferId f = g.AddBuffer({DType::kFloat32, 8});
  AddOp(&g, &m.s, "aten::mul.Tensor", {Vec(img, 8), Vec(vw, 1)}, Vec(v, 8), "vision.enc", ModalityKind::kVision);
  AddOp(&g, &m.s, "aten::mul.Tensor", {Vec(txt, 16), Vec(lw, 1)}, Vec(l, 16), "language.enc",
        ModalityKind::kLanguage);
  AddOp(&g, &m.s, "aten::add.Tensor", {Vec(v, 8), Vec(l, 8)}, Vec(f, 8), "fusion", ModalityKind::kFusion);
  AddOp(&g, &m.s, "aten::add_.Tensor", {Vec(v, 8), Vec(img, 8)}, Vec(v, 8), "vision.post",
        ModalityKind::kVision, /*in_place=*/true);
  g.outputs().push_back(Vec(f, 8));
  m.keep = {vw, lw, v};
  m.Upload(img, std::vector<float>(8, 2.f));
  m.Upload(vw, {10.f});
  std::vector<float> text(16);
  for (int i = 0; i < 16; ++i) text[i] = static_cast<float>(i + 1);
  m.Upload(txt, text);
  m.Upload(lw, {100.f});
  ASSERT_TRUE(g.Validate().ok());

  absl::StatusOr<core::ExecuteResult> r = placed.Execute(m.Request(), m.s);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Floats(r->outputs[0]), kExpected);  // f = 20 + 100 * (i + 1)
  // Node 0 keeps the final v (img * w + img = 22) under its own handle; nothing else of v.
  ASSERT_TRUE(n0->resident.contains(50));
  EXPECT_EQ(n0->resident[50], std::vector<float>(8, 22.f));
  EXPECT_FALSE(n1->resident.contains(50));
  for (FakeNode* n : {n0.get(), n1.get()}) {
    for (const auto& [h, data] : n->resident) EXPECT_LT(h, kTemporaryHandleBase) << n->Describe();
  }
  EXPECT_NE(placed.placement().last_report.find("transfer"), std::string::npos);
}


TEST(PlacementExecutorTest, VisionAndLanguageRunAtTheSameTimeOnTheirNodes) {
  auto n0 = std::make_shared<FakeNode>("f:6");
  auto n1 = std::make_shared<FakeNode>("g:7");
  Rendezvous r;
  bool vision_saw_language = false;
  // Vision (node 0) does not finish until language (node 1) has started: run one after
  // the other, the rendezvous would never happen.
  n0->on_part = [&](const std::string& scope) {
    if (scope == "vision.enc") {
      r.Arrive("vision");
      vision_saw_language = r.Await("language", 1);
    }
    return absl::OkStatus();
  };
  n1->on_part = [&](const std::string& scope) {
    if (scope == "language.enc") {
      r.Arrive("language");
      EXPECT_TRUE(r.Await("vision", 1));
    }
    if (scope == "fusion") r.Arrive("fusion");
    return absl::OkStatus();
  };
  Placed placed({n0, n1});
  Model m(false);
  absl::StatusOr<core::ExecuteResult> out = placed.Execute(m.Request(), m.s);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(Floats(out->outputs[0]), kExpected);
  EXPECT_TRUE(vision_saw_language);
  // Language and fusion are separate parts on node 1: fusion waits for vision's output.
  const PlacementStats st = placed.placement();
  EXPECT_EQ(st.parts, 3);
  EXPECT_EQ(st.max_parts_in_flight, 2);
  EXPECT_EQ(r.count("fusion"), 1);
}

TEST(PlacementExecutorTest, SuccessiveRunsPipelineNextVisionWithThisFusion) {
  auto n0 = std::make_shared<FakeNode>("h:8");
  auto n1 = std::make_shared<FakeNode>("i:9");
  Placed placed({n0, n1});
  PlacementExecutor* exec = placed.placer();
  ASSERT_NE(exec, nullptr);
  Model warm(false);
  ASSERT_TRUE(placed.Execute(warm.Request(), warm.s).ok());  // weights up and resident

  Rendezvous r;
  bool fusion_saw_next_vision = false;
  // Run A's fusion (node 1) and run B's vision (node 0) each wait for the other to start:
  // possible only when B was placed and queued while A was in flight, and node 0 went on
  // with it while node 1 ran A's fusion.
  n0->on_part = [&](const std::string& scope) {
    if (scope != "vision.enc") return absl::OkStatus();
    r.Arrive("vision");
    if (r.count("vision") == 2) {
      EXPECT_TRUE(r.Await("fusion", 1));
    }
    return absl::OkStatus();
  };
  n1->on_part = [&](const std::string& scope) {
    if (scope != "fusion") return absl::OkStatus();
    r.Arrive("fusion");
    if (r.count("fusion") == 1) fusion_saw_next_vision = r.Await("vision", 2);
    return absl::OkStatus();
  };
  Model a(true), b(true), c(true);
  absl::StatusOr<PlacementExecutor::Ticket> ta = exec->Submit(a.Request(), a.s);
  ASSERT_TRUE(ta.ok()) << ta.status();
  absl::StatusOr<PlacementExecutor::Ticket> tb = exec->Submit(b.Request(), b.s);
  ASSERT_TRUE(tb.ok()) << tb.status();
  absl::StatusOr<core::ExecuteResult> ra = exec->Wait(*std::move(ta));
  absl::StatusOr<PlacementExecutor::Ticket> tc = exec->Submit(c.Request(), c.s);
  ASSERT_TRUE(tc.ok()) << tc.status();
  absl::StatusOr<core::ExecuteResult> rb = exec->Wait(*std::move(tb));
  absl::StatusOr<core::ExecuteResult> rc = exec->Wait(*std::move(tc));
  ASSERT_TRUE(ra.ok()) << ra.status();
  ASSERT_TRUE(rb.ok()) << rb.status();
  ASSERT_TRUE(rc.ok()) << rc.status();
  for (const auto* res : {&*ra, &*rb, &*rc}) EXPECT_EQ(Floats(res->outputs[0]), kExpected);
  EXPECT_TRUE(fusion_saw_next_vision);
  const PlacementStats st = placed.placement();
  EXPECT_GE(st.pipelined_parts, 1);
  EXPECT_EQ(st.runs, 4);
  // Each run's temporaries were released by its end, though runs overlapped.
  for (FakeNode* n : {n0.get(), n1.get()}) {
    for (const auto& [h, data] : n->resident) EXPECT_LT(h, kTemporaryHandleBase) << n->Describe();
  }
  EXPECT_EQ(n0->resident.size(), 1u);
  EXPECT_EQ(n1->resident.size(), 1u);
}

// Run B (vision only) finishes while run A waits in its fusion part; run C, submitted then,
// must not reuse A's temporary handles: its vision output (other values) goes to node 1
// while A's is still there, unread.
TEST(PlacementExecutorTest, RunsFinishingOutOfOrderNeverShareTemporaries) {
  auto n0 = std::make_shared<FakeNode>("n:14");
  auto n1 = std::make_shared<FakeNode>("o:15");
  Placed placed({n0, n1});
  PlacementExecutor* exec = placed.placer();
  Model warm(false);
  ASSERT_TRUE(placed.Execute(warm.Request(), warm.s).ok());
  auto temporaries_on_n1 = [&] {
    std::lock_guard<std::mutex> lock(n1->mu);
    int k = 0;
    for (const auto& [h, data] : n1->resident) k += h >= kTemporaryHandleBase;
    return k;
  };
  bool saw_both = false;
  Rendezvous r;
  n1->on_part = [&](const std::string& scope) {
    if (scope == "fusion" && r.count("fusion") == 0) {
      r.Arrive("fusion");
      // Wait (bounded) until C's vision output is on node 1 beside A's.
      for (int i = 0; i < 20000 && temporaries_on_n1() < 3; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      saw_both = temporaries_on_n1() >= 3;  // A's v, A's l, C's v
    }
    return absl::OkStatus();
  };
  Model a(true), c(true);
  c.uploads[0] = core::Upload{c.uploads[0].buffer, core::HostBytes::Owned(std::string(32, '\0'))};  // img = 0
  // B: v = img * vision.w only (node 0).
  const OneOp b(11, "vision.w", 12, "vision.enc", ModalityKind::kVision);
  const core::ExecuteRequest br = b.Request(a.uploads[0].bytes);
  const semantic::GraphSemantics& bs = b.s;

  absl::StatusOr<PlacementExecutor::Ticket> ta = exec->Submit(a.Request(), a.s);
  ASSERT_TRUE(ta.ok());
  ASSERT_TRUE(r.Await("fusion", 1));
  absl::StatusOr<core::ExecuteResult> rb = exec->Execute(br, bs);  // finishes while A waits
  ASSERT_TRUE(rb.ok()) << rb.status();
  EXPECT_EQ(Floats(rb->outputs[0]), std::vector<float>(8, 20.f));
  absl::StatusOr<PlacementExecutor::Ticket> tc = exec->Submit(c.Request(), c.s);
  ASSERT_TRUE(tc.ok());
  absl::StatusOr<core::ExecuteResult> ra = exec->Wait(*std::move(ta));
  absl::StatusOr<core::ExecuteResult> rc = exec->Wait(*std::move(tc));
  ASSERT_TRUE(ra.ok() && rc.ok());
  EXPECT_TRUE(saw_both);
  EXPECT_EQ(Floats(ra->outputs[0]), kExpected);
  EXPECT_EQ(Floats(rc->outputs[0]), (std::vector<float>{100, 200, 300, 400, 500, 600, 700, 800}));
}

// Run B on node 1 touches nothing run A's waiting fusion part touches: it goes ahead of
// it instead of waiting behind it (A's vision only finishes once B is done).
TEST(PlacementExecutorTest, ALaterRunGoesAheadOfWaitingTasksItDoesNotConflictWith) {
  auto n0 = std::make_shared<FakeNode>("p:16");
  auto n1 = std::make_shared<FakeNode>("q:17");
  Placed placed({n0, n1});
  PlacementExecutor* exec = placed.placer();
  Model warm(false);
  ASSERT_TRUE(placed.Execute(warm.Request(), warm.s).ok());
  Rendezvous r;
  bool vision_saw_b = false;
  n0->on_part = [&](const std::string& scope) {
    if (scope == "vision.enc" && r.count("vision") == 0) {
      r.Arrive("vision");
      vision_saw_b = r.Await("b done", 1);
    }
    return absl::OkStatus();
  };
  Model a(true);
  a.keep.clear();  // A keeps nothing: its parts only read the weights
  // B: l = txt * language.w on node 1, reading what A reads, keeping nothing.
  const OneOp b(13, "language.w", 14, "language.enc", ModalityKind::kLanguage);
  const core::ExecuteRequest br = b.Request(a.uploads[1].bytes);
  const semantic::GraphSemantics& bs = b.s;

  absl::StatusOr<PlacementExecutor::Ticket> ta = exec->Submit(a.Request(), a.s);
  ASSERT_TRUE(ta.ok());
  ASSERT_TRUE(r.Await("vision", 1));
  absl::StatusOr<core::ExecuteResult> rb = exec->Execute(br, bs);
  r.Arrive("b done");
  ASSERT_TRUE(rb.ok()) << rb.status();
  EXPECT_EQ(Floats(rb->outputs[0]), (std::vector<float>{100, 200, 300, 400, 500, 600, 700, 800}));
  absl::StatusOr<core::ExecuteResult> ra = exec->Wait(*std::move(ta));
  ASSERT_TRUE(ra.ok()) << ra.status();
  EXPECT_EQ(Floats(ra->outputs[0]), kExpected);
  EXPECT_TRUE(vision_saw_b);
}

TEST(PlacementExecutorTest, ARunFailingInFlightFailsTheRunPlacedBehindItAndLaterRunsStartClean) {
  auto n0 = std::make_shared<FakeNode>("j:10");
  auto n1 = std::make_shared<FakeNode>("k:11");
  Placed placed({n0, n1});
  PlacementExecutor* exec = placed.placer();
  Model warm(false);
  ASSERT_TRUE(placed.Execute(warm.Request(), warm.s).ok());
  Rendezvous r;
  // Run A's vision fails, but only once run B has been submitted behind it.
  n0->on_part = [&](const std::string& scope) -> absl::Status {
    if (scope != "vision.enc" || r.count("failed") > 0) return absl::OkStatus();
    EXPECT_TRUE(r.Await("b submitted", 1));
    r.Arrive("failed");
    return absl::InternalError("vision blew up");
  };
  Model a(true), b(true), c(true);
  absl::StatusOr<PlacementExecutor::Ticket> ta = exec->Submit(a.Request(), a.s);
  absl::StatusOr<PlacementExecutor::Ticket> tb = exec->Submit(b.Request(), b.s);
  ASSERT_TRUE(ta.ok() && tb.ok());
  r.Arrive("b submitted");
  absl::StatusOr<core::ExecuteResult> ra = exec->Wait(*std::move(ta));
  absl::StatusOr<core::ExecuteResult> rb = exec->Wait(*std::move(tb));
  EXPECT_TRUE(absl::IsInternal(ra.status())) << ra.status();
  EXPECT_NE(ra.status().message().find("vision blew up"), absl::string_view::npos);
  EXPECT_TRUE(absl::IsInternal(rb.status())) << rb.status();
  EXPECT_NE(rb.status().message().find("earlier run"), absl::string_view::npos) << rb.status();
  absl::StatusOr<core::ExecuteResult> rc = placed.Execute(c.Request(), c.s);
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(Floats(rc->outputs[0]), kExpected);
}

}  // namespace
}  // namespace genie::scheduler
