"""Same seed, same figures: the bench's ``--json`` for the default run and for a sweep with every policy family.

The digests are a regression guard: a change that moves any figure, by design or not, shows up here. They
hash every number to 12 significant digits: sums over arrays differ in their last bit between machines
(NumPy sums in a different order where the CPU has AVX-512: the default run's mean TTFT 126.36144961622294
against ...293), and no change worth catching moves a figure by less. A change that alters numbers on
purpose regenerates them in its own commit, saying why:

    python tests/test_bench_digests.py --update
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from voltana_cli.cli import app

DIGESTS = Path(__file__).parent / "data" / "bench_digests.json"
SWEEP_POLICIES = ["static-max", "static-min", "static:1200", "ecofreq", "voltana", "ecofreq+least-loaded",
                  "static-max+tile-aware"]
CASES = {
    "default": [],
    "sweep-50-100-10": ["--request-rate", "50:100:10", *[a for p in SWEEP_POLICIES for a in ("--policy", p)]],
}


def _rounded(x: Any) -> Any:
    """``x`` with every float to 12 significant digits (see the module docstring)."""
    if isinstance(x, float):
        return float(f"{x:.12g}")
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def bench_json_digest(args: list[str], tmp: Path) -> str:
    out = tmp / "r.json"
    res = CliRunner().invoke(app, ["bench", *args, "--json", str(out)], terminal_width=170)
    assert res.exit_code == 0, res.output
    text = json.dumps(_rounded(json.loads(out.read_text())), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("case", sorted(CASES))
def test_bench_json_is_byte_identical_to_the_stored_digest(case, tmp_path):
    stored = json.loads(DIGESTS.read_text())
    assert bench_json_digest(CASES[case], tmp_path) == stored[case], (
        f"bench --json for '{case}' changed; if on purpose, regenerate: python tests/test_bench_digests.py --update")


if __name__ == "__main__" and "--update" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        DIGESTS.write_text(json.dumps({k: bench_json_digest(v, Path(d)) for k, v in sorted(CASES.items())},
                                      indent=2) + "\n")
    print(f"wrote {DIGESTS}")
