#!/usr/bin/env python3
"""python/plexus_results.py against the plexus binary that wrote the database.

    python3 tests/python/test_plexus_results.py PLEXUS_BINARY

Runs two tiny sweeps (22 runs of 20 steps, seconds) into a fresh temporary database, then checks
that the Python leaderboard gives what `plexus leaderboard --format csv` prints (groups, order,
runs, n, mean, std, the 95% interval, censoring, paired differences, the tuned choice) for the
default grouping, --group-by, --runs, --best-over/--tuning-seeds, --baseline, and several metrics;
that the tables read with pandas and without it (pandas hidden from a child process) are the same;
and that the Student-t quantile is accurate. Exit 0 on success. Standard library only; pandas is
used when it is there.

    python3 tests/python/test_plexus_results.py PLEXUS_BINARY --db DB --cli-cache FILE --no-pandas
is the child: the same checks on an existing database with pandas unimportable.
"""

import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))
if "--no-pandas" in sys.argv:
    sys.modules["pandas"] = None  # `import pandas` now raises ImportError, as where it is not installed

import plexus_results as pr  # noqa: E402

# The tests' tiny synthetic-data experiment (tests/tiny_experiment.toml, as the C++ tests use it),
# run shorter and evaluated every 5 steps (SETTINGS) so that the eval curves have points for
# loss_at / tokens_to / time_to.
with open(os.path.join(HERE, "..", "tiny_experiment.toml")) as f:
    TINY = f.read()
SETTINGS = ["train.steps=20", "train.eval_every=5", "train.eval_batches=2", "train.log_every=5"]

# Two rates x two depths x three seeds: groups of 3 (df 2), a second grouping key for --baseline
# to pair within, and --best-over optimizer.lr --tuning-seeds 0 leaving groups of 2 (df 1).
GRID = 'name = "py_grid"\n' + TINY + """
[grid]
seeds = [0, 1, 2]
"optimizer.lr" = [1e-2, 3e-3]
"model.n_layer" = [1, 2]
"""

# The same rates tuned by the sweep itself on seed 7, then the chosen rate on seeds 0, 1, 2.
TUNE = 'name = "py_tune"\n' + TINY + """
[grid]
seeds = [0, 1, 2]
"model.n_layer" = [1, 2]

[grid.tune]
"optimizer.lr" = [1e-2, 3e-3]
seeds = [7]
"""

FIXED = {"rank", "n", "runs", "ci_low", "ci_high", "censored", "diff_mean", "diff_low", "diff_high", "pairs",
         "tuned", "trials"}


def run(cmd, expect=0):
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert (res.returncode == expect) if expect is not None else res.returncode != 0, (
        "%s exited %d:\n%s" % (" ".join(cmd), res.returncode, res.stdout[-3000:]))
    return res.stdout


def records(table):
    """A DataFrame or a list of dicts, as a list of dicts."""
    return table if isinstance(table, list) else table.to_dict("records")


def is_missing(v):
    return v is None or (isinstance(v, float) and math.isnan(v))


def close(text, value, what):
    """A CSV cell (%.10g, empty for none) against the Python number."""
    if text == "":
        assert is_missing(value), "%s: CLI has none, Python %r" % (what, value)
        return
    expected = float(text)
    assert not is_missing(value), "%s: CLI %s, Python none" % (what, text)
    # The CSV prints 10 significant digits; 1e-8 relative is well inside the 1e-6 asked of it.
    assert abs(value - expected) <= 1e-8 * abs(expected) + 1e-12, "%s: CLI %s, Python %r" % (what, text, value)


def same_setting(text, value, what):
    if value is None:
        ok = text == ""
    elif isinstance(value, bool):
        ok = text == ("true" if value else "false")
    elif isinstance(value, (int, float)):
        ok = float(text) == float(value)
    elif isinstance(value, list):
        ok = json.loads(text) == value
    else:
        ok = text == value
    assert ok, "%s: CLI %r, Python %r" % (what, text, value)


# The CLI's answers, by its arguments: plexus starts in about a second (LibTorch), so each
# leaderboard is asked once and the cache goes to the child process too.
CLI_CACHE = {}


def cli_board(binary, db, sweep, options):
    args = ["leaderboard"] + ([sweep] if sweep else []) + options + ["--db", db, "--format", "csv"]
    key = " ".join(args)
    if key not in CLI_CACHE:
        CLI_CACHE[key] = run([binary] + args)
    return list(csv.DictReader(io.StringIO(CLI_CACHE[key])))


def compare(binary, db, results, sweep=None, cli_options=(), **kwargs):
    """One leaderboard, the CLI's against the Python one, row by row in rank order."""
    what = "leaderboard %s %s" % (sweep or "", " ".join(cli_options))
    cli = cli_board(binary, db, sweep, list(cli_options))
    py = records(results.leaderboard(sweep, **kwargs))
    assert len(cli) == len(py), "%s: CLI %d rows, Python %d" % (what, len(cli), len(py))
    assert cli, what + ": no rows (the test's sweep did not run?)"
    metric = kwargs.get("metric", "final_eval_loss")
    mean_col, std_col = metric + "_mean", metric + "_std"
    keys = [k for k in cli[0] if k not in FIXED and k not in (mean_col, std_col)]
    for c, p in zip(cli, py):
        at = "%s, rank %s" % (what, c["rank"])
        assert int(c["rank"]) == p["rank"], at
        assert c["runs"] == ",".join(str(r) for r in p["runs"]), "%s: runs %s vs %s" % (at, c["runs"], p["runs"])
        for k in keys:
            same_setting(c[k], p[k], at + " " + k)
        assert int(c["n"]) == p["n"], "%s: n %s vs %s" % (at, c["n"], p["n"])
        assert int(c["censored"]) == p["censored"], at + ": censored"
        close(c[mean_col], p["mean"], at + " mean")
        close(c[std_col], p["std"], at + " std")
        close(c["ci_low"], p["ci_low"], at + " ci_low")
        close(c["ci_high"], p["ci_high"], at + " ci_high")
        if "diff_mean" in c:
            assert int(c["pairs"]) == p["pairs"], at + ": pairs"
            for col in ("diff_mean", "diff_low", "diff_high"):
                close(c[col], p[col], at + " " + col)
        if "tuned" in c:
            assert c["tuned"] == p["tuned"] and int(c["trials"]) == p["trials"], "%s: tuned %s (%s) vs %s (%s)" % (
                at, c["tuned"], c["trials"], p["tuned"], p["trials"])
    return py


def check_leaderboards(binary, db, results):
    """Every option of the CLI's leaderboard that the reader implements, on both sweeps."""
    # Default: groups by the varying keys but the seed (rate x depth), 3 seeds each.
    board = compare(binary, db, results, "py_grid")
    assert len(board) == 4 and all(r["n"] == 3 for r in board), board
    assert set(board[0]) >= {"optimizer.lr", "model.n_layer", "mean", "std", "ci_low", "ci_high", "runs"}
    compare(binary, db, results, "py_grid", ["--group-by", "optimizer.lr"], group_by=["optimizer.lr"])  # n = 6
    compare(binary, db, results, "py_grid", ["--runs"], per_run=True)
    # Equal tuning budgets: the rate chosen per depth on seed 0, reported on seeds 1 and 2.
    tuned = compare(binary, db, results, "py_grid", ["--best-over", "optimizer.lr", "--tuning-seeds", "0"],
                    best_over=["optimizer.lr"], tuning_seeds=[0])
    assert len(tuned) == 2 and all(r["n"] == 2 and r["trials"] == 2 for r in tuned), tuned
    compare(binary, db, results, "py_grid", ["--best-over", "optimizer.lr", "--tuning-seeds", "0,1"],
            best_over="optimizer.lr", tuning_seeds=["0", "1"])
    # Paired differences, within each depth, against the 0.01 rate; and with the tuning.
    lr = results.settings(results.runs("py_grid"), keys=["optimizer.lr"], text=True)
    base = "optimizer.lr=" + records(lr)[0]["optimizer.lr"]
    paired = compare(binary, db, results, "py_grid", ["--baseline", base], baseline=base)
    assert all(r["pairs"] == 3 for r in paired), paired
    compare(binary, db, results, "py_grid", ["--baseline", "model.n_layer=1"], baseline="model.n_layer=1")
    compare(binary, db, results, "py_grid", ["--baseline", "model.n_layer=2", "--best-over", "optimizer.lr",
                                             "--tuning-seeds", "2"],
            baseline="model.n_layer=2", best_over=["optimizer.lr"], tuning_seeds=[2])
    # Other metrics: higher is better; a summary key; from the eval curves, with censoring.
    compare(binary, db, results, "py_grid", ["--metric", "tokens_per_s"], metric="tokens_per_s")
    compare(binary, db, results, "py_grid", ["--metric", "final_loss"], metric="final_loss")
    compare(binary, db, results, "py_grid", ["--metric", "loss_at", "--tokens", "3000"], metric="loss_at", tokens=3000)
    finals = sorted(r["mean"] for r in board)
    target = "%.6g" % ((finals[1] + finals[2]) / 2)  # some groups get there, some never do
    censored = compare(binary, db, results, "py_grid", ["--metric", "tokens_to", "--target", target],
                       metric="tokens_to", target=float(target))
    assert any(r["censored"] for r in censored) and any(not r["censored"] for r in censored), censored
    compare(binary, db, results, "py_grid", ["--metric", "time_to", "--target", target], metric="time_to",
            target=float(target))
    compare(binary, db, results, "py_grid", ["--metric", "tokens_to", "--target", target, "--best-over",
                                             "optimizer.lr", "--tuning-seeds", "1", "--tune-metric", "tokens_to"],
            metric="tokens_to", target=float(target), best_over=["optimizer.lr"], tuning_seeds=[1],
            tune_metric="tokens_to")
    # The sweep that tuned itself: by default the newest sweep; its tuning runs (seed 7) chose.
    compare(binary, db, results)
    compare(binary, db, results, "py_tune", ["--best-over", "optimizer.lr", "--tuning-seeds", "7"],
            best_over=["optimizer.lr"], tuning_seeds=[7])
    compare(binary, db, results, "py_tune", ["--best-over", "optimizer.lr", "--tuning-seeds", "7", "--baseline",
                                             "model.n_layer=1"],
            best_over=["optimizer.lr"], tuning_seeds=[7], baseline="model.n_layer=1")
    # A sweep by id, as the CLI takes it.
    sweep_id = str(records(results.sweeps())[-1]["id"])
    compare(binary, db, results, sweep_id)
    # Mistakes are refused, as by the CLI.
    if "typo refused" not in CLI_CACHE:
        run([binary, "leaderboard", "py_grid", "--metric", "final_eval_los", "--db", db], expect=None)
        CLI_CACHE["typo refused"] = ""
    for kwargs, error in [(dict(metric="final_eval_los"), ValueError), (dict(best_over=["optimizer.lr"]), ValueError),
                          (dict(baseline="optimizer.lr"), ValueError), (dict(baseline="optimizer.lr=7"), ValueError),
                          (dict(group_by=["no.such"]), ValueError)]:
        try:
            results.leaderboard("py_grid", **kwargs)
        except error:
            pass
        else:
            raise AssertionError("leaderboard(%r) was not refused" % kwargs)
    try:
        results.leaderboard("no_such_sweep")
        raise AssertionError("an unknown sweep was not refused")
    except LookupError:
        pass


def check_tables(results):
    """What the tables hold, on the py_grid sweep."""
    sweeps = records(results.sweeps())
    assert [s["name"] for s in sweeps] == ["py_tune", "py_grid"], sweeps
    assert sweeps[1]["runs"] == 12 and sweeps[0]["runs"] == 10, sweeps
    runs = records(results.runs("py_grid"))
    assert len(runs) == 12 and all(r["status"] == "finished" and r["sweep"] == "py_grid" for r in runs)
    assert sorted({r["seed"] for r in runs}) == [0, 1, 2]
    assert len(records(results.runs("py_grid", latest=True))) == 12
    # Across the database, one run per configuration: py_tune repeats some of py_grid's.
    everything = records(results.runs(status="finished"))
    assert len(records(results.runs(latest=True))) == len({r["config_hash"] for r in everything}) < 22
    settings = records(results.settings(results.runs("py_grid"), varying=True))
    assert list(settings[0]) == ["run", "model.n_layer", "optimizer.lr", "train.seed"], list(settings[0])
    assert {s["optimizer.lr"] for s in settings} == {0.01, 0.003}
    assert all(isinstance(s["train.seed"], int) for s in settings)
    everything = records(results.settings([runs[0]["id"]]))[0]
    assert everything["model.fused_norm"] in (True, False) and isinstance(everything["optimizer.betas"], list)
    curves = records(results.metrics(results.runs("py_grid"), name="eval_loss"))
    assert len(curves) == 12 * 4 and curves[0]["tokens"] == 1280, curves[:2]
    summaries = records(results.summaries(results.runs("py_grid")))
    finals = {s["run"]: s["final_eval_loss"] for s in summaries}
    last_eval = {c["run"]: c["value"] for c in curves}  # the last evaluation is the final one
    assert all(abs(finals[r] - last_eval[r]) < 1e-12 for r in finals), (finals, last_eval)
    long = records(results.summaries([runs[0]["id"]], wide=False))
    assert any(s["key"] == "peak_source" and s["text"] for s in long)
    # What the leaderboard's mean is, from the tables by hand.
    board = records(results.leaderboard("py_grid"))
    for row in board:
        values = [finals[r] for r in row["runs"]]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        assert abs(row["mean"] - mean) < 1e-12 and abs(row["std"] - std) < 1e-12, row


def snapshot(results):
    """Every table the reader gives, as plain JSON-able values, to compare pandas with lists."""
    grid = results.runs("py_grid")
    ids = [r["id"] for r in records(grid)]

    def plain(v):
        if is_missing(v):
            return None
        if isinstance(v, list):
            return [plain(x) for x in v]
        if hasattr(v, "item"):  # a numpy scalar
            v = v.item()
        if isinstance(v, bool) or isinstance(v, str):
            return v
        if isinstance(v, (int, float)):
            return float(v)
        return v

    tables = {
        "sweeps": results.sweeps(),
        "runs": results.runs(),
        "runs_grid": grid,
        "runs_latest": results.runs("py_tune", status="finished", latest=True),
        "settings": results.settings(grid),
        "settings_varying": results.settings(ids, varying=True),
        "settings_text": results.settings(ids[:3], text=True),
        "metrics": results.metrics(ids[:3]),
        "metrics_eval": results.metrics(grid, name=["eval_loss", "loss"]),
        "summaries": results.summaries(grid),
        "summaries_long": results.summaries(ids[:2], wide=False),
        "board": results.leaderboard("py_grid"),
        "board_tuned": results.leaderboard("py_grid", best_over=["optimizer.lr"], tuning_seeds=[0],
                                           baseline="model.n_layer=1"),
        "board_tokens_to": results.leaderboard("py_grid", metric="tokens_to", target=1.5),
        "board_runs": results.leaderboard("py_tune", per_run=True),
        "sql": results.sql("SELECT id, name FROM run WHERE id < ?", (4,)),
    }
    return {name: [{k: plain(v) for k, v in row.items()} for row in records(t)] for name, t in tables.items()}


def check_t_quantile():
    """t_quantile against closed forms (df 1, 2, 4), the Cornish-Fisher expansion (large df),
    and the density integrated numerically (df between), for 1e-6 relative and better."""
    def rel(a, b):
        return abs(a - b) / abs(b)

    for p in (0.6, 0.9, 0.975, 0.995, 0.9995):
        assert rel(pr.t_quantile(p, 1), math.tan(math.pi * (p - 0.5))) < 1e-12
        assert rel(pr.t_quantile(p, 2), (2 * p - 1) / math.sqrt(2 * p * (1 - p))) < 1e-12
        a = 4 * p * (1 - p)  # df 4: t = 2 sqrt(q - 1), q = cos(acos(sqrt(a)) / 3) / sqrt(a)
        q = math.cos(math.acos(math.sqrt(a)) / 3) / math.sqrt(a)
        assert rel(pr.t_quantile(p, 4), 2 * math.sqrt(q - 1)) < 1e-10, p
        assert rel(pr.t_quantile(1 - p, 3), -pr.t_quantile(p, 3)) < 1e-14
    # Large df: t = z + g1/v + g2/v^2 + g3/v^3 + g4/v^4 (Abramowitz and Stegun 26.7.5); the
    # terms left out are below 1e-10 relative from df 100.
    from statistics import NormalDist
    z = NormalDist().inv_cdf(0.975)
    for v in (100, 150, 200, 300, 500, 700, 999, 1000):
        g1 = (z ** 3 + z) / 4
        g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
        g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
        g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
        expansion = z + g1 / v + g2 / v ** 2 + g3 / v ** 3 + g4 / v ** 4
        assert rel(pr.t_quantile(0.975, v), expansion) < 1e-9, v
    # Between: the density integrated from 0 to the quantile (Simpson) must be 0.475.
    for v in (3, 5, 6, 9, 10, 19, 30, 50, 99):
        t = pr.t_quantile(0.975, v)
        c = math.exp(math.lgamma((v + 1) / 2) - math.lgamma(v / 2)) / math.sqrt(v * math.pi)
        steps = 4000
        h = t / steps
        area = sum((1 if k in (0, steps) else 4 if k % 2 else 2) * c * (1 + (k * h) ** 2 / v) ** (-(v + 1) / 2)
                   for k in range(steps + 1)) * h / 3
        assert abs(area - 0.475) < 1e-11, (v, area)
    # Every df 1..1000: decreasing towards the normal quantile, and the cdf inverts it.
    previous = math.inf
    for v in range(1, 1001):
        t = pr.t_quantile(0.975, v)
        assert z < t < previous, v
        assert abs(pr.t_cdf(t, v) - 0.975) < 1e-13, v
        previous = t


def normalize_for_diff(snap):
    return json.dumps(snap, sort_keys=True, default=str)


def main():
    args = sys.argv[1:2] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else []
    if not args:
        print(__doc__)
        return 2
    binary = os.path.abspath(args[0])
    if "--no-pandas" in sys.argv:
        # The child: the list path end to end, on the parent's database.
        db = sys.argv[sys.argv.index("--db") + 1]
        with open(sys.argv[sys.argv.index("--cli-cache") + 1]) as f:
            CLI_CACHE.update(json.load(f))
        assert pr._pd is None
        results = pr.open(db)
        assert results.frames is False and isinstance(results.runs(), list)
        check_leaderboards(binary, db, results)
        check_tables(results)
        print(json.dumps(snapshot(results)))
        return 0

    check_t_quantile()
    tmp = tempfile.mkdtemp(prefix="plexus_py_")
    try:
        db = os.path.join(tmp, "results.db")
        for name, text in (("grid.toml", GRID), ("tune.toml", TUNE)):
            path = os.path.join(tmp, name)
            with open(path, "w") as f:
                f.write(text)
            run([binary, "sweep", path, "--db", db, "--progress", "none", "-j", "2"] +
                [arg for setting in SETTINGS for arg in ("--set", setting)])

        # Lists of dicts, forced, in this process.
        lists = pr.open(db, frames=False)
        check_leaderboards(binary, db, lists)
        check_tables(lists)
        # DataFrames, when pandas is here: the same numbers.
        if pr._pd is not None:
            frames = pr.open(db)
            assert frames.frames and isinstance(frames.runs(), pr._pd.DataFrame)
            check_leaderboards(binary, db, frames)
            check_tables(frames)
            assert normalize_for_diff(snapshot(frames)) == normalize_for_diff(snapshot(lists))
        else:
            print("pandas is not importable here: the DataFrame path was not checked")
        # pandas hidden from a child process: its lists are the same as here.
        cache = os.path.join(tmp, "cli.json")
        with open(cache, "w") as f:
            json.dump(CLI_CACHE, f)
        out = run([sys.executable, os.path.abspath(__file__), binary, "--db", db, "--cli-cache", cache, "--no-pandas"])
        child = json.loads(out.strip().splitlines()[-1])
        assert normalize_for_diff(child) == normalize_for_diff(json.loads(json.dumps(snapshot(lists)))), \
            "the tables without pandas differ from those with it"
        lists.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("plexus_results: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
