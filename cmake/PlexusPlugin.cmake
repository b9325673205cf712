# plexus_add_plugin(NAME <name> KIND <model|optimizer|strategy|comm|dataset> SOURCES <files...>
#                   [OUTPUT_DIR <dir>] [LIBRARIES <libs...>] [NO_INSTALL])
#
# `cmake --install` puts the plugin in <prefix>/lib/plexus/plugins (in-tree: beside the host's
# plugins); point PLEXUS_PLUGIN_PATH at that folder to use an out-of-tree one. NO_INSTALL keeps
# a plugin out of the install (the test suite's). find_package(plexus) makes Release the default
# build type: a plugin runs inside the host, and an unoptimized one is several times slower.
#
# Builds one plugin as a MODULE library named plexus_<kind>_<name>.so with hidden visibility
# (only plexus_abi_fingerprint and plexus_plugin are exported, by PLEXUS_PLUGIN), linked
# against the SDK and therefore the same LibTorch as the host. Used in-tree and, after
# `cmake --install`, by out-of-tree plugins through find_package(plexus).
function(plexus_add_plugin)
  cmake_parse_arguments(P "NO_INSTALL" "NAME;KIND;OUTPUT_DIR" "SOURCES;LIBRARIES" ${ARGN})
  if(NOT P_NAME OR NOT P_KIND OR NOT P_SOURCES)
    message(FATAL_ERROR "plexus_add_plugin: NAME, KIND and SOURCES are required")
  endif()
  set(target plexus_${P_KIND}_${P_NAME})
  add_library(${target} MODULE ${P_SOURCES})
  if(TARGET plexus::sdk)
    target_link_libraries(${target} PRIVATE plexus::sdk ${P_LIBRARIES})
  else()
    target_link_libraries(${target} PRIVATE plexus_sdk ${P_LIBRARIES})
  endif()
  set_target_properties(${target} PROPERTIES
    PREFIX ""
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  if(P_OUTPUT_DIR)
    set_target_properties(${target} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${P_OUTPUT_DIR})
  elseif(DEFINED PLEXUS_PLUGIN_OUTPUT_DIR)
    set_target_properties(${target} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${PLEXUS_PLUGIN_OUTPUT_DIR})
  endif()
  if(NOT P_NO_INSTALL)
    if(DEFINED PLEXUS_INSTALL_PLUGIN_DIR)
      install(TARGETS ${target} LIBRARY DESTINATION ${PLEXUS_INSTALL_PLUGIN_DIR})
    else()
      install(TARGETS ${target} LIBRARY DESTINATION lib/plexus/plugins)
    endif()
  endif()
  if(COMMAND plexus_use_torch_pch)
    plexus_use_torch_pch(${target})
  endif()
  set(PLEXUS_LAST_PLUGIN_TARGET ${target} PARENT_SCOPE)
endfunction()
