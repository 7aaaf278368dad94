// File: genie/runtime/intra_op_threads.h
// How many threads ATen's CPU kernels (OpenMP regions, MKL GEMMs) use for the ops the
// calling thread runs. A node sets it once per session thread, so a node embedded in a
// user's process (genie::Session) never changes the threads of the user's own ops, and
// every session of a genie-node gets the same setting.
//
//   runtime::SetIntraOpThreadsOfThisThread(1);  // this thread's ops run on it alone
//   runtime::IntraOpThreadsOfThisThread();      // 1
//   runtime::IntraOpThreadsFor(graph, 8);       // 1 for a graph of small ops, else 8
//
// Why a node wants few: a captured graph of small ops (a toy VQA model: 98 ops of tens of
// microseconds each) pays an OpenMP fork and join, with futex wake-ups and task switches,
// for every parallel region, more than the region saves; at::parallel_for and MKL decide
// per op and cannot see that the next op is just as small.
//
// at::set_num_threads would do the same but also changes the process-wide default that
// every thread started later inherits; this touches only the calling thread (OpenMP's
// nthreads ICV and MKL's thread-local count). This header does not include libtorch.
#ifndef GENIE_RUNTIME_INTRA_OP_THREADS_H_
#define GENIE_RUNTIME_INTRA_OP_THREADS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "genie/core/graph.h"

namespace genie::runtime {

// Sets the calling thread's intra-op threads to `threads` (>= 1). InvalidArgument for
// threads < 1; Unimplemented when this libtorch has no OpenMP (then nothing changes).
absl::Status SetIntraOpThreadsOfThisThread(int threads);

// The intra-op threads ATen uses for ops the calling thread runs (at::get_num_threads).
int IntraOpThreadsOfThisThread();

// The threads a program's ops are worth (a node's automatic setting): one when no op of
// `graph` produces as many as kParallelGrain elements, else `max_threads`. kParallelGrain is
// ATen's own grain (at::internal::GRAIN_SIZE): below it ATen runs an elementwise op on one
// thread anyway, and on outputs that small a GEMM or a row-wise kernel gains less from an
// OpenMP fork and join than they cost.
inline constexpr int64_t kParallelGrain = 32768;
int IntraOpThreadsFor(const core::Graph& graph, int max_threads);

}  // namespace genie::runtime

#endif  // GENIE_RUNTIME_INTRA_OP_THREADS_H_
