#!/usr/bin/env python3
"""Complexity exponents of experiments/dadao.toml: for each method and seed, the slope of
log(gradients to the target) against log(condition), over the conditions of the sweep, with the
mean's 95% t interval over seeds. Accelerated: slope 1/2 (sqrt(L/mu)); gradient descent: 1.

    python3 experiments/dadao_scaling.py [SWEEP ...] [--target 1e-9] [--plexus build/plexus]

Several sweeps (dadao and dadao_large) are read together: their conditions join one fit.

Reads `plexus leaderboard --runs --format csv` (each group's learning rate chosen on seed 100 by
tokens to the target), so it counts what the leaderboard counts: tokens / 8 = gradients per
worker (one worker's micro-batch is 8 tokens in dadao.toml).
"""
import argparse
import csv
import sqlite3
import io
import math
import subprocess
from collections import defaultdict

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def runs(plexus, sweep, target):
    cmd = [plexus, "leaderboard", sweep, "--metric", "tokens_to", "--best-over", "optimizer.lr",
           "--tuning-seeds", "100", "--tune-metric", "tokens_to", "--runs", "--format", "csv"]
    if target:
        cmd += ["--target", target]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return list(csv.DictReader(io.StringIO(out)))


def slope(points):
    xs = [math.log10(c) for c, _ in points]
    ys = [math.log10(g) for _, g in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sweeps", nargs="*", default=["dadao"])
    ap.add_argument("--target", default="")
    ap.add_argument("--plexus", default="build/plexus")
    ap.add_argument("--db", default="results/plexus.db")
    args = ap.parse_args()
    by = defaultdict(lambda: defaultdict(dict))  # method -> seed -> condition -> gradients
    rows = [r for sweep in args.sweeps for r in runs(args.plexus, sweep, args.target)]
    db = sqlite3.connect(args.db)
    setting = lambda run, key: db.execute(  # a sweep with one condition has no column for it
        "SELECT value FROM param WHERE run_id = ? AND key = ?", (int(run), key)).fetchone()[0]
    for r in rows:
        value = float(r["tokens_to_mean"]) if r["tokens_to_mean"] not in ("", "inf") else math.inf
        seed, condition = setting(r["runs"], "train.seed"), float(setting(r["runs"], "model.condition"))
        by[setting(r["runs"], "strategy.name")][seed][condition] = value / 8
    print(f"gradients per worker to {args.target or 'each run s target'}; slope of log(gradients) "
          "over log(L/mu), per seed, then the mean [95% t interval]")
    for method, seeds in sorted(by.items()):
        slopes = []
        for seed, points in sorted(seeds.items()):
            pts = sorted(points.items())
            cells = " ".join(f"{c:g}:{g:.0f}" if math.isfinite(g) else f"{c:g}:>budget" for c, g in pts)
            finite = [(c, g) for c, g in pts if math.isfinite(g)]
            s = slope(finite) if len(finite) == len(pts) and len(pts) > 1 else math.nan
            if math.isfinite(s):
                slopes.append(s)
            print(f"  {method:8s} seed {seed}: {cells}  slope {s:.3f}")
        n = len(slopes)
        if n >= 2:
            m = sum(slopes) / n
            sd = math.sqrt(sum((s - m) ** 2 for s in slopes) / (n - 1))
            h = T975.get(n - 1, 1.96) * sd / math.sqrt(n)
            print(f"  {method:8s} slope {m:.3f} [{m - h:.3f}, {m + h:.3f}] over {n} seeds")
        else:
            print(f"  {method:8s} slope: fewer than 2 seeds reached the target at every condition")


if __name__ == "__main__":
    main()
