// How many cores this process may use: its CPU affinity mask, which taskset, Slurm, a container or
// a cgroup cpuset sets, and which the machine's core count ignores (a 16-CPU allocation on a
// 128-core node must not start 128 threads).
#pragma once

namespace plexus::host {

// The CPUs in this process's affinity mask (sched_getaffinity), at least 1; the machine's count
// where the mask cannot be read.
int usable_cores();

}  // namespace plexus::host
