// File: benchmarks/scheduler_benchmark.cc
// The same models, side by side in one run: local libtorch (eager CPU), Genie's
// semantic pipeline and the semantics-blind baseline, each remote run on an embedded
// genie-node over loopback TCP (the *_shm cases: over shared memory, transport::Shm).
// Reports latency per inference and wire bytes per inference (counter `wire_bytes`), so
// ratios come from one run on one machine.
//
//   bazel run -c opt //benchmarks:scheduler_benchmark --
//       --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "benchmarks/bench_session.h"
#include "examples/models/models.h"
#include "examples/report.h"
#include "genie/client/remote_executor.h"
#include "genie/frontend/remote_device.h"
#include "genie/runtime/intra_op_threads.h"
#include "genie/runtime/node_server.h"
#include "genie/semantic/semantics.h"

namespace {

namespace models = genie::models;
using genie::examples::BlindDeployment;
using genie::examples::PlacedDeployment;
using genie::examples::SemanticDeployment;
using genie::examples::SemanticShmDeployment;

using genie::benchmarks::QuietSessionOptions;
using genie::benchmarks::StartSessionOrSkip;

// ---- VQA: one batch of 4 questions per iteration -------------------------------------
// Size 0: the toy model of the tests (1.3 MiB of weights). Size 1: a mid-size VQA model
// (ViT and BERT of 256 dims and 4 layers each, 64-pixel images, 8000-word vocabulary:
// about 37 MB of fp32 weights), nearer what a real VQA model ships each batch when
// nothing stays resident.
models::VqaConfig VqaConfigOfSize(int64_t size) {
  models::VqaConfig c;
  if (size == 0) return c;
  c.vision.image_size = 64;
  c.vision.patch_size = 8;
  c.vision.dim = 256;
  c.vision.depth = 4;
  c.vision.heads = 4;
  c.language.vocab_size = 8000;
  c.language.dim = 256;
  c.language.depth = 4;
  c.language.heads = 4;
  c.language.ffn_dim = 1024;
  c.fusion_heads = 4;
  return c;
}

struct VqaInputs {
  models::VqaConfig config;
  torch::Tensor images, questions;
  explicit VqaInputs(int64_t size) : config(VqaConfigOfSize(size)) {
    torch::manual_seed(3);
    images = torch::randn(
        {4, config.vision.channels, config.vision.image_size, config.vision.image_size});
    questions = torch::randint(1, config.language.vocab_size, {4, 12}, torch::kLong);
  }
};

double WeightBytes(models::Vqa& model) {
  double bytes = 0;
  for (const torch::Tensor& p : model->parameters())
    bytes += static_cast<double>(p.numel() * p.element_size());
  return bytes;
}

// Arg 1 of BM_VqaLocal and BM_VqaRemote: the intra-op threads of the thread that runs the
// model's ops (the benchmark thread for local eager, the node's session thread remote; 0:
// the node's automatic choice, NodeOptions::intra_op_threads).
// Arg 2 of BM_VqaRemote: the node's CPU lanes (NodeOptions::cpu_lanes: 2 runs the vision
// and language encoders on two threads of the node; 0: the node's automatic choice, 2 on a
// machine of 4 or more cores).
void BM_VqaLocal(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  VqaInputs in(state.range(0));
  const int threads_before = genie::runtime::IntraOpThreadsOfThisThread();
  if (!genie::runtime::SetIntraOpThreadsOfThisThread(static_cast<int>(state.range(1))).ok()) {
    state.SkipWithError("cannot set intra-op threads");
    return;
  }
  models::Vqa model(in.config);
  model->eval();
  for (auto _ : state) benchmark::DoNotOptimize(model->forward(in.images, in.questions));
  (void)genie::runtime::SetIntraOpThreadsOfThisThread(threads_before);
  state.counters["wire_bytes"] = 0;
  state.counters["weight_bytes"] = WeightBytes(model);
}

// A VQA model of `in`'s config on a new session of `options.embedded_nodes` embedded
// nodes, named for the analysis and run `warmups` times (weights resident, caches warm).
// Empty, with the benchmark skipped, when the session does not start.
template <class Deployment>
struct VqaOnSession {
  std::unique_ptr<genie::Session<Deployment>> session;
  models::Vqa model{nullptr};
  torch::Device dev = torch::kCPU;
};

template <class Deployment>
std::optional<VqaOnSession<Deployment>> StartVqa(benchmark::State& state, const VqaInputs& in,
                                                 const genie::SessionOptions& options,
                                                 int warmups) {
  std::unique_ptr<genie::Session<Deployment>> session =
      StartSessionOrSkip<Deployment>(state, options);
  if (!session) return std::nullopt;
  VqaOnSession<Deployment> v{std::move(session), models::Vqa(in.config), torch::kCPU};
  v.dev = torch::Device(v.session->device());
  v.model->eval();
  v.model->to(v.dev);
  genie::frontend::NameParameters(*v.model);
  for (int i = 0; i < warmups; ++i) {
    (void)v.model->forward(in.images.to(v.dev), in.questions.to(v.dev)).to(torch::kCPU);
  }
  return v;
}

// Latency through the frontend (capture, analysis, scheduler, wire, node), one batch at a
// time. Counters: exec_ms is the time inside the executor (analysis, scheduling, wire and
// node), node_ms the nodes' own execution time; capture is the rest.
template <class Deployment, int kNodes>
void BM_VqaRemote(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  VqaInputs in(state.range(0));
  genie::SessionOptions options = QuietSessionOptions();
  options.embedded_nodes = kNodes;
  options.embedded.intra_op_threads = static_cast<int>(state.range(1));
  options.embedded.cpu_lanes = static_cast<int>(state.range(2));
  std::optional<VqaOnSession<Deployment>> v = StartVqa<Deployment>(state, in, options, 3);
  if (!v) return;
  auto& session = v->session;
  models::Vqa& model = v->model;
  const torch::Device dev = v->dev;
  (void)session->TakeRecords();
  const auto before = session->traffic();
  double exec_ms = 0, node_ms = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        model->forward(in.images.to(dev), in.questions.to(dev)).to(torch::kCPU));
    state.PauseTiming();
    for (const genie::PipelineRecord& r : session->TakeRecords()) exec_ms += r.milliseconds;
    node_ms += static_cast<double>(session->last_node_micros()) / 1000.0;
    state.ResumeTiming();
  }
  const auto moved = session->traffic() - before;
  state.counters["wire_bytes"] = benchmark::Counter(
      static_cast<double>(genie::examples::WireBytes(moved)), benchmark::Counter::kAvgIterations);
  state.counters["exec_ms"] = benchmark::Counter(exec_ms, benchmark::Counter::kAvgIterations);
  state.counters["node_ms"] = benchmark::Counter(node_ms, benchmark::Counter::kAvgIterations);
  state.counters["node_to_node_bytes"] =
      benchmark::Counter(static_cast<double>(session->placement().node_to_node_bytes),
                         benchmark::Counter::kAvgIterations);
}

// BM_VqaRemote with the frontend cutting each batch into parts of `kCut` captured nodes,
// each next part `kGrowth` times the last (frontend::SetAutoDispatch): the node starts on
// the first part of a batch while the client captures the rest.
template <class Deployment, int kNodes, int kCut, int kGrowth = 1>
void BM_VqaRemoteCut(benchmark::State& state) {
  genie::frontend::SetAutoDispatch(kCut, kGrowth);
  BM_VqaRemote<Deployment, kNodes>(state);
  genie::frontend::SetAutoDispatch(0);
}

// Through the frontend with asynchronous dispatch: each iteration captures batch i and
// dispatches it (Session::Dispatch returns at once), then reads batch i-1's answers. With
// SessionOptions::pipelined on two nodes the dispatched batch is queued on the nodes'
// lanes, so batch i's vision (node 0) runs while batch i-1's fusion (node 1) finishes.
template <class Deployment, int kNodes, bool kPipelined>
void BM_VqaDispatched(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  VqaInputs in(state.range(0));
  genie::SessionOptions options = QuietSessionOptions();
  options.embedded_nodes = kNodes;
  options.pipelined = kPipelined;
  options.embedded.cpu_lanes = static_cast<int>(state.range(1));  // 0: automatic
  std::optional<VqaOnSession<Deployment>> v = StartVqa<Deployment>(state, in, options, 3);
  if (!v) return;
  auto& session = v->session;
  models::Vqa& model = v->model;
  const torch::Device dev = v->dev;
  torch::Tensor previous;
  for (auto _ : state) {
    torch::Tensor answers = model->forward(in.images.to(dev), in.questions.to(dev));
    (void)session->Dispatch();
    if (previous.defined()) benchmark::DoNotOptimize(previous.to(torch::kCPU));
    previous = answers;
  }
  if (previous.defined()) benchmark::DoNotOptimize(previous.to(torch::kCPU));
  if (!session->Join().ok()) state.SkipWithError("a dispatched batch failed");
  state.SetItemsProcessed(state.iterations());
  state.counters["pipelined_parts"] = static_cast<double>(session->placement().pipelined_parts);
}

// The scheduler on its own, replaying the graph the frontend captured for one batch (so
// capture is not in the loop): one node, two nodes one batch at a time, and two nodes
// with two batches in flight (batch i+1's vision on node 0 while batch i's fusion runs on
// node 1). items_per_second is the throughput.
struct CapturedRun {
  genie::core::Graph graph;
  genie::core::ExecuteRequest request;
  std::vector<std::string> bytes;
};

template <class Deployment, int kNodes, int kInFlight>
void BM_VqaScheduler(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  VqaInputs in(state.range(0));
  genie::SessionOptions options = QuietSessionOptions();
  options.embedded_nodes = kNodes;
  std::optional<VqaOnSession<Deployment>> v = StartVqa<Deployment>(state, in, options, 2);
  if (!v) return;
  auto& session = v->session;
  models::Vqa& model = v->model;
  const torch::Device dev = v->dev;
  auto captured = std::make_shared<CapturedRun>();
  genie::frontend::SetGraphObserver(
      [captured](const genie::core::Graph& g, const genie::core::ExecuteRequest& r) {
        if (g.nodes().size() < captured->graph.nodes().size()) return;  // keep the forward graph
        captured->graph = g;
        captured->request = r;
        captured->bytes.clear();
        captured->bytes.reserve(r.uploads.size());
        for (genie::core::Upload& u : captured->request.uploads) {
          captured->bytes.emplace_back(static_cast<const char*>(u.bytes.data), u.bytes.nbytes);
          u.bytes = genie::core::HostBytes{captured->bytes.back().data(), u.bytes.nbytes, nullptr};
        }
      });
  (void)model->forward(in.images.to(dev), in.questions.to(dev)).to(torch::kCPU);
  genie::frontend::SetGraphObserver(nullptr);
  captured->request.graph = &captured->graph;
  const genie::semantic::GraphSemantics semantics =
      genie::semantic::Analyze(captured->graph, captured->request.keep);
  auto& scheduler = session->pipeline().scheduler();
  genie::scheduler::PlacementExecutor* placer = scheduler.placer();
  if (kInFlight > 1 && placer == nullptr) {
    state.SkipWithError("pipelining needs ModalityPlacement on several nodes");
    return;
  }
  std::deque<genie::scheduler::PlacementExecutor::Ticket> in_flight;
  bool failed = false;
  for (auto _ : state) {
    if (kInFlight == 1) {
      failed |= !scheduler.Execute(captured->request, semantics).ok();
      continue;
    }
    absl::StatusOr<genie::scheduler::PlacementExecutor::Ticket> t =
        placer->Submit(captured->request, semantics);
    if (!t.ok()) {
      failed = true;
      break;
    }
    in_flight.push_back(*std::move(t));
    if (static_cast<int>(in_flight.size()) >= kInFlight) {
      failed |= !placer->Wait(std::move(in_flight.front())).ok();
      in_flight.pop_front();
    }
  }
  while (!in_flight.empty()) {
    failed |= !placer->Wait(std::move(in_flight.front())).ok();
    in_flight.pop_front();
  }
  if (failed) state.SkipWithError("a replayed run failed");
  state.SetItemsProcessed(state.iterations());
  const genie::scheduler::PlacementStats st = session->placement();
  state.counters["pipelined_parts"] = static_cast<double>(st.pipelined_parts);
  state.counters["max_parts_in_flight"] = static_cast<double>(st.max_parts_in_flight);
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
  auto session = StartSessionOrSkip<Deployment>(state, QuietSessionOptions());
  if (!session) return;
  const torch::Device dev(session->device());
  models::Gpt2Config config;
  config.max_positions = 1 << 14;
  models::Gpt2 model(config);
  model->eval();
  model->to(dev);
  genie::frontend::NameParameters(*model);
  models::KvCache cache = model->NewCache(1, models::KvCacheMode::kStatic, dev);
  torch::Tensor token = torch::zeros({1, 1}, torch::kLong);
  (void)model->forward(torch::zeros({1, 8}, torch::kLong).to(dev), &cache, 0).to(torch::kCPU);
  for (int i = 0; i < 3; ++i)
    (void)model->forward(token.to(dev), &cache, cache.length).to(torch::kCPU);
  const auto before = session->traffic();
  for (auto _ : state) {
    if (cache.length + 1 >= config.max_positions) cache.length = 8;
    benchmark::DoNotOptimize(model->forward(token.to(dev), &cache, cache.length).to(torch::kCPU));
  }
  const auto moved = session->traffic() - before;
  state.counters["wire_bytes"] = benchmark::Counter(
      static_cast<double>(genie::examples::WireBytes(moved)), benchmark::Counter::kAvgIterations);
}

BENCHMARK(BM_VqaLocal)
    ->ArgNames({"size", "threads"})
    ->ArgsProduct({{0, 1}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_VqaRemote, SemanticDeployment, 1)
    ->Name("BM_VqaRemote/semantic")
    ->ArgNames({"size", "threads", "lanes"})
    ->ArgsProduct({{0, 1}, {0, 1, 2}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_VqaRemote, SemanticShmDeployment, 1)
    ->Name("BM_VqaRemote/semantic_shm")
    ->ArgNames({"size", "threads", "lanes"})
    ->ArgsProduct({{0, 1}, {0, 1, 2}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_VqaRemote, BlindDeployment, 1)
    ->Name("BM_VqaRemote/blind")
    ->ArgNames({"size", "threads", "lanes"})
    ->ArgsProduct({{0, 1}, {0, 1, 2}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_VqaRemoteCut, SemanticDeployment, 1, 64)
    ->Name("BM_VqaRemote/semantic_cut64")
    ->ArgNames({"size", "threads", "lanes"})
    ->ArgsProduct({{0, 1}, {0, 1, 2}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_VqaRemoteCut, SemanticDeployment, 1, 16, 4)
    ->Name("BM_VqaRemote/semantic_cut16x4")
    ->ArgNames({"size", "threads", "lanes"})
    ->ArgsProduct({{0, 1}, {0}, {0}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_VqaRemoteCut, SemanticDeployment, 1, 32)
    ->Name("BM_VqaRemote/semantic_cut32")
    ->ArgNames({"size", "threads", "lanes"})
    ->ArgsProduct({{0, 1}, {0}, {0}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_VqaRemoteCut, BlindDeployment, 1, 16, 4)
    ->Name("BM_VqaRemote/blind_cut16x4")
    ->ArgNames({"size", "threads", "lanes"})
    ->ArgsProduct({{0, 1}, {0}, {0}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_VqaRemote, PlacedDeployment, 2)
    ->Name("BM_VqaRemote/semantic_two_nodes")
    ->ArgNames({"size", "threads", "lanes"})
    ->ArgsProduct({{0, 1}, {0, 1, 2}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_VqaDispatched, BlindDeployment, 1, false)
    ->Name("BM_VqaDispatched/blind")
    ->ArgNames({"size", "lanes"})
    ->ArgsProduct({{0, 1}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_VqaDispatched, SemanticDeployment, 1, false)
    ->Name("BM_VqaDispatched/one_node")
    ->ArgNames({"size", "lanes"})
    ->ArgsProduct({{0, 1}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_VqaDispatched, PlacedDeployment, 2, false)
    ->Name("BM_VqaDispatched/two_nodes")
    ->ArgNames({"size", "lanes"})
    ->ArgsProduct({{0, 1}, {0}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_VqaDispatched, PlacedDeployment, 2, true)
    ->Name("BM_VqaDispatched/two_nodes_pipelined")
    ->ArgNames({"size", "lanes"})
    ->ArgsProduct({{0, 1}, {0}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_VqaScheduler, SemanticDeployment, 1, 1)
    ->Name("BM_VqaScheduler/one_node")
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_VqaScheduler, PlacedDeployment, 2, 1)
    ->Name("BM_VqaScheduler/two_nodes")
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_VqaScheduler, PlacedDeployment, 2, 2)
    ->Name("BM_VqaScheduler/two_nodes_pipelined")
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
// ---- Decode streams under a competing prefill, one node ------------------------------
// kStreams GPT-2 decode clients (each its own connection, KV cache and loop of decode
// steps) and one client running long prefills back to back, all on one genie-node. The
// graphs are the ones the frontend captured, replayed per connection. Mode 0: no gate
// (every session runs when its run arrives); 1: one run at a time in arrival order;
// 2: one run at a time, decode steps first (RunGate, --run_slots=1 --decode_first);
// 3: two at a time, decode first, other runs leave one slot to decode steps
// (--run_slots=2 --decode_first).
// Time is the median per-token latency over all streams; counters give the mean, the
// 90th percentile, prefills per second, and how often a decode step went ahead.
struct Captured {
  genie::core::Graph graph;
  genie::core::ExecuteRequest request;
  std::vector<std::string> bytes;

  void Take(const genie::core::Graph& g, const genie::core::ExecuteRequest& r) {
    graph = g;
    request = r;
    bytes.clear();
    bytes.reserve(r.uploads.size());
    for (genie::core::Upload& u : request.uploads) {
      bytes.emplace_back(static_cast<const char*>(u.bytes.data), u.bytes.nbytes);
      u.bytes = genie::core::HostBytes{bytes.back().data(), u.bytes.nbytes, nullptr};
    }
    request.graph = &graph;
  }
};

// Held by pointer: a Captured's request points into it.
struct DecodeGraphs {
  std::unique_ptr<Captured> first =
      std::make_unique<Captured>();  // prompt prefill, uploads the weights and keeps them and the
                                     // cache
  std::unique_ptr<Captured> decode = std::make_unique<Captured>();  // one decode step
  std::unique_ptr<Captured> prefill =
      std::make_unique<Captured>();  // a long prompt on a fresh cache, weights resident
};

absl::StatusOr<DecodeGraphs> CaptureDecodeGraphs(const models::Gpt2Config& config,
                                                 int64_t long_prompt) {
  torch::NoGradGuard no_grad;
  auto session = genie::Session<SemanticDeployment>::Start(QuietSessionOptions());
  if (!session.ok()) return session.status();
  const torch::Device dev((*session)->device());
  models::Gpt2 model(config);
  model->eval();
  model->to(dev);
  genie::frontend::NameParameters(*model);
  DecodeGraphs out;
  Captured* target = out.first.get();
  genie::frontend::SetGraphObserver(
      [&target](const genie::core::Graph& g, const genie::core::ExecuteRequest& r) {
        if (target != nullptr) target->Take(g, r);
      });
  models::KvCache cache = model->NewCache(1, models::KvCacheMode::kStatic, dev);
  (void)model->forward(torch::zeros({1, 8}, torch::kLong).to(dev), &cache, 0).to(torch::kCPU);
  torch::Tensor token = torch::zeros({1, 1}, torch::kLong);
  target = nullptr;
  for (int i = 0; i < 3; ++i)
    (void)model->forward(token.to(dev), &cache, cache.length).to(torch::kCPU);
  target = out.decode.get();
  (void)model->forward(token.to(dev), &cache, cache.length).to(torch::kCPU);
  models::KvCache other = model->NewCache(1, models::KvCacheMode::kStatic, dev);
  target = out.prefill.get();
  (void)model->forward(torch::zeros({1, long_prompt}, torch::kLong).to(dev), &other, 0)
      .to(torch::kCPU);
  target = nullptr;
  genie::frontend::SetGraphObserver(nullptr);
  if (out.first->graph.nodes().empty() || out.decode->graph.nodes().empty() ||
      out.prefill->graph.nodes().empty()) {
    return absl::InternalError("did not capture the GPT-2 graphs");
  }
  return out;
}

void BM_DecodeStreamsUnderPrefill(benchmark::State& state) {
  constexpr int kStreams = 3;
  constexpr int kSteps = 40;
  const int mode = static_cast<int>(state.range(0));
  models::Gpt2Config config;
  config.dim = 128;
  config.depth = 4;
  config.max_positions = 256;
  static absl::StatusOr<DecodeGraphs>* graphs = nullptr;
  if (graphs == nullptr)
    graphs = new absl::StatusOr<DecodeGraphs>(CaptureDecodeGraphs(config, 192));
  if (!graphs->ok()) {
    state.SkipWithError(std::string(graphs->status().message()).c_str());
    return;
  }
  const DecodeGraphs& g = **graphs;
  genie::runtime::NodeOptions options;
  options.log_connections = false;
  options.log_runs = false;
  options.run_slots = mode == 0 ? 0 : mode == 3 ? 2 : 1;
  options.decode_first = mode >= 2;
  const std::string key(64, 'k');
  auto server = genie::runtime::NodeServer::Create("127.0.0.1", 0, key, options);
  if (!server.ok()) {
    state.SkipWithError(std::string(server.status().message()).c_str());
    return;
  }
  std::thread serving([&] { (*server)->Serve(); });
  using Node = genie::client::RemoteExecutor<genie::transport::Tcp>;
  std::vector<std::unique_ptr<Node>> clients;
  bool ok = true;
  for (int k = 0; k <= kStreams; ++k) {
    auto c = Node::Connect("127.0.0.1", (*server)->port(), key);
    ok &= c.ok() && (*c)->Execute(g.first->request).ok();
    if (c.ok()) clients.push_back(std::move(*c));
  }
  std::vector<double> latencies;
  double mean_sum = 0;
  int64_t prefills = 0;
  double seconds = 0;
  for (auto _ : state) {
    if (!ok) break;
    std::atomic<bool> stop{false};
    std::atomic<int64_t> done_prefills{0};
    std::atomic<bool> failed{false};
    std::thread prefill([&] {
      while (!stop.load()) {
        if (!clients[kStreams]->Execute(g.prefill->request).ok()) failed = true;
        ++done_prefills;
      }
    });
    std::vector<std::vector<double>> per(kStreams);
    std::vector<std::thread> streams;
    const auto start = std::chrono::steady_clock::now();
    for (int k = 0; k < kStreams; ++k) {
      streams.emplace_back([&, k] {
        for (int i = 0; i < kSteps; ++i) {
          const auto t0 = std::chrono::steady_clock::now();
          if (!clients[k]->Execute(g.decode->request).ok()) failed = true;
          per[k].push_back(
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
      });
    }
    for (std::thread& t : streams) t.join();
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    stop = true;
    prefill.join();
    prefills += done_prefills.load();
    if (failed) {
      state.SkipWithError("a replayed run failed");
      break;
    }
    std::vector<double> all;
    for (const auto& v : per) all.insert(all.end(), v.begin(), v.end());
    std::sort(all.begin(), all.end());
    double sum = 0;
    for (double x : all) sum += x;
    mean_sum += sum / static_cast<double>(all.size());
    state.SetIterationTime(all[all.size() / 2]);
    latencies.insert(latencies.end(), all.begin(), all.end());
  }
  if (!ok) state.SkipWithError("could not connect or load the weights");
  std::sort(latencies.begin(), latencies.end());
  if (!latencies.empty()) {
    state.counters["mean_ms"] = 1000 * mean_sum / static_cast<double>(state.iterations());
    state.counters["p90_ms"] = 1000 * latencies[latencies.size() * 9 / 10];
    state.counters["prefills_per_s"] = static_cast<double>(prefills) / seconds;
    state.counters["decode_ahead"] = static_cast<double>((*server)->gate_stats().decode_ahead);
  }
  clients.clear();
  (*server)->Shutdown();
  serving.join();
}

BENCHMARK(BM_Gpt2DecodeLocal)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_Gpt2DecodeRemote, SemanticDeployment)
    ->Name("BM_Gpt2DecodeRemote/semantic")
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_Gpt2DecodeRemote, SemanticShmDeployment)
    ->Name("BM_Gpt2DecodeRemote/semantic_shm")
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_Gpt2DecodeRemote, BlindDeployment)
    ->Name("BM_Gpt2DecodeRemote/blind")
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_DecodeStreamsUnderPrefill)
    ->ArgName("mode")
    ->Arg(0)
    ->Arg(1)
    ->Arg(2)
    ->Arg(3)
    ->Iterations(3)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
