// strategies/diloco: DiLoCo (Douillard et al. 2023) and local SGD.
//
// Every rank trains its own replica with the inner optimizer ([optimizer]) for `inner_steps`
// steps without communicating. Then the pseudo-gradient Δ = anchor - θ (the anchor is the
// replicas' common starting point) is averaged over the ranks through the [comm] scheme (so
// it can be compressed), and the outer optimizer ([outer_optimizer], e.g. SGD with Nesterov
// momentum, lr 0.7) steps the anchor with it; every replica restarts from the new anchor.
// Local SGD / FedAvg is the outer SGD with lr 1 and no momentum: the new anchor is the
// replicas' average. One harness step is one inner step; the loss reported is this rank's.
// Evaluation is at the anchor, the model DiLoCo delivers, not a replica some inner steps past it.
//
// Streaming DiLoCo (Douillard et al. 2025), without its overlap of the communication: with
// `fragments` = F the parameters are cut into F runs of about equal size (whole tensors, in the
// model's order), and fragment f synchronizes, each with its own outer optimizer, at inner step
// (f + 1) H / F of every period of H. Every parameter still synchronizes every H steps (the
// same bytes), but one exchange carries 1/F of them: the peak bandwidth falls by F.
#include <plexus/plexus.hpp>
#include <plexus/kit/util.hpp>
#include <plexus/kit/replica.hpp>

namespace {

class Diloco : public plexus::ReplicaStrategy {
public:
    Diloco(const plexus::Config& cfg, plexus::RunContext& ctx) : ReplicaStrategy(ctx), transport_(ctx.transport()) {
        inner_steps_ = cfg.get_int("inner_steps");
        cfg.require(inner_steps_ >= 1, "inner_steps", "must be >= 1");
        const int64_t fragments = cfg.get_int("fragments");
        cfg.require(fragments >= 1 && inner_steps_ % fragments == 0, "fragments",
                    "must be >= 1 and divide inner_steps (" + std::to_string(inner_steps_) + ")");
        comm_ = ctx.make_comm();
        torch::NoGradGuard no_grad;
        // Every replica starts from rank 0's parameters (seeded alike; this makes sure).
        for (auto& p : params_) transport_.broadcast(p, 0)->wait();
        for (const auto& p : params_) anchor_.push_back(p.detach().clone());
        cut_fragments(fragments);
        for (size_t f = 0; f < fragments_.size(); ++f) make_fragment(f);
    }

    // The anchor's loss: the replica's parameters step aside for it, and come back unchanged.
    double evaluate(plexus::BatchStream& stream, int64_t batches) override {
        torch::NoGradGuard no_grad;
        std::vector<torch::Tensor> replica;
        for (size_t i = 0; i < params_.size(); ++i) {
            replica.push_back(params_[i].detach().clone());
            params_[i].copy_(anchor_[i]);
        }
        const double loss = ReplicaStrategy::evaluate(stream, batches);
        for (size_t i = 0; i < params_.size(); ++i) params_[i].copy_(replica[i]);
        return loss;
    }

    plexus::StepOutput step(const plexus::StepInput& in) override {
        plexus::StepOutput out;
        auto loss = forward_backward(*in.train, 1, out);
        update(in, out, gradients());
        out.loss = plexus::value_of(loss);
        ++inner_done_;
        const int64_t every = inner_steps_ / static_cast<int64_t>(fragments_.size());
        if (inner_done_ % every == 0) synchronize(static_cast<size_t>(inner_done_ / every - 1));
        if (inner_done_ == inner_steps_) inner_done_ = 0;
        return out;
    }

    plexus::StateDict state() const override {
        auto out = ReplicaStrategy::state();
        for (size_t i = 0; i < anchor_.size(); ++i) out.emplace_back("anchor." + std::to_string(i), anchor_[i].clone());
        for (size_t f = 0; f < fragments_.size(); ++f)
            for (auto& item : fragments_[f].outer->state())
                out.emplace_back("outer." + std::to_string(f) + "." + item.first, item.second);
        for (auto& item : comm_->state()) out.emplace_back("comm." + item.first, item.second);
        out.emplace_back("diloco.counters", torch::tensor({inner_done_, outer_steps_}, torch::kInt64));
        return out;
    }
    bool exact_resume() const override { return true; }

    void load_state(const plexus::StateDict& state) override {
        plexus::StateDict replica, comm;
        std::vector<plexus::StateDict> outer(fragments_.size());
        size_t anchor = 0;
        torch::NoGradGuard no_grad;
        for (const auto& item : state) {
            if (item.first.rfind("anchor.", 0) == 0)
                anchor_.at(anchor++).copy_(item.second);
            else if (item.first.rfind("outer.", 0) == 0)
                outer.at(std::stoul(item.first.substr(6))).push_back(item);
            else if (item.first.rfind("comm.", 0) == 0)
                comm.emplace_back(item.first.substr(5), item.second);
            else if (item.first == "diloco.counters") {
                inner_done_ = item.second[0].item<int64_t>();
                outer_steps_ = item.second[1].item<int64_t>();
            } else {
                replica.push_back(item);
            }
        }
        ReplicaStrategy::load_state(replica);
        for (size_t f = 0; f < fragments_.size(); ++f) fragments_[f].outer->load_state(outer[f]);
        comm_->load_state(comm);
    }

private:
    // A run of parameters [first, last) that synchronizes together, with its own outer optimizer
    // and its own key for the communication scheme.
    struct Fragment {
        size_t first = 0, last = 0;
        torch::Tensor flat;  // its pseudo-gradient, flat
        std::unique_ptr<plexus::Optimizer> outer;
    };

    // F runs of whole tensors, each closing once it holds 1/F of the parameters.
    void cut_fragments(int64_t count) {
        int64_t total = 0, taken = 0;
        for (const auto& p : params_) total += p.numel();
        if (static_cast<size_t>(count) > params_.size())
            throw plexus::Error("diloco: fragments = " + std::to_string(count) + " but the model has " +
                                    std::to_string(params_.size()) + " parameter tensors",
                                "use at most as many fragments as tensors");
        Fragment current;
        for (size_t i = 0; i < params_.size(); ++i) {
            taken += params_[i].numel();
            const size_t left = params_.size() - i - 1, to_cut = static_cast<size_t>(count) - fragments_.size() - 1;
            const bool full = taken * count >= total * static_cast<int64_t>(fragments_.size() + 1);
            if (to_cut > 0 && (full || left == to_cut)) {  // close it (leaving a tensor for each one left)
                current.last = i + 1;
                fragments_.push_back(std::move(current));
                current = Fragment{};
                current.first = i + 1;
            }
        }
        current.last = params_.size();
        fragments_.push_back(std::move(current));
    }

    void make_fragment(size_t f) {
        auto& fragment = fragments_[f];
        std::vector<plexus::ParamSlot> slots;
        std::vector<plexus::TensorPiece> layout;
        int64_t n = 0;
        for (size_t i = fragment.first; i < fragment.last; ++i) {
            slots.push_back({names_[i], anchor_[i], params_[i].sizes().vec()});
            layout.push_back({names_[i], n, params_[i].sizes().vec()});
            n += params_[i].numel();
        }
        try {
            fragment.outer = ctx_.make_optimizer(std::move(slots), "outer_optimizer");
        } catch (const plexus::Error& e) {
            throw plexus::Error(std::string("diloco needs an outer optimizer: ") + e.what(),
                                "add [outer_optimizer] name = \"sgd\", lr = 0.7, momentum = 0.9, nesterov = true "
                                "(lr = 1.0 and momentum = 0.0 is local SGD)");
        }
        fragment.flat = torch::zeros({n}, params_[0].options());
        comm_->set_layout(static_cast<int64_t>(f), layout);
    }

    // Fragment f's outer step: average its pseudo-gradients, step its anchor, restart every
    // replica's fragment from it.
    void synchronize(size_t f) {
        torch::NoGradGuard no_grad;
        auto& fragment = fragments_[f];
        int64_t offset = 0;
        for (size_t i = fragment.first; i < fragment.last; ++i) {
            const auto n = params_[i].numel();
            fragment.flat.narrow(0, offset, n).copy_((anchor_[i] - params_[i]).reshape(-1));
            offset += n;
        }
        comm_->all_reduce_mean(fragment.flat, transport_, static_cast<int64_t>(f))->wait();
        std::vector<torch::Tensor> pseudo;
        offset = 0;
        for (size_t i = fragment.first; i < fragment.last; ++i) {
            const auto n = params_[i].numel();
            pseudo.push_back(fragment.flat.narrow(0, offset, n).view(params_[i].sizes()));
            offset += n;
        }
        fragment.outer->step(pseudo, 1.0);  // the outer learning rate is constant
        ctx_.charge_compute(fragment.outer->flops_per_step());
        for (size_t i = fragment.first; i < fragment.last; ++i) params_[i].copy_(anchor_[i]);
        ++outer_steps_;
        ctx_.record("outer_steps", static_cast<double>(outer_steps_));
        const auto stats = comm_->stats();
        ctx_.record("comm_bytes", static_cast<double>(stats.bytes_sent));
    }

    plexus::Transport& transport_;
    int64_t inner_steps_ = 1, inner_done_ = 0, outer_steps_ = 0;
    std::unique_ptr<plexus::CommScheme> comm_;
    std::vector<torch::Tensor> anchor_;
    std::vector<Fragment> fragments_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "diloco";
    d.kind = plexus::PluginKind::Strategy;
    d.version = "1.0";
    d.summary =
        "DiLoCo / local SGD: inner steps without communication, then an outer step on the averaged pseudo-gradient";
    d.schema = {{"inner_steps", 50, "inner optimizer steps between synchronizations (H)"},
                {"fragments", 1,
                 "streaming DiLoCo: synchronize the parameters in this many fragments, one every H / fragments "
                 "inner steps (1: all at once)"}};
    // `plexus check`: an outer optimizer, and a synchronization inside its 5 steps.
    // Its outer optimizer has a section of its own, which the host accepts because it is declared here.
    d.extras["sections"] = "outer_optimizer=optimizer";
    d.extras["check.settings"] = "outer_optimizer.name=sgd;strategy.inner_steps=2";
    d.make_strategy = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::unique_ptr<plexus::Strategy> {
        return std::make_unique<Diloco>(cfg, ctx);
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
