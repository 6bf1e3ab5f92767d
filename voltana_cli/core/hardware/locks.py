"""Durable records of locked clocks, so that a lock outlives nothing that made it.

``ClockGuard`` resets clocks on every exit path that runs Python: a normal end, an exception, Ctrl-C,
SIGTERM, SIGHUP. ``kill -9``, an out-of-memory kill or a power cut run nothing, and the card stays at the
clock voltana chose for whoever uses it next. So before the first lock of a GPU the guard writes a record
(the GPU, the clock, the owner's pid and the owner's start time) and syncs it to disk; it removes the record
after the reset. The next guard over that GPU (the next voltana run, or ``serve``'s supervisor) reads the
record: an owner that is gone means the clocks were left locked, so it resets them and says so; an owner
that is alive holds the GPU, and the new guard is refused with the holder's pid.

The owner's start time (Linux: ``/proc/<pid>/stat``, field 22) tells a live owner from a new process that
reused the pid. Where it cannot be read, the pid alone decides, erring toward "alive" (a lock left alone
is reported; a lock reset under a live controller would be silent harm).

Records live in one folder per user: ``$VOLTANA_STATE_DIR/locks``, else ``$XDG_STATE_HOME/voltana/locks``,
else ``~/.local/state/voltana/locks``. Decision: per user, not system-wide, because clock locks need root
and root's runs share root's folder; a shared world-writable folder would invite symlink tricks.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from voltana_cli.core.errors import UserError


@dataclass(frozen=True)
class LockRecord:
    """Who locked which GPU's clocks, written before the lock."""

    gpu_uid: str
    gpu_name: str
    clock_mhz: int
    pid: int
    pid_start: str | None
    host: str
    since: str

    def describe(self) -> str:
        """``'pid 123 (since 2026-11-30T10:00:00Z)'``."""
        return f"pid {self.pid} (since {self.since})"


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks after boot, or ``None`` where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[19] if len(fields) > 19 else None


def owner_alive(rec: LockRecord) -> bool:
    """Whether the process that wrote ``rec`` still runs (the same process, not a reuse of its pid)."""
    if rec.host != socket.gethostname():
        return True  # another host's process cannot be checked from here: leave its record alone
    try:
        os.kill(rec.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    now = process_start(rec.pid)
    return rec.pid_start is None or now is None or now == rec.pid_start


def default_lock_dir() -> Path:
    """The folder of lock records for this user (see the module's docstring)."""
    if os.environ.get("VOLTANA_STATE_DIR"):
        return Path(os.environ["VOLTANA_STATE_DIR"]) / "locks"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "voltana" / "locks"


class LockStore:
    """Lock records in one folder, one JSON file per GPU, written durably (temporary file, fsync, rename,
    fsync of the folder).

    Args:
        folder: where the records live; created on the first write.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _path(self, gpu_uid: str) -> Path:
        return self.folder / (re.sub(r"[^A-Za-z0-9_.-]", "_", gpu_uid) + ".json")

    def record(self, gpu_uid: str, gpu_name: str, clock_mhz: int) -> LockRecord:
        """Write (durably) that this process locks ``gpu_uid`` at ``clock_mhz``; returns the record."""
        pid = os.getpid()
        rec = LockRecord(gpu_uid, gpu_name, int(clock_mhz), pid, process_start(pid), socket.gethostname(),
                         datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self._path(gpu_uid)
            tmp = path.with_name(f".{path.name}.{pid}.tmp")
            with open(tmp, "w") as f:
                json.dump(asdict(rec), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            dfd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            raise UserError(f"cannot record the clock lock of {gpu_name} in {self.folder} ({exc.strerror}): "
                            "make the folder writable or set VOLTANA_STATE_DIR; no clock was changed") from None
        return rec

    def read(self, gpu_uid: str) -> LockRecord | None:
        """The record of ``gpu_uid``, or ``None``; a damaged record is one line naming the file."""
        path = self._path(gpu_uid)
        try:
            data = json.loads(path.read_text())
            return LockRecord(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"{path}: not a voltana clock-lock record ({exc.__class__.__name__}): check that the "
                            "GPU's clocks are reset (`nvidia-smi -rgc` as root), then delete the file") from None

    def remove(self, gpu_uid: str) -> None:
        """Forget the record of ``gpu_uid`` (after its clocks were reset)."""
        self._path(gpu_uid).unlink(missing_ok=True)
