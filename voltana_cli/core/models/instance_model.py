"""The ground-truth side: what one instance's iterations really cost, as a protocol.

``InstanceModel`` is what the simulator (and the emulated engine) take as "the GPU": the analytical model
(``PerfModel``) and a measured or modelled profile's interpolant (``ProfileModel``) both implement it.
Policies never see it; they see a ``Predictor`` (``policy.Predictor``), except the named oracle.

Costs are read from per-clock tables so the simulator's inner loop stays a few list lookups:
decode ``t = t0[batch] + kv_tokens * t_kv``; prefill ``t = tg[tokens] + seqs * t_seq + pairs * t_pair``
(energy alike, whole instance, every GPU of a TP group billed).
"""

from __future__ import annotations

from typing import Protocol

from voltana_cli.core.models.analytical import DecodeTable, PrefillTable
from voltana_cli.core.models.specs import EngineSpec, GpuSpec


class InstanceModel(Protocol):
    """Iteration latency (s) and energy (J) of one instance at an SM clock, and its capacities."""

    gpu: GpuSpec
    engine: EngineSpec
    tp: int
    max_batch: int
    clocks: list[int]

    @property
    def kv_capacity_tokens(self) -> int:
        """KV-cache tokens one instance holds."""
        ...

    def check_clock(self, clock_mhz: int) -> int:
        """``clock_mhz`` if the model covers it, else a ``UserError`` naming the valid range."""
        ...

    def decode_table(self, clock_mhz: int) -> DecodeTable:
        """Decode cost table at a clock, for batches 0..max_batch."""
        ...

    def prefill_table(self, clock_mhz: int, max_tokens: int | None = None) -> PrefillTable:
        """Prefill cost table at a clock, for 0..max_tokens batch tokens (at least the chunked budget)."""
        ...

    def decode_cost(self, batch: int, kv_tokens: int, clock_mhz: int) -> tuple[float, float]:
        """Latency and energy of a decode iteration."""
        ...

    def prefill_cost(self, tokens: int, clock_mhz: int, num_seqs: int = 1,
                     attn_pairs: float | None = None) -> tuple[float, float]:
        """Latency and energy of a prefill iteration."""
        ...

    def mixed_cost(self, batch: int, kv_tokens: int, prefill_tokens: int, prefill_seqs: int, attn_pairs: float,
                   clock_mhz: int) -> tuple[float, float]:
        """Latency and energy of a mixed iteration: prefill chunks riding in a decode batch."""
        ...

    def idle_power_w(self, clock_mhz: float) -> float:
        """Power of the idle instance holding ``clock_mhz``."""
        ...

    def kv_transfer_s(self, tokens: int) -> float:
        """Time to move a request's KV cache from its prefill to its decode instance."""
        ...

    def kv_host_copy_s(self, tokens: int) -> float:
        """Time to copy ``tokens`` tokens of KV cache between the GPUs and host memory, one way (retraction)."""
        ...

