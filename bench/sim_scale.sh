#!/usr/bin/env bash
# bench/sim_scale.sh: wall-clock cost of one simulated DDP step of a tiny GPT for 8, 64, 256 and
# 1,024 ranks. The cost per rank-step, against 8 ranks measured in the same run, should stay
# about flat (growth no worse than linear in ranks).
# Usage: bench/sim_scale.sh [BUILD_DIR] [RANKS...]
set -euo pipefail
build=${1:-build}
shift || true
ranks=("$@")
[ ${#ranks[@]} -gt 0 ] || ranks=(8 64 256 1024)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/tiny.toml" <<'TOML'
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
[strategy]
name = "ddp"
[train]
steps = 12
batch_size = 4
seq_len = 32
eval_every = 0
eval_batches = 1
log_every = 2
threads = 1
[launch]
mode = "sim"
[results]
progress = "none"
TOML
db="$work/s.db"
printf "%8s %16s %22s %10s %12s\n" ranks "wall ms/step" "wall us per rank-step" "vs 8" "peak RSS"
base=""
for n in "${ranks[@]}"; do
  /usr/bin/time -f "%M" -o "$work/rss" "$build/plexus" run "$work/tiny.toml" --db "$db" --set launch.ranks="$n" \
    >"$work/log" 2>&1 || { cat "$work/log"; exit 1; }
  # Rank 0's wall clock at steps 4 and 12: eight steps after start-up, spread over every rank.
  per_step=$(sqlite3 "$db" "SELECT (MAX(wall_time) - MIN(wall_time)) / 8 FROM metric WHERE run_id = (SELECT MAX(id) FROM run)
                            AND rank = 0 AND key = 'loss' AND step IN (3, 11)")
  per_rank=$(awk -v s="$per_step" -v n="$n" 'BEGIN {printf "%.1f", s / n * 1e6}')
  [ -n "$base" ] || base=$per_rank
  printf "%8s %16.1f %22s %10.2f %9.0f MiB\n" "$n" "$(awk -v s="$per_step" 'BEGIN {print s * 1000}')" "$per_rank" \
    "$(awk -v a="$per_rank" -v b="$base" 'BEGIN {print a / b}')" "$(awk -v k="$(cat "$work/rss")" 'BEGIN {print k / 1024}')"
done
