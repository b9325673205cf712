#!/usr/bin/env bash
# bench/baselines.sh: the standard strategies on the same model and global batch, side by side:
# single, DDP, ZeRO-1/2/3, tensor parallel, 1F1B pipeline, on 2 and 4 local Gloo processes (the
# quickstart GPT, global batch 32 x 64 tokens). Prints job tokens/s, MFU, peak RSS per rank and
# the training state per rank (parameters, gradients, optimizer), measured in this run.
# Usage: bench/baselines.sh [BUILD_DIR] [STEPS]
set -euo pipefail
build=${1:-build}
steps=${2:-30}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
db="$work/b.db"
global=32
common=(--db "$db" --progress none --set train.steps="$steps" --set train.eval_every=0 --set train.eval_batches=1
        --set train.log_every=10)

summary() {  # summary KEY [AGG]: rank 0's value (or AGG over ranks) in the newest run
  sqlite3 "$db" "SELECT ${2:-MAX}(value) FROM summary WHERE key = '$1' AND run_id = (SELECT MAX(id) FROM run)${3:-}"
}
state_bytes() {
  sqlite3 "$db" "SELECT value FROM metric WHERE key = 'state_bytes' AND rank = 0 AND run_id = (SELECT MAX(id) FROM run)
                 ORDER BY step DESC LIMIT 1"
}
run() {  # run LABEL RANKS SETTINGS...
  local label=$1 ranks=$2
  shift 2
  local mode=(--set launch.mode=local --set launch.ranks="$ranks")
  [ "$ranks" = 1 ] && mode=(--set launch.mode=single)
  "$build/plexus" run experiments/quickstart.toml "${common[@]}" "${mode[@]}" "$@" >"$work/log" 2>&1 ||
    { cat "$work/log"; exit 1; }
  local tps mfu rss state
  tps=$(summary tokens_per_s SUM)
  mfu=$(sqlite3 "$db" "SELECT value FROM summary WHERE key = 'mfu' AND rank = 0 AND run_id = (SELECT MAX(id) FROM run)")
  rss=$(summary peak_memory MAX)
  state=$(state_bytes)
  printf "%-22s %5s %12.0f %7.1f%% %10.0f MiB %12.2f MiB\n" "$label" "$ranks" "$tps" \
    "$(awk -v m="$mfu" 'BEGIN {print m * 100}')" "$(awk -v r="$rss" 'BEGIN {print r / 1048576}')" \
    "$(awk -v s="${state:-0}" 'BEGIN {print s / 1048576}')"
}

printf "%-22s %5s %12s %8s %14s %16s\n" strategy ranks "job tok/s" MFU "peak RSS/rank" "state/rank"
run single 1 --set train.batch_size=$global
for n in 2 4; do
  b=$((global / n))
  run ddp "$n" --set strategy.name=ddp --set train.batch_size=$b
  for stage in 1 2 3; do run "zero stage $stage" "$n" --set strategy.name=zero --set strategy.stage=$stage --set train.batch_size=$b; done
  run "tensor_parallel tp=$n" "$n" --set strategy.name=tensor_parallel --set train.batch_size=$global
  run "pipeline 1f1b pp=$n" "$n" --set strategy.name=pipeline --set strategy.schedule=1f1b --set strategy.micro_batches=8 \
    --set train.batch_size=$global
done
