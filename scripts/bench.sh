#!/usr/bin/env bash
# All CPU benchmarks in one command, each measured against its reference in the same run, and a
# table of ratios at the end:
#   GPT training step, plexus against PyTorch eager on identical shapes, at four sizes, and the
#     Llama step at two, with MFU against the float32 matmul peak measured in the same run
#     (build/bench/gpt_step, --model llama)
#   the loss's forward and backward against LibTorch's composite (build/bench/loss)
#   c10d/Gloo all-reduce bus bandwidth against memcpy            (build/bench/allreduce)
#   the harness's cost per step against a bare loop              (build/bench/harness_overhead)
#   checkpoint checksums, XXH3 against format 1's FNV-1a         (build/bench/hash)
#   the simulated cluster's wall time per simulated rank-step    (bench/sim_scale.sh)
# Usage: scripts/bench.sh [BUILD_DIR] [--quick]   (--quick: two sizes, fewer rounds; ~1.5 min)
# Output: the table on stdout; every benchmark's full output in BUILD_DIR/bench-results/.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
quick=0
[ "${2:-}" = "--quick" ] && quick=1
out=$build/bench-results
mkdir -p "$out"
for b in gpt_step loss allreduce harness_overhead hash; do
  [ -x "$build/bench/$b" ] || { echo "missing $build/bench/$b: build first (scripts/setup.sh)" >&2; exit 1; }
done

field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" | tail -1; }
rows=""
row() { rows="$rows$(printf '| %s | %s | %s |' "$1" "$2" "$3")"$'\n'; }

# model name layers width heads kv-heads seq batch vocab: from where Python's per-op overhead
# shows to the largest step that takes under a second here (kv-heads: llama's; 0 for gpt).
sizes="gpt:tiny:2:64:2:0:32:4:256 gpt:small:4:256:4:0:128:8:4096 gpt:medium:6:384:6:0:128:8:8192
  gpt:large:6:512:8:0:256:4:8192 llama:small:4:256:4:2:128:8:4096 llama:medium:6:384:6:2:128:8:8192"
rounds=7
if [ $quick = 1 ]; then
  sizes="gpt:tiny:2:64:2:0:32:4:256 gpt:large:6:512:8:0:256:4:8192 llama:small:4:256:4:2:128:8:4096"
  rounds=3
fi
for spec in $sizes; do
  IFS=: read -r model name L D H KV T B V <<< "$spec"
  steps=5
  [ "$name" = tiny ] && steps=50
  label=$([ "$model" = gpt ] && echo GPT || echo Llama)
  echo "== gpt_step $model $name" >&2
  "$build/bench/gpt_step" --model "$model" --layers "$L" --width "$D" --heads "$H" --kv-heads "$KV" --seq "$T" \
    --batch "$B" --vocab "$V" --steps $steps --rounds $rounds > "$out/${model}_step_$name.txt" 2>&1
  ratio=$(sed -n 's/.*ratio plexus\/reference: \([0-9.]*\).*/\1/p' "$out/${model}_step_$name.txt")
  mfu=$(field mfu < "$out/${model}_step_$name.txt")
  tps=$(field tokens_per_s < "$out/${model}_step_$name.txt")
  kv=$([ "$model" = llama ] && echo " KV=$KV")
  row "$label step $name (L=$L D=$D$kv T=$T B=$B V=$V)" "plexus / PyTorch eager tokens/s: ${ratio:-failed}" \
      "$(awk -v m="${mfu:-0}" -v t="${tps:-0}" 'BEGIN { printf "%.0f tok/s, MFU %.1f%% of measured peak", t, 100 * m }')"
done

echo "== loss" >&2
"$build/bench/loss" $([ $quick = 1 ] && echo "--rounds 3") > "$out/loss.txt" 2>&1
row "loss forward + backward (the large step's 1024 x 8192 logits)" "time plexus / LibTorch composite: $(field ratio < "$out/loss.txt")" \
    "$(field plexus_ms < "$out/loss.txt") ms against $(field composite_ms < "$out/loss.txt") ms"

echo "== allreduce" >&2
"$build/bench/allreduce" > "$out/allreduce.txt" 2>&1
big=$(awk '$1 ~ /^[0-9]+$/ && $2 == "MiB" { last = $0 } END { print last }' "$out/allreduce.txt")
row "Gloo all-reduce, 2 ranks, $(echo "$big" | awk '{print $1" "$2}')" \
    "bus bandwidth / memcpy: $(echo "$big" | awk '{print $NF}')" "$(echo "$big" | awk '{printf "%s GB/s bus, %s GB/s memcpy", $5, $6}')"

echo "== harness_overhead" >&2
"$build/bench/harness_overhead" $([ $quick = 1 ] && echo 1200) > "$out/harness_overhead.txt" 2>&1
row "harness per step (tiny GPT)" "plexus run / bare loop: $(field ratio < "$out/harness_overhead.txt")" \
    "$(field us_per_step < "$out/harness_overhead.txt") us added per step"

echo "== hash" >&2
"$build/bench/hash" --mib $([ $quick = 1 ] && echo 64 || echo 256) > "$out/hash.txt" 2>&1
row "checkpoint checksum (XXH3-64, format 2)" "throughput XXH3 / FNV-1a (format 1): $(field ratio < "$out/hash.txt")" \
    "$(field xxh3_gbs < "$out/hash.txt") GB/s against $(field fnv_gbs < "$out/hash.txt") GB/s; a checkpoint read $(field read_ratio < "$out/hash.txt")x faster"

echo "== sim_scale" >&2
"$root/bench/sim_scale.sh" "$build" 8 64 > "$out/sim_scale.txt" 2>&1
sim=$(grep -E '^gpt ddp +64 ' "$out/sim_scale.txt" | tail -1)
row "simulated cluster, 64 ranks (tiny GPT, DDP)" "wall time per rank-step, 64 ranks / 8 ranks: $(echo "$sim" | awk '{print $7}')" \
    "$(echo "$sim" | awk '{print $6" us of wall time per simulated rank-step"}')"

echo
echo "plexus benchmarks, $(date -u +%Y-%m-%d), $(nproc) cores, results in $out"
echo "| benchmark | ratio (against the reference measured in the same run) | figures |"
echo "|---|---|---|"
printf '%s' "$rows"
