// `plexus new KIND NAME [DIR]`: a plugin folder that builds out of tree against the installed
// SDK (find_package(plexus)) and passes `plexus check` unchanged: CMakeLists.txt, NAME.cpp (the
// smallest correct plugin of that kind, to edit) and README.md (how to build, check and use it).
#pragma once

#include <string>
#include <vector>

namespace plexus::host {

// Writes the folder and returns the paths written. Throws plexus::Error for an unknown kind, a
// name that is not an identifier, or a folder that exists and is not empty.
std::vector<std::string> write_plugin_scaffold(const std::string& kind, const std::string& name,
                                               const std::string& dir);

}  // namespace plexus::host
