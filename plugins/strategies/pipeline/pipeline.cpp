// strategies/pipeline: pipeline parallelism (GPipe or 1F1B), optionally data parallel over
// pipelines (a dp x pp mesh: ranks [d·pp, (d+1)·pp) form pipeline d, rank d·pp + s its stage s).
//
// The model's blocks are cut into `pp` contiguous stages: by count, by FLOPs, or by measured
// time (a profiling pass times every block's forward and backward on one micro-batch before
// training; rank 0's figures decide, so every rank agrees). Each step splits the batch into
// `micro_batches`; activations go forward and their gradients backward with point-to-point
// sends. GPipe runs every forward, then every backward (all micro-batches' activations alive at
// once); 1F1B starts backward as soon as the last stage can, so a stage holds at most
// (stages - its index) micro-batches. Every stage reads the same batch: the first uses its
// inputs, the last its targets. Recorded per step: the bubble (the share of the step a stage
// did not compute) and the most micro-batches whose activations were alive at once.
#include <plexus/kit/blocks.hpp>
#include <plexus/kit/grad_buckets.hpp>
#include <plexus/plexus.hpp>
#include <plexus/kit/util.hpp>

#include <algorithm>
#include <map>

namespace {

class Pipeline : public plexus::Strategy {
public:
    Pipeline(const plexus::Config& cfg, plexus::RunContext& ctx) : ctx_(ctx), world_(ctx.transport()) {
        const int W = world_.world_size(), rank = world_.rank();
        pp_ = static_cast<int>(cfg.get_int("pp"));
        if (pp_ == 0) pp_ = W;
        cfg.require(pp_ >= 1 && W % pp_ == 0, "pp", "must divide the number of ranks (" + std::to_string(W) + ")");
        dp_ = W / pp_;
        cfg.require(cfg.get_int("dp") == 0 || cfg.get_int("dp") == dp_, "dp",
                    "must be ranks / pp = " + std::to_string(dp_) + " (or 0)");
        stage_ = rank % pp_;
        micro_ = cfg.get_int("micro_batches");
        cfg.require(micro_ >= 1, "micro_batches", "must be >= 1");
        schedule_ = cfg.get_string("schedule");
        cfg.require(schedule_ == "gpipe" || schedule_ == "1f1b", "schedule", "must be \"gpipe\" or \"1f1b\"");
        const std::string partition = cfg.get_string("partition");
        cfg.require(partition == "count" || partition == "flops" || partition == "measured", "partition",
                    "must be count, flops or measured");
        const int d = rank / pp_;
        std::vector<int> pipe_ranks, data_ranks;
        for (int s = 0; s < pp_; ++s) pipe_ranks.push_back(d * pp_ + s);
        for (int i = 0; i < dp_; ++i) data_ranks.push_back(i * pp_ + stage_);
        auto self = std::shared_ptr<plexus::Transport>(&world_, [](plexus::Transport*) {});
        pipe_ = pp_ == W ? self : world_.subgroup(pipe_ranks);
        if (dp_ > 1) data_ = pp_ == 1 ? self : world_.subgroup(data_ranks);

        model_ = ctx.make_model();
        cost_ = block_costs(partition);
        placement_ = std::make_unique<plexus::StagePlacement>(*model_, balance(cost_, pp_), stage_);
        bounds_ = placement_->bounds();
        std::string cut;
        for (int s = 0; s < pp_; ++s)
            cut += (s ? " | " : "") + std::to_string(bounds_[s]) + ".." + std::to_string(bounds_[s + 1] - 1);
        ctx.log(plexus::LogLevel::Info, "pipeline: " + schedule_ + ", dp " + std::to_string(dp_) + " x pp " +
                                            std::to_string(pp_) + ", " + std::to_string(micro_) +
                                            " micro-batches, blocks by stage (" + partition + "): " + cut);
        // This stage keeps its blocks' parameters only.
        params_ = placement_->parameters();
        optimizer_ = ctx.make_optimizer(placement_->slots());
        // The mean over pipelines, bucket by bucket, as the last micro-batch's backward reaches
        // them (or after the schedule, with overlap_grad_reduce off).
        if (dp_ > 1)
            grad_buckets_ = std::make_unique<plexus::GradientBuckets>(
                "pipeline", params_, cfg.get_double("bucket_mb"), cfg.get_bool("overlap_grad_reduce"),
                /*require_all=*/false,
                [this](torch::Tensor& flat, int64_t) { return data_->all_reduce(flat, plexus::ReduceOp::Mean); });
    }

    plexus::DataShard data_shard(int rank, int) const override { return {rank / pp_, dp_}; }

    plexus::StepOutput step(const plexus::StepInput& in) override {
        plexus::StepOutput out;
        auto batch = in.train->next();
        const auto inputs = batch.inputs.chunk(micro_, 0), targets = batch.targets.chunk(micro_, 0);
        if (static_cast<int64_t>(inputs.size()) != micro_ || batch.inputs.size(0) % micro_ != 0)
            throw plexus::Error("pipeline: a batch of " + std::to_string(batch.inputs.size(0)) +
                                    " rows does not split into " + std::to_string(micro_) + " equal micro-batches",
                                "make train.batch_size a multiple of strategy.micro_batches");
        const double step_start = ctx_.now();
        busy_ = 0;
        max_live_ = 0;
        loss_sum_ = 0;
        model_->train();
        if (schedule_ == "gpipe") {
            for (int64_t j = 0; j < micro_; ++j) forward_micro(j, inputs[j], targets[j], true);
            for (int64_t j = 0; j < micro_; ++j) backward_micro(j);
        } else {
            const int64_t warmup = std::min<int64_t>(pp_ - stage_ - 1, micro_);
            int64_t next_f = 0, next_b = 0;
            for (; next_f < warmup; ++next_f) forward_micro(next_f, inputs[next_f], targets[next_f], true);
            while (next_b < micro_) {
                if (next_f < micro_) {
                    forward_micro(next_f, inputs[next_f], targets[next_f], true);
                    ++next_f;
                }
                backward_micro(next_b++);
            }
        }
        for (auto& w : sends_) w->wait();
        sends_.clear();
        if (grad_buckets_) grad_buckets_->finish();
        // The bubble: the share of the schedule this stage spent waiting (the optimizer after it
        // is not part of the pipeline).
        const double schedule_time = ctx_.now() - step_start;
        ctx_.record("bubble", schedule_time > 0 ? 1.0 - busy_ / schedule_time : 0.0);
        ctx_.record("live_micro_batches", static_cast<double>(max_live_));

        torch::NoGradGuard no_grad;
        std::vector<torch::Tensor> grads;
        for (auto& p : params_) {
            if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
            grads.push_back(p.grad());
        }
        const double sq = plexus::sum_of_squares(grads);
        // Loss (only the last stage has it) and the squared gradient norm, summed over the pipeline.
        auto sums =
            torch::tensor({sq, stage_ == pp_ - 1 ? loss_sum_ / static_cast<double>(micro_) : 0.0}, torch::kFloat64);
        pipe_->all_reduce(sums, plexus::ReduceOp::Sum)->wait();
        out.grad_norm = std::sqrt(plexus::value_of(sums[0]));
        optimizer_->step_scaled(grads, in.lr_scale, plexus::clip_factor(out.grad_norm, in.max_grad_norm));
        ctx_.charge_compute(optimizer_->flops_per_step());
        for (auto& g : grads) g.zero_();
        auto loss = sums[1].clone();
        if (dp_ > 1) data_->all_reduce(loss, plexus::ReduceOp::Mean)->wait();
        out.loss = plexus::value_of(loss);
        out.tokens = batch.tokens() / pp_;  // the stages share the batch
        if (state_bytes_ < 0) state_bytes_ = plexus::training_state_bytes(params_, *optimizer_);
        ctx_.record("state_bytes", static_cast<double>(state_bytes_));
        out.micro_batches = micro_;
        return out;
    }

    double evaluate(plexus::BatchStream& stream, int64_t batches) override {
        torch::NoGradGuard no_grad;
        model_->eval();
        loss_sum_ = 0;
        int64_t count = 0;  // micro-batch means summed in loss_sum_
        for (int64_t i = 0; i < batches; ++i) {
            auto batch = stream.next();
            const auto inputs = batch.inputs.chunk(micro_, 0), targets = batch.targets.chunk(micro_, 0);
            for (size_t j = 0; j < inputs.size(); ++j, ++count)
                forward_micro(static_cast<int64_t>(j), inputs[j], targets[j], false);
        }
        for (auto& w : sends_) w->wait();
        sends_.clear();
        auto total = torch::tensor({stage_ == pp_ - 1 ? loss_sum_ : 0.0}, torch::kFloat64);
        pipe_->all_reduce(total, plexus::ReduceOp::Sum)->wait();
        model_->train();
        return count > 0 ? plexus::value_of(total) / static_cast<double>(count) : 0.0;
    }

    // Every stage's parameters, in model order (each stage sends its own; every rank calls this),
    // then this stage's optimizer state.
    // A step runs its whole schedule, so the pipe is empty between steps: weights and optimizer
    // are all of it (tests/test_reliability.cpp).
    bool exact_resume() const override { return true; }
    plexus::StateDict state() const override { return placement_->state(*pipe_, ctx_.device(), *optimizer_); }
    void load_state(const plexus::StateDict& state) override { placement_->load_state(state, *optimizer_); }

private:
    struct InFlight {
        torch::Tensor input;   // received activation (requires grad), or the token ids on stage 0
        torch::Tensor output;  // this stage's output (the loss on the last stage)
    };

    // Forward of one micro-batch through this stage's blocks: receive, compute, send.
    void forward_micro(int64_t j, const torch::Tensor& ids, const torch::Tensor& targets, bool train) {
        torch::Tensor x;
        if (stage_ == 0) {
            x = ids;
        } else {
            x = torch::empty(boundary_shape(stage_, ids), torch::TensorOptions().device(ctx_.device()));
            pipe_->recv(x, stage_ - 1, static_cast<int>(j))->wait();
            if (train) x.requires_grad_(true);
        }
        const double t0 = ctx_.now();
        auto y = plexus::run_blocks(*model_, x, ctx_, static_cast<double>(ids.numel()), train, {},
                                    static_cast<size_t>(bounds_[stage_]), static_cast<size_t>(bounds_[stage_ + 1]));
        if (stage_ == pp_ - 1) {
            auto loss = model_->loss(y, targets);
            loss_sum_ += plexus::value_of(loss);
            y = loss / static_cast<double>(micro_);
        } else {
            sends_.push_back(pipe_->send(y.detach(), stage_ + 1, static_cast<int>(j)));
        }
        busy_ += ctx_.now() - t0;
        if (!train) return;
        flight_[j] = {x, y};
        max_live_ = std::max<int64_t>(max_live_, static_cast<int64_t>(flight_.size()));
    }

    // Backward of one micro-batch: the output's gradient from the next stage, the input's to the
    // previous one; its activations are released.
    void backward_micro(int64_t j) {
        if (grad_buckets_) grad_buckets_->expect(/*last=*/j + 1 == micro_, /*accumulated=*/j > 0);
        auto it = flight_.find(j);
        auto f = it->second;
        flight_.erase(it);
        torch::Tensor grad;
        if (stage_ < pp_ - 1) {
            grad = torch::empty(f.output.sizes(), f.output.options());
            pipe_->recv(grad, stage_ + 1, static_cast<int>(j))->wait();
        }
        const double t0 = ctx_.now();
        if (stage_ == pp_ - 1)
            f.output.backward();
        else
            f.output.backward(grad);
        busy_ += ctx_.now() - t0;
        if (stage_ > 0) sends_.push_back(pipe_->send(f.input.grad(), stage_ - 1, static_cast<int>(j)));
    }

    // The shape of what stage s receives for a micro-batch of these token ids: [rows, seq, width].
    std::vector<int64_t> boundary_shape(int s, const torch::Tensor& ids) const {
        auto shape = boundary_shapes_[static_cast<size_t>(s)];
        shape[0] = ids.size(0);
        shape[1] = ids.size(1);
        return shape;
    }

    // Cost of each block: 1 (count), its FLOPs, or its measured forward + backward time. Also
    // records the shape of every block's output (what crosses a stage boundary).
    std::vector<double> block_costs(const std::string& how) {
        const auto& blocks = model_->blocks();
        const int64_t T = ctx_.seq_len();
        const auto on_device = torch::TensorOptions().device(ctx_.device());
        auto ids = torch::zeros({1, T}, on_device.dtype(torch::kLong));
        std::vector<double> cost(blocks.size(), 1.0);
        boundary_shapes_.assign(static_cast<size_t>(pp_) + 1, {});
        std::vector<std::vector<int64_t>> outputs;
        {
            torch::NoGradGuard no_grad;
            torch::Tensor x = ids;
            for (const auto& b : blocks) {
                x = b->forward(x);
                outputs.push_back(x.sizes().vec());
            }
        }
        output_shapes_ = outputs;
        if (how == "flops")
            for (size_t b = 0; b < blocks.size(); ++b) cost[b] = blocks[b]->flops_per_token(T);
        if (how == "measured") {
            // Rank 0 times the blocks; the others take its figures, so the partition is the same
            // everywhere.
            auto times = torch::zeros({static_cast<int64_t>(blocks.size())}, torch::kFloat64);
            if (world_.rank() == 0) times.copy_(torch::tensor(plexus::time_blocks(*model_, ctx_), torch::kFloat64));
            world_.broadcast(times, 0)->wait();
            for (size_t b = 0; b < blocks.size(); ++b) cost[b] = plexus::value_of(times[static_cast<int64_t>(b)]);
        }
        return cost;
    }

    // Contiguous stages minimizing the most expensive one.
    std::vector<int> balance(const std::vector<double>& cost, int stages) {
        const auto bounds = plexus::balance_stages(std::vector<std::vector<double>>(static_cast<size_t>(stages), cost));
        // The partition, in the results: where each stage starts.
        for (int st = 0; st < stages; ++st)
            ctx_.record("pipeline_stage" + std::to_string(st) + "_first_block",
                        static_cast<double>(bounds[static_cast<size_t>(st)]));
        for (int s = 1; s <= pp_; ++s)
            boundary_shapes_[static_cast<size_t>(s)] =
                output_shapes_[static_cast<size_t>(bounds[static_cast<size_t>(s)] - 1)];
        return bounds;
    }

    plexus::RunContext& ctx_;
    plexus::Transport& world_;
    int pp_ = 1, dp_ = 1, stage_ = 0;
    int64_t micro_ = 1;
    std::string schedule_;
    std::shared_ptr<plexus::Transport> pipe_, data_;
    std::shared_ptr<plexus::Model> model_;
    std::vector<double> cost_;
    std::vector<int> bounds_;
    std::vector<std::vector<int64_t>> boundary_shapes_, output_shapes_;
    std::unique_ptr<plexus::StagePlacement> placement_;
    std::vector<torch::Tensor> params_;
    std::unique_ptr<plexus::GradientBuckets> grad_buckets_;  // with dp > 1
    std::unique_ptr<plexus::Optimizer> optimizer_;
    int64_t state_bytes_ = -1;
    std::map<int64_t, InFlight> flight_;
    std::vector<std::shared_ptr<plexus::Work>> sends_;
    double busy_ = 0, loss_sum_ = 0;
    int64_t max_live_ = 0;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "pipeline";
    d.kind = plexus::PluginKind::Strategy;
    d.version = "1.0";
    d.summary = "pipeline parallelism over the model's blocks: GPipe or 1F1B, micro-batches, balanced stages";
    d.schema = {
        {"pp", 0, "stages per pipeline (0: all ranks); dp = ranks / pp"},
        {"dp", 0, "pipelines, to name the mesh (dp = 2, pp = 2); 0: ranks / pp"},
        plexus::ConfigKey("schedule", "1f1b", "gpipe (all forwards, then all backwards) or 1f1b")
            .one_of({"gpipe", "1f1b"}),
        {"micro_batches", 4, "micro-batches per step (train.batch_size must be a multiple)"},
        {"partition", "flops", "cut stages by block count, block FLOPs, or measured block time"},
        {"overlap_grad_reduce", true,
         "with dp > 1: start each bucket's gradient mean over pipelines as the last micro-batch's backward "
         "fills it (off: all after the schedule)"},
        {"bucket_mb", 4.0, "gradient bucket size in MiB for the mean over pipelines"},
    };
    d.make_strategy = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::unique_ptr<plexus::Strategy> {
        return std::make_unique<Pipeline>(cfg, ctx);
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
