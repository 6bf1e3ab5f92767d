"""The GPU specs' time efficiencies against public per-layer measurements (how they were sized).

    python benchmarks/layers_vs_model.py vidur PATH/mlp.csv --gpu h100-80g-sxm
    python benchmarks/layers_vs_model.py splitwise PATH/perf_model.csv

``vidur``: a Vidur compute profile (github microsoft/vidur @ 7d47513,
``data/profiling/compute/<gpu>/meta-llama/<model>/mlp.csv``: per-layer op times, ms). For the model's linear
weights (from the file's own shape columns, ``--layers`` layers) it prints, for each of the three
efficiencies of ``--gpu``'s spec, the value that fits its range best (least squares in log time) and the
median of model time over measured time with the shipped value:

- bandwidth: all ops (linear + norms, rope, activation, residual add) at 1 token;
- decode compute: the linear ops at 128-1024 tokens (CUDA graphs fold the small ops), the model's batch
  padded to its GEMM tiles as the simulator pads it;
- prefill compute: all ops at 256-2048 tokens (and, for reference, 2048-16384).

``splitwise``: Splitwise's measured table (github Mutinifni/splitwise-sim @ 8f99e7d, ``data/perf_model.csv``,
Llama-2-70B on DGX A100 and H100 under vLLM, TP 2/4/8). It prints the model's prompt and token times
(Llama-3.1-70B, the same layer shapes) over the measured ones per GPU and TP, and the H100/A100 time ratios
of both: an end-to-end check that includes attention, tensor-parallel communication and the engine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from voltana_cli.core.models import PerfModel, engine_spec, gpu_spec, model_spec

LINEAR = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
SMALL = ("input_layernorm", "post_attention_layernorm", "attn_rope", "mlp_act", "add")
#: (efficiency, the ops measured, token range) as the shipped specs size them.
RANGES = (("bandwidth_efficiency", "all", 1, 1), ("decode_compute_efficiency", "linear", 128, 1024),
          ("compute_efficiency", "all", 256, 2048), ("compute_efficiency", "all", 2048, 16384))
SPLITWISE_GPUS = {"a100-80gb": "a100-80g-sxm4", "h100-80gb": "h100-80g-sxm"}


def vidur(path: Path, gpu: str, layers: int) -> None:
    raw = pd.read_csv(path)
    raw = raw[raw["num_tensor_parallel_workers"] == 1]
    row = raw.iloc[0]
    h, inter, heads, kv = (int(row[c]) for c in ("n_embd", "n_expanded_embd", "n_head", "n_kv_head"))
    params = layers * (2 * h * h + 2 * h * (h * kv // heads) + 3 * h * inter)
    times = pd.DataFrame({
        "linear": layers * sum(raw[f"time_stats.{op}.median"] for op in LINEAR),
        "all": layers * sum(raw[f"time_stats.{op}.median"] for op in LINEAR + SMALL),
        "tokens": raw["num_tokens"],
    }).groupby("tokens").median()
    g = gpu_spec(gpu)
    pm = PerfModel(g, model_spec("llama-3.1-8b"), engine_spec("sglang-voltanallm-testbed"))
    cal = g.calibration
    print(f"{path}: {layers} layers, hidden {h}, MLP {inter}, {heads}/{kv} heads: {params / 1e9:.3f}B linear "
          f"parameters; against {gpu} at {g.max_clock_mhz} MHz")

    def model_ms(tokens: np.ndarray, bw: float, eff: float, decode: bool = False) -> np.ndarray:
        # A decode batch's GEMMs pay for part of a partly filled tile, as the simulator charges them.
        m = pm.padded_batch(tokens) if decode else tokens.astype(float)
        t, _ = pm._capped_part(np.full(len(tokens), 2.0 * params), 2.0 * params * m, g.max_clock_mhz, bw, eff)
        return t * 1e3

    grid = np.round(np.arange(0.40, 0.951, 0.005), 3)
    for name, ops, lo, hi in RANGES:
        sel = times[(times.index >= lo) & (times.index <= hi)]
        tokens, measured = np.asarray(sel.index), sel[ops].to_numpy()
        shipped = getattr(cal, name)
        if name == "bandwidth_efficiency":
            errs = [np.mean(np.abs(np.log(model_ms(tokens, b, cal.decode_compute_efficiency) / measured))) for b in grid]
            ratio = model_ms(tokens, shipped, cal.decode_compute_efficiency) / measured
        else:
            dec = name == "decode_compute_efficiency"
            errs = [np.mean(np.abs(np.log(model_ms(tokens, cal.bandwidth_efficiency, e, dec) / measured))) for e in grid]
            ratio = model_ms(tokens, cal.bandwidth_efficiency, shipped, dec) / measured
        best = grid[int(np.argmin(errs))]
        print(f"  {name:26} {ops:6} ops, {lo:>5}-{hi:<5} tokens ({len(tokens):3} points): best {best:.3f}; "
              f"shipped {shipped:.2f}: model/measured median {np.median(ratio):.3f} ({ratio.min():.2f}-{ratio.max():.2f})")


def splitwise(path: Path) -> None:
    d = pd.read_csv(path)
    d = d[(d["model"] == "llama2-70b") & d["hardware"].isin(list(SPLITWISE_GPUS))]
    keys = ["hardware", "tensor_parallel", "prompt_size", "batch_size", "token_size"]
    d = d.groupby(keys)[["prompt_time", "token_time"]].median().reset_index()
    rows = []
    for r in d.itertuples(index=False):
        g = gpu_spec(SPLITWISE_GPUS[r.hardware])
        pm = PerfModel(g, model_spec("llama-3.1-70b"), engine_spec("sglang"), tp=int(r.tensor_parallel))
        p, b, t = int(r.prompt_size), int(r.batch_size), int(r.token_size)
        prompt_s, _ = pm.prefill_cost(p * b, g.max_clock_mhz, num_seqs=b)
        token_s, _ = pm.decode_cost(b, b * (p + t // 2), g.max_clock_mhz)
        rows.append((r.hardware, r.tensor_parallel, p, b, r.prompt_time, prompt_s * 1e3, r.token_time, token_s * 1e3))
    o = pd.DataFrame(rows, columns=["gpu", "tp", "prompt", "batch", "m_prompt", "o_prompt", "m_token", "o_token"])
    o["prompt model/measured"] = o["o_prompt"] / o["m_prompt"]
    o["token model/measured"] = o["o_token"] / o["m_token"]
    print(f"{path}: Llama-2-70B (measured, vLLM) against the model's Llama-3.1-70B, medians over "
          f"{o.groupby(['gpu', 'tp']).size().iloc[0]} shapes per row")
    print(o.groupby(["gpu", "tp"])[["prompt model/measured", "token model/measured"]].median().round(3).to_string())
    wide = o.pivot_table(index=["tp", "prompt", "batch"], columns="gpu", values=["m_prompt", "o_prompt", "m_token", "o_token"])
    for what in ("prompt", "token"):
        ratios = [float((wide[(f"{k}_{what}", "h100-80gb")] / wide[(f"{k}_{what}", "a100-80gb")]).median()) for k in "mo"]
        print(f"H100/A100 {what} time, median over shapes: measured {ratios[0]:.3f}, model {ratios[1]:.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="source", required=True)
    v = sub.add_parser("vidur", help="a Vidur mlp.csv compute profile")
    v.add_argument("path", type=Path)
    v.add_argument("--gpu", required=True, help="the GPU spec to check (the GPU the profile was measured on)")
    v.add_argument("--layers", type=int, default=32, help="decoder layers of the profiled model (default 32)")
    s = sub.add_parser("splitwise", help="Splitwise's perf_model.csv")
    s.add_argument("path", type=Path)
    args = ap.parse_args(argv)
    if not args.path.is_file():
        print(f"error: {args.path} does not exist: give the file named in this script's docstring", file=sys.stderr)
        return 2
    if args.source == "vidur":
        vidur(args.path, args.gpu, args.layers)
    else:
        splitwise(args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
