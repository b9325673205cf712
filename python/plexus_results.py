"""Read plexus's results database (results/plexus.db) from Python: notebooks and scripts.

    import plexus_results as pr
    db = pr.open("results/plexus.db")
    db.sweeps()                                   # the sweeps, newest first
    runs = db.runs(sweep="grid_small")            # one row per run
    db.settings(runs, varying=True)               # one column per setting that differs
    db.metrics(runs, name="eval_loss")            # long: run, name, step, tokens, value, ...
    db.summaries(runs)                            # wide: one column per summary figure
    db.leaderboard("grid_small")                  # what `plexus leaderboard grid_small` ranks

Tables come back as pandas DataFrames when pandas can be imported, else as lists of dicts (one
dict per row, the same keys as the DataFrame's columns); `open(path, frames=False)` asks for lists
even with pandas there. Missing numbers are NaN in both forms, missing settings None.

Only the standard library is needed (sqlite3, math). The file is opened read-only, so a notebook
can read a database while a sweep is still writing it (SQLite in WAL mode lets both go on).

`leaderboard()` recomputes `plexus leaderboard`'s numbers (host/lab/leaderboard.cpp) in Python:
the same runs (the newest finished run of each configuration), the same groups, mean, sample std,
the mean's 95% Student-t interval, --best-over/--tuning-seeds, --baseline and --runs. It does not
produce the CLI's warnings or --profile. The Student-t quantile is computed here
(`t_quantile`), without scipy.
"""

import json
import math
import os
import sqlite3
import urllib.parse
import warnings

try:  # optional: DataFrames when it is there, lists of dicts when it is not
    import pandas as _pd
except ImportError:
    _pd = None

__all__ = ["open", "Results", "t_quantile", "t_cdf", "t_interval", "SCHEMA_VERSION"]

# The schema version plexus writes (PRAGMA user_version; host/store/results.cpp's migrations).
SCHEMA_VERSION = 3

# Figures where more is better; every other metric ranks lowest first (as the CLI does).
_HIGHER_IS_BETTER = {"mfu", "tokens_per_s", "tokens", "steps"}
# Settings without a dot that are settings, not a grid's named axes (variant, workload, ...).
_TOP_LEVEL_SETTINGS = {"name", "description", "plugin_path", "faults"}
# Metrics computed from a run's eval_loss curve rather than read from its summary.
_CURVE_METRICS = {"loss_at", "tokens_to", "time_to"}
_NAN = float("nan")


def open(path="results/plexus.db", frames=None):  # shadows the builtin only as pr.open
    """Open a results database read-only. frames: True for DataFrames (needs pandas), False for
    lists of dicts, None (default) for DataFrames when pandas is importable."""
    return Results(path, frames=frames)


# ---------------------------------------------------------------------------------------------
# Student t, without scipy


def _betainc(a, b, x, y):
    """The regularized incomplete beta I_x(a, b), with y = 1 - x passed in so that x near 1
    loses no digits (x = df / (df + t^2) is close to 1 when df is large)."""
    if x <= 0:
        return 0.0
    if y <= 0:
        return 1.0
    # The continued fraction converges fast for x < (a + 1) / (a + b + 2); otherwise use
    # I_x(a, b) = 1 - I_y(b, a).
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, y, x)
    log_front = a * math.log(x) + b * math.log(y) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    # Modified Lentz evaluation of the continued fraction (Numerical Recipes' form).
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100000):
        m2 = 2 * m
        even = m * (b - m) * x / ((a + m2 - 1) * (a + m2))
        odd = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))
        for num in (even, odd):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return math.exp(log_front) * h / a


def t_cdf(t, df):
    """P(T <= t) for Student's t with df degrees of freedom."""
    if t == 0:
        return 0.5
    # P(|T| > t) = I_{df/(df+t^2)}(df/2, 1/2); both x and 1-x from t to keep the small one exact.
    x = df / (df + t * t)
    y = t * t / (df + t * t)
    two_tails = _betainc(df / 2.0, 0.5, x, y)
    return 1.0 - two_tails / 2 if t > 0 else two_tails / 2


_t_cache = {}


def t_quantile(p, df):
    """The p quantile of Student's t with df degrees of freedom (df >= 1; what boost's
    quantile(students_t(df), p) gives, to about 1e-12 relative)."""
    if not 0 < p < 1:
        raise ValueError("p must be in (0, 1)")
    if df <= 0:
        raise ValueError("df must be positive")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1 - p, df)
    if (p, df) in _t_cache:
        return _t_cache[(p, df)]
    if df == 1:  # Cauchy: exact
        q = math.tan(math.pi * (p - 0.5))
    elif df == 2:  # exact
        q = (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    else:
        # Bracket, then bisect: the cdf is monotone, and bisection cannot overshoot where the
        # density is flat. 0..1 doubles until the cdf passes p.
        lo, hi = 0.0, 1.0
        while t_cdf(hi, df) < p:
            lo, hi = hi, hi * 2
        for _ in range(200):
            mid = (lo + hi) / 2
            if mid in (lo, hi):
                break
            if t_cdf(mid, df) < p:
                lo = mid
            else:
                hi = mid
        q = (lo + hi) / 2
    _t_cache[(p, df)] = q
    return q


def t_interval(values):
    """Mean, sample std (n - 1) and the mean's two-sided 95% Student-t interval over the finite
    values, as a dict: n, mean, std, ci_low, ci_high. One value: std 0 and no interval (NaN);
    none: everything NaN but n = 0. (host/lab/leaderboard.cpp's t_interval.)"""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return {"n": 0, "mean": _NAN, "std": _NAN, "ci_low": _NAN, "ci_high": _NAN}
    mean = _sum(finite) / n
    ss = _sum((v - mean) * (v - mean) for v in finite)
    std = math.sqrt(ss / (n - 1)) if n > 1 else 0.0
    if n < 2:
        return {"n": n, "mean": mean, "std": std, "ci_low": _NAN, "ci_high": _NAN}
    half = t_quantile(0.975, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def _sum(values):
    # Left to right, like the C++ loop, so that means agree to the last bit (math.fsum would be
    # more exact, but different).
    total = 0.0
    for v in values:
        total += v
    return total


# ---------------------------------------------------------------------------------------------
# Values


def _parse_setting(kind, text):
    """A param row's value as Python: int, float, bool, str, or a list (JSON text)."""
    if text is None:
        return None
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            return text
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            return text
    if kind == "bool":
        return text == "true"
    if kind == "list":
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _number(v):
    """A REAL column's value: NULL (plexus stores NaN as NULL) reads as NaN."""
    return _NAN if v is None else float(v)


def _run_ids(runs):
    """Run ids from an int, ids, a runs() table (its id column), or settings()/metrics() output
    (their run column)."""
    if runs is None:
        return None
    if isinstance(runs, (int,)) and not isinstance(runs, bool):
        return [runs]
    if _pd is not None:
        if isinstance(runs, _pd.DataFrame):
            column = "id" if "id" in runs.columns else "run"
            return [int(v) for v in runs[column].tolist()]
        if isinstance(runs, _pd.Series):
            return [int(v) for v in runs.tolist()]
    ids = []
    for r in runs:
        if isinstance(r, dict):
            ids.append(int(r["id"] if "id" in r else r["run"]))
        else:
            ids.append(int(r))
    return ids


def _key_list(value):
    """None, "a,b", 7 or a list, as a list of text (seeds are compared as the database's text)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    if isinstance(value, int):
        return [str(value)]
    return [str(v) for v in value]


def _chunks(ids, size=500):
    # SQLite caps the variables of one statement (999 in older builds).
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


# ---------------------------------------------------------------------------------------------
# The database


class Results:
    """A read-only view of one results database. See the module's docstring."""

    def __init__(self, path="results/plexus.db", frames=None):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                "no results database at %s (runs go to results/plexus.db below the folder plexus ran in "
                "unless --db or [results] db named another)" % path
            )
        if frames and _pd is None:
            raise ImportError("frames=True needs pandas; frames=False gives lists of dicts")
        self.frames = _pd is not None if frames is None else bool(frames)
        self.path = path
        uri = "file:%s?mode=ro" % urllib.parse.quote(os.path.abspath(path))
        self._db = sqlite3.connect(uri, uri=True)
        self._db.execute("PRAGMA busy_timeout = 10000")  # a sweep may be writing
        self.schema_version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"run", "param", "metric", "summary", "sweep"} <= tables:
            self._db.close()
            raise ValueError("%s is not a plexus results database (its tables: %s)" % (path, ", ".join(sorted(tables))))
        if self.schema_version > SCHEMA_VERSION:  # written by a newer plexus: read what is known
            warnings.warn("%s has schema version %d, newer than this reader knows (%d)"
                          % (path, self.schema_version, SCHEMA_VERSION))
        # Schema 1 had no run.command: read the columns that are there.
        self._run_columns = {r[1] for r in self._db.execute("PRAGMA table_info(run)")}

    def close(self):
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _table(self, rows, columns):
        """rows (dicts) as a DataFrame or as the list itself."""
        if self.frames:
            return _pd.DataFrame(rows, columns=columns)
        return [{c: r.get(c) for c in columns} for r in rows]

    def sql(self, query, params=()):
        """Any SELECT, as a table (column names from the query)."""
        cur = self._db.execute(query, params)
        columns = [d[0] for d in cur.description]
        return self._table([dict(zip(columns, row)) for row in cur], columns)

    # --- sweeps and runs

    def sweeps(self):
        """One row per sweep, newest first: id, name, created (seconds since the epoch), git_rev,
        host, runs (how many runs it recorded), finished (how many finished)."""
        rows = []
        for sid, name, created, git_rev, host in self._db.execute(
            "SELECT id, name, created, git_rev, host FROM sweep ORDER BY id DESC"
        ):
            runs, finished = self._db.execute(
                "SELECT count(*), coalesce(sum(status = 'finished'), 0) FROM run WHERE sweep_id = ?", (sid,)
            ).fetchone()
            rows.append(dict(id=sid, name=name, created=created, git_rev=git_rev, host=host, runs=runs,
                             finished=finished))
        return self._table(rows, ["id", "name", "created", "git_rev", "host", "runs", "finished"])

    def _find_sweep(self, which):
        """(id, name) of a sweep as the CLI finds it: None for the newest; a name (the newest sweep
        of that name) before an id. None when the database has no sweep and none was named."""
        sweeps = self._db.execute("SELECT id, name FROM sweep ORDER BY id DESC").fetchall()
        if which is None or which == "":
            return sweeps[0] if sweeps else None
        for sid, name in sweeps:
            if name == str(which):
                return sid, name
        for sid, name in sweeps:
            if str(sid) == str(which):
                return sid, name
        known = ", ".join("%s (%d)" % (name, sid) for sid, name in sweeps) or "none yet"
        raise LookupError("no sweep '%s' in %s; sweeps here: %s" % (which, self.path, known))

    _RUN_COLUMNS = [
        "id", "sweep_id", "sweep", "name", "status", "seed", "config_hash", "started", "ended", "heartbeat",
        "world_size", "device", "host", "git_rev", "plugins", "fingerprint", "error", "command",
    ]

    def runs(self, sweep=None, status=None, latest=False):
        """One row per run, oldest first: id, sweep_id, sweep (its name), name, status, seed,
        config_hash, started, ended, heartbeat (seconds since the epoch; NaN if unset), world_size,
        device, host, git_rev, plugins, fingerprint, error, command.

        sweep: a name or id (None: every run). status: one status or several ("finished",
        "failed", "diverged", "interrupted", "running", "queued"). latest: only what the
        leaderboard ranks, the newest finished run of each configuration (config_hash)."""
        sweep_id = self._find_sweep(sweep)[0] if sweep is not None else None
        rows = self._run_rows(sweep_id, status)
        if latest:
            rows = _newest_finished(rows)
        return self._table(rows, self._RUN_COLUMNS)

    def _run_rows(self, sweep_id=None, status=None):
        """runs() as a list of dicts: one sweep's (by id) or every run, oldest first."""
        columns = [c for c in self._RUN_COLUMNS if c != "sweep"]
        select = ", ".join("r." + c if c in self._run_columns else "NULL" for c in columns)
        query = "SELECT %s, s.name FROM run r LEFT JOIN sweep s ON s.id = r.sweep_id" % select
        where, args = [], []
        if sweep_id is not None:
            where.append("r.sweep_id = ?")
            args.append(sweep_id)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append("r.status IN (%s)" % ", ".join("?" * len(statuses)))
            args.extend(statuses)
        if where:
            query += " WHERE " + " AND ".join(where)
        rows = []
        for values in self._db.execute(query + " ORDER BY r.id", args):
            row = dict(zip(columns, values[:-1]))
            row["sweep"] = values[-1]
            for t in ("started", "ended", "heartbeat"):
                row[t] = _number(row[t])
            rows.append(row)
        return rows

    # --- settings, metrics, summaries

    def _params(self, ids):
        """{run: {key: (type, text)}} for these runs."""
        out = {i: {} for i in ids}
        for chunk in _chunks(ids):
            marks = ", ".join("?" * len(chunk))
            for run, key, kind, text in self._db.execute(
                "SELECT run_id, key, type, value FROM param WHERE run_id IN (%s)" % marks, chunk
            ):
                out[run][key] = (kind, text if text is not None else "")
        return out

    def settings(self, runs, keys=None, varying=False, text=False):
        """Wide: one row per run (column run), one column per setting key (sorted), values parsed
        (numbers as numbers, true/false as bool, lists as lists; text=True keeps the text the
        database holds). keys: only these; varying: only the keys whose values differ between
        these runs (as the leaderboard decides: not name, description, results.*, ...)."""
        ids = _run_ids(runs)
        params = self._params(ids)
        if keys is not None:
            chosen = list(keys)
        elif varying:
            chosen = _varying_keys([{k: t for k, (_, t) in params[i].items()} for i in ids])
        else:
            chosen = sorted({k for i in ids for k in params[i]})
        rows = []
        for i in ids:
            row = {"run": i}
            for k in chosen:
                if k in params[i]:
                    kind, value = params[i][k]
                    row[k] = value if text else _parse_setting(kind, value)
                else:
                    row[k] = None
            rows.append(row)
        return self._table(rows, ["run"] + chosen)

    def metrics(self, runs, name=None, rank=0):
        """Long: one row per recorded point: run, rank, name, step, tokens, value (NaN: the run
        recorded a non-finite number), wall_time, sim_time (NaN: not simulated). name: one key or
        several (loss, eval_loss, lr, grad_norm, tokens_per_s, ...; None: all). rank: the rank
        (0, as the CLI's curves; None for every rank)."""
        ids = _run_ids(runs)
        names = None if name is None else ([name] if isinstance(name, str) else list(name))
        rows = []
        for chunk in _chunks(ids):
            query = ("SELECT run_id, rank, key, step, tokens, value, wall_time, sim_time FROM metric"
                     " WHERE run_id IN (%s)" % ", ".join("?" * len(chunk)))
            args = list(chunk)
            if names is not None:
                query += " AND key IN (%s)" % ", ".join("?" * len(names))
                args += names
            if rank is not None:
                query += " AND rank = ?"
                args.append(rank)
            for run, rk, key, step, tokens, value, wall, sim in self._db.execute(query, args):
                rows.append(
                    dict(run=run, rank=rk, name=key, step=step, tokens=tokens, value=_number(value),
                         wall_time=_number(wall), sim_time=_number(sim))
                )
        rows.sort(key=lambda r: (r["run"], r["rank"], r["name"], r["step"]))
        return self._table(rows, ["run", "rank", "name", "step", "tokens", "value", "wall_time", "sim_time"])

    def summaries(self, runs, rank=0, wide=True):
        """Per-run figures (final_eval_loss, tokens_per_s, mfu, peak_memory, ...). wide: one row per
        run (column run), one column per key, the number or, for text figures (peak_source,
        state_hash, ...), the text. wide=False: long rows run, rank, key, value, text. rank: 0
        (what the leaderboard reads), another rank, or None for all (long only)."""
        ids = _run_ids(runs)
        rows = []
        for chunk in _chunks(ids):
            query = "SELECT run_id, rank, key, value, text FROM summary WHERE run_id IN (%s)" % (
                ", ".join("?" * len(chunk)))
            args = list(chunk)
            if rank is not None:
                query += " AND rank = ?"
                args.append(rank)
            for run, rk, key, value, text in self._db.execute(query, args):
                rows.append(dict(run=run, rank=rk, key=key, value=value, text=text))
        rows.sort(key=lambda r: (r["run"], r["rank"], r["key"]))
        if not wide:
            for r in rows:
                r["value"] = _number(r["value"])
            return self._table(rows, ["run", "rank", "key", "value", "text"])
        if rank is None:
            raise ValueError("summaries(wide=True) needs one rank")
        keys = sorted({r["key"] for r in rows})
        by_run = {i: {"run": i} for i in ids}
        for r in rows:
            text_only = r["value"] is None and r["text"] is not None  # peak_source, state_hash, ...
            by_run[r["run"]][r["key"]] = r["text"] if text_only else _number(r["value"])
        for row in by_run.values():
            for k in keys:
                row.setdefault(k, None)
        return self._table([by_run[i] for i in ids], ["run"] + keys)

    # --- the leaderboard

    def leaderboard(self, sweep=None, metric="final_eval_loss", group_by=None, best_over=None, tuning_seeds=None,
                    tune_metric="final_eval_loss", baseline=None, per_run=False, target=None, tokens=None):
        """`plexus leaderboard [SWEEP] ...`, recomputed: one row per group, best first.

        sweep: name or id (None: the newest; the whole database when it has no sweep). metric:
        a summary key (final_eval_loss, mfu, tokens_per_s, ...; higher is better for mfu,
        tokens_per_s, tokens and steps, lower for the rest), or loss_at (tokens=N), tokens_to /
        time_to (target=LOSS, else each run's results.target_loss). group_by: keys (default: the
        settings that vary but the seed, narrowed to a grid's named axes and what they do not
        determine). best_over + tuning_seeds: per group, the setting of those keys with the best
        mean of tune_metric on the tuning seeds is chosen and reported on the other seeds.
        baseline: "KEY=VALUE" (VALUE as the database's text, e.g. "optimizer.lr=0.01"): each
        row's difference to that group, paired by train.seed. per_run: one row per run (--runs).

        Columns: rank, one per grouping key (the setting's value), group (the same as text),
        mean, std (sample, n - 1), n (finite values), ci_low, ci_high (the mean's 95% Student-t
        interval; NaN for fewer than 2), censored (tokens_to/time_to: runs that never reached
        the target), runs (run ids), values (each run's figure); with baseline: diff_mean,
        diff_low, diff_high, pairs; with best_over: tuned (the chosen setting) and trials."""
        # "a,b" as on the command line, or a list; seeds as numbers or text.
        group_by, best_over, tuning_seeds = (_key_list(v) for v in (group_by, best_over, tuning_seeds))
        board = self._board(sweep, metric, group_by, best_over, tuning_seeds, tune_metric, baseline, per_run,
                            target, tokens)
        return self._table(board["rows"], board["columns"])

    def _board(self, sweep, metric, group_by, best_over, tuning_seeds, tune_metric, baseline, per_run, target, tokens):
        if metric == "loss_at" and not (tokens and tokens > 0):
            raise ValueError("metric loss_at needs tokens=N (the token budget)")
        runs = self._runs_to_rank(sweep)
        ids = [r["id"] for r in runs]
        typed = self._params(ids)
        params = [{k: t for k, (_, t) in typed[i].items()} for i in ids]  # the text, as the CLI compares
        summaries = self._rank0_summaries(ids)
        if runs and metric not in _CURVE_METRICS:
            # A metric no run has is a typo, not a column of NaN.
            known = sorted({k for i in ids for k, v in summaries[i].items() if v is not None} |
                           self._other_rank_keys(ids))
            if metric not in known:
                raise ValueError("metric %s: no run here has that figure; metrics: loss_at, tokens_to, time_to, or a "
                                 "summary key: %s" % (metric, ", ".join(known)))
        opts = dict(target=target, tokens=tokens)
        values = self._metric_values(ids, metric, summaries, typed, opts)

        varying = _varying_keys(params)
        if per_run:
            keys = list(varying)
        elif group_by:
            known = {k for p in params for k in p}
            for k in group_by:
                if k not in known:
                    raise ValueError("group_by %s: no run has that setting; varying here: %s" % (k, ", ".join(varying)))
            keys = list(group_by)
        else:
            keys = _telling_apart(params, [k for k in varying if k != "train.seed"])

        enter = [True] * len(ids)
        tuned = {}
        if best_over:
            if not tuning_seeds:
                raise ValueError("best_over needs tuning_seeds (the seeds the choice is made on; the others report it)")
            keys = [k for k in keys if k not in best_over]
            by = values if tune_metric == metric else self._metric_values(ids, tune_metric, summaries, typed, opts)
            final_loss = self._metric_values(ids, "final_eval_loss", summaries, typed, opts)
            tuned, enter = _tune(keys, best_over, tuning_seeds, tune_metric, params, by, final_loss)

        # Rows in the order their first run comes (runs are sorted by id), then ranked.
        rows, row_of = [], {}
        for i, run in enumerate(ids):
            if not enter[i]:
                continue
            key_values = tuple(params[i].get(k, "") for k in keys)
            group = key_values + ((str(run),) if per_run else ())  # --runs never merges two runs
            if group not in row_of:
                row_of[group] = len(rows)
                rows.append({"key_values": key_values, "first": i, "runs": [], "values": [], "tuned": "", "trials": 0})
            row = rows[row_of[group]]
            row["runs"].append(run)
            row["values"].append(values[i])
            choice = tuned.get(_tuning_group(keys, params[i]))
            if choice is not None:
                row["tuned"], row["trials"] = choice
        for row in rows:
            row.update(t_interval(row["values"]))
            row["censored"] = sum(1 for v in row["values"] if math.isinf(v))
        lower = metric not in _HIGHER_IS_BETTER

        def rank_key(row):
            # Groups with a value first, then those with no censored run, then by mean. (sort is
            # stable, as the CLI's std::stable_sort.)
            finite = math.isfinite(row["mean"])
            mean = (row["mean"] if lower else -row["mean"]) if finite else 0.0
            return (not finite, row["censored"] > 0, mean)

        rows.sort(key=rank_key)
        if baseline:
            _pair_with_baseline(rows, keys, baseline, ids, params)

        columns = ["rank"] + keys + ["group", "mean", "std", "n", "ci_low", "ci_high", "censored", "runs", "values"]
        if baseline:
            columns += ["diff_mean", "diff_low", "diff_high", "pairs"]
        if best_over:
            columns += ["tuned", "trials"]
        out = []
        for rank, row in enumerate(rows, 1):
            first = ids[row["first"]]
            record = {"rank": rank}
            for k, text in zip(keys, row["key_values"]):
                kind = typed[first].get(k, (None, None))[0]
                record[k] = _parse_setting(kind, text) if kind is not None else None
            label = " ".join("%s=%s" % (k, v) for k, v in zip(keys, row["key_values"]))
            record["group"] = label if not per_run else (label + " run=%d" % first).strip()
            for c in columns:
                if c not in record and c in row:
                    record[c] = row[c]
            out.append(record)
        return {"rows": out, "columns": columns, "keys": keys}

    def _runs_to_rank(self, which):
        """The CLI's runs_to_rank: the sweep's runs (or every run when the database has no sweep),
        the newest finished run of each config hash, by id."""
        found = self._find_sweep(which)
        return _newest_finished(self._run_rows(found[0] if found is not None else None))

    def _rank0_summaries(self, ids):
        """{run: {key: value or None}} of rank 0 (what the leaderboard reads)."""
        out = {i: {} for i in ids}
        for chunk in _chunks(ids):
            for run, key, value in self._db.execute(
                "SELECT run_id, key, value FROM summary WHERE rank = 0 AND run_id IN (%s)"
                % ", ".join("?" * len(chunk)),
                chunk,
            ):
                out[run][key] = value
        return out

    def _other_rank_keys(self, ids):
        """Summary keys with a number on ranks other than 0 (the CLI's check that a metric exists
        looks at every rank)."""
        keys = set()
        for chunk in _chunks(ids):
            for (key,) in self._db.execute(
                "SELECT DISTINCT key FROM summary WHERE rank <> 0 AND value IS NOT NULL AND run_id IN (%s)"
                % ", ".join("?" * len(chunk)),
                chunk,
            ):
                keys.add(key)
        return keys

    def _metric_values(self, ids, metric, summaries, typed, opts):
        """Each run's figure: a summary key's rank-0 value (NaN if absent), or loss_at /
        tokens_to / time_to from its eval_loss curve (+inf: never reached the target)."""
        if metric not in _CURVE_METRICS:
            return [_number(summaries[i].get(metric)) for i in ids]
        curves = {i: [] for i in ids}
        for chunk in _chunks(ids):
            for run, tokens, value, wall, sim in self._db.execute(
                "SELECT run_id, tokens, value, wall_time, sim_time FROM metric WHERE rank = 0 AND key = 'eval_loss' "
                "AND run_id IN (%s) ORDER BY run_id, step" % ", ".join("?" * len(chunk)),
                chunk,
            ):
                # NULL tokens and wall time read as 0, as sqlite3_column_int64/double give them.
                curves[run].append((tokens or 0, _number(value), wall or 0.0, sim))
        out = []
        for i in ids:
            rows = curves[i]
            if metric == "loss_at":
                v = _NAN
                for tok, value, _, _ in rows:  # the last evaluation within the budget
                    if tok <= opts["tokens"]:
                        v = value
                out.append(v)
                continue
            target = self._target(i, typed[i], opts)
            out.append(_crossing(rows, target, metric))
        return out

    def _target(self, run, params, opts):
        if opts["target"] is not None and opts["target"] > 0:
            return float(opts["target"])
        text = params.get("results.target_loss", (None, ""))[1]
        try:
            t = float(text)
        except ValueError:
            t = 0.0
        if not t > 0:
            raise ValueError("metric tokens_to/time_to needs target=LOSS: run %d has no results.target_loss" % run)
        return t


def _crossing(rows, target, metric):
    """Where an eval curve first reaches the target, interpolated linearly between the
    evaluations on either side; +inf if it never does, NaN if the run has no evaluation."""
    prev_value, prev_x = _NAN, _NAN
    for tokens, value, wall, sim in rows:
        x = float(tokens) if metric == "tokens_to" else (sim if sim is not None else wall)
        if math.isfinite(value) and value <= target:
            if math.isfinite(prev_value) and prev_value > target:
                return prev_x + (prev_value - target) / (prev_value - value) * (x - prev_x)
            return x
        prev_value, prev_x = value, x
    return _NAN if not rows else math.inf


def _newest_finished(runs):
    """The newest finished run of each config hash, by id: a finished re-run replaces an
    earlier one, and an unfinished newer attempt does not hide a finished one."""
    newest = {}
    for r in runs:
        if r["status"] == "finished" and (r["config_hash"] not in newest or r["id"] > newest[r["config_hash"]]["id"]):
            newest[r["config_hash"]] = r
    return sorted(newest.values(), key=lambda r: r["id"])


def _ignored_key(k):
    # Settings that do not tell runs apart in a leaderboard.
    return k in ("name", "description", "plugin_path", "train.threads") or k.startswith("results.")


def _varying_keys(params):
    """Keys whose text differs among the runs that have them (a key only some runs have belongs to
    a plugin they switched to, and the plugin's name shows that), sorted."""
    seen = {}
    for p in params:
        for k, v in p.items():
            if not _ignored_key(k):
                seen.setdefault(k, set()).add(v)
    return sorted(k for k, vs in seen.items() if len(vs) > 1)


def _determined_by(params, key, by):
    """Whether `key` takes one value wherever the `by` keys take the same values."""
    seen = {}
    for p in params:
        at = tuple(p.get(k, "") for k in by)
        value = p.get(key, "")
        if seen.setdefault(at, value) != value:
            return False
    return True


def _telling_apart(params, keys):
    """With a grid's named axes (keys without a dot: variant, workload, ...), those and the
    keys they do not determine (a variant's own strategy.name goes); without, every key."""
    named = [k for k in keys if "." not in k and k not in _TOP_LEVEL_SETTINGS]
    if not named:
        return keys
    return [k for k in keys if k in named or not _determined_by(params, k, named)]


def _tuning_group(keys, p):
    # The group a run's tuned setting is chosen for: the grouping keys but the seed.
    return tuple(p.get(k, "") for k in keys if k != "train.seed")


def _candidate_text(p, keys):
    # "optimizer.lr=0.01 optimizer.step_mult=..."; a key the run lacks is left out.
    return " ".join("%s=%s" % (k, p[k]) for k in keys if k in p)


def _best_candidate(scores, lower, fallback=None):
    """Of the candidates (sorted by text: ties go to the first), the one with the best finite
    mean; if none has one, the lowest mean of the fallback (final eval loss)."""
    best, best_mean = "", _NAN
    for candidate in sorted(scores):
        mean = t_interval(scores[candidate])["mean"]
        better = not math.isfinite(best_mean) or (mean < best_mean if lower else mean > best_mean)
        if math.isfinite(mean) and better:
            best, best_mean = candidate, mean
    if not best and fallback:
        return _best_candidate(fallback, True)
    return best


def _tune(keys, best_over, seeds, tune_metric, params, by, final_loss):
    """--best-over: per group, the chosen candidate and its count of tuning runs, and which runs
    enter the board (the chosen candidate's runs on the other seeds)."""
    tuning = [p.get("train.seed", "") in seeds for p in params]
    scores, fallback, trials = {}, {}, {}
    for i, p in enumerate(params):
        if tuning[i]:
            group, candidate = _tuning_group(keys, p), _candidate_text(p, best_over)
            scores.setdefault(group, {}).setdefault(candidate, []).append(by[i])
            fallback.setdefault(group, {}).setdefault(candidate, []).append(final_loss[i])
            trials[group] = trials.get(group, 0) + 1
    lower = tune_metric not in _HIGHER_IS_BETTER
    chosen = {g: (_best_candidate(scores[g], lower, fallback[g]), trials[g]) for g in scores}
    enter = []
    for i, p in enumerate(params):
        choice = chosen.get(_tuning_group(keys, p))
        enter.append(not tuning[i] and choice is not None and _candidate_text(p, best_over) == choice[0])
    return chosen, enter


def _pair_with_baseline(rows, keys, baseline, ids, params):
    """Each row's differences to the baseline group's runs of the same seed (and the same other
    grouping keys), with their t interval. Rows must already be ranked (the CLI pairs after
    sorting, and the last baseline run seen for a seed wins)."""
    if "=" not in baseline:
        raise ValueError("baseline %s: give KEY=VALUE, for example variant=ddp" % baseline)
    key, want = baseline.split("=", 1)
    params_of = dict(zip(ids, params))
    at = keys.index(key) if key in keys else None

    def context(row):
        return tuple(v for j, v in enumerate(row["key_values"]) if j != at) if at is not None else ()

    base = {}
    for row in rows:
        for run, value in zip(row["runs"], row["values"]):
            p = params_of[run]
            if p.get(key) == want:
                base[(context(row), p.get("train.seed", ""))] = value
    if not base:
        raise ValueError("baseline %s: no run has %s = %s" % (baseline, key, want))
    for row in rows:
        diffs = []
        for run, value in zip(row["runs"], row["values"]):
            b = base.get((context(row), params_of[run].get("train.seed", "")))
            if b is not None and math.isfinite(b) and math.isfinite(value):
                diffs.append(value - b)
        d = t_interval(diffs)
        row.update(diff_mean=d["mean"], diff_low=d["ci_low"], diff_high=d["ci_high"], pairs=d["n"])
