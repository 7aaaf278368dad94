// File: genie/core/cpu_cores.h
// How many cores this process may use: its CPU affinity, cut to its cgroup CPU quota. The
// node sizes its CPU lanes and transport threads by it, the Tcp transport its lanes, the
// frontend its helper threads. No libtorch.
//
//   const int cores = core::UsableCores();   // 2 on a 2-vCPU VM, 1 under `taskset -c 0`
#ifndef GENIE_CORE_CPU_CORES_H_
#define GENIE_CORE_CPU_CORES_H_

#include <string>
#include <string_view>

namespace genie::core {

// Hardware threads the calling thread may run on: its CPU affinity (a container or
// `taskset` may allow fewer than the machine has), else std::thread::hardware_concurrency(),
// and no more than a cgroup CPU quota allows (CgroupCpuQuotaCores); >= 1.
int UsableCores();

// The cores a cgroup CPU quota allows, rounded up (a quota of 1.5 CPUs is 2), or 0 when no
// quota applies: the smallest `cpu.max` (cgroup v2) or `cpu.cfs_quota_us` /
// `cpu.cfs_period_us` (v1) from the process's cgroup up to the root of its hierarchy.
// Containers (Docker `--cpus`, Kubernetes CPU limits) limit a process this way, not by its
// affinity. `proc_self_cgroup` is the text of /proc/self/cgroup and `root` the cgroup
// mount, normally /sys/fs/cgroup (v2 there or, in the hybrid layout, under `unified`; v1 per
// controller). Unreadable or malformed files count as no quota.
int CgroupCpuQuotaCores(std::string_view proc_self_cgroup, const std::string& root);

}  // namespace genie::core

#endif  // GENIE_CORE_CPU_CORES_H_
