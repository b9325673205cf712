#!/usr/bin/env bash
# Activation checkpointing's trade-off on models/llama: peak tensor memory and step time when
# every k-th layer recomputes its activations in backward (k = 1, 2) against keeping them all
# (k = 0), measured in the same run, one after the other, on the same shapes and data.
#
#   bench/activation_checkpointing.sh [BUILD_DIR]     (~1 minute on 2 cores)
#
# Memory: the run's peak_tensor_bytes (LibTorch's allocator: parameters, gradients, AdamW's
# state, activations). Time: the median step time after the first step.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
work=$(mktemp -d /tmp/plexus-ckpt-XXXXXX)
trap 'rm -rf "$work"' EXIT
cat > "$work/llama.toml" <<'EOF'
name = "ckpt"
[model]
name = "llama"
n_layer = 8
d_model = 256
n_head = 8
n_kv_head = 4
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
for k in 0 1 2; do
  "$build/plexus" run "$work/llama.toml" --db "$work/r.db" --set model.activation_checkpointing=$k > "$work/run$k.log" 2>&1 ||
    { cat "$work/run$k.log"; exit 1; }
done
python3 - "$work/r.db" <<'EOF'
import sqlite3, statistics, sys
db = sqlite3.connect(sys.argv[1])
rows = []
for run_id, in db.execute("SELECT id FROM run ORDER BY id"):
    k = db.execute("SELECT num FROM param WHERE run_id = ? AND key = 'model.activation_checkpointing'", (run_id,)).fetchone()[0]
    peak = db.execute("SELECT value FROM summary WHERE run_id = ? AND rank = 0 AND key = 'peak_tensor_bytes'", (run_id,)).fetchone()[0]
    times = [v for (v,) in db.execute("SELECT value FROM metric WHERE run_id = ? AND rank = 0 AND key = 'step_time' AND step > 0 ORDER BY step", (run_id,))]
    rows.append((int(k), peak, statistics.median(times)))
base_peak, base_time = rows[0][1], rows[0][2]
print("| activation_checkpointing | peak tensor MiB | vs k=0 | step time s | vs k=0 |")
print("|---|---|---|---|---|")
for k, peak, t in rows:
    print(f"| {k} | {peak / 2**20:.1f} | {peak / base_peak:.2f} | {t:.3f} | {t / base_time:.2f} |")
EOF
