#!/usr/bin/env bash
# bench/acco_gloo.sh: ACCO for real on 2 local Gloo processes against DDP and ZeRO-1, same model
# (the quickstart GPT), same micro-batch (16 x 64 tokens per rank) and the same token budget per
# rank. DDP and ZeRO-1 accumulate 2 micro-batches per update; ACCO's rounds run on a communication
# thread while the compute accumulates. Prints per strategy: updates, micro-batches per rank,
# job tokens/s, the communication time the compute was blocked on (exposed) and in all, and the
# final eval loss; then ACCO's exposed time and throughput as ratios to DDP's, measured in this run.
# Usage: bench/acco_gloo.sh [BUILD_DIR] [TOKENS_PER_RANK]   (train.tokens is the job's: 2 x this)
set -euo pipefail
build=${1:-build}
tokens=${2:-204800}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
db="$work/a.db"
common=(--db "$db" --progress none --set launch.mode=local --set launch.ranks=2 --set train.steps=0
        --set train.tokens="$((2 * tokens))" --set train.batch_size=16 --set train.eval_every=0
        --set train.eval_batches=10 --set train.log_every=50 --set train.warmup_tokens=20480)

value() {  # value KEY: rank 0's summary in the newest run
  sqlite3 "$db" "SELECT value FROM summary WHERE key = '$1' AND rank = 0 AND run_id = (SELECT MAX(id) FROM run)"
}
declare -A exposed tps
run() {  # run LABEL SETTINGS...
  local label=$1
  shift
  "$build/plexus" run experiments/quickstart.toml "${common[@]}" "$@" >"$work/log" 2>&1 || { cat "$work/log"; exit 1; }
  local steps mb t e c loss
  steps=$(value steps)
  mb=$(awk -v t="$(value rank_tokens)" 'BEGIN {print t / (16 * 64)}')
  t=$(awk -v t="$(value tokens_per_s)" 'BEGIN {print t * 2}')
  e=$(value comm_exposed_time)
  c=$(value comm_time)
  loss=$(value final_eval_loss)
  exposed[$label]=$e
  tps[$label]=$t
  printf "%-8s %8.0f %10.0f %12.0f %12.3f s %10.3f s %9.4f\n" "$label" "$steps" "$mb" "$t" "$e" "$c" "$loss"
}

printf "%-8s %8s %10s %12s %14s %12s %9s\n" strategy steps "mb/rank" "job tok/s" "exposed comm" "comm total" "eval"
run ddp --set strategy.name=ddp --set strategy.accumulate=2
run zero1 --set strategy.name=zero --set strategy.stage=1 --set strategy.accumulate=2
run acco --set strategy.name=acco
awk -v a="${exposed[acco]}" -v d="${exposed[ddp]}" -v ta="${tps[acco]}" -v td="${tps[ddp]}" \
  'BEGIN {printf "acco / ddp: exposed communication %.3f, throughput %.2f\n", a / d, ta / td}'
