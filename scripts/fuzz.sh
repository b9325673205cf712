#!/usr/bin/env bash
# Fuzzes the experiment loader (TOML, extends, --set, [grid], resolution against plugin schemas)
# with libFuzzer under AddressSanitizer and UndefinedBehaviorSanitizer, for a bounded time.
# Any crash, sanitizer report, exception other than a clear plexus error, or input slower than
# 5 s is a finding: libFuzzer stops, saves the input as build-fuzz/crash-* and this exits non-zero.
#
#   scripts/fuzz.sh [SECONDS]     default 60; prints the inputs tried and the time taken
#
# Seeds: every experiment under experiments/, the malformed corpus under tests/configs/, and
# tests/fuzz/seeds (extends chains, diamonds and cycles; every kind of grid axis). An input is up
# to four files cut at lines "#---" (f0.toml extends the others by those names).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
seconds=${1:-60}
out=build-fuzz

# clang and its fuzzer runtime, from Debian.
need=()
command -v clang++ >/dev/null || need+=(clang)
ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 || need+=(libclang-rt-dev)
if ((${#need[@]})); then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# The SDK's generated header comes from the regular build (scripts/setup.sh makes it).
build=${PLEXUS_BUILD_DIR:-build}
[ -f "$build/include/plexus/build_config.hpp" ] || scripts/setup.sh build
mkdir -p "$out/corpus" "$out/seeds"
# tests/fuzz/regressions: inputs that once found a bug (each runs first, under the sanitizers).
cp experiments/*.toml experiments/*/*.toml tests/configs/malformed/*.toml tests/fuzz/regressions/* tests/fuzz/seeds/* "$out/seeds/" 2>/dev/null || true
if [ ! -x "$out/fuzz_config" ] || [ -n "$(find host/config host/base tests/fuzz/fuzz_config.cpp -newer "$out/fuzz_config" 2>/dev/null)" ]; then
  echo "fuzz: building $out/fuzz_config (clang, libFuzzer, ASan, UBSan)"
  # NDEBUG as in the Release build plexus ships: TOML++ 3.3's own debug assertions (one fires
  # on a table header such as "[&x]") are not what a user runs; its error path is.
  clang++ -std=c++17 -O1 -g -DNDEBUG -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -Isdk/include -I"$build/include" -Ihost -I/usr/include/torch/csrc/api/include host/config/experiment.cpp host/config/faults.cpp host/config/host_settings.cpp host/base/text.cpp tests/fuzz/fuzz_config.cpp -o "$out/fuzz_config"
fi

echo "fuzz: $seconds s on the experiment loader; new inputs kept in $out/corpus"
log="$out/fuzz.log"
set +e
(cd "$out" && UBSAN_OPTIONS=print_stacktrace=1 ./fuzz_config -max_total_time="$seconds" -max_len=4096 -timeout=5 \
   -rss_limit_mb=2048 -print_final_stats=1 corpus seeds) >"$log" 2>&1
status=$?
set -e
runs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -1 || true)
grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$log" || true
if [ $status -ne 0 ]; then
  echo "fuzz: FINDING (exit $status); the log is $log:" >&2
  grep -E "ERROR|SUMMARY|runtime error|terminate|deadly|Test unit written" "$log" | head -20 >&2
  exit 1
fi
echo "fuzz: no finding: ${runs:-see $log}"
