// strategies/tensor_parallel: Megatron-style tensor parallelism, optionally data parallel over
// tensor-parallel groups (a dp x tp mesh: ranks [d·tp, (d+1)·tp) form tensor group d).
//
// Every block that publishes a tensor_parallel_plan() has its parameters split over the tensor
// group: column-parallel layers keep their share of output features (q, k, v each split, so a
// rank holds whole heads), row-parallel layers their share of input features. The block calls
// the strategy's enter/exit operators around those layers: one all-reduce of activations per
// row-parallel layer in forward (exit) and one of gradients per column-parallel input in
// backward (enter). Blocks without a plan (embedding, head) are replicated. The ranks of a
// tensor group read the same batch; gradients are then averaged over the data-parallel group.
// With sequence_parallel, activations between the parallel layers (norms, residuals) are split
// along the sequence: enter all-gathers it and exit reduce-scatters it (same bytes as the
// all-reduce, 1/tp of the activation memory), and the partial gradients of the parameters
// applied to a part of the sequence are summed over the tensor group.
// Overlap, each with a switch for ablations: in backward, a column-parallel input's gradient is
// all-reduced while the weights' gradients are computed (overlap_tensor_comm, blocks that use
// column_parallel_linear); the data-parallel mean runs bucket by bucket as backward fills them
// (overlap_grad_reduce, plexus/kit/grad_buckets.hpp). The forward all-reduces stay exposed: the
// next layer needs their result.
#include <algorithm>

#include <plexus/kit/blocks.hpp>
#include <plexus/kit/grad_buckets.hpp>
#include <plexus/plexus.hpp>
#include <plexus/kit/util.hpp>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;
using Rule = plexus::TensorParallelRule;

plexus::Transport* transport_of(AutogradContext* ctx) {
    return reinterpret_cast<plexus::Transport*>(ctx->saved_data["transport"].toInt());
}

// Megatron's f: identity forward, all-reduce of the gradient backward.
struct CopyToGroup : torch::autograd::Function<CopyToGroup> {
    static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t transport) {
        ctx->saved_data["transport"] = transport;
        return x.clone();
    }
    static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
        auto g = grads[0].contiguous().clone();
        transport_of(ctx)->all_reduce(g, plexus::ReduceOp::Sum)->wait();
        return {g, torch::Tensor()};
    }
};

// Megatron's g: all-reduce forward, identity backward.
struct ReduceFromGroup : torch::autograd::Function<ReduceFromGroup> {
    static torch::Tensor forward(AutogradContext*, const torch::Tensor& x, int64_t transport) {
        auto y = x.contiguous().clone();
        reinterpret_cast<plexus::Transport*>(transport)->all_reduce(y, plexus::ReduceOp::Sum)->wait();
        return y;
    }
    static tensor_list backward(AutogradContext*, tensor_list grads) { return {grads[0], torch::Tensor()}; }
};

// Sequence parallelism moves activations between "split along the sequence" (dim 1, between
// blocks and around norms) and "whole sequence, split features" (inside the parallel layers).
torch::Tensor gather_sequence(plexus::Transport& t, const torch::Tensor& x) {  // [B, T/n, D] -> [B, T, D]
    const int n = t.world_size();
    auto local = x.contiguous();
    auto all = torch::empty({n * local.numel()}, local.options());
    t.all_gather(all, local)->wait();
    auto parts = all.view({n, local.size(0), local.size(1), local.size(2)});
    return parts.permute({1, 0, 2, 3}).reshape({local.size(0), n * local.size(1), local.size(2)});
}
// Sum over the group, [B, T, D] -> [B, T/n, D], started: the result is `out` once `work` is done.
struct Started {
    torch::Tensor out;
    std::shared_ptr<plexus::Work> work;
};
Started start_reduce_scatter_sequence(plexus::Transport& t, const torch::Tensor& x) {
    const int n = t.world_size();
    const auto B = x.size(0), T = x.size(1), D = x.size(2);
    auto by_rank = x.reshape({B, n, T / n, D}).permute({1, 0, 2, 3}).contiguous();
    auto out = torch::empty({B, T / n, D}, x.options());
    auto work = t.reduce_scatter(out, by_rank, plexus::ReduceOp::Sum);
    return {out, work};
}
// Sum over the group, in place on a contiguous copy of `x` (or `x` itself), started.
Started start_all_reduce(plexus::Transport& t, const torch::Tensor& x) {
    auto out = x.contiguous();
    auto work = t.all_reduce(out, plexus::ReduceOp::Sum);
    return {out, work};
}
torch::Tensor reduce_scatter_sequence(plexus::Transport& t, const torch::Tensor& x) {
    auto started = start_reduce_scatter_sequence(t, x);
    started.work->wait();
    return started.out;
}
torch::Tensor own_sequence_part(plexus::Transport& t, const torch::Tensor& x) {
    const auto part = x.size(1) / t.world_size();
    return x.narrow(1, t.rank() * part, part);
}

// f with sequence parallelism: all-gather the sequence forward, reduce-scatter it backward.
struct GatherSequence : torch::autograd::Function<GatherSequence> {
    static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t transport) {
        ctx->saved_data["transport"] = transport;
        return gather_sequence(*reinterpret_cast<plexus::Transport*>(transport), x);
    }
    static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
        return {reduce_scatter_sequence(*transport_of(ctx), grads[0]), torch::Tensor()};
    }
};

// g with sequence parallelism: reduce-scatter the sequence forward, all-gather it backward.
struct ScatterSequence : torch::autograd::Function<ScatterSequence> {
    static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t transport) {
        ctx->saved_data["transport"] = transport;
        return reduce_scatter_sequence(*reinterpret_cast<plexus::Transport*>(transport), x);
    }
    static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
        return {gather_sequence(*transport_of(ctx), grads[0]), torch::Tensor()};
    }
};

// Leaving the parallel blocks: the whole sequence for a block every rank computes alike (the
// head), whose gradient is then the same everywhere: each rank keeps its part of it.
struct GatherForReplicated : torch::autograd::Function<GatherForReplicated> {
    static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t transport) {
        ctx->saved_data["transport"] = transport;
        return gather_sequence(*reinterpret_cast<plexus::Transport*>(transport), x);
    }
    static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
        return {own_sequence_part(*transport_of(ctx), grads[0]).contiguous(), torch::Tensor()};
    }
};

// Column-parallel layers on one input (f, then x W_iᵀ + b_i) in one autograd node, so that
// backward can compute the input's gradient first, start its all-reduce (reduce-scatter with
// sequence parallelism), and compute the weights' gradients while it travels (Megatron-LM's
// asynchronous tensor-parallel all-reduce). Forward is f's, then the matmuls.
struct ColumnLinear : torch::autograd::Function<ColumnLinear> {
    // Weights and biases as TensorLists: so autograd counts each one as an input.
    static tensor_list forward(AutogradContext* ctx, const torch::Tensor& x, at::TensorList weights,
                               at::TensorList biases, int64_t transport, bool sequence_parallel) {
        auto& t = *reinterpret_cast<plexus::Transport*>(transport);
        const auto in = sequence_parallel ? gather_sequence(t, x) : x;
        tensor_list saved{in};
        saved.insert(saved.end(), weights.begin(), weights.end());
        ctx->save_for_backward(saved);
        ctx->saved_data["transport"] = transport;
        ctx->saved_data["sequence_parallel"] = sequence_parallel;
        ctx->saved_data["biases"] = static_cast<int64_t>(biases.size());
        tensor_list out;
        for (size_t i = 0; i < weights.size(); ++i)
            out.push_back(torch::linear(in, weights[i], i < biases.size() ? biases[i] : torch::Tensor()));
        return out;
    }
    static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
        const auto saved = ctx->get_saved_variables();
        const auto& in = saved[0];
        const size_t n = saved.size() - 1;
        auto& t = *transport_of(ctx);
        torch::Tensor grad_in;  // sum of the layers' input gradients, partial over the group
        for (size_t i = 0; i < n; ++i)
            if (grads[i].defined()) {
                auto g = torch::matmul(grads[i], saved[i + 1]);
                grad_in = grad_in.defined() ? grad_in.add_(g) : g;
            }
        if (!grad_in.defined()) grad_in = torch::zeros_like(in);
        const auto started = ctx->saved_data["sequence_parallel"].toBool() ? start_reduce_scatter_sequence(t, grad_in)
                                                                           : start_all_reduce(t, grad_in);
        // While it travels: the weights' (and biases') gradients.
        const auto flat_in = in.reshape({-1, in.size(-1)});
        tensor_list result{torch::Tensor()};
        tensor_list bias_grads;
        const auto biases = static_cast<size_t>(ctx->saved_data["biases"].toInt());
        for (size_t i = 0; i < n; ++i) {
            const auto& w = saved[i + 1];
            if (!grads[i].defined()) {
                result.push_back(torch::zeros_like(w));
                if (i < biases) bias_grads.push_back(torch::Tensor());
                continue;
            }
            const auto g = grads[i].reshape({-1, w.size(0)});
            result.push_back(torch::matmul(g.t(), flat_in));
            if (i < biases) bias_grads.push_back(g.sum(0));
        }
        result.insert(result.end(), bias_grads.begin(), bias_grads.end());
        started.work->wait();
        result[0] = started.out;
        result.push_back(torch::Tensor());  // transport
        result.push_back(torch::Tensor());  // sequence_parallel
        return result;
    }
};

class Ops : public plexus::TensorParallel {
public:
    Ops(std::shared_ptr<plexus::Transport> group, bool sequence_parallel, bool overlap)
        : group_(std::move(group)), sequence_parallel_(sequence_parallel), overlap_(overlap) {}
    int size() const override { return group_->world_size(); }
    torch::Tensor enter(const torch::Tensor& x) override {
        const auto t = reinterpret_cast<int64_t>(group_.get());
        return sequence_parallel_ ? GatherSequence::apply(x, t) : CopyToGroup::apply(x, t);
    }
    torch::Tensor exit(const torch::Tensor& x) override {
        const auto t = reinterpret_cast<int64_t>(group_.get());
        return sequence_parallel_ ? ScatterSequence::apply(x, t) : ReduceFromGroup::apply(x, t);
    }
    std::vector<torch::Tensor> column_linear(const torch::Tensor& x, const std::vector<torch::Tensor>& weights,
                                             const std::vector<torch::Tensor>& biases) override {
        const bool all_biases = std::all_of(biases.begin(), biases.end(), [](const auto& b) { return b.defined(); });
        if (!overlap_ || !all_biases) return TensorParallel::column_linear(x, weights, biases);
        return ColumnLinear::apply(x, at::TensorList(weights), at::TensorList(biases),
                                   reinterpret_cast<int64_t>(group_.get()), sequence_parallel_);
    }

private:
    std::shared_ptr<plexus::Transport> group_;
    bool sequence_parallel_, overlap_;
};

struct Split {  // a parameter this rank holds a part of
    torch::Tensor param;
    std::string name;
    Rule rule;
    std::vector<int64_t> full_shape;
};

class TensorParallelStrategy : public plexus::Strategy {
public:
    TensorParallelStrategy(const plexus::Config& cfg, plexus::RunContext& ctx) : ctx_(ctx) {
        auto& world = ctx.transport();
        const int W = world.world_size(), rank = world.rank();
        tp_ = static_cast<int>(cfg.get_int("tp"));
        if (tp_ == 0) tp_ = W;
        sequence_parallel_ = cfg.get_bool("sequence_parallel");
        overlap_tensor_comm_ = cfg.get_bool("overlap_tensor_comm");
        cfg.require(!sequence_parallel_ || ctx.seq_len() % std::max(tp_, 1) == 0, "sequence_parallel",
                    "needs train.seq_len divisible by tp");
        cfg.require(tp_ >= 1 && W % tp_ == 0, "tp",
                    "must divide the number of ranks (" + std::to_string(W) + "); dp = ranks / tp");
        dp_ = W / tp_;
        cfg.require(cfg.get_int("dp") == 0 || cfg.get_int("dp") == dp_, "dp",
                    "must be ranks / tp = " + std::to_string(dp_) + " (or 0)");
        const int d = rank / tp_, t = rank % tp_;
        std::vector<int> tensor_ranks, data_ranks;
        for (int i = 0; i < tp_; ++i) tensor_ranks.push_back(d * tp_ + i);
        for (int i = 0; i < dp_; ++i) data_ranks.push_back(i * tp_ + t);
        // Every rank creates its tensor group, then its data group: the same order everywhere.
        tensor_ = tp_ == W ? std::shared_ptr<plexus::Transport>(&world, [](plexus::Transport*) {})
                           : world.subgroup(tensor_ranks);
        if (dp_ > 1)
            data_ = tp_ == 1 ? std::shared_ptr<plexus::Transport>(&world, [](plexus::Transport*) {})
                             : world.subgroup(data_ranks);
        model_ = ctx.make_model();
        split_parameters(t);
        for (const auto& p : model_->parameters()) params_.push_back(p);
        optimizer_ = ctx.make_optimizer(described_slots());
        // The mean over data-parallel ranks, bucket by bucket as backward fills them (or after
        // backward, with overlap_grad_reduce off). Sequence parallelism's partial gradients are
        // summed over the tensor group afterwards: the two sums commute.
        if (dp_ > 1)
            grad_buckets_ = std::make_unique<plexus::GradientBuckets>(
                "tensor_parallel", params_, cfg.get_double("bucket_mb"), cfg.get_bool("overlap_grad_reduce"),
                /*require_all=*/false,
                [this](torch::Tensor& flat, int64_t) { return data_->all_reduce(flat, plexus::ReduceOp::Mean); });
        char line[160];
        std::snprintf(line, sizeof line, "tensor_parallel: dp %d x tp %d, %zu parameters split, %zu replicated", dp_,
                      tp_, splits_.size(), params_.size() - splits_.size());
        ctx.log(plexus::LogLevel::Info, line);
    }

    plexus::DataShard data_shard(int rank, int) const override { return {rank / tp_, dp_}; }

    plexus::StepOutput step(const plexus::StepInput& in) override {
        plexus::StepOutput out;
        auto batch = in.train->next();
        model_->train();
        auto logits = run(batch.inputs, static_cast<double>(batch.tokens()), true);
        auto loss = model_->loss(logits, batch.targets);
        loss.backward();
        torch::NoGradGuard no_grad;
        if (grad_buckets_) grad_buckets_->finish();
        std::vector<torch::Tensor> grads;
        for (auto& p : params_) {
            if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
            grads.push_back(p.grad());
        }
        // Sequence parallelism: parameters applied to a part of the sequence (norms and biases of
        // the parallel blocks, the blocks before them) have partial gradients: sum them.
        if (!sum_over_tensor_group_.empty()) {
            std::vector<torch::Tensor> partial;
            for (auto& p : sum_over_tensor_group_) partial.push_back(p.grad());
            plexus::all_reduce_flat(partial, *tensor_, plexus::ReduceOp::Sum);
        }
        // The global norm: split parameters summed over the tensor group, replicated ones once.
        double split_sq = 0, replicated_sq = 0;
        for (size_t i = 0; i < grads.size(); ++i)
            (is_split(params_[i]) ? split_sq : replicated_sq) += plexus::sum_of_squares({grads[i]});
        auto total = torch::tensor({split_sq}, torch::kFloat64);
        if (tp_ > 1) tensor_->all_reduce(total, plexus::ReduceOp::Sum)->wait();
        out.grad_norm = std::sqrt(plexus::value_of(total) + replicated_sq);
        optimizer_->step_scaled(grads, in.lr_scale, plexus::clip_factor(out.grad_norm, in.max_grad_norm));
        ctx_.charge_compute(optimizer_->flops_per_step());
        for (auto& g : grads) g.zero_();
        auto mean_loss = loss.detach().to(torch::kFloat64);
        if (dp_ > 1) data_->all_reduce(mean_loss, plexus::ReduceOp::Mean)->wait();
        out.loss = plexus::value_of(mean_loss);
        // The tensor group shares the batch: each rank accounts for its share of the tokens.
        out.tokens = batch.tokens() / tp_;
        if (state_bytes_ < 0) state_bytes_ = plexus::training_state_bytes(params_, *optimizer_);
        ctx_.record("state_bytes", static_cast<double>(state_bytes_));
        out.micro_batches = 1;
        return out;
    }

    double evaluate(plexus::BatchStream& stream, int64_t batches) override {
        torch::NoGradGuard no_grad;
        model_->eval();
        double total = 0;
        for (int64_t i = 0; i < batches; ++i) {
            auto batch = stream.next();
            total += plexus::value_of(model_->loss(run(batch.inputs, 0, false), batch.targets));
        }
        model_->train();
        return batches > 0 ? total / static_cast<double>(batches) : 0.0;
    }

    // Whole parameters (the split ones gathered over the tensor group: every rank calls this),
    // then this rank's optimizer state.
    // Weights (gathered) and optimizer state are all of it (tests/test_reliability.cpp).
    bool exact_resume() const override { return true; }
    plexus::StateDict state() const override {
        plexus::StateDict out;
        for (const auto& item : model_->named_parameters()) {
            const auto* s = split_of(item.value());
            out.emplace_back("model." + item.key(), s ? unsplit(*s) : item.value().detach().clone());
        }
        for (auto& item : optimizer_->state()) out.emplace_back("optimizer." + item.first, item.second);
        return out;
    }

    void load_state(const plexus::StateDict& state) override {
        torch::NoGradGuard no_grad;
        auto named = model_->named_parameters();
        const int t = ctx_.transport().rank() % tp_;
        for (size_t i = 0; i < named.size(); ++i) {
            const auto* s = split_of(named[i].value());
            named[i].value().copy_(s ? part_of(state.at(i).second, s->rule, t) : state.at(i).second);
        }
        optimizer_->load_state(
            plexus::StateDict(state.begin() + static_cast<std::ptrdiff_t>(named.size()), state.end()));
    }

private:
    // The blocks in order; with sequence parallelism each rank keeps its part of the sequence
    // from the first parallel block on, and the whole sequence is gathered after the last.
    torch::Tensor run(const torch::Tensor& ids, double tokens, bool train) {
        plexus::BlockHooks hooks;
        if (sequence_parallel_ && tp_ > 1 && first_parallel_ >= 0)
            hooks.between = [this](size_t i, const torch::Tensor& x) {
                if (static_cast<int>(i) + 1 == first_parallel_) return own_sequence_part(*tensor_, x);
                if (static_cast<int>(i) == last_parallel_)
                    return GatherForReplicated::apply(x, reinterpret_cast<int64_t>(tensor_.get()));
                return x;
            };
        return plexus::run_blocks(*model_, ids, ctx_, tokens, train, hooks);
    }

    // The rank's part of a whole tensor under a rule (chunks split separately, then joined).
    torch::Tensor part_of(const torch::Tensor& whole, const Rule& rule, int t) const {
        const int64_t dim = rule.split == Rule::Split::Column ? 0 : 1;
        const int64_t n = whole.size(dim), chunk = n / rule.chunks, piece = chunk / tp_;
        std::vector<torch::Tensor> parts;
        for (int64_t c = 0; c < rule.chunks; ++c) parts.push_back(whole.narrow(dim, c * chunk + t * piece, piece));
        return torch::cat(parts, dim).contiguous();
    }

    torch::Tensor unsplit(const Split& s) const {
        const int64_t dim = s.rule.split == Rule::Split::Column ? 0 : 1;
        auto local = s.param.detach().contiguous();
        auto gathered = torch::empty({tp_ * local.numel()}, local.options());
        if (tp_ > 1)
            tensor_->all_gather(gathered, local)->wait();
        else
            gathered.copy_(local.view(-1));
        auto pieces = gathered.view({tp_, local.numel()});
        const int64_t piece = local.size(dim) / s.rule.chunks;
        std::vector<torch::Tensor> ordered;  // chunk-major, then rank
        for (int64_t c = 0; c < s.rule.chunks; ++c)
            for (int r = 0; r < tp_; ++r)
                ordered.push_back(pieces[r].view(local.sizes()).narrow(dim, c * piece, piece));
        return torch::cat(ordered, dim).contiguous();
    }

    void split_parameters(int t) {
        torch::NoGradGuard no_grad;
        auto ops = std::make_shared<Ops>(tensor_, sequence_parallel_ && tp_ > 1, overlap_tensor_comm_);
        const auto& blocks = model_->blocks();
        for (size_t b = 0; b < blocks.size(); ++b) {
            const auto& block = blocks[b];
            const auto plan = block->tensor_parallel_plan();
            if (plan.empty()) continue;
            if (first_parallel_ < 0) first_parallel_ = static_cast<int>(b);
            last_parallel_ = static_cast<int>(b);
            auto named = block->named_parameters();
            for (const auto& rule : plan) {
                if (rule.split == Rule::Split::Replicate) continue;
                auto* found = named.find(rule.parameter);
                if (!found)
                    throw plexus::Error(
                        "block '" + block->block_name() + "' plans to split '" + rule.parameter +
                            "', which it does not have",
                        "the model plugin's tensor_parallel_plan() names its parameters as named_parameters() does");
                auto& p = *found;
                const int64_t dim = rule.split == Rule::Split::Column ? 0 : 1;
                if (p.dim() <= dim || p.size(dim) % (rule.chunks * rule.granule * tp_) != 0)
                    throw plexus::Error("block '" + block->block_name() + "': '" + rule.parameter +
                                            "' cannot be split " + std::to_string(tp_) + " ways along dimension " +
                                            std::to_string(dim),
                                        "pick tp dividing the layer's heads and hidden sizes (whole heads per rank)");
                splits_.push_back({p, block->block_name() + "." + rule.parameter, rule, p.sizes().vec()});
                p.set_data(part_of(p.detach(), rule, t));
            }
            block->set_tensor_parallel(ops);
        }
        if (!sequence_parallel_ || tp_ == 1 || first_parallel_ < 0) return;
        for (int b = 0; b <= last_parallel_; ++b)
            for (const auto& p : blocks[static_cast<size_t>(b)]->parameters())
                if (!is_split(p)) sum_over_tensor_group_.push_back(p);
    }

    // The optimizer's slots, the split parameters described as parts of their whole.
    std::vector<plexus::ParamSlot> described_slots() {
        auto slots = plexus::slots_of(*model_);
        if (tp_ == 1) return slots;  // nothing is split
        for (auto& slot : slots)
            if (const auto* s = split_of(slot.param)) {
                slot.full_shape = s->full_shape;
                slot.split_group = tensor_.get();
            }
        return slots;
    }

    const Split* split_of(const torch::Tensor& p) const {
        for (const auto& s : splits_)
            if (s.param.unsafeGetTensorImpl() == p.unsafeGetTensorImpl()) return &s;
        return nullptr;
    }
    bool is_split(const torch::Tensor& p) const { return split_of(p) != nullptr; }

    plexus::RunContext& ctx_;
    int tp_ = 1, dp_ = 1;
    bool sequence_parallel_ = false, overlap_tensor_comm_ = true;
    int first_parallel_ = -1, last_parallel_ = -1;  // blocks with a tensor-parallel plan
    std::vector<torch::Tensor> sum_over_tensor_group_;
    std::shared_ptr<plexus::Transport> tensor_, data_;
    std::shared_ptr<plexus::Model> model_;
    std::vector<torch::Tensor> params_;
    std::unique_ptr<plexus::GradientBuckets> grad_buckets_;  // with dp > 1
    std::vector<Split> splits_;
    std::unique_ptr<plexus::Optimizer> optimizer_;
    int64_t state_bytes_ = -1;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "tensor_parallel";
    d.kind = plexus::PluginKind::Strategy;
    d.version = "1.0";
    d.summary = "Megatron tensor parallelism (column/row-parallel layers), data parallel over tensor groups";
    d.schema = {
        {"tp", 0, "ranks per tensor-parallel group (0: all); dp = ranks / tp"},
        {"dp", 0, "data-parallel groups, to name the mesh (dp = 2, tp = 2); 0: ranks / tp"},
        {"sequence_parallel", false,
         "split the sequence between the parallel layers (reduce-scatter / all-gather around norms)"},
        {"overlap_tensor_comm", true,
         "in backward, all-reduce (reduce-scatter) a column-parallel input's gradient while the weights' "
         "gradients are computed"},
        {"overlap_grad_reduce", true,
         "with dp > 1: start each bucket's gradient mean over data-parallel ranks as backward fills it "
         "(off: all after backward)"},
        {"bucket_mb", 4.0, "gradient bucket size in MiB for the mean over data-parallel ranks"},
    };
    d.make_strategy = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::unique_ptr<plexus::Strategy> {
        return std::make_unique<TensorParallelStrategy>(cfg, ctx);
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
