#include "base/hash.hpp"

#include <xxhash.h>

#include <new>

namespace plexus::host {

struct StreamHash::Xxh3 {
    XXH3_state_t* state = XXH3_createState();
    ~Xxh3() { XXH3_freeState(state); }
};

StreamHash::StreamHash(Kind kind) : kind_(kind) {
    if (kind_ != Kind::kXxh3) return;
    xxh3_ = std::make_unique<Xxh3>();
    if (!xxh3_->state || XXH3_64bits_reset(xxh3_->state) != XXH_OK) throw std::bad_alloc();
}

StreamHash::~StreamHash() = default;

void StreamHash::add(const void* data, size_t bytes) {
    if (kind_ == Kind::kXxh3) {
        XXH3_64bits_update(xxh3_->state, data, bytes);
        return;
    }
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < bytes; ++i) fnv_ = (fnv_ ^ p[i]) * 1099511628211ULL;
}

uint64_t StreamHash::value() const { return kind_ == Kind::kXxh3 ? XXH3_64bits_digest(xxh3_->state) : fnv_; }

}  // namespace plexus::host
