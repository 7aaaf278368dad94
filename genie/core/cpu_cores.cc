// File: genie/core/cpu_cores.cc
// The cores this process may use (see cpu_cores.h).
#include "genie/core/cpu_cores.h"

#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace genie::core {

namespace {

// The first line of `path`, or "" when it cannot be read.
std::string FirstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (in) std::getline(in, line);
  return line;
}

// Cores for `quota` microseconds of CPU per `period`, rounded up; 0 for no quota.
int QuotaCores(int64_t quota, int64_t period) {
  if (quota <= 0 || period <= 0) return 0;
  return static_cast<int>(std::max<int64_t>(1, (quota + period - 1) / period));
}

// cgroup v2: "max 100000" (none) or "QUOTA PERIOD".
int V2Cores(const std::string& dir) {
  std::vector<std::string> f = absl::StrSplit(FirstLine(dir + "/cpu.max"), ' ', absl::SkipEmpty());
  int64_t quota = 0, period = 0;
  if (f.size() != 2 || !absl::SimpleAtoi(f[0], &quota) || !absl::SimpleAtoi(f[1], &period))
    return 0;
  return QuotaCores(quota, period);
}

// cgroup v1: cpu.cfs_quota_us (-1: none) over cpu.cfs_period_us.
int V1Cores(const std::string& dir) {
  int64_t quota = 0, period = 0;
  if (!absl::SimpleAtoi(FirstLine(dir + "/cpu.cfs_quota_us"), &quota) ||
      !absl::SimpleAtoi(FirstLine(dir + "/cpu.cfs_period_us"), &period)) {
    return 0;
  }
  return QuotaCores(quota, period);
}

// The smallest quota from base + path up to base (0: none).
template <class Read>
int SmallestUpFrom(const std::string& base, absl::string_view path, Read read) {
  int best = 0;
  std::string p(absl::StripSuffix(path, "/"));
  for (;;) {
    const int cores = read(base + p);
    if (cores > 0 && (best == 0 || cores < best)) best = cores;
    if (p.empty()) return best;
    const size_t slash = p.rfind('/');
    p.resize(slash == std::string::npos ? 0 : slash);
  }
}

bool IsDirectory(const std::string& path) { return std::ifstream(path + "/cgroup.procs").good(); }
// The root of a cgroup v2 hierarchy (only v2 has cgroup.controllers).
bool IsV2Root(const std::string& path) {
  return std::ifstream(path + "/cgroup.controllers").good();
}

}  // namespace

int CgroupCpuQuotaCores(std::string_view proc_self_cgroup, const std::string& root) {
  int best = 0;
  auto take = [&best](int cores) {
    if (cores > 0 && (best == 0 || cores < best)) best = cores;
  };
  const absl::string_view text(proc_self_cgroup.data(), proc_self_cgroup.size());
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    // "ID:CONTROLLERS:PATH"; cgroup v2 is "0::PATH".
    std::vector<absl::string_view> f = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (f.size() != 3) continue;
    if (f[0] == "0" && f[1].empty()) {
      // v2 at the mount itself, or under "unified" beside v1's controllers (hybrid).
      const std::string base =
          !IsV2Root(root) && IsV2Root(root + "/unified") ? root + "/unified" : root;
      take(SmallestUpFrom(base, f[2], V2Cores));
      continue;
    }
    const std::vector<absl::string_view> controllers = absl::StrSplit(f[1], ',');
    if (std::find(controllers.begin(), controllers.end(), "cpu") == controllers.end()) continue;
    // Mounted as the controller list ("cpu,cpuacct"), often with a "cpu" link beside it.
    for (const std::string& base : {root + "/" + std::string(f[1]), root + "/cpu"}) {
      if (!IsDirectory(base)) continue;
      take(SmallestUpFrom(base, f[2], V1Cores));
      break;
    }
  }
  return best;
}

int UsableCores() {
  int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) cores = CPU_COUNT(&set);
  std::ifstream in("/proc/self/cgroup");
  std::stringstream text;
  text << in.rdbuf();
  const int quota = CgroupCpuQuotaCores(text.str(), "/sys/fs/cgroup");
  return quota > 0 ? std::min(cores, quota) : cores;
}

}  // namespace genie::core
