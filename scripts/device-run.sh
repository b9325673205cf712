#!/usr/bin/env bash
# The CUDA build of plexus on a GPU machine, its GPU tests and the GPU benchmark, with every log
# and result in one folder. Made for a machine that has CMake, ninja, nvcc and PyTorch 2.x (whose
# LibTorch plexus builds against) but no package registry:
#
#   here (Debian, with its archive):  scripts/device-run.sh --fetch
#       downloads the small dependencies that machine lacks (TOML++, SQLite's headers, Catch2 2,
#       Gloo's headers, which PyTorch's wheels leave out)
#       as Debian packages into .device-deps/ (ignored by git; carry it along)
#   there:                            scripts/device-run.sh OUT_DIR [BENCH_SIZES]
#       unpacks them under /tmp, configures and builds build-gpu/, runs the [gpu] tests, the GPU
#       benchmark (bench/gpt_step_gpu.sh) and, while time is left, the CPU test suite against
#       that LibTorch. Aims to finish in under 8 minutes on 16 cores. Prints a summary last.
#   Environment: DEVICE_RUN_BENCH=0 (build and test only), DEVICE_RUN_BUDGET_S (default 450),
#   DEVICE_RUN_FIRST (a ctest -R pattern run first, one test at a time, with its output).
#   OUT_DIR ends up with about a dozen files: where only a few come back, tar it.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
debs=$root/.device-deps
packages="catch2 libtomlplusplus-dev libtomlplusplus3 libsqlite3-dev libsqlite3-0 libgloo-dev"

if [ "${1:-}" = "--fetch" ]; then
  mkdir -p "$debs"
  (cd "$debs" && rm -f ./*.deb && apt-get download $packages) || { echo "apt-get download failed" >&2; exit 1; }
  ls -la "$debs"
  exit 0
fi

out=${1:?usage: scripts/device-run.sh OUT_DIR [BENCH_SIZES] | --fetch}
sizes=${2:-"125M 350M 1.3B llama-1.1B"}
budget=${DEVICE_RUN_BUDGET_S:-450}  # seconds this script may take before optional steps are skipped
mkdir -p "$out"
start=$SECONDS
say() { echo "[device-run +$((SECONDS - start))s] $*" | tee -a "$out/summary.txt"; }
left() { echo $((budget - (SECONDS - start))); }

ls "$debs"/*.deb > /dev/null 2>&1 || { echo "no packages in $debs: run scripts/device-run.sh --fetch where apt works" >&2; exit 1; }
deps=/tmp/plexus-deps
mkdir -p "$deps"
for f in "$debs"/*.deb; do dpkg -x "$f" "$deps"; done
export LD_LIBRARY_PATH="$deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="/usr/local/cuda/bin:$PATH"
python=${PLEXUS_PYTHON:-python3}
torch_cmake=$($python -c 'import torch; print(torch.utils.cmake_prefix_path)') || { echo "no PyTorch in $python" >&2; exit 1; }
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
say "GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1); torch $($python -c 'import torch; print(torch.__version__)')"

# torch.compile's first compilation takes a minute per model: fill its cache now, on the idle
# GPU, while the CPUs build plexus (the timed run later finds its kernels compiled).
# At most 4 minutes in all: the build does not wait for it.
bench=${DEVICE_RUN_BENCH:-1}  # 0: build and test only (a rerun on the same budget)
[ "$bench" = 1 ] && (
  for size in $sizes; do
    remaining=$((240 - (SECONDS - start)))
    [ $remaining -gt 10 ] || break
    timeout $remaining nice -n 10 "$root/bench/gpt_step_gpu.sh" --prewarm "$size"
  done
) > "$out/prewarm.log" 2>&1 &
prewarm=$!

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
if cmake -S "$root" -B "$root/build-gpu" -G Ninja -DCMAKE_BUILD_TYPE=Release \
     -DCMAKE_PREFIX_PATH="$torch_cmake;$deps/usr" -DCUDAToolkit_ROOT=/usr/local/cuda \
     -DCMAKE_POLICY_VERSION_MINIMUM=3.5 > "$out/configure.log" 2>&1; then
  say "configured: $(grep 'plexus: LibTorch' "$out/configure.log")"
else
  say "configure FAILED (configure.log)"; tail -30 "$out/configure.log"; kill $prewarm 2>/dev/null; exit 1
fi
targets="plexus plexus_tests"; [ "$bench" = 1 ] && targets="$targets gpt_step loss_bench"
if ninja -C "$root/build-gpu" -k 0 $targets > "$out/build.log" 2>&1; then
  say "built"
else
  say "build FAILED (build.log): $(grep -c 'error:' "$out/build.log") errors"
  grep -m 20 -A3 'error:' "$out/build.log"
fi
[ "$bench" = 1 ] && wait $prewarm && say "torch.compile prewarm done: $(grep -c tokens_per_s "$out/prewarm.log") of $(echo $sizes | wc -w) sizes"

if [ -x "$root/build-gpu/tests/plexus_tests" ]; then
  (cd "$root/build-gpu/tests" && timeout 240 ./plexus_tests "[gpu]" -r compact) > "$out/gpu-tests.log" 2>&1
  say "GPU tests: $(grep -v '^[[:space:]]*$' "$out/gpu-tests.log" | tail -1)"
fi
# DEVICE_RUN_FIRST: a ctest -R pattern of tests to run before the rest, one at a time (tests
# that failed on an earlier device run: their output is what the next session needs).
first=${DEVICE_RUN_FIRST:-}
if [ -n "$first" ] && [ -x "$root/build-gpu/tests/plexus_tests" ] && [ "$(left)" -gt 30 ]; then
  (cd "$root/build-gpu" && timeout 180 ctest --timeout 120 --output-on-failure -R "$first") > "$out/first-tests.log" 2>&1
  say "tests first ($first): $(grep -E 'tests passed|tests failed' "$out/first-tests.log" | tail -1)"
fi
if [ "$bench" = 1 ] && [ -x "$root/build-gpu/bench/gpt_step" ]; then
  "$root/bench/gpt_step_gpu.sh" "$root/build-gpu" "$out/gpu-bench.md" "$sizes" > "$out/gpu-bench.log" 2>&1
  say "GPU benchmark:"
  cat "$out/gpu-bench.md" | tee -a "$out/summary.txt"
fi
# The loss alone at the 1.3B step's logits (8 x 2048 tokens, vocabulary 50304, bf16).
if [ "$bench" = 1 ] && [ -x "$root/build-gpu/bench/loss" ] && [ "$(left)" -gt 60 ]; then
  timeout 60 "$root/build-gpu/bench/loss" --device cuda --dtype bf16 --rows 16384 --vocab 50304 --rounds 5 > "$out/loss-bench.txt" 2>&1
  say "loss bench: $(grep -m1 'time plexus' "$out/loss-bench.txt")"
fi
# Where the largest step's GPU time goes, in eager PyTorch and in plexus, kernel by kernel (what
# a faster plexus step has to win back).
last=${sizes##* }
if [ "$(left)" -gt 150 ]; then
  timeout 150 "$root/bench/gpt_step_gpu.sh" --profile "$last" "$root/build-gpu" > "$out/profile-$last.txt" 2>&1
  say "profile of the $last step, eager then plexus:"
  grep '^families' "$out/profile-$last.txt" | tee -a "$out/summary.txt"
fi
# The CPU suite against this LibTorch (2.x), in the time that is left. Four tests at a time: the
# suite's runs start several threads each, and more at once oversubscribe even 16 cores (the
# launcher's timeouts then fire).
if [ -x "$root/build-gpu/tests/plexus_tests" ] && [ "$(left)" -gt 60 ]; then
  (cd "$root/build-gpu" && timeout "$(left)" ctest -j 4 --timeout 120 --output-on-failure -E "out_of_tree|report_renders|fuzz" ) > "$out/cpu-tests.log" 2>&1
  say "CPU suite on this LibTorch: $(grep -E 'tests passed|tests failed' "$out/cpu-tests.log" | tail -1)"
  grep -E '\*\*\*Failed|\*\*\*Timeout|Exception' "$out/cpu-tests.log" | head -20 | tee -a "$out/summary.txt"
fi
say "done"
