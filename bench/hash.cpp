// Checkpoint checksums: XXH3-64 (checkpoint format 2) against the byte-at-a-time FNV-1a of format 1,
// measured in the same run. Two figures: the checksum alone over a buffer in memory, and reading a
// checkpoint of the same size back from the page cache (what `plexus run --resume` waits for).
//   build/bench/hash [--mib 512] [--rounds 3]
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "base/hash.hpp"
#include "bench_util.hpp"
#include "runtime/checkpoint.hpp"

namespace fs = std::filesystem;
using plexus::host::StreamHash;

namespace {

double seconds_of(const std::function<void()>& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

uint64_t checksum(StreamHash::Kind kind, const void* data, size_t bytes) {
    StreamHash h(kind);
    h.add(data, bytes);
    return h.value();
}

// The same checkpoint in format 1: its version field and its FNV-1a checksum rewritten.
void write_format_1(const fs::path& v2, const fs::path& v1) {
    std::ifstream in(v2, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    const uint32_t version = 1;
    std::memcpy(bytes.data() + 8, &version, 4);
    const uint64_t fnv = checksum(StreamHash::Kind::kFnv1a, bytes.data() + 12, bytes.size() - 20);
    std::memcpy(bytes.data() + bytes.size() - 8, &fnv, 8);
    std::ofstream(v1, std::ios::binary) << bytes;
}

}  // namespace

int main(int argc, char** argv) {
    plexus::bench::Flags flags(argc, argv, {{"mib", "512"}, {"rounds", "3"}}, "hash [--mib N] [--rounds N]");
    const int64_t mib = flags["mib"], rounds = flags["rounds"];
    const auto bytes = static_cast<size_t>(mib) << 20;
    torch::manual_seed(0);
    const auto tensor = torch::randn({static_cast<int64_t>(bytes / 4)});
    const void* data = tensor.data_ptr();

    const fs::path dir = fs::temp_directory_path() / ("plexus-bench-hash-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    plexus::host::RankCheckpoint c;
    c.config_hash = "bench";
    c.tensors = {{"strategy.model.w", tensor}};
    plexus::host::write_rank_checkpoint(dir / "v2.ckpt", c);
    write_format_1(dir / "v2.ckpt", dir / "v1.ckpt");
    plexus::host::read_rank_checkpoint(dir / "v1.ckpt");  // both files in the page cache
    plexus::host::read_rank_checkpoint(dir / "v2.ckpt");

    double fnv = 1e30, xxh3 = 1e30, read1 = 1e30, read2 = 1e30;
    for (int64_t r = 0; r < rounds; ++r) {  // alternating; the best of each
        fnv = std::min(fnv, seconds_of([&] { checksum(StreamHash::Kind::kFnv1a, data, bytes); }));
        xxh3 = std::min(xxh3, seconds_of([&] { checksum(StreamHash::Kind::kXxh3, data, bytes); }));
        read1 = std::min(read1, seconds_of([&] { plexus::host::read_rank_checkpoint(dir / "v1.ckpt"); }));
        read2 = std::min(read2, seconds_of([&] { plexus::host::read_rank_checkpoint(dir / "v2.ckpt"); }));
    }
    fs::remove_all(dir);
    const double gb = static_cast<double>(bytes) / 1e9;
    std::printf("checksum of %lld MiB in memory: FNV-1a %.3f s (%.2f GB/s), XXH3 %.3f s (%.2f GB/s): %.1fx\n",
                static_cast<long long>(mib), fnv, gb / fnv, xxh3, gb / xxh3, fnv / xxh3);
    std::printf("reading a %lld MiB checkpoint (page cache): format 1 %.3f s, format 2 %.3f s: %.1fx\n",
                static_cast<long long>(mib), read1, read2, read1 / read2);
    // For scripts/bench.sh: key=value.
    std::printf("ratio=%.2f fnv_gbs=%.2f xxh3_gbs=%.2f read_ratio=%.2f\n", fnv / xxh3, gb / fnv, gb / xxh3,
                read1 / read2);
    return 0;
}
