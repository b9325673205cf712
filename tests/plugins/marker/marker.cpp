// A model plugin whose static initializer leaves a mark: it appends its name to the file that
// PLEXUS_TEST_MARKER names, when the library is loaded (dlopen runs it, before any check that
// needs a function of the library). tests/test_loader.cpp uses it to see which libraries a
// command loaded. Built twice: as the plugin `marker`, and, with MARKER_BAD_FINGERPRINT, as
// `marker_bad`, stamped with another SDK's fingerprint.
#include <cstdio>
#include <cstdlib>

#include <plexus/plugin.hpp>

#ifdef MARKER_BAD_FINGERPRINT
#define MARKER_NAME "marker_bad"
#else
#define MARKER_NAME "marker"
#endif

namespace {

struct LeaveMark {
    LeaveMark() {
        if (const char* path = std::getenv("PLEXUS_TEST_MARKER"))
            if (FILE* f = std::fopen(path, "a")) {
                std::fputs(MARKER_NAME "\n", f);
                std::fclose(f);
            }
    }
} leave_mark;

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = MARKER_NAME;
    d.kind = plexus::PluginKind::Model;
    d.version = "0.1";
    d.summary = "test plugin: marks a file when its library is loaded";
    d.make_model = [](const plexus::Config&, plexus::RunContext&) -> std::shared_ptr<plexus::Model> {
        throw plexus::Error("the marker plugin builds no model", "it exists to test plugin loading");
    };
    return d;
}

}  // namespace

#ifdef MARKER_BAD_FINGERPRINT
extern "C" __attribute__((visibility("default"))) const char plexus_abi_fingerprint[] =
    "plexus-sdk 1; gcc 12; libstdc++ 12 cxx11-abi 1; libtorch 2.5; cuda on";
extern "C" __attribute__((visibility("default"))) const plexus::PluginDescriptor* plexus_plugin() {
    static const plexus::PluginDescriptor descriptor = describe();
    return &descriptor;
}
#else
PLEXUS_PLUGIN(describe)
#endif
