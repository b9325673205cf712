#!/usr/bin/env bash
# bench/sim_validate.sh: does the simulator predict this machine? DDP on the quickstart GPT, 2 and
# 4 real Gloo processes, against the simulated cluster configured to model them:
#   - compute: device "measured" (this CPU's per-core matmul peak) times an efficiency calibrated
#     once, on ONE single-rank, single-thread run of the same model (no communication in it);
#     a rank gets 2/N of the cores (N processes share this machine's cores);
#   - network: latency and bandwidth fitted by `plexus bench network --ranks N`.
# The communication, its overlap with backward and the sharing of cores are then predicted, not
# fitted. Prints measured and predicted step times and their ratio.
# Usage: bench/sim_validate.sh [BUILD_DIR] [STEPS]
set -euo pipefail
build=${1:-build}
steps=${2:-40}
plexus="$build/plexus"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
db="$work/v.db"
cores=$(nproc)
common=(--db "$db" --progress none --set train.steps="$steps" --set train.eval_every=0 --set train.eval_batches=1
        --set train.log_every=10)

quiet() {  # runs a command, showing its output only if it fails
  "$@" >"$work/log" 2>&1 || { cat "$work/log"; exit 1; }
}

summary() {  # summary KEY: rank 0's value in the newest run
  sqlite3 "$db" "SELECT value FROM summary WHERE rank = 0 AND key = '$1' AND run_id = (SELECT MAX(id) FROM run)"
}

echo "calibrating: one rank, one thread, $steps steps of the quickstart GPT..."
quiet "$plexus" run experiments/quickstart.toml "${common[@]}" --set train.threads=1
tps=$(summary tokens_per_s)
flops=$(summary flops_per_token)
core_peak=$(awk -F'\t' '/ \| 1 thread\(s\) \|/ {print $2}' "${XDG_CACHE_HOME:-$HOME/.cache}/plexus/peak.txt" | tail -1)
efficiency=$(awk -v t="$tps" -v f="$flops" -v p="$core_peak" 'BEGIN {printf "%.4f", t * f / p}')
echo "  $(printf %.0f "$tps") tok/s on one core: efficiency $efficiency of the per-core peak $(awk -v p="$core_peak" 'BEGIN {printf "%.1f", p / 1e9}') GFLOP/s"

printf "\n%6s %14s %14s %8s %18s %18s\n" ranks "measured ms" "predicted ms" ratio "exposed comm real" "exposed comm sim"
for n in 2 4; do
  fit=$("$plexus" bench network --ranks "$n" | awk '/^\[sim\] settings/ {print $4, $6}')
  read -r lat bw <<<"$fit"
  quiet "$plexus" run experiments/quickstart.toml "${common[@]}" --set strategy.name=ddp --set launch.mode=local \
    --set launch.ranks="$n"
  tokens=$(awk -v t="$(summary tokens)" -v s="$steps" 'BEGIN {print t / s}')
  real_ms=$(awk -v t="$(summary tokens_per_s)" -v k="$tokens" 'BEGIN {printf "%.1f", 1000 * k / t}')
  real_exposed=$(awk -v e="$(summary comm_exposed_time)" -v w="$(summary wall_time)" 'BEGIN {printf "%.1f%%", 100 * e / w}')
  share=$(awk -v c="$cores" -v n="$n" 'BEGIN {v = c / n; if (v > 1) v = 1; printf "%.4f", v}')
  quiet "$plexus" run experiments/quickstart.toml "${common[@]}" --set strategy.name=ddp --set launch.mode=sim \
    --set launch.ranks="$n" --set sim.device=measured --set sim.cores="$share" --set sim.efficiency="$efficiency" \
    --set "$lat" --set "$bw"
  sim_ms=$(awk -v t="$(summary tokens_per_s)" -v k="$tokens" 'BEGIN {printf "%.1f", 1000 * k / t}')
  sim_exposed=$(awk -v e="$(summary comm_exposed_time)" -v w="$(summary sim_time)" 'BEGIN {printf "%.1f%%", 100 * e / w}')
  ratio=$(awk -v a="$sim_ms" -v b="$real_ms" 'BEGIN {printf "%.3f", a / b}')
  printf "%6s %14s %14s %8s %18s %18s   (%s, %s)\n" "$n" "$real_ms" "$sim_ms" "$ratio" "$real_exposed" "$sim_exposed" "$lat" "$bw"
done
