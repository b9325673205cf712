#!/usr/bin/env bash
# plexus set-up: installs the Debian packages plexus needs, configures and builds it.
# Idempotent: with everything installed and built, it only checks and returns in seconds.
#
#   scripts/setup.sh              install + build
#   scripts/setup.sh quickstart   install + build, then train the quickstart experiment
#   scripts/setup.sh test         install + build, then run the whole test suite (ctest)
#
# Environment: PLEXUS_BUILD_DIR (default build), PLEXUS_JOBS (default 2).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build_dir=${PLEXUS_BUILD_DIR:-build}
jobs=${PLEXUS_JOBS:-2}
action=${1:-build}
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

case "$action" in
  build|quickstart|test) ;;
  *) echo "usage: scripts/setup.sh [build|quickstart|test]" >&2; exit 2 ;;
esac

# 1. System packages (Debian 12), only those missing.
mapfile -t packages < <(grep -v '^\s*#' scripts/packages.txt | sed '/^\s*$/d')
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# 2. Node.js, for the report's charting library (Chart.js, inlined into `plexus report` pages at
#    build time) and the report's browser test (playwright-core driving Debian's chromium).
#    Versions are pinned in host/lab/report/package-lock.json; npm ci runs only when they changed.
if ! command -v npm >/dev/null; then
  echo "setup: installing nodejs npm"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends nodejs npm
fi
reconfigure=0
if [ ! -f host/lab/report/node_modules/.package-lock.json ] ||
   [ host/lab/report/package-lock.json -nt host/lab/report/node_modules/.package-lock.json ]; then
  echo "setup: npm ci in host/lab/report"
  (cd host/lab/report && npm ci --no-audit --no-fund --loglevel=error)
  reconfigure=1
fi

# 3. OpenBLAS's OpenMP build as the system BLAS: never the reference BLAS (a GPT step is ~27x
#    slower), and not the pthreads build either, whose own thread pool fights LibTorch's for the
#    cores (set_compute_threads in host/device/peak.cpp has the measurements). Both builds install
#    as alternatives and the pthreads one has the higher priority, so the choice is made here.
openmp=/usr/lib/x86_64-linux-gnu/openblas-openmp
for lib in libblas.so.3 liblapack.so.3 libopenblas.so.0; do
  if [ -e "$openmp/$lib" ] && [ "$(readlink -f "/usr/lib/x86_64-linux-gnu/$lib")" != "$(readlink -f "$openmp/$lib")" ]; then
    echo "setup: selecting OpenBLAS's OpenMP build for $lib"
    $sudo update-alternatives --set "$lib-x86_64-linux-gnu" "$openmp/$lib"
  fi
done
blas=$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || true)
case "$blas" in
  *openblas*) ;;
  *) echo "setup: warning: libblas.so.3 is $blas, not OpenBLAS; run: update-alternatives --config libblas.so.3-x86_64-linux-gnu" >&2 ;;
esac

# 4. Configure once (again when the npm packages changed), then build (a no-op when nothing changed).
if [ ! -f "$build_dir/build.ninja" ] || [ "$reconfigure" = 1 ]; then
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$build_dir" -j "$jobs"

case "$action" in
  quickstart) exec "$build_dir/plexus" run experiments/quickstart.toml ;;
  test) cd "$build_dir" && exec ctest --output-on-failure -j2 ;;  # 13 minutes on 2 cores, 18 with -j1
esac
