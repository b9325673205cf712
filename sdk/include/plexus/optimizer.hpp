// plexus/optimizer.hpp: what an optimizer plugin provides.
//
// An optimizer updates an explicit list of tensors (ParamSlot), not a module. A slot can be a
// whole parameter or a flat shard of many (ZeRO and ACCO shard flat buffers), so an optimizer
// must not assume anything beyond "this tensor, this gradient". Slots carry the name and the
// full shape of what they came from for optimizers that need per-tensor features (the learned
// optimizer); on a flat shard the name is the buffer's name and full_shape its own shape.
//
// Its state is a value: state() returns copies that load_state() restores exactly. ACCO's
// estimate round snapshots and restores it; checkpoints save it; ZeRO shards it.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

namespace plexus {

struct ParamSlot {
    std::string name;                 // e.g. "blocks.1.attn.qkv.weight", or "flat[0:1024]"
    torch::Tensor param;              // updated in place by step()
    std::vector<int64_t> full_shape;  // shape of the whole parameter this slot belongs to
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

    // Copies of the whole state (step counters included), and their exact restoration.
    virtual StateDict state() const = 0;
    virtual void load_state(const StateDict& state) = 0;

    // FLOPs of one step() (for the simulated clock and HFU); 0 if negligible or unknown.
    virtual double flops_per_step() const { return 0.0; }
};

}  // namespace plexus
