// File: benchmarks/scheduler_benchmark.cc
// The same models, side by side in one run: local libtorch (eager CPU), Genie's
// semantic pipeline and the semantics-blind baseline, each remote run on an embedded
// genie-node over loopback TCP. Reports latency per inference and wire bytes per
// inference (counter `wire_bytes`), so ratios come from one run on one machine.
//
//   bazel run -c opt //benchmarks:scheduler_benchmark --
//       --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <memory>

#include "examples/models/models.h"
#include "examples/report.h"
#include "genie/frontend/remote_device.h"

namespace {

namespace models = genie::models;
using genie::examples::BlindDeployment;
using genie::examples::SemanticDeployment;

genie::SessionOptions Quiet() {
  genie::SessionOptions o;
  o.embedded.log_connections = false;
  o.embedded.log_runs = false;
  return o;
}

// ---- VQA: one batch of 4 questions per iteration -------------------------------------
struct VqaInputs {
  models::VqaConfig config;
  torch::Tensor images, questions;
  VqaInputs() {
    torch::manual_seed(3);
    images = torch::randn({4, config.vision.channels, config.vision.image_size, config.vision.image_size});
    questions = torch::randint(1, config.language.vocab_size, {4, 12}, torch::kLong);
  }
};

void BM_VqaLocal(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  VqaInputs in;
  models::Vqa model(in.config);
  model->eval();
  for (auto _ : state) benchmark::DoNotOptimize(model->forward(in.images, in.questions));
  state.counters["wire_bytes"] = 0;
}

template <class Deployment>
void BM_VqaRemote(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  VqaInputs in;
  auto session = genie::Session<Deployment>::Start(Quiet());
  if (!session.ok()) {
    state.SkipWithError(std::string(session.status().message()).c_str());
    return;
  }
  const torch::Device dev((*session)->device());
  models::Vqa model(in.config);
  model->eval();
  model->to(dev);
  genie::frontend::NameParameters(*model);
  for (int i = 0; i < 3; ++i) (void)model->forward(in.images.to(dev), in.questions.to(dev)).to(torch::kCPU);
  const auto before = (*session)->traffic();
  for (auto _ : state) {
    benchmark::DoNotOptimize(model->forward(in.images.to(dev), in.questions.to(dev)).to(torch::kCPU));
  }
  const auto moved = (*session)->traffic() - before;
  state.counters["wire_bytes"] = benchmark::Counter(static_cast<double>(genie::examples::WireBytes(moved)),
                                                    benchmark::Counter::kAvgIterations);
}

// ---- GPT-2 decode: one token per iteration, static KV cache --------------------------
void BM_Gpt2DecodeLocal(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  models::Gpt2Config config;
  config.max_positions = 1 << 14;
  models::Gpt2 model(config);
  model->eval();
  models::KvCache cache = model->NewCache(1, models::KvCacheMode::kStatic, torch::kCPU);
  torch::Tensor token = torch::zeros({1, 1}, torch::kLong);
  (void)model->forward(torch::zeros({1, 8}, torch::kLong), &cache, 0);
  for (auto _ : state) {
    if (cache.length + 1 >= config.max_positions) cache.length = 8;
    benchmark::DoNotOptimize(model->forward(token, &cache, cache.length));
  }
  state.counters["wire_bytes"] = 0;
}

template <class Deployment>
void BM_Gpt2DecodeRemote(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  auto session = genie::Session<Deployment>::Start(Quiet());
  if (!session.ok()) {
    state.SkipWithError(std::string(session.status().message()).c_str());
    return;
  }
  const torch::Device dev((*session)->device());
  models::Gpt2Config config;
  config.max_positions = 1 << 14;
  models::Gpt2 model(config);
  model->eval();
  model->to(dev);
  genie::frontend::NameParameters(*model);
  models::KvCache cache = model->NewCache(1, models::KvCacheMode::kStatic, dev);
  torch::Tensor token = torch::zeros({1, 1}, torch::kLong);
  (void)model->forward(torch::zeros({1, 8}, torch::kLong).to(dev), &cache, 0).to(torch::kCPU);
  for (int i = 0; i < 3; ++i) (void)model->forward(token.to(dev), &cache, cache.length).to(torch::kCPU);
  const auto before = (*session)->traffic();
  for (auto _ : state) {
    if (cache.length + 1 >= config.max_positions) cache.length = 8;
    benchmark::DoNotOptimize(model->forward(token.to(dev), &cache, cache.length).to(torch::kCPU));
  }
  const auto moved = (*session)->traffic() - before;
  state.counters["wire_bytes"] = benchmark::Counter(static_cast<double>(genie::examples::WireBytes(moved)),
                                                    benchmark::Counter::kAvgIterations);
}

BENCHMARK(BM_VqaLocal)->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_VqaRemote, SemanticDeployment)->Name("BM_VqaRemote/semantic")->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_VqaRemote, BlindDeployment)->Name("BM_VqaRemote/blind")->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Gpt2DecodeLocal)->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_Gpt2DecodeRemote, SemanticDeployment)->Name("BM_Gpt2DecodeRemote/semantic")->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_Gpt2DecodeRemote, BlindDeployment)->Name("BM_Gpt2DecodeRemote/blind")->Unit(benchmark::kMillisecond);

}  // namespace
