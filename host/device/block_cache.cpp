#include "device/block_cache.hpp"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include <c10/core/Allocator.h>

namespace plexus::host {

namespace {

constexpr size_t kAlign = 64;                 // LibTorch's CPU alignment
constexpr size_t kHeader = kAlign;            // the block's size, kept just before its data
constexpr size_t kSlab = size_t{64} << 20;    // carved into blocks, never returned
constexpr size_t kLargest = size_t{8} << 20;  // larger blocks go straight to the system
constexpr size_t kHugePage = size_t{2} << 20;

size_t& size_of(void* data) { return *reinterpret_cast<size_t*>(static_cast<char*>(data) - kHeader); }

class BlockCache final : public c10::Allocator {
public:
    // LibTorch 1.13 declares allocate() const, 2.3 and later not: one of the two overrides it.
    c10::DataPtr allocate(size_t bytes) const { return make(bytes); }
    c10::DataPtr allocate(size_t bytes) { return make(bytes); }
    c10::DeleterFnPtr raw_deleter() const override { return &release; }
    // LibTorch 2.x asks allocators for this; 1.13 does not know it.
    void copy_data(void* dest, const void* src, size_t count) const { std::memcpy(dest, src, count); }

    static BlockCache& instance() {
        static auto* cache = new BlockCache;  // never destroyed: tensors may be freed during exit
        return *cache;
    }

private:
    c10::DataPtr make(size_t bytes) const {
        void* data = bytes == 0 ? nullptr : take(bytes);
        if (data) c10::reportMemoryUsageToProfiler(data, static_cast<int64_t>(bytes), 0, 0, c10::Device(c10::kCPU));
        return {data, data, &release, c10::Device(c10::kCPU)};
    }

    void* take(size_t bytes) const {
        std::lock_guard<std::mutex> lk(mu_);
        auto& free = free_[bytes];
        if (!free.empty()) {
            void* data = free.back();
            free.pop_back();
            return data;
        }
        const size_t span = kHeader + (bytes + kAlign - 1) / kAlign * kAlign;
        char* base = nullptr;
        if (bytes > kLargest) {
            base = static_cast<char*>(std::aligned_alloc(kAlign, span));
        } else {
            if (left_ < span) new_slab();
            base = next_;
            next_ += span;
            left_ -= span;
        }
        if (!base) throw std::bad_alloc();
        void* data = base + kHeader;
        size_of(data) = bytes;
        return data;
    }

    void new_slab() const {
        void* slab = mmap(nullptr, kSlab, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (slab == MAP_FAILED) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
        madvise(slab, kSlab, MADV_HUGEPAGE);  // advice only: without it the slab is ordinary pages
#endif
        next_ = static_cast<char*>(slab);
        left_ = kSlab;
    }

    static void release(void* data) {
        if (!data) return;
        const size_t bytes = size_of(data);
        c10::reportMemoryUsageToProfiler(data, -static_cast<int64_t>(bytes), 0, 0, c10::Device(c10::kCPU));
        if (bytes > kLargest) {
            std::free(static_cast<char*>(data) - kHeader);
            return;
        }
        auto& cache = instance();
        std::lock_guard<std::mutex> lk(cache.mu_);
        cache.free_[bytes].push_back(data);
    }

    mutable std::mutex mu_;
    mutable std::unordered_map<size_t, std::vector<void*>> free_;  // by requested size
    mutable char* next_ = nullptr;                                 // the current slab's unused part
    mutable size_t left_ = 0;
};

}  // namespace

void use_cpu_block_cache() {
    static_assert(kSlab % kHugePage == 0, "slabs hold whole huge pages");
    // Priority above LibTorch's own CPU allocator (registered at 0), so that it stays.
    c10::SetAllocator(c10::DeviceType::CPU, &BlockCache::instance(), 1);
}

}  // namespace plexus::host
