"""Where a step's time goes, by operator and by family of operators.

    python3 bench/profile_summary.py TRACE [--steps N]

TRACE is a Chrome trace written by LibTorch's profiler (bench/gpt_step --profile TRACE writes
one of a plexus round). A trace with GPU work in it (Kineto's, LibTorch 2.x on a GPU) is summed
by kernel: each kernel, copy and fill charged its time on the GPU. Otherwise by operator: each
operator charged its own CPU time, its span minus the spans of the operators it called on the
same thread. bench/gpt_step_ref.py --profile prints the same table for the PyTorch reference,
from torch.profiler. Needs only Python's standard library.

LibTorch 1.13's legacy profiler, which writes the C++ trace on the CPU here, charges its own
bookkeeping to the operators: compare shares of the large operators, not milliseconds across the
two tables (operators called thousands of times a step look many times their cost;
docs/guide/performance.md).
"""
import argparse
import collections
import json

# Operator and kernel families by name, for a one-line account of a step.
FAMILIES = [("matmul", ("::mm", "::addmm", "::bmm", "gemm", "nvjet", "cutlass", "sm90_", "sm80_", "ampere_", "cublas")),
            ("attention", ("flash", "fmha", "attention", "efficient")),
            ("optimizer", ("adam",)),
            ("norm", ("layer_norm", "layernorm", "norm_")),
            ("softmax/loss", ("softmax", "nll", "cross_entropy", "crossentropy")),
            ("reduction", ("reduce",)),
            ("copy/cast", ("copy", "cast", "convert")),
            ("elementwise", ("elementwise", "vectorized", "gelu", "add", "mul", "fill", "exp"))]


def family_of(name):
    name = name.lower()
    return next((f for f, keys in FAMILIES if any(k in name for k in keys)), "other")


def report(rows, steps, what):
    """Print rows of (name, own time in microseconds, calls), `steps` steps' worth."""
    total = sum(t for _, t, _ in rows) or 1
    families = collections.Counter()
    for name, t, _ in rows:
        families[family_of(name)] += t
    print(f"profile of {steps} steps: {total / 1e3 / steps:.1f} ms of {what} per step")
    print("families: " + ", ".join(f"{f} {100 * t / total:.1f}%" for f, t in families.most_common()))
    for name, t, calls in sorted(rows, key=lambda r: -r[1])[:25]:
        print(f"{100 * t / total:5.1f}% {t / 1e3 / steps:8.2f} ms/step x{calls // steps:<5} {name[:110]}")


# Kineto's categories for work done on the GPU (each on its stream; they do not nest).
GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def gpu_times(events):
    """(name, GPU time, calls) per kernel name."""
    time, calls = collections.Counter(), collections.Counter()
    for e in events:
        time[e["name"]] += e["dur"]
        calls[e["name"]] += 1
    return [(name, t, calls[name]) for name, t in time.items()]


def summarize(events):
    """(rows, what they measure) for a trace's events: its GPU work if it has any, else its
    operators' own CPU time (Kineto marks operators "cpu_op"; the legacy profiler marks nothing)."""
    complete = [e for e in events if e.get("ph") == "X"]
    gpu = [e for e in complete if e.get("cat") in GPU_CATEGORIES]
    if gpu:
        return gpu_times(gpu), "kernels"
    return own_times([e for e in complete if e.get("cat") in (None, "cpu_op")]), "operators (CPU time)"


def own_times(events):
    """(name, own time, calls) per operator name, from complete ("X") trace events."""
    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X":
            by_thread[e.get("tid")].append(e)
    own, calls = collections.Counter(), collections.Counter()
    for spans in by_thread.values():
        spans.sort(key=lambda e: (e["ts"], -e["dur"]))  # a parent before the children it contains
        open_spans = []
        for e in spans:
            while open_spans and open_spans[-1]["ts"] + open_spans[-1]["dur"] <= e["ts"]:
                open_spans.pop()
            own[e["name"]] += e["dur"]
            if open_spans:
                own[open_spans[-1]["name"]] -= e["dur"]
            calls[e["name"]] += 1
            open_spans.append(e)
    return [(name, t, calls[name]) for name, t in own.items()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", help="a Chrome trace from LibTorch's profiler")
    ap.add_argument("--steps", type=int, default=1, help="steps the trace covers (times are per step)")
    args = ap.parse_args()
    with open(args.trace) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    rows, what = summarize(events)
    report(rows, args.steps, what)


if __name__ == "__main__":
    main()
