#!/usr/bin/env bash
# Builds plexus with AddressSanitizer and UndefinedBehaviorSanitizer (GCC) in build-asan/ and
# runs the unit tests under them: any out-of-bounds access, use after free, double free,
# undefined behaviour (overflow, bad shift, misaligned load, ...) fails the run.
#
#   scripts/sanitize.sh [CATCH_FILTER]     e.g. "[reliability]"; default: every CPU test
#
# Leak checking is off: LibTorch and OpenBLAS keep process-lifetime allocations by design, and
# LibTorch itself is not instrumented (its bugs would not show here; ours in its calls do).
# Slow: about 3 times the regular build and test time.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# [crash]: tests whose plugins crash or leak on purpose (under ASan a crash is its report, and
# its memory limit is the shadow memory's): they check the sweep, not the sanitizers.
filter=${1:-"~[gpu]~[crash]"}
build=build-asan
# The packages come with the regular set-up (scripts/setup.sh); this build needs nothing more.
dpkg-query -W -f='${Status}' libtorch-dev 2>/dev/null | grep -q "install ok installed" || scripts/setup.sh build
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
if [ ! -f "$build/build.ninja" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
    -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
    -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined"
fi
cmake --build "$build" -j "${PLEXUS_JOBS:-2}"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
cd "$build"
echo "sanitize: running the unit tests ($filter) under ASan + UBSan"
./tests/plexus_tests "$filter" --order decl
echo "sanitize: clean"
