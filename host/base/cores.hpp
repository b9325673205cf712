// How many cores this process may use: its CPU affinity mask, which taskset, Slurm, a container or
// a cgroup cpuset sets, and which the machine's core count ignores (a 16-CPU allocation on a
// 128-core node must not start 128 threads).
#pragma once

#include <vector>

namespace plexus::host {

// The CPUs in this process's affinity mask (sched_getaffinity), at least 1; the machine's count
// where the mask cannot be read.
int usable_cores();

// The ids of those CPUs, ascending (empty where the mask cannot be read).
std::vector<int> usable_cpus();

// Binds the calling thread to one CPU; false where the system refuses.
bool pin_this_thread(int cpu);

}  // namespace plexus::host
