"""Analytical performance and DVFS power model of one serving instance (a TP group of GPUs).

Time. Each part of an iteration is a roofline with a smooth corner: ``t = sqrt(t_mem**2 + t_cmp**2)``,
where ``t_mem = bytes / (bandwidth * eff)`` (slightly longer at low SM clocks) and
``t_cmp = flops / (peak * eff * f / f_max)``. The 2-norm reproduces Vidur's measured A100 Llama-3-8B
linear layers at 1, 128 and 2048 tokens within a few per cent. Parts: projections (+ LM head), attention
(prefill: compute over token pairs; decode: KV bytes), fixed and per-request overhead, tensor-parallel
all-reduces. Decode batches are padded to CUDA-graph capture sizes, and the GEMM M dimension pays for part
of a partly filled tile: the 128 -> 129 step VoltanaLLM saw.

Power (per GPU). ``P = P_static + c * f * V(f)**2 + k * f * V(f)**2 * activity + P_hbm * u_mem`` with
``V(f) = 1 + s * max(0, f - f_floor)`` (a voltage floor below ~1.1 GHz on A100), ``activity`` between the
SM activity floor of memory-bound kernels and 1 for a saturated GEMM. When that power exceeds the power
limit, the GPU throttles: the effective clock drops until it fits. The curve's shape follows Perseus'
measured A100 SXM clock sweep (compute-bound work at 1410 MHz only ~4 % faster than at 1305 MHz); its
level sits 10-20 % below Perseus' measured watts, whose cards ran above a 400 W limit
(``benchmarks/power_vs_model.py``).

Everything is pure and deterministic; per-clock tables make an iteration's cost two array lookups.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from voltana_cli.core.errors import UserError
from voltana_cli.core.models.specs import EngineSpec, GpuSpec, ModelSpec

#: GiB kept free for activations, CUDA graphs and the allocator besides weights and KV cache.
ACTIVATION_RESERVE_GIB = 3.0


@dataclass(frozen=True)
class DecodeTable:
    """Decode cost at one clock: ``t = t0[batch] + kv_tokens * t_kv`` (same for energy)."""

    clock_mhz: int
    t0: list[float]
    e0: list[float]
    t_kv: float
    e_kv: float


@dataclass(frozen=True)
class PrefillTable:
    """Prefill cost at one clock: ``t = tg[tokens] + n_seqs * t_seq + pairs * t_pair`` (same for energy)."""

    clock_mhz: int
    tg: list[float]
    eg: list[float]
    t_seq: float
    e_seq: float
    t_pair: float
    e_pair: float


def prefill_pairs(tokens: Any, seqs: Any) -> Any:
    """Causal attention token pairs of a prefill of ``tokens`` split evenly over ``seqs`` fresh sequences
    (scalars or numpy arrays)."""
    n = np.maximum(seqs, 1)
    c = tokens / n
    return n * c * (c + 1) / 2


class CostTables:
    """Iteration costs read from per-clock tables; shared by the analytical model and a profile's interpolant."""

    max_batch: int

    def decode_table(self, clock_mhz: int) -> DecodeTable:
        raise NotImplementedError

    def prefill_table(self, clock_mhz: int, max_tokens: int | None = None) -> PrefillTable:
        raise NotImplementedError

    def decode_cost(self, batch: int, kv_tokens: int, clock_mhz: int) -> tuple[float, float]:
        """Latency (s) and energy (J, whole instance) of one decode iteration."""
        if batch <= 0:
            return 0.0, 0.0
        if batch > self.max_batch:
            raise ValueError(f"decode batch {batch} above the modelled maximum {self.max_batch}")
        tab = self.decode_table(clock_mhz)
        return tab.t0[batch] + kv_tokens * tab.t_kv, tab.e0[batch] + kv_tokens * tab.e_kv

    def prefill_cost(
        self, tokens: int, clock_mhz: int, num_seqs: int = 1, attn_pairs: float | None = None
    ) -> tuple[float, float]:
        """Latency (s) and energy (J) of a prefill iteration of ``tokens`` tokens from ``num_seqs`` requests.

        ``attn_pairs`` is the causal attention work, sum over chunks of ``c * (offset + (c + 1) / 2)``;
        by default the tokens are split evenly over the sequences with no cached prefix.
        """
        if tokens <= 0:
            return 0.0, 0.0
        if attn_pairs is None:
            attn_pairs = float(prefill_pairs(tokens, num_seqs))
        tab = self.prefill_table(clock_mhz, tokens)
        return (
            tab.tg[tokens] + num_seqs * tab.t_seq + attn_pairs * tab.t_pair,
            tab.eg[tokens] + num_seqs * tab.e_seq + attn_pairs * tab.e_pair,
        )

    def mixed_cost(self, batch: int, kv_tokens: int, prefill_tokens: int, prefill_seqs: int, attn_pairs: float,
                   clock_mhz: int) -> tuple[float, float]:
        """Latency (s) and energy (J) of one iteration that runs ``batch`` decode requests and prefill chunks
        together (co-location).

        The engine puts every token of the iteration (one per decode request plus the prefill chunks) through
        the projections in one pass, so that part is the prefill table at the combined token count; each
        sequence pays its per-sequence cost (decode requests too: sampling and bookkeeping, charged like a
        prefill sequence's LM head); attention is the chunks' causal pairs plus the decode requests' reads of
        their KV cache. With no prefill tokens it is the decode cost; with no decode requests, the prefill cost.
        """
        if prefill_tokens <= 0:
            return self.decode_cost(batch, kv_tokens, clock_mhz)
        if batch <= 0:
            return self.prefill_cost(prefill_tokens, clock_mhz, prefill_seqs, attn_pairs)
        tokens = prefill_tokens + batch
        pt = self.prefill_table(clock_mhz, tokens)
        dt = self.decode_table(clock_mhz)
        seqs = prefill_seqs + batch
        return (pt.tg[tokens] + seqs * pt.t_seq + attn_pairs * pt.t_pair + kv_tokens * dt.t_kv,
                pt.eg[tokens] + seqs * pt.e_seq + attn_pairs * pt.e_pair + kv_tokens * dt.e_kv)


class PerfModel(CostTables):
    """Latency (s) and energy (J) of prefill and decode iterations of one instance at a given SM clock.

    Args:
        gpu, model, engine: the specs.
        tp: tensor-parallel degree (GPUs per instance); energy and idle power cover all of them.
        max_batch: largest decode batch tabulated.
    """

    def __init__(self, gpu: GpuSpec, model: ModelSpec, engine: EngineSpec, tp: int = 1, max_batch: int = 4096):
        if tp < 1:
            raise UserError(f"{tp} must be >= 1 (GPUs per instance)", field="tp")
        if model.num_attention_heads % tp:
            raise UserError(
                f"{tp} does not divide {model.name}'s {model.num_attention_heads} attention heads: "
                "use a divisor such as 1, 2, 4 or 8",
                field="tp",
            )
        self.gpu, self.model, self.engine, self.tp = gpu, model, engine, tp
        self.max_batch = max_batch
        self.clocks = gpu.clocks_mhz
        self.f_max = float(gpu.max_clock_mhz)
        self._clockset = set(self.clocks)
        self._decode: dict[int, DecodeTable] = {}
        self._prefill: dict[int, PrefillTable] = {}
        if self.kv_capacity_tokens < 4096:
            raise UserError(
                f"{model.name} at TP {tp} leaves no room for a KV cache on {gpu.name} "
                f"({model.weight_bytes / tp / 2**30:.0f} GiB of weights per GPU): raise the tensor parallelism",
                field="tp",
            )

    # ---- capacity -------------------------------------------------------------------------------------
    @cached_property
    def kv_bytes_per_token_per_gpu(self) -> float:
        m = self.model
        return m.kv_bytes_per_token / min(self.tp, m.num_kv_heads)

    @cached_property
    def kv_capacity_tokens(self) -> int:
        """KV-cache tokens one instance holds (SGLang's static memory fraction, less weights)."""
        gpu_bytes = self.gpu.memory_gib * 2**30
        free = gpu_bytes * self.engine.mem_fraction_static - self.model.weight_bytes / self.tp
        free -= ACTIVATION_RESERVE_GIB * 2**30
        return max(0, int(free / self.kv_bytes_per_token_per_gpu))

    def check_clock(self, clock_mhz: int) -> int:
        if clock_mhz not in self._clockset:
            c = self.gpu.sm_clock_mhz
            raise UserError(
                f"{self.gpu.name} does not support {clock_mhz} MHz: use a clock from {c.min} to {c.max} "
                f"in steps of {c.step} MHz"
            )
        return clock_mhz

    # ---- power primitives (per GPU, vectorised over f) ------------------------------------------------
    def _v2(self, f: np.ndarray) -> np.ndarray:
        cal = self.gpu.calibration
        v = 1.0 + cal.voltage_slope_per_mhz * np.maximum(0.0, f - cal.voltage_floor_mhz)
        return v * v

    def idle_power_w(self, clock_mhz: float) -> float:
        """Power of the whole instance while idle with its clocks held at ``clock_mhz``."""
        cal = self.gpu.calibration
        f = np.asarray(float(clock_mhz))
        p = cal.static_power_w + cal.clock_power_w_per_mhz * f * self._v2(f)
        return float(p) * self.tp

    def _roofline(
        self, bytes_: np.ndarray, flops: np.ndarray, f: np.ndarray, bw_eff: float, cmp_eff: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Time (s), compute share and memory share of a part at effective clock ``f``."""
        g, cal = self.gpu, self.gpu.calibration
        t_mem = bytes_ / (g.hbm_bandwidth_gbps * 1e9 * bw_eff)
        t_mem = t_mem * (1.0 + cal.memory_clock_sensitivity * (self.f_max / f - 1.0))
        t_cmp = flops / (g.bf16_dense_tflops * 1e12 * cmp_eff * f / self.f_max)
        t = np.sqrt(t_mem * t_mem + t_cmp * t_cmp)
        safe = np.where(t > 0, t, 1.0)
        return t, t_cmp / safe, t_mem / safe

    def _part_power(self, f: np.ndarray, u_cmp: np.ndarray, u_mem: np.ndarray) -> np.ndarray:
        cal = self.gpu.calibration
        v2 = self._v2(f)
        act = cal.sm_activity_floor + (1.0 - cal.sm_activity_floor) * u_cmp
        return (
            cal.static_power_w
            + cal.clock_power_w_per_mhz * f * v2
            + cal.sm_dynamic_power_w_per_mhz * f * v2 * act
            + cal.hbm_power_w * u_mem
        )

    def _capped_part(
        self, bytes_: np.ndarray, flops: np.ndarray, clock_mhz: float, bw_eff: float, cmp_eff: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Time (s) and energy (J, one GPU) of a roofline part, throttled to the power limit."""
        bytes_ = np.asarray(bytes_, dtype=float)
        flops = np.asarray(flops, dtype=float)
        f = np.full(np.broadcast(bytes_, flops).shape, float(clock_mhz))
        t, uc, um = self._roofline(bytes_, flops, f, bw_eff, cmp_eff)
        p = self._part_power(f, uc, um)
        over = p > self.gpu.power_limit_w
        if np.any(over):
            lo = np.full(int(over.sum()), float(self.gpu.min_clock_mhz))
            hi = f[over].copy()
            b, fl = np.broadcast_to(bytes_, f.shape)[over], np.broadcast_to(flops, f.shape)[over]
            for _ in range(30):
                mid = 0.5 * (lo + hi)
                _, uc_m, um_m = self._roofline(b, fl, mid, bw_eff, cmp_eff)
                fits = self._part_power(mid, uc_m, um_m) <= self.gpu.power_limit_w
                lo = np.where(fits, mid, lo)
                hi = np.where(fits, hi, mid)
            f[over] = lo
            t, uc, um = self._roofline(bytes_, flops, f, bw_eff, cmp_eff)
            p = self._part_power(f, uc, um)
        return t, p * t

    def _overhead(self, clock_mhz: float, n_requests: np.ndarray, per_request_us: float) -> tuple[np.ndarray, np.ndarray]:
        """Scheduler/launch overhead: time (s) and energy (J, one GPU)."""
        e, cal = self.engine, self.gpu.calibration
        f = float(clock_mhz)
        phi = e.overhead_clock_fraction
        t_iter = e.iteration_overhead_ms * 1e-3 * (1.0 - phi + phi * self.f_max / f)
        t = t_iter + np.asarray(n_requests, dtype=float) * per_request_us * 1e-6
        v2 = float(self._v2(np.asarray(f)))
        p = cal.static_power_w + (cal.clock_power_w_per_mhz + cal.sm_dynamic_power_w_per_mhz * cal.overhead_activity) * f * v2
        return t, p * t

    def _allreduce_time(self, tokens: np.ndarray) -> np.ndarray:
        if self.tp == 1:
            return np.zeros_like(np.asarray(tokens, dtype=float))
        m, e = self.model, self.engine
        msg = np.asarray(tokens, dtype=float) * m.hidden_size * m.dtype_bytes
        per = e.allreduce_latency_s(self.tp) + 2 * (self.tp - 1) / self.tp * msg / (self.gpu.nvlink_bandwidth_gbps * 1e9)
        return 2 * m.num_layers * per

    # ---- decode ---------------------------------------------------------------------------------------
    def padded_batch(self, batch: np.ndarray) -> np.ndarray:
        """The batch the GEMMs effectively compute: CUDA-graph padding, then GEMM tile waste."""
        e = self.engine
        b = np.asarray(batch, dtype=float)
        graph_sizes = np.array(_capture_sizes(e.cuda_graph_max_bs), dtype=float)
        idx = np.searchsorted(graph_sizes, b)
        in_graph = b <= e.cuda_graph_max_bs
        gb = np.where(in_graph, graph_sizes[np.minimum(idx, len(graph_sizes) - 1)], b)
        tiles = np.ceil(gb / e.gemm_tile) * e.gemm_tile
        return gb + e.tile_waste * (tiles - gb)

    def decode_table(self, clock_mhz: int) -> DecodeTable:
        """Cached decode cost table at ``clock_mhz`` for batches 0..max_batch."""
        tab = self._decode.get(clock_mhz)
        if tab is not None:
            return tab
        self.check_clock(clock_mhz)
        m, cal, tp = self.model, self.gpu.calibration, self.tp
        b = np.arange(self.max_batch + 1, dtype=float)
        pb = self.padded_batch(np.maximum(b, 1))
        w_bytes = m.weight_bytes / tp
        flops = 2.0 * (m.linear_params + m.lm_head_params) * pb / tp
        tg, eg = self._capped_part(np.full_like(b, w_bytes), flops, clock_mhz, cal.bandwidth_efficiency,
                                   cal.decode_compute_efficiency)
        to, eo = self._overhead(clock_mhz, b, self.engine.decode_request_overhead_us)
        eager = np.where(b > self.engine.cuda_graph_max_bs, self.engine.eager_overhead_ms * 1e-3, 0.0)
        p_ovh = eo / np.where(to > 0, to, 1.0)
        ta = self._allreduce_time(b)
        t0 = tg + to + eager + ta
        e0 = eg + eo + p_ovh * (eager + ta)
        t0[0] = e0[0] = 0.0
        # Attention: both bytes and flops are linear in KV tokens, so one token's cost is the coefficient.
        kv_b = np.array([self.kv_bytes_per_token_per_gpu])
        kv_f = np.array([4.0 * m.num_layers * m.num_attention_heads * m.head_dim / tp])
        tk, ek = self._capped_part(kv_b, kv_f, clock_mhz, cal.attention_bandwidth_efficiency, cal.attention_compute_efficiency)
        tab = DecodeTable(clock_mhz, (t0).tolist(), (e0 * tp).tolist(), float(tk[0]), float(ek[0]) * tp)
        self._decode[clock_mhz] = tab
        return tab

    # ---- prefill --------------------------------------------------------------------------------------
    def prefill_table(self, clock_mhz: int, max_tokens: int | None = None) -> PrefillTable:
        """Cached prefill cost table at ``clock_mhz`` for 0..max_tokens batch tokens."""
        n = max(max_tokens or 0, self.engine.chunked_prefill_tokens)
        tab = self._prefill.get(clock_mhz)
        if tab is not None and len(tab.tg) > n:
            return tab
        self.check_clock(clock_mhz)
        m, cal, tp = self.model, self.gpu.calibration, self.tp
        tok = np.arange(n + 1, dtype=float)
        flops = 2.0 * m.linear_params * tok / tp
        tg, eg = self._capped_part(np.full_like(tok, m.weight_bytes / tp), flops, clock_mhz,
                                   cal.bandwidth_efficiency, cal.compute_efficiency)
        ta = self._allreduce_time(tok)
        to, eo = self._overhead(clock_mhz, np.zeros(1), 0.0)
        p_ovh = float(eo[0] / to[0]) if to[0] > 0 else 0.0
        t_all = tg + ta + float(to[0])
        e_all = eg + p_ovh * ta + float(eo[0])
        t_all[0] = e_all[0] = 0.0
        # Per sequence: the LM head on its last token, plus request handling.
        ts, es = self._capped_part(np.zeros(1), np.array([2.0 * m.lm_head_params / tp]), clock_mhz,
                                   cal.bandwidth_efficiency, cal.compute_efficiency)
        tr, er = self._overhead(clock_mhz, np.ones(1), self.engine.prefill_request_overhead_us)
        t_req = float(tr[0] - to[0])
        e_req = float(er[0] - eo[0])
        # Attention over token pairs (causal): 4 flops per head dim per pair per layer.
        tpair, epair = self._capped_part(np.zeros(1), np.array([4.0 * m.num_layers * m.num_attention_heads * m.head_dim / tp]),
                                         clock_mhz, cal.attention_bandwidth_efficiency, cal.attention_compute_efficiency)
        tab = PrefillTable(
            clock_mhz, t_all.tolist(), (e_all * tp).tolist(),
            float(ts[0]) + t_req, (float(es[0]) + e_req) * tp, float(tpair[0]), float(epair[0]) * tp,
        )
        self._prefill[clock_mhz] = tab
        return tab

    def kv_transfer_s(self, tokens: int) -> float:
        """Time to move a request's KV cache from its prefill to its decode instance."""
        e = self.engine
        return e.kv_transfer_latency_ms * 1e-3 + tokens * self.model.kv_bytes_per_token / (e.kv_transfer_gbps * 1e9)

    def kv_host_copy_s(self, tokens: int) -> float:
        """Time to copy ``tokens`` tokens of KV cache between the instance's GPUs and host memory, one way.

        SGLang's decode does this synchronously when it retracts a request (``Req.offload_kv_cache``) and
        when it resumes it (``load_kv_cache``): every GPU of the TP group copies its share over its own
        PCIe link at once. Only the bytes are charged; the per-layer copy launches (two per layer) are not.
        """
        return tokens * self.kv_bytes_per_token_per_gpu / (self.gpu.host_copy_gbps * 1e9)


def _capture_sizes(max_bs: int) -> list[int]:
    """SGLang's default CUDA-graph capture batch sizes up to ``max_bs``: 1, 2, 4, then every 8."""
    sizes = [s for s in (1, 2, 4) if s <= max_bs] + list(range(8, max_bs + 1, 8))
    if sizes[-1] != max_bs:
        sizes.append(max_bs)
    return sizes


