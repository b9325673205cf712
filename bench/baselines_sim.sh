#!/usr/bin/env bash
# bench/baselines_sim.sh: plan a 1.3B-parameter GPT (24 layers, width 2048, 16 heads, sequence
# 2048, vocabulary 50304) on 8 and 64 simulated H100s (one node with NVLink-class links; eight
# such nodes joined by 50 GB/s per GPU), with every baseline strategy, same global batch (8
# sequences per GPU). "meta" numerics: shapes only, so this runs in seconds on a laptop; the
# time is the simulator's (H100 peak 989 TFLOP/s at the profile's 0.4 efficiency, alpha-beta
# links, float32 communication volumes).
#
# With MODE = scale: the 1.3B model on 8, 64 and 512 simulated H100s (nodes of 8 on NVLink-class
# links, 400 Gb/s = 50 GB/s per GPU between nodes) with DDP, ZeRO-3, ACCO and DiLoCo (H = 16),
# compute at the efficiency plexus measured on a real H100 for this model (EFFICIENCY, default
# 0.536: bench/gpt_step_gpu.sh, 1.3B bf16, H100, 2026-11-27). About 4 minutes here (7 beside a build).
# With MODE = overlap: the 1.3B model on 64 simulated H100s with each overlap switch of the
# baselines off, then on (ZeRO-1/2's all-gather after the optimizer, the data-parallel gradient
# mean of tensor and pipeline parallelism): the waiting each removes.
# Usage: bench/baselines_sim.sh [BUILD_DIR] [STEPS] [baselines|scale|overlap] [EFFICIENCY]
set -euo pipefail
build=${1:-build}
steps=${2:-4}
mode=${3:-baselines}
efficiency=${4:-0.536}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
db="$work/s.db"
cat >"$work/gpt1.3b.toml" <<'TOML'
[model]
name = "gpt"
n_layer = 24
d_model = 2048
n_head = 16
vocab_size = 50304
[data]
name = "synthetic"
vocab_size = 32
[optimizer]
name = "adamw"
[train]
seq_len = 2048
eval_every = 0
eval_batches = 1
log_every = 1
[launch]
mode = "sim"
[sim]
numerics = "meta"
device = "h100"
intra_latency_us = 2.0
intra_bandwidth_gbs = 450.0
latency_us = 5.0
bandwidth_gbs = 50.0
[results]
progress = "none"
TOML
# job tok/s: rank 0's tokens/s (its data shard's) times the shards (job tokens over shard tokens).
# "waiting": the share of a step a rank is not computing (communication not hidden, pipeline
# bubble): 1 - MFU / efficiency, since compute is charged at exactly peak x efficiency.
printf "%-26s %6s %12s %7s %12s %9s %16s\n" strategy ranks "job tok/s" MFU "step (ms)" waiting "state/rank (GB)"
run() {  # run LABEL RANKS SETTINGS...
  local label=$1 ranks=$2
  shift 2
  local topo=(--set sim.topology=fully_connected --set sim.latency_us=2.0 --set sim.bandwidth_gbs=450.0)
  [ "$ranks" -gt 8 ] && topo=(--set sim.topology=two_level --set sim.gpus_per_node=8)
  "$build/plexus" run "$work/gpt1.3b.toml" --db "$db" --set train.steps="$steps" --set launch.ranks="$ranks" \
    "${topo[@]}" "$@" >"$work/log" 2>&1 || { cat "$work/log"; exit 1; }
  sqlite3 -separator ' ' "$db" "
    SELECT (SELECT value FROM summary WHERE run_id = r.id AND rank = 0 AND key = 'tokens_per_s') *
           (SELECT value FROM summary WHERE run_id = r.id AND rank = 0 AND key = 'job_tokens') /
           (SELECT value FROM summary WHERE run_id = r.id AND rank = 0 AND key = 'tokens'),
           (SELECT value FROM summary WHERE run_id = r.id AND rank = 0 AND key = 'mfu'),
           (SELECT value FROM summary WHERE run_id = r.id AND rank = 0 AND key = 'step_time'),
           1 - (SELECT value FROM summary WHERE run_id = r.id AND rank = 0 AND key = 'mfu') /
               (SELECT value FROM summary WHERE run_id = r.id AND rank = 0 AND key = 'sim_efficiency'),
           (SELECT value FROM metric WHERE run_id = r.id AND rank = 0 AND key = 'state_bytes' ORDER BY step DESC LIMIT 1)
    FROM run r WHERE r.id = (SELECT MAX(id) FROM run)" >"$work/row"
  read -r tps mfu step exposed state <"$work/row"
  awk -v l="$label" -v n="$ranks" -v t="$tps" -v m="$mfu" -v s="$step" -v e="$exposed" -v b="${state:-0}" \
    'BEGIN { if (e < 0 && e > -5e-4) e = 0;  # rounding: a strategy that hides all communication
             printf "%-26s %6d %12.0f %6.1f%% %12.1f %8.1f%% %16.2f\n", l, n, t, m * 100, s * 1000, e * 100, b / 1e9 }'
}
if [ "$mode" = overlap ]; then
  for on in false true; do
    for stage in 1 2; do
      run "zero stage $stage, overlap $on" 64 --set strategy.name=zero --set strategy.stage=$stage \
        --set strategy.overlap_gather=$on --set train.batch_size=8
    done
    run "tp=8, overlap $on" 64 --set strategy.name=tensor_parallel --set strategy.tp=8 --set train.batch_size=64 \
      --set strategy.overlap_grad_reduce=$on --set strategy.overlap_tensor_comm=$on --set strategy.bucket_mb=100.0
    run "1f1b pp=8 m=16, overlap $on" 64 --set strategy.name=pipeline --set strategy.pp=8 \
      --set strategy.micro_batches=16 --set train.batch_size=64 --set strategy.overlap_grad_reduce=$on \
      --set strategy.bucket_mb=100.0
  done
  exit 0
fi
if [ "$mode" = scale ]; then
  for n in 8 64 512; do
    eff=(--set sim.efficiency="$efficiency" --set train.batch_size=8)
    run ddp "$n" --set strategy.name=ddp --set strategy.bucket_mb=100.0 "${eff[@]}"
    run "zero stage 3" "$n" --set strategy.name=zero --set strategy.stage=3 "${eff[@]}"
    run acco "$n" --set strategy.name=acco "${eff[@]}"
    # DiLoCo communicates once per H = 16 steps: simulate 16 (the rates are averages over them).
    run "diloco H=16" "$n" --set strategy.name=diloco --set strategy.inner_steps=16 --set train.steps=16 \
      --set outer_optimizer.name=sgd --set outer_optimizer.lr=0.7 --set outer_optimizer.momentum=0.9 \
      --set outer_optimizer.nesterov=true "${eff[@]}"
  done
  exit 0
fi
for n in 8 64; do
  run ddp "$n" --set strategy.name=ddp --set strategy.bucket_mb=100.0 --set train.batch_size=8
  for stage in 1 2 3; do
    run "zero stage $stage" "$n" --set strategy.name=zero --set strategy.stage=$stage --set train.batch_size=8
  done
  run "tensor_parallel tp=8" "$n" --set strategy.name=tensor_parallel --set strategy.tp=8 --set train.batch_size=64
  run "pipeline 1f1b pp=8 m=16" "$n" --set strategy.name=pipeline --set strategy.pp=8 --set strategy.micro_batches=16 \
    --set train.batch_size=64
done
