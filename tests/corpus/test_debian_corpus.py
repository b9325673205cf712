#!/usr/bin/env python3
"""scripts/corpus/debian_corpus.py on a made-up package tree: each format's markup comes off,
code and tables stay out, duplicates go, long lines are cut, absent sections are skipped.
Run by ctest (debian_corpus); exits non-zero on the first mismatch."""
import gzip
import os
import subprocess
import sys
import tempfile

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "corpus", "debian_corpus.py")


def write(root, path, text, compress=False):
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with (gzip.open(full, "wt", encoding="utf-8") if compress else open(full, "w", encoding="utf-8")) as f:
        f.write(text)


def build(root, *sections):
    out = os.path.join(root, "out.txt")
    run = subprocess.run([sys.executable, SCRIPT, root, out, *sections], capture_output=True, text=True)
    lines = open(out, encoding="utf-8").read().split("\n")[:-1] if run.returncode == 0 else []
    return run, lines


def expect(what, got, want):
    if got != want:
        sys.exit(f"FAIL {what}:\n  got  {got!r}\n  want {want!r}")


def main():
    with tempfile.TemporaryDirectory() as root:
        long_quote = " ".join(["This sentence is ten words long, more or less."] * 80)  # 3,759 bytes: cut in two
        write(root, "usr/share/games/fortunes/wisdom",
              "Never put off until tomorrow what you can do today.\n%\nToo short.\n%\n" + long_quote +
              "\n%\nNever put off until tomorrow what you can do today.\n")
        write(root, "usr/share/games/fortunes/wisdom.dat", "binary index, skipped")
        write(root, "usr/share/dictd/devil.dict.dz",
              "00-database-info\n  This file was converted.\n\nABSURDITY, n.\n  A statement or belief\n"
              "  manifestly inconsistent with {one's} own opinion.\n\nA, n.\n  Tiny.\n", compress=True)
        write(root, "usr/share/doc/linux-doc-6.1/Documentation/a/intro.rst.gz",
              "Introduction\n============\n\nThe scheduler decides which task runs next on each CPU.\n\n"
              "For example::\n\n    int x = sched_getcpu();\n    return x;\n\n"
              "Use ``taskset`` and :ref:`the affinity guide <affinity>` to pin a task to cpus.\n\n"
              "+-----+-----+\n| a   | b   |\n+-----+-----+\n\n.. note:: directives are dropped entirely here\n",
              compress=True)

        run, lines = build(root)
        expect("exit status", run.returncode, 0)
        fortunes = [l for l in lines if "tomorrow" in l or "ten words" in l]
        expect("fortunes: the short one dropped, the repeated one once",
               fortunes[0], "Never put off until tomorrow what you can do today.")
        expect("a long line cut at sentences, at most 3000 bytes",
               [len(l.encode()) <= 3000 for l in fortunes[1:]], [True, True])
        expect("the long line's parts are the whole of it", " ".join(fortunes[1:]), long_quote)
        expect("the devil's dictionary: header and short entries out, braces off",
               [l for l in lines if "ABSURDITY" in l or "Tiny" in l or "converted" in l],
               ["ABSURDITY, n. A statement or belief manifestly inconsistent with one's own opinion."])
        expect("reST: prose kept, markup off; heading, code, table and directive out",
               [l for l in lines if "task" in l or "sched" in l or "note" in l or "| a" in l],
               ["The scheduler decides which task runs next on each CPU.",
                "Use taskset and the affinity guide to pin a task to cpus."])
        expect("every line is one of the above", len(lines), 6)
        for missing in ("gcide", "austen", "pg-doc"):
            expect(f"{missing} is not there and said so", f"{missing}" in run.stderr and "skipped" in run.stderr,
                   True)

        run, lines = build(root, "devil")  # one section only
        expect("a chosen section alone", lines,
               ["ABSURDITY, n. A statement or belief manifestly inconsistent with one's own opinion."])
        run, _ = build(root, "shakespeare")
        expect("an unknown section refused", (run.returncode != 0, "unknown section" in run.stderr), (True, True))
    print("ok: debian_corpus.py")


if __name__ == "__main__":
    main()
