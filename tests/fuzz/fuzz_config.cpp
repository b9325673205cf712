// libFuzzer target: the experiment loader, --set overrides, grid expansion and resolution
// against plugin schemas. Every input must end in a result or a plexus::Error (a clear refusal);
// anything else (a crash, another exception, a sanitizer report, a hang) is a finding.
// Built and run by scripts/fuzz.sh.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "config/experiment.hpp"

using namespace plexus;

namespace {

PluginDescriptor descriptor(const char* name, PluginKind kind, ConfigSchema schema) {
    PluginDescriptor d;
    d.name = name;
    d.kind = kind;
    d.version = "0";
    d.schema = std::move(schema);
    return d;
}

// A few plugins of each kind, with keys of each type.
const std::vector<PluginDescriptor>& plugins() {
    static const std::vector<PluginDescriptor> all = {
        descriptor("gpt", PluginKind::Model,
                   {{"n_layer", 2, ""}, {"d_model", 32, ""}, {"dropout", 0.0, ""}, {"tied", true, ""}}),
        descriptor("mlp", PluginKind::Model, {{"width", 8, ""}}),
        descriptor("text", PluginKind::Dataset, {{"path", "", ""}, {"split", 0.9, ""}}),
        descriptor("synthetic", PluginKind::Dataset, {{"vocab", 64, ""}}),
        descriptor("adamw", PluginKind::Optimizer, {{"lr", 1e-3, ""}, {"betas", Value::list({0.9, 0.95}), ""}}),
        descriptor("single", PluginKind::Strategy, {}),
        descriptor("ddp", PluginKind::Strategy, {{"bucket_mb", 4.0, ""}}),
        descriptor("allreduce", PluginKind::Comm, {}),
    };
    return all;
}

const PluginDescriptor* find(PluginKind kind, const std::string& name) {
    for (const auto& d : plugins())
        if (d.kind == kind && d.name == name) return &d;
    return nullptr;
}

std::vector<std::string> names(PluginKind kind) {
    std::vector<std::string> out;
    for (const auto& d : plugins())
        if (d.kind == kind) out.push_back(d.name);
    return out;
}

}  // namespace

// The input is up to four files, f0.toml to f3.toml, cut at lines "#---": f0 is the experiment,
// and `extends` among them makes chains, diamonds, cycles and self-references.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::string dir = "/tmp/plexus-fuzz-" + std::to_string(getpid());
    static const bool made = std::system(("mkdir -p " + dir).c_str()) == 0;
    (void)made;
    std::string text(reinterpret_cast<const char*>(data), size);
    // Lines "#set KEY=VALUE" are also tried as --set overrides.
    std::vector<std::string> overrides;
    for (size_t at = text.find("#set "); at != std::string::npos; at = text.find("#set ", at + 5))
        overrides.push_back(text.substr(
            at + 5, text.find('\n', at) == std::string::npos ? std::string::npos : text.find('\n', at) - at - 5));
    size_t from = 0;
    for (int i = 0; i < 4; ++i) {
        const size_t cut = text.find("#---", from);
        const std::string part =
            from > text.size() ? "" : text.substr(from, cut == std::string::npos ? std::string::npos : cut - from);
        from = cut == std::string::npos ? text.size() + 1 : cut + 4;
        if (std::FILE* f = std::fopen((dir + "/f" + std::to_string(i) + ".toml").c_str(), "wb")) {
            std::fwrite(part.data(), 1, part.size(), f);
            std::fclose(f);
        }
    }
    try {
        auto exp = host::load_experiment(dir + "/f0.toml");
        for (const auto& o : overrides) host::apply_override(exp, o);
        const auto points = host::expand_grid(exp);
        for (size_t i = 0; i < points.size() && i < 4; ++i) {
            try {
                const auto cfg = host::resolve(host::apply_grid_point(exp, points[i], find), find, names);
                (void)cfg.to_json();
            } catch (const Error&) {}
        }
    } catch (const Error&) {}
    return 0;
}
