#!/usr/bin/env bash
# bench/overlap.sh: each overlap switch of the data-parallel baselines, off and on, on 2 local
# Gloo processes, in alternating runs: DDP's bucket all-reduces during backward
# (strategy.overlap), ZeRO-1/2's parameter all-gather during the next forward
# (strategy.overlap_gather), tensor parallelism's input-gradient all-reduce during the weight
# gradients (strategy.overlap_tensor_comm). Prints each one's step time and exposed
# communication (time blocked in wait() over the training time, from the results database),
# mean of 2 runs each, and the step-time ratio on/off.
# Usage: bench/overlap.sh [BUILD_DIR]   (about 3 minutes here)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
work=$(mktemp -d /tmp/plexus-overlap-XXXXXX)
trap 'rm -rf "$work"' EXIT
db="$work/r.db"
cat > "$work/exp.toml" <<TOML
[model]
name = "gpt"
n_layer = 4
d_model = 128
n_head = 4
[data]
name = "synthetic"
vocab_size = 256
[launch]
mode = "local"
ranks = 2
[train]
steps = 30
batch_size = 8
seq_len = 128
eval_every = 0
eval_batches = 1
log_every = 10
peak_flops = 1e11
threads = 1
[results]
progress = "none"
TOML
# label | the strategy's settings | its switch
cases=("ddp|--set strategy.name=ddp --set strategy.bucket_mb=0.5|overlap"
  "zero stage 1|--set strategy.name=zero --set strategy.stage=1|overlap_gather"
  "zero stage 2|--set strategy.name=zero --set strategy.stage=2|overlap_gather"
  "tensor_parallel tp=2|--set strategy.name=tensor_parallel --set strategy.tp=2|overlap_tensor_comm")
echo "overlap: GPT L=4 D=128 T=128, 8 rows per rank, 2 ranks over Gloo, 1 thread each, mean of 2 runs (alternating)"
printf "  %-22s %-20s %12s %12s %12s %10s\n" strategy switch "step off" "step on" "exposed off" "exposed on"
for c in "${cases[@]}"; do
  IFS='|' read -r label settings switch <<<"$c"
  for round in 1 2; do
    for on in false true; do
      # shellcheck disable=SC2086
      "$build/plexus" run "$work/exp.toml" --db "$db" $settings --set strategy.$switch=$on \
        --set name="$switch-$on-$round" >"$work/log" 2>&1 || { cat "$work/log"; exit 1; }
    done
  done
  sqlite3 -separator ' ' "$db" "
    WITH per_run AS (
      SELECT substr(r.name, 1, length(r.name) - 2) AS name, st.value AS step_time,
             ex.value / (st.value * sp.value) AS exposed
      FROM run r
      JOIN summary st ON st.run_id = r.id AND st.key = 'step_time' AND st.rank = 0
      JOIN summary sp ON sp.run_id = r.id AND sp.key = 'steps' AND sp.rank = 0
      JOIN summary ex ON ex.run_id = r.id AND ex.key = 'comm_exposed_time' AND ex.rank = 0
      WHERE r.name LIKE '$switch-%' AND r.id > (SELECT MAX(id) - 4 FROM run)),
    agg AS (SELECT name, avg(step_time) AS step_time, avg(exposed) AS exposed FROM per_run GROUP BY name)
    SELECT (SELECT step_time FROM agg WHERE name = '$switch-false'), (SELECT step_time FROM agg WHERE name = '$switch-true'),
           (SELECT exposed FROM agg WHERE name = '$switch-false'), (SELECT exposed FROM agg WHERE name = '$switch-true')" \
    >"$work/row"
  read -r off on xoff xon <"$work/row"
  awk -v l="$label" -v s="$switch" -v a="$off" -v b="$on" -v c="$xoff" -v d="$xon" 'BEGIN {
    printf "  %-22s %-20s %9.1f ms %9.1f ms %11.1f%% %9.1f%%   on/off %.3f\n", l, s, a * 1000, b * 1000, c * 100, d * 100, b / a }'
done
