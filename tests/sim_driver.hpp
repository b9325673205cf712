// A strategy on every rank of an in-process simulated cluster, stepped by the test: for update
// rules with several ranks checked step by step against a formula (the harness's runs only
// record digests of the parameters at the end).
#pragma once

#include <functional>
#include <mutex>

#include <plexus/plexus.hpp>

#include "config/faults.hpp"
#include "helpers.hpp"
#include "sim/cluster.hpp"

namespace plexus::test {

struct SimDriver {
    TempDir dir;
    host::ResolvedConfig cfg;
    std::shared_ptr<Dataset> dataset;

    // `toml`: a whole experiment; [launch] ranks and [sim] say the cluster (stragglers included).
    explicit SimDriver(const std::string& toml) : cfg(resolve_text(dir, toml)) {
        host::HostContext bootstrap(cfg, torch::kCPU, 0);
        dataset = cfg.plugins.at("data")->make_dataset(cfg.sections.at("data"), bootstrap);
    }

    // A stream of training batches as rank `shard` of `shards` reads it (`seed` as the strategy's).
    std::unique_ptr<BatchStream> stream(int64_t batch, int64_t seq, int shard = 0, int shards = 1) const {
        return dataset->open(StreamSpec{Split::Train, batch, seq, shard, shards, kSeed});
    }
    // A model built as every rank builds its own (the same seed: the same initial weights).
    std::shared_ptr<Model> model() const {
        host::HostContext ctx(cfg, torch::kCPU, dataset->vocab_size());
        return ctx.make_model();
    }

    using AfterStep = std::function<void(int step, int rank, Strategy&, const StepOutput&)>;
    // `steps` steps on every rank, each rank reading batch x seq rows of its data shard; after
    // each step, after(step, rank, ...) on every rank (it may call state(): every rank does).
    // Returns the ranks' errors ("" if none).
    std::string run(int steps, int64_t batch, int64_t seq, const AfterStep& after, double lr_scale = 1.0) {
        // (A nominal 1 GFLOP/s per core where [sim] device = "measured": nothing is timed here.)
        const int ranks = static_cast<int>(cfg.values.at("launch.ranks").as_int());
        host::sim::Cluster cluster(host::sim::settings_from(cfg, 1e9, host::fault_plan(cfg.values, ranks, true)));
        std::mutex mu;
        std::string error;
        cluster.run([&](int r) {
            try {
                host::HostContext ctx(cfg, torch::kCPU, dataset->vocab_size(), cluster.transport(r), cluster.clock(r));
                auto strategy = cfg.plugins.at("strategy")->make_strategy(cfg.sections.at("strategy"), ctx);
                const auto shard = strategy->data_shard(r, cluster.size());
                auto train = stream(batch, seq, shard.index, shard.count);
                for (int s = 0; s < steps; ++s) {
                    StepInput in;
                    in.step = s;
                    in.lr_scale = lr_scale;
                    in.train = train.get();
                    const auto out = strategy->step(in);
                    after(s, r, *strategy, out);
                }
            } catch (const std::exception& e) {
                std::lock_guard<std::mutex> lock(mu);
                error += (error.empty() ? "" : "; ") + ("rank " + std::to_string(r) + ": " + e.what());
                throw;
            }
        });
        return error;
    }

    static constexpr uint64_t kSeed = 11;
};

// The parameters in a strategy's state (its model.* entries, gathered), by name.
inline std::map<std::string, torch::Tensor> model_entries(const StateDict& state) {
    std::map<std::string, torch::Tensor> out;
    for (const auto& [key, t] : state)
        if (key.rfind("model.", 0) == 0) out[key.substr(6)] = t.clone();
    return out;
}

}  // namespace plexus::test
