// Errors from inside a plugin name the plugin and the call. Every object the host builds from a
// plugin is handed out wrapped: the wrapper forwards each call and rethrows what it throws as
//   comm scheme 'powersgd', state(): Expected a proper Tensor but got None
// (a plexus::Error keeps its hint). PeerLost passes unchanged: it is the transport's word on a
// failed rank, which strategies that tolerate one catch by type. The wrappers cost a virtual call
// and a try block per call, nothing on the path that does not throw.
#pragma once

#include <memory>
#include <string>

#include <plexus/plexus.hpp>

namespace plexus::host {

// "strategy 'ddp'", "comm scheme 'powersgd'", ...: how errors name a plugin.
std::string plugin_label(const PluginDescriptor& d);

// Runs `body`; what it throws comes back as an Error that starts with "<who>, <call>: ".
template <class Body>
decltype(auto) call_plugin(const std::string& who, const char* call, Body&& body);

std::unique_ptr<Strategy> named(const PluginDescriptor& d, std::unique_ptr<Strategy> inner);
std::unique_ptr<Optimizer> named(const PluginDescriptor& d, std::unique_ptr<Optimizer> inner);
std::unique_ptr<CommScheme> named(const PluginDescriptor& d, std::unique_ptr<CommScheme> inner);
std::shared_ptr<Dataset> named(const PluginDescriptor& d, std::shared_ptr<Dataset> inner);

[[noreturn]] void rethrow_named(const std::string& who, const char* call);

template <class Body>
decltype(auto) call_plugin(const std::string& who, const char* call, Body&& body) {
    try {
        return body();
    } catch (...) { rethrow_named(who, call); }
}

}  // namespace plexus::host
