// File: tools/device/cuda_check.cc
// Device check for the GPU machines: a binary built on the CPU machine with Bazel must
// find CUDA through the GPU machine's torch 2.11 libraries. Prints what it sees, runs a
// matmul on CUDA and compares it with the CPU result. Exit 0 on success, 2 when there
// is no GPU, 1 on a wrong result.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <cstdio>

int main() {
  std::printf("torch %s\n", TORCH_VERSION);
  const bool available = torch::cuda::is_available();
  std::printf("torch::cuda::is_available() = %s\n", available ? "true" : "false");
  if (!available) {
    std::printf("no CUDA device visible: nothing more to check\n");
    return 2;
  }
  std::printf("torch::cuda::device_count() = %d\n", static_cast<int>(torch::cuda::device_count()));
  at::globalContext().setAllowTF32CuBLAS(false);
  at::manual_seed(0);
  at::Tensor a = at::randn({1024, 1024});
  at::Tensor b = at::randn({1024, 1024});
  at::Tensor expected = at::matmul(a, b);
  at::Tensor got = at::matmul(a.cuda(), b.cuda()).cpu();
  const double err = (got - expected).abs().max().item<double>();
  std::printf("matmul 1024x1024 fp32 on %s: max abs error vs CPU = %.3g\n",
              at::Device(at::kCUDA, 0).str().c_str(), err);
  return err < 1e-3 ? 0 : 1;
}
