// plexus/kit/whole_tensors.hpp: for optimizers whose update needs whole tensors.
//
// ZeRO and ACCO hand an optimizer pieces of flattened parameters (ParamSlot::is_piece), tensor
// parallelism parts of split ones (ParamSlot::is_split). An
// optimizer whose statistics span a tensor (factored moments, an orthogonalization) and that does
// not reduce them over the shard group calls require_whole_tensors() when it is built, so that
// such a run stops before training with the parameter named; one that can work on whole tensors
// rebuilt each step asks a PieceGather for them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <c10/util/accumulate.h>
#include <torch/torch.h>

#include "plexus/error.hpp"
#include "plexus/optimizer.hpp"
#include "plexus/transport.hpp"

namespace plexus {

// `optimizer`: the plugin's name; `needs`: what of its update spans a tensor, for the message.
// Refuses the parts tensor parallelism splits (ParamSlot::is_split).
inline void require_unsplit_tensors(const std::vector<ParamSlot>& slots, const std::string& optimizer,
                                    const std::string& needs) {
    for (const auto& slot : slots)
        if (slot.is_split())
            throw Error(optimizer + ": parameter '" + slot.name +
                            "' is split over the tensor-parallel group (this rank holds a part of it), and " + needs,
                        "use data parallelism (ddp), ZeRO or a pipeline instead of tensor parallelism, or another "
                        "optimizer");
}

// Refuses split parts and sharded pieces alike.
inline void require_whole_tensors(const std::vector<ParamSlot>& slots, const std::string& optimizer,
                                  const std::string& needs) {
    require_unsplit_tensors(slots, optimizer, needs);
    for (const auto& slot : slots) {
        if (slot.is_piece())
            throw Error(optimizer + ": parameter '" + slot.tensor_name() +
                            "' reaches the optimizer in pieces (a sharded strategy: ZeRO, ACCO), and " + needs,
                        "use a strategy that keeps whole parameters (single, ddp, pipeline, diloco, the gossip "
                        "family), or another optimizer");
    }
}

// Rebuilds whole tensors from the pieces a sharded strategy (ZeRO, ACCO) hands an optimizer.
// Only tensors split between ranks travel: each step, one all-gather over the shard group of
// every rank's pieces of such tensors (a tensor inside one rank's shard costs nothing), counted
// by the transport like any collective. Every rank of the group builds it (the constructor
// agrees on the layout with two collectives) and calls whole() at the same steps.
class PieceGather {
public:
    // `wanted[i]`: whether slot i's whole tensor is needed. The rule must give the same answer
    // on every rank for the pieces of one tensor (decide it from tensor_name() and full_shape).
    PieceGather(const std::vector<ParamSlot>& slots, const std::vector<bool>& wanted) : slots_(slots) {
        for (size_t i = 0; i < slots.size(); ++i) {
            if (slots[i].is_piece()) group_ = slots[i].shard_group;
            if (wanted[i] && slots[i].param.numel() < numel_of(slots[i].full_shape)) split_.push_back(i);
        }
        sources_.resize(slots.size());
        wanted_ = wanted;
        if (group_) agree_on_layout();
    }

    // The whole tensor (full_shape) of each wanted slot, from values[i], slot i's part of what is
    // to be assembled (a momentum, a gradient); undefined for the others.
    std::vector<torch::Tensor> whole(const std::vector<torch::Tensor>& values) {
        std::vector<torch::Tensor> out(values.size());
        for (size_t i = 0; i < values.size(); ++i)
            if (wanted_[i] && sources_[i].empty()) out[i] = values[i].reshape(slots_[i].full_shape);
        if (longest_ == 0) return out;  // no rank holds a part of a split tensor
        const auto options = values[split_.front()].options();
        auto mine = torch::zeros({longest_}, options);
        int64_t at = 0;
        for (size_t i : split_) {
            mine.narrow(0, at, values[i].numel()).copy_(values[i].reshape(-1));
            at += values[i].numel();
        }
        auto all = torch::empty({longest_ * group_->world_size()}, options);
        group_->all_gather(all, mine)->wait();
        for (size_t i : split_) {
            auto w = torch::empty({numel_of(slots_[i].full_shape)}, options);
            for (const auto& src : sources_[i])
                w.narrow(0, src.offset, src.length).copy_(all.narrow(0, src.rank * longest_ + src.at, src.length));
            out[i] = w.view(slots_[i].full_shape);
        }
        return out;
    }

    // Elements this rank receives per whole() (all ranks' padded parts).
    int64_t elements_per_step() const { return group_ ? longest_ * group_->world_size() : 0; }

private:
    struct Source {
        int64_t rank = 0, at = 0, offset = 0, length = 0;  // where in whose part, where in the tensor
    };

    static int64_t numel_of(const std::vector<int64_t>& shape) { return c10::multiply_integers(shape); }
    static int64_t key_of(const std::string& name) {  // FNV-1a of the tensor's name
        uint64_t h = 1469598103934665603ULL;
        for (unsigned char c : name) h = (h ^ c) * 1099511628211ULL;
        return static_cast<int64_t>(h >> 1);
    }

    // Every rank's split pieces as (tensor key, offset, length) rows, gathered; then, for each of
    // this rank's split slots, where its tensor's pieces lie in the ranks' parts.
    void agree_on_layout() {
        auto count = torch::tensor({static_cast<int64_t>(split_.size())}, torch::kInt64);
        group_->all_reduce(count, ReduceOp::Max)->wait();
        const int64_t rows = count.item<int64_t>();
        if (rows == 0) return;
        auto mine = torch::full({rows, 3}, -1, torch::kInt64);
        for (size_t k = 0; k < split_.size(); ++k) {
            const auto& slot = slots_[split_[k]];
            mine[static_cast<int64_t>(k)][0] = key_of(slot.tensor_name());
            mine[static_cast<int64_t>(k)][1] = slot.offset;
            mine[static_cast<int64_t>(k)][2] = slot.param.numel();
        }
        const int world = group_->world_size();
        auto all = torch::empty({world * rows * 3}, torch::kInt64);
        group_->all_gather(all, mine.view(-1))->wait();
        auto table = all.view({world, rows, 3});
        for (int r = 0; r < world; ++r) {
            int64_t at = 0;
            for (int64_t k = 0; k < rows && table[r][k][0].item<int64_t>() >= 0; ++k) {
                const int64_t key = table[r][k][0].item<int64_t>(), length = table[r][k][2].item<int64_t>();
                for (size_t i : split_)
                    if (key_of(slots_[i].tensor_name()) == key)
                        sources_[i].push_back({r, at, table[r][k][1].item<int64_t>(), length});
                at += length;
            }
            longest_ = std::max(longest_, at);
        }
        for (size_t i : split_) check_covered(i);
    }

    void check_covered(size_t i) const {
        int64_t covered = 0;
        for (const auto& src : sources_[i]) covered += src.length;
        if (covered != numel_of(slots_[i].full_shape))
            throw Error("parameter '" + slots_[i].tensor_name() + "': the shard group holds " +
                            std::to_string(covered) + " of its " + std::to_string(numel_of(slots_[i].full_shape)) +
                            " elements",
                        "every rank of the group must build its optimizer over its pieces");
    }

    std::vector<ParamSlot> slots_;
    std::vector<bool> wanted_;
    std::vector<size_t> split_;                 // wanted slots whose tensor other ranks hold parts of
    std::vector<std::vector<Source>> sources_;  // per split slot: its tensor's pieces
    Transport* group_ = nullptr;
    int64_t longest_ = 0;  // the longest rank's part (every part padded to it)
};

}  // namespace plexus
