// Finds, checks and loads plugin libraries. The fingerprint (a plain C string in the library)
// is compared with the host's own before any code in the library runs; a refused library is
// remembered with the reason so that `plexus plugins` can say why.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <plexus/plugin.hpp>

#include "config/experiment.hpp"

namespace plexus::host {

struct LoadedPlugin {
    std::string path;
    const PluginDescriptor* descriptor = nullptr;
};

struct RefusedPlugin {
    std::string path;
    std::string reason;
};

class PluginRegistry {
public:
    // The default search path: the build's plugin folder, the installed plugin folder next to
    // the executable, then PLEXUS_PLUGIN_PATH (colon-separated).
    static std::vector<std::string> default_search_path();

    // Loads every *.so in the given folders (or the files themselves). Never throws for a bad
    // library: it is refused and listed in refused().
    void scan(const std::vector<std::string>& folders_or_files);
    // Loads one library. Throws plexus::Error with the reason if it is refused.
    const PluginDescriptor& load(const std::string& path);

    const PluginDescriptor* find(PluginKind kind, const std::string& name) const;
    std::vector<std::string> names(PluginKind kind) const;
    const std::vector<LoadedPlugin>& loaded() const { return loaded_; }
    const std::vector<RefusedPlugin>& refused() const { return refused_; }
    // "the library .../plexus_<kind>_<name>.so was refused: <reason>", or "" if none was.
    std::string refusal_of(PluginKind kind, const std::string& name) const;
    // Where a loaded plugin came from.
    std::string path_of(const PluginDescriptor* d) const;

    static const char* host_fingerprint();

private:
    const PluginDescriptor* try_load(const std::string& path, std::string& reason);
    std::vector<LoadedPlugin> loaded_;
    std::vector<RefusedPlugin> refused_;
    std::vector<std::string> seen_;
};

// resolve() against the plugins `registry` loaded.
// A missing plugin whose library was refused is named with the library and the reason.
inline ResolvedConfig resolve(const Experiment& exp, const PluginRegistry& registry) {
    return resolve(
        exp, [&](PluginKind k, const std::string& n) { return registry.find(k, n); },
        [&](PluginKind k) { return registry.names(k); },
        [&](PluginKind k, const std::string& n) { return registry.refusal_of(k, n); });
}

}  // namespace plexus::host
