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
#include "genie/runtime/interpreter.h"
#include "tests/gpu/two_chains.h"

namespace {

namespace m = genie::models;
using Deployment = genie::examples::SemanticDeployment;

bool NoCuda(benchmark::State& state) {
  if (torch::cuda::is_available()) return false;
  state.SkipWithError("no CUDA device: run on a GPU machine (tools/device/run_gpu.sh)");
  return true;
}

std::unique_ptr<genie::Session<Deployment>> StartGpuSession(benchmark::State& state,
                                                            bool cuda_graphs = true) {
  genie::SessionOptions o;
  o.embedded.device = "cuda:0";
  o.embedded.cuda_graphs = cuda_graphs;
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
void BM_Gpt2SmallDecode(benchmark::State& state, bool remote, bool cuda_graphs = true) {
  if (NoCuda(state)) return;
  torch::NoGradGuard no_grad;
  const m::Gpt2Config c = m::Gpt2Config::Gpt2Small();
  auto session = remote ? StartGpuSession(state, cuda_graphs) : nullptr;
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

// ---- Two independent branches of small matmuls, the interpreter alone ------------------
// 2 chains x 16 products of [256, 256] (each too small to fill the GPU), joined by add;
// per iteration: upload x and w, run, read the sum back. Streams 1 vs 4, graphs off vs on.
void BM_TwoBranches(benchmark::State& state, int streams, bool graphs) {
  if (NoCuda(state)) return;
  genie::testing_gpu::TwoChains chains(256, 16);
  genie::runtime::InterpreterOptions o;
  o.device = "cuda:0";
  o.cuda_streams = streams;
  o.cuda_graphs = graphs;
  genie::runtime::Interpreter interpreter(o);
  torch::Tensor x = torch::randn({chains.n, chains.n});
  torch::Tensor w = torch::randn({chains.n, chains.n}) / 16.0;
  genie::core::ExecuteRequest req;
  req.graph = &chains.graph;
  req.fingerprint = 7;
  req.uploads.push_back({chains.x, genie::core::HostBytes{x.data_ptr(), static_cast<size_t>(x.nbytes()), nullptr}});
  req.uploads.push_back({chains.w, genie::core::HostBytes{w.data_ptr(), static_cast<size_t>(w.nbytes()), nullptr}});
  for (int i = 0; i < 3; ++i) (void)interpreter.Execute(req);
  for (auto _ : state) {
    auto r = interpreter.Execute(req);
    if (!r.ok()) {
      state.SkipWithError(std::string(r.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(r->outputs[0].data);
  }
}

BENCHMARK_CAPTURE(BM_TwoBranches, streams1_eager, 1, false)->Unit(benchmark::kMicrosecond)->MinTime(1);
BENCHMARK_CAPTURE(BM_TwoBranches, streams4_eager, 4, false)->Unit(benchmark::kMicrosecond)->MinTime(1);
BENCHMARK_CAPTURE(BM_TwoBranches, streams1_graph, 1, true)->Unit(benchmark::kMicrosecond)->MinTime(1);
BENCHMARK_CAPTURE(BM_TwoBranches, streams4_graph, 4, true)->Unit(benchmark::kMicrosecond)->MinTime(1);

BENCHMARK_CAPTURE(BM_VitB16, local_cuda, false)->Unit(benchmark::kMillisecond)->MinTime(2);
BENCHMARK_CAPTURE(BM_VitB16, genie_remote, true)->Unit(benchmark::kMillisecond)->MinTime(2);
BENCHMARK_CAPTURE(BM_BertBase, local_cuda, false)->Unit(benchmark::kMillisecond)->MinTime(2);
BENCHMARK_CAPTURE(BM_BertBase, genie_remote, true)->Unit(benchmark::kMillisecond)->MinTime(2);
BENCHMARK_CAPTURE(BM_Gpt2SmallDecode, local_cuda, false)->Unit(benchmark::kMillisecond)->MinTime(2);
BENCHMARK_CAPTURE(BM_Gpt2SmallDecode, genie_remote, true)->Unit(benchmark::kMillisecond)->MinTime(2);
BENCHMARK_CAPTURE(BM_Gpt2SmallDecode, genie_remote_no_graphs, true, false)->Unit(benchmark::kMillisecond)->MinTime(2);

}  // namespace
