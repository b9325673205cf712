// plexus/kit/mup.hpp: the standard or the Maximal Update Parametrization for a model plugin.
//
// μP (Yang et al., "Tensor Programs V", 2022; the `mup` package's conventions, microsoft/mup
// @0518b39, mup/layer.py and mup/optim.py) changes three things in the model and one in the
// optimizer, all relative to a base width at which μP and SP coincide:
//   - hidden matrices are drawn with variance ∝ 1/fan_in: the SP standard deviation times
//     sqrt(1 / width_mult) (a fixed std such as GPT-2's 0.02 would not shrink as the model widens);
//   - the readout's logits are multiplied by 1 / width_mult; its weight is drawn with the SP
//     standard deviation at every width (the package's default; a zero readout, which the μLO
//     code uses and the package offers, cost 0.35 nats at the base width on a 200-step task here);
//   - attention scores are scaled by 1/d_head instead of 1/sqrt(d_head) (here sqrt(base d_head) /
//     d_head, equal to SP at the base width);
//   - the optimizer scales hidden matrices' steps (plexus/width.hpp), from the roles the blocks
//     declare with width_plan(), which this helper builds.
// Embeddings, biases and norm gains are unchanged.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "plexus/config.hpp"
#include "plexus/width.hpp"

namespace plexus::mup {

struct Parametrization {
    bool mup = false;
    double width_mult = 1.0;  // the model's width over the base width (1 in SP)

    // The standard deviation of a hidden matrix drawn with `sp_std` in SP.
    double hidden_std(double sp_std) const { return mup ? sp_std / std::sqrt(width_mult) : sp_std; }
    // The factor on the readout's logits.
    double output_multiplier() const { return mup ? 1.0 / width_mult : 1.0; }
    // The factor on attention scores beyond SP's 1/sqrt(d_head): 1/sqrt(width_mult) turns
    // 1/sqrt(d_head) into sqrt(base d_head)/d_head when heads widen with the model.
    double attention_factor() const { return mup ? 1.0 / std::sqrt(width_mult) : 1.0; }

    // Block::width_plan() entries: empty in SP (the standard parametrization declares nothing).
    WidthRule vector(const std::string& parameter) const { return {parameter, WidthRole::Vector, 1.0}; }
    WidthRule hidden(const std::string& parameter, double fan_in_mult) const {
        return {parameter, WidthRole::Hidden, fan_in_mult};
    }
    WidthRule output(const std::string& parameter) const { return {parameter, WidthRole::Output, width_mult}; }
    std::vector<WidthRule> plan(std::vector<WidthRule> rules) const { return mup ? rules : std::vector<WidthRule>{}; }
};

// The schema keys read() reads.
inline ConfigSchema schema() {
    return {
        {"parametrization", "sp",
         "\"sp\" (standard) or \"mup\" (Maximal Update Parametrization: μP initialization, readout "
         "multiplier, attention 1/d_head, and per-layer steps in optimizers that follow it)"},
        {"base_width", 0, "μP: the width at which it equals SP (where the rate was tuned); 0: this model's width"},
    };
}

// From a model's [model] section and its width (d_model).
inline Parametrization read(const Config& cfg, int64_t width) {
    const auto name = cfg.get_string("parametrization");
    cfg.require(name == "sp" || name == "mup", "parametrization", "must be \"sp\" or \"mup\"");
    const auto base = cfg.get_int("base_width");
    cfg.require(base >= 0, "base_width", "must be >= 0");
    Parametrization p;
    p.mup = name == "mup";
    cfg.require(p.mup || base == 0, "base_width", "is for parametrization = \"mup\"");
    p.width_mult = p.mup && base > 0 ? static_cast<double>(width) / static_cast<double>(base) : 1.0;
    return p;
}

}  // namespace plexus::mup
