// `plexus check`: generic conformance checks that any plugin, in tree or out of tree, must pass,
// chosen by its kind (like a backend test suite run over every backend). Each check builds the
// plugin under test inside a tiny experiment (a small GPT on synthetic data, or the plugin's own
// choice, PluginDescriptor::extras["check.settings"]) and asserts a property the harness relies on:
//
//   every plugin   descriptor complete; every key documented, names unique, defaults allowed
//   dataset        the same spec gives the same windows; shard r of W with batch b is rows
//                  [r b, (r+1) b) of the global batch of W b (the data contract of DDP)
//   model          logits of shape [B, T, V] and a finite loss; FLOPs per token reported; the
//                  same seed gives the same initial parameters
//   optimizer      lr_scale 0 changes nothing; a step changes something; state() then
//                  load_state() on a fresh optimizer continues identically
//   comm           on 4 simulated ranks, the mean of identical tensors is the tensor; its bytes are
//                  what went through the transport; logical bytes are a ring all-reduce's
//   strategy       on 1, 2 or 4 simulated ranks (the first it accepts): two runs are identical;
//                  evaluate() changes no state; state() round-trips through load_state(); where
//                  it claims exact_resume(), a run resumed from state() continues bit for bit
#pragma once

#include <string>
#include <vector>

#include "runtime/loader.hpp"

namespace plexus::host {

struct CheckResult {
    std::string plugin;  // "strategy ddp"
    std::string check;
    bool passed = false;
    std::string detail;    // why it failed (or, skipped, what it needs)
    bool skipped = false;  // the plugin needs a setting the check cannot invent (extras "check.needs")
};

// Runs every check of the plugin's kind. `overrides` are --set assignments applied to the
// check's experiment (after the plugin's own check.settings). Never throws for a failing plugin:
// a check that throws fails with the plugin's message.
std::vector<CheckResult> check_plugin(PluginRegistry& registry, const PluginDescriptor& plugin,
                                      const std::vector<std::string>& overrides);

}  // namespace plexus::host
