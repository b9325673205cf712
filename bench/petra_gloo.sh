#!/usr/bin/env bash
# bench/petra_gloo.sh: PETRA for real on local Gloo processes (one stage each) against backprop on
# one process and the GPipe / 1F1B pipelines and delayed gradients over the same stages: the
# reversible GPT of experiments/petra.toml, the same batches of 8 x 64 tokens, the same number of
# them. Prints per method: job tokens/s (wall clock), the busiest stage's peak tensor memory, the
# communication time each stage was blocked on (rank 0), the final eval loss; then each method's
# throughput as a ratio to backprop's, measured in this run. On a machine with fewer cores than
# stages the stages share cores, so the ratios show the cost of the extra work, not a speed-up.
# Usage: bench/petra_gloo.sh [BUILD_DIR] [STAGES] [STEPS]
set -euo pipefail
build=${1:-build}
stages=${2:-3}
steps=${3:-150}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
db="$work/p.db"
# The model and data of experiments/petra.toml, without its grid.
cat >"$work/petra.toml" <<TOML
extends = "$PWD/experiments/quickstart.toml"
name = "petra_gloo"
[model]
name = "revgpt"
n_layer = 6
d_model = 64
n_head = 4
[optimizer]
name = "adamw"
lr = 1e-3
weight_decay = 0.1
[train]
batch_size = 8
seq_len = 64
warmup_tokens = 4096
eval_batches = 8
threads = 1
TOML
common=(--db "$db" --progress none --set launch.mode=local --set train.steps="$steps" --set train.eval_every=0
        --set train.log_every=50)

value() {  # value KEY: rank 0's summary in the newest run
  sqlite3 "$db" "SELECT value FROM summary WHERE key = '$1' AND rank = 0 AND run_id = (SELECT MAX(id) FROM run)"
}
most() {  # most KEY: the largest over ranks in the newest run
  sqlite3 "$db" "SELECT MAX(value) FROM summary WHERE key = '$1' AND run_id = (SELECT MAX(id) FROM run)"
}
declare -A tps
run() {  # run LABEL RANKS SETTINGS...
  local label=$1 ranks=$2
  shift 2
  "$build/plexus" run "$work/petra.toml" "${common[@]}" --set launch.ranks="$ranks" "$@" >"$work/log" 2>&1 ||
    { cat "$work/log"; exit 1; }
  local t
  t=$(awk -v t="$(value tokens_per_s)" -v r="$ranks" 'BEGIN {print t * r}')
  tps[$label]=$t
  printf "%-18s %6s %12.0f %14.1f %12.3f s %9.4f\n" "$label" "$ranks" "$t" "$(awk -v b="$(most peak_tensor_bytes)" 'BEGIN {print b / 1e6}')" \
    "$(value comm_exposed_time)" "$(value final_eval_loss)"
}

printf "%-18s %6s %12s %14s %14s %9s\n" method ranks "job tok/s" "peak MB/stage" "exposed comm" "eval"
run backprop 1 --set strategy.name=single
run gpipe "$stages" --set strategy.name=pipeline --set strategy.schedule=gpipe --set strategy.micro_batches=4
run 1f1b "$stages" --set strategy.name=pipeline --set strategy.schedule=1f1b --set strategy.micro_batches=4
run delayed "$stages" --set strategy.name=petra --set strategy.method=delayed
run petra "$stages" --set strategy.name=petra
for m in gpipe 1f1b delayed petra; do
  awk -v a="${tps[$m]}" -v b="${tps[backprop]}" -v m="$m" 'BEGIN {printf "%s / backprop: throughput %.2f\n", m, a / b}'
done
