// File: genie/runtime/intra_op_threads.cc
// The calling thread's intra-op threads. libtorch's CPU build runs its parallel regions on
// OpenMP (the libgomp it ships) and its GEMMs on MKL's OpenMP threading: both read
// per-thread settings, which we set through the runtimes' own entry points, looked up once
// in the loaded libraries (no link-time dependency on a particular OpenMP or MKL).
#include "genie/runtime/intra_op_threads.h"

#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <dlfcn.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace genie::runtime {
namespace {

struct Runtimes {
  void (*omp_set_num_threads)(int) = nullptr;
  int (*mkl_set_num_threads_local)(int) = nullptr;  // returns the previous local count
};

const Runtimes& Loaded() {
  static const Runtimes r = [] {
    Runtimes x;
    x.omp_set_num_threads = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
    // MKL's C entry point (mkl_service.h maps mkl_set_num_threads_local to it); the
    // lower-case symbol is the Fortran one, which takes a pointer.
    x.mkl_set_num_threads_local =
        reinterpret_cast<int (*)(int)>(dlsym(RTLD_DEFAULT, "MKL_Set_Num_Threads_Local"));
    return x;
  }();
  return r;
}

}  // namespace

absl::Status SetIntraOpThreadsOfThisThread(int threads) {
  if (threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("intra-op threads must be 1 or more, got ", threads));
  }
  const Runtimes& r = Loaded();
  if (r.omp_set_num_threads == nullptr) {
    return absl::UnimplementedError(
        "this libtorch runs no OpenMP (omp_set_num_threads not found); intra-op threads unchanged");
  }
  // ATen initialises each thread's count lazily on its first parallel op, which would undo
  // a setting made before: initialise first.
  at::internal::lazy_init_num_threads();
  r.omp_set_num_threads(threads);
  if (r.mkl_set_num_threads_local != nullptr) (void)r.mkl_set_num_threads_local(threads);
  return absl::OkStatus();
}

int IntraOpThreadsOfThisThread() { return at::get_num_threads(); }

int IntraOpThreadsFor(const core::Graph& graph, int max_threads) {
  static_assert(kParallelGrain == at::internal::GRAIN_SIZE, "keep ATen's grain");
  for (const core::Node& n : graph.nodes()) {
    for (const core::TensorRef& r : n.outputs) {
      int64_t numel = 1;
      for (int64_t d : r.sizes) numel *= d;
      if (numel >= kParallelGrain) return std::max(1, max_threads);
    }
  }
  return 1;
}

}  // namespace genie::runtime
