// File: tests/gpu/gpu_test.cc
// Parity on CUDA: models run through Genie on a node whose interpreter uses cuda:0,
// compared with the same models run by local libtorch on CUDA (fp32, TF32 off).
// Skips, saying why, where there is no CUDA device (CI, the CPU machines); run it on a
// GPU machine with tools/device/run_gpu.sh.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "examples/models/models.h"
#include "examples/report.h"
#include "genie/core/graph.h"
#include "genie/frontend/remote_device.h"
#include "genie/runtime/interpreter.h"
#include "genie/runtime/stream_plan.h"
#include "tests/gpu/gpu_memory.h"
#include "tests/gpu/two_chains.h"
#include "tools/smi/smi.h"

namespace genie {
namespace {

namespace m = genie::models;
constexpr double kTolerance = 1e-5;

double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kCPU).to(torch::kDouble) - b.to(torch::kCPU).to(torch::kDouble))
      .abs()
      .max()
      .item<double>();
}

class GpuTest : public ::testing::Test {
 protected:
  virtual bool graphs() const { return true; }
  void SetUp() override {
    if (!torch::cuda::is_available()) {
      GTEST_SKIP() << "no CUDA device on this machine: the GPU tests run on the GPU machines "
                      "(tools/device/run_gpu.sh packs and runs them there)";
    }
    at::globalContext().setAllowTF32CuBLAS(false);
    at::globalContext().setAllowTF32CuDNN(false);
    SessionOptions options;
    options.embedded.device = "cuda:0";
    options.embedded.log_connections = false;
    options.embedded.log_runs = false;
    options.embedded.cuda_graphs = graphs();
    auto s = Session<examples::SemanticDeployment>::Start(options);
    ASSERT_TRUE(s.ok()) << s.status();
    session_ = std::move(*s);
  }
  torch::Device Remote() const { return torch::Device(session_->device()); }
  torch::NoGradGuard no_grad_;
  std::unique_ptr<Session<examples::SemanticDeployment>> session_;
  const torch::Device cuda_{torch::kCUDA, 0};
};

TEST_F(GpuTest, NodeRunsOnTheGpu) {
  ASSERT_FALSE(session_->node_descriptions().empty());
  EXPECT_NE(session_->node_descriptions()[0].find("cuda"), std::string::npos)
      << session_->node_descriptions()[0];
}

TEST_F(GpuTest, VqaMatchesLocalCuda) {
  m::VqaConfig c;
  m::Vqa local(c), remote(c);
  local->to(cuda_);
  remote->to(Remote());
  frontend::NameParameters(*remote);
  for (int i = 0; i < 3; ++i) {
    torch::Tensor img = torch::randn({4, 3, c.vision.image_size, c.vision.image_size});
    torch::Tensor q = torch::randint(1, c.language.vocab_size, {4, 12}, torch::kLong);
    torch::Tensor want = local->forward(img.to(cuda_), q.to(cuda_));
    torch::Tensor got = remote->forward(img.to(Remote()), q.to(Remote()));
    EXPECT_LE(MaxAbsDiff(got, want), kTolerance) << "batch " << i;
  }
  // Weights stay on the GPU node: the later batches uploaded images and questions only.
  EXPECT_EQ(session_->data_traffic().up[static_cast<int>(scheduler::StorageClass::kWeight)], [&] {
    int64_t b = 0;
    for (const auto& p : local->parameters()) b += p.numel() * p.element_size();
    for (const auto& p : local->buffers()) b += p.numel() * p.element_size();
    return b;
  }());
}

TEST_F(GpuTest, VitAndBertMatchLocalCuda) {
  m::ViT vit_local(m::ViTConfig{}), vit_remote(m::ViTConfig{});
  vit_local->to(cuda_);
  vit_remote->to(Remote());
  torch::Tensor img = torch::randn({8, 3, 32, 32});
  EXPECT_LE(MaxAbsDiff(vit_remote->forward(img.to(Remote())), vit_local->forward(img.to(cuda_))),
            kTolerance);
  m::BertEncoder bert_local(m::BertConfig{}), bert_remote(m::BertConfig{});
  bert_local->to(cuda_);
  bert_remote->to(Remote());
  torch::Tensor ids = torch::randint(1, 1000, {8, 32}, torch::kLong);
  EXPECT_LE(MaxAbsDiff(bert_remote->forward(ids.to(Remote())), bert_local->forward(ids.to(cuda_))),
            kTolerance);
}

TEST_F(GpuTest, Gpt2DecodeMatchesLocalCudaEveryToken) {
  m::Gpt2Config c;
  m::Gpt2 local(c), remote(c);
  local->to(cuda_);
  remote->to(Remote());
  frontend::NameParameters(*remote);
  m::KvCache lc = local->NewCache(1, m::KvCacheMode::kStatic, cuda_);
  m::KvCache rc = remote->NewCache(1, m::KvCacheMode::kStatic, Remote());
  torch::Tensor prompt = torch::randint(0, c.vocab_size, {1, 6}, torch::kLong);
  torch::Tensor want = local->forward(prompt.to(cuda_), &lc, 0);
  torch::Tensor got = remote->forward(prompt.to(Remote()), &rc, 0);
  EXPECT_LE(MaxAbsDiff(got, want), kTolerance);
  const runtime::InterpreterCounters before = runtime::GetInterpreterCounters();
  for (int step = 0; step < 20; ++step) {
    torch::Tensor next = want.select(1, -1).argmax(-1).view({1, 1}).to(torch::kCPU);
    want = local->forward(next.to(cuda_), &lc, lc.length);
    got = remote->forward(next.to(Remote()), &rc, rc.length);
    EXPECT_LE(MaxAbsDiff(got, want), kTolerance) << "token " << step;
  }
  EXPECT_EQ(session_->data_traffic().of(scheduler::StorageClass::kKvCache), 0)
      << "the KV cache never travels";
  const runtime::InterpreterCounters after = runtime::GetInterpreterCounters();
  std::printf(
      "GPT-2 decode, 20 tokens: %lld graph captures, %lld replays, %lld refusals, %lld drops\n",
      static_cast<long long>(after.graph_captures - before.graph_captures),
      static_cast<long long>(after.graph_replays - before.graph_replays),
      static_cast<long long>(after.graph_refusals - before.graph_refusals),
      static_cast<long long>(after.graph_drops - before.graph_drops));
  if (graphs()) {
    // The decode step is one program: captured once, replayed for (nearly) every token.
    EXPECT_GE(after.graph_replays - before.graph_replays, 15);
  } else {
    EXPECT_EQ(after.graph_replays, before.graph_replays);
  }
}

// genie-smi's graph replays are the node's own: of two GPU nodes in one process, the one
// that served a decode counts its replays and the idle one counts none (the counter was once
// the process's, so both showed the same figure).
TEST(GpuSmiTest, GraphReplaysAreCountedPerNode) {
  if (!torch::cuda::is_available()) {
    GTEST_SKIP() << "no CUDA device on this machine: the GPU tests run on the GPU machines "
                    "(tools/device/run_gpu.sh packs and runs them there)";
  }
  torch::NoGradGuard no_grad;
  absl::StatusOr<std::string> key = session_internal::RandomKey();
  ASSERT_TRUE(key.ok()) << key.status();
  runtime::NodeOptions node_options;
  node_options.device = "cuda:0";
  node_options.log_connections = false;
  node_options.log_runs = false;
  auto busy = session_internal::EmbeddedNode::Start(*key, node_options);
  auto idle = session_internal::EmbeddedNode::Start(*key, node_options);
  ASSERT_TRUE(busy.ok()) << busy.status();
  ASSERT_TRUE(idle.ok()) << idle.status();
  {
    SessionOptions options;
    options.nodes = {(*busy)->address()};
    options.key = *key;
    auto session = Session<examples::SemanticDeployment>::Start(options);
    ASSERT_TRUE(session.ok()) << session.status();
    m::Gpt2 model(m::Gpt2Config{});
    model->to(torch::Device((*session)->device()));
    frontend::NameParameters(*model);
    m::KvCache cache =
        model->NewCache(1, m::KvCacheMode::kStatic, torch::Device((*session)->device()));
    torch::Tensor ids = torch::randint(0, m::Gpt2Config{}.vocab_size, {1, 1}, torch::kLong);
    for (int step = 0; step < 20; ++step) {
      torch::Tensor logits =
          model->forward(ids.to(torch::Device((*session)->device())), &cache, cache.length);
      ids = logits.select(1, -1).argmax(-1).view({1, 1}).to(torch::kCPU);
    }
    ASSERT_TRUE((*session)->Join().ok());
  }
  auto replays = [&](const std::string& address) -> int64_t {
    absl::StatusOr<std::vector<smi::NodeAddress>> node = smi::ParseNodes(address);
    if (!node.ok() || node->size() != 1) return -1;
    smi::NodeReport report = smi::QueryNode(node->front(), *key);
    EXPECT_TRUE(report.status.ok()) << address << ": " << report.status.status();
    if (!report.status.ok()) return -1;
    EXPECT_TRUE(report.status->gpu) << address;
    return static_cast<int64_t>(report.status->graph_replays);
  };
  EXPECT_GE(replays((*busy)->address()), 15) << "the decode step replays its CUDA graph";
  EXPECT_EQ(replays((*idle)->address()), 0) << "a node that ran nothing replayed nothing";
}

using testing::GpuMemory;
using testing::GpuMemoryNow;

// A node serves one session after another without keeping anything of the ended ones on the
// GPU. Each session's interpreter runs on streams of its own; the caching allocator keeps
// freed blocks, and cuBLAS a workspace, per stream, so when every session had new streams
// each one left its workspaces (tens of MB) and stranded its cached blocks, and the private
// pools of its CUDA graphs stayed reserved (together about 12 GB per ViT-B/16 session): the
// seventh such session on an 80 GB H100 ran out of memory. Streams now go back to a
// recycler for the next interpreter, and the last CUDA interpreter to end empties the
// allocator's cache.
TEST(GpuSessionsTest, SessionAfterSessionLeavesNoGpuMemoryBehind) {
  if (!torch::cuda::is_available()) {
    GTEST_SKIP() << "no CUDA device on this machine: the GPU tests run on the GPU machines";
  }
#if !GENIE_WITH_CUDA
  GTEST_SKIP() << "built without --config=cuda: the node cannot run on the GPU";
#endif
  torch::NoGradGuard no_grad;
  std::vector<GpuMemory> after;  // after each session ended
  for (int k = 0; k < 4; ++k) {
    {
      SessionOptions options;
      options.embedded.device = "cuda:0";
      options.embedded.log_connections = false;
      options.embedded.log_runs = false;
      auto session = Session<examples::SemanticDeployment>::Start(options);
      ASSERT_TRUE(session.ok()) << session.status();
      const torch::Device remote((*session)->device());
      m::ViT vit(m::ViTConfig{});
      vit->to(remote);
      frontend::NameParameters(*vit);
      m::BertEncoder bert(m::BertConfig{});
      bert->to(remote);
      frontend::NameParameters(*bert);
      for (int i = 0; i < 4; ++i) {  // eager, captured, replayed
        (void)vit->forward(torch::randn({8, 3, 32, 32}).to(remote)).to(torch::kCPU);
        (void)bert->forward(torch::randint(1, 1000, {8, 32}, torch::kLong).to(remote))
            .to(torch::kCPU);
      }
    }
    torch::cuda::synchronize();
    after.push_back(GpuMemoryNow());
    std::printf("after session %d: %lld bytes in tensors, %lld reserved\n", k,
                static_cast<long long>(after.back().allocated),
                static_cast<long long>(after.back().reserved));
  }
  for (int k = 2; k < 4; ++k) {
    EXPECT_LE(after[k].allocated - after[1].allocated, int64_t{1} << 20)
        << "session " << k << " left " << (after[k].allocated - after[1].allocated)
        << " bytes of GPU tensors behind";
    EXPECT_LE(after[k].reserved - after[1].reserved, int64_t{2} << 20)
        << "session " << k << " left " << (after[k].reserved - after[1].reserved)
        << " bytes reserved behind";
  }
}

// The same parity tests with the node's CUDA graphs off (--nocuda_graphs): eager streams.
class GpuEagerTest : public GpuTest {
 protected:
  bool graphs() const override { return false; }
};

TEST_F(GpuEagerTest, Gpt2DecodeMatchesLocalCudaWithoutGraphs) {
  m::Gpt2Config c;
  m::Gpt2 local(c), remote(c);
  local->to(cuda_);
  remote->to(Remote());
  frontend::NameParameters(*remote);
  m::KvCache lc = local->NewCache(1, m::KvCacheMode::kStatic, cuda_);
  m::KvCache rc = remote->NewCache(1, m::KvCacheMode::kStatic, Remote());
  torch::Tensor prompt = torch::randint(0, c.vocab_size, {1, 6}, torch::kLong);
  torch::Tensor want = local->forward(prompt.to(cuda_), &lc, 0);
  torch::Tensor got = remote->forward(prompt.to(Remote()), &rc, 0);
  const runtime::InterpreterCounters before = runtime::GetInterpreterCounters();
  for (int step = 0; step < 8; ++step) {
    torch::Tensor next = want.select(1, -1).argmax(-1).view({1, 1}).to(torch::kCPU);
    want = local->forward(next.to(cuda_), &lc, lc.length);
    got = remote->forward(next.to(Remote()), &rc, rc.length);
    EXPECT_LE(MaxAbsDiff(got, want), kTolerance) << "token " << step;
  }
  EXPECT_EQ(runtime::GetInterpreterCounters().graph_replays, before.graph_replays);
}

// A program with a random op is never replayed: it runs eagerly every time (fallback rule).
TEST_F(GpuTest, RandomOpsStayEager) {
  const runtime::InterpreterCounters before = runtime::GetInterpreterCounters();
  torch::Tensor x = torch::ones({64, 64}).to(Remote());
  std::vector<torch::Tensor> draws;
  for (int i = 0; i < 4; ++i) {
    torch::Tensor r =
        (torch::randn({64, 64}, torch::TensorOptions().device(Remote())) + x).to(torch::kCPU);
    EXPECT_TRUE(torch::isfinite(r).all().item<bool>());
    draws.push_back(r);
  }
  const runtime::InterpreterCounters after = runtime::GetInterpreterCounters();
  // Each draw carries its own seed (a new program) or, if a program repeats, the capture
  // rule refuses it: either way nothing random is replayed.
  EXPECT_EQ(after.graph_replays, before.graph_replays) << "a random program was replayed";
  EXPECT_GT((draws[0] - draws[1]).abs().max().item<float>(), 0.0f)
      << "every run draws fresh numbers";
}

// ---- The interpreter on its own: two independent branches of matmuls --------------------
// Run on cuda:0 with 4 streams: the branches go to two lanes, the join waits on one event;
// the results match local libtorch on CUDA in eager, captured and replayed runs.
TEST_F(GpuTest, IndependentBranchesRunOnTwoStreamsAndMatch) {
  testing_gpu::TwoChains chains(256, 8);
  ASSERT_TRUE(chains.graph.Validate().ok());
  const runtime::StreamPlan plan = runtime::PlanStreams(chains.graph, 4);
  EXPECT_EQ(plan.num_lanes, 2);
  EXPECT_EQ(plan.cross_lane_waits, 1);

  runtime::InterpreterOptions o;
  o.device = "cuda:0";
  o.cuda_streams = 4;
  runtime::Interpreter interpreter(o);
  const runtime::InterpreterCounters before = runtime::GetInterpreterCounters();
  for (int run = 0; run < 4; ++run) {
    // [n, n], scaled so that eight products stay near unit size.
    torch::Tensor x = torch::randn({chains.n, chains.n});
    torch::Tensor w = torch::randn({chains.n, chains.n}) / std::sqrt(double(chains.n));
    torch::Tensor a = x.to(cuda_), b = x.to(cuda_), wc = w.to(cuda_);
    for (int i = 0; i < chains.depth; ++i) {
      a = torch::mm(a, wc);
      b = torch::mm(wc, b);
    }
    torch::Tensor want = (a + b).to(torch::kCPU);
    core::ExecuteRequest req;
    req.graph = &chains.graph;
    req.fingerprint = 42;
    req.uploads.push_back(
        {chains.x, core::HostBytes{x.data_ptr(), static_cast<size_t>(x.nbytes()), nullptr}});
    req.uploads.push_back(
        {chains.w, core::HostBytes{w.data_ptr(), static_cast<size_t>(w.nbytes()), nullptr}});
    absl::StatusOr<core::ExecuteResult> r = interpreter.Execute(req);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->outputs.size(), 1u);
    torch::Tensor got =
        torch::from_blob(const_cast<void*>(r->outputs[0].data), {chains.n, chains.n});
    EXPECT_LE(MaxAbsDiff(got, want), 1e-4) << "run " << run;
  }
  const runtime::InterpreterCounters after = runtime::GetInterpreterCounters();
  // Run 0 eager on two streams, run 1 captured (two streams inside the graph), 2-3 replayed.
  EXPECT_EQ(after.multi_stream_runs - before.multi_stream_runs, 2);
  EXPECT_EQ(after.graph_captures - before.graph_captures, 1);
  EXPECT_EQ(after.graph_replays - before.graph_replays, 3);
}

// ---- The CUDA-graph rule (interpreter.h), one clause at a time --------------------------
// Hand-built programs on an interpreter of their own, each run four times under one
// fingerprint: a program the rule refuses is counted as refused once, never captured or
// replayed, and still computes the right answer every time.
class GraphRuleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) {
      GTEST_SKIP() << "no CUDA device on this machine: the CUDA-graph rules apply only on the GPU "
                      "machines (tools/device/run_gpu.sh)";
    }
    runtime::InterpreterOptions o;
    o.device = "cuda:0";
    interpreter_ = std::make_unique<runtime::Interpreter>(o);
  }
  static core::TensorRef Vec(core::BufferId b, int64_t n) {
    return core::TensorRef::Contiguous(b, core::DType::kFloat32, {n});
  }
  // What resident `handle` (n floats) holds now, read back by a program of its own; empty
  // when the read failed (the failure is reported).
  torch::Tensor ReadResident(uint64_t handle, int64_t n) {
    core::Graph read;
    core::BufferId b = read.AddBuffer(
        core::Buffer{core::DType::kFloat32, n, core::BufferKind::kResident, "", handle});
    read.outputs().push_back(Vec(b, n));
    core::ExecuteRequest req;
    req.graph = &read;
    absl::StatusOr<core::ExecuteResult> got = interpreter_->Execute(req);
    EXPECT_TRUE(got.ok()) << got.status();
    if (!got.ok()) return torch::Tensor();
    return torch::from_blob(const_cast<void*>(got->outputs.at(0).data), {n}).clone();
  }
  // Runs `g` (input x uploaded from `x`) `times` times under fingerprint `fp`; checks every
  // output equals `want`, and returns the counters' change.
  runtime::InterpreterCounters RunTimes(const core::Graph& g, core::BufferId x,
                                        const torch::Tensor& xs, const torch::Tensor& want,
                                        uint64_t fp, int times = 4) {
    const runtime::InterpreterCounters before = runtime::GetInterpreterCounters();
    for (int i = 0; i < times; ++i) {
      core::ExecuteRequest req;
      req.graph = &g;
      req.fingerprint = fp;
      req.uploads.push_back(
          {x, core::HostBytes{xs.data_ptr(), static_cast<size_t>(xs.nbytes()), nullptr}});
      absl::StatusOr<core::ExecuteResult> r = interpreter_->Execute(req);
      EXPECT_TRUE(r.ok()) << r.status();
      if (!r.ok()) break;
      torch::Tensor got =
          torch::from_blob(const_cast<void*>(r->outputs.at(0).data), want.sizes(), want.options());
      EXPECT_TRUE(torch::equal(got, want)) << "run " << i;
    }
    const runtime::InterpreterCounters after = runtime::GetInterpreterCounters();
    runtime::InterpreterCounters d;
    d.graph_captures = after.graph_captures - before.graph_captures;
    d.graph_replays = after.graph_replays - before.graph_replays;
    d.graph_refusals = after.graph_refusals - before.graph_refusals;
    d.graph_drops = after.graph_drops - before.graph_drops;
    return d;
  }
  std::unique_ptr<runtime::Interpreter> interpreter_;
};

// y = x * 2 (the control: captured on the second run, replayed on the third and fourth).
TEST_F(GraphRuleTest, StaticProgramIsCapturedAndReplayed) {
  constexpr int64_t n = 256;
  core::Graph g;
  core::BufferId x =
      g.AddBuffer(core::Buffer{core::DType::kFloat32, n, core::BufferKind::kHostInput});
  core::BufferId y = g.AddBuffer(core::Buffer{core::DType::kFloat32, n});
  core::Node mul;
  mul.op = g.InternOp("aten::mul.Scalar");
  mul.args = {core::Arg::Tensor(Vec(x, n)), core::Arg::Double(2.0)};
  mul.outputs = {Vec(y, n)};
  g.AddNode(std::move(mul));
  g.outputs().push_back(Vec(y, n));
  torch::Tensor xs = torch::randn({n});
  const runtime::InterpreterCounters d = RunTimes(g, x, xs, xs * 2, 101);
  EXPECT_EQ(d.graph_captures, 1);
  EXPECT_EQ(d.graph_replays, 3);  // the capturing run replays too
  EXPECT_EQ(d.graph_refusals, 0);
}

// Clause 3: an op that synchronizes with the host (aten::equal reads a bool back).
TEST_F(GraphRuleTest, SyncingOpKeepsTheProgramEager) {
  constexpr int64_t n = 256;
  core::Graph g;
  core::BufferId x =
      g.AddBuffer(core::Buffer{core::DType::kFloat32, n, core::BufferKind::kHostInput});
  core::BufferId y = g.AddBuffer(core::Buffer{core::DType::kFloat32, n});
  core::Node mul;
  mul.op = g.InternOp("aten::mul.Scalar");
  mul.args = {core::Arg::Tensor(Vec(x, n)), core::Arg::Double(2.0)};
  mul.outputs = {Vec(y, n)};
  g.AddNode(std::move(mul));
  core::Node eq;
  eq.op = g.InternOp("aten::equal");
  eq.args = {core::Arg::Tensor(Vec(y, n)), core::Arg::Tensor(Vec(x, n))};
  g.AddNode(std::move(eq));
  g.outputs().push_back(Vec(y, n));
  torch::Tensor xs = torch::randn({n});
  const runtime::InterpreterCounters d = RunTimes(g, x, xs, xs * 2, 102);
  EXPECT_EQ(d.graph_captures, 0);
  EXPECT_EQ(d.graph_replays, 0);
  EXPECT_EQ(d.graph_refusals, 1) << "refused once, when it would otherwise have been captured";
}

// A capture that fails part-way (here x[x > 0]: boolean indexing synchronizes to learn its
// output size, which no op list can foresee for every op) leaves the program eager and gives
// the capture's memory pool back. Before, the caching allocator kept such a capture as under
// way for the rest of the process: frees with cross-stream uses were deferred for good and
// emptyCache threw, so a node never returned the memory of ended sessions.
TEST_F(GraphRuleTest, FailedCaptureStaysEagerAndGivesItsPoolBack) {
  constexpr int64_t n = 256;
  core::Graph g;
  core::BufferId x =
      g.AddBuffer(core::Buffer{core::DType::kFloat32, n, core::BufferKind::kHostInput});
  core::BufferId mask = g.AddBuffer(core::Buffer{core::DType::kBool, n});
  constexpr int64_t kPositive = n / 2 - 1;  // x = -128 ... 127
  core::BufferId y = g.AddBuffer(core::Buffer{core::DType::kFloat32, kPositive});
  core::Node gt;
  gt.op = g.InternOp("aten::gt.Scalar");
  gt.args = {core::Arg::Tensor(Vec(x, n)), core::Arg::Double(0.0)};
  gt.outputs = {core::TensorRef::Contiguous(mask, core::DType::kBool, {n})};
  g.AddNode(std::move(gt));
  core::Node index;
  index.op = g.InternOp("aten::index.Tensor");
  index.args = {core::Arg::Tensor(Vec(x, n)),
                core::Arg::OptionalTensorList(
                    {core::TensorRef::Contiguous(mask, core::DType::kBool, {n})}, {1})};
  index.outputs = {Vec(y, kPositive)};
  g.AddNode(std::move(index));
  g.outputs().push_back(Vec(y, kPositive));
  torch::Tensor xs = torch::arange(-n / 2, n / 2, torch::kFloat32);
  const runtime::InterpreterCounters d = RunTimes(g, x, xs, xs.index({xs > 0}), 107);
  EXPECT_EQ(d.graph_captures, 0);
  EXPECT_EQ(d.graph_replays, 0);
  EXPECT_EQ(d.graph_refusals, 1) << "the capture was tried once and failed";
  torch::cuda::synchronize();
  EXPECT_EQ(testing::EmptyCudaCache(), "")
      << "the caching allocator still counts the failed capture as under way";
}

// Clause 3: an op that names another device (a copy to the CPU inside the program).
TEST_F(GraphRuleTest, OpNamingTheCpuKeepsTheProgramEager) {
  constexpr int64_t n = 256;
  core::Graph g;
  core::BufferId x =
      g.AddBuffer(core::Buffer{core::DType::kFloat32, n, core::BufferKind::kHostInput});
  core::BufferId y = g.AddBuffer(core::Buffer{core::DType::kFloat32, n});
  core::Node to;
  to.op = g.InternOp("aten::to.device");
  to.args = {core::Arg::Tensor(Vec(x, n)),
             core::Arg::Device(0 /* kCPU */, 0),
             core::Arg::Int(static_cast<int64_t>(core::DType::kFloat32)),
             core::Arg::Bool(false),
             core::Arg::Bool(true),
             core::Arg::None()};
  to.outputs = {Vec(y, n)};
  g.AddNode(std::move(to));
  g.outputs().push_back(Vec(y, n));
  torch::Tensor xs = torch::randn({n});
  const runtime::InterpreterCounters d = RunTimes(g, x, xs, xs, 103);
  EXPECT_EQ(d.graph_captures, 0);
  EXPECT_EQ(d.graph_replays, 0);
  EXPECT_EQ(d.graph_refusals, 1);
}

// Clause 4: the warm-up run left a tensor on the CPU (scalar_tensor without a device makes
// a CPU tensor, which mul then reads as a scalar): CPU fallback, so never a graph.
TEST_F(GraphRuleTest, CpuTensorInTheWarmUpKeepsTheProgramEager) {
  constexpr int64_t n = 256;
  core::Graph g;
  core::BufferId x =
      g.AddBuffer(core::Buffer{core::DType::kFloat32, n, core::BufferKind::kHostInput});
  core::BufferId s = g.AddBuffer(core::Buffer{core::DType::kFloat32, 1});
  core::BufferId y = g.AddBuffer(core::Buffer{core::DType::kFloat32, n});
  core::Node scalar;
  scalar.op = g.InternOp("aten::scalar_tensor");
  scalar.args = {core::Arg::Double(3.0), core::Arg::None(), core::Arg::None(), core::Arg::None(),
                 core::Arg::None()};
  scalar.outputs = {core::TensorRef::Contiguous(s, core::DType::kFloat32, {})};
  g.AddNode(std::move(scalar));
  core::Node mul;
  mul.op = g.InternOp("aten::mul.Tensor");
  mul.args = {core::Arg::Tensor(Vec(x, n)),
              core::Arg::Tensor(core::TensorRef::Contiguous(s, core::DType::kFloat32, {}))};
  mul.outputs = {Vec(y, n)};
  g.AddNode(std::move(mul));
  g.outputs().push_back(Vec(y, n));
  torch::Tensor xs = torch::randn({n});
  const runtime::InterpreterCounters d = RunTimes(g, x, xs, xs * 3, 104);
  EXPECT_EQ(d.graph_captures, 0);
  EXPECT_EQ(d.graph_replays, 0);
  EXPECT_EQ(d.graph_refusals, 1);
}

// A resident input that moves every run (a tensor crossing a cut of an auto-dispatched step
// is new each step): after one drop the graph reads it from a private copy and keeps
// replaying, with each run's values. One that an op writes in place is copied back after
// the replay, so the resident itself holds what the run wrote.
TEST_F(GraphRuleTest, MovedResidentInputsAreCopiedInAndWrittenOnesBackOut) {
  constexpr int64_t n = 4096;
  for (bool written : {false, true}) {
    SCOPED_TRACE(written ? "written in place" : "read only");
    core::Graph keep;  // uploads x and keeps it under the graph's handle
    core::BufferId kx =
        keep.AddBuffer(core::Buffer{core::DType::kFloat32, n, core::BufferKind::kHostInput});
    core::Graph g;  // y = r * 3 (or r += 1; y = r * 3), r resident
    core::BufferId r =
        g.AddBuffer(core::Buffer{core::DType::kFloat32, n, core::BufferKind::kResident});
    core::BufferId y = g.AddBuffer(core::Buffer{core::DType::kFloat32, n});
    if (written) {
      core::Node add;
      add.op = g.InternOp("aten::add_.Scalar");
      add.args = {core::Arg::Tensor(Vec(r, n)), core::Arg::Double(1.0), core::Arg::Double(1.0)};
      add.outputs = {Vec(r, n)};
      add.writes = {r};
      g.AddNode(std::move(add));
    }
    core::Node mul;
    mul.op = g.InternOp("aten::mul.Scalar");
    mul.args = {core::Arg::Tensor(Vec(r, n)), core::Arg::Double(3.0)};
    mul.outputs = {Vec(y, n)};
    g.AddNode(std::move(mul));
    g.outputs().push_back(Vec(y, n));
    const runtime::InterpreterCounters before = runtime::GetInterpreterCounters();
    std::vector<torch::Tensor> alive;  // earlier steps' tensors stay resident a while
    for (int step = 0; step < 8; ++step) {
      const uint64_t handle = 1000 + step + (written ? 100 : 0);
      torch::Tensor xs = torch::randn({n});
      keep.mutable_buffer(kx).handle = handle;
      core::ExecuteRequest put;
      put.graph = &keep;
      put.uploads.push_back(
          {kx, core::HostBytes{xs.data_ptr(), static_cast<size_t>(xs.nbytes()), nullptr}});
      put.keep = {kx};
      if (step >= 2) put.release = {handle - 2};
      ASSERT_TRUE(interpreter_->Execute(put).ok());
      g.mutable_buffer(r).handle = handle;
      core::ExecuteRequest run;
      run.graph = &g;
      run.fingerprint = written ? 106 : 105;
      absl::StatusOr<core::ExecuteResult> got = interpreter_->Execute(run);
      ASSERT_TRUE(got.ok()) << got.status();
      torch::Tensor want = (written ? xs + 1 : xs) * 3;
      torch::Tensor out = torch::from_blob(const_cast<void*>(got->outputs.at(0).data), {n});
      EXPECT_TRUE(torch::allclose(out, want)) << "step " << step;
      // The resident as the run left it, read by another program.
      torch::Tensor now = ReadResident(handle, n);
      ASSERT_TRUE(now.defined());
      EXPECT_TRUE(torch::equal(now, written ? xs + 1 : xs)) << "step " << step;
      alive.push_back(xs);
    }
    // Run 0 eager, run 1 captured, run 2 dropped and recaptured with the copy, 3-7 replayed.
    const runtime::InterpreterCounters after = runtime::GetInterpreterCounters();
    EXPECT_EQ(after.graph_drops - before.graph_drops, 1);
    EXPECT_EQ(after.graph_captures - before.graph_captures, 2);
    EXPECT_EQ(after.graph_replays - before.graph_replays, 7);
  }
}

// A node receives uploads into Interpreter::PinnedUploadArena and runs copy from there
// without waiting; the next call waits for those copies, so no run reads the next one's
// bytes. Ten runs keep their results on the GPU (no host sync between them), then all are
// read back.
TEST_F(GraphRuleTest, PinnedUploadArenaIsNotOverwrittenWhileCopying) {
  constexpr int64_t n = int64_t{1} << 20;  // 4 MiB per upload
  core::Graph g;
  core::BufferId x =
      g.AddBuffer(core::Buffer{core::DType::kFloat32, n, core::BufferKind::kHostInput});
  core::BufferId y = g.AddBuffer(core::Buffer{core::DType::kFloat32, n});
  core::Node mul;
  mul.op = g.InternOp("aten::mul.Scalar");
  mul.args = {core::Arg::Tensor(Vec(x, n)), core::Arg::Double(2.0)};
  mul.outputs = {Vec(y, n)};
  g.AddNode(std::move(mul));
  std::vector<torch::Tensor> sent;
  for (int k = 0; k < 10; ++k) {
    absl::StatusOr<char*> arena = interpreter_->PinnedUploadArena(n * 4);
    ASSERT_TRUE(arena.ok()) << arena.status();
    torch::Tensor xs = torch::randn({n});
    std::memcpy(*arena, xs.data_ptr(), n * 4);
    g.mutable_buffer(y).handle = 500 + k;
    core::ExecuteRequest req;
    req.graph = &g;
    req.fingerprint = 107;
    req.uploads.push_back({x, core::HostBytes{*arena, static_cast<size_t>(n * 4), nullptr}});
    req.keep = {y};
    ASSERT_TRUE(interpreter_->Execute(req).ok());
    sent.push_back(xs);
  }
  for (int k = 0; k < 10; ++k) {
    torch::Tensor out = ReadResident(static_cast<uint64_t>(500 + k), n);
    ASSERT_TRUE(out.defined());
    EXPECT_TRUE(torch::equal(out, sent[k] * 2)) << "run " << k;
  }
}

}  // namespace
}  // namespace genie
