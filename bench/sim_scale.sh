#!/usr/bin/env bash
# bench/sim_scale.sh: wall-clock cost of the simulated cluster per simulated rank-step, and its
# memory per rank, from 8 ranks up (10,000 with --large). Four workloads: a tiny GPT (2 layers,
# width 32, 4 x 32 tokens per rank) and the least-squares problem (64 rows, 16 dimensions per
# rank), each under DDP (an all-reduce per step) and gossip (pairwise averaging on a ring).
# The cost per rank-step, against 8 ranks measured in the same run, should stay flat; memory per
# rank is the growth of peak RSS over the 8-rank run's, divided by the ranks added.
# Every run takes enough steps for about 2,500 rank-steps of the GPT (20,000 of least squares),
# 12 at least, and times rank 0's clock from its 4th step to its last.
# Usage: bench/sim_scale.sh [BUILD_DIR] [--large | RANKS...]
#   default ranks 8 64 1024 (about 3 minutes here); --large: 8 64 1024 10000 (about 25 minutes,
#   about 10 GB of memory for the GPT at 10,000 ranks).
set -euo pipefail
build=${1:-build}
shift || true
ranks=("$@")
[ "${ranks[0]:-}" = "--large" ] && ranks=(8 64 1024 10000)
[ ${#ranks[@]} -gt 0 ] || ranks=(8 64 1024)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/gpt.toml" <<'TOML'
[model]
name = "gpt"
n_layer = 2
d_model = 32
n_head = 2
[data]
name = "synthetic"
vocab_size = 32
train_tokens = 50000
val_tokens = 5000
[train]
batch_size = 4
seq_len = 32
TOML
cat >"$work/least_squares.toml" <<'TOML'
[model]
name = "least_squares"
rows = 64
dim = 16
[data]
name = "synthetic"
[optimizer]
name = "sgd"
lr = 0.5
[train]
batch_size = 1
seq_len = 8
grad_clip = 0.0
TOML
for f in "$work"/*.toml; do
  cat >>"$f" <<'TOML'
eval_every = 0
eval_batches = 1
log_every = 4
threads = 1
[launch]
mode = "sim"
[results]
progress = "none"
TOML
done
db="$work/s.db"
printf "%-22s %7s %8s %14s %12s %7s %10s %12s\n" workload ranks steps "wall ms/step" "us/rank-step" "vs 8" "peak RSS" "MB/rank"
for workload in gpt:ddp gpt:gossip least_squares:ddp least_squares:gossip; do
  IFS=: read -r model strategy <<<"$workload"
  budget=2500
  [ "$model" = least_squares ] && budget=20000
  base="" base_rss=""
  for n in "${ranks[@]}"; do
    steps=$((budget / n + 4))
    [ $steps -ge 12 ] || steps=12
    /usr/bin/time -f "%M" -o "$work/rss" "$build/plexus" run "$work/$model.toml" --db "$db" --set strategy.name="$strategy" \
      --set launch.ranks="$n" --set train.steps="$steps" >"$work/log" 2>&1 || { cat "$work/log"; exit 1; }
    per_step=$(sqlite3 "$db" "SELECT (MAX(wall_time) - MIN(wall_time)) / ($steps - 4) FROM metric
                              WHERE run_id = (SELECT MAX(id) FROM run) AND rank = 0 AND key = 'loss'
                              AND step IN (3, $((steps - 1)))")
    per_rank=$(awk -v s="$per_step" -v n="$n" 'BEGIN {printf "%.1f", s / n * 1e6}')
    rss=$(awk -v k="$(cat "$work/rss")" 'BEGIN {print k / 1024}')
    [ -n "$base" ] || { base=$per_rank; base_rss=$rss; base_n=$n; }
    per_rank_mb=$(awk -v r="$rss" -v b="$base_rss" -v n="$n" -v m="$base_n" 'BEGIN {
      if (n == m) print "-"; else printf "%.2f", (r - b) / (n - m) * 1.048576 }')
    printf "%-22s %7s %8s %14.1f %12s %7.2f %6.0f MiB %12s\n" "$model $strategy" "$n" "$steps" \
      "$(awk -v s="$per_step" 'BEGIN {print s * 1000}')" "$per_rank" "$(awk -v a="$per_rank" -v b="$base" 'BEGIN {print a / b}')" \
      "$rss" "$per_rank_mb"
  done
done
