#include "device/memory_meter.hpp"

#include <c10/core/Allocator.h>
#include <c10/util/ThreadLocalDebugInfo.h>

#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <mutex>
#include <unordered_map>

namespace plexus::host {

void TensorMemoryMeter::add(int64_t bytes) {
    const int64_t now = live_.fetch_add(bytes) + bytes;
    int64_t peak = peak_.load();
    while (now > peak && !peak_.compare_exchange_weak(peak, now)) {}
}

namespace {

// Which meter allocated each live block, so that a free on another thread is credited back.
struct Owners {
    std::mutex mu;
    std::unordered_map<void*, std::pair<std::weak_ptr<TensorMemoryMeter>, int64_t>> blocks;
};
Owners& owners() {
    static Owners* o = new Owners;  // never destroyed: tensors may be freed during exit
    return *o;
}

// The type of reportMemoryUsage's totals: int64_t in LibTorch 1.13, size_t in 2.x. Read off
// the declaration instead of guessing the version that changed it.
template <class Method>
struct TotalsType;
template <class C, class P, class A, class T, class D>
struct TotalsType<void (C::*)(P, A, T, T, D)> {
    using type = T;
};
using Total = TotalsType<decltype(&c10::MemoryReportingInfoBase::reportMemoryUsage)>::type;

// LibTorch's CPU allocator calls this for every allocation and free on a thread where it is
// installed (as the PROFILER_STATE debug info).
class Reporter : public c10::MemoryReportingInfoBase {
public:
    explicit Reporter(std::shared_ptr<TensorMemoryMeter> meter) : meter_(std::move(meter)) {}
    bool memoryProfilingEnabled() const override { return true; }
    void reportMemoryUsage(void* ptr, int64_t bytes, Total, Total, c10::Device device) override {
        if (!device.is_cpu() || bytes == 0) return;
        auto& o = owners();
        std::shared_ptr<TensorMemoryMeter> owner;
        {
            std::lock_guard<std::mutex> lk(o.mu);
            if (bytes > 0) {
                o.blocks[ptr] = {meter_, bytes};
                owner = meter_;
            } else {
                auto it = o.blocks.find(ptr);
                if (it == o.blocks.end()) return;  // allocated where no meter was installed
                owner = it->second.first.lock();
                bytes = -it->second.second;
                o.blocks.erase(it);
            }
        }
        if (owner) owner->add(bytes);
    }
    std::shared_ptr<TensorMemoryMeter> meter() const { return meter_; }

private:
    std::shared_ptr<TensorMemoryMeter> meter_;
};

}  // namespace

struct MeterScope::Guard {
    c10::DebugInfoGuard guard;
    explicit Guard(std::shared_ptr<TensorMemoryMeter> m)
        : guard(c10::DebugInfoKind::PROFILER_STATE, std::make_shared<Reporter>(std::move(m))) {}
};

MeterScope::MeterScope(std::shared_ptr<TensorMemoryMeter> meter) : guard_(std::make_unique<Guard>(std::move(meter))) {}
MeterScope::~MeterScope() = default;

std::shared_ptr<TensorMemoryMeter> current_meter() {
    auto* info = dynamic_cast<Reporter*>(c10::ThreadLocalDebugInfo::get(c10::DebugInfoKind::PROFILER_STATE));
    return info ? info->meter() : nullptr;
}

double peak_rss_bytes() {
    rusage u{};
    // The process's high-water mark either way; RUSAGE_SELF also sums every thread's CPU time,
    // which at 10,000 simulated rank threads made each call cost as much as a rank's step.
#ifdef RUSAGE_THREAD
    getrusage(RUSAGE_THREAD, &u);
#else
    getrusage(RUSAGE_SELF, &u);
#endif
    return static_cast<double>(u.ru_maxrss) * 1024.0;
}

double current_rss_bytes() {
    long pages = 0;
    if (FILE* f = std::fopen("/proc/self/statm", "r")) {
        long size = 0;
        if (std::fscanf(f, "%ld %ld", &size, &pages) != 2) pages = 0;
        std::fclose(f);
    }
    return static_cast<double>(pages) * static_cast<double>(sysconf(_SC_PAGESIZE));
}

}  // namespace plexus::host
