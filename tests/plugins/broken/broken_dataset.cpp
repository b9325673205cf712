// A dataset (windows of a fixed token sequence, drawn from the stream's seed) that breaks one
// promise on request (data.breaks), for the tests of `plexus check`. "none": correct.
#include <random>

#include <plexus/plexus.hpp>

namespace {

class Stream : public plexus::BatchStream {
public:
    Stream(torch::Tensor tokens, plexus::StreamSpec spec, std::string breaks)
        : tokens_(std::move(tokens)), spec_(spec), breaks_(std::move(breaks)) {}
    plexus::Batch next() override {
        // One global batch of world x batch windows per position; this shard takes its rows.
        const uint64_t seed = breaks_ == "nondeterministic" ? std::random_device{}() : spec_.seed;
        auto gen = at::detail::createCPUGenerator(seed + static_cast<uint64_t>(position_++));
        const int64_t global = spec_.batch_size * spec_.world_size, T = spec_.seq_len;
        const auto starts = torch::randint(tokens_.numel() - T - 1, {global}, gen, torch::kLong);
        const int shard = breaks_ == "shards_overlap" ? 0 : spec_.rank;
        std::vector<torch::Tensor> rows;
        for (int64_t i = shard * spec_.batch_size; i < (shard + 1) * spec_.batch_size; ++i)
            rows.push_back(tokens_.narrow(0, starts[i].item<int64_t>(), T + 1));
        const auto windows = torch::stack(rows);
        return {windows.narrow(1, 0, T).clone(), windows.narrow(1, 1, T).clone()};
    }
    int64_t position() const override { return position_; }
    void seek(int64_t p) override { position_ = p; }

private:
    torch::Tensor tokens_;
    plexus::StreamSpec spec_;
    std::string breaks_;
    int64_t position_ = 0;
};

class Broken : public plexus::Dataset {
public:
    explicit Broken(std::string breaks) : breaks_(std::move(breaks)) {
        tokens_ = torch::arange(4096, torch::kLong) % 32;
    }
    int64_t vocab_size() const override { return 32; }
    std::unique_ptr<plexus::BatchStream> open(const plexus::StreamSpec& spec) override {
        return std::make_unique<Stream>(tokens_, spec, breaks_);
    }
    std::string describe() const override { return "broken_dataset (" + breaks_ + ")"; }

private:
    std::string breaks_;
    torch::Tensor tokens_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "broken_dataset";
    d.kind = plexus::PluginKind::Dataset;
    d.version = "1.0";
    d.summary = "a dataset that breaks one promise on request (tests of plexus check)";
    d.schema = {plexus::ConfigKey("breaks", "none", "which promise to break")
                    .one_of({"none", "nondeterministic", "shards_overlap"})};
    d.make_dataset = [](const plexus::Config& cfg, plexus::RunContext&) -> std::unique_ptr<plexus::Dataset> {
        return std::make_unique<Broken>(cfg.get_string("breaks"));
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
