// strategies/zero: data parallelism with sharded training state (ZeRO stages 1-3, FSDP-style).
//
// Every model block is a unit with a flat buffer of its parameters, padded to W equal shards;
// rank r owns shard r of every unit, and the optimizer runs on those shards only (one slot per
// piece of a parameter inside the shard, so per-parameter rules such as "no decay on vectors"
// still apply).
//   stage 1: parameters and the gradient buffer whole on every rank; optimizer state sharded.
//   stage 2: as 1, but a unit's gradient buffer exists only from its backward to the end of its
//            reduce-scatter: each rank keeps just its gradient shard.
//   stage 3: parameters sharded too. A unit is all-gathered before its forward and before its
//            backward and released after each; the next unit's gather is started (prefetch)
//            while the current one computes. Parameters stay views of the unit's flat buffer,
//            whose storage is freed and re-allocated in place (compat::resize_storage_bytes),
//            so what autograd saved in forward finds the re-gathered values in backward.
// Gradients leave from hooks: when a unit's last gradient arrives, its reduce-scatter (mean over
// ranks) starts while backward goes on. After backward: the global gradient norm (clipping),
// the optimizer on the shards, and (stages 1, 2) an all-gather per unit that refreshes the
// parameters. With overlap_gather (the default) those all-gathers run while the next step
// computes: each unit's forward waits for its own, so only the first unit's is exposed.
#include <plexus/kit/blocks.hpp>
#include <plexus/kit/compat.hpp>
#include <plexus/plexus.hpp>
#include <plexus/kit/util.hpp>

#include <map>
#include <set>

namespace {

using plexus::Work;

struct Unit {
    std::shared_ptr<plexus::Block> block;
    std::vector<torch::Tensor> params;
    std::vector<std::string> names;
    std::vector<std::vector<int64_t>> shapes;
    std::vector<int64_t> offsets;           // of each parameter in the flat buffer
    int64_t numel = 0, shard = 0;           // unpadded size; per-rank shard size
    torch::Tensor full;                     // W*shard; stage 3: its storage is empty unless gathered
    torch::Tensor local;                    // this rank's shard (a view into full for stages 1, 2)
    torch::Tensor grad_full;                // W*shard, while gradients are collected
    torch::Tensor grad_shard;               // shard: the mean gradient of this rank's part
    std::vector<plexus::FlatPiece> pieces;  // the parts of parameters inside this rank's shard
    std::shared_ptr<Work> gather, reduce;
    size_t ready = 0;
    bool gathered = false;
};

class Zero : public plexus::Strategy {
public:
    Zero(const plexus::Config& cfg, plexus::RunContext& ctx)
        : ctx_(ctx), transport_(ctx.transport()), stage_(cfg.get_int("stage")), accumulate_(cfg.get_int("accumulate")) {
        cfg.require(stage_ >= 1 && stage_ <= 3, "stage", "must be 1, 2 or 3");
        cfg.require(accumulate_ >= 1, "accumulate", "must be >= 1");
        prefetch_ = cfg.get_bool("prefetch");
        overlap_gather_ = cfg.get_bool("overlap_gather");
        model_ = ctx.make_model();
        world_ = transport_.world_size();
        rank_ = transport_.rank();
        build_units();
        std::vector<plexus::ParamSlot> slots;
        for (auto& u : units_)
            for (const auto& p : u.pieces)
                slots.push_back(plexus::piece_slot(p, u.names[p.index], u.shapes[p.index], u.local, transport_));
        optimizer_ = ctx.make_optimizer(std::move(slots));
        char line[200];
        std::snprintf(line, sizeof line,
                      "zero: stage %lld, %zu units, %lld of %lld parameters per rank (padded), prefetch %s",
                      static_cast<long long>(stage_), units_.size(), static_cast<long long>(shard_total()),
                      static_cast<long long>(numel_total()), prefetch_ ? "on" : "off");
        ctx.log(plexus::LogLevel::Info, line);
    }

    // The last step's all-gathers write into the parameters: they finish before those go.
    ~Zero() override {
        try {
            finish_gathers();
        } catch (const std::exception& e) {
            ctx_.log(plexus::LogLevel::Warning, std::string("zero: the last all-gather failed: ") + e.what());
        }
    }

    plexus::StepOutput step(const plexus::StepInput& in) override {
        plexus::StepOutput out;
        peak_bytes_ = held_bytes();
        torch::Tensor loss_sum;
        for (int64_t i = 0; i < accumulate_; ++i) {
            last_micro_batch_ = i + 1 == accumulate_;
            first_micro_batch_ = i == 0;
            auto batch = in.train->next();
            const double tokens = static_cast<double>(batch.tokens());
            auto loss = forward(batch.inputs, /*train=*/true, tokens);
            loss = model_->loss(loss, batch.targets);
            (accumulate_ > 1 ? loss / static_cast<double>(accumulate_) : loss).backward();
            after_backward();
            loss_sum = i == 0 ? loss.detach() : loss_sum + loss.detach();
            out.tokens += batch.tokens();
            ++out.micro_batches;
        }
        torch::NoGradGuard no_grad;
        std::vector<torch::Tensor> grads;
        for (auto& u : units_) {
            u.reduce->wait();
            u.reduce.reset();
            if (stage_ > 1) u.grad_full = torch::Tensor();  // stage 1 keeps its whole gradient buffer
            for (const auto& p : u.pieces) grads.push_back(u.grad_shard.narrow(0, p.shard_offset, p.length));
        }
        // The global norm (every rank's shards) and the mean loss, in one all-reduce.
        auto totals = torch::stack({torch::tensor(plexus::sum_of_squares(grads), torch::kFloat64),
                                    (loss_sum / static_cast<double>(accumulate_ * world_)).to(torch::kFloat64)});
        transport_.all_reduce(totals, plexus::ReduceOp::Sum)->wait();
        out.grad_norm = std::sqrt(plexus::value_of(totals[0]));
        out.loss = plexus::value_of(totals[1]);
        optimizer_->step_scaled(grads, in.lr_scale, plexus::clip_factor(out.grad_norm, in.max_grad_norm));
        ctx_.charge_compute(optimizer_->flops_per_step());
        if (stage_ < 3) {  // everyone's updated shards make the whole parameters again
            // (a copy of the shard as input: it is also a region of the output)
            for (auto& u : units_) u.gather = transport_.all_gather(u.full, u.local.clone());
            if (!overlap_gather_) finish_gathers();
        }
        if (optimizer_bytes_ < 0) {  // its size is fixed once the first step created it: measure once
            optimizer_bytes_ = 0;
            for (const auto& [name, t] : optimizer_->state())
                optimizer_bytes_ += t.numel() * static_cast<int64_t>(t.element_size());
        }
        sample_memory();
        ctx_.record("state_bytes", static_cast<double>(held_bytes()));
        ctx_.record("state_peak_bytes", static_cast<double>(peak_bytes_));
        return out;
    }

    double evaluate(plexus::BatchStream& stream, int64_t batches) override {
        finish_gathers();
        torch::NoGradGuard no_grad;
        model_->eval();
        double total = 0;
        for (int64_t i = 0; i < batches; ++i) {
            auto batch = stream.next();
            total += plexus::value_of(model_->loss(forward(batch.inputs, false, 0), batch.targets));
        }
        model_->train();
        return batches > 0 ? total / static_cast<double>(batches) : 0.0;
    }

    // The whole parameters (gathered: every rank must call this), then this rank's optimizer shards.
    // Between steps only the parameters' all-gathers can be in flight, and they are finished
    // first: the parameters and this rank's optimizer shard are all of it (tests/test_reliability.cpp).
    bool exact_resume() const override { return true; }
    plexus::StateDict state() const override {
        plexus::StateDict out;
        auto* self = const_cast<Zero*>(this);
        self->finish_gathers();
        for (auto& u : self->units_) {
            torch::Tensor full = stage_ < 3 ? u.full : torch::empty({world_ * u.shard}, u.local.options());
            if (stage_ == 3) transport_.all_gather(full, u.local)->wait();
            for (size_t k = 0; k < u.params.size(); ++k)
                out.emplace_back("model." + u.names[k],
                                 full.narrow(0, u.offsets[k], shape_numel(u.shapes[k])).view(u.shapes[k]).clone());
        }
        for (auto& item : optimizer_->state()) out.emplace_back("optimizer." + item.first, item.second);
        return out;
    }

    void load_state(const plexus::StateDict& state) override {
        finish_gathers();
        torch::NoGradGuard no_grad;
        size_t i = 0;
        for (auto& u : units_)
            for (size_t k = 0; k < u.params.size(); ++k, ++i) {
                auto flat = state.at(i).second.reshape(-1);
                // This rank's part of the parameter, into its shard (and the whole, stages 1-2).
                if (stage_ < 3) u.full.narrow(0, u.offsets[k], flat.numel()).copy_(flat);
                for (const auto& p : u.pieces)
                    if (p.index == k)
                        u.local.narrow(0, p.shard_offset, p.length).copy_(flat.narrow(0, p.tensor_offset, p.length));
            }
        optimizer_->load_state(plexus::StateDict(state.begin() + static_cast<std::ptrdiff_t>(i), state.end()));
    }

private:
    static int64_t shape_numel(const std::vector<int64_t>& s) {
        int64_t n = 1;
        for (auto d : s) n *= d;
        return n;
    }
    int64_t numel_total() const {
        int64_t n = 0;
        for (const auto& u : units_) n += u.numel;
        return n;
    }
    int64_t shard_total() const {
        int64_t n = 0;
        for (const auto& u : units_) n += u.shard;
        return n;
    }
    // What this rank holds now, measured from the storages actually allocated: the units' flat
    // parameter buffers (stage 3: empty unless gathered), shards, gradient buffers and shards,
    // any .grad autograd has filled, and the optimizer state (measured after each step).
    int64_t held_bytes() const {
        int64_t bytes = std::max<int64_t>(optimizer_bytes_, 0);
        for (const auto& u : units_) {
            bytes += static_cast<int64_t>(u.full.storage().nbytes());
            if (stage_ == 3) bytes += static_cast<int64_t>(u.local.storage().nbytes());
            bytes += static_cast<int64_t>(u.grad_shard.storage().nbytes());
            if (u.grad_full.defined()) bytes += static_cast<int64_t>(u.grad_full.storage().nbytes());
            for (const auto& p : u.params)
                if (p.grad().defined()) bytes += p.grad().numel() * static_cast<int64_t>(p.grad().element_size());
        }
        return bytes;
    }
    // Called wherever the figure can grow (a gather, a gradient buffer, a .grad).
    void sample_memory() { peak_bytes_ = std::max(peak_bytes_, held_bytes()); }

    void build_units() {
        std::set<const void*> seen;
        std::map<const void*, std::string> full_name;  // the model's own names: unique, unlike a block's type name
        for (const auto& item : model_->named_parameters()) full_name[item.value().unsafeGetTensorImpl()] = item.key();
        for (const auto& block : model_->blocks()) {
            if (stage_ == 3 && !block->shared_parameters().empty())
                throw plexus::Error(
                    "zero stage 3: block '" + block->block_name() + "' uses a parameter shared with another block",
                    "untie it (model.tie_embeddings = false) or use stage 1 or 2");
            Unit u;
            u.block = block;
            for (const auto& item : block->named_parameters()) {
                const void* key = item.value().unsafeGetTensorImpl();
                if (seen.count(key)) {
                    if (stage_ == 3)
                        throw plexus::Error("zero stage 3: parameter '" + item.key() + "' is shared between blocks",
                                            "untie it (model.tie_embeddings = false) or use stage 1 or 2");
                    continue;  // stages 1-2: owned by the first block that registers it
                }
                seen.insert(key);
                u.params.push_back(item.value());
                u.names.push_back(full_name.count(key) ? full_name.at(key) : block->block_name() + "." + item.key());
                u.shapes.push_back(item.value().sizes().vec());
                u.offsets.push_back(u.numel);
                u.numel += item.value().numel();
            }
            if (u.params.empty()) {  // nothing to shard in this block
                unit_of_block_.push_back(-1);
                continue;
            }
            unit_of_block_.push_back(static_cast<int>(units_.size()));
            u.shard = (u.numel + world_ - 1) / world_;
            auto full = plexus::flat_copy(u.params, world_ * u.shard);
            const int64_t lo = rank_ * u.shard, hi = lo + u.shard;
            std::vector<int64_t> numels;
            for (const auto& p : u.params) numels.push_back(p.numel());
            u.pieces = plexus::pieces_in(u.offsets, numels, lo, hi);
            u.full = full;
            plexus::view_parameters(u.params, full);
            if (stage_ < 3) {
                u.local = full.narrow(0, lo, u.shard);
            } else {
                u.local = full.narrow(0, lo, u.shard).clone();
                release(u);
            }
            u.grad_shard = torch::zeros({u.shard}, u.local.options());
            const size_t index = units_.size();
            for (size_t k = 0; k < u.params.size(); ++k)
                u.params[k].register_hook([this, index, k](const torch::Tensor& grad) { on_grad(index, k, grad); });
            units_.push_back(std::move(u));
        }
    }

    void release(Unit& u) {
        plexus::compat::resize_storage_bytes(u.full, 0);
        u.gathered = false;
    }
    void start_gather(size_t i) {
        auto& u = units_[i];
        if (stage_ < 3 || u.gathered || u.gather) return;
        plexus::compat::resize_storage_bytes(u.full, static_cast<size_t>(u.full.numel()) * u.full.element_size());
        u.gather = transport_.all_gather(u.full, u.local);
    }
    void ensure_gathered(size_t i) {
        auto& u = units_[i];
        if (stage_ < 3) {  // the step's all-gather, when it still runs (overlap_gather)
            if (u.gather) u.gather->wait();
            u.gather.reset();
            return;
        }
        if (u.gathered) return;
        start_gather(i);
        u.gather->wait();
        u.gather.reset();
        u.gathered = true;
        sample_memory();
    }

    // Runs the blocks one by one (compute charged per block): stage 3 gathers each, the next one
    // in the background, and in training gathers it again when backward reaches it.
    torch::Tensor forward(const torch::Tensor& tokens, bool train, double n_tokens) {
        const size_t n = model_->blocks().size();
        auto unit = [this](size_t block) { return unit_of_block_[block]; };
        plexus::BlockHooks hooks;
        hooks.before_forward = [&](size_t b) {
            if (unit(b) >= 0) ensure_gathered(static_cast<size_t>(unit(b)));
            if (prefetch_ && b + 1 < n && unit(b + 1) >= 0) start_gather(static_cast<size_t>(unit(b + 1)));
        };
        hooks.after_forward = [&](size_t b) {  // the last unit stays for backward
            if (stage_ == 3 && b + 1 < n && unit(b) >= 0) release(units_[static_cast<size_t>(unit(b))]);
        };
        hooks.before_backward = [this, n, unit](size_t b) {
            if (stage_ > 1 && b + 1 < n && unit(b + 1) >= 0) release_after_backward(static_cast<size_t>(unit(b + 1)));
            if (unit(b) >= 0) ensure_gathered(static_cast<size_t>(unit(b)));
            if (prefetch_ && b > 0 && unit(b - 1) >= 0) start_gather(static_cast<size_t>(unit(b - 1)));
        };
        auto x = plexus::run_blocks(*model_, tokens, ctx_, n_tokens, train, hooks);
        if (!train && stage_ == 3)
            for (auto& u : units_)
                if (u.gathered) release(u);
        return x;
    }

    // Stages 1, 2: the all-gathers of the last step, finished.
    void finish_gathers() {
        if (stage_ == 3) return;
        for (size_t i = 0; i < units_.size(); ++i) ensure_gathered(i);
    }

    // A unit's backward is over: its parameters (stage 3) and their .grad go.
    void release_after_backward(size_t i) {
        auto& u = units_[i];
        for (auto& p : u.params) p.mutable_grad() = torch::Tensor();
        if (u.gathered) release(u);
    }

    void after_backward() {
        for (size_t i = 0; i < units_.size(); ++i) {
            auto& u = units_[i];
            if (!u.reduce && last_micro_batch_)
                throw plexus::Error("zero: unit " + std::to_string(i) + " (" + u.block->block_name() +
                                        ") did not receive all its gradients",
                                    "every parameter must take part in the loss");
            for (auto& p : u.params) p.mutable_grad() = torch::Tensor();  // the flat buffers hold them
            if (stage_ == 3 && u.gathered) release(u);
        }
    }

    void on_grad(size_t i, size_t k, const torch::Tensor& grad) {
        torch::NoGradGuard no_grad;
        auto& u = units_[i];
        if (!u.grad_full.defined()) u.grad_full = torch::zeros({world_ * u.shard}, u.local.options());
        sample_memory();
        auto slot = u.grad_full.narrow(0, u.offsets[k], grad.numel());
        if (first_micro_batch_)
            slot.copy_(grad.reshape(-1));
        else
            slot.add_(grad.reshape(-1));
        if (++u.ready < u.params.size() || !last_micro_batch_) {
            if (u.ready == u.params.size()) u.ready = 0;
            return;
        }
        u.ready = 0;
        u.reduce = transport_.reduce_scatter(u.grad_shard, u.grad_full, plexus::ReduceOp::Mean);
    }

    plexus::RunContext& ctx_;
    plexus::Transport& transport_;
    int64_t stage_, accumulate_;
    bool prefetch_ = true, overlap_gather_ = true;
    int world_ = 1, rank_ = 0;
    std::shared_ptr<plexus::Model> model_;
    std::vector<Unit> units_;
    std::vector<int> unit_of_block_;  // -1: a block without parameters
    std::unique_ptr<plexus::Optimizer> optimizer_;
    bool first_micro_batch_ = true, last_micro_batch_ = true;
    int64_t peak_bytes_ = 0, optimizer_bytes_ = -1;  // -1: not measured yet
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "zero";
    d.kind = plexus::PluginKind::Strategy;
    d.version = "1.0";
    d.summary = "sharded data parallelism: ZeRO-1 (optimizer state), 2 (+ gradients), 3 (+ parameters, FSDP-style)";
    d.schema = {
        plexus::ConfigKey("stage", 1,
                          "1: shard optimizer state; 2: and gradients; 3: and parameters (gathered per block)")
            .between(1, 3),
        {"accumulate", 1, "micro-batches per optimizer step; gradients reduce-scattered on the last"},
        {"prefetch", true, "stage 3: gather the next block's parameters while the current one computes"},
        {"overlap_gather", true,
         "stages 1, 2: the parameters' all-gather after the optimizer runs while the next step computes "
         "(each block waits for its own); false: the step waits for it (ablation)"},
    };
    d.make_strategy = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::unique_ptr<plexus::Strategy> {
        return std::make_unique<Zero>(cfg, ctx);
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
