// File: tests/e2e/residency_test.cc
// What a node keeps between the steps of a client stays bounded: a model run step after step
// through a Session (an embedded node with a small per-session memory budget) never holds
// more than one step's inputs and intermediates at a time, whether each step goes as one
// graph or is cut into parts as it is captured (frontend::SetAutoDispatch, the default on
// GPU nodes), and over TCP and the Shm tensor pool alike. A leaked resident buffer per step
// would exceed the budget within the loop, and the run that exceeds it fails.
#include <torch/torch.h>

#include <memory>

#include "absl/cleanup/cleanup.h"
#include "examples/models/models.h"
#include "examples/report.h"
#include "genie/client/session.h"
#include "genie/frontend/remote_device.h"
#include "gtest/gtest.h"

namespace genie::e2e {
namespace {

constexpr int kSteps = 200;
// The toy ViT's weights (about 0.2 MB) plus a few steps' images and activations (each
// step's are about 0.2 MB): a leak of one step's inputs per step passes it by step 40.
constexpr int64_t kBudgetBytes = 8 << 20;

template <class D>
void StepsStayWithinTheBudget(int64_t cut, int64_t growth) {
  torch::NoGradGuard no_grad;
  SessionOptions options;
  options.embedded.log_connections = false;
  options.embedded.log_runs = false;
  options.embedded.memory_budget_bytes = kBudgetBytes;
  auto session = Session<D>::Start(options);
  ASSERT_TRUE(session.ok()) << session.status();
  const torch::Device remote((*session)->device());
  models::ViT local(models::ViTConfig{});
  local->eval();
  models::ViT model(models::ViTConfig{});
  model->eval();
  model->to(remote);
  frontend::NameParameters(*model);
  frontend::SetAutoDispatch(cut, growth);
  absl::Cleanup not_cut = [] { frontend::SetAutoDispatch(0); };  // also when an ASSERT returns
  for (int step = 0; step < kSteps; ++step) {
    const torch::Tensor images = torch::randn({8, 3, 32, 32});
    const torch::Tensor got = model->forward(images.to(remote)).to(torch::kCPU);
    ASSERT_TRUE(frontend::Join().ok()) << "step " << step;
    ASSERT_TRUE(torch::allclose(got, local->forward(images), 1e-5, 1e-5)) << "step " << step;
  }
}

TEST(ResidencyTest, StepsStayWithinTheNodeBudgetOverTcp) {
  StepsStayWithinTheBudget<examples::SemanticDeployment>(0, 1);
}
TEST(ResidencyTest, CutStepsStayWithinTheNodeBudgetOverTcp) {
  StepsStayWithinTheBudget<examples::SemanticDeployment>(16, 4);
}
TEST(ResidencyTest, CutStepsStayWithinTheNodeBudgetOverShm) {
  StepsStayWithinTheBudget<examples::SemanticShmDeployment>(16, 4);
}

// The client keeps what each run's record says for the latest runs only: a client that runs
// step after step and never takes the records stays bounded too.
TEST(ResidencyTest, TheClientKeepsRecordsOfTheLatestRunsOnly) {
  using D = examples::SemanticDeployment;
  torch::NoGradGuard no_grad;
  SessionOptions options;
  options.embedded.log_connections = false;
  options.embedded.log_runs = false;
  auto session = Session<D>::Start(options);
  ASSERT_TRUE(session.ok()) << session.status();
  const torch::Device remote((*session)->device());
  constexpr size_t kMax = PipelineExecutor<D>::kMaxRecords;
  const torch::Tensor x = torch::randn({4});
  for (size_t i = 0; i < kMax + 10; ++i) {
    ASSERT_TRUE(torch::equal((x.to(remote) + 1).to(torch::kCPU), x + 1)) << "run " << i;
  }
  const std::vector<PipelineRecord> records = (*session)->TakeRecords();
  EXPECT_EQ(records.size(), kMax);
  EXPECT_TRUE((*session)->TakeRecords().empty());
}

}  // namespace
}  // namespace genie::e2e
