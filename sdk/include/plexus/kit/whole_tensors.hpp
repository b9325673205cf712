// plexus/kit/whole_tensors.hpp: for optimizers whose update needs whole tensors.
//
// ZeRO and ACCO hand an optimizer pieces of flattened parameters (ParamSlot::is_piece). An
// optimizer whose statistics span a tensor (factored moments, an orthogonalization) and that does
// not reduce them over the shard group calls require_whole_tensors() when it is built, so that
// such a run stops before training with the parameter named.
#pragma once

#include <string>
#include <vector>

#include "plexus/error.hpp"
#include "plexus/optimizer.hpp"

namespace plexus {

// `optimizer`: the plugin's name; `needs`: what of its update spans a tensor, for the message.
inline void require_whole_tensors(const std::vector<ParamSlot>& slots, const std::string& optimizer,
                                  const std::string& needs) {
    for (const auto& slot : slots)
        if (slot.is_piece())
            throw Error(optimizer + ": parameter '" + slot.tensor_name() +
                            "' reaches the optimizer in pieces (a sharded strategy: ZeRO, ACCO), and " + needs,
                        "use a strategy that keeps whole parameters (single, ddp, pipeline, diloco, the gossip "
                        "family), or another optimizer");
}

}  // namespace plexus
