// File: benchmarks/remote_benchmark.cc
// One fixed small graph (a 2-layer MLP on x [8, 512], weights resident) executed in process
// by runtime::Interpreter and on a genie-node child process over loopback Tcp, side by side
// in one binary. Reports latency per run and bytes per run (counters).
//
//   bazel run -c opt //benchmarks:remote_benchmark --
//       --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//
// bytes_per_run: for the interpreter, what crosses its Execute boundary (input + output);
// for the node, every byte on the wire both ways (frame headers and control included).
// node_us: the node's own execution time per run, so wire_us = time - node_us is the
// price of going remote. The node runs with --log_runs=false and --threads=node_threads
// (ATen intra-op threads; the in-process interpreter uses ATen's default).
// On a shared, oversubscribed machine (client and node on the same 2 cores, other jobs
// running), OpenMP's spinning workers dominate and scatter the timings by 10x; run with
// OMP_WAIT_POLICY=PASSIVE (inherited by the node) for stable figures there.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "genie/client/remote_executor.h"
#include "genie/core/executor.h"
#include "genie/core/graph.h"
#include "genie/runtime/interpreter.h"
#include "genie/transport/tcp.h"
#include "tests/e2e/node_process.h"

namespace genie {
namespace {

using core::Arg;
using core::Buffer;
using core::BufferKind;
using core::DType;
using core::TensorRef;

constexpr int64_t kBatch = 8;
constexpr int64_t kWidth = 512;
const std::string kKey = "remote-benchmark-key-0123456789abcdef";

std::string Floats(int64_t n, float scale, float phase) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = scale * std::sin(0.013f * i + phase);
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

// y = addmm(b2, relu(addmm(b1, x, w1)), w2): x [8,512], w [512,512], b [512].
struct Mlp {
  core::Graph graph;
  core::BufferId x, w1, b1, w2, b2;

  explicit Mlp(bool resident) {
    const BufferKind wk = resident ? BufferKind::kResident : BufferKind::kParameter;
    auto weight = [&](int64_t numel, const char* name, uint64_t handle) {
      Buffer b{DType::kFloat32, numel, wk, name};
      b.handle = handle;
      return graph.AddBuffer(b);
    };
    x = graph.AddBuffer(Buffer{DType::kFloat32, kBatch * kWidth, BufferKind::kHostInput});
    w1 = weight(kWidth * kWidth, "fc1.weight", 1);
    b1 = weight(kWidth, "fc1.bias", 2);
    w2 = weight(kWidth * kWidth, "fc2.weight", 3);
    b2 = weight(kWidth, "fc2.bias", 4);
    const core::BufferId h = graph.AddBuffer(Buffer{DType::kFloat32, kBatch * kWidth});
    const core::BufferId r = graph.AddBuffer(Buffer{DType::kFloat32, kBatch * kWidth});
    const core::BufferId y = graph.AddBuffer(Buffer{DType::kFloat32, kBatch * kWidth});
    auto act = [&](core::BufferId b) { return TensorRef::Contiguous(b, DType::kFloat32, {kBatch, kWidth}); };
    auto mat = [&](core::BufferId b) { return TensorRef::Contiguous(b, DType::kFloat32, {kWidth, kWidth}); };
    auto vec = [&](core::BufferId b) { return TensorRef::Contiguous(b, DType::kFloat32, {kWidth}); };
    const core::OpId addmm = graph.InternOp("aten::addmm");
    core::Node fc1;
    fc1.op = addmm;
    fc1.args = {Arg::Tensor(vec(b1)), Arg::Tensor(act(x)), Arg::Tensor(mat(w1)), Arg::Int(1), Arg::Int(1)};
    fc1.outputs = {act(h)};
    graph.AddNode(fc1);
    core::Node relu;
    relu.op = graph.InternOp("aten::relu");
    relu.args = {Arg::Tensor(act(h))};
    relu.outputs = {act(r)};
    graph.AddNode(relu);
    core::Node fc2;
    fc2.op = addmm;
    fc2.args = {Arg::Tensor(vec(b2)), Arg::Tensor(act(r)), Arg::Tensor(mat(w2)), Arg::Int(1), Arg::Int(1)};
    fc2.outputs = {act(y)};
    graph.AddNode(fc2);
    graph.outputs().push_back(act(y));
  }
};

struct Workload {
  Mlp first{false};
  Mlp steady{true};
  std::string x = Floats(kBatch * kWidth, 1.0f, 0.1f);
  std::string w1 = Floats(kWidth * kWidth, 0.05f, 0.2f);
  std::string b1 = Floats(kWidth, 0.1f, 0.3f);
  std::string w2 = Floats(kWidth * kWidth, 0.05f, 0.4f);
  std::string b2 = Floats(kWidth, 0.1f, 0.5f);

  static core::HostBytes Borrow(const std::string& s) {
    return core::HostBytes{s.data(), s.size(), nullptr};
  }
  // Uploads the weights and keeps them resident.
  core::ExecuteRequest Load() const {
    core::ExecuteRequest req;
    req.graph = &first.graph;
    req.fingerprint = 1;
    req.uploads = {{first.x, Borrow(x)}, {first.w1, Borrow(w1)}, {first.b1, Borrow(b1)},
                   {first.w2, Borrow(w2)}, {first.b2, Borrow(b2)}};
    req.keep = {first.w1, first.b1, first.w2, first.b2};
    return req;
  }
  // One steady-state step: only x goes in, y comes back.
  core::ExecuteRequest Step() const {
    core::ExecuteRequest req;
    req.graph = &steady.graph;
    req.fingerprint = 2;
    req.uploads = {{steady.x, Borrow(x)}};
    return req;
  }
};

const Workload& TheWorkload() {
  static const Workload* w = new Workload();
  return *w;
}

// The in-process result, to check the node against once.
std::vector<float> Reference() {
  runtime::Interpreter local;
  const Workload& w = TheWorkload();
  absl::StatusOr<core::ExecuteResult> r = local.Execute(w.Load());
  if (!r.ok()) {
    std::fprintf(stderr, "reference run failed: %s\n", r.status().ToString().c_str());
    std::abort();
  }
  std::vector<float> out(r->outputs[0].nbytes / sizeof(float));
  std::memcpy(out.data(), r->outputs[0].data, r->outputs[0].nbytes);
  return out;
}

void BM_Mlp8x512_InProcessInterpreter(benchmark::State& state) {
  const Workload& w = TheWorkload();
  runtime::Interpreter local;
  if (!local.Execute(w.Load()).ok()) {
    state.SkipWithError("loading the weights failed");
    return;
  }
  const core::ExecuteRequest step = w.Step();
  int64_t bytes = 0;
  for (auto _ : state) {
    absl::StatusOr<core::ExecuteResult> r = local.Execute(step);
    if (!r.ok()) {
      state.SkipWithError(r.status().ToString().c_str());
      return;
    }
    bytes += r->stats.bytes_uploaded + r->stats.bytes_downloaded;
    benchmark::DoNotOptimize(r->outputs[0].data);
  }
  state.counters["bytes_per_run"] = benchmark::Counter(static_cast<double>(bytes),
                                                       benchmark::Counter::kAvgIterations);
}
BENCHMARK(BM_Mlp8x512_InProcessInterpreter)->UseRealTime()->Unit(benchmark::kMicrosecond);

void BM_Mlp8x512_GenieNodeTcpLoopback(benchmark::State& state) {
  using Remote = client::RemoteExecutor<transport::Tcp>;
  // One node per thread count, started on first use; it lives until exit
  // (PR_SET_PDEATHSIG ends it with this process).
  static std::map<int64_t, e2e::NodeProcess*>* nodes = new std::map<int64_t, e2e::NodeProcess*>();
  const int64_t threads = state.range(0);
  e2e::NodeProcess*& node = (*nodes)[threads];
  if (node == nullptr) {
    absl::StatusOr<std::unique_ptr<e2e::NodeProcess>> n = e2e::NodeProcess::Start(
        kKey, {absl::StrCat("--threads=", threads), "--log_runs=false"}, absl::Seconds(60),
        "/dev/null");
    if (!n.ok()) {
      state.SkipWithError(n.status().ToString().c_str());
      return;
    }
    node = n->release();
  }
  if (node == nullptr) {
    state.SkipWithError("genie-node did not start");
    return;
  }
  absl::StatusOr<std::unique_ptr<Remote>> remote = Remote::Connect("127.0.0.1", node->port(), kKey);
  if (!remote.ok()) {
    state.SkipWithError(remote.status().ToString().c_str());
    return;
  }
  const Workload& w = TheWorkload();
  absl::StatusOr<core::ExecuteResult> loaded = (*remote)->Execute(w.Load());
  if (!loaded.ok()) {
    state.SkipWithError(loaded.status().ToString().c_str());
    return;
  }
  static const std::vector<float> reference = Reference();
  if (loaded->outputs[0].nbytes != reference.size() * sizeof(float) ||
      std::memcmp(loaded->outputs[0].data, reference.data(), loaded->outputs[0].nbytes) != 0) {
    state.SkipWithError("the node's result differs from the in-process interpreter's");
    return;
  }
  const core::ExecuteRequest step = w.Step();
  if (!(*remote)->Execute(step).ok()) {  // load the steady program before timing
    state.SkipWithError("warm-up run failed");
    return;
  }
  const transport::TrafficSnapshot before = (*remote)->traffic();
  int64_t node_us = 0;
  for (auto _ : state) {
    absl::StatusOr<core::ExecuteResult> r = (*remote)->Execute(step);
    if (!r.ok()) {
      state.SkipWithError(r.status().ToString().c_str());
      return;
    }
    node_us += (*remote)->last_node_micros();
    benchmark::DoNotOptimize(r->outputs[0].data);
  }
  const transport::TrafficSnapshot moved = (*remote)->traffic() - before;
  const double wire = static_cast<double>(moved.TotalBytes(transport::Direction::kSent) +
                                          moved.TotalBytes(transport::Direction::kReceived));
  state.counters["bytes_per_run"] = benchmark::Counter(wire, benchmark::Counter::kAvgIterations);
  state.counters["node_us"] =
      benchmark::Counter(static_cast<double>(node_us), benchmark::Counter::kAvgIterations);
}
BENCHMARK(BM_Mlp8x512_GenieNodeTcpLoopback)->ArgName("node_threads")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace genie
