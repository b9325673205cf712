// A plugin stamped with another SDK's fingerprint, as if built against another LibTorch.
// The host must refuse it without calling plexus_plugin (which would abort the test).
#include <cstdlib>

#include <plexus/plugin.hpp>

extern "C" __attribute__((visibility("default"))) const char plexus_abi_fingerprint[] =
    "plexus-sdk 1; gcc 12; libstdc++ 12 cxx11-abi 1; libtorch 2.5; cuda on";

extern "C" __attribute__((visibility("default"))) const plexus::PluginDescriptor* plexus_plugin() {
    std::abort();  // never reached: the fingerprint check comes first
}
