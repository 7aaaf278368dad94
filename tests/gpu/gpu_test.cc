// File: tests/gpu/gpu_test.cc
// Parity on CUDA: models run through Genie on a node whose interpreter uses cuda:0,
// compared with the same models run by local libtorch on CUDA (fp32, TF32 off).
// Skips, saying why, where there is no CUDA device (CI, the CPU machines); run it on a
// GPU machine with tools/device/run_gpu.sh.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include "examples/models/models.h"
#include "examples/report.h"
#include "genie/core/graph.h"
#include "genie/frontend/remote_device.h"
#include "genie/runtime/interpreter.h"
#include "genie/runtime/stream_plan.h"
#include "tests/gpu/two_chains.h"

namespace genie {
namespace {

namespace m = genie::models;
constexpr double kTolerance = 1e-5;

double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kCPU).to(torch::kDouble) - b.to(torch::kCPU).to(torch::kDouble)).abs().max().item<double>();
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
  EXPECT_NE(session_->node_descriptions()[0].find("cuda"), std::string::npos) << session_->node_descriptions()[0];
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
  EXPECT_EQ(session_->data_traffic().up[static_cast<int>(scheduler::StorageClass::kWeight)],
            [&] {
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
  EXPECT_LE(MaxAbsDiff(vit_remote->forward(img.to(Remote())), vit_local->forward(img.to(cuda_))), kTolerance);
  m::BertEncoder bert_local(m::BertConfig{}), bert_remote(m::BertConfig{});
  bert_local->to(cuda_);
  bert_remote->to(Remote());
  torch::Tensor ids = torch::randint(1, 1000, {8, 32}, torch::kLong);
  EXPECT_LE(MaxAbsDiff(bert_remote->forward(ids.to(Remote())), bert_local->forward(ids.to(cuda_))), kTolerance);
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
  EXPECT_EQ(session_->data_traffic().of(scheduler::StorageClass::kKvCache), 0) << "the KV cache never travels";
  const runtime::InterpreterCounters after = runtime::GetInterpreterCounters();
  std::printf("GPT-2 decode, 20 tokens: %lld graph captures, %lld replays, %lld refusals, %lld drops\n",
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
    torch::Tensor r = (torch::randn({64, 64}, torch::TensorOptions().device(Remote())) + x).to(torch::kCPU);
    EXPECT_TRUE(torch::isfinite(r).all().item<bool>());
    draws.push_back(r);
  }
  const runtime::InterpreterCounters after = runtime::GetInterpreterCounters();
  // Each draw carries its own seed (a new program) or, if a program repeats, the capture
  // rule refuses it: either way nothing random is replayed.
  EXPECT_EQ(after.graph_replays, before.graph_replays) << "a random program was replayed";
  EXPECT_GT((draws[0] - draws[1]).abs().max().item<float>(), 0.0f) << "every run draws fresh numbers";
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
    req.uploads.push_back({chains.x, core::HostBytes{x.data_ptr(), static_cast<size_t>(x.nbytes()), nullptr}});
    req.uploads.push_back({chains.w, core::HostBytes{w.data_ptr(), static_cast<size_t>(w.nbytes()), nullptr}});
    absl::StatusOr<core::ExecuteResult> r = interpreter.Execute(req);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->outputs.size(), 1u);
    torch::Tensor got = torch::from_blob(const_cast<void*>(r->outputs[0].data), {chains.n, chains.n});
    EXPECT_LE(MaxAbsDiff(got, want), 1e-4) << "run " << run;
  }
  const runtime::InterpreterCounters after = runtime::GetInterpreterCounters();
  // Run 0 eager on two streams, run 1 captured (two streams inside the graph), 2-3 replayed.
  EXPECT_EQ(after.multi_stream_runs - before.multi_stream_runs, 2);
  EXPECT_EQ(after.graph_captures - before.graph_captures, 1);
  EXPECT_EQ(after.graph_replays - before.graph_replays, 3);
}

}  // namespace
}  // namespace genie
