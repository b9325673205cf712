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

template <typename T>
bool read_at(std::ifstream& in, uint64_t offset, T& out) {
    in.seekg(static_cast<std::streamoff>(offset));
    return static_cast<bool>(in.read(reinterpret_cast<char*>(&out), sizeof out));
}

// The C string a library exports as `symbol`, read from the file's dynamic symbol table and the
// section that holds it, without loading the library. Sets `problem` when it cannot be read.
std::string exported_string(const std::string& path, const std::string& symbol, std::string& problem) {
    std::ifstream in(path, std::ios::binary);
    Elf64_Ehdr eh{};
    if (!read_at(in, 0, eh)) return problem = "cannot be read", "";
    if (eh.e_shoff == 0 || eh.e_shentsize != sizeof(Elf64_Shdr))
        return problem = "it has no section headers, so its fingerprint cannot be read without loading it", "";
    std::vector<Elf64_Shdr> sections(eh.e_shnum);
    for (size_t i = 0; i < sections.size(); ++i)
        if (!read_at(in, eh.e_shoff + i * sizeof(Elf64_Shdr), sections[i])) return problem = "truncated sections", "";
    for (const auto& table : sections) {
        if (table.sh_type != SHT_DYNSYM || table.sh_link >= sections.size()) continue;
        const auto& names = sections[table.sh_link];
        for (uint64_t at = 0; at + sizeof(Elf64_Sym) <= table.sh_size; at += sizeof(Elf64_Sym)) {
            Elf64_Sym sym{};
            if (!read_at(in, table.sh_offset + at, sym)) return problem = "truncated symbol table", "";
            if (sym.st_name >= names.sh_size || sym.st_shndx == SHN_UNDEF || sym.st_shndx >= sections.size()) continue;
            std::string name(symbol.size() + 1, '\0');
            in.seekg(static_cast<std::streamoff>(names.sh_offset + sym.st_name));
            in.read(name.data(), static_cast<std::streamsize>(name.size()));
            if (!in || name.compare(0, symbol.size(), symbol) != 0 || name.back() != '\0') {
                in.clear();
                continue;
            }
            const auto& holder = sections[sym.st_shndx];
            if (holder.sh_type == SHT_NOBITS || sym.st_value < holder.sh_addr) break;
            std::string text(std::min<uint64_t>(sym.st_size, 4096), '\0');
            in.seekg(static_cast<std::streamoff>(holder.sh_offset + (sym.st_value - holder.sh_addr)));
            if (!in.read(text.data(), static_cast<std::streamsize>(text.size()))) return problem = "truncated data", "";
            return text.substr(0, text.find('\0'));
        }
    }
    problem =
        "not a plexus plugin: it does not export plexus_abi_fingerprint (build it with plexus_add_plugin() and "
        "PLEXUS_PLUGIN)";
    return "";
}

// plexus_<kind>_<name>.so, the name plexus_add_plugin() gives a plugin: its kind and name.
bool kind_and_name(const std::string& path, PluginKind& kind, std::string& name) {
    const std::string file = fs::path(path).filename().string();
    for (PluginKind k :
         {PluginKind::Model, PluginKind::Optimizer, PluginKind::Strategy, PluginKind::Comm, PluginKind::Dataset}) {
        const std::string prefix = std::string("plexus_") + to_string(k) + "_";
        if (file.size() > prefix.size() + 3 && file.rfind(prefix, 0) == 0 &&
            file.compare(file.size() - 3, 3, ".so") == 0) {
            kind = k;
            name = file.substr(prefix.size(), file.size() - prefix.size() - 3);
            return true;
        }
    }
    return false;
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
    std::lock_guard<std::recursive_mutex> lock(mutex_);
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
        for (const auto& f : files) add_candidate(f);
    }
}

void PluginRegistry::add_candidate(const std::string& path) {
    std::error_code ec;
    const std::string canonical = fs::weakly_canonical(path, ec).string();
    if (std::find(seen_.begin(), seen_.end(), canonical) != seen_.end()) return;
    Candidate c{canonical, PluginKind::Model, ""};
    std::string problem = checked_file(canonical);
    if (problem.empty() && !kind_and_name(canonical, c.kind, c.name))
        problem =
            "not named plexus_<kind>_<name>.so, so its plugin cannot be known without loading it "
            "(plexus_add_plugin() names it so)";
    for (const auto& other : candidates_)
        if (problem.empty() && other.kind == c.kind && other.name == c.name)
            problem = std::string("a ") + to_string(c.kind) + " plugin named '" + c.name + "' was found first in " +
                      other.path + " (the first one found wins)";
    seen_.push_back(canonical);
    if (!problem.empty()) {
        refused_.push_back({canonical, problem});
        return;
    }
    candidates_.push_back(std::move(c));
}

std::string PluginRegistry::checked_file(const std::string& path) {
    if (auto problem = elf_problem(path); !problem.empty()) return "not a loadable shared library: " + problem;
    std::string problem;
    const std::string fingerprint = exported_string(path, "plexus_abi_fingerprint", problem);
    if (!problem.empty()) return problem;
    if (fingerprint != host_fingerprint())
        return "ABI fingerprint mismatch: plugin was built for [" + fingerprint + "], this host is [" +
               host_fingerprint() + "]; rebuild the plugin against this SDK";
    return "";
}

void PluginRegistry::load_all() {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    for (const auto& c : std::vector<Candidate>(candidates_)) find(c.kind, c.name);
}

std::string PluginRegistry::refusal_of(PluginKind kind, const std::string& name) const {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    const std::string file = std::string("plexus_") + to_string(kind) + "_" + name + ".so";
    // The newest first: a library refused when loaded, rather than a shadowed copy found later.
    for (auto r = refused_.rbegin(); r != refused_.rend(); ++r)
        if (fs::path(r->path).filename() == file) return "the library " + r->path + " was refused: " + r->reason;
    return "";
}

const PluginDescriptor& PluginRegistry::load(const std::string& path) {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    std::string reason;
    const PluginDescriptor* d = try_load(path, reason);
    if (!d) throw Error("plugin " + path + " refused: " + reason, "`plexus plugins` lists what was found and why");
    return *d;
}

// Only a file that passed checked_file() reaches dlopen, which runs the library's static
// initializers: no code of a library runs before its fingerprint is known to match.
const PluginDescriptor* PluginRegistry::try_load(const std::string& path, std::string& reason) {
    register_operators();  // what plugins may call through LibTorch's dispatcher, before any runs
    std::error_code ec;
    const std::string canonical = fs::weakly_canonical(path, ec).string();
    for (const auto& l : loaded_)
        if (l.path == canonical) return l.descriptor;
    for (const auto& r : refused_)
        if (r.path == canonical) return reason = r.reason, nullptr;
    if (std::find(seen_.begin(), seen_.end(), canonical) == seen_.end()) seen_.push_back(canonical);
    auto refuse = [&](const std::string& why) -> const PluginDescriptor* {
        reason = why;
        refused_.push_back({canonical, why});
        return nullptr;
    };

    if (auto problem = checked_file(canonical); !problem.empty()) return refuse(problem);
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
    PluginKind file_kind;
    std::string file_name;
    if (kind_and_name(canonical, file_kind, file_name) && (file_kind != d->kind || file_name != d->name))
        return refuse(std::string("its descriptor is the ") + to_string(d->kind) + " plugin '" + d->name +
                      "', but the file is named for the " + to_string(file_kind) + " plugin '" + file_name + "'");
    for (const auto& other : loaded_)
        if (other.descriptor->kind == d->kind && other.descriptor->name == d->name)
            return refuse(std::string("a ") + to_string(d->kind) + " plugin named '" + d->name +
                          "' is already loaded from " + other.path + " (the first one found wins)");
    keep_alive().push_back(std::move(lib));
    loaded_.push_back({canonical, d});
    return d;
}

const PluginDescriptor* PluginRegistry::find(PluginKind kind, const std::string& name) {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    for (const auto& l : loaded_)
        if (l.descriptor->kind == kind && l.descriptor->name == name) return l.descriptor;
    for (const auto& c : candidates_)
        if (c.kind == kind && c.name == name) {
            std::string reason;
            return try_load(c.path, reason);
        }
    return nullptr;
}

std::vector<std::string> PluginRegistry::names(PluginKind kind) const {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    std::vector<std::string> out;
    for (const auto& l : loaded_)
        if (l.descriptor->kind == kind) out.push_back(l.descriptor->name);
    for (const auto& c : candidates_)
        if (c.kind == kind && std::find(out.begin(), out.end(), c.name) == out.end() &&
            std::none_of(refused_.begin(), refused_.end(), [&](const RefusedPlugin& r) { return r.path == c.path; }))
            out.push_back(c.name);
    std::sort(out.begin(), out.end());
    return out;
}

std::string PluginRegistry::path_of(const PluginDescriptor* d) const {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    for (const auto& l : loaded_)
        if (l.descriptor == d) return l.path;
    return "?";
}

}  // namespace plexus::host
