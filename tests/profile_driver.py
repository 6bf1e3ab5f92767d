"""Runs a small sim profile in this process on a ``RecordingGpu`` that mirrors its lock state to a file,
slowed down per window, so a test can stop it with a signal mid-run and check the clocks ended reset.

Usage (from the repository root): ``python -m tests.profile_driver STATE_FILE OUT_DIR [SECONDS_PER_WINDOW]``.
Exits like ``voltana profile``'s guard makes it: 0 when done (the profile written to OUT_DIR), 128 + the
signal on SIGTERM or SIGHUP, 130 on SIGINT (Ctrl-C).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from tests.fakes import RecordingGpu
from voltana_cli.core.models.specs import defaults, gpu_spec
from voltana_cli.core.profiling import ProfileRequest, run_profile, write_profile

SIGINT_EXIT = 130


def main(argv: list[str]) -> int:
    # Ctrl-C as from a terminal: a shell that runs the tests in the background (``pytest &``) starts them with
    # SIGINT ignored, this process would inherit that, and the SIGINT case would finish its profile and exit 0.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    state, out = Path(argv[0]), Path(argv[1])
    per_window_s = float(argv[2]) if len(argv) > 2 else 0.05
    req = ProfileRequest(backend="sim", clocks_mhz=[1005, 1410], batch_sizes=[1, 8], prefill_tokens=[64],
                         prefill_seqs=[1])
    gpu = RecordingGpu(gpu_spec(defaults().gpu), state_file=state)
    try:
        prof = run_profile(req, on_window=lambda phase: time.sleep(per_window_s), gpu=gpu)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return SIGINT_EXIT
    write_profile(prof, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
