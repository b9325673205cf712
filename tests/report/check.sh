#!/usr/bin/env bash
# A sweep on the simulated cluster (2 model depths x 3 learning rates x 2 seeds: groups with labels
# of several keys), its report, and the report opened in headless Chromium by check_report.mjs
# (every chart drawn, its plot area a fair share of its canvas). Also checks the leaderboard's
# simulated time-to-loss.
# Usage: tests/report/check.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/grid.toml" <<'TOML'
name = "report_check"
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
[optimizer]
name = "adamw"
[strategy]
name = "ddp"
[train]
steps = 40
batch_size = 8
seq_len = 32
eval_every = 10
eval_batches = 2
log_every = 10
peak_flops = 1e11
[launch]
mode = "sim"
ranks = 2
[sim]
device = "h100"
[grid]
"model.n_layer" = [1, 2]
"optimizer.lr" = [1e-2, 3e-3, 1e-3]
seeds = [0, 1]
TOML
"$build/plexus" sweep "$work/grid.toml" -j 2 --db "$work/r.db" --progress none
# time_to on a simulated sweep reads simulated seconds: far below the wall-clock time of the runs.
"$build/plexus" leaderboard --db "$work/r.db" --metric time_to --target 2.5 --format csv | tee "$work/board.csv"
# The column by its header's name (rank, optimizer.lr, time_to_mean, time_to_std, ...).
awk -F, 'NR == 1 { for (i = 1; i <= NF; ++i) if ($i == "time_to_mean") col = i; if (!col) { print "no time_to_mean column"; exit 1 } }
         NR == 2 { if ($col == "" || $col <= 0 || $col >= 0.01) { print "time_to is not in simulated seconds: " $col; exit 1 } }' "$work/board.csv"
"$build/plexus" report --db "$work/r.db" -o "$work/report.html"
node "$src/tests/report/check_report.mjs" "$work/report.html" "$src/host/lab/report/node_modules" 8 "${PLEXUS_REPORT_SCREENSHOT:-}"
# With performance profiles of the learning rates over the two depths (the problems): a ninth chart.
"$build/plexus" report --db "$work/r.db" -o "$work/profile.html" --metric time_to --target 2.5 --profile optimizer.lr
node "$src/tests/report/check_report.mjs" "$work/profile.html" "$src/host/lab/report/node_modules" 9

# The standard suite's report: a slice of experiments/suite/suite.toml --quick (2 workloads x 2
# network scenarios x 3 strategies x 2 seeds, shortened), time to each workload's own target
# (results.target_loss) and the performance profile of the strategies.
"$build/plexus" sweep "$src/experiments/suite/suite.toml" --quick --dry-run --db "$work/s.db" |
    grep -E 'seed=[01] scenario=(fast|slow) optimizer\.lr=0\.1 variant=(ddp|gossip|diloco) workload=(lsq|markov)$' |
    awk '{ print $1 }' >"$work/points"
test "$(wc -l <"$work/points")" -eq 24
xargs -P 2 -I{} "$build/plexus" run "$src/experiments/suite/suite.toml" --quick --point {} --db "$work/s.db" \
    --progress none --set train.tokens=30720 >/dev/null <"$work/points"
"$build/plexus" report --db "$work/s.db" -o "$work/suite.html" --metric time_to --profile variant
node "$src/tests/report/check_report.mjs" "$work/suite.html" "$src/host/lab/report/node_modules" 9
