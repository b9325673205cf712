// strategies/petra: model parallelism with forward and backward fully decoupled (PETRA,
// docs/algorithms/petra.md), and the delayed-gradient baselines it is compared with.
//
// The model's blocks are cut into J contiguous stages, one per rank. One step is one tick: stage
// j forwards micro-batch t - j and back-propagates micro-batch t - 2(J-1) + j, so every stage
// works on two micro-batches at every tick and there is no bubble once the pipe is full. A
// micro-batch's backward reaches stage j 2(J-1-j) ticks after its forward did; the last stage
// runs forward and backward at once and sends its exact input back. Each stage accumulates k
// backward passes, then steps its own optimizer on their mean. What a stage keeps between a
// micro-batch's forward and its backward is the method:
//   petra             nothing on reversible blocks: the backward reconstructs a block's input
//                     from its output with the current weights (Block::reverse) and sends the
//                     reconstructed input down with the gradient; a non-reversible block keeps its
//                     input (the embedding: token ids) and recomputes, which restarts the chain
//                     from an exact input.
//   delayed_recompute every stage keeps its input and recomputes the forward at the current
//                     weights in backward (DSP; checkpointing).
//   delayed           every stage keeps the forward's graph (its activations), as PipeDream does;
//                     the backward runs through it with the current weights (no weight stash).
//   delayed_stash     PipeDream's weight stashing: the gradient is taken at the weights the
//                     forward used. The stage keeps its input and a copy of its weights, and
//                     recomputes the forward with that copy in backward (PipeDream keeps the
//                     activations instead: the same gradient, other memory and FLOPs); the
//                     gradient is applied to the current weights.
// synchronous = true: one micro-batch at a time goes down and back up before the next (no delay;
// with petra, reversible backprop: ordinary backprop with reconstructed activations).
//
// Every tick the stages add their figures into one small all-reduce on the measurement
// transport, so rank 0 records them per stage: petra/stage<j>/delay_ticks (forward to backward
// of the micro-batch back-propagated), delay_updates (this stage's optimizer steps in between),
// stored_activation_bytes (what the stage keeps for its in-flight micro-batches), fifo_length
// (the in-flight micro-batches it keeps tensors for), in_flight (forwarded, not yet
// back-propagated), reconstruction_error (every check_every micro-batches: |x~ - x| / |x| of the
// stage's input), bubble (the share of the tick not spent computing), grad_norm (at its steps).
#include <plexus/kit/blocks.hpp>
#include <plexus/plexus.hpp>
#include <plexus/kit/util.hpp>

#include <deque>
#include <limits>
#include <map>

namespace {

enum class Method { Petra, DelayedRecompute, Delayed, DelayedStash };

constexpr int64_t kNever = std::numeric_limits<int64_t>::max();
constexpr int kMigrationTags = 1 << 28;  // message ids of re-balancing (3 m + 2, as evaluation's)

// Per-stage figures of one tick, summed over stages into rank 0's view (-1: none this tick).
enum Field {
    DelayTicks,
    DelayUpdates,
    StoredBytes,
    FifoLength,
    InFlight,
    ReconstructionError,
    Bubble,
    GradNorm,
    kFields
};
const char* kFieldNames[] = {"delay_ticks", "delay_updates", "stored_activation_bytes",
                             "fifo_length", "in_flight",     "reconstruction_error",
                             "bubble",      "grad_norm"};

class Petra : public plexus::Strategy {
public:
    Petra(const plexus::Config& cfg, plexus::RunContext& ctx)
        : ctx_(ctx), world_(ctx.transport()), J_(world_.world_size()), j_(world_.rank()) {
        const std::string method = cfg.get_string("method");
        const std::map<std::string, Method> methods = {{"petra", Method::Petra},
                                                       {"delayed_recompute", Method::DelayedRecompute},
                                                       {"delayed", Method::Delayed},
                                                       {"delayed_stash", Method::DelayedStash}};
        cfg.require(methods.count(method) == 1, "method",
                    "must be \"petra\", \"delayed_recompute\", \"delayed\" or \"delayed_stash\"");
        method_ = methods.at(method);
        synchronous_ = cfg.get_bool("synchronous");
        k_ = cfg.get_int("accumulate");
        cfg.require(k_ >= 1, "accumulate", "must be >= 1");
        check_every_ = cfg.get_int("check_every");
        cfg.require(check_every_ >= 0, "check_every", "must be >= 0 (0: never)");
        const std::string partition = cfg.get_string("partition");
        cfg.require(partition == "count" || partition == "flops" || partition == "measured", "partition",
                    "must be count, flops or measured");
        rebalance_every_ = cfg.get_int("rebalance_every");
        cfg.require(rebalance_every_ >= 0 && rebalance_every_ % k_ == 0, "rebalance_every",
                    "must be >= 0 (0: never) and a multiple of accumulate (" + std::to_string(k_) + ")");
        end_mb_ = rebalance_every_ > 0 ? rebalance_every_ : kNever;

        model_ = ctx.make_model();
        const auto& blocks = model_->blocks();
        record_shapes();
        placement_ = std::make_unique<plexus::StagePlacement>(*model_, plexus::balance_stages(costs(partition)), j_);
        std::string cut;
        for (int s = 0; s < J_; ++s) {
            const auto& b = placement_->bounds();
            cut += (s ? " | " : "") + std::to_string(b[s]) + ".." + std::to_string(b[s + 1] - 1);
            ctx.record("petra/stage" + std::to_string(s) + "/first_block", b[s]);
        }
        int reversible = 0;
        for (size_t b = placement_->first_block(); b < placement_->last_block(); ++b)
            reversible += blocks[b]->invertible();
        ctx.log(plexus::LogLevel::Info, "petra: " + method + (synchronous_ ? " (synchronous)" : "") + ", " +
                                            std::to_string(J_) + " stages, k = " + std::to_string(k_) +
                                            ", blocks by stage (" + partition + "): " + cut);
        if (method_ == Method::Petra && j_ < J_ - 1 &&
            reversible < static_cast<int>(placement_->last_block() - placement_->first_block()) && j_ > 0)
            ctx.log(plexus::LogLevel::Warning, "petra: stage " + std::to_string(j_) +
                                                   " has blocks that are not reversible: they keep their inputs");
        for (size_t b = placement_->first_block(); b < placement_->last_block(); ++b) make_optimizer(b);
    }

    // A tick's messages are received at the next tick: after the last one, each stage has one
    // from each neighbour still on the way. Gloo does not complete a send nobody receives (and
    // its process group waits for it at exit), so they are received here.
    ~Petra() override {
        if (!between_ticks_ || tick_ == 0) return;
        try {
            receive_next_messages();
            for (auto& w : previous_sends_) w->wait();
        } catch (const std::exception& e) {
            ctx_.log(plexus::LogLevel::Warning, std::string("petra: could not receive the last messages: ") + e.what());
        }
    }

    // Every stage reads the same batches: the first its inputs, the last its targets.
    plexus::DataShard data_shard(int, int) const override { return {0, 1}; }

    plexus::StepOutput step(const plexus::StepInput& in) override {
        plexus::StepOutput out;
        lr_scale_ = in.lr_scale;
        max_grad_norm_ = in.max_grad_norm;
        // One tick, or as many as it takes for the last stage to have a loss to report: the
        // first step fills the pipe, a re-balancing drains it and fills it again.
        torch::Tensor stats;
        double loss = 0;
        int losses = 0;
        bool stepped = false;
        while (losses == 0) {
            stats = run_tick(*in.train, out);
            if (plexus::value_of(stats[1]) > 0) loss += plexus::value_of(stats[0]), ++losses;
            stepped = stepped || plexus::value_of(stats[2]) > 0;
        }
        record_stages(stats);
        out.loss = losses ? loss / losses : NAN;
        out.optimizer_stepped = stepped;  // the stages step at different ticks: norms are per stage
        return out;
    }

    double evaluate(plexus::BatchStream& stream, int64_t batches) override {
        torch::NoGradGuard no_grad;
        model_->eval();
        double sum = 0;
        int64_t count = 0;
        for (int64_t i = 0; i < batches; ++i, ++count) {
            auto batch = stream.next();
            torch::Tensor x = batch.inputs;
            // Apart from training's tags (3t, 3t + 1); each evaluation receives all it sends before
            // the next, so its tags restart and evaluating changes no state (`plexus check`).
            const int tag = 3 * static_cast<int>(i) + 2;
            if (j_ > 0) {
                x = torch::empty(input_shape(batch.inputs), options_);
                world_.recv(x, j_ - 1, tag)->wait();
            }
            auto y = forward_blocks(x, false);
            if (j_ < J_ - 1)
                world_.send(y, j_ + 1, tag)->wait();
            else
                sum += plexus::value_of(model_->loss(y, batch.targets));
        }
        auto total = torch::tensor({sum}, torch::kFloat64);
        world_.broadcast(total, J_ - 1)->wait();
        model_->train();
        return count ? plexus::value_of(total) / static_cast<double>(count) : 0.0;
    }

    // Between two ticks: the whole model's parameters, this stage's optimizers block by block,
    // then what is in flight (petra.*): the stage cut, the counters, the gradients accumulated
    // towards the next step, what the stage keeps of each micro-batch between its forward and
    // its backward, the last stage's targets, and the messages its neighbours sent at the last
    // tick (received here, and used by the next tick as if just received). With method =
    // delayed a kept micro-batch is its forward's graph, which cannot be saved: its input is,
    // and load_state runs that forward again at the checkpoint's weights (not exact).
    plexus::StateDict state() const override {
        const_cast<Petra*>(this)->receive_next_messages();
        plexus::StateDict out = placement_->gather(world_, ctx_.device());
        for (const auto& [b, optimizer] : optimizers_)
            for (auto& item : optimizer->state())
                out.emplace_back("optimizer." + model_->blocks()[b]->block_name() + "." + item.first, item.second);
        const auto& bounds = placement_->bounds();
        out.emplace_back("petra.bounds",
                         torch::tensor(std::vector<int64_t>(bounds.begin(), bounds.end()), torch::kInt64));
        out.emplace_back("petra.counters", torch::tensor({tick_, backwards_, stepped_at_, optimizer_steps_,
                                                          eval_messages_, rows_, seq_, epoch_tick_, epoch_mb_, end_mb_},
                                                         torch::kInt64));
        // Busy seconds: measured (the re-balancing's speeds), so outside the state hash.
        out.emplace_back("petra.measured.epoch", torch::tensor({epoch_busy_, epoch_flops_}, torch::kFloat64));
        const auto& params = placement_->parameters();
        for (size_t i = 0; i < params.size(); ++i)
            if (params[i].grad().defined())
                out.emplace_back("petra.grad." + std::to_string(i), params[i].grad().clone());
        for (const auto& [f, kept] : kept_) {
            const std::string key = "petra.kept." + std::to_string(f) + ".";
            out.emplace_back(key + "meta", torch::tensor({kept.tick, kept.updates, kept.bytes}, torch::kInt64));
            for (const auto& [block, input] : kept.inputs)
                out.emplace_back(key + "input." + std::to_string(block), input.detach().clone());
            if (kept.graph_input.defined()) out.emplace_back(key + "graph_input", kept.graph_input.detach().clone());
            if (kept.true_input.defined()) out.emplace_back(key + "true_input", kept.true_input.clone());
            for (size_t i = 0; i < kept.weights.size(); ++i)
                out.emplace_back(key + "weights." + std::to_string(i), kept.weights[i].clone());
        }
        for (size_t i = 0; i < targets_.size(); ++i)
            out.emplace_back("petra.target." + std::to_string(i), targets_[i].clone());
        for (const auto& [tag, message] : arrived_)
            out.emplace_back("petra.message." + std::to_string(tag), message.clone());
        return out;
    }
    void load_state(const plexus::StateDict& state) override {
        std::map<std::string, torch::Tensor> mine;  // the petra.* entries, by name, on this stage's device
        for (const auto& [name, t] : state)
            if (name.rfind("petra.", 0) == 0) mine[name.substr(6)] = t.to(options_.device());
        auto entry = [&](const std::string& name) {
            auto it = mine.find(name);
            if (it == mine.end())
                throw plexus::Error("petra: the state has no '" + name + "'",
                                    "the state comes from another strategy configuration");
            return it->second;
        };
        adopt_bounds(entry("bounds"));
        auto at = state.begin() + static_cast<std::ptrdiff_t>(placement_->load(state));
        for (auto& [b, optimizer] : optimizers_) {
            const auto n = static_cast<std::ptrdiff_t>(optimizer->state().size());
            optimizer->load_state(plexus::StateDict(at, at + n));
            at += n;
        }
        const auto c = entry("counters");
        int64_t* counters[] = {&tick_, &backwards_, &stepped_at_, &optimizer_steps_, &eval_messages_,
                               &rows_, &seq_,       &epoch_tick_, &epoch_mb_,        &end_mb_};
        for (int64_t i = 0; i < 10; ++i) *counters[i] = c[i].item<int64_t>();
        epoch_busy_ = entry("measured.epoch")[0].item<double>();
        epoch_flops_ = entry("measured.epoch")[1].item<double>();
        const auto& params = placement_->parameters();
        for (size_t i = 0; i < params.size(); ++i)
            if (mine.count("grad." + std::to_string(i)))
                params[i].mutable_grad() = entry("grad." + std::to_string(i)).clone();
        kept_.clear();
        targets_.clear();
        arrived_.clear();
        for (const auto& [name, t] : mine) {
            const auto dot = name.find('.');
            const std::string kind = name.substr(0, dot), rest = dot == std::string::npos ? "" : name.substr(dot + 1);
            if (kind == "target") {
                targets_.resize(std::max(targets_.size(), std::stoul(rest) + 1));
                targets_[std::stoul(rest)] = t;
            } else if (kind == "message") {
                arrived_[std::stoll(rest)] = t;
            } else if (kind == "kept") {
                auto& kept = kept_[std::stoll(rest)];
                const std::string part = rest.substr(rest.find('.') + 1);
                if (part == "meta") {
                    kept.tick = t[0].item<int64_t>();
                    kept.updates = t[1].item<int64_t>();
                    kept.bytes = t[2].item<int64_t>();
                } else if (part.rfind("input.", 0) == 0) {
                    kept.inputs[std::stoul(part.substr(6))] = t;
                } else if (part == "graph_input") {
                    kept.graph_input = t;
                } else if (part == "true_input") {
                    kept.true_input = t;
                } else if (part.rfind("weights.", 0) == 0) {
                    const size_t i = std::stoul(part.substr(8));
                    kept.weights.resize(std::max(kept.weights.size(), i + 1));
                    kept.weights[i] = t;
                }
            }
        }
        if (method_ == Method::Delayed) rebuild_graphs();
        between_ticks_ = true;
    }
    // Exact except for method = delayed, whose kept forward graphs are run again on resume.
    bool exact_resume() const override { return method_ != Method::Delayed; }

private:
    // What a stage keeps of one micro-batch between its forward and its backward.
    struct Kept {
        int64_t tick = 0, updates = 0;            // when its forward ran, and the optimizer steps by then
        std::map<size_t, torch::Tensor> inputs;   // a block's input (non-reversible blocks, delayed_recompute)
        torch::Tensor graph_input, graph_output;  // delayed: the forward with its graph
        int64_t bytes = 0;                        // what keeping it costs
        torch::Tensor true_input;                 // for the reconstruction check only (not counted)
        std::vector<torch::Tensor> weights;       // delayed_stash: the stage's weights at the forward
    };

    // One tick of this stage. Returns the job's figures, summed over stages: [loss, has loss,
    // stages that stepped their optimizer, then kFields per stage].
    torch::Tensor run_tick(plexus::BatchStream& stream, plexus::StepOutput& out) {
        between_ticks_ = false;
        const double tick_start = ctx_.now();
        busy_ = 0;
        const auto now = schedule(tick_);
        plexus::Batch batch;
        if (now.reads) {  // stage 0 starts a micro-batch: every stage reads it
            batch = stream.next();
            rows_ = batch.inputs.size(0);
            seq_ = batch.inputs.size(1);
            out.tokens += batch.tokens() / J_;  // the stages share the micro-batch
            out.micro_batches += 1;
            if (j_ == J_ - 1) targets_.push_back(batch.targets);
        }
        auto stats = torch::zeros({3 + J_ * kFields}, torch::kFloat64);
        auto mine = stats.narrow(0, 3 + j_ * kFields, kFields);
        mine.fill_(-1.0);

        // Micro-batches this tick: forward of f, backward of b (the last stage does both at once).
        const int64_t f = now.forward, b = now.backward;
        if (f >= 0) {
            const double loss = forward_micro(f, batch.inputs);
            if (j_ == J_ - 1) stats[0] = loss, stats[1] = 1.0;
        }
        if (j_ < J_ - 1 && b >= 0) backward_micro(b, mine);
        if (j_ == J_ - 1 && f >= 0) {
            mine[DelayTicks] = 0.0;
            mine[DelayUpdates] = 0.0;
        }
        if (backwards_ > 0 && backwards_ % k_ == 0 && stepped_at_ != backwards_) {
            stepped_at_ = backwards_;
            mine[GradNorm] = optimizer_step();
            stats[2] = 1.0;
        }
        // Sends of the tick before are received by now or soon; waiting for this tick's would
        // hold this stage until its neighbours start the next tick.
        for (auto& w : previous_sends_) w->wait();
        previous_sends_ = std::move(sends_);
        sends_.clear();

        int64_t stored = 0, fifo = 0;
        for (const auto& item : kept_) {
            stored += item.second.bytes;
            fifo += item.second.bytes != 0;
        }
        mine[StoredBytes] = static_cast<double>(stored);
        mine[FifoLength] = static_cast<double>(fifo);
        mine[InFlight] = static_cast<double>(kept_.size());
        const double tick_time = ctx_.now() - tick_start;
        mine[Bubble] = tick_time > 0 ? std::max(0.0, 1.0 - busy_ / tick_time) : 0.0;
        epoch_busy_ += busy_;
        ctx_.measurement_transport().all_reduce(stats, plexus::ReduceOp::Sum)->wait();
        ++tick_;
        if (now.drained) rebalance();
        between_ticks_ = true;
        return stats;
    }

    // A message for this stage: the one a checkpoint received early, or from the neighbour now.
    torch::Tensor receive(torch::Tensor empty, int from, int64_t tag) {
        auto it = arrived_.find(tag);
        if (it != arrived_.end()) {
            auto message = std::move(it->second);
            arrived_.erase(it);
            return message;
        }
        world_.recv(empty, from, static_cast<int>(tag))->wait();
        return empty;
    }

    // Between ticks, the messages the neighbours sent at the last tick for this stage's next
    // one (a checkpoint holds them; the next tick finds them in arrived_).
    void receive_next_messages() {
        if (synchronous_ || tick_ == 0) return;  // synchronous ticks leave nothing on the way
        const auto next = schedule(tick_);
        std::vector<std::shared_ptr<plexus::Work>> pending;
        if (j_ > 0 && next.forward >= 0 && !arrived_.count(3 * next.forward)) {
            auto& message = arrived_[3 * next.forward] = empty_forward_message();
            pending.push_back(world_.recv(message, j_ - 1, 3 * static_cast<int>(next.forward)));
        }
        if (j_ < J_ - 1 && next.backward >= 0 && !arrived_.count(3 * next.backward + 1)) {
            auto& message = arrived_[3 * next.backward + 1] = empty_backward_message();
            pending.push_back(world_.recv(message, j_ + 1, 3 * static_cast<int>(next.backward) + 1));
        }
        for (auto& w : pending) w->wait();
    }

    // A checkpoint taken after a re-balancing: this stage takes the cut it had then (blocks it
    // gains get storage and an optimizer; blocks it gives up are freed). load_state then fills
    // the parameters and optimizer states.
    void adopt_bounds(const torch::Tensor& saved) {
        std::vector<int> bounds;
        for (int64_t i = 0; i < saved.numel(); ++i) bounds.push_back(static_cast<int>(saved[i].item<int64_t>()));
        if (static_cast<int>(bounds.size()) != J_ + 1)
            throw plexus::Error("petra: the state's stage cut has " + std::to_string(bounds.size() - 1) +
                                    " stages, this run " + std::to_string(J_),
                                "resume with as many ranks as the run had");
        if (bounds == placement_->bounds()) return;
        const auto& blocks = model_->blocks();
        const int first = bounds[static_cast<size_t>(j_)], last = bounds[static_cast<size_t>(j_) + 1];
        for (size_t b = 0; b < blocks.size(); ++b) {
            const bool had = placement_->owns(b), has = static_cast<int>(b) >= first && static_cast<int>(b) < last;
            if (had == has) continue;
            auto params = blocks[b]->parameters();
            for (size_t i = 0; i < params.size(); ++i) {
                params[i].set_data(has ? torch::empty(param_shapes_.at(b)[i], params[i].options())
                                       : torch::empty({0}, params[i].options()));
                params[i].mutable_grad() = torch::Tensor();
            }
            if (has)
                make_optimizer(b);
            else
                optimizers_.erase(b);
        }
        placement_->repartition(bounds);
        for (int s = 0; s < J_; ++s)
            ctx_.record("petra/stage" + std::to_string(s) + "/first_block", bounds[static_cast<size_t>(s)]);
    }

    // method = delayed after a resume: each kept micro-batch's forward again from its input,
    // with its graph (at the checkpoint's weights: the saved graphs were not saved).
    void rebuild_graphs() {
        torch::AutoGradMode grad_on(true);
        const auto& blocks = model_->blocks();
        for (auto& [f, kept] : kept_) {
            if (!kept.graph_input.defined()) continue;
            if (kept.graph_input.is_floating_point()) kept.graph_input = kept.graph_input.detach().requires_grad_(true);
            kept.graph_output = kept.graph_input;
            for (size_t i = placement_->first_block(); i < placement_->last_block(); ++i)
                kept.graph_output = blocks[i]->forward(kept.graph_output);
        }
    }

    // What this stage does at a tick: the micro-batches it forwards and back-propagates (-1:
    // none), whether the stages read a new batch, and whether the epoch is drained after it.
    struct Slot {
        int64_t forward = -1, backward = -1;
        bool reads = false, drained = false;
    };
    Slot schedule(int64_t tick) const {
        const int64_t n = tick - epoch_tick_ + epoch_mb_;  // what stage 0 starts at this tick
        const int64_t f = synchronous_ ? n : n - j_, b = synchronous_ ? n : n - 2 * (J_ - 1) + j_;
        auto valid = [&](int64_t m) { return m >= epoch_mb_ && m < end_mb_ ? m : -1; };
        Slot slot;
        slot.forward = valid(f);
        slot.backward = valid(b);
        slot.reads = n < end_mb_;
        // Stage 0 back-propagates the epoch's last micro-batch at this tick.
        slot.drained = end_mb_ != kNever && n == end_mb_ - 1 + (synchronous_ ? 0 : 2 * (J_ - 1));
        return slot;
    }

    // Block b's optimizer. The delayed method keeps graphs across optimizer steps: the optimizer
    // writes through views autograd does not version, so the graphs stay usable (their weights
    // are current).
    void make_optimizer(size_t b) {
        std::vector<plexus::ParamSlot> slots;
        const auto& block = model_->blocks()[b];
        for (const auto& item : block->named_parameters()) {
            auto param = method_ == Method::Delayed ? item.value().variable_data() : item.value();
            slots.push_back({block->block_name() + "." + item.key(), param, item.value().sizes().vec()});
        }
        optimizers_[b] = ctx_.make_optimizer(std::move(slots));
    }

    void charge(double flops) {
        ctx_.charge_compute(flops);
        epoch_flops_ += flops;
    }

    // At the end of an epoch (nothing in flight, every stage just stepped): each rank's speed
    // this epoch (compute seconds per FLOP) scales the blocks' FLOPs into costs per rank, the
    // stages are cut again, and the blocks that change hands move with their optimizer state.
    void rebalance() {
        epoch_tick_ = tick_;
        epoch_mb_ = end_mb_;
        end_mb_ += rebalance_every_;
        const auto& blocks = model_->blocks();
        auto speeds = torch::empty({J_}, torch::kFloat64);
        world_
            .all_gather(speeds, torch::tensor({epoch_flops_ > 0 ? epoch_busy_ / epoch_flops_ : 0.0}, torch::kFloat64))
            ->wait();
        epoch_busy_ = epoch_flops_ = 0;
        // A stage without FLOPs (the embedding alone) has no measured speed: the others' mean.
        double known = 0;
        int count = 0;
        for (int s = 0; s < J_; ++s)
            if (plexus::value_of(speeds[s]) > 0) known += plexus::value_of(speeds[s]), ++count;
        std::vector<std::vector<double>> cost(static_cast<size_t>(J_), std::vector<double>(blocks.size()));
        for (int s = 0; s < J_; ++s) {
            const double speed = plexus::value_of(speeds[s]) > 0 ? plexus::value_of(speeds[s])
                                 : count                         ? known / count
                                                                 : 1.0;
            for (size_t b = 0; b < blocks.size(); ++b) cost[static_cast<size_t>(s)][b] = speed * block_flops_[b];
        }
        const auto bounds = plexus::balance_stages(cost);
        if (bounds == placement_->bounds()) return;
        const auto old = placement_->bounds();
        auto owner = [](const std::vector<int>& cut, size_t b) {
            int s = 0;
            while (static_cast<int>(b) >= cut[static_cast<size_t>(s) + 1]) ++s;
            return s;
        };
        std::vector<std::shared_ptr<plexus::Work>> sends;
        std::vector<torch::Tensor> sent;  // alive until their sends complete
        for (size_t b = 0; b < blocks.size(); ++b) {
            const int from = owner(old, b), to = owner(bounds, b);
            if (from == to || (j_ != from && j_ != to)) continue;
            int message = kMigrationTags + static_cast<int>(b) * 1024;
            auto tag = [&] { return 3 * message++ + 2; };
            auto params = blocks[b]->parameters();
            if (j_ == from) {
                std::vector<torch::Tensor> messages;
                for (auto& p : params) messages.push_back(p.detach().contiguous());
                for (auto& t : send_state(optimizers_.at(b)->state())) messages.push_back(t);
                for (auto& t : messages) {
                    sends.push_back(world_.send(t, to, tag()));
                    sent.push_back(t);
                }
                for (auto& p : params) {
                    p.set_data(torch::empty({0}, p.options()));
                    p.mutable_grad() = torch::Tensor();
                }
                optimizers_.erase(b);
            } else {
                const auto shapes = param_shapes_.at(b);
                for (size_t i = 0; i < params.size(); ++i) {
                    auto t = torch::empty(shapes[i], params[i].options());
                    world_.recv(t, from, tag())->wait();
                    params[i].set_data(t);
                }
                make_optimizer(b);
                optimizers_.at(b)->load_state(receive_state(from, tag));
            }
        }
        for (auto& w : sends) w->wait();
        placement_->repartition(bounds);
        std::string cut;
        for (int s = 0; s < J_; ++s) {
            cut += (s ? " | " : "") + std::to_string(bounds[s]) + ".." + std::to_string(bounds[s + 1] - 1);
            ctx_.record("petra/stage" + std::to_string(s) + "/first_block", bounds[s]);
        }
        ctx_.log(plexus::LogLevel::Info, "petra: re-balanced at micro-batch " + std::to_string(epoch_mb_) + ": " + cut);
    }

    // An optimizer's state as messages: its size, then each tensor's type and shape, then the
    // tensors (the receiver builds its own optimizer, whose fresh state may be shaped otherwise).
    static std::vector<torch::Tensor> send_state(const plexus::StateDict& state) {
        auto meta = torch::zeros({static_cast<int64_t>(state.size()), 10}, torch::kInt64);
        for (size_t i = 0; i < state.size(); ++i) {
            const auto& t = state[i].second;
            meta[static_cast<int64_t>(i)][0] = static_cast<int64_t>(t.scalar_type());
            meta[static_cast<int64_t>(i)][1] = t.dim();
            for (int64_t d = 0; d < t.dim(); ++d) meta[static_cast<int64_t>(i)][2 + d] = t.size(d);
        }
        std::vector<torch::Tensor> out{torch::tensor({static_cast<int64_t>(state.size())}, torch::kInt64), meta};
        for (const auto& item : state) out.push_back(item.second.contiguous());
        return out;
    }
    template <typename Tag>
    plexus::StateDict receive_state(int from, Tag& tag) {
        auto count = torch::empty({1}, torch::kInt64);
        world_.recv(count, from, tag())->wait();
        auto meta = torch::empty({count.item<int64_t>(), 10}, torch::kInt64);
        world_.recv(meta, from, tag())->wait();
        plexus::StateDict state;
        for (int64_t i = 0; i < meta.size(0); ++i) {
            std::vector<int64_t> shape;
            for (int64_t d = 0; d < meta[i][1].item<int64_t>(); ++d) shape.push_back(meta[i][2 + d].item<int64_t>());
            auto t = torch::empty(shape, options_.dtype(static_cast<torch::ScalarType>(meta[i][0].item<int64_t>())));
            world_.recv(t, from, tag())->wait();
            state.emplace_back(std::to_string(i), t);
        }
        return state;
    }

    // Forward of micro-batch f through this stage; the last stage also runs its backward.
    // Returns the loss on the last stage.
    double forward_micro(int64_t f, const torch::Tensor& ids) {
        torch::Tensor x = ids;
        if (j_ > 0) x = receive(empty_forward_message(), j_ - 1, 3 * f);
        const double t0 = ctx_.now();
        double loss_value = 0;
        if (j_ == J_ - 1) {
            // Forward and backward at once: the input is exact, the delay zero.
            auto input = x.is_floating_point() ? x.detach().requires_grad_(true) : x;
            auto loss = model_->loss(forward_blocks(input, true), targets_.front());
            targets_.pop_front();
            loss_value = plexus::value_of(loss);
            loss.backward();
            charge_backward(placement_->first_block(), placement_->last_block());
            ++backwards_;
            if (j_ > 0) send_down(f, input.detach(), input.grad());
        } else {
            Kept kept;
            kept.tick = tick_;
            kept.updates = optimizer_steps_;
            if (method_ == Method::Petra && check_every_ > 0 && f % check_every_ == 0 && x.is_floating_point())
                kept.true_input = x.clone();  // only PETRA reconstructs
            const int64_t before = ctx_.tensor_bytes();
            torch::Tensor y;
            if (method_ == Method::Delayed) {
                kept.graph_input = x.is_floating_point() ? x.detach().requires_grad_(true) : x;
                y = forward_blocks(kept.graph_input, true);
                kept.graph_output = y;
                // The graph's activations, as the allocator counts them (the output is kept too).
                kept.bytes = before >= 0 ? std::max<int64_t>(0, ctx_.tensor_bytes() - before) : -1;
            } else {
                torch::NoGradGuard no_grad;
                y = forward_blocks(x, true, &kept);
                if (method_ == Method::DelayedStash)
                    for (const auto& p : placement_->parameters()) kept.weights.push_back(p.detach().clone());
                for (const auto& item : kept.inputs) kept.bytes += item.second.numel() * item.second.element_size();
                for (const auto& w : kept.weights) kept.bytes += w.numel() * w.element_size();
            }
            send(y.detach(), j_ + 1, 3 * static_cast<int>(f));
            kept_[f] = std::move(kept);
        }
        busy_ += ctx_.now() - t0;
        return loss_value;
    }

    // Backward of micro-batch b: the gradient of this stage's output (and, for petra, the
    // output itself, reconstructed by the stage above) comes from stage j + 1.
    void backward_micro(int64_t b, torch::Tensor mine) {
        auto it = kept_.find(b);
        if (it == kept_.end())
            throw plexus::Error("petra: stage " + std::to_string(j_) + " has nothing kept for micro-batch " +
                                std::to_string(b));
        Kept kept = std::move(it->second);
        kept_.erase(it);
        const bool with_output = method_ == Method::Petra;
        auto message = receive(empty_backward_message(), j_ + 1, 3 * b + 1);
        const double t0 = ctx_.now();
        const auto first = placement_->first_block(), last = placement_->last_block();
        const auto& blocks = model_->blocks();
        torch::Tensor x, grad;
        if (method_ != Method::Petra) {
            // delayed_stash: the forward's weights in place for the backward, the current ones after.
            const auto current = swap_weights(kept.weights);
            if (method_ != Method::Delayed) {
                // The forward again from the kept input, at the current (or stashed) weights.
                torch::AutoGradMode grad_on(true);
                auto input = kept.inputs.at(first);
                kept.graph_input = input.is_floating_point() ? input.detach().requires_grad_(true) : input;
                kept.graph_output = kept.graph_input;
                for (size_t i = first; i < last; ++i) kept.graph_output = blocks[i]->forward(kept.graph_output);
            }
            kept.graph_output.backward(message);
            swap_weights(current);
            x = kept.graph_input;
            grad = x.is_floating_point() ? x.grad() : torch::Tensor();
        } else {
            torch::Tensor y = with_output ? message[0] : torch::Tensor();
            grad = with_output ? message[1] : message;
            for (size_t i = last; i-- > first;) {
                auto stored = kept.inputs.find(i);
                if (stored == kept.inputs.end()) {
                    std::tie(y, grad) = blocks[i]->reverse(y, grad);  // reconstruct with the current weights
                } else {
                    torch::AutoGradMode grad_on(true);
                    auto input = stored->second.is_floating_point() ? stored->second.detach().requires_grad_(true)
                                                                    : stored->second;
                    torch::autograd::backward({blocks[i]->forward(input)}, {grad});
                    y = input.detach();
                    grad = input.is_floating_point() ? input.grad() : torch::Tensor();
                }
            }
            x = y;
        }
        charge_backward(first, last);
        busy_ += ctx_.now() - t0;
        mine[DelayTicks] = static_cast<double>(tick_ - kept.tick);
        mine[DelayUpdates] = static_cast<double>(optimizer_steps_ - kept.updates);
        if (kept.true_input.defined())
            mine[ReconstructionError] =
                plexus::value_of((x.detach() - kept.true_input).norm() / kept.true_input.norm());
        ++backwards_;
        if (j_ > 0) send_down(b, x.detach(), grad);
    }

    // Copies `weights` (empty: none) into this stage's parameters; returns what they held.
    std::vector<torch::Tensor> swap_weights(const std::vector<torch::Tensor>& weights) {
        std::vector<torch::Tensor> before;
        if (weights.empty()) return before;
        torch::NoGradGuard no_grad;
        const auto& params = placement_->parameters();
        for (size_t i = 0; i < params.size(); ++i) {
            before.push_back(params[i].detach().clone());
            params[i].detach().copy_(weights.at(i));
        }
        return before;
    }

    // Sends the input's gradient down (petra: with the input, for the stage below to invert).
    void send_down(int64_t b, const torch::Tensor& x, const torch::Tensor& grad) {
        send(method_ == Method::Petra ? torch::stack({x, grad}) : grad, j_ - 1, 3 * static_cast<int>(b) + 1);
    }

    void send(const torch::Tensor& t, int to, int tag) { sends_.push_back(world_.send(t.contiguous(), to, tag)); }

    // This stage's blocks on x. Charges the forward FLOPs when training; with `keep`, a
    // non-reversible block's input (or, delayed_recompute, the stage's input) is kept.
    torch::Tensor forward_blocks(torch::Tensor x, bool train, Kept* keep = nullptr) {
        const auto& blocks = model_->blocks();
        for (size_t i = placement_->first_block(); i < placement_->last_block(); ++i) {
            const bool keep_input = method_ == Method::DelayedRecompute || method_ == Method::DelayedStash
                                        ? i == placement_->first_block()
                                        : !blocks[i]->invertible();
            if (keep && keep_input) keep->inputs[i] = x;
            x = blocks[i]->forward(x);
            if (train) charge(block_flops_[i] * static_cast<double>(rows_ * seq_) / 3);
        }
        return x;
    }

    // A backward: a block's backward FLOPs (2/3 of its training FLOPs), plus the forward it
    // recomputes or reconstructs (1/3) except on the last stage, which kept its graph.
    void charge_backward(size_t first, size_t last) {
        const double tokens = static_cast<double>(rows_ * seq_);
        const bool recomputes = j_ < J_ - 1 && method_ != Method::Delayed;
        for (size_t i = first; i < last; ++i) charge(block_flops_[i] * tokens * (recomputes ? 1.0 : 2.0 / 3));
    }

    // The mean of the k accumulated gradients, clipped to the stage's own norm (stages step
    // independently), then the stage's optimizer. Returns the norm before clipping.
    double optimizer_step() {
        torch::NoGradGuard no_grad;
        std::vector<torch::Tensor> grads;
        for (const auto& p : placement_->parameters()) {
            if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
            p.mutable_grad().div_(static_cast<double>(k_));
            grads.push_back(p.grad());
        }
        const double sq = plexus::sum_of_squares(grads);
        const double factor = plexus::clip_factor(std::sqrt(sq), max_grad_norm_);
        for (auto& [b, optimizer] : optimizers_) {
            std::vector<torch::Tensor> block_grads;
            for (const auto& p : model_->blocks()[b]->parameters()) block_grads.push_back(p.grad());
            optimizer->step_scaled(block_grads, lr_scale_, factor);
            ctx_.charge_compute(optimizer->flops_per_step());
        }
        for (auto& g : grads) g.zero_();
        ++optimizer_steps_;
        return std::sqrt(sq);
    }

    void record_stages(const torch::Tensor& stats) {
        for (int s = 0; s < J_; ++s)
            for (int field = 0; field < kFields; ++field) {
                const double v = plexus::value_of(stats[3 + s * kFields + field]);
                if (kFieldNames[field] && v >= 0)
                    ctx_.record("petra/stage" + std::to_string(s) + "/" + kFieldNames[field], v);
            }
    }

    // Cost of each block on each stage's rank: 1, its FLOPs, or its time measured on that rank
    // (so a slower rank gets fewer blocks).
    std::vector<std::vector<double>> costs(const std::string& how) {
        const auto& blocks = model_->blocks();
        std::vector<double> row(blocks.size(), 1.0);
        if (how == "flops") row = block_flops_;
        if (how != "measured") return std::vector<std::vector<double>>(static_cast<size_t>(J_), row);
        const auto n = static_cast<int64_t>(blocks.size());
        auto all = torch::empty({J_ * n}, torch::kFloat64);
        world_.all_gather(all, torch::tensor(plexus::time_blocks(*model_, ctx_), torch::kFloat64))->wait();
        std::vector<std::vector<double>> cost(static_cast<size_t>(J_), row);
        for (int s = 0; s < J_; ++s)
            for (int64_t b = 0; b < n; ++b)
                cost[static_cast<size_t>(s)][static_cast<size_t>(b)] = plexus::value_of(all[s * n + b]);
        return cost;
    }

    // The shape of every block's output on a one-row micro-batch (every rank built the model).
    void record_shapes() {
        torch::NoGradGuard no_grad;
        torch::Tensor x = torch::zeros({1, ctx_.seq_len()}, options_.dtype(torch::kLong));
        for (const auto& b : model_->blocks()) {
            x = b->forward(x);
            output_shapes_.push_back(x.sizes().vec());
            block_flops_.push_back(b->flops_per_token(ctx_.seq_len()));  // from the whole block, before any is freed
            param_shapes_.emplace_back();
            for (const auto& p : b->parameters()) param_shapes_.back().push_back(p.sizes().vec());
        }
    }
    std::vector<int64_t> output_shape(size_t block, int64_t rows, int64_t seq) const {
        auto shape = output_shapes_.at(block);
        shape[0] = rows;
        shape[1] = seq;
        return shape;
    }
    std::vector<int64_t> input_shape(const torch::Tensor& ids) const {
        return output_shape(placement_->first_block() - 1, ids.size(0), ids.size(1));
    }
    // What a training micro-batch's messages to this stage hold: the previous stage's output
    // forward; the gradient of this stage's output backward (petra: stacked under the output).
    torch::Tensor empty_forward_message() const {
        return torch::empty(output_shape(placement_->first_block() - 1, rows_, seq_), options_);
    }
    torch::Tensor empty_backward_message() const {
        auto shape = output_shape(placement_->last_block() - 1, rows_, seq_);
        if (method_ == Method::Petra) shape.insert(shape.begin(), 2);
        return torch::empty(shape, options_);
    }

    plexus::RunContext& ctx_;
    plexus::Transport& world_;
    const int J_, j_;
    Method method_ = Method::Petra;
    bool synchronous_ = false;
    int64_t k_ = 1, check_every_ = 0;
    torch::TensorOptions options_ = torch::TensorOptions().device(ctx_.device());
    std::shared_ptr<plexus::Model> model_;
    std::unique_ptr<plexus::StagePlacement> placement_;
    std::map<size_t, std::unique_ptr<plexus::Optimizer>> optimizers_;  // one per block of this stage
    std::vector<std::vector<int64_t>> output_shapes_;
    std::vector<std::vector<std::vector<int64_t>>> param_shapes_;  // every block's, in order
    std::vector<double> block_flops_;                              // training FLOPs per token of every block
    std::map<int64_t, Kept> kept_;
    std::map<int64_t, torch::Tensor> arrived_;  // messages received before their tick, by tag (checkpoints)
    std::deque<torch::Tensor> targets_;         // the last stage's: micro-batches read but not yet forwarded
    std::vector<std::shared_ptr<plexus::Work>> sends_, previous_sends_;
    int64_t tick_ = 0, backwards_ = 0, stepped_at_ = 0, optimizer_steps_ = 0;
    int64_t eval_messages_ = 0;   // unused since evaluations restart their tags; kept in the checkpoint's layout
    int64_t rows_ = 0, seq_ = 0;  // the micro-batch's shape
    // Epochs of micro-batches between re-balancings: [epoch_mb_, end_mb_), started at epoch_tick_.
    int64_t rebalance_every_ = 0, epoch_tick_ = 0, epoch_mb_ = 0, end_mb_ = kNever;
    double epoch_busy_ = 0, epoch_flops_ = 0;  // this epoch's compute: seconds, and FLOPs charged
    double busy_ = 0, lr_scale_ = 1.0, max_grad_norm_ = 0;
    bool between_ticks_ = false;  // the last tick completed (no tick failed half-way)
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "petra";
    d.kind = plexus::PluginKind::Strategy;
    d.version = "1.0";
    d.summary =
        "PETRA: decoupled forward and backward over stages, reversible reconstruction; delayed-gradient baselines";
    d.schema = {
        {"method", "petra",
         "petra (reconstruct reversible blocks' inputs), delayed_recompute (keep inputs, recompute: DSP), "
         "delayed (keep the forward's activations, as PipeDream) or delayed_stash (PipeDream's weight stashing: "
         "the gradient at the forward's weights)"},
        {"synchronous", false, "one micro-batch at a time through all stages and back (no delay, no overlap)"},
        {"accumulate", 1, "backward passes (micro-batches) per optimizer step of a stage (k); their mean is applied"},
        {"partition", "flops", "cut stages by block count, block FLOPs, or block time measured on each stage's rank"},
        {"check_every", 16, "measure the reconstruction error every this many micro-batches (0: never)"},
        {"rebalance_every", 0,
         "every this many micro-batches, drain the pipe and cut the stages again by each rank's measured speed "
         "(0: never); a multiple of accumulate"},
    };
    // `plexus check`: the reversible model, over two stages.
    d.extras["check.settings"] = "model.name=revgpt";
    d.extras["check.ranks"] = "2";
    d.make_strategy = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::unique_ptr<plexus::Strategy> {
        return std::make_unique<Petra>(cfg, ctx);
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
