#include "base/cores.hpp"

#include <sched.h>

#include <algorithm>
#include <thread>

namespace plexus::host {

int usable_cores() {
    // A mask sized for 4096 CPUs: the fixed cpu_set_t holds 1024, fewer than the largest nodes.
    constexpr int kMaxCpus = 4096;
    cpu_set_t* set = CPU_ALLOC(kMaxCpus);
    const size_t bytes = CPU_ALLOC_SIZE(kMaxCpus);
    int count = 0;
    if (set && sched_getaffinity(0, bytes, set) == 0) count = CPU_COUNT_S(bytes, set);
    if (set) CPU_FREE(set);
    if (count > 0) return count;
    return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace plexus::host
