#!/usr/bin/env bash
# bench/ddp_overlap: DDP on 2 local ranks (Gloo) with the bucket all-reduces overlapped with
# backward, and without (all started after backward), in alternating runs; prints the step time
# of each, their ratio, and the exposed communication fraction (time blocked in wait() over the
# training time), from the results database.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
plexus=${PLEXUS:-$root/build/plexus}
work=$(mktemp -d /tmp/plexus-ddp-overlap-XXXXXX)
trap 'rm -rf "$work"' EXIT
db="$work/r.db"
cat > "$work/exp.toml" <<TOML
[model]
name = "gpt"
n_layer = 4
d_model = 128
n_head = 4
[data]
name = "synthetic"
vocab_size = 256
[strategy]
name = "ddp"
bucket_mb = 0.5
[launch]
mode = "local"
ranks = 2
[train]
steps = 30
batch_size = 8
seq_len = 128
eval_every = 0
eval_batches = 1
log_every = 10
peak_flops = 1e11
[results]
progress = "none"
TOML
for round in 1 2; do
  for overlap in true false; do
    "$plexus" run "$work/exp.toml" --db "$db" --set strategy.overlap=$overlap --set name=overlap-$overlap > /dev/null 2>&1
  done
done
echo "ddp_overlap: GPT L=4 D=128, 2 ranks over Gloo, bucket 0.5 MiB, mean of 2 runs each (alternating)"
sqlite3 "$db" "
  WITH per_run AS (
    SELECT r.name AS name, st.value AS step_time, ex.value / (st.value * sp.value) AS exposed
    FROM run r
    JOIN summary st ON st.run_id = r.id AND st.key = 'step_time' AND st.rank = 0
    JOIN summary sp ON sp.run_id = r.id AND sp.key = 'steps' AND sp.rank = 0
    JOIN summary ex ON ex.run_id = r.id AND ex.key = 'comm_exposed_time' AND ex.rank = 0),
  agg AS (SELECT name, avg(step_time) AS step_time, avg(exposed) AS exposed FROM per_run GROUP BY name)
  SELECT line FROM (
    SELECT printf('  %-14s step %.1f ms, exposed communication %.1f%% of step time',
                  name, step_time * 1000, exposed * 100) AS line, name AS k FROM agg
    UNION ALL
    SELECT printf('  step time on/off: %.3f', (SELECT step_time FROM agg WHERE name = 'overlap-true') /
                                              (SELECT step_time FROM agg WHERE name = 'overlap-false')), 'z')
  ORDER BY k;"
