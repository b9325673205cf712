// plexus/abi.hpp: the ABI fingerprint stamped into every plugin and checked by the host.
//
// A plugin built with another compiler, another C++ standard library ABI, another LibTorch or
// with CUDA switched differently would crash inside the host in ways that are hard to trace.
// So every plugin exports its fingerprint as a plain C string (symbol plexus_abi_fingerprint),
// and the host compares it with its own before it calls any function of the library (loading
// it runs its static initializers: keep those trivial in a plugin).
// Bump PLEXUS_SDK_ABI_VERSION whenever a class in these headers changes layout or virtuals, and
// say here what changed:
//   7  ConfigKey carries choices and a range (one_of, at_least, at_most, between);
//      PluginDescriptor::extras, where optional capabilities go without a further bump
//   6  (earlier history: the repository's log of sdk/include/plexus/)
#pragma once

#include <torch/version.h>

#include "plexus/build_config.hpp"

#define PLEXUS_SDK_ABI_VERSION 7

#define PLEXUS_STR_(x) #x
#define PLEXUS_STR(x) PLEXUS_STR_(x)

#if defined(__clang__)
#define PLEXUS_COMPILER_ID "clang " PLEXUS_STR(__clang_major__)
#elif defined(__GNUC__)
#define PLEXUS_COMPILER_ID "gcc " PLEXUS_STR(__GNUC__)
#else
#define PLEXUS_COMPILER_ID "unknown-compiler"
#endif

#if defined(_GLIBCXX_RELEASE)
#define PLEXUS_STDLIB_ID "libstdc++ " PLEXUS_STR(_GLIBCXX_RELEASE) " cxx11-abi " PLEXUS_STR(_GLIBCXX_USE_CXX11_ABI)
#elif defined(_LIBCPP_VERSION)
#define PLEXUS_STDLIB_ID "libc++ " PLEXUS_STR(_LIBCPP_VERSION)
#else
#define PLEXUS_STDLIB_ID "unknown-stdlib"
#endif

#if PLEXUS_WITH_CUDA
#define PLEXUS_CUDA_ID "cuda on"
#else
#define PLEXUS_CUDA_ID "cuda off"
#endif

// e.g. "plexus-sdk 6; gcc 12; libstdc++ 12 cxx11-abi 1; libtorch 1.13; cuda off"
#define PLEXUS_ABI_FINGERPRINT                                                                                     \
    "plexus-sdk " PLEXUS_STR(PLEXUS_SDK_ABI_VERSION) "; " PLEXUS_COMPILER_ID "; " PLEXUS_STDLIB_ID                 \
                                                     "; libtorch " PLEXUS_STR(TORCH_VERSION_MAJOR) "." PLEXUS_STR( \
                                                         TORCH_VERSION_MINOR) "; " PLEXUS_CUDA_ID
