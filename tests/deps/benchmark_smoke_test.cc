// Proves Google Benchmark 1.7 links and runs: a registered benchmark executes
// iterations and reports them to a custom reporter.
#include <benchmark/benchmark.h>

#include <vector>

#include "gtest/gtest.h"

namespace {

class CountingReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) iterations += r.iterations;
  }
  long long iterations = 0;
};

void BM_Sum(benchmark::State& state) {
  long long s = 0;
  for (auto _ : state) benchmark::DoNotOptimize(s += 1);
}

TEST(BenchmarkSmoke, RunsRegisteredBenchmark) {
  benchmark::RegisterBenchmark("BM_Sum", BM_Sum)->Iterations(1000);
  int argc = 1;
  char arg0[] = "benchmark_smoke_test";
  char* argv[] = {arg0, nullptr};
  benchmark::Initialize(&argc, argv);
  CountingReporter reporter;
  EXPECT_EQ(benchmark::RunSpecifiedBenchmarks(&reporter), 1u);
  EXPECT_EQ(reporter.iterations, 1000);
}

}  // namespace
