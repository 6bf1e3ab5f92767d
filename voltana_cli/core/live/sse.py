"""Server-sent events as SGLang streams them: ``data: <json>`` lines, ended by ``data: [DONE]``."""

from __future__ import annotations

import json
from typing import Any

#: What ``sse_message`` returns for the stream's end marker.
DONE = "[DONE]"


def sse_message(raw: bytes) -> dict[str, Any] | str | None:
    """The JSON message of one SSE line, ``DONE`` at the end marker, ``None`` for any other line (blank lines,
    comments, other fields). A ``data:`` line that is not JSON raises ``json.JSONDecodeError``."""
    line = raw.strip()
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return DONE
    msg = json.loads(data)
    return msg if isinstance(msg, dict) else None
