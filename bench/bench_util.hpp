// Shared by the C++ benchmarks: an experiment written to a file and resolved through the host's
// own plugin path (host::BareRun then builds what a bare loop of steps needs).
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
    return host::resolve(host::load_experiment(file), registry);
}

}  // namespace plexus::bench
