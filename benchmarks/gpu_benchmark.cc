// File: benchmarks/gpu_benchmark.cc
// Remote vs local on a GPU machine, side by side in one run: ViT-B/16-size and
// BERT-base-size inference at batch 8 and a GPT-2-124M-size decode step (static KV
// cache), each run by local libtorch on CUDA and by Genie with the client and a
// genie-node (interpreter on cuda:0) on the same host over loopback TCP. Every
// iteration reads its result on the host, local and remote alike. Skips without CUDA.
//
//   tools/device/run_gpu.sh   (builds with --config=cuda, packs, runs on the GPU machine)
#include <benchmark/benchmark.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <memory>
#include <optional>

#include "examples/models/models.h"
#include "examples/report.h"
#include "genie/frontend/remote_device.h"

namespace {

namespace m = genie::models;
using Deployment = genie::examples::SemanticDeployment;

bool NoCuda(benchmark::State& state) {
  if (torch::cuda::is_available()) return false;
  state.SkipWithError("no CUDA device: run on a GPU machine (tools/device/run_gpu.sh)");
  return true;
}

std::unique_ptr<genie::Session<Deployment>> StartGpuSession(benchmark::State& state) {
  genie::SessionOptions o;
  o.embedded.device = "cuda:0";
  o.embedded.log_connections = false;
  o.embedded.log_runs = false;
  auto s = genie::Session<Deployment>::Start(o);
  if (!s.ok()) {
    state.SkipWithError(std::string(s.status().message()).c_str());
    return nullptr;
  }
  return std::move(*s);
}

void ReportBytes(benchmark::State& state, const genie::transport::TrafficSnapshot& moved) {
  state.counters["wire_bytes"] = benchmark::Counter(static_cast<double>(genie::examples::WireBytes(moved)),
                                                    benchmark::Counter::kAvgIterations);
}

// ---- ViT-B/16, batch 8 ------------------------------------------------------------------
void BM_VitB16(benchmark::State& state, bool remote) {
  if (NoCuda(state)) return;
  torch::NoGradGuard no_grad;
  const m::ViTConfig c = m::ViTConfig::ViTBase16();
  auto session = remote ? StartGpuSession(state) : nullptr;
  if (remote && !session) return;
  const torch::Device dev = remote ? torch::Device(session->device()) : torch::Device(torch::kCUDA, 0);
  m::ViT model(c);
  model->to(dev);
  if (remote) genie::frontend::NameParameters(*model);
  torch::Tensor images = torch::randn({8, 3, c.image_size, c.image_size});
  for (int i = 0; i < 3; ++i) (void)model->forward(images.to(dev)).to(torch::kCPU);
  const auto before = remote ? session->traffic() : genie::transport::TrafficSnapshot{};
  for (auto _ : state) benchmark::DoNotOptimize(model->forward(images.to(dev)).to(torch::kCPU));
  if (remote) ReportBytes(state, session->traffic() - before);
}

// ---- BERT-base, batch 8, 128 tokens -------------------------------------------------------
void BM_BertBase(benchmark::State& state, bool remote) {
  if (NoCuda(state)) return;
  torch::NoGradGuard no_grad;
  const m::BertConfig c = m::BertConfig::BertBase();
  auto session = remote ? StartGpuSession(state) : nullptr;
  if (remote && !session) return;
  const torch::Device dev = remote ? torch::Device(session->device()) : torch::Device(torch::kCUDA, 0);
  m::BertEncoder model(c);
  model->to(dev);
  if (remote) genie::frontend::NameParameters(*model);
  torch::Tensor ids = torch::randint(1, c.vocab_size, {8, 128}, torch::kLong);
  for (int i = 0; i < 3; ++i) (void)model->forward(ids.to(dev)).to(torch::kCPU);
  const auto before = remote ? session->traffic() : genie::transport::TrafficSnapshot{};
  for (auto _ : state) benchmark::DoNotOptimize(model->forward(ids.to(dev)).to(torch::kCPU));
  if (remote) ReportBytes(state, session->traffic() - before);
}

// ---- GPT-2 124M decode, one token per iteration -------------------------------------------
void BM_Gpt2SmallDecode(benchmark::State& state, bool remote) {
  if (NoCuda(state)) return;
  torch::NoGradGuard no_grad;
  const m::Gpt2Config c = m::Gpt2Config::Gpt2Small();
  auto session = remote ? StartGpuSession(state) : nullptr;
  if (remote && !session) return;
  const torch::Device dev = remote ? torch::Device(session->device()) : torch::Device(torch::kCUDA, 0);
  m::Gpt2 model(c);
  model->to(dev);
  if (remote) genie::frontend::NameParameters(*model);
  m::KvCache cache = model->NewCache(1, m::KvCacheMode::kStatic, dev);
  torch::Tensor token = torch::zeros({1, 1}, torch::kLong);
  (void)model->forward(torch::zeros({1, 16}, torch::kLong).to(dev), &cache, 0).to(torch::kCPU);
  for (int i = 0; i < 3; ++i) (void)model->forward(token.to(dev), &cache, cache.length).to(torch::kCPU);
  const auto before = remote ? session->traffic() : genie::transport::TrafficSnapshot{};
  for (auto _ : state) {
    if (cache.length + 1 >= c.max_positions) cache.length = 16;
    benchmark::DoNotOptimize(model->forward(token.to(dev), &cache, cache.length).to(torch::kCPU));
  }
  if (remote) ReportBytes(state, session->traffic() - before);
}

BENCHMARK_CAPTURE(BM_VitB16, local_cuda, false)->Unit(benchmark::kMillisecond)->MinTime(2);
BENCHMARK_CAPTURE(BM_VitB16, genie_remote, true)->Unit(benchmark::kMillisecond)->MinTime(2);
BENCHMARK_CAPTURE(BM_BertBase, local_cuda, false)->Unit(benchmark::kMillisecond)->MinTime(2);
BENCHMARK_CAPTURE(BM_BertBase, genie_remote, true)->Unit(benchmark::kMillisecond)->MinTime(2);
BENCHMARK_CAPTURE(BM_Gpt2SmallDecode, local_cuda, false)->Unit(benchmark::kMillisecond)->MinTime(2);
BENCHMARK_CAPTURE(BM_Gpt2SmallDecode, genie_remote, true)->Unit(benchmark::kMillisecond)->MinTime(2);

}  // namespace
