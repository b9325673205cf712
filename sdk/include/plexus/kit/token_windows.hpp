// plexus/kit/token_windows.hpp: batches of random windows from token arrays, for dataset plugins.
//
// Most language-model datasets come down to "a long array of token ids per split, sample
// windows of seq_len + 1 tokens". TokenWindows does that deterministically: batch n of a stream
// depends only on (seed, n), so seek() is exact. A sequential stream (StreamSpec::sequential)
// reads window k at token k * seq_len instead, each window once, and knows its length. Ranks share one global batch of
// world_size * batch_size windows and each takes its own rows, so data-parallel training on W
// ranks with batch b sees exactly the windows one rank with batch W*b sees. With the dataset's
// `partition = "by_rank"` (partition_key()), shard r of W draws its training windows from its
// own contiguous r-th W-th of the split instead: workers with different data, as in federated
// or decentralized training (validation stays whole: the job's objective).
//
// The tokens themselves are a TokenSequence: uint16 or uint32 ids in one or more segments, held
// in memory or mapped from files (datasets/tokens maps its shards, so local ranks share the page
// cache instead of each holding a copy). Windows may cross segments: the sequence reads as one.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "plexus/config.hpp"
#include "plexus/dataset.hpp"
#include "plexus/error.hpp"
#include "plexus/kit/util.hpp"

namespace plexus {

// Token ids as one read-only sequence over segments that something else keeps alive (`owners`:
// a vector, a file mapping). Ids are checked against `vocab` as they are read (0: unchecked), so
// a corpus mapped from disk is never scanned whole up front.
class TokenSequence {
public:
    struct Segment {
        const void* data = nullptr;  // the first token
        int64_t count = 0;           // tokens in it
        int width = 2;               // bytes per token: 2 (uint16) or 4 (uint32)
        std::string source;          // where it came from, for errors (a file name)
    };

    TokenSequence(std::vector<Segment> segments, std::vector<std::shared_ptr<const void>> owners, int64_t vocab = 0)
        : segments_(std::move(segments)), owners_(std::move(owners)), vocab_(vocab) {
        starts_.reserve(segments_.size() + 1);
        starts_.push_back(0);
        for (const auto& s : segments_) {
            if (s.width != 2 && s.width != 4)
                throw Error("token segment '" + s.source + "' has " + std::to_string(s.width) + "-byte tokens",
                            "tokens are uint16 or uint32");
            starts_.push_back(starts_.back() + s.count);
        }
    }

    // Tokens held in memory (datasets that build their arrays).
    static std::shared_ptr<const TokenSequence> of(std::vector<uint16_t> tokens) {
        auto held = std::make_shared<const std::vector<uint16_t>>(std::move(tokens));
        Segment seg{held->data(), static_cast<int64_t>(held->size()), 2, "memory"};
        return std::make_shared<const TokenSequence>(std::vector<Segment>{seg},
                                                     std::vector<std::shared_ptr<const void>>{held});
    }

    int64_t size() const { return starts_.back(); }

    // Tokens [start, start + count) as int64 into dst.
    void copy(int64_t start, int64_t count, int64_t* dst) const {
        auto seg = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), start) - starts_.begin()) - 1;
        while (count > 0) {
            const Segment& s = segments_.at(seg);
            const int64_t offset = start - starts_[seg], n = std::min(count, s.count - offset);
            if (s.width == 2)
                widen(static_cast<const uint16_t*>(s.data) + offset, n, dst, s);
            else
                widen(static_cast<const uint32_t*>(s.data) + offset, n, dst, s);
            dst += n, start += n, count -= n, ++seg;
        }
    }

    // Tokens [lo, hi) as a sequence of their own, sharing this one's storage.
    std::shared_ptr<const TokenSequence> slice(int64_t lo, int64_t hi) const {
        std::vector<Segment> out;
        for (size_t i = 0; i < segments_.size(); ++i) {
            const int64_t a = std::max(lo, starts_[i]), b = std::min(hi, starts_[i + 1]);
            if (a >= b) continue;
            Segment s = segments_[i];
            s.data = static_cast<const char*>(s.data) + (a - starts_[i]) * s.width;
            s.count = b - a;
            out.push_back(std::move(s));
        }
        return std::make_shared<const TokenSequence>(std::move(out), owners_, vocab_);
    }

private:
    template <typename T>
    void widen(const T* src, int64_t n, int64_t* dst, const Segment& s) const {
        for (int64_t i = 0; i < n; ++i) {
            dst[i] = static_cast<int64_t>(src[i]);
            if (vocab_ > 0 && dst[i] >= vocab_)
                throw Error("token shard '" + s.source + "' holds token id " + std::to_string(dst[i]) +
                                " >= data.vocab_size (" + std::to_string(vocab_) + ")",
                            "set data.vocab_size to the tokenizer's vocabulary size");
        }
    }

    std::vector<Segment> segments_;
    std::vector<std::shared_ptr<const void>> owners_;
    std::vector<int64_t> starts_;  // token index where each segment starts; the last entry: the size
    int64_t vocab_ = 0;
};

using TokenArray = std::shared_ptr<const TokenSequence>;

class TokenWindowStream : public BatchStream {
public:
    // `by_rank`: draw random windows from this shard's own slice (sequential streams read all).
    TokenWindowStream(TokenArray tokens, const StreamSpec& spec, bool by_rank = false)
        : tokens_(std::move(tokens)), spec_(spec) {
        const auto n = static_cast<int64_t>(tokens_->size());
        if (n < spec.seq_len + 2)
            throw Error("the " + std::string(spec.split == Split::Train ? "training" : "validation") + " split has " +
                            std::to_string(n) + " tokens, fewer than seq_len + 2 (" + std::to_string(spec.seq_len + 2) +
                            ")",
                        "use more data, a smaller train.seq_len, or another split fraction");
        window_starts_ = static_cast<uint64_t>(n - spec.seq_len - 1) + 1;
        if (by_rank && !spec.sequential && spec.world_size > 1) {
            const int64_t lo = n * spec.rank / spec.world_size, hi = n * (spec.rank + 1) / spec.world_size;
            if (hi - lo < spec.seq_len + 2)
                throw Error("data.partition = \"by_rank\": shard " + std::to_string(spec.rank) + " of " +
                                std::to_string(spec.world_size) + " holds " + std::to_string(hi - lo) +
                                " tokens, fewer than seq_len + 2",
                            "use more data, fewer ranks or a smaller train.seq_len");
            first_start_ = static_cast<uint64_t>(lo);
            window_starts_ = static_cast<uint64_t>(hi - lo - spec.seq_len - 1) + 1;
        }
        windows_in_order_ = (n - 1) / spec.seq_len;
        staging_.resize(static_cast<size_t>(spec.batch_size * (spec.seq_len + 1)));
    }

    Batch next() override {
        const int64_t B = spec_.batch_size, T = spec_.seq_len;
        const uint64_t batch_seed = mix_seed(spec_.seed, static_cast<uint64_t>(position_));
        if (spec_.sequential && length() >= 0 && position_ >= length())
            throw Error("a sequential stream of " + std::to_string(length()) + " batches was read past its end",
                        "read length() batches");
        for (int64_t row = 0; row < B; ++row) {
            const uint64_t global_row = static_cast<uint64_t>(spec_.rank * B + row);
            const uint64_t start =
                spec_.sequential
                    ? static_cast<uint64_t>((position_ * spec_.world_size * B + static_cast<int64_t>(global_row)) * T)
                    : first_start_ + mix_seed(batch_seed, global_row) % window_starts_;
            tokens_->copy(static_cast<int64_t>(start), T + 1, staging_.data() + row * (T + 1));
        }
        ++position_;
        auto all = torch::from_blob(staging_.data(), {B, T + 1}, torch::kInt64);
        return {all.narrow(1, 0, T).clone(), all.narrow(1, 1, T).clone()};
    }

    int64_t position() const override { return position_; }
    void seek(int64_t position) override { position_ = position; }
    int64_t length() const override {
        return spec_.sequential ? windows_in_order_ / (spec_.batch_size * spec_.world_size) : -1;
    }

private:
    TokenArray tokens_;
    StreamSpec spec_;
    uint64_t first_start_ = 0, window_starts_ = 1;  // random windows start in [first, first + starts)
    int64_t windows_in_order_ = 0;                  // non-overlapping windows of the split (sequential streams)
    int64_t position_ = 0;
    std::vector<int64_t> staging_;
};

// The setting that gives each data-parallel shard its own part of the training split; declare
// it in a dataset's schema and set TokenArrayDataset::by_rank_ from partition_by_rank(cfg).
inline ConfigKey partition_key() {
    return ConfigKey("partition", "shared",
                     "shared: every rank samples the whole training split; by_rank: rank r of W its own r-th W-th")
        .one_of({"shared", "by_rank"});
}
inline bool partition_by_rank(const Config& cfg) { return cfg.get_string("partition") == "by_rank"; }

// A dataset whose two splits are token arrays. A subclass fills vocab_, train_, val_ and
// description_ in its constructor (by_rank_ from partition_by_rank); opening streams is done here.
class TokenArrayDataset : public Dataset {
public:
    int64_t vocab_size() const override { return vocab_; }
    std::unique_ptr<BatchStream> open(const StreamSpec& spec) override {
        const bool train = spec.split == Split::Train;
        return std::make_unique<TokenWindowStream>(train ? train_ : val_, spec, train && by_rank_);
    }
    std::string describe() const override {
        return description_ + (by_rank_ ? ", the training split partitioned by rank" : "");
    }

protected:
    int64_t vocab_ = 0;
    TokenArray train_, val_;
    std::string description_;
    bool by_rank_ = false;
};

}  // namespace plexus
