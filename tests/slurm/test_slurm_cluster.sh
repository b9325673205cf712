#!/usr/bin/env bash
# plexus on a real Slurm (scripts/slurm/test-cluster.sh: two nodes of one CPU on this machine):
#   1. a 4-point array sweep completes, and its leaderboard equals the same sweep run locally;
#   2. a task cancelled by scancel (SIGTERM: the run records itself interrupted) and one killed
#      outright (SIGKILL, as in a node failure: its row is left "running", and the next submission
#      marks it interrupted); submitting again completes the sweep, with no duplicate and no lost
#      run;
#   3. a 2-task DDP run through srun (env mode, no MASTER_ADDR exported, node names that do not
#      resolve) gives the local launcher's losses;
#   4. an srun task's affinity mask sets its threads;
#   5. a sweep with more points than Slurm's MaxArraySize allows tasks runs several points a task.
# Usage: test_slurm_cluster.sh PLEXUS_BINARY. Exit 77 (ctest: skipped) where no cluster can start
# here, with the reason; never passes without running.
set -euo pipefail
plexus=$(realpath "$1")
root=$(cd "$(dirname "$0")/../.." && pwd)
cluster=$(mktemp -d /tmp/plexus-slurm.XXXXXX)
work=$(mktemp -d)
cleanup() { "$root/scripts/slurm/test-cluster.sh" stop "$cluster" >/dev/null 2>&1 || true; rm -rf "$cluster" "$work"; }
trap cleanup EXIT

set +e
start=$("$root/scripts/slurm/test-cluster.sh" start "$cluster" --nodes 2 2> "$work/start.err")
code=$?
set -e
if [ $code -ne 0 ]; then
  echo "SKIPPED: no Slurm cluster could start on this machine (test-cluster.sh exit $code):"
  cat "$work/start.err"
  [ $code -eq 77 ] && exit 77
  exit 1
fi
eval "$start"
cd "$work"

fail() { echo "FAILED: $*"; exit 1; }
# A leaderboard as CSV without its run-id column (ids follow the order runs were recorded in).
board() { "$plexus" leaderboard "$1" --db "$2" --format csv | sed 's/,"[0-9,]*",/,/; s/,[0-9]*,\([0-9.e+-]*,[0-9.e+-]*,[0-9]*\)$/,\1/'; }
# Waits until the sweep has no job in Slurm's queue (at most $2 s).
wait_queue_empty() {
  for _ in $(seq 1 "$2"); do
    [ -z "$(squeue -h -n "plexus-$1,plexus-$1-next" -o %i)" ] && return 0
    sleep 1
  done
  squeue; fail "the sweep's jobs were still queued after $2 s"
}

# The tests' tiny experiment (tests/tiny_experiment.toml), named.
{ echo 'name = "slurm4"'; cat "$root/tests/tiny_experiment.toml"; } > tiny.toml
cp tiny.toml single.toml
cat >> tiny.toml <<'TOML'
[grid]
seeds = [0, 1]
"optimizer.lr" = [1e-2, 3e-3]
TOML

echo "== 1. a 4-point array sweep against the same sweep run here"
"$plexus" sweep tiny.toml --slurm --db slurm.db | tee submit.out
grep -q "submitted 4 point(s) as Slurm job array" submit.out || fail "the sweep was not submitted as a 4-task array"
wait_queue_empty slurm4 120
"$plexus" sweep tiny.toml --status --db slurm.db | tee status.out
grep -q "points: 4 finished" status.out || fail "the array's 4 points did not all finish"
"$plexus" sweep tiny.toml --db local.db -j 2 --progress none > /dev/null
board slurm4 slurm.db > slurm.csv
board slurm4 local.db > local.csv
diff slurm.csv local.csv || fail "the Slurm sweep's leaderboard differs from the local one"
[ "$(wc -l < slurm.csv)" -eq 3 ] || fail "expected 2 groups in the leaderboard"

echo "== 2. scancel (SIGTERM) and SIGKILL, then submitting again"
long=(--set train.steps=4000 --set train.eval_every=1000 --set train.log_every=100 --set checkpoint.every_steps=500)
"$plexus" sweep tiny.toml --slurm --db cancel.db "${long[@]}" | tee submit2.out
job=$(sed -n 's/.*Slurm job array \([0-9]*\).*/\1/p' submit2.out)
[ -n "$job" ] || fail "no job id printed"
folder=slurm/cancel/slurm4
for _ in $(seq 1 60); do  # both running tasks have started training
  n=0
  for t in 0 1; do grep -q "^step" "$folder/logs/${job}_$t.out" 2>/dev/null && n=$((n + 1)); done
  [ "$n" -eq 2 ] && break
  sleep 1
done
[ "$n" -eq 2 ] || fail "the first two array tasks did not start training within 60 s"
scancel "${job}_0"                           # SIGTERM: the run records itself interrupted
pkill -KILL -f "task_${job}_1.db" || fail "no process of array task ${job}_1 to kill"  # a node failure:
                                             # no chance to record anything, its row left "running"
for _ in $(seq 1 30); do
  squeue -h -j "${job}_0,${job}_1" -o %i 2>/dev/null | grep -q . || break
  sleep 1
done
wait_queue_empty slurm4 180                # the other two finish
"$plexus" sweep tiny.toml --slurm --db cancel.db "${long[@]}" | tee resubmit.out
grep -q "1 marked interrupted" resubmit.out || fail "the run killed outright was not marked interrupted"
grep -q "submitted 2 point(s)" resubmit.out || fail "the two killed points were not submitted again"
wait_queue_empty slurm4 180
"$plexus" sweep tiny.toml --status --db cancel.db "${long[@]}" | tee status2.out
grep -q "points: 4 finished" status2.out || fail "the sweep did not complete after re-submission"
# Every point: exactly one finished run; the two killed runs kept as interrupted; nothing else.
sqlite3 cancel.db "SELECT status, COUNT(*) FROM run GROUP BY status ORDER BY status" | tee counts.txt
[ "$(cat counts.txt)" = $'finished|4\ninterrupted|2' ] || fail "expected 4 finished and 2 interrupted runs"
[ "$(sqlite3 cancel.db "SELECT COUNT(DISTINCT config_hash) FROM run WHERE status = 'finished'")" = 4 ] ||
  fail "a point has two finished runs"
again=$("$plexus" sweep tiny.toml --slurm --db cancel.db "${long[@]}")
echo "$again" | grep -q "nothing to submit" || fail "a complete sweep submitted something again"

echo "== 3. DDP on 2 ranks through srun against the local launcher"
"$plexus" run single.toml --db ddp.db --set 'strategy.name="ddp"' --set 'launch.mode="local"' --set launch.ranks=2 \
  --set train.steps=30 > /dev/null
srun -n 2 "$plexus" run single.toml --db ddp.db --set 'strategy.name="ddp"' --set 'launch.mode="env"' \
  --set train.steps=30 > srun.out 2>&1 || { cat srun.out; fail "srun -n 2 plexus run failed"; }
sqlite3 ddp.db "SELECT run_id, step, value FROM metric WHERE key = 'loss' AND rank = 0 ORDER BY run_id, step" > losses.txt
local_losses=$(awk -F'|' '$1 == 1 { print $2, $3 }' losses.txt)
srun_losses=$(awk -F'|' '$1 == 2 { print $2, $3 }' losses.txt)
[ -n "$local_losses" ] || fail "no losses recorded"
[ "$local_losses" = "$srun_losses" ] || { paste <(echo "$local_losses") <(echo "$srun_losses"); fail "srun's losses differ"; }
[ "$(sqlite3 ddp.db "SELECT world_size FROM run WHERE id = 2")" = 2 ] || fail "the srun run is not 2 ranks"

echo "== 4. an srun task's CPU affinity sets its threads"
srun -n 1 -c 1 "$plexus" run single.toml --db aff.db --set train.threads=0 --set train.steps=2 \
  --set 'results.progress="lines"' > aff.out 2>&1
grep -q "cpu (1 threads)" aff.out || { cat aff.out; fail "the task did not keep to its one CPU"; }

echo "== 5. more points than an array may have tasks: several points a task"
echo "MaxArraySize=3" >> "$SLURM_CONF"      # arrays of at most 2 tasks
scontrol reconfigure
sed 's/^seeds = \[0, 1\]/seeds = [0, 1, 2]/; s/^name = "slurm4"/name = "slurm6"/' tiny.toml > six.toml
"$plexus" sweep six.toml --slurm --db six.db | tee submit6.out
grep -q "submitted 6 point(s) as Slurm job array [0-9]* of 2 tasks, 3 points each" submit6.out ||
  fail "6 points were not split over 2 array tasks"
wait_queue_empty slurm6 120
"$plexus" sweep six.toml --status --db six.db | grep -q "points: 6 finished" || fail "not all 6 points finished"
"$plexus" sweep six.toml --db local6.db -j 2 --progress none > /dev/null
diff <(board slurm6 six.db) <(board slurm6 local6.db) ||
  fail "the 6-point Slurm sweep's leaderboard differs from the local one"

echo "all Slurm checks passed"
