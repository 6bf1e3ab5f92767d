"""Workloads: request token lengths from datasets, arrival times from arrival processes, and the two paired.

- ``datasets``: the registry ``DATASETS`` (name -> loader) and ``load_lengths(DatasetRequest)``;
- ``traces``: ``LengthTrace`` and the CSV readers (token-length CSV, Azure LLM inference traces);
- ``sharegpt``: ShareGPT-format JSON, read tolerantly and filtered like SGLang's benchmark;
- ``tokenize``: the tokenizer adapter (quicktok encodings, Hugging Face tokenizer.json);
- ``arrivals``: ``ARRIVALS`` and ``arrival_times``;
- ``workload``: ``Workload`` and ``build_workload``.

Errors are ``UserError``s in domain terms: ``field`` is the bench config's field (``dataset``,
``dataset_path``, ``tokenizer``, ``request_rates``, ``arrival``, ``burstiness``, ``duration_s``,
``num_prompts``), or ``None`` for a problem in a file's content, which the message names.
"""

from voltana_cli.core.workloads.arrivals import ARRIVALS, arrival_times
from voltana_cli.core.workloads.datasets import (
    DATASETS,
    SHAREGPT_TRACE,
    DatasetLoader,
    DatasetRequest,
    load_lengths,
    register_dataset,
)
from voltana_cli.core.workloads.sharegpt import (
    SHAREGPT_MAX_TOTAL_TOKENS,
    SHAREGPT_MIN_TOKENS,
    ShareGPTRecovery,
    read_sharegpt_records,
    sharegpt_lengths_from_json,
    sharegpt_pairs,
)
from voltana_cli.core.workloads.tokenize import TokenCounter, get_tokenizer_counter
from voltana_cli.core.workloads.traces import LengthTrace, read_azure_trace, read_length_csv
from voltana_cli.core.workloads.workload import Workload, build_workload

__all__ = [
    "ARRIVALS",
    "DATASETS",
    "SHAREGPT_MAX_TOTAL_TOKENS",
    "SHAREGPT_MIN_TOKENS",
    "SHAREGPT_TRACE",
    "DatasetLoader",
    "DatasetRequest",
    "LengthTrace",
    "ShareGPTRecovery",
    "TokenCounter",
    "Workload",
    "arrival_times",
    "build_workload",
    "get_tokenizer_counter",
    "load_lengths",
    "read_azure_trace",
    "read_length_csv",
    "read_sharegpt_records",
    "register_dataset",
    "sharegpt_lengths_from_json",
    "sharegpt_pairs",
]
