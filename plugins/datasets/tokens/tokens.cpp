// datasets/tokens: pre-tokenized shards in llm.c's format, so corpora tokenized by existing
// tools work: a header of 256 int32 (magic 20240520, version 1, token count), then the tokens
// as uint16. `train` and `val` are file names or glob patterns; shards are read in name order.
#include <glob.h>

#include <cstdio>
#include <fstream>

#include <plexus/plexus.hpp>
#include <plexus/kit/token_windows.hpp>

namespace {

constexpr int32_t kMagic = 20240520;
constexpr int32_t kVersion = 1;

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

void read_shard(const std::string& path, int64_t vocab, std::vector<uint16_t>& out) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw plexus::Error("cannot open token shard '" + path + "'", "check the path and its permissions");
    int32_t header[256];
    in.read(reinterpret_cast<char*>(header), sizeof header);
    if (!in)
        throw plexus::Error("token shard '" + path + "' is shorter than its 1024-byte header",
                            "the file is truncated or not an llm.c shard");
    if (header[0] != kMagic)
        throw plexus::Error("token shard '" + path + "' has magic " + std::to_string(header[0]) + ", expected " +
                                std::to_string(kMagic),
                            "this is not an llm.c token shard (header: 256 int32, then uint16 tokens)");
    if (header[1] != kVersion)
        throw plexus::Error("token shard '" + path + "' has version " + std::to_string(header[1]) + ", expected 1",
                            "only llm.c's version 1 (uint16 tokens) is supported");
    const int64_t count = header[2];
    const size_t old = out.size();
    out.resize(old + static_cast<size_t>(count));
    in.read(reinterpret_cast<char*>(out.data() + old), count * static_cast<int64_t>(sizeof(uint16_t)));
    if (in.gcount() != count * static_cast<int64_t>(sizeof(uint16_t)))
        throw plexus::Error("token shard '" + path + "' announces " + std::to_string(count) + " tokens but holds fewer",
                            "the file is truncated");
    for (size_t i = old; i < out.size(); ++i)
        if (out[i] >= vocab)
            throw plexus::Error("token shard '" + path + "' holds token id " + std::to_string(out[i]) +
                                    " >= data.vocab_size (" + std::to_string(vocab) + ")",
                                "set data.vocab_size to the tokenizer's vocabulary size");
}

class TokenShards : public plexus::TokenArrayDataset {
public:
    explicit TokenShards(const plexus::Config& cfg) {
        vocab_ = cfg.get_int("vocab_size");
        by_rank_ = plexus::partition_by_rank(cfg);
        cfg.require(vocab_ > 0 && vocab_ <= 65536, "vocab_size", "must lie in [1, 65536] (tokens are uint16)");
        auto train = std::make_shared<std::vector<uint16_t>>();
        auto val = std::make_shared<std::vector<uint16_t>>();
        const auto train_files = expand(cfg.get_string("train"), "train");
        for (const auto& f : train_files) read_shard(f, vocab_, *train);
        size_t val_files = 0;
        if (!cfg.get_string("val").empty()) {
            for (const auto& f : expand(cfg.get_string("val"), "val")) {
                read_shard(f, vocab_, *val);
                ++val_files;
            }
        } else {  // no validation shards: hold out the end of the training tokens
            const double frac = cfg.get_double("val_fraction");
            cfg.require(frac > 0 && frac < 1, "val_fraction", "must lie in (0, 1) when data.val is empty");
            const size_t n_val = static_cast<size_t>(static_cast<double>(train->size()) * frac);
            val->assign(train->end() - n_val, train->end());
            train->resize(train->size() - n_val);
        }
        train_ = train;
        val_ = val;
        description_ = "tokens: " + std::to_string(train_files.size()) + " train shard(s), " +
                       std::to_string(val_files) + " val shard(s); " + std::to_string(train_->size()) + " train / " +
                       std::to_string(val_->size()) + " validation tokens";
    }
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "tokens";
    d.kind = plexus::PluginKind::Dataset;
    d.version = "1.0";
    d.summary = "llm.c token shards (int32 header: 20240520, 1, count; then uint16 tokens)";
    d.schema = {
        {"train", "", "training shard file or glob pattern"},
        {"val", "", "validation shard file or glob pattern; empty: hold out val_fraction of train"},
        {"val_fraction", 0.05, "held-out fraction when val is empty"},
        {"vocab_size", 50257, "tokenizer vocabulary size (GPT-2: 50257)"},
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
