// Shared by the C++ benchmarks: an experiment written to a file and resolved through the host's
// own plugin path (host::BareRun then builds what a bare loop of steps needs).
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include "config/experiment.hpp"
#include "runtime/host_context.hpp"
#include "runtime/loader.hpp"

namespace plexus::bench {

// A benchmark's `--key value` arguments over its defaults (which name every key it accepts). An
// unknown key, a key without its value, or a number that does not parse prints the usage line
// and exits with 2.
class Flags {
public:
    Flags(int argc, char** argv, std::map<std::string, std::string> defaults, std::string usage)
        : values_(std::move(defaults)), usage_(std::move(usage)) {
        for (int i = 1; i < argc; i += 2) {
            const std::string arg = argv[i];
            const std::string key = arg.rfind("--", 0) == 0 ? arg.substr(2) : "";
            if (!values_.count(key)) fail(arg + ": unknown argument");
            if (i + 1 >= argc) fail(arg + ": needs a value");
            values_[key] = argv[i + 1];
        }
    }
    const std::string& text(const std::string& key) const { return values_.at(key); }
    int64_t operator[](const std::string& key) const {
        const std::string& value = values_.at(key);
        char* end = nullptr;
        const long long n = std::strtoll(value.c_str(), &end, 10);
        if (value.empty() || *end != '\0') fail("--" + key + " " + value + ": not an integer");
        return n;
    }

private:
    [[noreturn]] void fail(const std::string& what) const {
        std::fprintf(stderr, "%s\nusage: %s\n", what.c_str(), usage_.c_str());
        std::exit(2);
    }
    std::map<std::string, std::string> values_;
    std::string usage_;
};

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
    static host::PluginRegistry* registry = [] {
        auto* r = new host::PluginRegistry();  // lives to the end: plugins' objects point into it
        r->scan(host::PluginRegistry::default_search_path());
        return r;
    }();
    return host::resolve(host::load_experiment(file), *registry);
}

}  // namespace plexus::bench
