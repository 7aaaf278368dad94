// File: benchmarks/gpu_benchmark.cc
// Remote vs local on a GPU machine, side by side in one run: ViT-B/16-size and
// BERT-base-size inference at batch 8 and a GPT-2-124M-size decode step (static KV
// cache), each run by local libtorch on CUDA and by Genie with the client and a
// genie-node (interpreter on cuda:0) on the same host over loopback TCP with its lanes (the
// *_one_socket cases: one socket; the *_shm cases: over shared memory, transport::Shm). Every
// iteration reads its result on the host, local and remote alike. Skips without CUDA.
// Matmuls are fp32 with TF32 off, as in the parity tests, except in the cases named *_tf32.
//
//   tools/device/run_gpu.sh   (builds with --config=cuda, packs, runs on the GPU machine)
#include <benchmark/benchmark.h>
#include <c10/core/InferenceMode.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "benchmarks/bench_session.h"
#include "examples/models/models.h"
#include "examples/report.h"
#include "genie/client/remote_executor.h"
#include "genie/frontend/remote_device.h"
#include "genie/runtime/interpreter.h"
#include "genie/runtime/node_server.h"
#include "genie/transport/shm.h"
#include "genie/transport/tcp.h"
#include "tests/gpu/gpu_memory.h"
#include "tests/gpu/two_chains.h"

namespace {

namespace m = genie::models;
using Deployment = genie::examples::SemanticDeployment;        // client <-> node over Tcp
using ShmDeployment = genie::examples::SemanticShmDeployment;  // ... over Shm (tensor pool)
using ShmRingsDeployment = genie::examples::SemanticShmRingsDeployment;  // ... Shm rings only
using OneSocketDeployment = genie::examples::SemanticOneSocketDeployment;  // ... Tcp, no lanes

bool NoCuda(benchmark::State& state) {
  if (torch::cuda::is_available()) return false;
  state.SkipWithError("no CUDA device: run on a GPU machine (tools/device/run_gpu.sh)");
  return true;
}

// busy_poll_us: the node and the client spin that long on their sockets before sleeping.
// upload_ahead: large `.to(remote)` inputs go to the node at once (the Tcp default,
// client::RemoteExecutorOptions::upload_ahead_min_bytes); off, they go with the first part.
template <class D>
std::unique_ptr<genie::Session<D>> StartGpuSession(benchmark::State& state, bool cuda_graphs = true,
                                                   int busy_poll_us = 0, bool upload_ahead = true) {
  genie::SessionOptions o = genie::benchmarks::QuietSessionOptions();
  o.embedded.device = "cuda:0";
  o.embedded.cuda_graphs = cuda_graphs;
  o.embedded.busy_poll = absl::Microseconds(busy_poll_us);
  o.connection.busy_poll = absl::Microseconds(busy_poll_us);
  if (!upload_ahead) o.connection.upload_ahead_min_bytes = 0;
  return genie::benchmarks::StartSessionOrSkip<D>(state, o);
}

void ReportBytes(benchmark::State& state, const genie::transport::TrafficSnapshot& moved) {
  state.counters["wire_bytes"] = benchmark::Counter(
      static_cast<double>(genie::examples::WireBytes(moved)), benchmark::Counter::kAvgIterations);
}

// How a model benchmark runs. Local and remote take the same autograd mode: NoGradGuard,
// or c10::InferenceMode (cheaper dispatch on the client; no version counters or views
// tracked) entered after the model is built and moved. `dispatch` > 0 (remote only):
// frontend::SetAutoDispatch(dispatch), so the node executes the first parts of a step
// while the client still captures the rest.
struct Mode {
  bool remote = false;
  bool inference = false;
  // Remote: -1 keeps the session's default (a GPU session cuts steps into parts of 16, 64,
  // ... nodes: SessionOptions::gpu_dispatch_*), 0 turns cutting off, N > 0 cuts every N
  // nodes (times `growth` per part).
  int64_t dispatch = 0;
  bool graphs = true;
  int busy_poll_us = 0;  // remote: node and client spin on their sockets (ConnectionOptions)
  bool shm = false;      // remote: client <-> node over shared memory instead of loopback TCP
  int64_t growth = 1;    // with dispatch: each next part of a step this many times longer
  // TF32 matmuls and convolutions (process-wide: the embedded node's kernels and local
  // ones alike). Off everywhere else, as in the parity tests: fp32 with TF32 off.
  bool tf32 = false;
  // Remote over TCP: one socket (transport::TcpOneSocket) instead of Tcp's lanes.
  bool one_socket = false;
  // Remote: copy-on-write upload snapshots (frontend::SetCopyOnWriteSnapshots).
  bool copy_on_write = false;
  // Remote over TCP: large inputs sent at `.to()` (StartGpuSession's upload_ahead).
  bool upload_ahead = true;
};

// GPU memory of the process (client, embedded node and local alike), in MB: in live tensors
// and reserved by the caching allocator. Zeros without CUDA.
std::pair<double, double> GpuMemoryMb() {
  const genie::testing::GpuMemory m = genie::testing::GpuMemoryNow();
  return {static_cast<double>(m.allocated) / 1e6, static_cast<double>(m.reserved) / 1e6};
}

// Brackets a model benchmark's warm-up and timed loop: the autograd mode, auto-dispatch,
// the node's graph counters per iteration (a replayed part counts once), and the GPU memory
// in live tensors and reserved before and after the timed loop (gpu_mb_*, gpu_reserved_mb_*:
// what one benchmark leaves behind shows in the next one's start).
template <class D>
class ModelRun {
 public:
  ModelRun(benchmark::State& state, const Mode& mode)
      : state_(state),
        mode_(mode),
        tf32_cublas_(at::globalContext().allowTF32CuBLAS()),
        tf32_cudnn_(at::globalContext().allowTF32CuDNN()) {
    at::globalContext().setAllowTF32CuBLAS(mode.tf32);
    at::globalContext().setAllowTF32CuDNN(mode.tf32);
    if (mode.inference) inference_.emplace();
    if (mode.remote && mode.dispatch >= 0)
      genie::frontend::SetAutoDispatch(mode.dispatch, mode.growth);
    if (mode.copy_on_write) genie::frontend::SetCopyOnWriteSnapshots(true);
  }
  void StartTiming(genie::Session<D>* session) {
    session_ = session;
    if (session_) traffic_ = session_->traffic();
    counters_ = genie::runtime::GetInterpreterCounters();
    genie::frontend::ResetCaptureStats();
    std::tie(state_.counters["gpu_mb_start"], state_.counters["gpu_reserved_mb_start"]) =
        GpuMemoryMb();
  }
  ~ModelRun() {
    at::globalContext().setAllowTF32CuBLAS(tf32_cublas_);
    at::globalContext().setAllowTF32CuDNN(tf32_cudnn_);
    std::tie(state_.counters["gpu_mb_end"], state_.counters["gpu_reserved_mb_end"]) = GpuMemoryMb();
    if (mode_.copy_on_write) genie::frontend::SetCopyOnWriteSnapshots(false);
    if (!mode_.remote) return;
    if (mode_.dispatch >= 0) genie::frontend::SetAutoDispatch(0);
    if (session_ == nullptr) return;
    ReportBytes(state_, session_->traffic() - traffic_);
    const genie::runtime::InterpreterCounters now = genie::runtime::GetInterpreterCounters();
    state_.counters["graph_replays"] =
        benchmark::Counter(static_cast<double>(now.graph_replays - counters_.graph_replays),
                           benchmark::Counter::kAvgIterations);
    state_.counters["graph_drops"] = static_cast<double>(now.graph_drops - counters_.graph_drops);
    // The client's side: graphs sent per step (parts), ops replayed from the last step's
    // template, and steps whose replay stopped at an op that differed.
    const genie::frontend::CaptureStats capture = genie::frontend::GetCaptureStats();
    const auto per_step = [](int64_t n) {
      return benchmark::Counter(static_cast<double>(n), benchmark::Counter::kAvgIterations);
    };
    state_.counters["flushes"] = per_step(capture.flushes);
    state_.counters["ops_replayed"] = per_step(capture.ops_replayed);
    state_.counters["replay_divergences"] = static_cast<double>(capture.replay_divergences);
  }

 private:
  benchmark::State& state_;
  Mode mode_;
  const bool tf32_cublas_, tf32_cudnn_;  // restored at the end
  std::optional<c10::InferenceMode> inference_;
  genie::Session<D>* session_ = nullptr;
  genie::transport::TrafficSnapshot traffic_;
  genie::runtime::InterpreterCounters counters_;
};

// ---- ViT-B/16, batch 8 ------------------------------------------------------------------
template <class D>
void RunVitB16(benchmark::State& state, const Mode& mode) {
  if (NoCuda(state)) return;
  torch::NoGradGuard no_grad;
  const m::ViTConfig c = m::ViTConfig::ViTBase16();
  auto session = mode.remote
                     ? StartGpuSession<D>(state, mode.graphs, mode.busy_poll_us, mode.upload_ahead)
                     : nullptr;
  if (mode.remote && !session) return;
  const torch::Device dev =
      mode.remote ? torch::Device(session->device()) : torch::Device(torch::kCUDA, 0);
  m::ViT model(c);
  model->to(dev);
  if (mode.remote) genie::frontend::NameParameters(*model);
  torch::Tensor images = torch::randn({8, 3, c.image_size, c.image_size});
  ModelRun<D> run(state, mode);
  for (int i = 0; i < 3; ++i) (void)model->forward(images.to(dev)).to(torch::kCPU);
  run.StartTiming(session.get());
  for (auto _ : state) benchmark::DoNotOptimize(model->forward(images.to(dev)).to(torch::kCPU));
}

// ---- BERT-base, batch 8, 128 tokens -------------------------------------------------------
template <class D>
void RunBertBase(benchmark::State& state, const Mode& mode) {
  if (NoCuda(state)) return;
  torch::NoGradGuard no_grad;
  const m::BertConfig c = m::BertConfig::BertBase();
  auto session = mode.remote
                     ? StartGpuSession<D>(state, mode.graphs, mode.busy_poll_us, mode.upload_ahead)
                     : nullptr;
  if (mode.remote && !session) return;
  const torch::Device dev =
      mode.remote ? torch::Device(session->device()) : torch::Device(torch::kCUDA, 0);
  m::BertEncoder model(c);
  model->to(dev);
  if (mode.remote) genie::frontend::NameParameters(*model);
  torch::Tensor ids = torch::randint(1, c.vocab_size, {8, 128}, torch::kLong);
  ModelRun<D> run(state, mode);
  for (int i = 0; i < 3; ++i) (void)model->forward(ids.to(dev)).to(torch::kCPU);
  run.StartTiming(session.get());
  for (auto _ : state) benchmark::DoNotOptimize(model->forward(ids.to(dev)).to(torch::kCPU));
}

// ---- GPT-2 124M decode, one token per iteration -------------------------------------------
template <class D>
void RunGpt2SmallDecode(benchmark::State& state, const Mode& mode) {
  if (NoCuda(state)) return;
  torch::NoGradGuard no_grad;
  const m::Gpt2Config c = m::Gpt2Config::Gpt2Small();
  auto session = mode.remote
                     ? StartGpuSession<D>(state, mode.graphs, mode.busy_poll_us, mode.upload_ahead)
                     : nullptr;
  if (mode.remote && !session) return;
  const torch::Device dev =
      mode.remote ? torch::Device(session->device()) : torch::Device(torch::kCUDA, 0);
  m::Gpt2 model(c);
  model->to(dev);
  if (mode.remote) genie::frontend::NameParameters(*model);
  m::KvCache cache = model->NewCache(1, m::KvCacheMode::kStatic, dev);
  torch::Tensor token = torch::zeros({1, 1}, torch::kLong);
  ModelRun<D> run(state, mode);
  (void)model->forward(torch::zeros({1, 16}, torch::kLong).to(dev), &cache, 0).to(torch::kCPU);
  for (int i = 0; i < 3; ++i)
    (void)model->forward(token.to(dev), &cache, cache.length).to(torch::kCPU);
  run.StartTiming(session.get());
  for (auto _ : state) {
    if (cache.length + 1 >= c.max_positions) cache.length = 16;
    benchmark::DoNotOptimize(model->forward(token.to(dev), &cache, cache.length).to(torch::kCPU));
  }
}

// ---- The data path alone: one upload, one download --------------------------------------
// Upload: ViT's images (4.8 MB) to the device, one element read back. Download: a resident
// [8, 128, 768] fp32 tensor (BERT's hidden states, 3.1 MB) scaled by one op and read back.
template <class D>
void RunUpload(benchmark::State& state, bool remote) {
  if (NoCuda(state)) return;
  torch::NoGradGuard no_grad;
  auto session = remote ? StartGpuSession<D>(state) : nullptr;
  if (remote && !session) return;
  const torch::Device dev =
      remote ? torch::Device(session->device()) : torch::Device(torch::kCUDA, 0);
  torch::Tensor images = torch::randn({8, 3, 224, 224});
  for (int i = 0; i < 3; ++i) (void)images.to(dev).view({-1}).slice(0, 0, 1).to(torch::kCPU);
  for (auto _ : state)
    benchmark::DoNotOptimize(images.to(dev).view({-1}).slice(0, 0, 1).to(torch::kCPU));
}

template <class D>
void RunDownload(benchmark::State& state, bool remote) {
  if (NoCuda(state)) return;
  torch::NoGradGuard no_grad;
  auto session = remote ? StartGpuSession<D>(state) : nullptr;
  if (remote && !session) return;
  const torch::Device dev =
      remote ? torch::Device(session->device()) : torch::Device(torch::kCUDA, 0);
  torch::Tensor hidden = torch::randn({8, 128, 768}).to(dev);
  for (int i = 0; i < 3; ++i) (void)(hidden * 2.0).to(torch::kCPU);
  for (auto _ : state) benchmark::DoNotOptimize((hidden * 2.0).to(torch::kCPU));
}

// Where a data-path case runs: local CUDA, or remote over loopback TCP (with lanes, or on
// one socket: kRemoteOneSocket) or shared memory. kRemoteShm goes through the Shm tensor
// pool (the default), kRemoteShmRings through the Shm rings alone (transport::ShmRingsOnly),
// the path before the pool.
enum class Where { kLocal, kRemote, kRemoteOneSocket, kRemoteShm, kRemoteShmRings };
void BM_Upload(benchmark::State& state, Where where) {
  if (where == Where::kRemoteShm) return RunUpload<ShmDeployment>(state, true);
  if (where == Where::kRemoteShmRings) return RunUpload<ShmRingsDeployment>(state, true);
  if (where == Where::kRemoteOneSocket) return RunUpload<OneSocketDeployment>(state, true);
  RunUpload<Deployment>(state, where == Where::kRemote);
}
void BM_Download(benchmark::State& state, Where where) {
  if (where == Where::kRemoteShm) return RunDownload<ShmDeployment>(state, true);
  if (where == Where::kRemoteShmRings) return RunDownload<ShmRingsDeployment>(state, true);
  if (where == Where::kRemoteOneSocket) return RunDownload<OneSocketDeployment>(state, true);
  RunDownload<Deployment>(state, where == Where::kRemote);
}
void BM_VitB16(benchmark::State& state, Mode mode) {
  if (mode.shm) return RunVitB16<ShmDeployment>(state, mode);
  if (mode.one_socket) return RunVitB16<OneSocketDeployment>(state, mode);
  RunVitB16<Deployment>(state, mode);
}
void BM_BertBase(benchmark::State& state, Mode mode) {
  if (mode.shm) return RunBertBase<ShmDeployment>(state, mode);
  if (mode.one_socket) return RunBertBase<OneSocketDeployment>(state, mode);
  RunBertBase<Deployment>(state, mode);
}
void BM_Gpt2SmallDecode(benchmark::State& state, Mode mode) {
  if (mode.shm) return RunGpt2SmallDecode<ShmDeployment>(state, mode);
  if (mode.one_socket) return RunGpt2SmallDecode<OneSocketDeployment>(state, mode);
  RunGpt2SmallDecode<Deployment>(state, mode);
}

// ---- Node to node: CUDA IPC against TCP -----------------------------------------------------
// Node A (cuda:0) is a NodeServer in this process; node B (cuda:1) a genie-node process
// started from the binary beside this one (device_pack/bin/genie-node). Per iteration the
// client asks A to send a resident [bytes / 4] fp32 tensor to B (kPeerSend) and then runs
// sum() over it on B, reading the sum back: the time from A's GPU to a result computed from
// it on B's GPU. `ipc`: NodeOptions::peer_cuda_ipc on A (GPU to GPU) or off (A's GPU ->
// host -> TCP -> B's host -> B's GPU). Skips with fewer than two GPUs.
class NodeProcess {
 public:
  // Starts genie-node on `device`, listening on a free loopback port; "" on success.
  std::string Start(const std::string& device, const std::string& key) {
    char self[4096];
    const ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (len <= 0) return "cannot find this binary's folder";
    self[len] = '\0';
    std::string binary = self;
    binary = binary.substr(0, binary.rfind('/')) + "/genie-node";
    if (access(binary.c_str(), X_OK) != 0)
      return binary + " is missing (tools/device/run_gpu.sh packs it)";
    int out[2];
    if (pipe(out) != 0) return "pipe failed";
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], 1);
      close(out[0]);
      setenv("GENIE_KEY", key.c_str(), 1);
      const std::string dev = "--device=" + device;
      execl(binary.c_str(), binary.c_str(), "--listen=127.0.0.1:0", dev.c_str(), "--log_runs=false",
            static_cast<char*>(nullptr));
      _exit(127);
    }
    close(out[1]);
    std::string line;
    char c;
    while (read(out[0], &c, 1) == 1 && c != '\n') line += c;
    close(out[0]);
    const size_t colon = line.rfind(':');
    if (colon == std::string::npos) return "genie-node did not start: " + line;
    port_ = static_cast<uint16_t>(std::stoi(line.substr(colon + 1)));
    return "";
  }
  ~NodeProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int status = 0;
      waitpid(pid_, &status, 0);
    }
  }
  uint16_t port() const { return port_; }

 private:
  pid_t pid_ = -1;
  uint16_t port_ = 0;
};

void BM_PeerSend(benchmark::State& state, bool ipc) {
  if (NoCuda(state)) return;
  if (torch::cuda::device_count() < 2) {
    state.SkipWithError("one CUDA device: node to node needs two (nvidia-h200-x2)");
    return;
  }
  using genie::core::Buffer;
  using genie::core::BufferKind;
  using genie::core::DType;
  using genie::core::TensorRef;
  const int64_t n = state.range(0) / 4;
  const std::string key = "gpu-benchmark-peer-key-0123456789abcdef";
  NodeProcess b;
  if (std::string e = b.Start("cuda:1", key); !e.empty()) {
    state.SkipWithError(e.c_str());
    return;
  }
  genie::runtime::NodeOptions o;
  o.device = "cuda:0";
  o.log_connections = false;
  o.log_runs = false;
  o.peer_cuda_ipc = ipc;
  auto a = genie::runtime::NodeServer::Create("127.0.0.1", 0, key, o);
  if (!a.ok()) {
    state.SkipWithError(std::string(a.status().message()).c_str());
    return;
  }
  std::thread serve([&] { (*a)->Serve(); });
  {
    auto to_a = genie::client::RemoteExecutor<genie::transport::Tcp>::Connect("127.0.0.1",
                                                                              (*a)->port(), key);
    auto to_b =
        genie::client::RemoteExecutor<genie::transport::Tcp>::Connect("127.0.0.1", b.port(), key);
    if (!to_a.ok() || !to_b.ok()) {
      state.SkipWithError("cannot connect to the nodes");
    } else {
      torch::Tensor x = torch::randn({n});
      genie::core::Graph put;
      genie::core::BufferId px =
          put.AddBuffer(Buffer{DType::kFloat32, n, BufferKind::kHostInput, "", 11});
      genie::core::ExecuteRequest upload;
      upload.graph = &put;
      upload.uploads.push_back(
          {px, genie::core::HostBytes{x.data_ptr(), static_cast<size_t>(x.nbytes()), nullptr}});
      upload.keep = {px};
      genie::core::Graph sum;
      genie::core::BufferId r =
          sum.AddBuffer(Buffer{DType::kFloat32, n, BufferKind::kResident, "", 12});
      genie::core::BufferId z = sum.AddBuffer(Buffer{DType::kFloat32, 1});
      genie::core::Node op;
      op.op = sum.InternOp("aten::sum");
      op.args = {genie::core::Arg::Tensor(TensorRef::Contiguous(r, DType::kFloat32, {n})),
                 genie::core::Arg::None()};
      op.outputs = {TensorRef::Contiguous(z, DType::kFloat32, {})};
      sum.AddNode(std::move(op));
      sum.outputs().push_back(TensorRef::Contiguous(z, DType::kFloat32, {}));
      genie::core::ExecuteRequest read;
      read.graph = &sum;
      read.fingerprint = 1;
      genie::core::PeerSend send;
      send.handle = 11;
      send.numel = n;
      send.peer = "127.0.0.1:" + std::to_string(b.port());
      send.peer_handle = 12;
      const double want = x.sum().item<double>();
      absl::Status failed = (*to_a)->Execute(upload).status();
      double got = 0;
      for (int i = 0; failed.ok() && i < 3; ++i) {
        absl::StatusOr<int64_t> sent = (*to_a)->SendToPeer(send);
        absl::StatusOr<genie::core::ExecuteResult> res =
            sent.ok() ? (*to_b)->Execute(read)
                      : absl::StatusOr<genie::core::ExecuteResult>(sent.status());
        failed = res.status();
        if (res.ok()) got = *static_cast<const float*>(res->outputs.at(0).data);
      }
      if (failed.ok() && std::abs(got - want) > 1e-3 * (1 + std::abs(want))) {
        failed = absl::DataLossError("B's sum differs from the tensor A sent");
      }
      if (!failed.ok()) {
        state.SkipWithError(std::string(failed.message()).c_str());
      } else {
        for (auto _ : state) {
          absl::StatusOr<int64_t> sent = (*to_a)->SendToPeer(send);
          absl::StatusOr<genie::core::ExecuteResult> res = (*to_b)->Execute(read);
          if (!sent.ok() || !res.ok()) {
            state.SkipWithError("a transfer failed");
            break;
          }
          benchmark::DoNotOptimize(res->outputs.at(0).data);
        }
        state.SetBytesProcessed(state.iterations() * state.range(0));
        state.counters["cuda_ipc_sends"] = static_cast<double>((*a)->peer_stats().cuda_ipc_sends);
      }
    }
  }
  (*a)->Shutdown();
  serve.join();
}
BENCHMARK_CAPTURE(BM_PeerSend, cuda_ipc, true)
    ->Arg(4 << 20)
    ->Arg(64 << 20)
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_PeerSend, tcp, false)
    ->Arg(4 << 20)
    ->Arg(64 << 20)
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1)
    ->UseRealTime();

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
  req.uploads.push_back(
      {chains.x, genie::core::HostBytes{x.data_ptr(), static_cast<size_t>(x.nbytes()), nullptr}});
  req.uploads.push_back(
      {chains.w, genie::core::HostBytes{w.data_ptr(), static_cast<size_t>(w.nbytes()), nullptr}});
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

BENCHMARK_CAPTURE(BM_TwoBranches, streams1_eager, 1, false)
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1);
BENCHMARK_CAPTURE(BM_TwoBranches, streams4_eager, 4, false)
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1);
BENCHMARK_CAPTURE(BM_TwoBranches, streams1_graph, 1, true)
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1);
BENCHMARK_CAPTURE(BM_TwoBranches, streams4_graph, 4, true)
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1);

BENCHMARK_CAPTURE(BM_Upload, local_cuda, Where::kLocal)
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Upload, genie_remote, Where::kRemote)
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Upload, genie_remote_one_socket, Where::kRemoteOneSocket)
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Upload, genie_remote_shm, Where::kRemoteShm)
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Upload, genie_remote_shm_rings, Where::kRemoteShmRings)
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Download, local_cuda, Where::kLocal)
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Download, genie_remote, Where::kRemote)
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Download, genie_remote_one_socket, Where::kRemoteOneSocket)
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Download, genie_remote_shm, Where::kRemoteShm)
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Download, genie_remote_shm_rings, Where::kRemoteShmRings)
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1)
    ->UseRealTime();

// Every model in every mode, one name each: local_cuda / genie_remote (NoGradGuard, as
// before), local_cuda_inference / genie_remote_inference (InferenceMode on both sides),
// genie_remote_inference_dispatch128 (plus SetAutoDispatch(128)),
// genie_remote_inference_one_socket (Tcp on one socket, transport::TcpOneSocket, against the
// lanes every other Tcp case has), genie_remote_inference_cow (copy-on-write snapshots on),
// genie_remote_inference_not_ahead (inputs uploaded with the step's first part, not at
// `.to()`: RemoteExecutorOptions::upload_ahead_min_bytes = 0),
// genie_remote_inference_busypoll[_dispatch128] (node and client spin up to 5 ms on their
// sockets before sleeping), *_dispatchNxG (SetAutoDispatch(N, G): parts of N, N*G, ...
// nodes), *_nodispatch (steps not cut; the other remote cases take the session's default,
// which cuts steps on GPU nodes), genie_remote_no_graphs, and genie_remote_shm /
// genie_remote_shm_inference (client <-> node over shared memory, transport::Shm, whose
// tensor pool carries the inputs and outputs; BM_Upload/BM_Download's *_shm_rings cases
// measure the rings alone).
const bool kModelsRegistered = [] {
  using Fn = void (*)(benchmark::State&, Mode);
  const std::pair<const char*, Fn> models[] = {{"BM_VitB16", BM_VitB16},
                                               {"BM_BertBase", BM_BertBase},
                                               {"BM_Gpt2SmallDecode", BM_Gpt2SmallDecode}};
  std::vector<std::pair<std::string, Mode>> modes = {
      {"local_cuda", Mode{false, false, 0}},
      {"genie_remote", Mode{true, false, -1}},
      {"local_cuda_inference", Mode{false, true, 0}},
      {"genie_remote_inference", Mode{true, true, -1}},
      {"genie_remote_inference_nodispatch", Mode{true, true, 0}},
  };
  Mode one_socket{true, true, -1};
  one_socket.one_socket = true;
  modes.push_back({"genie_remote_inference_one_socket", one_socket});
  Mode copy_on_write{true, true, -1};
  copy_on_write.copy_on_write = true;
  modes.push_back({"genie_remote_inference_cow", copy_on_write});
  Mode not_ahead{true, true, -1};
  not_ahead.upload_ahead = false;
  modes.push_back({"genie_remote_inference_not_ahead", not_ahead});
  modes.push_back({"genie_remote_inference_dispatch128", Mode{true, true, 128}});
  modes.push_back({"genie_remote_inference_busypoll", Mode{true, true, -1, true, 5000}});
  modes.push_back(
      {"genie_remote_inference_busypoll_dispatch128", Mode{true, true, 128, true, 5000}});
  // Parts that grow: 32, 64, 128, ... nodes (x2) or 32, 128, ... (x4) per step.
  for (const auto& [first, growth] : {std::pair<int, int>{32, 2}, {64, 2}, {32, 4}, {16, 4}}) {
    const std::string cut = "dispatch" + std::to_string(first) + "x" + std::to_string(growth);
    modes.push_back(
        {"genie_remote_inference_" + cut, Mode{true, true, first, true, 0, false, growth}});
    modes.push_back({"genie_remote_inference_busypoll_" + cut,
                     Mode{true, true, first, true, 5000, false, growth}});
    modes.push_back(
        {"genie_remote_shm_inference_" + cut, Mode{true, true, first, true, 0, true, growth}});
  }
  modes.push_back({"genie_remote_no_graphs", Mode{true, false, 0, false}});
  modes.push_back({"genie_remote_shm", Mode{true, false, -1, true, 0, /*shm=*/true}});
  modes.push_back({"genie_remote_shm_inference", Mode{true, true, -1, true, 0, /*shm=*/true}});
  modes.push_back(
      {"genie_remote_shm_inference_nodispatch", Mode{true, true, 0, true, 0, /*shm=*/true}});
  modes.push_back(
      {"genie_remote_shm_inference_busypoll", Mode{true, true, -1, true, 5000, /*shm=*/true}});
  // The same with TF32 on (Mode::tf32), for the comparison with PyTorch RPC at that precision.
  for (auto [name, mode] : std::vector<std::pair<std::string, Mode>>{
           {"local_cuda_inference", Mode{false, true, 0}},
           {"genie_remote_inference", Mode{true, true, -1}},
           {"genie_remote_shm_inference", Mode{true, true, -1, true, 0, /*shm=*/true}},
           {"genie_remote_shm_inference_busypoll",
            Mode{true, true, -1, true, 5000, /*shm=*/true}}}) {
    mode.tf32 = true;
    modes.push_back({name + "_tf32", mode});
  }
  for (const auto& [model, fn] : models) {
    for (const auto& [name, mode] : modes) {
      // Real time decides the iteration count: the remote client's CPU is mostly idle.
      benchmark::RegisterBenchmark((std::string(model) + "/" + name).c_str(), fn, mode)
          ->Unit(benchmark::kMillisecond)
          ->MinTime(2)
          ->UseRealTime();
    }
  }
  return true;
}();

}  // namespace
