"""Tokenizer adapter: count the tokens of many texts with a quicktok encoding or a Hugging Face tokenizer.json.

Both libraries are optional extras, imported only when a ShareGPT JSON file is tokenised. Errors are
``UserError``s about the ``tokenizer`` field.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from voltana_cli.core.errors import UserError

#: Counts the tokens of each text (no special tokens added).
TokenCounter = Callable[[list[str]], np.ndarray]


def get_tokenizer_counter(name: str) -> TokenCounter:
    """Return a function counting tokens of many texts with tokenizer ``name``.

    Args:
        name: a quicktok encoding (``llama3``, ``qwen3``, ``cl100k_base``, ``o200k_base``), a model name
            quicktok knows (``llama-3.1``), or a path to a Hugging Face ``tokenizer.json`` (needs ``tokenizers``).

    Raises:
        UserError: (``tokenizer``) the file is missing, the library it needs is not installed, or the name
            is not a known encoding.
    """
    p = Path(name)
    if p.suffix == ".json" or p.is_file():
        return _hf_counter(p)
    return _quicktok_counter(name)


def _hf_counter(path: Path) -> TokenCounter:
    if not path.is_file():
        raise UserError(f"tokenizer file {path} does not exist: give a Hugging Face tokenizer.json", field="tokenizer")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UserError("a tokenizer.json needs the 'tokenizers' package: pip install tokenizers", field="tokenizer") from None
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises a bare Exception for a bad file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is not a Hugging Face tokenizer.json ({first}): give one, or a quicktok encoding "
                        "such as llama3", field="tokenizer") from None

    def count_hf(texts: list[str]) -> np.ndarray:
        return np.array([len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)])

    return count_hf


def _quicktok_counter(name: str) -> TokenCounter:
    try:
        import quicktok
    except ImportError:
        raise UserError("tokenising a ShareGPT file needs quicktok: pip install 'voltana[tokenize]'", field="tokenizer") from None
    enc_name = quicktok.MODEL_TO_ENCODING.get(name.lower(), name)
    try:
        enc = quicktok.get_encoding(enc_name)
    except Exception:  # quicktok raises several types for unknown names
        known = sorted(set(quicktok.MODEL_TO_ENCODING.values()))
        raise UserError(
            f"unknown tokenizer {name!r}: use one of {', '.join(known)} or a tokenizer.json path", field="tokenizer"
        ) from None

    def count_qt(texts: list[str]) -> np.ndarray:
        return np.asarray(quicktok.count_batch(enc, texts), dtype=np.int64)

    return count_qt
