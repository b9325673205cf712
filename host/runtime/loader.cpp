#define BOOST_DLL_USE_STD_FS
#include "runtime/loader.hpp"

#include <elf.h>

#include <algorithm>
#include <boost/dll/shared_library.hpp>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "device/dispatch.hpp"
#include "base/text.hpp"

namespace plexus::host {

namespace fs = std::filesystem;

namespace {

// Loaded libraries stay loaded until exit: objects they made may live anywhere.
std::vector<boost::dll::shared_library>& keep_alive() {
    static auto* libs = new std::vector<boost::dll::shared_library>();
    return *libs;
}

std::string exe_dir() {
    std::error_code ec;
    auto p = fs::read_symlink("/proc/self/exe", ec);
    return ec ? std::string() : p.parent_path().string();
}

// dlopen maps a library without checking that the file holds what its headers promise: a
// truncated library then faults (SIGBUS) on first touch. So check the ELF structure first.
// Returns an empty string when the file looks like a complete shared library for this machine.
std::string elf_problem(const std::string& path) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) return "cannot be read";
    const auto size = static_cast<uint64_t>(in.tellg());
    Elf64_Ehdr eh{};
    in.seekg(0);
    if (size < sizeof eh || !in.read(reinterpret_cast<char*>(&eh), sizeof eh))
        return "too short to be a shared library";
    if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return "not an ELF file";
    if (eh.e_ident[EI_CLASS] != ELFCLASS64) return "not a 64-bit ELF file";
#if defined(__x86_64__)
    if (eh.e_machine != EM_X86_64)
        return "built for another processor (ELF machine " + std::to_string(eh.e_machine) + ")";
#elif defined(__aarch64__)
    if (eh.e_machine != EM_AARCH64)
        return "built for another processor (ELF machine " + std::to_string(eh.e_machine) + ")";
#endif
    if (eh.e_type != ET_DYN) return "not a shared library (ELF type " + std::to_string(eh.e_type) + ")";
    if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phoff + uint64_t{eh.e_phnum} * sizeof(Elf64_Phdr) > size)
        return "truncated (program headers beyond the end of the file)";
    if (eh.e_shoff + uint64_t{eh.e_shnum} * eh.e_shentsize > size)
        return "truncated (section headers beyond the end of the file)";
    in.seekg(static_cast<std::streamoff>(eh.e_phoff));
    for (int i = 0; i < eh.e_phnum; ++i) {
        Elf64_Phdr ph{};
        if (!in.read(reinterpret_cast<char*>(&ph), sizeof ph)) return "truncated (unreadable program header)";
        if (ph.p_type == PT_LOAD && ph.p_offset + ph.p_filesz > size)
            return "truncated (a segment ends beyond the file)";
    }
    return "";
}

}  // namespace

const char* PluginRegistry::host_fingerprint() { return PLEXUS_ABI_FINGERPRINT; }

// Plugins are found from where the executable is, never from a path compiled into it (an
// installed copy must not load a build tree's plugins, nor a build tree that was deleted and
// made again by someone else): in a build tree, the build's plugins/ (the executable sits in the
// build folder, or one level down for tests and benchmarks: the folder with CMakeCache.txt);
// otherwise (installed) <prefix>/lib/plexus/plugins beside <prefix>/bin.
std::vector<std::string> PluginRegistry::default_search_path() {
    std::vector<std::string> path;
    const auto dir = exe_dir();
    std::error_code ec;
    if (!dir.empty()) {
        std::string build_plugins;
        for (const fs::path build : {fs::path(dir), fs::path(dir).parent_path()})
            if (build_plugins.empty() && fs::exists(build / "CMakeCache.txt", ec))
                build_plugins = (build / "plugins").string();
        path.push_back(!build_plugins.empty()
                           ? build_plugins
                           : (fs::path(dir) / ".." / "lib" / "plexus" / "plugins").lexically_normal().string());
    }
    if (const char* env = std::getenv("PLEXUS_PLUGIN_PATH")) {
        std::stringstream ss(env);
        std::string item;
        while (std::getline(ss, item, ':'))
            if (!item.empty()) path.push_back(item);
    }
    return path;
}

void PluginRegistry::scan(const std::vector<std::string>& folders_or_files) {
    for (const auto& entry : folders_or_files) {
        std::error_code ec;
        std::vector<std::string> files;
        if (fs::is_directory(entry, ec)) {
            for (const auto& f : fs::directory_iterator(entry, ec))
                if (f.path().extension() == ".so") files.push_back(f.path().string());
            std::sort(files.begin(), files.end());
        } else if (fs::exists(entry, ec)) {
            files.push_back(entry);
        }
        for (const auto& f : files) {
            std::string reason;
            try_load(f, reason);
        }
    }
}

std::string PluginRegistry::refusal_of(PluginKind kind, const std::string& name) const {
    const std::string file = std::string("plexus_") + to_string(kind) + "_" + name + ".so";
    for (const auto& r : refused_)
        if (fs::path(r.path).filename() == file) return "the library " + r.path + " was refused: " + r.reason;
    return "";
}

const PluginDescriptor& PluginRegistry::load(const std::string& path) {
    std::string reason;
    const PluginDescriptor* d = try_load(path, reason);
    if (!d) throw Error("plugin " + path + " refused: " + reason, "`plexus plugins` lists what was found and why");
    return *d;
}

const PluginDescriptor* PluginRegistry::try_load(const std::string& path, std::string& reason) {
    register_operators();  // what plugins may call through LibTorch's dispatcher, before any runs
    std::error_code ec;
    const std::string canonical = fs::weakly_canonical(path, ec).string();
    for (const auto& l : loaded_)
        if (l.path == canonical) return l.descriptor;
    if (std::find(seen_.begin(), seen_.end(), canonical) != seen_.end()) {
        for (const auto& r : refused_)
            if (r.path == canonical) reason = r.reason;
        return nullptr;
    }
    seen_.push_back(canonical);
    auto refuse = [&](const std::string& why) -> const PluginDescriptor* {
        reason = why;
        refused_.push_back({canonical, why});
        return nullptr;
    };

    if (auto problem = elf_problem(canonical); !problem.empty())
        return refuse("not a loadable shared library: " + problem);
    boost::dll::shared_library lib;
    try {
        lib.load(canonical, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local);
    } catch (const std::exception& e) {
        return refuse(std::string("not a loadable shared library (") + e.what() + ")");
    }
    if (!lib.has("plexus_abi_fingerprint") || !lib.has("plexus_plugin"))
        return refuse(
            "not a plexus plugin: it does not export plexus_abi_fingerprint and plexus_plugin "
            "(build it with plexus_add_plugin() and PLEXUS_PLUGIN)");
    // Read the fingerprint as data, before any function of the library is called (dlopen has run
    // its static initializers only; the ELF check above keeps truncated files out of dlopen).
    const char* fingerprint = &lib.get<const char>("plexus_abi_fingerprint");
    if (std::strncmp(fingerprint, host_fingerprint(), 256) != 0)
        return refuse("ABI fingerprint mismatch: plugin was built for [" +
                      std::string(fingerprint, strnlen(fingerprint, 256)) + "], this host is [" + host_fingerprint() +
                      "]; rebuild the plugin against this SDK");
    const PluginDescriptor* d = nullptr;
    try {
        d = lib.get<const PluginDescriptor*()>("plexus_plugin")();
    } catch (const std::exception& e) { return refuse(std::string("its plexus_plugin() threw: ") + e.what()); }
    if (!d || d->name.empty()) return refuse("its descriptor has no name");
    const bool has_factory =
        (d->kind == PluginKind::Model && d->make_model) || (d->kind == PluginKind::Optimizer && d->make_optimizer) ||
        (d->kind == PluginKind::Strategy && d->make_strategy) || (d->kind == PluginKind::Comm && d->make_comm) ||
        (d->kind == PluginKind::Dataset && d->make_dataset);
    if (!has_factory)
        return refuse(std::string("its descriptor sets no make_") + to_string(d->kind) + " factory for its kind");
    if (const PluginDescriptor* other = find(d->kind, d->name))
        return refuse(std::string("a ") + to_string(d->kind) + " plugin named '" + d->name +
                      "' is already loaded from " + path_of(other) + " (the first one found wins)");
    keep_alive().push_back(std::move(lib));
    loaded_.push_back({canonical, d});
    return d;
}

const PluginDescriptor* PluginRegistry::find(PluginKind kind, const std::string& name) const {
    for (const auto& l : loaded_)
        if (l.descriptor->kind == kind && l.descriptor->name == name) return l.descriptor;
    return nullptr;
}

std::vector<std::string> PluginRegistry::names(PluginKind kind) const {
    std::vector<std::string> out;
    for (const auto& l : loaded_)
        if (l.descriptor->kind == kind) out.push_back(l.descriptor->name);
    std::sort(out.begin(), out.end());
    return out;
}

std::string PluginRegistry::path_of(const PluginDescriptor* d) const {
    for (const auto& l : loaded_)
        if (l.descriptor == d) return l.path;
    return "?";
}

}  // namespace plexus::host
