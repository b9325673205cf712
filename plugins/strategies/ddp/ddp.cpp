// strategies/ddp: data parallelism with bucketed gradient all-reduce overlapped with backward.
//
// Parameters are grouped, in reverse order of registration (roughly the order backward produces
// their gradients), into buckets of about bucket_mb. A gradient hook on each parameter copies
// its gradient into its bucket; when the last gradient of a bucket arrives, the bucket's
// all-reduce (through the [comm] scheme) starts at once, asynchronously, while backward goes on
// with earlier layers. After backward, the strategy waits for every bucket (the time it blocks
// is the exposed communication) and copies the averages back into the gradients.
// With accumulate > 1, only the last micro-batch communicates: the hook then adds the gradient
// accumulated so far.
#include <algorithm>

#include <plexus/plexus.hpp>
#include <plexus/kit/util.hpp>
#include <plexus/kit/replica.hpp>

namespace {

struct Bucket {
    torch::Tensor flat;            // the bucket's buffer, all-reduced in place
    std::vector<size_t> params;    // indices into params_
    std::vector<int64_t> offsets;  // where each parameter's gradient sits in flat
    size_t ready = 0;              // gradients copied in during this backward
    std::shared_ptr<plexus::Work> work;
};

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
        const int64_t bucket_bytes = static_cast<int64_t>(bucket_mb * 1024 * 1024);
        int64_t filled = 0;  // bytes in the bucket being filled
        bucket_of_.assign(params_.size(), 0);
        for (size_t k = params_.size(); k-- > 0;) {
            const int64_t bytes = params_[k].numel() * static_cast<int64_t>(params_[k].element_size());
            if (buckets_.empty() || (filled > 0 && filled + bytes > bucket_bytes)) {
                buckets_.emplace_back();
                filled = 0;
            }
            auto& b = buckets_.back();
            b.offsets.push_back(filled / static_cast<int64_t>(params_[k].element_size()));
            b.params.push_back(k);
            bucket_of_[k] = buckets_.size() - 1;
            filled += bytes;
        }
        for (size_t i = 0; i < buckets_.size(); ++i) {
            auto& b = buckets_[i];
            int64_t n = 0;
            std::vector<plexus::TensorPiece> layout;
            for (size_t j = 0; j < b.params.size(); ++j) {
                const size_t k = b.params[j];
                n += params_[k].numel();
                layout.push_back({names_[k], b.offsets[j], params_[k].sizes().vec()});
            }
            b.flat = torch::zeros({n}, params_[b.params[0]].options());
            comm_->set_layout(static_cast<int64_t>(i), layout);
        }
        for (size_t k = 0; k < params_.size(); ++k)
            params_[k].register_hook([this, k](torch::Tensor grad) {
                on_grad(k, grad);
                return grad;
            });
        char line[160];
        std::snprintf(line, sizeof line, "ddp: %zu parameters in %zu bucket(s) of <= %.3g MiB, overlap %s",
                      params_.size(), buckets_.size(), bucket_mb, overlap_ ? "on" : "off");
        ctx.log(plexus::LogLevel::Info, line);
    }

    plexus::StepOutput step(const plexus::StepInput& in) override {
        plexus::StepOutput out;
        auto loss = forward_backward(*in.train, accumulate_, out,
                                     [this](int64_t i) { last_micro_batch_ = i + 1 == accumulate_; });
        // Without overlap, every bucket's all-reduce starts only now.
        if (!overlap_)
            for (size_t b = 0; b < buckets_.size(); ++b) launch(b);
        {
            torch::NoGradGuard no_grad;
            for (size_t b = 0; b < buckets_.size(); ++b) {
                auto& bucket = buckets_[b];
                if (!bucket.work)
                    throw plexus::Error(
                        "ddp: bucket " + std::to_string(b) + " never received all its gradients",
                        "a parameter the loss does not reach has no gradient; DDP needs every parameter used");
                bucket.work->wait();
                bucket.work.reset();
                bucket.ready = 0;
                for (size_t j = 0; j < bucket.params.size(); ++j) {
                    auto& p = params_[bucket.params[j]];
                    p.mutable_grad().view(-1).copy_(bucket.flat.narrow(0, bucket.offsets[j], p.numel()));
                }
            }
        }
        update(in, out, gradients());
        const auto comm_stats = comm_->stats();
        ctx_.record("comm_bytes", static_cast<double>(comm_stats.bytes_sent));
        ctx_.record("comm_ratio", comm_stats.compression_ratio());
        // The loss every rank reports is the mean over all ranks' batches (one scalar all-reduce).
        auto mean_loss = loss.to(torch::kFloat64);
        transport_.all_reduce(mean_loss, plexus::ReduceOp::Mean)->wait();
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
    void on_grad(size_t k, const torch::Tensor& grad) {
        if (!last_micro_batch_) return;  // accumulating: gradients go to .grad as usual
        torch::NoGradGuard no_grad;
        auto& b = buckets_[bucket_of_[k]];
        size_t j = 0;
        while (b.params[j] != k) ++j;
        auto slot = b.flat.narrow(0, b.offsets[j], grad.numel());
        const auto& accumulated = params_[k].grad();
        if (accumulated.defined() && accumulate_ > 1)
            torch::add_out(slot, accumulated.view(-1), grad.reshape(-1));
        else
            slot.copy_(grad.reshape(-1));
        if (++b.ready == b.params.size() && overlap_) launch(bucket_of_[k]);
    }

    void launch(size_t b) {
        auto& bucket = buckets_[b];
        if (bucket.work) return;
        if (!overlap_ && bucket.ready != bucket.params.size()) return;  // checked in step()
        bucket.work = comm_->all_reduce_mean(bucket.flat, transport_, static_cast<int64_t>(b));
    }

    plexus::Transport& transport_;
    int64_t accumulate_ = 1;
    bool overlap_ = true;
    bool last_micro_batch_ = true;
    std::unique_ptr<plexus::CommScheme> comm_;
    std::vector<Bucket> buckets_;
    std::vector<size_t> bucket_of_;
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
