#!/usr/bin/env python3
"""A sweep's leaderboard and each run's final eval loss, from a plexus results database.

    python3 python/example_sweep_report.py results/plexus.db [SWEEP]

SWEEP: a sweep's name or id (default: the newest). Standard library only: it reads the tables as
lists of dicts, so it runs the same with pandas installed or not.
"""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # plexus_results.py sits beside it

import plexus_results  # noqa: E402


def number(v, digits=4):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else "%.*f" % (digits, v)


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__.strip())
        return 2
    db = plexus_results.open(sys.argv[1], frames=False)
    sweeps = db.sweeps()
    if not sweeps:
        print("%s has no sweep" % sys.argv[1])
        return 1
    sweep = sys.argv[2] if len(sys.argv) == 3 else sweeps[0]["name"]

    # The leaderboard: one row per group of seeds, best first.
    board = db.leaderboard(sweep)
    print("sweep %s: final_eval_loss, mean ± std over seeds, 95%% interval (Student t)" % sweep)
    width = max([len(row["group"]) for row in board] + [5])
    for row in board:
        interval = "[%s, %s]" % (number(row["ci_low"]), number(row["ci_high"])) if row["n"] > 1 else "-"
        print("%3d  %-*s  %s ± %s  n=%d  %s  runs %s" % (row["rank"], width, row["group"] or "(all)",
                                                         number(row["mean"]), number(row["std"]), row["n"],
                                                         interval, ",".join(str(r) for r in row["runs"])))

    # Each run: its status, varying settings and final eval loss (NaN/"-": none recorded).
    runs = db.runs(sweep)
    settings = {s["run"]: s for s in db.settings(runs, varying=True)}
    finals = {s["run"]: s.get("final_eval_loss") for s in db.summaries(runs)}
    print("\nruns:")
    for r in runs:
        varying = " ".join("%s=%s" % (k, v) for k, v in settings[r["id"]].items() if k != "run")
        print("%5d  %-11s %-8s %s" % (r["id"], r["status"], number(finals.get(r["id"])), varying))
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
