// strategies/async_sgd: asynchronous SGD with a parameter server and bounded staleness.
//
// Rank 0 is the server: it holds the parameters and the optimizer and applies every gradient as
// it arrives (Transport::wait_any: first come, first served, in simulated time on the simulated
// cluster). Ranks 1..W-1 are workers: each computes a gradient on its batch at the parameters
// it last received, sends it with their version, and waits for the server's reply (the new
// parameters). A gradient's staleness is the number of updates the server applied since the
// version it was computed at.
//   staleness_bound = tau (stale synchronous parallel): the server holds its reply to a worker
//     that has sent c gradients until every worker has sent at least c - tau; tau = 0 is
//     synchronous SGD (every gradient of a round is taken at the same parameters), tau < 0 is
//     unbounded (fully asynchronous).
//   staleness_lr = "inverse": a gradient of staleness s is scaled by 1 / (1 + s).
// Each gradient is applied divided by the number of workers, so that with tau = 0 a round of
// updates adds up to one step on the workers' mean gradient (exactly, for SGD without momentum).
// One harness step is one gradient per worker; the server's step ends when every worker's
// gradient of that step has been applied and every reply that may be sent has been sent.
// Recorded on the server: async/staleness_mean, async/staleness_max per step (and their
// summaries through the metric rows), async/held_replies.
#include <algorithm>
#include <limits>

#include <plexus/plexus.hpp>
#include <plexus/kit/util.hpp>
#include <plexus/kit/replica.hpp>

namespace {

class AsyncSgd : public plexus::ReplicaStrategy {
public:
    AsyncSgd(const plexus::Config& cfg, plexus::RunContext& ctx) : ReplicaStrategy(ctx), transport_(ctx.transport()) {
        world_ = transport_.world_size();
        rank_ = transport_.rank();
        if (world_ < 2)
            throw plexus::Error("async_sgd needs a server and at least one worker: launch.ranks >= 2 (got " +
                                    std::to_string(world_) + ")",
                                "rank 0 serves the parameters; ranks 1.. compute gradients");
        tau_ = cfg.get_int("staleness_bound");
        const auto& lr = cfg.get_string("staleness_lr");
        cfg.require(lr == "none" || lr == "inverse", "staleness_lr", "must be \"none\" or \"inverse\"");
        inverse_lr_ = lr == "inverse";
        // The parameters and their gradients are views of two flat buffers: what is sent and
        // received goes straight to the model.
        torch::NoGradGuard no_grad;
        flat_ = plexus::flat_copy(params_);
        grad_ = torch::zeros_like(flat_);
        plexus::view_parameters(params_, flat_);
        plexus::view_gradients(params_, grad_);
        transport_.broadcast(flat_, 0)->wait();
        if (rank_ == 0) {
            const int workers = world_ - 1;
            grads_.assign(static_cast<size_t>(workers), torch::Tensor());
            metas_.assign(static_cast<size_t>(workers), torch::Tensor());
            pending_.assign(static_cast<size_t>(workers), nullptr);
            meta_work_.assign(static_cast<size_t>(workers), nullptr);
            received_.assign(static_cast<size_t>(workers), 0);
            held_.assign(static_cast<size_t>(workers), false);
            lost_.assign(static_cast<size_t>(workers), false);
            for (int w = 0; w < workers; ++w) post_receive(w);
        }
        char line[160];
        std::snprintf(line, sizeof line, "async_sgd: server rank 0, %d worker(s), staleness bound %s, staleness lr %s",
                      world_ - 1, tau_ < 0 ? "none" : std::to_string(tau_).c_str(), lr.c_str());
        ctx.log(plexus::LogLevel::Info, line);
    }

    // Workers read shards 0..W-2 of W-1; the server reads none (its stream is not used).
    plexus::DataShard data_shard(int rank, int world) const override {
        return {rank == 0 ? 0 : rank - 1, std::max(1, world - 1)};
    }

    plexus::StepOutput step(const plexus::StepInput& in) override { return rank_ == 0 ? serve(in) : work(in); }

    // At a checkpoint every rank has passed the same step (the harness's collective there lets
    // no worker run ahead), so every gradient sent has been applied and answered: the weights,
    // the server's optimizer and the version counters are all of it.
    plexus::StateDict state() const override {
        auto out = ReplicaStrategy::state();
        std::vector<int64_t> counters{version_, step_};
        counters.insert(counters.end(), received_.begin(), received_.end());
        out.emplace_back("async.counters", torch::tensor(counters, torch::kInt64));
        return out;
    }
    void load_state(const plexus::StateDict& state) override {
        if (state.empty() || state.back().first != "async.counters")
            throw plexus::Error("async_sgd: the state has no counters", "the state comes from another strategy");
        ReplicaStrategy::load_state(plexus::StateDict(state.begin(), state.end() - 1));
        const auto c = state.back().second;
        if (c.numel() != 2 + static_cast<int64_t>(received_.size()))
            throw plexus::Error("async_sgd: the state's counters are for another number of workers",
                                "resume with the same ranks");
        version_ = c[0].item<int64_t>();
        step_ = c[1].item<int64_t>();
        for (size_t w = 0; w < received_.size(); ++w) received_[w] = c[static_cast<int64_t>(2 + w)].item<int64_t>();
    }
    bool exact_resume() const override { return true; }

private:
    // --- worker ---
    plexus::StepOutput work(const plexus::StepInput& in) {
        plexus::StepOutput out;
        auto loss = forward_backward(*in.train, 1, out);
        torch::NoGradGuard no_grad;
        auto meta = torch::tensor({static_cast<double>(version_), plexus::value_of(loss)}, torch::kFloat64);
        auto a = transport_.send(grad_, 0, 0);
        auto b = transport_.send(meta, 0, 1);
        auto reply = torch::zeros({1}, torch::kFloat64);
        transport_.recv(flat_, 0, 2)->wait();
        transport_.recv(reply, 0, 3)->wait();
        a->wait();
        b->wait();
        grad_.zero_();  // sent: the next gradient starts from zero
        version_ = static_cast<int64_t>(reply[0].item<double>());
        out.loss = plexus::value_of(loss);
        out.job_tokens = out.tokens * (world_ - 1);  // one batch per worker per step
        return out;
    }

    // --- server ---
    plexus::StepOutput serve(const plexus::StepInput& in) {
        plexus::StepOutput out;
        const int workers = world_ - 1;
        const int64_t goal = step_ + 1;  // every worker's gradient of this step
        double staleness_sum = 0, staleness_max = 0, loss_sum = 0;
        int64_t applied = 0;
        auto all_reached = [&] {
            for (int w = 0; w < workers; ++w)
                if (received_[static_cast<size_t>(w)] < goal) return false;
            return true;
        };
        while (!all_reached()) {
            // Only workers that may still send are waited for (a held one cannot).
            std::vector<std::shared_ptr<plexus::Work>> works;
            std::vector<int> who;
            for (int w = 0; w < workers; ++w)
                if (!held_[static_cast<size_t>(w)] && !lost_[static_cast<size_t>(w)]) {
                    works.push_back(pending_[static_cast<size_t>(w)]);
                    who.push_back(w);
                }
            if (works.empty())
                throw plexus::Error("async_sgd: every worker is held; the staleness bound cannot be met");
            int w = -1;
            try {
                w = who[transport_.wait_any(works)];
                meta_work_[static_cast<size_t>(w)]->wait();
            } catch (const plexus::PeerLost& lost) {
                drop(lost.rank() - 1, lost.what());  // a lost worker: the others go on
                release();
                continue;
            }
            const auto meta = metas_[static_cast<size_t>(w)];
            const double staleness = static_cast<double>(version_) - meta[0].item<double>();
            staleness_sum += staleness;
            staleness_max = std::max(staleness_max, staleness);
            loss_sum += meta[1].item<double>();
            apply(grads_[static_cast<size_t>(w)], staleness, in);
            ++applied;
            ++received_[static_cast<size_t>(w)];
            held_[static_cast<size_t>(w)] = true;  // until its reply is allowed
            release();
        }
        out.loss = applied > 0 ? loss_sum / static_cast<double>(applied) : NAN;
        // The server consumes no batches; the job one per worker. Lost workers are counted as the
        // job was launched, as the workers count (they do not learn of a loss): every rank must
        // agree on the budget, or they would stop at different steps.
        out.job_tokens = ctx_.batch_size() * ctx_.seq_len() * workers;
        ctx_.record("async/staleness_mean", applied > 0 ? staleness_sum / static_cast<double>(applied) : 0.0);
        ctx_.record("async/staleness_max", staleness_max);
        ctx_.record("async/applied", static_cast<double>(applied));
        int64_t held = 0;
        for (bool h : held_) held += h ? 1 : 0;
        ctx_.record("async/held_replies", static_cast<double>(held));
        ++step_;
        return out;
    }

    void apply(const torch::Tensor& grad, double staleness, const plexus::StepInput& in) {
        torch::NoGradGuard no_grad;
        double scale = 1.0 / static_cast<double>(world_ - 1);
        if (inverse_lr_) scale /= 1.0 + staleness;
        torch::mul_out(grad_, grad, scale);
        plexus::StepOutput ignored;
        update(in, ignored, gradients());
        ++version_;
    }

    // Replies to every held worker the bound lets go (tau < 0: all at once).
    void release() {
        const int workers = world_ - 1;
        int64_t slowest = std::numeric_limits<int64_t>::max();
        for (int w = 0; w < workers; ++w)
            if (!lost_[static_cast<size_t>(w)]) slowest = std::min(slowest, received_[static_cast<size_t>(w)]);
        torch::NoGradGuard no_grad;
        for (int w = 0; w < workers; ++w) {
            if (!held_[static_cast<size_t>(w)] || lost_[static_cast<size_t>(w)]) continue;
            if (tau_ >= 0 && slowest < received_[static_cast<size_t>(w)] - tau_) continue;
            held_[static_cast<size_t>(w)] = false;
            auto reply = torch::tensor({static_cast<double>(version_)}, torch::kFloat64);
            try {
                transport_.send(flat_, w + 1, 2)->wait();
                transport_.send(reply, w + 1, 3)->wait();
            } catch (const plexus::PeerLost& lost) {
                drop(w, lost.what());
                continue;
            }
            post_receive(w);
        }
    }

    // A worker that failed (a [[faults]] kill): no longer waited for, nor counted by the bound.
    void drop(int w, const std::string& why) {
        if (lost_[static_cast<size_t>(w)]) return;
        lost_[static_cast<size_t>(w)] = true;
        received_[static_cast<size_t>(w)] = std::numeric_limits<int64_t>::max() / 2;  // never awaited again
        ctx_.log(plexus::LogLevel::Warning, "async_sgd: worker " + std::to_string(w + 1) + " is lost (" + why +
                                                "); the server goes on with the others");
        if (lost_workers() == world_ - 1) throw plexus::Error("async_sgd: every worker is lost", "");
    }

    int lost_workers() const { return static_cast<int>(std::count(lost_.begin(), lost_.end(), true)); }

    void post_receive(int w) {
        grads_[static_cast<size_t>(w)] = torch::zeros_like(flat_);
        metas_[static_cast<size_t>(w)] = torch::zeros({2}, torch::kFloat64);
        pending_[static_cast<size_t>(w)] = transport_.recv(grads_[static_cast<size_t>(w)], w + 1, 0);
        meta_work_[static_cast<size_t>(w)] = transport_.recv(metas_[static_cast<size_t>(w)], w + 1, 1);
    }

    plexus::Transport& transport_;
    int world_ = 1, rank_ = 0;
    int64_t tau_ = -1;
    bool inverse_lr_ = false;
    torch::Tensor flat_, grad_;  // the parameters and their gradients, flat
    int64_t version_ = 0, step_ = 0;
    std::vector<torch::Tensor> grads_, metas_;
    std::vector<std::shared_ptr<plexus::Work>> pending_, meta_work_;
    std::vector<int64_t> received_;
    std::vector<bool> held_;
    std::vector<bool> lost_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "async_sgd";
    d.kind = plexus::PluginKind::Strategy;
    d.version = "1.0";
    d.summary = "asynchronous SGD: a parameter server (rank 0) applies gradients as they arrive, staleness bounded";
    d.schema = {
        {"staleness_bound", -1,
         "tau: a worker waits while it is more than tau gradients ahead of the slowest; 0 is synchronous; < 0 "
         "unbounded"},
        {"staleness_lr", "none", "none, or inverse: scale a gradient of staleness s by 1 / (1 + s)"},
    };
    d.make_strategy = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::unique_ptr<plexus::Strategy> {
        return std::make_unique<AsyncSgd>(cfg, ctx);
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
