// Finds, checks and loads plugin libraries. A library is loaded only when a plugin it holds is
// asked for, and only after its file has been checked: a complete ELF shared library for this
// machine, named plexus_<kind>_<name>.so, whose ABI fingerprint (a plain C string, read from
// the file's bytes) is the host's. dlopen runs a library's static initializers, so nothing of a
// library that fails these checks, or that the run does not name, ever runs. A refused library
// is remembered with the reason so that `plexus plugins` can say why.
#pragma once

#include <memory>
#include <mutex>
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

    // Finds and checks every *.so in the given folders (or the files themselves), loading none.
    // Never throws for a bad library: it is refused and listed in refused(). The first library
    // found for a kind and name wins.
    void scan(const std::vector<std::string>& folders_or_files);
    // Loads every library scan() accepted (`plexus plugins`, `plexus check`: asked for all).
    void load_all();
    // Checks and loads one library. Throws plexus::Error with the reason if it is refused.
    const PluginDescriptor& load(const std::string& path);

    // The plugin of that kind and name, its library loaded on first use; nullptr if none was
    // found or its library was refused (refusal_of says why).
    const PluginDescriptor* find(PluginKind kind, const std::string& name);
    // The plugins of a kind that were found and not refused (from the files' names).
    std::vector<std::string> names(PluginKind kind) const;
    const std::vector<LoadedPlugin>& loaded() const { return loaded_; }
    const std::vector<RefusedPlugin>& refused() const { return refused_; }
    // "the library .../plexus_<kind>_<name>.so was refused: <reason>", or "" if none was.
    std::string refusal_of(PluginKind kind, const std::string& name) const;
    // Where a loaded plugin came from.
    std::string path_of(const PluginDescriptor* d) const;

    static const char* host_fingerprint();

private:
    struct Candidate {
        std::string path;
        PluginKind kind;
        std::string name;
    };
    void add_candidate(const std::string& path);
    // "" when the file may be loaded; else why not. Reads the file only.
    static std::string checked_file(const std::string& path);
    const PluginDescriptor* try_load(const std::string& path, std::string& reason);
    // find() may load a library from any thread (meta-training's ranks resolve their tasks).
    mutable std::recursive_mutex mutex_;
    std::vector<Candidate> candidates_;
    std::vector<LoadedPlugin> loaded_;
    std::vector<RefusedPlugin> refused_;
    std::vector<std::string> seen_;
};

// resolve() against the plugins `registry` loaded.
// A missing plugin whose library was refused is named with the library and the reason.
inline ResolvedConfig resolve(const Experiment& exp, PluginRegistry& registry) {
    return resolve(
        exp, [&](PluginKind k, const std::string& n) { return registry.find(k, n); },
        [&](PluginKind k) { return registry.names(k); },
        [&](PluginKind k, const std::string& n) { return registry.refusal_of(k, n); });
}

}  // namespace plexus::host
