// File: tests/gpu/shm_pool_gpu_test.cc
// The Shm tensor pool on a CUDA node: an interpreter on cuda:0 reads uploads from page-locked
// shared memory (Interpreter::RegisterHostMemory) and writes outputs into it by DMA
// (ExecuteRequest::output_to), eagerly and through a replayed CUDA graph, giving the CPU
// interpreter's bytes; and a session over Shm with its pool uploads and downloads what local
// CUDA computes, as one over the rings alone does. Skips, saying why, without a CUDA device.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "examples/report.h"
#include "genie/client/session.h"
#include "genie/core/executor.h"
#include "genie/core/graph.h"
#include "genie/core/testing/graph_builder.h"
#include "genie/runtime/interpreter.h"

namespace genie {
namespace {

using core::Arg;
using core::BufferKind;
using core::testing::GraphBuilder;
using core::testing::Vec;

constexpr int64_t kN = 256 * 1024;  // 1 MiB of floats

bool NoCuda() { return !torch::cuda::is_available(); }
#define SKIP_WITHOUT_CUDA()                                                                  \
  if (NoCuda()) {                                                                            \
    GTEST_SKIP() << "no CUDA device on this machine: the GPU tests run on the GPU machines " \
                    "(tools/device/run_gpu.sh packs and runs them there)";                   \
  }

// Shared memory like a pool's (MAP_SHARED), unmapped at the end.
struct Region {
  explicit Region(size_t n) : bytes(n) {
    base = static_cast<char*>(mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  }
  ~Region() {
    if (base != MAP_FAILED) munmap(base, bytes);
  }
  char* base;
  size_t bytes;
};

TEST(ShmPoolGpuTest, InterpreterReadsAndWritesRegisteredSharedMemory) {
  SKIP_WITHOUT_CUDA();
  // y = x * w + x: x from the region, w a resident kept on the first run, y into the region.
  core::Graph g;
  GraphBuilder gb(&g);
  const core::BufferId x = gb.Buffer(kN, BufferKind::kHostInput);
  const core::BufferId w = gb.Buffer(kN, BufferKind::kHostInput);
  const core::BufferId t = gb.Buffer(kN);
  const core::BufferId y = gb.Buffer(kN);
  gb.Op("aten::mul.Tensor", {Arg::Tensor(Vec(x, kN)), Arg::Tensor(Vec(w, kN))}, {Vec(t, kN)});
  gb.Op("aten::add.Tensor", {Arg::Tensor(Vec(t, kN)), Arg::Tensor(Vec(x, kN)), Arg::Int(1)}, {Vec(y, kN)});
  g.outputs().push_back(Vec(y, kN));

  Region region(8 << 20);
  ASSERT_NE(region.base, MAP_FAILED);
  runtime::InterpreterOptions cuda_options;
  cuda_options.device = "cuda:0";
  runtime::Interpreter cuda(cuda_options), cpu;
  ASSERT_TRUE(cuda.RegisterHostMemory(region.base, region.bytes).ok());
  EXPECT_TRUE(cuda.IsRegisteredHostMemory(region.base + 4096, 1 << 20));
  EXPECT_FALSE(cuda.IsRegisteredHostMemory(region.base + region.bytes - 10, 20));
  char* xs = region.base;
  char* ws = region.base + (1 << 20);
  char* out = region.base + (4 << 20);
  for (int step = 0; step < 4; ++step) {  // eager, capture, replays
    torch::Tensor xv = torch::randn({kN}), wv = torch::randn({kN});
    std::memcpy(xs, xv.data_ptr(), kN * 4);
    std::memcpy(ws, wv.data_ptr(), kN * 4);
    core::ExecuteRequest r;
    r.graph = &g;
    r.fingerprint = 77;
    r.uploads = {{x, core::HostBytes{xs, kN * 4, nullptr}}, {w, core::HostBytes{ws, kN * 4, nullptr}}};
    r.output_to = {core::HostDestination{out, kN * 4}};
    auto got = cuda.Execute(r);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->outputs[0].data, out) << "the output was not written in place";
    // The run is over when Execute returns: the caller may reuse the memory at once.
    std::memset(xs, 0, kN * 4);
    r.output_to.clear();
    std::memcpy(xs, xv.data_ptr(), kN * 4);
    auto want = cpu.Execute(r);
    ASSERT_TRUE(want.ok()) << want.status();
    EXPECT_EQ(std::memcmp(out, want->outputs[0].data, kN * 4), 0) << "step " << step;
  }
  cuda.UnregisterHostMemory(region.base);
  EXPECT_FALSE(cuda.IsRegisteredHostMemory(region.base, 4096));
}

template <class D>
void UploadAndDownloadMatchLocalCuda() {
  torch::NoGradGuard no_grad;
  SessionOptions options;
  options.embedded.device = "cuda:0";
  options.embedded.log_connections = false;
  options.embedded.log_runs = false;
  auto session = Session<D>::Start(options);
  ASSERT_TRUE(session.ok()) << session.status();
  const torch::Device remote((*session)->device()), cuda(torch::kCUDA, 0);
  torch::Tensor hidden = torch::randn({8, 128, 768});
  torch::Tensor resident = hidden.to(remote);
  for (int i = 0; i < 4; ++i) {
    torch::Tensor images = torch::randn({8, 3, 224, 224});
    torch::Tensor got = (images.to(remote) * 2.0 + 1.0).to(torch::kCPU);
    torch::Tensor want = (images.to(cuda) * 2.0 + 1.0).to(torch::kCPU);
    EXPECT_TRUE(torch::equal(got, want)) << "upload " << i;
    got = (resident * 3.0).to(torch::kCPU);
    want = (hidden.to(cuda) * 3.0).to(torch::kCPU);
    EXPECT_TRUE(torch::equal(got, want)) << "download " << i;
  }
}

TEST(ShmPoolGpuTest, SessionThroughThePoolMatchesLocalCuda) {
  SKIP_WITHOUT_CUDA();
  UploadAndDownloadMatchLocalCuda<examples::SemanticShmDeployment>();
}

TEST(ShmPoolGpuTest, SessionThroughTheRingsMatchesLocalCuda) {
  SKIP_WITHOUT_CUDA();
  UploadAndDownloadMatchLocalCuda<examples::SemanticShmRingsDeployment>();
}

}  // namespace
}  // namespace genie
