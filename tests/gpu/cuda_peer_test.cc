// File: tests/gpu/cuda_peer_test.cc
// Two processes, one GPU each (cuda:0 exports, cuda:1 imports), move a device buffer with
// CUDA IPC (runtime::CudaIpcExporter / CudaIpcImporter) and the ack protocol: the bytes go
// GPU to GPU, never through either host's memory, and the exporter holds its memory until
// the ack; then the same between two runtime::Interpreters (the node-side hooks
// ResidentDeviceBuffer / AdoptDeviceBuffer). Skips with a reason without a CUDA build or
// without two GPUs.
#include "genie/runtime/cuda_peer.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "genie/core/executor.h"
#include "genie/core/graph.h"
#include "genie/client/remote_executor.h"
#include "genie/runtime/interpreter.h"
#include "genie/runtime/node_server.h"
#include "genie/transport/tcp.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#if GENIE_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace genie::runtime {
namespace {

TEST(CudaIpcDescriptorTest, RoundTripsAndRefusesGarbage) {
  CudaIpcDescriptor d;
  d.memory[0] = 7;
  d.event[63] = 9;
  d.offset = 4096;
  d.nbytes = 1 << 20;
  d.device = 1;
  d.pid = 1234;
  d.export_id = 77;
  absl::StatusOr<CudaIpcDescriptor> back = CudaIpcDescriptor::Decode(d.Encode());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->memory, d.memory);
  EXPECT_EQ(back->event, d.event);
  EXPECT_EQ(back->offset, 4096u);
  EXPECT_EQ(back->nbytes, 1u << 20);
  EXPECT_EQ(back->device, 1);
  EXPECT_EQ(back->export_id, 77u);
  EXPECT_FALSE(CudaIpcDescriptor::Decode("short").ok());
  std::string bad = d.Encode();
  bad[0] ^= 1;
  EXPECT_FALSE(CudaIpcDescriptor::Decode(bad).ok());
}

#if GENIE_WITH_CUDA
// Length-prefixed messages over a pipe: a tag byte and a body.
bool Send(int fd, char tag, const std::string& body) {
  std::string m(1, tag);
  uint32_t n = static_cast<uint32_t>(body.size());
  m.append(reinterpret_cast<const char*>(&n), 4);
  m += body;
  return write(fd, m.data(), m.size()) == static_cast<ssize_t>(m.size());
}
bool ReadAll(int fd, char* p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}
bool Receive(int fd, char* tag, std::string* body) {
  char head[5];
  if (!ReadAll(fd, head, 5)) return false;
  *tag = head[0];
  uint32_t n;
  std::memcpy(&n, head + 1, 4);
  body->resize(n);
  return ReadAll(fd, body->data(), n);
}

uint32_t Pattern(size_t i) { return static_cast<uint32_t>(i * 2654435761u + 12345u); }

constexpr size_t kWords = size_t{64} << 18;  // 64 MiB of u32
constexpr size_t kOffsetWords = 1024;        // the exported buffer starts 4 KiB in

// The child: exports a buffer of cuda:0, waits for the ack, checks nothing is pending.
int Exporter(int to_parent, int from_parent) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count < 2) {
    Send(to_parent, 'S', count == 0 ? "no CUDA device: run on a GPU machine with two GPUs"
                                    : "one CUDA device: this test needs two (nvidia-h200-x2)");
    return 0;
  }
  absl::StatusOr<std::unique_ptr<CudaIpcExporter>> exporter = CudaIpcExporter::Create(0);
  if (!exporter.ok()) return Send(to_parent, 'E', exporter.status().ToString()), 1;
  cudaSetDevice(0);
  void* base = nullptr;
  if (cudaMalloc(&base, kWords * 4) != cudaSuccess) return Send(to_parent, 'E', "cudaMalloc"), 1;
  std::vector<uint32_t> host(kWords);
  for (size_t i = 0; i < kWords; ++i) host[i] = Pattern(i);
  cudaStream_t stream;
  cudaStreamCreate(&stream);
  cudaMemcpyAsync(base, host.data(), kWords * 4, cudaMemcpyHostToDevice, stream);
  // No host sync: the descriptor's event orders the importer after this copy.
  std::shared_ptr<const void> owner(base, [](const void* p) { cudaFree(const_cast<void*>(p)); });
  absl::StatusOr<CudaIpcDescriptor> d =
      (*exporter)->Export(base, kOffsetWords * 4, (kWords - 2 * kOffsetWords) * 4, stream, owner);
  owner.reset();
  if (!d.ok()) return Send(to_parent, 'E', d.status().ToString()), 1;
  Send(to_parent, 'D', d->Encode());
  char tag;
  std::string body;
  if (!Receive(from_parent, &tag, &body) || tag != 'A') return 1;
  uint64_t id = 0;
  std::memcpy(&id, body.data(), std::min<size_t>(8, body.size()));
  if (!(*exporter)->Release(id).ok()) return Send(to_parent, 'E', "release failed"), 1;
  if ((*exporter)->Release(id).ok()) return Send(to_parent, 'E', "released twice"), 1;
  Send(to_parent, 'R', std::to_string((*exporter)->pending()));
  return 0;
}

// Starts this test binary again as the exporting process (exec, so the child never
// inherits a CUDA context: once this process used CUDA, a plain fork could not), running
// the CudaPeerRole.Exporter "test" with `role` and the two pipe ends.
pid_t SpawnExporter(const char* role, int to_parent, int from_parent) {
  const pid_t pid = fork();
  if (pid != 0) return pid;
  setenv("GENIE_CUDA_PEER_ROLE", absl::StrCat(role, ",", to_parent, ",", from_parent).c_str(), 1);
  char self[] = "/proc/self/exe";
  char filter[] = "--gtest_filter=CudaPeerRole.Exporter";
  char* argv[] = {self, filter, nullptr};
  execv(self, argv);
  _exit(127);
}

TEST(CudaPeerTest, TwoProcessesCopyGpuToGpuWithAck) {
  int down[2], up[2];
  ASSERT_EQ(pipe(down), 0);
  ASSERT_EQ(pipe(up), 0);
  const pid_t pid = SpawnExporter("raw", up[1], down[0]);
  ASSERT_GE(pid, 0);
  close(down[0]);
  close(up[1]);
  auto reap = [&] {
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  char tag;
  std::string body;
  ASSERT_TRUE(Receive(up[0], &tag, &body)) << "the exporter process died";
  if (tag == 'S') {
    reap();
    GTEST_SKIP() << body;
  }
  ASSERT_EQ(tag, 'D') << body;
  absl::StatusOr<CudaIpcDescriptor> d = CudaIpcDescriptor::Decode(body);
  ASSERT_TRUE(d.ok()) << d.status();
  absl::StatusOr<std::unique_ptr<CudaIpcImporter>> importer = CudaIpcImporter::Create(1);
  ASSERT_TRUE(importer.ok()) << importer.status();
  cudaSetDevice(1);
  void* dst = nullptr;
  ASSERT_EQ(cudaMalloc(&dst, d->nbytes), cudaSuccess);
  cudaStream_t stream;
  cudaStreamCreate(&stream);
  const auto t0 = std::chrono::steady_clock::now();
  absl::Status copied = (*importer)->CopyIn(*d, dst, d->nbytes, stream);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(copied.ok()) << copied;
  // Too small a destination is refused before anything is mapped.
  EXPECT_FALSE((*importer)->CopyIn(*d, dst, d->nbytes - 1, stream).ok());
  std::vector<uint32_t> back(d->nbytes / 4);
  ASSERT_EQ(cudaMemcpy(back.data(), dst, d->nbytes, cudaMemcpyDeviceToHost), cudaSuccess);
  size_t wrong = 0;
  for (size_t i = 0; i < back.size(); ++i) wrong += back[i] != Pattern(i + kOffsetWords);
  EXPECT_EQ(wrong, 0u) << "words that differ from what cuda:0 held";
  std::printf("CUDA IPC cuda:0 -> cuda:1: %.1f MiB in %.2f ms (first transfer, mapping included) = %.1f GB/s\n",
              d->nbytes / 1048576.0, ms, d->nbytes / ms / 1e6);
  uint64_t id = d->export_id;
  ASSERT_TRUE(Send(down[1], 'A', std::string(reinterpret_cast<const char*>(&id), 8)));
  ASSERT_TRUE(Receive(up[0], &tag, &body));
  EXPECT_EQ(tag, 'R') << body;
  EXPECT_EQ(body, "0") << "exports still pending after the ack";
  EXPECT_EQ(reap(), 0);
  cudaFree(dst);
}
// The node-side hooks: a genie interpreter on cuda:0 (its own process) exports a resident
// tensor an op produced; an interpreter on cuda:1 adopts it as resident and a run reads it.
constexpr int64_t kElems = 1 << 20;
constexpr uint64_t kSentHandle = 5, kReceivedHandle = 9;

int InterpreterExporter(int to_parent, int from_parent) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count < 2) {
    Send(to_parent, 'S', "needs two CUDA devices");
    return 0;
  }
  using core::Arg;
  using core::DType;
  using core::TensorRef;
  core::Graph g;
  core::BufferId x = g.AddBuffer(core::Buffer{DType::kFloat32, kElems, core::BufferKind::kHostInput});
  core::BufferId y = g.AddBuffer(core::Buffer{DType::kFloat32, kElems, core::BufferKind::kIntermediate, "", kSentHandle});
  core::Node n;
  n.op = g.InternOp("aten::mul.Scalar");
  n.args = {Arg::Tensor(TensorRef::Contiguous(x, DType::kFloat32, {kElems})), Arg::Double(2.0)};
  n.outputs = {TensorRef::Contiguous(y, DType::kFloat32, {kElems})};
  g.AddNode(std::move(n));
  std::vector<float> host(kElems);
  for (int64_t i = 0; i < kElems; ++i) host[i] = 0.5f * static_cast<float>(i % 4099);
  runtime::InterpreterOptions o;
  o.device = "cuda:0";
  runtime::Interpreter interpreter(o);
  core::ExecuteRequest req;
  req.graph = &g;
  req.uploads.push_back({x, core::HostBytes{host.data(), host.size() * 4, nullptr}});
  req.keep = {y};
  absl::StatusOr<core::ExecuteResult> r = interpreter.Execute(req);
  if (!r.ok()) return Send(to_parent, 'E', r.status().ToString()), 1;
  absl::StatusOr<runtime::Interpreter::DeviceBuffer> buf = interpreter.ResidentDeviceBuffer(kSentHandle);
  if (!buf.ok()) return Send(to_parent, 'E', buf.status().ToString()), 1;
  absl::StatusOr<std::unique_ptr<CudaIpcExporter>> exporter = CudaIpcExporter::Create(0);
  if (!exporter.ok()) return Send(to_parent, 'E', exporter.status().ToString()), 1;
  absl::StatusOr<CudaIpcDescriptor> d = (*exporter)->Export(buf->base, buf->offset, buf->nbytes, buf->stream, buf->owner);
  if (!d.ok()) return Send(to_parent, 'E', d.status().ToString()), 1;
  buf->owner.reset();
  // Forget the handle here: the export alone keeps the memory until the ack.
  core::Graph none;
  core::ExecuteRequest forget;
  forget.graph = &none;
  forget.release = {kSentHandle};
  (void)interpreter.Execute(forget);
  Send(to_parent, 'D', d->Encode());
  char tag;
  std::string body;
  if (!Receive(from_parent, &tag, &body) || tag != 'A') return 1;
  if (!(*exporter)->Release(d->export_id).ok()) return Send(to_parent, 'E', "release failed"), 1;
  Send(to_parent, 'R', std::to_string((*exporter)->pending()));
  return 0;
}

TEST(CudaPeerTest, InterpretersOnTwoGpusHandAResidentTensorOver) {
  int down[2], up[2];
  ASSERT_EQ(pipe(down), 0);
  ASSERT_EQ(pipe(up), 0);
  const pid_t pid = SpawnExporter("interpreter", up[1], down[0]);
  ASSERT_GE(pid, 0);
  close(down[0]);
  close(up[1]);
  auto reap = [&] {
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  char tag;
  std::string body;
  ASSERT_TRUE(Receive(up[0], &tag, &body)) << "the exporting process died";
  if (tag == 'S') {
    reap();
    GTEST_SKIP() << body;
  }
  ASSERT_EQ(tag, 'D') << body;
  absl::StatusOr<CudaIpcDescriptor> d = CudaIpcDescriptor::Decode(body);
  ASSERT_TRUE(d.ok()) << d.status();
  absl::StatusOr<std::unique_ptr<CudaIpcImporter>> importer = CudaIpcImporter::Create(1);
  ASSERT_TRUE(importer.ok()) << importer.status();
  runtime::InterpreterOptions o;
  o.device = "cuda:1";
  runtime::Interpreter interpreter(o);
  absl::Status adopted = interpreter.AdoptDeviceBuffer(
      kReceivedHandle, core::DType::kFloat32, kElems,
      [&](void* dst, uint64_t nbytes, void* stream) { return (*importer)->CopyIn(*d, dst, nbytes, stream); });
  ASSERT_TRUE(adopted.ok()) << adopted;
  uint64_t id = d->export_id;
  ASSERT_TRUE(Send(down[1], 'A', std::string(reinterpret_cast<const char*>(&id), 8)));
  // A run on cuda:1 reads the adopted tensor as a resident buffer.
  core::Graph g;
  core::BufferId r = g.AddBuffer(core::Buffer{core::DType::kFloat32, kElems, core::BufferKind::kResident, "", kReceivedHandle});
  g.outputs().push_back(core::TensorRef::Contiguous(r, core::DType::kFloat32, {kElems}));
  core::ExecuteRequest read;
  read.graph = &g;
  absl::StatusOr<core::ExecuteResult> got = interpreter.Execute(read);
  ASSERT_TRUE(got.ok()) << got.status();
  const float* v = static_cast<const float*>(got->outputs.at(0).data);
  int64_t wrong = 0;
  for (int64_t i = 0; i < kElems; ++i) wrong += v[i] != 2.0f * 0.5f * static_cast<float>(i % 4099);
  EXPECT_EQ(wrong, 0) << "elements that differ from 2 * x computed on cuda:0";
  ASSERT_TRUE(Receive(up[0], &tag, &body));
  EXPECT_EQ(tag, 'R') << body;
  EXPECT_EQ(body, "0");
  EXPECT_EQ(reap(), 0);
}

// ---- genie-node's kPeerSend over CUDA IPC ------------------------------------------------
// Node B (cuda:1) is a NodeServer in a child process; node A (cuda:0) a NodeServer in this
// one; a client connected to both uploads a tensor to A, asks A to send it to B, and runs
// an op on B that reads it. With NodeOptions::peer_cuda_ipc (the default) A hands B the
// device memory (no bytes on TCP); with it off, the same transfer goes over TCP. B's answer
// is the same either way.
const std::string kNodeKey = "cuda-peer-test-key-0123456789abcdef";

int NodeProcess(int to_parent, int from_parent) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count < 2) {
    Send(to_parent, 'S', "needs two CUDA devices (nvidia-h200-x2)");
    return 0;
  }
  NodeOptions o;
  o.device = "cuda:1";
  o.log_connections = false;
  o.log_runs = false;
  absl::StatusOr<std::unique_ptr<NodeServer>> server = NodeServer::Create("127.0.0.1", 0, kNodeKey, o);
  if (!server.ok()) return Send(to_parent, 'E', server.status().ToString()), 1;
  std::thread serve([&] { (*server)->Serve(); });
  Send(to_parent, 'P', std::to_string((*server)->port()));
  char tag;
  std::string body;
  (void)Receive(from_parent, &tag, &body);  // until the parent says stop or goes away
  (*server)->Shutdown();
  serve.join();
  return 0;
}

TEST(CudaPeerTest, NodesSendGpuToGpuOverCudaIpc) {
  int down[2], up[2];
  ASSERT_EQ(pipe(down), 0);
  ASSERT_EQ(pipe(up), 0);
  const pid_t pid = SpawnExporter("node", up[1], down[0]);
  ASSERT_GE(pid, 0);
  close(down[0]);
  close(up[1]);
  auto stop_child = [&] {
    Send(down[1], 'Q', "");
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  char tag;
  std::string body;
  ASSERT_TRUE(Receive(up[0], &tag, &body)) << "the node process died";
  if (tag == 'S') {
    stop_child();
    GTEST_SKIP() << body;
  }
  ASSERT_EQ(tag, 'P') << body;
  const uint16_t port_b = static_cast<uint16_t>(std::stoi(body));
  constexpr int64_t n = 1 << 20;
  for (bool ipc : {true, false}) {
    SCOPED_TRACE(ipc ? "CUDA IPC" : "TCP");
    NodeOptions o;
    o.device = "cuda:0";
    o.log_connections = false;
    o.log_runs = false;
    o.peer_cuda_ipc = ipc;
    absl::StatusOr<std::unique_ptr<NodeServer>> a = NodeServer::Create("127.0.0.1", 0, kNodeKey, o);
    ASSERT_TRUE(a.ok()) << a.status();
    std::thread serve([&] { (*a)->Serve(); });
    {
      auto to_a = client::RemoteExecutor<transport::Tcp>::Connect("127.0.0.1", (*a)->port(), kNodeKey);
      auto to_b = client::RemoteExecutor<transport::Tcp>::Connect("127.0.0.1", port_b, kNodeKey);
      ASSERT_TRUE(to_a.ok()) << to_a.status();
      ASSERT_TRUE(to_b.ok()) << to_b.status();
      std::vector<float> host(n);
      for (int64_t i = 0; i < n; ++i) host[i] = 0.25f * static_cast<float>(i % 8191) + (ipc ? 1.0f : 2.0f);
      // On A: y = x * 2, kept under handle 21.
      core::Graph g;
      core::BufferId x = g.AddBuffer(core::Buffer{core::DType::kFloat32, n, core::BufferKind::kHostInput});
      core::BufferId y = g.AddBuffer(core::Buffer{core::DType::kFloat32, n, core::BufferKind::kIntermediate, "", 21});
      core::Node mul;
      mul.op = g.InternOp("aten::mul.Scalar");
      mul.args = {core::Arg::Tensor(core::TensorRef::Contiguous(x, core::DType::kFloat32, {n})), core::Arg::Double(2.0)};
      mul.outputs = {core::TensorRef::Contiguous(y, core::DType::kFloat32, {n})};
      g.AddNode(std::move(mul));
      core::ExecuteRequest run_a;
      run_a.graph = &g;
      run_a.uploads.push_back({x, core::HostBytes{host.data(), host.size() * 4, nullptr}});
      run_a.keep = {y};
      absl::StatusOr<core::ExecuteResult> on_a = (*to_a)->Execute(run_a);
      ASSERT_TRUE(on_a.ok()) << on_a.status();
      // A -> B, kept there under handle 33.
      core::PeerSend send;
      send.handle = 21;
      send.dtype = core::DType::kFloat32;
      send.numel = n;
      send.peer = absl::StrCat("127.0.0.1:", port_b);
      send.peer_handle = 33;
      absl::StatusOr<int64_t> sent = (*to_a)->SendToPeer(send);
      ASSERT_TRUE(sent.ok()) << sent.status();
      EXPECT_EQ(*sent, n * 4);
      EXPECT_EQ((*a)->peer_stats().cuda_ipc_sends, ipc ? 1 : 0);
      EXPECT_EQ((*a)->peer_stats().sends, 1);
      // On B: z = r + 1 with r the received handle, read back.
      core::Graph h;
      core::BufferId r = h.AddBuffer(core::Buffer{core::DType::kFloat32, n, core::BufferKind::kResident, "", 33});
      core::BufferId z = h.AddBuffer(core::Buffer{core::DType::kFloat32, n});
      core::Node add;
      add.op = h.InternOp("aten::add.Scalar");
      add.args = {core::Arg::Tensor(core::TensorRef::Contiguous(r, core::DType::kFloat32, {n})), core::Arg::Double(1.0),
                  core::Arg::Double(1.0)};
      add.outputs = {core::TensorRef::Contiguous(z, core::DType::kFloat32, {n})};
      h.AddNode(std::move(add));
      h.outputs().push_back(core::TensorRef::Contiguous(z, core::DType::kFloat32, {n}));
      core::ExecuteRequest run_b;
      run_b.graph = &h;
      absl::StatusOr<core::ExecuteResult> on_b = (*to_b)->Execute(run_b);
      ASSERT_TRUE(on_b.ok()) << on_b.status();
      const float* v = static_cast<const float*>(on_b->outputs.at(0).data);
      int64_t wrong = 0;
      for (int64_t i = 0; i < n; ++i) wrong += v[i] != host[i] * 2.0f + 1.0f;
      EXPECT_EQ(wrong, 0) << "elements of B's result that differ from 2 * x + 1";
    }
    (*a)->Shutdown();
    serve.join();
  }
  EXPECT_EQ(stop_child(), 0);
}

// Not a test of its own: the body of the exporting process SpawnExporter starts.
TEST(CudaPeerRole, Exporter) {
  const char* env = std::getenv("GENIE_CUDA_PEER_ROLE");
  if (env == nullptr) GTEST_SKIP() << "runs only as the exporting process of the CudaPeerTest tests";
  const std::vector<std::string> parts = absl::StrSplit(env, ',');
  int to_parent = -1, from_parent = -1;
  if (parts.size() != 3 || !absl::SimpleAtoi(parts[1], &to_parent) || !absl::SimpleAtoi(parts[2], &from_parent)) _exit(2);
  int rc = 1;
  try {
    rc = parts[0] == "raw"    ? Exporter(to_parent, from_parent)
         : parts[0] == "node" ? NodeProcess(to_parent, from_parent)
                              : InterpreterExporter(to_parent, from_parent);
  } catch (const std::exception& e) {
    Send(to_parent, 'E', e.what());
  }
  _exit(rc);
}
#else
TEST(CudaPeerTest, TwoProcessesCopyGpuToGpuWithAck) {
  EXPECT_EQ(CudaIpcExporter::Create(0).status().code(), absl::StatusCode::kUnimplemented);
  GTEST_SKIP() << "no CUDA device: this build has no CUDA (build with --config=cuda and run on "
                  "a GPU machine with two GPUs)";
}
#endif

}  // namespace
}  // namespace genie::runtime
