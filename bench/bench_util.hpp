// Shared by the C++ benchmarks: an experiment resolved through the host's own plugin path, and a
// strategy with its training stream built as the harness builds them, to be stepped in a bare
// loop (no schedule, no recording).
#pragma once

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include "config.hpp"
#include "context.hpp"
#include "loader.hpp"

namespace plexus::bench {

inline double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Writes `toml` to a fresh file under /tmp; returns its path.
inline std::string write_experiment(const std::string& toml, const std::string& name) {
    char dir_template[] = "/tmp/plexus-bench-XXXXXX";
    const std::string file = std::string(mkdtemp(dir_template)) + "/" + name;
    FILE* f = std::fopen(file.c_str(), "w");
    std::fputs(toml.c_str(), f);
    std::fclose(f);
    return file;
}

inline host::ResolvedConfig resolve_file(const std::string& file) {
    static host::PluginRegistry registry = [] {
        host::PluginRegistry r;
        r.scan(host::PluginRegistry::default_search_path());
        return r;
    }();
    return host::resolve(
        host::load_experiment(file), [&](PluginKind k, const std::string& n) { return registry.find(k, n); },
        [&](PluginKind k) { return registry.names(k); });
}

// The strategy of `cfg` on `device`, its model built, and a training stream of batch x seq
// windows on that device. `in` is ready for strategy->step(in).
struct BareRun {
    std::shared_ptr<Dataset> data;
    std::unique_ptr<host::HostContext> ctx;
    std::unique_ptr<Strategy> strategy;
    std::unique_ptr<host::DeviceStream> stream;
    StepInput in;

    BareRun(const host::ResolvedConfig& cfg, torch::Device device, int64_t batch, int64_t seq) {
        host::HostContext boot(cfg, torch::kCPU, 0);
        data = cfg.plugins.at("data")->make_dataset(cfg.sections.at("data"), boot);
        ctx = std::make_unique<host::HostContext>(cfg, device, data->vocab_size());
        strategy = cfg.plugins.at("strategy")->make_strategy(cfg.sections.at("strategy"), *ctx);
        stream = std::make_unique<host::DeviceStream>(data->open({Split::Train, batch, seq, 0, 1, 1}), device);
        in.max_grad_norm = 1.0;
        in.train = stream.get();
    }
};

}  // namespace plexus::bench
