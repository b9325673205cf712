// The configuration reference in Markdown (`plexus plugins --markdown`): every host section and
// every loaded plugin with its keys, types, defaults, allowed values and documentation, generated
// from the schemas themselves so that it cannot drift from the code. docs/reference/config.md is
// its committed copy; the ctest `config_reference_is_current` fails when that copy is stale.
#pragma once

#include <string>

#include "runtime/loader.hpp"

namespace plexus::host {

std::string config_reference_markdown(const PluginRegistry& registry);

}  // namespace plexus::host
