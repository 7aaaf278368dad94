// File: benchmarks/capture_benchmark.cc
// What capturing one op costs on remote_accelerator, on a ~1,000-op GPT-2 decode step
// (static KV cache: every step has identical shapes), in one run:
//   BM_CaptureFirst   - capture after ClearCaptureCache() (shape inference for every op
//                       shape not seen earlier in the step: the layers repeat, so ~2%)
//   BM_CaptureHit     - capture with a warm capture cache (the steady state of decoding)
//   BM_CaptureNoCache - capture with the cache disabled: shape inference on every op
//   BM_EagerCpu      - the same decode step run eagerly on CPU tensors (the dispatcher's
//                      per-op cost plus tiny kernels): the reference
// Each reports `ns_per_op` (time per captured op; eager divided by the same op count) and
// `ops` (ops captured per step, from GetCaptureStats). Goals: <= 1000 ns/op on a hit,
// <= 10000 ns/op on first capture.
//
//   bazel run -c opt //benchmarks:capture_benchmark -- --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true   (one command line)
//
// Timing choice: the captured graph must be executed (Flush) between iterations, or the
// pending graph would grow without bound, and its execution is not capture cost. Each
// iteration times only the forward() call with a steady clock and reports it through
// UseManualTime/SetIterationTime; the Flush (and ClearCaptureCache for the first-capture
// case) run outside the timed span. This avoids PauseTiming/ResumeTiming, whose own cost
// would otherwise be charged to the timed region.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "examples/models/models.h"
#include "genie/frontend/remote_device.h"

namespace genie {
namespace {

using models::Gpt2;
using models::Gpt2Config;
using models::KvCache;
using models::KvCacheMode;

constexpr int64_t kTargetOps = 1000;
constexpr int64_t kPosition = 16;  // the decode step writes this cache slot every iteration

torch::Device Remote() { return torch::Device(std::string(frontend::EnsureRegistered()) + ":0"); }

Gpt2Config SmallDims(int64_t depth) {
  Gpt2Config c;  // 64 dim, 4 heads, 512 vocab, 64 positions: op overhead dominates
  c.depth = depth;
  return c;
}

// A model, its static cache and one decode token, on one device.
struct DecodeStep {
  DecodeStep(int64_t depth, torch::Device device)
      : model(SmallDims(depth)),
        cache(),
        token(torch::full({1, 1}, 7, torch::kLong)),
        device(device) {
    model->to(device);
    cache = model->NewCache(/*batch=*/1, KvCacheMode::kStatic, device);
  }
  // One decode step at kPosition; returns logits [1, 1, vocab] on `device`.
  torch::Tensor Run() {
    cache.length = kPosition;
    return model(token.to(device), &cache, kPosition);
  }
  Gpt2 model;
  KvCache cache;
  torch::Tensor token;  // [1, 1] on the CPU, moved every step as a user program would
  torch::Device device;
};

// Ops captured by one warm decode step of a `depth`-layer model.
int64_t OpsPerStep(int64_t depth) {
  DecodeStep step(depth, Remote());
  (void)step.Run().to(torch::kCPU);  // uploads weights, fills the capture cache
  frontend::ResetCaptureStats();
  (void)step.Run().to(torch::kCPU);
  return frontend::GetCaptureStats().ops_captured;
}

// The shared fixture: depth chosen so a step captures about kTargetOps ops.
struct Fixture {
  Fixture() {
    torch::NoGradGuard no_grad;
    const int64_t one = OpsPerStep(1), two = OpsPerStep(2);
    const int64_t per_layer = two - one, fixed = one - per_layer;
    depth = std::max<int64_t>(1, std::llround(static_cast<double>(kTargetOps - fixed) / per_layer));
    remote = std::make_unique<DecodeStep>(depth, Remote());
    eager = std::make_unique<DecodeStep>(depth, torch::kCPU);
    (void)remote->Run().to(torch::kCPU);  // weights resident, cache warm
    frontend::ResetCaptureStats();
    (void)remote->Run().to(torch::kCPU);
    ops = frontend::GetCaptureStats().ops_captured;
    views = frontend::GetCaptureStats().views;
    std::fprintf(stderr,
                 "capture_benchmark: GPT-2 decode step, %lld layers x (64 dim, 4 heads): %lld ops, "
                 "%lld views\n",
                 static_cast<long long>(depth), static_cast<long long>(ops),
                 static_cast<long long>(views));
  }
  int64_t depth = 0;
  int64_t ops = 0;
  int64_t views = 0;
  std::unique_ptr<DecodeStep> remote, eager;
};

Fixture& Get() {
  static Fixture* fixture = new Fixture();
  return *fixture;
}

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// CPU time of the calling thread: on a shared machine, what the timed span itself
// consumed, whoever else was running.
double ThreadCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// ns_per_op: wall time of the timed spans per op; cpu_ns_per_op: this thread's CPU time
// in them per op.
void ReportPerOp(benchmark::State& state, double total_seconds, double cpu_seconds, int64_t ops) {
  const double per = state.iterations() == 0 ? 0.0 : 1e9 / (static_cast<double>(state.iterations()) * ops);
  state.counters["ops"] = static_cast<double>(ops);
  state.counters["ns_per_op"] = total_seconds * per;
  state.counters["cpu_ns_per_op"] = cpu_seconds * per;
}

enum class CacheState {
  kCleared,   // ClearCaptureCache() before each step: the first step of a fresh process
  kWarm,      // the steady state of decoding: the capture cache hits, the step replays
  kWarmNoReplay,  // the capture cache hits, step replay off: every node is built
  kDisabled,  // SetCaptureCacheEnabled(false): shape inference on every op (upper bound)
};

// What each iteration times.
enum class Span {
  kCapture,  // forward() only
  kClient,   // forward() and Dispatch(): everything the client does per step (capture,
             // dead-code elimination, uploads gathered, handed to the executor)
};

// How autograd is kept out of the way: torch::NoGradGuard (autograd kernels still run
// and views still record their base), or c10::InferenceMode (PyTorch's mode for
// inference: autograd and view tracking are skipped in the dispatcher).
enum class Mode { kNoGrad, kInference };

struct ModeGuard {
  explicit ModeGuard(Mode mode) {
    if (mode == Mode::kInference) inference.emplace(true);
  }
  torch::NoGradGuard no_grad;
  std::optional<c10::InferenceMode> inference;
};

// Captures one decode step per iteration; cache setup and the wait for execution are
// untimed.
void CaptureLoop(benchmark::State& state, CacheState cache, Span span = Span::kCapture,
                 Mode mode = Mode::kNoGrad) {
  ModeGuard guard(mode);
  Fixture& f = Get();
  frontend::SetCaptureCacheEnabled(cache != CacheState::kDisabled);
  frontend::SetStepReplayEnabled(cache != CacheState::kWarmNoReplay);
  if (cache != CacheState::kCleared) {
    // Two untimed steps in this setting (the first may still run under the last
    // benchmark's): the template the timed steps replay is recorded with the settings
    // and autograd mode being measured.
    for (int i = 0; i < 2; ++i) {
      (void)f.remote->Run();
      if (absl::Status s = frontend::Flush(); !s.ok()) state.SkipWithError(std::string(s.message()).c_str());
    }
  }
  double total = 0, cpu = 0;
  int64_t misses = 0, captured = 0, replayed = 0, unboxed = 0;
  for (auto _ : state) {
    if (cache == CacheState::kCleared) frontend::ClearCaptureCache();
    frontend::ResetCaptureStats();
    const double c0 = ThreadCpuSeconds();
    const auto t0 = std::chrono::steady_clock::now();
    torch::Tensor logits = f.remote->Run();
    if (span == Span::kClient) {
      if (absl::Status s = frontend::Dispatch(); !s.ok()) {
        state.SkipWithError(std::string(s.message()).c_str());
        break;
      }
    }
    const auto t1 = std::chrono::steady_clock::now();
    cpu += ThreadCpuSeconds() - c0;
    const frontend::CaptureStats stats = frontend::GetCaptureStats();
    misses += stats.cache_misses;
    captured += stats.ops_captured;
    replayed += stats.ops_replayed;
    unboxed += stats.ops_unboxed;
    if (absl::Status s = frontend::Flush(); !s.ok()) {
      state.SkipWithError(std::string(s.message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(logits);
    state.SetIterationTime(Seconds(t1 - t0));
    total += Seconds(t1 - t0);
  }
  frontend::SetCaptureCacheEnabled(true);
  frontend::SetStepReplayEnabled(true);
  const double steps = static_cast<double>(state.iterations());
  if (steps > 0 && captured != f.ops * static_cast<int64_t>(state.iterations())) {
    state.SkipWithError("the decode step captured a different number of ops than in setup");
  }
  const bool warm = cache == CacheState::kWarm || cache == CacheState::kWarmNoReplay;
  if (warm && misses != 0) state.SkipWithError("warm capture missed the capture cache");
  if (!warm && steps > 0 && misses == 0) state.SkipWithError("no shape inference ran");
  if (cache == CacheState::kWarm && replayed < captured) state.SkipWithError("the warm step did not replay");
  state.counters["cache_misses_per_step"] = steps == 0 ? 0.0 : static_cast<double>(misses) / steps;
  state.counters["replayed_per_step"] = steps == 0 ? 0.0 : static_cast<double>(replayed) / steps;
  state.counters["unboxed_per_step"] = steps == 0 ? 0.0 : static_cast<double>(unboxed) / steps;
  ReportPerOp(state, total, cpu, f.ops);
}

// The layers repeat, so after ClearCaptureCache only the first layer's ops (and a few
// others) miss; the rest hit entries made earlier in the same step.
void BM_CaptureFirst(benchmark::State& state) { CaptureLoop(state, CacheState::kCleared); }
void BM_CaptureHit(benchmark::State& state) { CaptureLoop(state, CacheState::kWarm); }
void BM_CaptureHitNoReplay(benchmark::State& state) { CaptureLoop(state, CacheState::kWarmNoReplay); }
void BM_ClientStepHit(benchmark::State& state) { CaptureLoop(state, CacheState::kWarm, Span::kClient); }
void BM_ClientStepHitNoReplay(benchmark::State& state) {
  CaptureLoop(state, CacheState::kWarmNoReplay, Span::kClient);
}
void BM_CaptureNoCache(benchmark::State& state) { CaptureLoop(state, CacheState::kDisabled); }

void EagerLoop(benchmark::State& state, Mode mode) {
  ModeGuard guard(mode);
  Fixture& f = Get();
  double total = 0, cpu = 0;
  for (auto _ : state) {
    const double c0 = ThreadCpuSeconds();
    const auto t0 = std::chrono::steady_clock::now();
    torch::Tensor logits = f.eager->Run();
    const auto t1 = std::chrono::steady_clock::now();
    cpu += ThreadCpuSeconds() - c0;
    benchmark::DoNotOptimize(logits);
    state.SetIterationTime(Seconds(t1 - t0));
    total += Seconds(t1 - t0);
  }
  ReportPerOp(state, total, cpu, f.ops);
}
void BM_EagerCpu(benchmark::State& state) { EagerLoop(state, Mode::kNoGrad); }

void BM_CaptureHitInferenceMode(benchmark::State& state) {
  CaptureLoop(state, CacheState::kWarm, Span::kCapture, Mode::kInference);
}
void BM_ClientStepHitInferenceMode(benchmark::State& state) {
  CaptureLoop(state, CacheState::kWarm, Span::kClient, Mode::kInference);
}
void BM_EagerCpuInferenceMode(benchmark::State& state) { EagerLoop(state, Mode::kInference); }
// The client's step when it dispatches parts as it captures (SetAutoDispatch(32, 4): parts
// of 32, 128, ... nodes), as a GPU node's sessions may: what cutting costs the client.
void BM_ClientStepHitAutoDispatchInferenceMode(benchmark::State& state) {
  frontend::SetAutoDispatch(32, 4);
  CaptureLoop(state, CacheState::kWarm, Span::kClient, Mode::kInference);
  frontend::SetAutoDispatch(0);
}

// GENIE_BENCH_ITERATIONS=N fixes every benchmark's iteration count (no estimation runs):
// how a profiler (callgrind) sees a known number of steps.
void Configure(benchmark::internal::Benchmark* b) {
  b->UseManualTime()->Unit(benchmark::kMicrosecond);
  if (const char* n = std::getenv("GENIE_BENCH_ITERATIONS")) b->Iterations(std::atoll(n));
}

BENCHMARK(BM_CaptureFirst)->Apply(Configure);
BENCHMARK(BM_CaptureHit)->Apply(Configure);
BENCHMARK(BM_CaptureHitNoReplay)->Apply(Configure);
BENCHMARK(BM_ClientStepHit)->Apply(Configure);
BENCHMARK(BM_ClientStepHitNoReplay)->Apply(Configure);
BENCHMARK(BM_CaptureNoCache)->Apply(Configure);
BENCHMARK(BM_EagerCpu)->Apply(Configure);
BENCHMARK(BM_CaptureHitInferenceMode)->Apply(Configure);
BENCHMARK(BM_ClientStepHitInferenceMode)->Apply(Configure);
BENCHMARK(BM_EagerCpuInferenceMode)->Apply(Configure);
BENCHMARK(BM_ClientStepHitAutoDispatchInferenceMode)->Apply(Configure);

}  // namespace
}  // namespace genie
