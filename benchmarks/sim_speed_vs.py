"""Simulator speed of this checkout against another git revision, timed alternately (A B A B ...).

    python benchmarks/sim_speed_vs.py REV [--pairs 8]

Checks REV out into a temporary git worktree, then runs ``benchmarks/sim_speed.py`` of REV (A) and of this
checkout (B) in turn, each in its own process with its own source on ``PYTHONPATH``, and prints each pair's
simulate() wall time and ratio B/A, then the median ratio and the ratio of the best runs. Pairing keeps
the ratio meaningful on a shared machine whose speed drifts; quote the median. Both revisions must have
a ``benchmarks/sim_speed.py`` that prints ``wall: <seconds> s`` on its first line.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wall_s(tree: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, str(tree / "benchmarks" / "sim_speed.py")], cwd=tempfile.gettempdir(),
                         env=env, capture_output=True, text=True, check=True).stdout
    m = re.search(r"wall: ([0-9.]+) s", out)
    if m is None:
        raise SystemExit(f"no 'wall: <s> s' in the output of {tree}/benchmarks/sim_speed.py:\n{out}")
    return float(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", help="the git revision to compare against (A)")
    ap.add_argument("--pairs", type=int, default=8, help="A/B pairs to run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "a"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), args.rev], check=True)
        try:
            ratios, a_all, b_all = [], [], []
            for i in range(args.pairs):
                a, b = wall_s(base), wall_s(ROOT)
                a_all.append(a)
                b_all.append(b)
                ratios.append(b / a)
                print(f"pair {i + 1}: A {a:.3f} s  B {b:.3f} s  B/A {b / a:.3f}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
    print(f"median B/A over {args.pairs} pairs: {statistics.median(ratios):.3f}; best B / best A: "
          f"{min(b_all) / min(a_all):.3f} ({min(b_all):.3f} s / {min(a_all):.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
