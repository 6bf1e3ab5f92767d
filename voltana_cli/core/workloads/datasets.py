"""The dataset registry: a dataset name and its options (``DatasetRequest``) to token lengths (``LengthTrace``).

Datasets (registry ``DATASETS``):
- ``sharegpt``: the shipped token-length trace built from ShareGPT V3 with the Llama-3 tokenizer
  (``workloads/sharegpt_v3_llama3.csv``), or any ShareGPT-format JSON file (or token CSV) through ``path``
  + ``tokenizer``;
- ``azure-conv`` / ``azure-code``: Azure LLM inference traces 2023 (CC-BY-4.0, Patel et al., ISCA 2024),
  with their own timestamps;
- ``random``: uniform lengths, like SGLang's random dataset;
- ``csv``: any CSV with ``input_tokens,output_tokens[,arrival_s]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voltana_cli.core.errors import UserError
from voltana_cli.core.paths import shipped_dir
from voltana_cli.core.workloads.sharegpt import sharegpt_lengths_from_json
from voltana_cli.core.workloads.traces import LengthTrace, read_azure_trace, read_length_csv

#: The shipped ShareGPT token-length trace, under ``shipped_dir("workloads")``.
SHAREGPT_TRACE = "sharegpt_v3_llama3.csv"


@dataclass(frozen=True)
class DatasetRequest:
    """What the user asked for: a dataset name and its options."""

    name: str
    path: Path | None = None
    tokenizer: str = "llama3"
    random_input_len: int = 1024
    random_output_len: int = 128
    random_range_ratio: float = 0.5


#: A loader gets the request, the caller's generator and a hint of how many requests will be drawn.
DatasetLoader = Callable[[DatasetRequest, np.random.Generator, int], LengthTrace]
DATASETS: dict[str, DatasetLoader] = {}


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Register a dataset loader under ``name`` (a decorator).

    Raises:
        ValueError: ``name`` is registered already (a programming error, not a user's).
    """

    def deco(fn: DatasetLoader) -> DatasetLoader:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} registered twice")
        DATASETS[name] = fn
        return fn

    return deco


def load_lengths(req: DatasetRequest, rng: np.random.Generator, n_hint: int) -> LengthTrace:
    """Load the token lengths of dataset ``req.name``.

    Args:
        req: the dataset and its options.
        rng: the caller's generator (only ``random`` draws from it).
        n_hint: how many requests the caller expects to draw (``random`` makes that many).

    Raises:
        UserError: the name is unknown (``dataset``; the message lists the valid ones), ``req.path`` does not
            exist (``dataset_path``), or the dataset's loader rejects its input.
    """
    loader = DATASETS.get(req.name)
    if req.name == "random" and req.path is not None:
        raise UserError(f"{req.path} is not read by the random dataset (it draws lengths): drop it, or choose a "
                        "dataset that reads files (csv, sharegpt, azure-conv, azure-code)", field="dataset_path")
    if loader is None:
        raise UserError(f"unknown dataset {req.name!r}: use one of {', '.join(sorted(DATASETS))}", field="dataset")
    if req.path is not None and not req.path.exists():
        raise UserError(f"dataset file {req.path} does not exist: give an existing file", field="dataset_path")
    return loader(req, rng, n_hint)


@register_dataset("sharegpt")
def _load_sharegpt(req: DatasetRequest, rng: np.random.Generator, n: int) -> LengthTrace:
    if req.path is not None:
        if req.path.suffix.lower() == ".csv":
            return read_length_csv(req.path, name=f"sharegpt:{req.path.name}")
        return sharegpt_lengths_from_json(req.path, tokenizer=req.tokenizer)
    path = shipped_dir("workloads") / SHAREGPT_TRACE
    return read_length_csv(path, name="sharegpt (ShareGPT V3, Llama-3 tokenizer)")


def _azure(kind: str) -> DatasetLoader:
    def load(req: DatasetRequest, rng: np.random.Generator, n: int) -> LengthTrace:
        path = req.path or shipped_dir("workloads") / "azure" / f"AzureLLMInferenceTrace_{kind}.csv"
        return read_azure_trace(path, name=f"azure-{kind}")

    return load


register_dataset("azure-conv")(_azure("conv"))
register_dataset("azure-code")(_azure("code"))


@register_dataset("random")
def _load_random(req: DatasetRequest, rng: np.random.Generator, n: int) -> LengthTrace:
    lo_in = max(1, int(req.random_input_len * req.random_range_ratio))
    lo_out = max(1, int(req.random_output_len * req.random_range_ratio))
    inp = rng.integers(lo_in, req.random_input_len + 1, size=n)
    out = rng.integers(lo_out, req.random_output_len + 1, size=n)
    return LengthTrace(input_tokens=inp, output_tokens=out, name="random")


@register_dataset("csv")
def _load_csv(req: DatasetRequest, rng: np.random.Generator, n: int) -> LengthTrace:
    if req.path is None:
        raise UserError(
            "the csv dataset needs a file: give the path of a CSV with columns input_tokens,output_tokens[,arrival_s]",
            field="dataset_path",
        )
    return read_length_csv(req.path)
