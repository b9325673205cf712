// plexus/width.hpp: how a parameter grows with the model's width, for μP.
//
// Under the Maximal Update Parametrization (Yang et al., "Tensor Programs V", 2022) a model's
// best learning rate stays put as it widens, if the optimizer scales its step per kind of
// parameter. A μP model's blocks say which kind each parameter is (Block::width_plan()); the
// host copies that onto the optimizer's slots (ParamSlot::width_role, width_mult), whatever the
// strategy. An optimizer then scales its step by role without knowing the model:
//   μAdam (Adam-like, entry-wise normalized updates): a Hidden slot's rate / width_mult (and its
//   decoupled weight decay * width_mult, so that their product stays); Vector and Output as set.
//   μLO: a Hidden slot's step * 1 / fan_in.
// A model in the standard parametrization declares nothing: every slot is WidthRole::None and
// optimizers step as they always did.
#pragma once

#include <string>

namespace plexus {

enum class WidthRole {
    None,    // the model declared no μP roles (standard parametrization)
    Vector,  // at most one dimension grows with width: embeddings, biases, norm gains
    Hidden,  // fan-in and fan-out both grow: the matrices inside the network
    Output,  // the fan-in grows, the output does not: the readout (LM head)
};

// One parameter of a block (named relative to it, as named_parameters() gives it).
struct WidthRule {
    std::string parameter;
    WidthRole role = WidthRole::None;
    // Hidden and Output: this parameter's fan-in over its fan-in in the base model (the width
    // the learning rate was tuned at). 1 for the others.
    double width_mult = 1.0;
};

// μAdam's factor on a slot's learning rate (microsoft/mup's MuAdam, mup/optim.py @0518b39): for
// optimizers whose update is normalized entry-wise (Adam, Lion, RMSProp). Its decoupled weight
// decay is multiplied by the inverse, so that the decay per step (rate x decay) does not change.
inline double adam_rate_factor(WidthRole role, double width_mult) {
    return role == WidthRole::Hidden ? 1.0 / width_mult : 1.0;
}

inline const char* width_role_name(WidthRole role) {
    switch (role) {
        case WidthRole::Vector: return "vector";
        case WidthRole::Hidden: return "hidden";
        case WidthRole::Output: return "output";
        default: return "none";
    }
}

}  // namespace plexus
