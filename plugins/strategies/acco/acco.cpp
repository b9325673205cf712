// strategies/acco: ACCO, "Accumulate while you communicate" (Nabli et al. 2024), and the two
// delayed-update baselines of its ablation, DPU and weight prediction (docs/algorithms/acco.md).
//
// Data parallelism with a ZeRO-1 optimizer on flat buffers: the parameters θ and their gradient
// accumulator G are views of two flat buffers padded to W equal shards; rank r keeps the master
// copy of shard r and the optimizer state for it. A communication round takes a payload B (a
// copy of G) and its micro-batch count, and runs
//     all-reduce of the counts | reduce-scatter (sum) of B | gradient norm | the optimizer on
//     this rank's shard, normalised by the job's count | all-gather of the new parameters into B
// while the compute keeps accumulating micro-batch gradients into G. One harness step is one
// round: at least `accumulate` micro-batches, then more, `accumulate` at a time, until the round
// is over. A slower worker simply contributes fewer micro-batches.
//
//   acco: rounds alternate estimate (even) and update (odd). The estimate round steps the
//         optimizer on the first half-batch only, sends the look-ahead θ̃, and restores the
//         master shard and the optimizer state exactly. The update round commits a step with
//         both halves (the first computed at θ̃, the second at θ). G is zeroed only after an
//         estimate round. The learning rate of an update is read once, at its estimate round.
//   dpu:  every round commits a step with the gradients computed during the previous round,
//         i.e. at the previous parameters (one-step delayed update).
//   wp:   as dpu, but the round also applies the optimizer a second time with the same gradient
//         (state discarded) and the compute goes on at that predicted θ̃.
// `sync_updates` synchronous (not overlapped) updates come first: DPU's warm-up.
//
// Each round runs on a communication thread (RunContext::start_background: on Gloo, its own
// thread moves the bytes and ours runs the shard's optimizer step as soon as the reduce-scatter
// lands; on the simulated cluster, a second activity of the rank with its own clock). With
// comm_thread = false the compute polls the round between micro-batches instead, so each of
// its stages waits for the next check (an ablation). The counts all-reduce also carries the tokens and the loss sum of the previous
// step's micro-batches, so the job's token count and mean loss cost no extra collective; they
// are reported one step late.
#include <plexus/plexus.hpp>
#include <plexus/kit/util.hpp>
#include <plexus/kit/replica.hpp>

namespace {

using plexus::Work;

enum class Algorithm { Acco, Dpu, Wp };
enum class RoundKind { Estimate, Update, UpdateAndPredict };
// How to wait for a pending collective: not at all (poll), blocking the compute (exposed), or
// blocking a communication thread (hidden).
enum class WaitMode { Poll, Exposed, Background };

class Acco : public plexus::ReplicaStrategy {
public:
    Acco(const plexus::Config& cfg, plexus::RunContext& ctx)
        : ReplicaStrategy(ctx, /*make_optimizer=*/false), transport_(ctx.transport()) {
        const auto& name = cfg.get_string("algorithm");
        if (name == "acco")
            algorithm_ = Algorithm::Acco;
        else if (name == "dpu")
            algorithm_ = Algorithm::Dpu;
        else if (name == "wp")
            algorithm_ = Algorithm::Wp;
        else
            cfg.require(false, "algorithm", "must be \"acco\", \"dpu\" or \"wp\" (got \"" + name + "\")");
        accumulate_ = cfg.get_int("accumulate");
        cfg.require(accumulate_ >= 1, "accumulate", "must be >= 1");
        sync_updates_ = cfg.get_int("sync_updates");
        cfg.require(sync_updates_ >= 0, "sync_updates", "must be >= 0");
        use_thread_ = cfg.get_bool("comm_thread");
        world_ = transport_.world_size();
        rank_ = transport_.rank();
        build_buffers();
        if (ctx.token_budget() <= 0)
            ctx.log(plexus::LogLevel::Warning,
                    "acco: rounds consume a varying number of micro-batches; set train.tokens (not train.steps) "
                    "for a token budget and the learning-rate schedule's horizon");
        char line[200];
        std::snprintf(line, sizeof line,
                      "acco: %s, %lld of %lld parameters per rank's shard, accumulate %lld, %lld sync update(s), %s",
                      name.c_str(), static_cast<long long>(shard_), static_cast<long long>(numel_),
                      static_cast<long long>(accumulate_), static_cast<long long>(sync_updates_),
                      use_thread_ ? "communication thread" : "rounds polled between micro-batches");
        ctx.log(plexus::LogLevel::Info, line);
    }

    plexus::StepOutput step(const plexus::StepInput& in) override {
        plexus::StepOutput out;
        if (updates_done_ < sync_updates_)
            synchronous_round(in, out);
        else
            overlapped_round(in, out);
        report(out);
        return out;
    }

    double evaluate(plexus::BatchStream& stream, int64_t batches) override {
        torch::NoGradGuard no_grad;
        if (working_is_committed()) return ReplicaStrategy::evaluate(stream, batches);
        auto working = theta_.clone();
        gather_committed(theta_);
        const double loss = ReplicaStrategy::evaluate(stream, batches);
        theta_.copy_(working);
        return loss;
    }

    // The committed parameters (gathered: every rank must call this), this rank's optimizer
    // state, then what carries over to the next step: the working parameters (θ̃ after an
    // estimate round), G and its count, and the micro-batches the next round reports. A round
    // never outlives its step (step() joins it), so nothing else is in flight between steps.
    plexus::StateDict state() const override {
        auto* self = const_cast<Acco*>(this);
        torch::NoGradGuard no_grad;
        auto committed = theta_.clone();
        if (!working_is_committed()) self->gather_committed(committed);
        plexus::StateDict out;
        auto named = model_->named_parameters();
        for (size_t k = 0; k < params_.size(); ++k)
            out.emplace_back("model." + named[k].key(),
                             committed.narrow(0, offsets_[k], params_[k].numel()).view(params_[k].sizes()).clone());
        for (auto& item : optimizer_->state()) out.emplace_back("optimizer." + item.first, item.second);
        out.emplace_back("acco.working", theta_.clone());
        out.emplace_back("acco.accumulator", grad_.clone());
        out.emplace_back("acco.counters", torch::tensor({rounds_, updates_done_, n_loc_, int64_t{primed_ ? 1 : 0},
                                                         static_cast<int64_t>(last_kind_)},
                                                        torch::kInt64));
        out.emplace_back("acco.report",
                         torch::tensor({static_cast<double>(report_tokens_), static_cast<double>(report_batches_),
                                        report_loss_, update_lr_scale_},
                                       torch::kFloat64));
        return out;
    }
    bool exact_resume() const override { return true; }

    void load_state(const plexus::StateDict& state) override {
        torch::NoGradGuard no_grad;
        const size_t n = params_.size(), m = optimizer_->state().size();
        if (state.size() != n + m + 4)
            throw plexus::Error("acco: the state has " + std::to_string(state.size()) + " tensors, expected " +
                                    std::to_string(n + m + 4),
                                "the state comes from another strategy or model configuration");
        auto committed = torch::zeros_like(theta_);
        for (size_t k = 0; k < n; ++k)
            committed.narrow(0, offsets_[k], params_[k].numel()).copy_(state[k].second.reshape(-1));
        master_.copy_(committed.narrow(0, rank_ * shard_, shard_));
        optimizer_->load_state(plexus::StateDict(state.begin() + static_cast<std::ptrdiff_t>(n),
                                                 state.begin() + static_cast<std::ptrdiff_t>(n + m)));
        theta_.copy_(state[n + m].second);
        grad_.copy_(state[n + m + 1].second);
        auto counters = state[n + m + 2].second;
        rounds_ = counters[0].item<int64_t>();
        updates_done_ = counters[1].item<int64_t>();
        n_loc_ = counters[2].item<int64_t>();
        primed_ = counters[3].item<int64_t>() != 0;
        last_kind_ = static_cast<RoundKind>(counters[4].item<int64_t>());
        auto report = state[n + m + 3].second;
        report_tokens_ = static_cast<int64_t>(report[0].item<double>());
        report_batches_ = static_cast<int64_t>(report[1].item<double>());
        report_loss_ = report[2].item<double>();
        update_lr_scale_ = report[3].item<double>();
    }

private:
    // --- buffers ---------------------------------------------------------------------------

    void build_buffers() {
        torch::NoGradGuard no_grad;
        std::vector<int64_t> numels;
        for (const auto& p : params_) {
            offsets_.push_back(numel_);
            numels.push_back(p.numel());
            numel_ += p.numel();
        }
        shard_ = (numel_ + world_ - 1) / world_;
        theta_ = plexus::flat_copy(params_, world_ * shard_);
        grad_ = torch::zeros_like(theta_);
        buffer_ = torch::zeros_like(theta_);
        grad_shard_ = torch::zeros({shard_}, theta_.options());
        // Every rank starts from rank 0's parameters (they are seeded alike; this makes sure).
        transport_.broadcast(theta_, 0)->wait();
        // The model computes on views of θ and accumulates into views of G (autograd adds into
        // an existing .grad in place).
        plexus::view_parameters(params_, theta_);
        plexus::view_gradients(params_, grad_);
        master_ = theta_.narrow(0, rank_ * shard_, shard_).clone();
        // One optimizer slot per piece of a parameter inside this rank's shard, so that
        // per-parameter rules (no weight decay on vectors) still apply.
        auto named = model_->named_parameters();
        std::vector<plexus::ParamSlot> slots;
        for (const auto& piece : plexus::pieces_in(offsets_, numels, rank_ * shard_, (rank_ + 1) * shard_)) {
            slots.push_back(plexus::piece_slot(piece, named[piece.index].key(), params_[piece.index].sizes().vec(),
                                               master_, transport_));
            grad_pieces_.push_back(grad_shard_.narrow(0, piece.shard_offset, piece.length));
        }
        optimizer_ = ctx_.make_optimizer(std::move(slots));
    }

    // True when the working parameters are the committed ones: not after an estimate round
    // (ACCO) or a round that predicts (WP), whose gathered parameters are look-aheads.
    bool working_is_committed() const { return last_kind_ == RoundKind::Update; }

    // The committed parameters into `flat`: every rank's master shard, gathered.
    void gather_committed(torch::Tensor& flat) { transport_.all_gather(flat, master_.clone())->wait(); }

    // --- rounds ----------------------------------------------------------------------------

    struct Round {
        RoundKind kind = RoundKind::Update;
        double lr_scale = 1, max_grad_norm = 0;
        // [micro-batches in the payload, and of the previous step's micro-batches: tokens, loss sum, count]
        torch::Tensor counts;
        torch::Tensor norm;  // the gradient's squared norm, summed over ranks
        torch::Tensor send;  // this rank's new shard, all-gathered into the buffer
        std::shared_ptr<Work> count_work, reduce_work, norm_work, gather_work;
        int stage = -1;  // -1: not issued, 0: reducing, 1: norm, 2: gathering, 3: done
        double grad_norm = -1;
    };

    // Prepares a round over B (the payload) and the counts; advance_round issues it.
    void start_round(RoundKind kind, double lr_scale, double max_grad_norm) {
        round_ = Round{};
        round_.kind = kind;
        round_.lr_scale = lr_scale;
        round_.max_grad_norm = max_grad_norm;
        round_.counts = torch::tensor({static_cast<double>(n_round_), static_cast<double>(report_tokens_), report_loss_,
                                       static_cast<double>(report_batches_)},
                                      torch::TensorOptions().dtype(torch::kFloat64).device(theta_.device()));
        reported_own_tokens_ = report_tokens_;
        report_tokens_ = report_batches_ = 0;
        report_loss_ = 0;
    }

    // Whether `work` is complete (waiting for it as `mode` says); a completed work is dropped.
    static bool ready(std::shared_ptr<Work>& work, WaitMode mode) {
        if (!work) return true;
        if (mode == WaitMode::Poll && !work->is_completed()) return false;
        if (mode == WaitMode::Background)
            work->wait_in_background();
        else
            work->wait();
        work.reset();
        return true;
    }

    // Moves the round on as far as `mode` allows; true when it is over.
    bool advance_round(WaitMode mode) {
        torch::NoGradGuard no_grad;
        auto& r = round_;
        if (r.stage == -1) {  // issued by whoever drives the round, at its time
            r.count_work = transport_.all_reduce(r.counts, plexus::ReduceOp::Sum);
            r.reduce_work = transport_.reduce_scatter(grad_shard_, buffer_, plexus::ReduceOp::Sum);
            r.stage = 0;
        }
        if (r.stage == 0) {
            if (!ready(r.count_work, mode) || !ready(r.reduce_work, mode)) return false;
            payload_count_ = plexus::value_of(r.counts[0]);
            if (!std::isfinite(payload_count_))
                payload_count_ = static_cast<double>(n_round_ * world_);  // meta numerics
            grad_shard_.div_(payload_count_);  // the mean over every micro-batch of the job (pitfall 3)
            r.norm = torch::tensor({plexus::sum_of_squares(grad_pieces_)}, r.counts.options());
            r.norm_work = transport_.all_reduce(r.norm, plexus::ReduceOp::Sum);
            r.stage = 1;
        }
        if (r.stage == 1) {
            if (!ready(r.norm_work, mode)) return false;
            r.grad_norm = std::sqrt(plexus::value_of(r.norm));
            step_shard(r);
            r.gather_work = transport_.all_gather(buffer_, r.send);
            r.stage = 2;
        }
        if (r.stage == 2) {
            if (!ready(r.gather_work, mode)) return false;
            r.stage = 3;
        }
        return true;
    }

    // The optimizer on this rank's shard; what the round sends goes to r.send.
    void step_shard(Round& r) {
        plexus::clip_to_norm(grad_pieces_, r.grad_norm, r.max_grad_norm);
        if (r.kind == RoundKind::Estimate) {
            r.send = look_ahead(r.lr_scale);
        } else {
            optimizer_->step(grad_pieces_, r.lr_scale);
            // WP: θ̃ = Opt(θ_{t+1}; the same gradient), discarded.
            r.send = r.kind == RoundKind::UpdateAndPredict ? look_ahead(r.lr_scale) : master_.clone();
        }
        // Charged to whoever runs the round: the communication thread's own clock when simulated.
        const int steps = r.kind == RoundKind::UpdateAndPredict ? 2 : 1;
        ctx_.charge_compute(steps * optimizer_->flops_per_step());
    }

    // One step whose result is sent but not kept: the master shard and the optimizer state
    // (moments, step counter) come back exactly as they were.
    torch::Tensor look_ahead(double lr_scale) {
        auto saved_state = optimizer_->state();
        auto saved_master = master_.clone();
        optimizer_->step(grad_pieces_, lr_scale);
        auto ahead = master_.clone();
        master_.copy_(saved_master);
        optimizer_->load_state(saved_state);
        return ahead;
    }

    // The round runs in the background: on a communication thread (RunContext::start_background),
    // or polled by the compute between micro-batches.
    void launch_round() {
        if (use_thread_)
            comm_task_ = ctx_.start_background([this] { advance_round(WaitMode::Background); });
        else
            advance_round(WaitMode::Poll);  // issues it
    }
    bool round_over() { return use_thread_ ? comm_task_->done() : advance_round(WaitMode::Poll); }
    void finish_round() {
        if (use_thread_) {
            auto task = std::move(comm_task_);
            task->join();
        } else {
            advance_round(WaitMode::Exposed);
        }
    }

    // One micro-batch at the working parameters, added into G.
    void micro_batch(const plexus::StepInput& in, plexus::StepOutput& out) {
        const int64_t tokens_before = out.tokens;
        auto loss = forward_backward(*in.train, 1, out);
        report_loss_ += plexus::value_of(loss);
        report_tokens_ += out.tokens - tokens_before;
        ++report_batches_;
        ++n_loc_;
    }

    // Copies the payload: B <- G and its count.
    void load_payload(bool zero_accumulator) {
        torch::NoGradGuard no_grad;
        buffer_.copy_(grad_);
        n_round_ = n_loc_;
        if (zero_accumulator) {
            grad_.zero_();
            n_loc_ = 0;
        }
    }

    // A synchronous update (warm-up): compute, then communicate while the compute waits.
    void synchronous_round(const plexus::StepInput& in, plexus::StepOutput& out) {
        for (int64_t i = 0; i < accumulate_; ++i) micro_batch(in, out);
        load_payload(/*zero_accumulator=*/true);
        start_round(RoundKind::Update, in.lr_scale, in.max_grad_norm);
        advance_round(WaitMode::Exposed);
        end_round(RoundKind::Update);
    }

    void overlapped_round(const plexus::StepInput& in, plexus::StepOutput& out) {
        if (!primed_) {
            // θ̃_0 = θ_0: one micro-batch at θ_0 is the first payload (and stays in G: it is
            // also part of the first update's first half).
            micro_batch(in, out);
            primed_ = true;
        }
        RoundKind kind = RoundKind::Update;
        bool zero = true;
        if (algorithm_ == Algorithm::Acco) {
            const bool estimate = (rounds_ - sync_updates_) % 2 == 0;
            kind = estimate ? RoundKind::Estimate : RoundKind::Update;
            zero = !estimate;  // after an estimate round G starts afresh; after an update it is kept (pitfall 2)
            if (estimate) update_lr_scale_ = in.lr_scale;  // the update this estimate predicts uses the same rate
        } else if (algorithm_ == Algorithm::Wp) {
            kind = RoundKind::UpdateAndPredict;
        }
        load_payload(zero);
        start_round(kind, algorithm_ == Algorithm::Acco ? update_lr_scale_ : in.lr_scale, in.max_grad_norm);
        launch_round();
        do {
            for (int64_t i = 0; i < accumulate_; ++i) micro_batch(in, out);
        } while (!round_over());
        finish_round();
        end_round(kind);
    }

    // The barrier: the compute goes on at the parameters the round gathered.
    void end_round(RoundKind kind) {
        torch::NoGradGuard no_grad;
        theta_.copy_(buffer_);
        ++rounds_;
        if (kind != RoundKind::Estimate) ++updates_done_;
        last_kind_ = kind;
        // The job's counts: the round's payload, and the micro-batches it reported (the
        // previous step's). Each micro-batch enters one update: an update's payload is what
        // its own round and the estimate round before it reported.
        ctx_.record("acco/round_micro_batches", payload_count_);
        ctx_.record("acco/reported_micro_batches", plexus::value_of(round_.counts[3]));
        ctx_.record("acco/round_is_update", kind == RoundKind::Estimate ? 0 : 1);
    }

    // What the step reports: the previous step's job-wide tokens and mean loss (carried by this
    // round's count all-reduce), and this rank's own micro-batches.
    void report(plexus::StepOutput& out) {
        const double job_tokens = plexus::value_of(round_.counts[1]);
        if (std::isfinite(job_tokens)) {
            out.job_tokens = static_cast<int64_t>(job_tokens);
            const double job_batches = plexus::value_of(round_.counts[3]);
            out.loss = job_batches > 0 ? plexus::value_of(round_.counts[2]) / job_batches : NAN;
        } else {  // meta numerics: no values; every rank is assumed alike
            out.job_tokens = reported_own_tokens_ * world_;
            out.loss = NAN;
        }
        out.grad_norm = round_.grad_norm;
        out.optimizer_stepped = last_kind_ != RoundKind::Estimate;
        if (state_bytes_ < 0) {  // θ, G, B, the master shard and its gradient, the optimizer state
            state_bytes_ = (theta_.numel() + grad_.numel() + buffer_.numel() + 2 * master_.numel()) *
                           static_cast<int64_t>(theta_.element_size());
            for (const auto& [key, t] : optimizer_->state())
                state_bytes_ += t.numel() * static_cast<int64_t>(t.element_size());
        }
        ctx_.record("state_bytes", static_cast<double>(state_bytes_));
    }

    plexus::Transport& transport_;
    Algorithm algorithm_ = Algorithm::Acco;
    int64_t accumulate_ = 1, sync_updates_ = 0;
    bool use_thread_ = true;
    int world_ = 1, rank_ = 0;
    int64_t numel_ = 0, shard_ = 0;
    std::vector<int64_t> offsets_;
    torch::Tensor theta_, grad_, buffer_;  // W * shard each: parameters, accumulator, payload
    torch::Tensor master_, grad_shard_;    // this rank's shard: master parameters, mean gradient
    std::vector<torch::Tensor> grad_pieces_;
    Round round_;
    std::unique_ptr<plexus::BackgroundTask> comm_task_;
    bool primed_ = false;
    int64_t rounds_ = 0, updates_done_ = 0;
    RoundKind last_kind_ = RoundKind::Update;
    int64_t n_loc_ = 0, n_round_ = 0;
    double payload_count_ = 0;
    double update_lr_scale_ = 1;
    // The micro-batches computed since the last count all-reduce, reported by the next.
    int64_t report_tokens_ = 0, report_batches_ = 0;
    double report_loss_ = 0;
    int64_t reported_own_tokens_ = 0;
    int64_t state_bytes_ = -1;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "acco";
    d.kind = plexus::PluginKind::Strategy;
    d.version = "1.0";
    d.summary =
        "ACCO: ZeRO-1 rounds overlapped with gradient accumulation, estimate/update rounds; DPU and WP baselines";
    d.schema = {
        plexus::ConfigKey("algorithm", "acco",
                          "acco (estimate and update rounds), dpu (one-step delayed update), wp (weight prediction)")
            .one_of({"acco", "dpu", "wp"}),
        {"accumulate", 1, "micro-batches computed between two checks of the round; at least this many per round"},
        {"sync_updates", 0, "synchronous (not overlapped) updates first: DPU's warm-up"},
        {"comm_thread", true,
         "run each round on a communication thread; false: the compute polls it between micro-batches"},
    };
    d.make_strategy = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::unique_ptr<plexus::Strategy> {
        return std::make_unique<Acco>(cfg, ctx);
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
