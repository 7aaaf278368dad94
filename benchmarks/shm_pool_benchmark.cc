// File: benchmarks/shm_pool_benchmark.cc
// The Shm data path on the CPU: one upload of ViT's images (8x3x224x224 fp32, 4.8 MB) and one
// download of BERT's hidden states (8x128x768 fp32, 3.1 MB), through the frontend exactly as
// gpu_benchmark's BM_Upload / BM_Download do, to a genie-node in this process (interpreter on
// the CPU) over shared memory: through the tensor pool (transport::Shm) and through the
// rings alone (transport::ShmRingsOnly), side by side in one run with loopback TCP
// (transport::Tcp, `/tcp`). local_memcpy is the floor:
// one copy of the same bytes, what libtorch's own `.to()` costs on the host.
//
//   bazel run -c opt //benchmarks:shm_pool_benchmark --
//       --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include "benchmarks/bench_session.h"
#include "examples/report.h"
#include "genie/client/remote_executor.h"
#include "genie/client/session.h"
#include "genie/core/testing/graph_builder.h"
#include "genie/frontend/remote_device.h"
#include "genie/runtime/node_server.h"
#include "genie/transport/shm.h"

namespace {

using PoolDeployment = genie::examples::SemanticShmDeployment;
using RingsDeployment = genie::examples::SemanticShmRingsDeployment;
using TcpDeployment = genie::examples::SemanticDeployment;  // loopback TCP, for comparison

template <class D>
std::unique_ptr<genie::Session<D>> StartCpuSession(benchmark::State& state) {
  return genie::benchmarks::StartSessionOrSkip<D>(state, genie::benchmarks::QuietSessionOptions());
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
  for (auto _ : state)
    benchmark::DoNotOptimize(images.to(dev).view({-1}).slice(0, 0, 1).to(torch::kCPU));
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

// The executor alone (no frontend): a run uploading ViT's images, its bytes either in
// ordinary memory (copied into a pool block when the Run is sent, the first design) or
// already in a pool block from Staging() (what `.to(remote)` does: sent as an offset). The
// node's interpreter copies them into its tensor either way; the output is 64 bytes.
void BM_ShmExecutorUpload(benchmark::State& state) {
  const bool staged = state.range(0) == 1;
  genie::runtime::NodeOptions node_options;
  node_options.log_runs = false;
  node_options.log_connections = false;
  node_options.shm_socket = genie::session_internal::EmbeddedShmSocketPath();
  const std::string key = "shm-pool-benchmark-key-0123456789abcdef";
  auto server = genie::runtime::NodeServer::Create("127.0.0.1", 0, key, node_options);
  if (!server.ok()) return state.SkipWithError(std::string(server.status().message()).c_str());
  std::thread serving([&] { (*server)->Serve(); });
  {
    auto exec =
        genie::client::RemoteExecutor<genie::transport::Shm>::Connect(node_options.shm_socket, key);
    if (!exec.ok()) {
      state.SkipWithError(std::string(exec.status().message()).c_str());
    } else {
      constexpr int64_t kImages = 8 * 3 * 224 * 224;
      genie::core::Graph g;
      genie::core::testing::GraphBuilder gb(&g);
      const auto x = gb.Buffer(kImages, genie::core::BufferKind::kHostInput);
      const auto a = gb.Buffer(16, genie::core::BufferKind::kHostInput);
      const auto y = gb.Buffer(16);
      gb.Op("aten::add.Tensor",
            {genie::core::Arg::Tensor(genie::core::testing::Vec(a, 16)),
             genie::core::Arg::Tensor(genie::core::testing::Vec(a, 16)), genie::core::Arg::Int(1)},
            {genie::core::testing::Vec(y, 16)});
      g.outputs().push_back(genie::core::testing::Vec(y, 16));
      const std::string small(64, '\1');
      std::string ordinary(kImages * 4, '\2');
      genie::core::HostBuffer block = (*exec)->Staging(ordinary.size());
      std::memcpy(block.data, ordinary.data(), ordinary.size());
      genie::core::ExecuteRequest r;
      r.graph = &g;
      r.fingerprint = 42;
      r.uploads = {{x, staged ? genie::core::HostBytes{block.data, ordinary.size(), block.owner}
                              : genie::core::HostBytes{ordinary.data(), ordinary.size(), nullptr}},
                   {a, genie::core::HostBytes{small.data(), small.size(), nullptr}}};
      for (auto _ : state) {
        auto got = (*exec)->Execute(r);
        if (!got.ok()) {
          state.SkipWithError(std::string(got.status().message()).c_str());
          break;
        }
      }
      state.counters["pool_allocations_per_run"] =
          benchmark::Counter(static_cast<double>((*exec)->pool()->stats().allocations - 1),
                             benchmark::Counter::kAvgIterations);
    }
  }
  (*server)->Shutdown();
  serving.join();
}

// The floor: one host copy of the bytes into fresh memory.
void BM_LocalMemcpy(benchmark::State& state) {
  torch::Tensor t =
      state.range(0) == 0 ? torch::randn({8, 3, 224, 224}) : torch::randn({8, 128, 768});
  for (auto _ : state) benchmark::DoNotOptimize(t.clone());
  state.SetBytesProcessed(state.iterations() * t.nbytes());
}

BENCHMARK_TEMPLATE(BM_ShmUpload, RingsDeployment)
    ->Name("BM_ShmUpload/rings")
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_ShmUpload, PoolDeployment)
    ->Name("BM_ShmUpload/pool")
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_ShmUpload, TcpDeployment)
    ->Name("BM_ShmUpload/tcp")
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_LocalMemcpy)
    ->Name("BM_ShmUpload/local_memcpy")
    ->Arg(0)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ShmExecutorUpload)
    ->Name("BM_ShmExecutorUpload/copy_at_send")
    ->Arg(0)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ShmExecutorUpload)
    ->Name("BM_ShmExecutorUpload/staged")
    ->Arg(1)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_ShmDownload, RingsDeployment)
    ->Name("BM_ShmDownload/rings")
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_ShmDownload, PoolDeployment)
    ->Name("BM_ShmDownload/pool")
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_ShmDownload, TcpDeployment)
    ->Name("BM_ShmDownload/tcp")
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_LocalMemcpy)
    ->Name("BM_ShmDownload/local_memcpy")
    ->Arg(1)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
