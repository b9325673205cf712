// Tensor memory per rank: the bytes of CPU tensors a rank's threads allocated and have not freed
// yet, and their peak. RSS cannot say this: ranks of the simulated cluster share one process, and
// the allocator keeps freed pages. It hooks LibTorch's allocator reporting (the interface its
// memory profiler uses), so every CPU tensor allocation is counted where it happens.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

namespace plexus::host {

class TensorMemoryMeter {
public:
    int64_t live() const { return live_.load(); }
    int64_t peak() const { return peak_.load(); }
    void add(int64_t bytes);  // negative: freed

private:
    std::atomic<int64_t> live_{0}, peak_{0};
};

// Counts this thread's allocations to `meter` while it lives (nested scopes: the innermost wins).
// A block is always credited back to the meter that allocated it, whichever thread frees it
// (ranks of the simulated cluster free each other's messages).
class MeterScope {
public:
    explicit MeterScope(std::shared_ptr<TensorMemoryMeter> meter);
    ~MeterScope();
    MeterScope(const MeterScope&) = delete;
    MeterScope& operator=(const MeterScope&) = delete;

private:
    struct Guard;
    std::unique_ptr<Guard> guard_;
};

// The process's resident memory: its peak so far, and now (bytes).
double peak_rss_bytes();
double current_rss_bytes();

// The meter of this thread's innermost scope, or null: a thread started for the rank (a
// background task) opens a scope with it so that its tensors count too.
std::shared_ptr<TensorMemoryMeter> current_meter();

}  // namespace plexus::host
