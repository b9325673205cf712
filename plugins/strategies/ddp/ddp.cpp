// strategies/ddp: data parallelism with bucketed gradient all-reduce overlapped with backward.
//
// The buckets (plexus/kit/grad_buckets.hpp): parameters grouped in reverse order into buckets of
// about bucket_mb; a gradient hook copies each gradient into its bucket, and the bucket's
// all-reduce (through the [comm] scheme) starts with its last gradient, while backward goes on
// with earlier layers. After backward, the strategy waits for every bucket (the time it blocks
// is the exposed communication). With accumulate > 1, only the last micro-batch communicates.
#include <algorithm>

#include <plexus/plexus.hpp>
#include <plexus/kit/grad_buckets.hpp>
#include <plexus/kit/util.hpp>
#include <plexus/kit/replica.hpp>

namespace {

class Ddp : public plexus::ReplicaStrategy {
public:
    Ddp(const plexus::Config& cfg, plexus::RunContext& ctx) : ReplicaStrategy(ctx), transport_(ctx.transport()) {
        accumulate_ = cfg.get_int("accumulate");
        cfg.require(accumulate_ >= 1, "accumulate", "must be >= 1");
        const double bucket_mb = cfg.get_double("bucket_mb");
        cfg.require(bucket_mb > 0, "bucket_mb", "must be > 0");
        overlap_ = cfg.get_bool("overlap");
        comm_ = ctx.make_comm();

        // Every rank starts from rank 0's parameters (they are seeded alike; this makes sure).
        {
            torch::NoGradGuard no_grad;
            for (auto& p : params_) transport_.broadcast(p, 0)->wait();
        }
        buckets_ = std::make_unique<plexus::GradientBuckets>(
            "ddp", params_, bucket_mb, overlap_, /*require_all=*/true,
            [this](torch::Tensor& flat, int64_t index) { return comm_->all_reduce_mean(flat, transport_, index); });
        for (size_t b = 0; b < buckets_->size(); ++b) {
            std::vector<plexus::TensorPiece> layout;
            for (size_t k : buckets_->params_of(b))
                layout.push_back({names_[k], buckets_->offset_of(k), params_[k].sizes().vec()});
            comm_->set_layout(static_cast<int64_t>(b), layout);
        }
        char line[160];
        std::snprintf(line, sizeof line, "ddp: %zu parameters in %zu bucket(s) of <= %.3g MiB, overlap %s",
                      params_.size(), buckets_->size(), bucket_mb, overlap_ ? "on" : "off");
        ctx.log(plexus::LogLevel::Info, line);
    }

    plexus::StepOutput step(const plexus::StepInput& in) override {
        plexus::StepOutput out;
        auto loss = forward_backward(*in.train, accumulate_, out, [this](int64_t i) {
            buckets_->expect(/*last=*/i + 1 == accumulate_, /*accumulated=*/i > 0);
        });
        // The loss every rank reports is the mean over all ranks' batches: one scalar all-reduce,
        // issued after backward (behind the buckets with overlap on, ahead of them with it off)
        // and awaited after the optimizer, so its latency is hidden.
        auto mean_loss = loss.to(torch::kFloat64);
        auto loss_work = transport_.all_reduce(mean_loss, plexus::ReduceOp::Mean);
        // The optimizer reads the means where the all-reduce left them (no copy into .grad).
        update(in, out, buckets_->finish_as_views());
        const auto comm_stats = comm_->stats();
        ctx_.record("comm_bytes", static_cast<double>(comm_stats.bytes_sent));
        ctx_.record("comm_ratio", comm_stats.compression_ratio());
        loss_work->wait();
        out.loss = plexus::value_of(mean_loss);
        return out;
    }

    // The replica's state, then the communication scheme's memory ("comm.*": error feedback,
    // PowerSGD's Q), so that a resumed run compresses as the uninterrupted one would.
    plexus::StateDict state() const override {
        auto out = ReplicaStrategy::state();
        for (auto& item : comm_->state()) out.emplace_back("comm." + item.first, item.second);
        return out;
    }
    void load_state(const plexus::StateDict& state) override {
        auto first_comm = std::find_if(state.begin(), state.end(),
                                       [](const auto& item) { return item.first.rfind("comm.", 0) == 0; });
        ReplicaStrategy::load_state(plexus::StateDict(state.begin(), first_comm));
        plexus::StateDict comm;
        for (auto it = first_comm; it != state.end(); ++it) comm.emplace_back(it->first.substr(5), it->second);
        comm_->load_state(comm);
    }
    // All of it is there (checked by tests with allreduce and powersgd).
    bool exact_resume() const override { return true; }

private:
    plexus::Transport& transport_;
    int64_t accumulate_ = 1;
    bool overlap_ = true;
    std::unique_ptr<plexus::CommScheme> comm_;
    std::unique_ptr<plexus::GradientBuckets> buckets_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "ddp";
    d.kind = plexus::PluginKind::Strategy;
    d.version = "1.0";
    d.summary = "data parallel: bucketed gradient all-reduce started from backward hooks (overlapped)";
    d.schema = {
        {"accumulate", 1, "micro-batches per optimizer step; only the last one communicates"},
        {"bucket_mb", 4.0, "gradient bucket size in MiB"},
        {"overlap", true, "start each bucket's all-reduce as soon as its gradients are ready"},
    };
    d.make_strategy = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::unique_ptr<plexus::Strategy> {
        return std::make_unique<Ddp>(cfg, ctx);
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
