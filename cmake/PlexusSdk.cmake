# The SDK: header-only, plus a generated build_config.hpp, plus LibTorch.
configure_file(${CMAKE_SOURCE_DIR}/cmake/build_config.hpp.in
               ${CMAKE_BINARY_DIR}/include/plexus/build_config.hpp @ONLY)

add_library(plexus_sdk INTERFACE)
add_library(plexus::sdk ALIAS plexus_sdk)
set_target_properties(plexus_sdk PROPERTIES EXPORT_NAME sdk)
target_include_directories(plexus_sdk INTERFACE
  $<BUILD_INTERFACE:${CMAKE_SOURCE_DIR}/sdk/include>
  $<BUILD_INTERFACE:${CMAKE_BINARY_DIR}/include>
  $<INSTALL_INTERFACE:include>)
# libstdc++ ahead of LibTorch: PyTorch's wheels export their own copies of std::filesystem
# functions, and the first library in the lookup order wins (remove_all from libtorch.so crashed).
target_link_libraries(plexus_sdk INTERFACE stdc++ ${TORCH_LIBRARIES})
target_compile_features(plexus_sdk INTERFACE cxx_std_17)

# One precompiled torch header for every target that includes torch (see the top -fPIC note).
add_library(plexus_pch OBJECT ${CMAKE_SOURCE_DIR}/cmake/pch.cpp)
target_link_libraries(plexus_pch PUBLIC plexus_sdk)
target_precompile_headers(plexus_pch PRIVATE <torch/torch.h>)

function(plexus_use_torch_pch target)
  target_precompile_headers(${target} REUSE_FROM plexus_pch)
endfunction()

install(DIRECTORY ${CMAKE_SOURCE_DIR}/sdk/include/plexus DESTINATION include)
install(FILES ${CMAKE_BINARY_DIR}/include/plexus/build_config.hpp DESTINATION include/plexus)
install(TARGETS plexus_sdk EXPORT plexusTargets)
install(EXPORT plexusTargets NAMESPACE plexus:: DESTINATION lib/cmake/plexus)
configure_file(${CMAKE_SOURCE_DIR}/cmake/plexusConfig.cmake.in
               ${CMAKE_BINARY_DIR}/plexusConfig.cmake @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/plexusConfig.cmake ${CMAKE_SOURCE_DIR}/cmake/PlexusPlugin.cmake
        DESTINATION lib/cmake/plexus)
# The build tree is a package too: find_package(plexus) with plexus_DIR=<build folder> builds a
# plugin against this checkout without installing it (headers from sdk/include, build_config.hpp
# from the build folder).
export(EXPORT plexusTargets NAMESPACE plexus:: FILE ${CMAKE_BINARY_DIR}/plexusTargets.cmake)
configure_file(${CMAKE_SOURCE_DIR}/cmake/PlexusPlugin.cmake ${CMAKE_BINARY_DIR}/PlexusPlugin.cmake COPYONLY)
