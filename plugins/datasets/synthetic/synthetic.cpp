// datasets/synthetic: a seeded first-order Markov language with learnable structure, for
// tests and quick experiments. Each token has `branching` possible successors with random
// probabilities, so a model that learns the transition table reaches the chain's entropy rate,
// which describe() reports as the best achievable loss.
#include <cmath>
#include <map>

#include <plexus/plexus.hpp>
#include <plexus/kit/util.hpp>
#include <plexus/kit/token_windows.hpp>

namespace {

struct Chain {
    std::vector<std::vector<uint16_t>> next;
    std::vector<std::vector<double>> cumulative;
};

double unit(uint64_t seed, uint64_t salt) {
    return static_cast<double>(plexus::mix_seed(seed, salt) >> 11) * 0x1.0p-53;
}

class Synthetic : public plexus::TokenArrayDataset {
public:
    explicit Synthetic(const plexus::Config& cfg) {
        vocab_ = cfg.get_int("vocab_size");
        by_rank_ = plexus::partition_by_rank(cfg);
        const int64_t branching = cfg.get_int("branching");
        const int64_t train_tokens = cfg.get_int("train_tokens");
        const int64_t val_tokens = cfg.get_int("val_tokens");
        const auto seed = static_cast<uint64_t>(cfg.get_int("seed"));
        cfg.require(vocab_ >= 2 && vocab_ <= 65536, "vocab_size", "must lie in [2, 65536]");
        cfg.require(branching >= 1 && branching <= vocab_, "branching", "must lie in [1, vocab_size]");
        cfg.require(train_tokens > 0 && val_tokens > 0, "train_tokens", "and val_tokens must be > 0");

        Chain chain;
        double entropy = 0;  // entropy rate under a uniform weighting of states (close enough to report)
        uint64_t salt = 0;
        for (int64_t s = 0; s < vocab_; ++s) {
            std::vector<uint16_t> succ;
            std::vector<double> w;
            double total = 0;
            for (int64_t j = 0; j < branching; ++j) {
                succ.push_back(static_cast<uint16_t>(plexus::mix_seed(seed, salt++) % vocab_));
                w.push_back(0.1 + unit(seed, salt++));
                total += w.back();
            }
            double acc = 0, h = 0;
            std::vector<double> cum;
            std::map<uint16_t, double> merged;  // repeated successors add up
            for (int64_t j = 0; j < branching; ++j) {
                acc += w[j] / total;
                cum.push_back(acc);
                merged[succ[j]] += w[j] / total;
            }
            for (auto& kv : merged) h -= kv.second * std::log(kv.second);
            entropy += h / vocab_;
            chain.next.push_back(succ);
            chain.cumulative.push_back(cum);
        }
        train_ = generate(chain, train_tokens, plexus::mix_seed(seed, 1'000'001));
        val_ = generate(chain, val_tokens, plexus::mix_seed(seed, 2'000'003));
        description_ = "synthetic Markov chain: vocabulary " + std::to_string(vocab_) + ", " +
                       std::to_string(branching) + " successors per token, entropy rate ~" + std::to_string(entropy) +
                       " nats (the best achievable loss)";
    }

private:
    plexus::TokenArray generate(const Chain& chain, int64_t n, uint64_t seed) const {
        std::vector<uint16_t> out(static_cast<size_t>(n));
        uint16_t state = static_cast<uint16_t>(seed % vocab_);
        for (int64_t i = 0; i < n; ++i) {
            out[i] = state;
            const double u = unit(seed, static_cast<uint64_t>(i));
            const auto& cum = chain.cumulative[state];
            size_t j = 0;
            while (j + 1 < cum.size() && u > cum[j]) ++j;
            state = chain.next[state][j];
        }
        return plexus::TokenSequence::of(std::move(out));
    }
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "synthetic";
    d.kind = plexus::PluginKind::Dataset;
    d.version = "1.0";
    d.summary = "seeded Markov-chain language with known entropy rate, for tests";
    d.schema = {
        {"vocab_size", 64, "number of distinct tokens"},
        {"branching", 4, "possible successors of each token"},
        {"train_tokens", 200000, "length of the training sequence"},
        {"val_tokens", 20000, "length of the validation sequence"},
        {"seed", 1234, "seed of the chain and the sequences (independent of train.seed)"},
        plexus::partition_key(),
    };
    d.make_dataset = [](const plexus::Config& cfg, plexus::RunContext&) -> std::unique_ptr<plexus::Dataset> {
        return std::make_unique<Synthetic>(cfg);
    };
    // `plexus check` runs plugins of other kinds on this data, this small.
    d.extras["check.partner"] = "true";
    d.extras["check.settings"] = "data.vocab_size=32;data.branching=2;data.train_tokens=20000;data.val_tokens=4000";
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
