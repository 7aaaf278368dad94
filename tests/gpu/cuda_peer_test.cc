// File: tests/gpu/cuda_peer_test.cc
// Two processes, one GPU each (cuda:0 exports, cuda:1 imports), move a device buffer with
// CUDA IPC (runtime::CudaIpcExporter / CudaIpcImporter) and the ack protocol: the bytes go
// GPU to GPU, never through either host's memory, and the exporter holds its memory until
// the ack. Skips with a reason without a CUDA build or without two GPUs.
#include "genie/runtime/cuda_peer.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
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

TEST(CudaPeerTest, TwoProcessesCopyGpuToGpuWithAck) {
  int down[2], up[2];
  ASSERT_EQ(pipe(down), 0);
  ASSERT_EQ(pipe(up), 0);
  // Fork before this process touches CUDA: a child may not inherit a CUDA context.
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(down[1]);
    close(up[0]);
    _exit(Exporter(up[1], down[0]));
  }
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
#else
TEST(CudaPeerTest, TwoProcessesCopyGpuToGpuWithAck) {
  EXPECT_EQ(CudaIpcExporter::Create(0).status().code(), absl::StatusCode::kUnimplemented);
  GTEST_SKIP() << "no CUDA device: this build has no CUDA (build with --config=cuda and run on "
                  "a GPU machine with two GPUs)";
}
#endif

}  // namespace
}  // namespace genie::runtime
