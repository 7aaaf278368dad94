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
#include "genie/frontend/remote_device.h"

namespace genie {
namespace {

namespace m = genie::models;
constexpr double kTolerance = 1e-5;

double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kCPU).to(torch::kDouble) - b.to(torch::kCPU).to(torch::kDouble)).abs().max().item<double>();
}

class GpuTest : public ::testing::Test {
 protected:
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
  for (int step = 0; step < 20; ++step) {
    torch::Tensor next = want.select(1, -1).argmax(-1).view({1, 1}).to(torch::kCPU);
    want = local->forward(next.to(cuda_), &lc, lc.length);
    got = remote->forward(next.to(Remote()), &rc, rc.length);
    EXPECT_LE(MaxAbsDiff(got, want), kTolerance) << "token " << step;
  }
  EXPECT_EQ(session_->data_traffic().of(scheduler::StorageClass::kKvCache), 0) << "the KV cache never travels";
}

}  // namespace
}  // namespace genie
