// File: benchmarks/bench_session.h
// What the benchmarks that drive a genie::Session share: options whose embedded nodes log
// nothing per connection or run, and a start that skips the benchmark, with the reason,
// when the session cannot start.
//
//   auto session = genie::benchmarks::StartSessionOrSkip<Deployment>(state, QuietSessionOptions());
//   if (!session) return;
#ifndef GENIE_BENCHMARKS_BENCH_SESSION_H_
#define GENIE_BENCHMARKS_BENCH_SESSION_H_

#include <benchmark/benchmark.h>

#include <memory>
#include <string>

#include "genie/client/session.h"

namespace genie::benchmarks {

inline SessionOptions QuietSessionOptions() {
  SessionOptions o;
  o.embedded.log_connections = false;
  o.embedded.log_runs = false;
  return o;
}

// The started session, or null after state.SkipWithError(the reason).
template <class D>
std::unique_ptr<Session<D>> StartSessionOrSkip(benchmark::State& state, const SessionOptions& options) {
  auto s = Session<D>::Start(options);
  if (!s.ok()) {
    state.SkipWithError(std::string(s.status().message()).c_str());
    return nullptr;
  }
  return std::move(*s);
}

}  // namespace genie::benchmarks

#endif  // GENIE_BENCHMARKS_BENCH_SESSION_H_
