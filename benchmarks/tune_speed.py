"""How long ``voltana tune`` takes with its default budget, with one worker and with two sharing one study.

    python benchmarks/tune_speed.py            # the default setup and budget (40 trials, 50..100 req/s)
    python benchmarks/tune_speed.py --trials 20

Runs the real command three times in this one run, so the figures share the machine's state: the default
(one worker, in-memory study), ``--jobs 1`` with a SQLite study, and ``--jobs 2`` on a SQLite study. Prints
the wall time of each and the ratio of one worker to two on the same storage. The goal is <= 5 minutes for
the default; two workers should finish the same budget faster than one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "voltana_cli", "tune", *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"voltana tune {' '.join(args)} failed:\n{r.stderr}")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=40)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        base = ["--trials", str(a.trials), "--out", str(Path(d) / "t.yaml")]
        default = timed(base)
        print(f"default (1 worker, in memory): {default:.0f} s (goal <= 300 s)", flush=True)
        one = timed([*base, "--jobs", "1", "--storage", f"sqlite:///{d}/one.db", "--study-name", "one"])
        print(f"--jobs 1, SQLite study: {one:.0f} s", flush=True)
        two = timed([*base, "--jobs", "2", "--storage", f"sqlite:///{d}/two.db", "--study-name", "two"])
        print(f"--jobs 2, SQLite study: {two:.0f} s", flush=True)
    print(f"one worker / two workers, same budget and storage: {one / two:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
