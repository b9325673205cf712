#!/usr/bin/env bash
# GPU benchmark: one GPT training step (bf16 autocast, AdamW, clipping) at GPT-3's 125M, 350M and
# 1.3B shapes, in plexus (bench/gpt_step) and in PyTorch eager and torch.compile
# (bench/gpt_step_ref.py) on the same GPU, one after the other in this run. Prints a markdown
# table: tokens/s, plexus's ratio to each reference, and MFU against the card's datasheet bf16
# peak (FLOPs per token from plexus: 6N + 12·L·H·Q·T, the same for all three); the last column is
# plexus's tokens/s over its own with LibTorch's norm kernels (models/gpt's fused_norm = false),
# measured in the same run (at the sizes in GPT_STEP_AB_SIZES, default 1.3B; n/a elsewhere).
#
#   bench/gpt_step_gpu.sh BUILD_DIR [OUT_FILE] [SIZES]
#   bench/gpt_step_gpu.sh --prewarm SIZE   (compile SIZE once with torch.compile: fills its cache)
#   bench/gpt_step_gpu.sh --profile SIZE [BUILD_DIR]   (where the GPU time of the eager step, and
#       with BUILD_DIR of plexus's, goes: by kernel and kernel family, the same table for both)
# SIZES: a space-separated subset of "125M 350M 1.3B llama-1.1B" (default the three GPTs;
# llama-1.1B: models/llama at TinyLlama's shape, 22 layers of 2048, 32 query and 4 key/value
# heads, against the eager Llama of gpt_step_ref.py --model llama). Needs a CUDA build.
set -uo pipefail
build=${1:?usage: gpt_step_gpu.sh BUILD_DIR [OUT_FILE] [SIZES] | --prewarm SIZE}
out=${2:-/dev/null}
sizes=${3:-"125M 350M 1.3B"}
here=$(cd "$(dirname "$0")" && pwd)
python=${PLEXUS_PYTHON:-python3}
steps=${GPT_STEP_STEPS:-10}
rounds=${GPT_STEP_ROUNDS:-3}
warmup=${GPT_STEP_WARMUP:-3}

# name: layers width heads batch seq model key/value-heads (0: all)
shape() {
  case $1 in
    125M) echo "12 768 12 16 1024 gpt 0" ;;
    350M) echo "24 1024 16 16 1024 gpt 0" ;;
    1.3B) echo "24 2048 16 8 2048 gpt 0" ;;  # GPT-3's own context; 16k tokens a step (fits 80 GB)
    llama-1.1B) echo "22 2048 32 8 2048 llama 4" ;;
    *) echo "unknown size $1" >&2; return 1 ;;
  esac
}

field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" | tail -1; }

if [ "$build" = "--profile" ]; then
  read -r L D H B T M KV < <(shape "$out") || exit 2
  common="--model $M --kv-heads $KV --layers $L --width $D --heads $H --batch $B --seq $T --vocab 50304 --steps 3 --rounds 1 --warmup 2 --device cuda"
  echo "== eager PyTorch, $out"
  $python "$here/gpt_step_ref.py" $common --dtype bf16 --profile
  plexus_build=${3:-}
  if [ -n "$plexus_build" ]; then
    trace=$(mktemp /tmp/plexus-profile-XXXXXX.json)
    echo "== plexus, $out"
    "$plexus_build/bench/gpt_step" $common --precision bf16 --reference 0 --profile "$trace" > /dev/null &&
      $python "$here/profile_summary.py" "$trace" --steps 3
    rm -f "$trace"
  fi
  exit 0
fi
if [ "$build" = "--prewarm" ]; then
  read -r L D H B T M KV < <(shape "$out") || exit 2
  exec $python "$here/gpt_step_ref.py" --model $M --kv-heads $KV --layers $L --width $D --heads $H --batch $B --seq $T --vocab 50304 \
    --steps 1 --rounds 1 --warmup 1 --device cuda --dtype bf16 --compile
fi

card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
table="| model | params | B x T | plexus tok/s | eager tok/s | compile tok/s | plexus/eager | plexus/compile | MFU plexus | MFU eager | MFU compile | fused norm gain |
|---|---|---|---|---|---|---|---|---|---|---|---|"
for size in $sizes; do
  read -r L D H B T M KV < <(shape "$size") || exit 2
  common="--model $M --kv-heads $KV --layers $L --width $D --heads $H --batch $B --seq $T --vocab 50304 --steps $steps --rounds $rounds --warmup $warmup"
  echo "== $size: L=$L D=$D H=$H B=$B T=$T" >&2
  mine=$("$build/bench/gpt_step" $common --device cuda --precision bf16 --reference 0 2>&1 | tee -a /dev/stderr)
  # plexus again with LibTorch's norm kernels (fused_norm = false): what plexus's own kernels gain
  # (at the sizes in GPT_STEP_AB_SIZES, default the largest: the MFU target's)
  plain=""
  case " ${GPT_STEP_AB_SIZES:-1.3B} " in *" $size "*)
    plain=$("$build/bench/gpt_step" $common --device cuda --precision bf16 --reference 0 --fused-norm 0 2>&1 | tail -3 | tee -a /dev/stderr) ;;
  esac
  eager=$($python "$here/gpt_step_ref.py" $common --device cuda --dtype bf16 2>&1 | tee -a /dev/stderr)
  compiled=$($python "$here/gpt_step_ref.py" $common --device cuda --dtype bf16 --compile 2>&1 | tail -3 | tee -a /dev/stderr)
  p=$(echo "$mine" | field tokens_per_s)
  mfu=$(echo "$mine" | field mfu)
  params=$(echo "$mine" | grep RESULT | field params)
  e=$(echo "$eager" | field tokens_per_s)
  c=$(echo "$compiled" | field tokens_per_s)
  u=$(echo "$plain" | field tokens_per_s)
  row=$(awk -v p="${p:-0}" -v e="${e:-0}" -v c="${c:-0}" -v u="${u:-0}" -v m="${mfu:-0}" -v n="${params:-0}" -v s="$size" -v bt="$B x $T" 'BEGIN {
    pe = e > 0 ? sprintf("%.2f", p / e) : "n/a"; pc = c > 0 ? sprintf("%.2f", p / c) : "n/a"
    me = p > 0 ? sprintf("%.1f%%", 100 * m * e / p) : "n/a"; mc = p > 0 ? sprintf("%.1f%%", 100 * m * c / p) : "n/a"
    pu = u > 0 ? sprintf("%.3f", p / u) : "n/a"
    printf "| %s | %.0fM | %s | %.0f | %.0f | %.0f | %s | %s | %.1f%% | %s | %s | %s |", s, n / 1e6, bt, p, e, c, pe, pc, 100 * m, me, mc, pu
  }')
  table="$table
$row"
done
summary="GPU GPT step, bf16 autocast, $card, $(date -u +%Y-%m-%d), $steps steps x $rounds rounds (median)
$table"
echo "$summary"
echo "$summary" > "$out"
