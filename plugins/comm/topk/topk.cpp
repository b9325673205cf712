// comm/topk: sparsified averaging with error feedback (Stich et al. 2018; docs/algorithms/compression.md).
// Each rank adds the residual it kept from earlier calls, sends only the k = ratio * n entries of
// largest magnitude (int32 index + float32 value each), and keeps the rest as the new residual.
// Ranks all-gather the sparse entries and each rank sums them into a dense average.
#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include <map>

namespace {

class TopK : public plexus::CommScheme {
public:
    explicit TopK(double ratio) : ratio_(ratio) {}

    std::shared_ptr<plexus::Work> all_reduce_mean(torch::Tensor& tensor, plexus::Transport& transport,
                                                  int64_t key) override {
        torch::NoGradGuard no_grad;
        const int world = transport.world_size();
        const int64_t n = tensor.numel();
        stats_.logical_bytes +=
            plexus::ring_all_reduce_bytes(n * static_cast<int64_t>(tensor.element_size()), transport.world_size());
        auto& residual = residuals_[key];
        const auto f32 = tensor.options().dtype(torch::kFloat32);  // on the tensor's device
        if (!residual.defined() || residual.numel() != n) residual = torch::zeros({n}, f32);
        auto corrected = tensor.reshape(-1).to(torch::kFloat32) + residual;
        const int64_t k = std::max<int64_t>(1, static_cast<int64_t>(ratio_ * static_cast<double>(n)));
        auto picked = std::get<1>(corrected.abs().topk(k, 0, /*largest=*/true, /*sorted=*/false));
        auto values = corrected.index_select(0, picked);
        residual.copy_(corrected);
        residual.index_fill_(0, picked, 0.0);
        const auto before = transport.stats().bytes_sent;
        auto all_idx = torch::empty({world * k}, f32.dtype(torch::kInt32));
        auto all_val = torch::empty({world * k}, f32);
        transport.all_gather(all_idx, picked.to(torch::kInt32))->wait();
        transport.all_gather(all_val, values)->wait();
        stats_.bytes_sent += transport.stats().bytes_sent - before;
        auto dense = torch::zeros({n}, f32);
        dense.index_add_(0, all_idx.to(torch::kInt64), all_val);
        tensor.copy_((dense / world).view_as(tensor));
        return std::make_shared<plexus::CompletedWork>();
    }

    plexus::CommSchemeStats stats() const override { return stats_; }

    // Per bucket: the residual not sent yet (error feedback); and the byte counts.
    plexus::StateDict state() const override {
        plexus::StateDict out;
        for (const auto& [key, r] : residuals_) out.emplace_back(std::to_string(key), r.clone());
        out.emplace_back("stats", stats_.as_tensor());
        return out;
    }
    void load_state(const plexus::StateDict& state) override {
        residuals_.clear();
        for (const auto& [name, t] : state) {
            if (name == "stats") {
                stats_ = plexus::CommSchemeStats::from_tensor(t);
            } else {
                residuals_[std::stoll(name)] = t.clone();
            }
        }
    }

private:
    double ratio_;
    std::map<int64_t, torch::Tensor> residuals_;
    plexus::CommSchemeStats stats_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "topk";
    d.kind = plexus::PluginKind::Comm;
    d.version = "1.0";
    d.summary = "top-k sparsification with error feedback; sends ratio * n (index, value) pairs";
    d.schema = {{"ratio", 0.01, "fraction of the entries sent per call, in (0, 1]"}};
    d.extras["check.settings"] = "comm.ratio=1";  // `plexus check`: every entry sent, so the mean is exact
    d.make_comm = [](const plexus::Config& cfg, plexus::RunContext&) -> std::unique_ptr<plexus::CommScheme> {
        const double ratio = cfg.get_double("ratio");
        cfg.require(ratio > 0 && ratio <= 1, "ratio", "must lie in (0, 1]");
        return std::make_unique<TopK>(ratio);
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
