// File: benchmarks/shm_pool_benchmark.cc
// The Shm data path on the CPU: one upload of ViT's images (8x3x224x224 fp32, 4.8 MB) and one
// download of BERT's hidden states (8x128x768 fp32, 3.1 MB), through the frontend exactly as
// gpu_benchmark's BM_Upload / BM_Download do, to a genie-node in this process (interpreter on
// the CPU) over shared memory: through the tensor pool (transport::Shm) and through the
// rings alone (transport::ShmRingsOnly), side by side in one run. local_memcpy is the floor:
// one copy of the same bytes, what libtorch's own `.to()` costs on the host.
//
//   bazel run -c opt //benchmarks:shm_pool_benchmark --
//       --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <memory>
#include <string>

#include "examples/report.h"
#include "genie/client/session.h"
#include "genie/frontend/remote_device.h"

namespace {

using PoolDeployment = genie::examples::SemanticShmDeployment;
using RingsDeployment = genie::examples::SemanticShmRingsDeployment;

template <class D>
std::unique_ptr<genie::Session<D>> StartCpuSession(benchmark::State& state) {
  genie::SessionOptions o;
  o.embedded.log_connections = false;
  o.embedded.log_runs = false;
  auto s = genie::Session<D>::Start(o);
  if (!s.ok()) {
    state.SkipWithError(std::string(s.status().message()).c_str());
    return nullptr;
  }
  return std::move(*s);
}

// Upload: the images to the node, one element read back.
template <class D>
void BM_ShmUpload(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  auto session = StartCpuSession<D>(state);
  if (!session) return;
  const torch::Device dev(session->device());
  torch::Tensor images = torch::randn({8, 3, 224, 224});
  for (int i = 0; i < 3; ++i) (void)images.to(dev).view({-1}).slice(0, 0, 1).to(torch::kCPU);
  for (auto _ : state) benchmark::DoNotOptimize(images.to(dev).view({-1}).slice(0, 0, 1).to(torch::kCPU));
  state.SetBytesProcessed(state.iterations() * images.nbytes());
}

// Download: resident hidden states scaled by one op on the node and read back.
template <class D>
void BM_ShmDownload(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  auto session = StartCpuSession<D>(state);
  if (!session) return;
  const torch::Device dev(session->device());
  torch::Tensor hidden = torch::randn({8, 128, 768}).to(dev);
  for (int i = 0; i < 3; ++i) (void)(hidden * 2.0).to(torch::kCPU);
  for (auto _ : state) benchmark::DoNotOptimize((hidden * 2.0).to(torch::kCPU));
  state.SetBytesProcessed(state.iterations() * 8 * 128 * 768 * 4);
}

// The floor: one host copy of the bytes into fresh memory.
void BM_LocalMemcpy(benchmark::State& state) {
  torch::Tensor t = state.range(0) == 0 ? torch::randn({8, 3, 224, 224}) : torch::randn({8, 128, 768});
  for (auto _ : state) benchmark::DoNotOptimize(t.clone());
  state.SetBytesProcessed(state.iterations() * t.nbytes());
}

BENCHMARK_TEMPLATE(BM_ShmUpload, RingsDeployment)->Name("BM_ShmUpload/rings")->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_ShmUpload, PoolDeployment)->Name("BM_ShmUpload/pool")->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_LocalMemcpy)->Name("BM_ShmUpload/local_memcpy")->Arg(0)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_ShmDownload, RingsDeployment)->Name("BM_ShmDownload/rings")->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_ShmDownload, PoolDeployment)->Name("BM_ShmDownload/pool")->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_LocalMemcpy)->Name("BM_ShmDownload/local_memcpy")->Arg(1)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace

