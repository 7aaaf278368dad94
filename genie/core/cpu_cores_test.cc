// File: genie/core/cpu_cores_test.cc
// The cores a process may use: its affinity, cut to a cgroup CPU quota read from a cgroup
// tree built under a temporary root.
#include "genie/core/cpu_cores.h"

#include <gtest/gtest.h>
#include <sched.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace genie::core {
namespace {

// The process's quota, from its real cgroup (0 where none applies).
int OwnQuota() {
  std::ifstream in("/proc/self/cgroup");
  std::stringstream text;
  text << in.rdbuf();
  return CgroupCpuQuotaCores(text.str(), "/sys/fs/cgroup");
}

// The calling thread's affinity, cut to the quota; never below 1 or above the machine.
TEST(CpuCoresTest, UsableCoresAreTheAffinityWithinTheQuota) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  const int quota = OwnQuota();
  EXPECT_EQ(UsableCores(), quota > 0 ? std::min(quota, CPU_COUNT(&set)) : CPU_COUNT(&set));
  EXPECT_GE(UsableCores(), 1);
  EXPECT_LE(UsableCores(), static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
}

// A thread pinned to one core (as `taskset -c N` pins a process) may use one core, whatever
// the machine has; one allowed two cores may use two unless a quota says fewer.
TEST(CpuCoresTest, UsableCoresFollowAnAffinityNarrowedAtRunTime) {
  cpu_set_t all;
  CPU_ZERO(&all);
  ASSERT_EQ(sched_getaffinity(0, sizeof(all), &all), 0);
  std::vector<int> allowed;
  for (int c = 0; c < CPU_SETSIZE && static_cast<int>(allowed.size()) < 2; ++c) {
    if (CPU_ISSET(c, &all)) allowed.push_back(c);
  }
  // UsableCores on a thread narrowed to `cpus`; -1 when the thread may not be narrowed.
  auto usable_with = [](const std::vector<int>& cpus) {
    int got = -1;
    std::thread t([&] {
      cpu_set_t set;
      CPU_ZERO(&set);
      for (int c : cpus) CPU_SET(c, &set);
      if (sched_setaffinity(0, sizeof(set), &set) == 0) got = UsableCores();
    });
    t.join();
    return got;
  };
  const int one = usable_with({allowed[0]});
  if (one == -1) GTEST_SKIP() << "sched_setaffinity is refused here: cannot narrow a thread";
  EXPECT_EQ(one, 1);
  if (allowed.size() < 2) GTEST_SKIP() << "this process may run on one core only";
  const int quota = OwnQuota();
  EXPECT_EQ(usable_with(allowed), quota > 0 ? std::min(quota, 2) : 2);
}

// A cgroup tree under a temporary root: `files` maps paths below it to contents. Each
// directory gets a cgroup.procs, as the kernel's have.
class CgroupTree {
 public:
  explicit CgroupTree(const std::string& name) : root_(::testing::TempDir() + "/cgroup_" + name) {
    std::filesystem::remove_all(root_);
  }
  ~CgroupTree() { std::filesystem::remove_all(root_); }
  void Write(const std::string& path, const std::string& text) {
    const std::filesystem::path p = std::filesystem::path(root_) / path;
    for (std::filesystem::path d = p.parent_path(); d.string().size() >= root_.size();
         d = d.parent_path()) {
      std::filesystem::create_directories(d);
      std::ofstream(d / "cgroup.procs") << "";
    }
    std::ofstream(p) << text << "\n";
  }
  const std::string& root() const { return root_; }

 private:
  std::string root_;
};

// cgroup v2: the tightest cpu.max on the way from the process's cgroup to the root, rounded
// up to whole cores.
TEST(CpuCoresTest, CgroupV2QuotaIsTheTightestOnThePath) {
  CgroupTree t("v2");
  t.Write("cgroup.controllers", "cpu io memory");
  // A cgroup that happens to be named "unified" is not the hybrid layout's v2 mount.
  t.Write("unified/cgroup.controllers", "cpu");
  t.Write("unified/cpu.max", "100000 100000");
  t.Write("kubepods/pod1/ctr/cpu.max", "max 100000");  // no limit of its own
  t.Write("kubepods/pod1/cpu.max", "250000 100000");   // 2.5 CPUs
  t.Write("kubepods/cpu.max", "800000 100000");
  t.Write("other/cpu.max", "100000 100000");  // not on the path
  EXPECT_EQ(CgroupCpuQuotaCores("0::/kubepods/pod1/ctr\n", t.root()), 3);
  EXPECT_EQ(CgroupCpuQuotaCores("0::/kubepods\n", t.root()), 8);
  EXPECT_EQ(CgroupCpuQuotaCores("0::/\n", t.root()), 0) << "the root has no cpu.max";
}

// cgroup v1 (a controller mounted as "cpu,cpuacct"), and the hybrid layout where v2 sits
// under "unified" and has no quota.
TEST(CpuCoresTest, CgroupV1QuotaAndTheHybridLayout) {
  CgroupTree t("v1");
  t.Write("cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "150000");
  t.Write("cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000");
  t.Write("cpu,cpuacct/cpu.cfs_quota_us", "-1");
  t.Write("cpu,cpuacct/cpu.cfs_period_us", "100000");
  t.Write("unified/cgroup.controllers", "cpu io memory");
  t.Write("unified/docker/abc/cpu.max", "max 100000");
  const std::string proc = "5:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/docker/abc\n";
  EXPECT_EQ(CgroupCpuQuotaCores(proc, t.root()), 2);
  EXPECT_EQ(CgroupCpuQuotaCores("2:cpu,cpuacct:/\n", t.root()), 0) << "-1 is no quota";
}

// What cannot be read or parsed is no quota, never an error or a zero-core answer.
TEST(CpuCoresTest, CgroupFilesThatCannotBeReadAreNoQuota) {
  CgroupTree t("bad");
  t.Write("a/cpu.max", "lots 100000");
  t.Write("b/cpu.max", "0 100000");
  EXPECT_EQ(CgroupCpuQuotaCores("0::/a\n", t.root()), 0);
  EXPECT_EQ(CgroupCpuQuotaCores("0::/b\n", t.root()), 0);
  EXPECT_EQ(CgroupCpuQuotaCores("0::/missing/dir\n", t.root()), 0);
  EXPECT_EQ(CgroupCpuQuotaCores("not a cgroup line", t.root()), 0);
  EXPECT_EQ(CgroupCpuQuotaCores("", "/nonexistent"), 0);
}

}  // namespace
}  // namespace genie::core
