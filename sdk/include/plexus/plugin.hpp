// plexus/plugin.hpp: how a shared library becomes a plexus plugin.
//
// A plugin is one shared library (built with plexus_add_plugin() in CMake) that describes itself
// with a PluginDescriptor and exports it with PLEXUS_PLUGIN:
//
//   #include <plexus/plexus.hpp>
//
//   class Sgd : public plexus::Optimizer { ... };
//
//   static plexus::PluginDescriptor describe() {
//       plexus::PluginDescriptor d;
//       d.name = "sgd";
//       d.kind = plexus::PluginKind::Optimizer;
//       d.version = "1.0";
//       d.summary = "SGD with momentum and Nesterov";
//       d.schema = {{"lr", 0.1, "learning rate"}, {"momentum", 0.9, "momentum factor"}};
//       d.make_optimizer = [](const plexus::Config& cfg, plexus::RunContext& ctx,
//                             std::vector<plexus::ParamSlot> slots) {
//           return std::make_unique<Sgd>(cfg, std::move(slots));
//       };
//       return d;
//   }
//   PLEXUS_PLUGIN(describe)
//
// Set exactly the make_* factory of the plugin's kind. The Config handed to it holds every key
// of `schema`, validated and defaulted by the host. Throw plexus::Error for bad values.
//
// The host finds plugins on its search path (the build folder's plugins/ when the executable
// sits in a build tree, <prefix>/lib/plexus/plugins beside an installed one, then the folders of
// PLEXUS_PLUGIN_PATH, separated by ':', then the experiment's plugin_path), reads
// plexus_abi_fingerprint before calling any function, refuses a mismatch, then calls
// plexus_plugin() once and keeps the library loaded until exit.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "plexus/abi.hpp"
#include "plexus/config.hpp"

namespace plexus {

class Model;
class Optimizer;
class Strategy;
class CommScheme;
class Dataset;
class RunContext;
struct ParamSlot;

enum class PluginKind { Model, Optimizer, Strategy, Comm, Dataset };

inline const char* to_string(PluginKind k) {
    switch (k) {
        case PluginKind::Model: return "model";
        case PluginKind::Optimizer: return "optimizer";
        case PluginKind::Strategy: return "strategy";
        case PluginKind::Comm: return "comm";
        case PluginKind::Dataset: return "dataset";
    }
    return "?";
}

struct PluginDescriptor {
    std::string name;  // unique within its kind; what the TOML's `name = ...` refers to
    PluginKind kind = PluginKind::Model;
    std::string version;  // the plugin's own version, recorded with every run that uses it
    std::string summary;  // one line for `plexus plugins`
    ConfigSchema schema;  // every key the plugin accepts, with defaults and documentation
    // Optional capabilities and hints, by name: the host reads the keys it knows and ignores the
    // rest, so a new optional capability is a new key, not an ABI change. Known keys:
    //   "default"          "true": the plugin an experiment gets when its section names none of
    //                      this kind (the shipped adamw, single, allreduce)
    //   "sections"         strategies: further plugin sections they read, "NAME=KIND,..."
    //                      ("outer_optimizer=optimizer"); optional in an experiment
    //   "meta.weights"     optimizers with learned weights: the key naming their weights file
    //                      (plexus/kit/weights_file.hpp), for `plexus meta-train`
    //   "meta.export"      ... and the key that writes the weights in use to a file
    //   "check.settings"   `plexus check` runs the plugin with these assignments ("a.b=1;c.d=x")
    //   "check.tolerance"  comm schemes: the relative error of a mean that `plexus check` allows
    //   "check.ranks"      strategies: the one world size `plexus check` runs them on
    //   "check.needs"      a key that must be set (`plexus check` skips the plugin without it)
    //   "check.partner"    "true": a model or dataset that `plexus check` runs plugins of other
    //                      kinds with (its check.settings apply)
    //   "check.output"     models: "free" when forward() returns what the model's own loss()
    //                      reads instead of logits [B, T, V] (a convex workload's parameters);
    //                      `plexus check` then asks only for a finite loss
    //   "config.added_later"  keys added to the schema after runs were recorded ("a;b"): at
    //                      their defaults they stay out of a run's config hash, so that sweeps
    //                      recorded before them still resume
    std::map<std::string, std::string> extras;

    std::function<std::shared_ptr<Model>(const Config&, RunContext&)> make_model;
    std::function<std::unique_ptr<Optimizer>(const Config&, RunContext&, std::vector<ParamSlot>)> make_optimizer;
    std::function<std::unique_ptr<Strategy>(const Config&, RunContext&)> make_strategy;
    std::function<std::unique_ptr<CommScheme>(const Config&, RunContext&)> make_comm;
    std::function<std::unique_ptr<Dataset>(const Config&, RunContext&)> make_dataset;
};

}  // namespace plexus

// Exports the fingerprint and the descriptor. `describe` is a function returning a
// PluginDescriptor; it is called once, when the host first loads the library.
#define PLEXUS_PLUGIN(describe)                                                                                     \
    extern "C" __attribute__((visibility("default"))) const char plexus_abi_fingerprint[] = PLEXUS_ABI_FINGERPRINT; \
    extern "C" __attribute__((visibility("default"))) const plexus::PluginDescriptor* plexus_plugin() {             \
        static const plexus::PluginDescriptor descriptor = describe();                                              \
        return &descriptor;                                                                                         \
    }
