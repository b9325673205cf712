// plexus/optimizer.hpp: what an optimizer plugin provides.
//
// An optimizer updates an explicit list of tensors (ParamSlot), not a module. A slot can be a
// whole parameter or a piece of one (ZeRO and ACCO shard flat buffers over ranks: a rank's slots
// are the pieces of parameters inside its shard), so an optimizer must not assume anything
// beyond "this tensor, this gradient" unless it looks at the slot's description: the name and
// full shape of the parameter it came from, where the piece starts in it, and the group of ranks
// that hold the other pieces. An optimizer whose update needs statistics over whole tensors (the
// learned optimizer's row and column second moments and feature normalization) reduces its
// partial sums over that group: every rank of the group builds its optimizer with the same
// group and steps it at the same time, so collectives on it are safe.
//
// Its state is a value: state() returns copies that load_state() restores exactly. ACCO's
// estimate round snapshots and restores it; checkpoints save it; ZeRO shards it.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

#include "plexus/width.hpp"

namespace plexus {

class Transport;

struct ParamSlot {
    std::string name;     // e.g. "layer1.qkv.weight" (block, then parameter), or "layer1.qkv.weight[0:1024]"
    torch::Tensor param;  // updated in place by step()
    std::vector<int64_t> full_shape;  // shape of the whole parameter this slot belongs to
    // A piece: where param starts in the whole parameter (flattened, row-major; param is then 1-D
    // and `tensor` names the whole parameter), and the ranks that hold all the pieces of all the
    // slots (set on every slot of every rank of a sharded optimizer, pieces that happen to be
    // whole included). Whole tensors: offset 0, tensor "" (name is the parameter's), no group.
    int64_t offset = 0;
    std::string tensor;
    Transport* shard_group = nullptr;
    // Tensor parallelism: this slot is this rank's part of a parameter split over these ranks
    // (full_shape is then the whole parameter's; the part is split along whole rows or columns).
    // Element-wise optimizers need not care; one whose update spans a tensor must refuse it
    // (plexus/kit/whole_tensors.hpp) or reduce its statistics over the group.
    Transport* split_group = nullptr;
    // μP (plexus/width.hpp): the parameter's role as its model declared it, and its fan-in over
    // the base model's. Filled in by the host for every strategy; None for a standard model.
    WidthRole width_role = WidthRole::None;
    double width_mult = 1.0;

    bool is_piece() const { return shard_group != nullptr; }
    bool is_split() const { return split_group != nullptr; }
    const std::string& tensor_name() const { return tensor.empty() ? name : tensor; }
};

// Named tensors, in a fixed order. Keys are stable across runs (used by checkpoints).
using StateDict = std::vector<std::pair<std::string, torch::Tensor>>;

class Optimizer {
public:
    virtual ~Optimizer() = default;

    // One update. grads[i] is the gradient for slots[i] (same shape). lr_scale is the
    // learning-rate schedule's factor at this point of training (1 at the peak); optimizers
    // with a learning rate multiply their configured rate by it.
    virtual void step(const std::vector<torch::Tensor>& grads, double lr_scale) = 0;

    // The same update with every gradient multiplied by grad_scale first: gradient clipping's
    // factor, in [0, 1] (exactly 1 when the norm is within the limit). The harness's strategies
    // call this one. By default it scales the gradients in place and calls step(); an optimizer
    // that reads each gradient once anyway overrides it to apply the factor as it reads (AdamW's
    // one pass, the fused CUDA kernel's grad_scale), saving a pass over every gradient. The
    // gradients afterwards may hold the scaled values or the unscaled ones.
    virtual void step_scaled(const std::vector<torch::Tensor>& grads, double lr_scale, double grad_scale) {
        if (grad_scale != 1.0 && !grads.empty() && !grads[0].is_meta()) at::_foreach_mul_(grads, grad_scale);
        step(grads, lr_scale);
    }

    // Copies of the whole state (step counters included), and their exact restoration.
    virtual StateDict state() const = 0;
    virtual void load_state(const StateDict& state) = 0;

    // FLOPs of one step() (for the simulated clock and HFU); 0 if negligible or unknown.
    virtual double flops_per_step() const { return 0.0; }
};

}  // namespace plexus
