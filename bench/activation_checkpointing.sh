#!/usr/bin/env bash
# Activation checkpointing's trade-off: peak tensor memory and step time when every k-th layer
# recomputes its activations in backward (k = 1, 2) against keeping them all (k = 0), for each
# transformer model (llama, gpt, revgpt), measured in the same run, one after the other, on the
# same shapes (a 256-wide residual stream, 8 layers, 8 x 256 tokens) and data.
#
#   bench/activation_checkpointing.sh [BUILD_DIR] [MODEL...]     (~3 minutes on 2 cores)
#
# Memory: the run's peak_tensor_bytes (LibTorch's allocator: parameters, gradients, AdamW's
# state, activations). Time: the median step time after the first step.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
shift || true
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(llama gpt revgpt)
work=$(mktemp -d /tmp/plexus-ckpt-XXXXXX)
trap 'rm -rf "$work"' EXIT
cat > "$work/llama.toml" <<'EOF'
name = "ckpt"
[model]
name = "llama"
n_layer = 8
d_model = 256
n_head = 8
[data]
name = "synthetic"
vocab_size = 512
[optimizer]
name = "adamw"
lr = 1e-3
[train]
steps = 12
batch_size = 8
seq_len = 256
log_every = 1
eval_every = 0
[results]
progress = "none"
EOF
for model in "${models[@]}"; do
  width=256
  [ "$model" = revgpt ] && width=128  # two halves: a 256-wide stream
  for k in 0 1 2; do
    "$build/plexus" run "$work/llama.toml" --db "$work/r.db" --set model.name=$model --set model.d_model=$width \
      --set model.activation_checkpointing=$k > "$work/run$k.log" 2>&1 || { cat "$work/run$k.log"; exit 1; }
  done
done
python3 - "$work/r.db" <<'EOF'
import sqlite3, statistics, sys
db = sqlite3.connect(sys.argv[1])
param = lambda run, key: db.execute("SELECT COALESCE(num, value) FROM param WHERE run_id = ? AND key = ?", (run, key)).fetchone()[0]
print("| model | activation_checkpointing | peak tensor MiB | vs k=0 | step time s | vs k=0 |")
print("|---|---|---|---|---|---|")
base = {}
for run_id, in db.execute("SELECT id FROM run ORDER BY id"):
    model, k = param(run_id, "model.name"), int(param(run_id, "model.activation_checkpointing"))
    peak = db.execute("SELECT value FROM summary WHERE run_id = ? AND rank = 0 AND key = 'peak_tensor_bytes'", (run_id,)).fetchone()[0]
    times = [v for (v,) in db.execute("SELECT value FROM metric WHERE run_id = ? AND rank = 0 AND key = 'step_time' AND step > 0 ORDER BY step", (run_id,))]
    t = statistics.median(times)
    base.setdefault(model, (peak, t))
    print(f"| {model} | {k} | {peak / 2**20:.1f} | {peak / base[model][0]:.2f} | {t:.3f} | {t / base[model][1]:.2f} |")
EOF
