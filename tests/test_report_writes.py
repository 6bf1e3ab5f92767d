"""Result files: atomic replacement that keeps links, writes devices and FIFOs in place, respects the
umask, never leaves a temporary file, and refuses two outputs on one file."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from voltana_cli.core.errors import UserError
from voltana_cli.core.report import check_outputs, write_json, write_text


def test_a_symlinked_target_keeps_its_link_and_the_linked_file_gets_the_result(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_json(link, {"a": 1})
    assert link.is_symlink() and json.loads(real.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]


def test_a_fifo_is_written_in_place_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_text(fifo, "through the pipe")
    reader.join(5)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(fifo.stat().st_mode)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_a_full_device_is_one_clear_error_and_stays_a_device():
    with pytest.raises(UserError, match="No space left"):
        write_text(Path("/dev/full"), "x" * 100_000)
    assert stat.S_ISCHR(Path("/dev/full").stat().st_mode)


def test_a_new_file_follows_the_umask_and_a_replaced_one_keeps_its_mode(tmp_path):
    old = os.umask(0o027)
    try:
        write_text(tmp_path / "new.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640
    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    kept.chmod(0o604)
    write_text(kept, "new")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o604 and kept.read_text() == "new"


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from voltana_cli.core import report

    target = tmp_path / "r.json"
    target.write_text("old")

    def interrupted(p: Path) -> None:
        p.write_text("half")
        raise SystemExit(143)  # what SIGTERM becomes under the CLI

    with pytest.raises(SystemExit):
        report._atomic(target, interrupted)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_two_outputs_on_one_file_are_refused_before_any_work(tmp_path):
    p = tmp_path / "r.out"
    link = tmp_path / "l.out"
    link.symlink_to(p)
    with pytest.raises(UserError, match="also the json output") as err:
        check_outputs({"json": p, "csv": link})
    assert err.value.field == "csv"
    check_outputs({"json": p, "csv": None, "plot": tmp_path / "x.png"})


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_a_bench_exits_cleanly_with_no_partial_files(tmp_path, sig, code):
    """The CLI turns SIGTERM into SystemExit and Ctrl-C into one line saying what stopped, so every cleanup
    runs and nothing is left in the folder."""
    out = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "voltana_cli", "bench", "--request-rate", "100", "--duration-s",
                             "3000", "--json", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            # as from a terminal: a background job would start with Ctrl-C ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(4)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert b"Traceback" not in err and list(tmp_path.iterdir()) == []
    if sig == signal.SIGINT:
        assert err.decode().strip().splitlines()[-1].startswith("interrupted: voltana bench stopped")


def test_json_to_dev_stdout_lands_after_the_table_in_a_redirected_file(tmp_path):
    """``--json /dev/stdout`` writes through the process's own stdout: with stdout redirected to a file, the
    file keeps the table, then the JSON, then the final line; nothing is replaced or overwritten."""
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "voltana_cli", "bench", "--duration-s", "5", "--json", "/dev/stdout"],
                              stdout=f, stderr=subprocess.PIPE, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = out.read_text().splitlines()
    start, end = lines.index("{"), lines.index("}")
    assert "voltana bench" in "\n".join(lines[:start]) and lines[-1] == "wrote /dev/stdout"
    assert json.loads("\n".join(lines[start:end + 1]))["config"]["duration_s"] == 5.0
    assert not stat.S_ISLNK(out.lstat().st_mode) and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_dash_is_standard_output_alone_and_the_table_moves_to_stderr(tmp_path):
    """``--json -`` writes the JSON to standard output, once, at the end, and nothing else goes there (the
    table and the notes go to standard error), so ``voltana bench --json - | jq`` works; no file is made."""
    proc = subprocess.run([sys.executable, "-m", "voltana_cli", "bench", "--duration-s", "5", "--policy", "voltana",
                           "--json", "-"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["config"]["duration_s"] == 5.0
    assert "voltana bench" in proc.stderr and "wrote" not in proc.stderr and list(tmp_path.iterdir()) == []
    both = subprocess.run([sys.executable, "-m", "voltana_cli", "bench", "--json", "-", "--csv", "-"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert both.returncode == 2 and both.stderr.strip() == "error: --csv: - is also the json output: give each " \
                                                            "output its own file"
