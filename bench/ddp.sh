#!/usr/bin/env bash
# bench/ddp.sh: plexus's DDP (strategies/ddp on local Gloo processes) against PyTorch's
# DistributedDataParallel (bench/ddp_ref.py) on the same GPT, the same ranks, batch, bucket size
# and thread count, in alternating rounds so that both see the same machine load. Each side's
# tokens/s counts the timed steps only (after warm-up, from the step times plexus records and
# from the reference's own clock), summed over ranks; the ratio is the median of the rounds'.
# Usage: bench/ddp.sh [BUILD_DIR] [ROUNDS]   (defaults: build, 7; about 3.5 minutes: single rounds
# spread by +-5% on a shared 2-core machine, so fewer rounds give a median that moves)
# Prints one line per round and `ratio plexus/pytorch_ddp: R (range A to B)`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
rounds=${2:-7}
ranks=2 layers=4 width=256 heads=4 seq=128 batch=8 vocab=4096 warmup=3 steps=20 bucket_mb=4
python=${PYTHON:-/usr/bin/python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
db="$work/r.db"
cat >"$work/ddp.toml" <<TOML
[model]
name = "gpt"
n_layer = $layers
d_model = $width
n_head = $heads
[data]
name = "synthetic"
vocab_size = $vocab
[optimizer]
name = "adamw"
lr = 1e-3
[strategy]
name = "ddp"
bucket_mb = $bucket_mb
[train]
steps = $((warmup + steps))
batch_size = $batch
seq_len = $seq
eval_every = 0
eval_batches = 1
log_every = 1
threads = 1
[launch]
mode = "local"
ranks = $ranks
[results]
progress = "none"
TOML

plexus_round() {
  "$build/plexus" run "$work/ddp.toml" --db "$db" >"$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }
  # Rank 0's step clock from the end of warm-up to the end: every rank's rows over that time.
  sqlite3 "$db" "SELECT $ranks * $steps * $batch * $seq / (MAX(wall_time) - MIN(wall_time)) FROM metric
                 WHERE run_id = (SELECT MAX(id) FROM run) AND rank = 0 AND key = 'loss'
                 AND step IN ($((warmup - 1)), $((warmup + steps - 1)))"
}
reference_round() {
  "$python" "$root/bench/ddp_ref.py" --ranks $ranks --layers $layers --width $width --heads $heads --seq $seq \
    --batch $batch --vocab $vocab --warmup $warmup --steps $steps --bucket-mb $bucket_mb 2>"$work/ref.err" |
    sed -n 's/.*tokens_per_s=\([0-9.]*\).*/\1/p' | grep . || { cat "$work/ref.err" >&2; exit 1; }
}

echo "ddp: GPT L=$layers D=$width H=$heads T=$seq, $batch rows per rank, V=$vocab, $ranks Gloo ranks, 1 thread each," \
  "buckets of $bucket_mb MiB, $steps timed steps after $warmup"
ratios=()
for round in $(seq "$rounds"); do
  mine=$(plexus_round)
  theirs=$(reference_round)
  ratio=$(awk -v a="$mine" -v b="$theirs" 'BEGIN {printf "%.3f", a / b}')
  ratios+=("$ratio")
  printf "  round %d: plexus %8.0f tok/s, pytorch ddp %8.0f tok/s, ratio %s\n" "$round" "$mine" "$theirs" "$ratio"
done
printf "%s\n" "${ratios[@]}" | sort -n | awk '{r[NR] = $1} END {
  printf "ratio plexus/pytorch_ddp: %.3f (median of %d rounds; range %.3f to %.3f)\n", r[int((NR + 1) / 2)], NR, r[1], r[NR]}'
