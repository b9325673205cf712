# Run as `cmake -DSOURCES="a.cpp;b.cpp" -DSOURCE_DIR=... -DSTAMP=... -P check_test_names.cmake`
# before every build of plexus_tests, so a bad test name fails the build that adds it (a check
# at configure time alone would wait for the next fresh configure, on CI).
#
# catch_discover_tests splits a test name at ';' (a CMake list separator): each half would then
# match no test and "pass" without running anything. An unclosed '[' does the opposite: CMake does
# not split a list inside brackets, so every test after it merges into one name that matches
# nothing. A name starting with '-' reaches Catch as an option, and the test fails unrun.
foreach(_source IN LISTS SOURCES)
  file(READ "${SOURCE_DIR}/${_source}" _text)
  string(REGEX MATCH "TEST_CASE\\(\"[^\"\n]*;[^\"\n]*\"" _bad "${_text}")
  if(_bad)
    message(FATAL_ERROR "tests/${_source}: ${_bad}: a test name must not contain ';' (ctest would split it)")
  endif()
  string(REGEX MATCH "TEST_CASE\\(\"-[^\"\n]*\"" _bad "${_text}")
  if(_bad)
    message(FATAL_ERROR "tests/${_source}: ${_bad}: a test name must not start with '-' (Catch would read it as an option)")
  endif()
  string(REGEX MATCH "TEST_CASE\\(\"[^\"\n]*\\[[^]\"\n]*\"" _bad "${_text}")
  if(_bad)
    message(FATAL_ERROR "tests/${_source}: ${_bad}: a '[' in a test name needs its ']' (ctest would merge the tests after it)")
  endif()
endforeach()
file(TOUCH "${STAMP}")
