// File: benchmarks/decode_batching_benchmark.cc
// Phase-aware decode batching, side by side in one run: N GPT-2 generation streams (one
// model, one static KV cache per stream, streams at different positions) on one embedded
// genie-node over loopback TCP, each iteration one decode step of every stream captured
// as one graph and read back in one run (frontend::ToCpu). `batched`: the semantic
// scheduler with DecodeBatching (the streams' weight matmuls run once per step);
// `unbatched`: the same scheduler without it (each stream's matmuls run on their own).
// Time per iteration is the time per token of every stream; `tokens_per_s` counts all
// streams' tokens; `batched_fraction` is the share of steps that ran batched (1 for the
// batched cases with N >= 2, else the case fails). On the CPU the node runs each session's
// ops on one thread (NodeOptions::intra_op_threads = 1), for both variants.
//
//   bazel run -c opt //benchmarks:decode_batching_benchmark --
//       --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//   # On a GPU machine (the node's interpreter on cuda:0; tools/device/run_gpu.sh packs it):
//   GENIE_BENCH_DEVICE=cuda:0 device_pack/run.sh decode_batching_benchmark
//       --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//
// Sizes: 0 the tests' toy GPT-2 (dim 64, 2 layers, 0.14 M parameters), 1 a mid-size one
// (dim 512, 4 layers, 8000-word vocabulary: 17 M parameters, 67 MB fp32), 2 GPT-2 small
// (124 M parameters; registered only with GENIE_BENCH_DEVICE set to a CUDA device).
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "benchmarks/bench_session.h"
#include "examples/models/models.h"
#include "genie/client/pipeline.h"
#include "genie/client/session.h"
#include "genie/frontend/remote_device.h"
#include "genie/scheduler/policies.h"
#include "genie/semantic/semantics.h"
#include "genie/transport/tcp.h"

namespace {

namespace models = genie::models;
namespace sched = genie::scheduler;
namespace sem = genie::semantic;

template <class... Os>
using Deployment = genie::Pipeline<genie::Annotations<sem::Phase>, genie::Analyzers<sem::PhaseDetector, sem::WorkloadClassifier>,
                                   sched::SemanticScheduler<Os...>, genie::transport::Tcp>;
using Batched = Deployment<sched::ResidentWeights, sched::KvCacheColocation, sched::JustInTimeTransfers,
                           sched::DecodeBatching>;
using Unbatched = Deployment<sched::ResidentWeights, sched::KvCacheColocation, sched::JustInTimeTransfers>;

std::string NodeDevice() {
  const char* d = std::getenv("GENIE_BENCH_DEVICE");
  return d != nullptr && *d != '\0' ? d : "cpu";
}

models::Gpt2Config ConfigOfSize(int64_t size) {
  models::Gpt2Config c;
  if (size == 1) {
    c.vocab_size = 8000;
    c.dim = 512;
    c.depth = 4;
    c.heads = 8;
  } else if (size == 2) {
    c = models::Gpt2Config::Gpt2Small();
  }
  c.max_positions = 256;  // attention runs over the whole static cache: keep it short
  return c;
}

template <class D>
void BM_DecodeStreams(benchmark::State& state) {
  c10::InferenceMode inference;
  const int streams = static_cast<int>(state.range(0));
  const models::Gpt2Config config = ConfigOfSize(state.range(1));
  genie::SessionOptions options = genie::benchmarks::QuietSessionOptions();
  options.embedded.device = NodeDevice();
  // On the CPU, one intra-op thread for both variants: on a shared 2-vCPU machine an
  // OpenMP fork and join per op (which the batched step's larger outputs would trigger)
  // measures the machine's load, not what batching saves.
  if (NodeDevice() == "cpu") options.embedded.intra_op_threads = 1;
  auto session = genie::benchmarks::StartSessionOrSkip<D>(state, options);
  if (!session) return;
  const torch::Device dev(session->device());
  models::Gpt2 model(config);
  model->to(dev);
  genie::frontend::NameParameters(*model);
  // Each stream's prompt has its own length, so the streams decode at different positions.
  std::vector<models::KvCache> caches;
  std::vector<int64_t> prompt_lengths;
  for (int s = 0; s < streams; ++s) {
    prompt_lengths.push_back(4 + 3 * s);
    caches.push_back(model->NewCache(1, models::KvCacheMode::kStatic, dev));
    (void)model->forward(torch::zeros({1, prompt_lengths.back()}, torch::kLong).to(dev), &caches.back(), 0)
        .to(torch::kCPU);
  }
  const torch::Tensor token = torch::ones({1, 1}, torch::kLong);
  std::vector<torch::Tensor> logits(streams);
  auto step = [&] {
    for (int s = 0; s < streams; ++s) {
      if (caches[s].length + 1 >= config.max_positions) caches[s].length = prompt_lengths[s];
      logits[s] = model->forward(token.to(dev), &caches[s], caches[s].length);
    }
    return genie::frontend::ToCpu(logits);
  };
  for (int i = 0; i < 3; ++i) (void)step();  // programs loaded, CUDA graphs captured
  const sched::DecodeBatchingStats before = session->decode_batching();
  for (auto _ : state) benchmark::DoNotOptimize(step());
  const sched::DecodeBatchingStats after = session->decode_batching();
  const double steps = static_cast<double>(after.decode_graphs - before.decode_graphs);
  const double batched = static_cast<double>(after.batched_runs - before.batched_runs);
  state.counters["streams"] = streams;
  state.counters["tokens_per_s"] = benchmark::Counter(static_cast<double>(streams), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["batched_fraction"] = steps > 0 ? batched / steps : 0;
  if constexpr (std::is_same_v<D, Batched>) {
    if (streams >= 2 && batched != steps) {
      state.SkipWithError(("decode steps were not batched: " + after.ToString()).c_str());
    }
  }
  state.SetLabel(NodeDevice());
}

void Register() {
  const bool cuda = NodeDevice().rfind("cuda", 0) == 0;
  for (int64_t size : {0, 1, 2}) {
    if (size == 2 && !cuda) continue;  // GPT-2 small: a GPU node's case
    for (int64_t n : {1, 2, 4, 8}) {
      benchmark::RegisterBenchmark("BM_DecodeStreams/unbatched", BM_DecodeStreams<Unbatched>)
          ->Args({n, size})->ArgNames({"streams", "size"})->Unit(benchmark::kMillisecond)->UseRealTime();
      benchmark::RegisterBenchmark("BM_DecodeStreams/batched", BM_DecodeStreams<Batched>)
          ->Args({n, size})->ArgNames({"streams", "size"})->Unit(benchmark::kMillisecond)->UseRealTime();
    }
  }
}
const bool kRegistered = (Register(), true);

}  // namespace
