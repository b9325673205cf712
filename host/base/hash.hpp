// Checksums of long byte streams: checkpoints and a run's final state. XXH3-64 (libxxhash) reads
// many GB/s; FNV-1a, byte at a time (0.9 GB/s here), is kept to read checkpoints of format 1.
// bench/hash times the two on the same buffer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace plexus::host {

class StreamHash {
public:
    enum class Kind { kXxh3, kFnv1a };
    explicit StreamHash(Kind kind = Kind::kXxh3);
    ~StreamHash();
    StreamHash(const StreamHash&) = delete;
    StreamHash& operator=(const StreamHash&) = delete;

    void add(const void* data, size_t bytes);
    uint64_t value() const;  // of everything added so far

private:
    struct Xxh3;
    Kind kind_;
    uint64_t fnv_ = 1469598103934665603ULL;
    std::unique_ptr<Xxh3> xxh3_;
};

}  // namespace plexus::host
