// datasets/tokens: pre-tokenized shards in llm.c's formats, so corpora tokenized by existing tools
// (and by `plexus tokenize`) work: a header of 256 int32 (magic, version, token count), then the
// tokens. Magic 20240520, version 1: uint16 tokens (GPT-2); magic 20240801, version 7: uint32
// (Llama 3; vocabularies past 65,536). Formats as in karpathy/llm.c dev/data/data_common.py @16635d4.
// `train` and `val` are file names or glob patterns; shards are read in name order.
//
// Shards are memory-mapped read-only, never copied: ranks on one machine share the page cache, so
// a 20 GB corpus costs 20 GB of page cache once, not 20 GB of memory per process. Token ids are
// checked against vocab_size as windows are read (a mapped corpus is not scanned up front).
#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <plexus/plexus.hpp>
#include <plexus/kit/token_windows.hpp>

namespace {

constexpr int64_t kHeaderBytes = 256 * 4;

struct Format {
    int32_t magic, version, width;
    const char* name;
};
constexpr Format kFormats[] = {{20240520, 1, 2, "uint16 (llm.c gpt-2)"}, {20240801, 7, 4, "uint32 (llm.c llama-3)"}};

std::vector<std::string> expand(const std::string& pattern, const std::string& key) {
    glob_t g{};
    std::vector<std::string> out;
    if (glob(pattern.c_str(), 0, nullptr, &g) == 0)
        for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
    globfree(&g);
    if (out.empty())
        throw plexus::Error("data." + key + ": no file matches '" + pattern + "'",
                            "give a shard file or a glob pattern such as 'data/fineweb_" + key + "_*.bin'");
    return out;  // glob sorts
}

// The whole file, mapped read-only; unmapped when the last segment using it goes.
std::shared_ptr<const void> map_file(const std::string& path, int64_t& bytes) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        throw plexus::Error("cannot open token shard '" + path + "': " + std::strerror(errno),
                            "check the path and its permissions");
    struct stat st {};
    ::fstat(fd, &st);
    bytes = st.st_size;
    if (bytes < kHeaderBytes) {
        ::close(fd);
        throw plexus::Error("token shard '" + path + "' is shorter than its 1024-byte header",
                            "the file is truncated or not an llm.c shard");
    }
    void* base = ::mmap(nullptr, static_cast<size_t>(bytes), PROT_READ, MAP_SHARED, fd, 0);
    const int map_errno = errno;
    ::close(fd);  // the mapping keeps the file
    if (base == MAP_FAILED)
        throw plexus::Error("cannot map token shard '" + path + "': " + std::strerror(map_errno),
                            "the file system must support mmap");
    const auto length = static_cast<size_t>(bytes);
    return std::shared_ptr<const void>(base, [length](const void* p) { ::munmap(const_cast<void*>(p), length); });
}

plexus::TokenSequence::Segment map_shard(const std::string& path, std::vector<std::shared_ptr<const void>>& owners) {
    int64_t bytes = 0;
    auto file = map_file(path, bytes);
    int32_t header[3];
    std::memcpy(header, file.get(), sizeof header);
    const Format* format = nullptr;
    for (const auto& f : kFormats)
        if (f.magic == header[0]) format = &f;
    if (!format)
        throw plexus::Error("token shard '" + path + "' has magic " + std::to_string(header[0]) +
                                ", expected 20240520 (uint16 tokens) or 20240801 (uint32)",
                            "this is not an llm.c token shard (header: 256 int32, then the tokens)");
    if (header[1] != format->version)
        throw plexus::Error("token shard '" + path + "' has version " + std::to_string(header[1]) + ", expected " +
                                std::to_string(format->version) + " for magic " + std::to_string(format->magic),
                            "the file's header is damaged or from another tool");
    const int64_t count = header[2];
    if (count < 0 || kHeaderBytes + count * format->width > bytes)
        throw plexus::Error("token shard '" + path + "' announces " + std::to_string(count) + " tokens but holds fewer",
                            "the file is truncated");
    plexus::TokenSequence::Segment seg{static_cast<const char*>(file.get()) + kHeaderBytes, count, format->width, path};
    owners.push_back(std::move(file));
    return seg;
}

std::shared_ptr<const plexus::TokenSequence> map_shards(const std::vector<std::string>& files, int64_t vocab) {
    std::vector<plexus::TokenSequence::Segment> segments;
    std::vector<std::shared_ptr<const void>> owners;
    for (const auto& f : files) segments.push_back(map_shard(f, owners));
    return std::make_shared<const plexus::TokenSequence>(std::move(segments), std::move(owners), vocab);
}

class TokenShards : public plexus::TokenArrayDataset {
public:
    explicit TokenShards(const plexus::Config& cfg) {
        vocab_ = cfg.get_int("vocab_size");
        by_rank_ = plexus::partition_by_rank(cfg);
        cfg.require(vocab_ > 0 && vocab_ <= (int64_t{1} << 32), "vocab_size", "must lie in [1, 2^32]");
        const auto train_files = expand(cfg.get_string("train"), "train");
        auto train = map_shards(train_files, vocab_);
        size_t val_files = 0;
        if (!cfg.get_string("val").empty()) {
            const auto files = expand(cfg.get_string("val"), "val");
            val_files = files.size();
            val_ = map_shards(files, vocab_);
            train_ = train;
        } else {  // no validation shards: hold out the end of the training tokens
            const double frac = cfg.get_double("val_fraction");
            cfg.require(frac > 0 && frac < 1, "val_fraction", "must lie in (0, 1) when data.val is empty");
            const int64_t n = train->size(), n_val = static_cast<int64_t>(static_cast<double>(n) * frac);
            train_ = train->slice(0, n - n_val);
            val_ = train->slice(n - n_val, n);
        }
        description_ = "tokens: " + std::to_string(train_files.size()) + " train shard(s), " +
                       std::to_string(val_files) + " val shard(s), memory-mapped; " + std::to_string(train_->size()) +
                       " train / " + std::to_string(val_->size()) + " validation tokens";
    }
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "tokens";
    d.kind = plexus::PluginKind::Dataset;
    d.version = "1.1";
    d.summary = "llm.c token shards, memory-mapped (uint16: magic 20240520 v1; uint32: magic 20240801 v7)";
    d.schema = {
        {"train", "", "training shard file or glob pattern"},
        {"val", "", "validation shard file or glob pattern; empty: hold out val_fraction of train"},
        {"val_fraction", 0.05, "held-out fraction when val is empty"},
        {"vocab_size", 50257, "tokenizer vocabulary size (GPT-2: 50257); ids at or above it are refused"},
        plexus::partition_key(),
    };
    d.extras["check.needs"] = "data.train";  // `plexus check`: a shard file to read
    d.make_dataset = [](const plexus::Config& cfg, plexus::RunContext&) -> std::unique_ptr<plexus::Dataset> {
        return std::make_unique<TokenShards>(cfg);
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
