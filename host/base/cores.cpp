#include "base/cores.hpp"

#include <sched.h>

#include <algorithm>
#include <thread>

namespace plexus::host {

// A mask sized for 4096 CPUs: the fixed cpu_set_t holds 1024, fewer than the largest nodes.
constexpr int kMaxCpus = 4096;

std::vector<int> usable_cpus() {
    std::vector<int> cpus;
    cpu_set_t* set = CPU_ALLOC(kMaxCpus);
    const size_t bytes = CPU_ALLOC_SIZE(kMaxCpus);
    if (set && sched_getaffinity(0, bytes, set) == 0)
        for (int c = 0; c < kMaxCpus; ++c)
            if (CPU_ISSET_S(c, bytes, set)) cpus.push_back(c);
    if (set) CPU_FREE(set);
    return cpus;
}

int usable_cores() {
    const auto cpus = usable_cpus();
    if (!cpus.empty()) return static_cast<int>(cpus.size());
    return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

bool pin_this_thread(int cpu) {
    if (cpu < 0 || cpu >= kMaxCpus) return false;
    cpu_set_t* set = CPU_ALLOC(kMaxCpus);
    if (!set) return false;
    const size_t bytes = CPU_ALLOC_SIZE(kMaxCpus);
    CPU_ZERO_S(bytes, set);
    CPU_SET_S(cpu, bytes, set);
    const bool ok = sched_setaffinity(0, bytes, set) == 0;  // 0: the calling thread
    CPU_FREE(set);
    return ok;
}

}  // namespace plexus::host
