// The host's side of the plugin API for a one-process run: the RunContext plugins see and the
// one-rank transport. Tests build plugins through it too, so they exercise the real path.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <plexus/context.hpp>
#include <plexus/dataset.hpp>
#include <plexus/strategy.hpp>

#include "config/experiment.hpp"
#include "store/results.hpp"
#include "sim/cluster.hpp"
#include "runtime/weights.hpp"

namespace plexus::host {

// The transport of a one-rank run: every collective is the identity.
std::unique_ptr<Transport> make_local_transport();

// Moves batches to the run's device (the datasets produce CPU tensors).
class DeviceStream : public BatchStream {
public:
    DeviceStream(std::unique_ptr<BatchStream> inner, torch::Device device)
        : inner_(std::move(inner)), device_(device) {}
    Batch next() override {
        auto b = inner_->next();
        if (device_.is_cpu()) return b;
        return {b.inputs.to(device_, /*non_blocking=*/true), b.targets.to(device_, true)};
    }
    int64_t position() const override { return inner_->position(); }
    void seek(int64_t p) override { inner_->seek(p); }
    int64_t length() const override { return inner_->length(); }

private:
    std::unique_ptr<BatchStream> inner_;
    torch::Device device_;
};

class HostContext : public RunContext {
public:
    HostContext(const ResolvedConfig& cfg, torch::Device device, int64_t vocab,
                std::shared_ptr<Transport> transport = make_local_transport(),
                std::shared_ptr<RankClock> clock = make_wall_clock());

    int rank() const override { return transport_->rank(); }
    int world_size() const override { return transport_->world_size(); }
    int ranks_per_node() const override { return ranks_per_node_; }
    void set_ranks_per_node(int n) { ranks_per_node_ = n > 0 ? n : 1; }
    // train.init_from's weights, copied into every model make_model() builds (null: none).
    void set_initial_weights(std::shared_ptr<const NamedTensors> weights) { initial_weights_ = std::move(weights); }
    torch::Device device() const override { return device_; }
    Transport& transport() override { return *transport_; }
    Transport& measurement_transport() override { return measurement_ ? *measurement_ : *transport_; }
    void set_measurement_transport(std::shared_ptr<Transport> t) { measurement_ = std::move(t); }
    int64_t batch_size() const override;
    int64_t token_budget() const override;
    int64_t vocab_size() const override { return vocab_; }
    int64_t seq_len() const override;
    void record(const std::string& key, double value) override;
    void log(LogLevel level, const std::string& message) override;
    uint64_t seed(const std::string& stream) const override;
    double now() override { return clock_->now(); }
    void charge_compute(double flops) override { clock_->charge_compute(flops); }
    // The task's tensors count to this rank's memory meter, if it has one.
    std::unique_ptr<BackgroundTask> start_background(std::function<void()> task) override;
    int64_t tensor_bytes() override;
    // bfloat16 where train.precision = "bf16", else float32 (AutocastGuard does nothing then).
    c10::ScalarType autocast_dtype() const;
    bool simulated() const { return clock_->simulated(); }
    // Real seconds since this context was made (the progress line's elapsed time and ETA).
    double wall_seconds() const;

    std::shared_ptr<Model> make_model() override;
    std::unique_ptr<Optimizer> make_optimizer(std::vector<ParamSlot> slots, const std::string& section) override;
    std::unique_ptr<CommScheme> make_comm(const std::string& section) override;

    // Harness state, read when recording metrics.
    int64_t step = 0;
    int64_t tokens = 0;
    std::vector<MetricRow> pending;
    // What the first model built reports (the harness's MFU uses it).
    bool built_model = false;
    FlopsPerToken flops;
    int64_t params = 0;

private:
    const ResolvedConfig& cfg_;
    torch::Device device_;
    int64_t vocab_;
    std::shared_ptr<Transport> transport_;
    std::shared_ptr<Transport> measurement_;  // null: transport_
    std::shared_ptr<RankClock> clock_;
    int ranks_per_node_ = 1;
    std::chrono::steady_clock::time_point start_;
    std::shared_ptr<const NamedTensors> initial_weights_;
    // μP roles of the model's parameters by name (Block::width_plan), copied onto every slot.
    std::map<std::string, WidthRule> width_roles_;
};

// The run's dataset and strategy from their plugins, wrapped so that their errors name them
// (runtime/plugin_calls.hpp); the context's make_* wrap the model, optimizers and schemes alike.
std::shared_ptr<Dataset> make_dataset(const ResolvedConfig& cfg, RunContext& ctx);
std::unique_ptr<Strategy> make_strategy(const ResolvedConfig& cfg, RunContext& ctx);

// A run's pieces built as the harness builds them, for a bare loop of strategy->step(in)
// without the harness's schedule and recording (benchmarks, meta-training tasks): the dataset,
// the context, the strategy with its model, and the training stream on `device` ([train]
// batch_size x seq_len, the whole data, the run's data seed). `cfg` must outlive it.
struct BareRun {
    std::shared_ptr<Dataset> data;
    std::unique_ptr<HostContext> ctx;
    std::unique_ptr<Strategy> strategy;
    std::unique_ptr<DeviceStream> stream;
    StepInput in;  // max_grad_norm from train.grad_clip; the rest is the caller's

    BareRun(const ResolvedConfig& cfg, torch::Device device);
};

}  // namespace plexus::host
