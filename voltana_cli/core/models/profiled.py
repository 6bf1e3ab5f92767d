"""A profile as the simulator's ground truth: the measured table, interpolated, behind ``PerfModel``'s face.

Latency (and energy, when measured) is interpolated, not modelled: decode is piecewise linear in batch size
with a knot at every profiled batch size and a free jump between every profiled neighbour pair
(``b``, ``b + 1``), plus a KV-token slope per clock; prefill is piecewise linear in batch tokens with a knot
at every profiled token count, plus per-sequence and attention-pair terms per clock. Between profiled
clocks it interpolates linearly in 1/f; outside them it refuses. Everything else the simulator needs (KV
capacity, KV transfer, idle power, clock-switch time, engine settings) comes from the analytical model of
the same GPU and model. When the profile has no energy, energy is the analytical model's power at that
iteration times the profile's latency.

This is ground truth, so the controller must never see it: its predictor is fitted separately.
"""

from __future__ import annotations

import numpy as np

from voltana_cli.core.errors import UserError
from voltana_cli.core.models.analytical import CostTables, DecodeTable, PerfModel, PrefillTable
from voltana_cli.core.models.ecopred import EcoPred, fit_phase
from voltana_cli.core.models.profile import Profile


class ProfileModel(CostTables):
    """Drop-in for ``PerfModel`` inside ``simulate``: tables come from ``profile``, the rest from ``base``."""

    def __init__(self, profile: Profile, base: PerfModel):
        dec, pre = profile.phase("decode"), profile.phase("prefill")
        if dec.empty or pre.empty:
            raise UserError(f"profile {profile.source}: needs both prefill and decode rows to drive the simulator")
        if profile.meta.tp != base.tp:
            raise UserError(f"the profile {profile.source} was taken at TP {profile.meta.tp}, not {base.tp}: "
                            f"simulate with TP {profile.meta.tp}", field="tp")
        bs = sorted(int(b) for b in dec["batch_size"].unique())
        sampled = set(bs)
        steps = {b for b in bs if b + 1 in sampled}
        energy = profile.has_energy
        self._interp = EcoPred(
            fit_phase("decode", dec, bs, steps, energy),
            fit_phase("prefill", pre, sorted(int(t) for t in pre["num_tokens"].unique()), set(), energy),
        )
        self.profile, self.base = profile, base
        self.gpu, self.model, self.engine, self.tp = base.gpu, base.model, base.engine, base.tp
        self.max_batch, self.f_max = base.max_batch, base.f_max
        lo, hi = self._interp.clocks_mhz[0], self._interp.clocks_mhz[-1]
        self.clocks = [c for c in base.clocks if lo <= c <= hi]
        self._clockset = set(self.clocks)
        self._decode: dict[int, DecodeTable] = {}
        self._prefill: dict[int, PrefillTable] = {}

    @property
    def kv_capacity_tokens(self) -> int:
        return self.base.kv_capacity_tokens

    def kv_transfer_s(self, tokens: int) -> float:
        return self.base.kv_transfer_s(tokens)

    def kv_host_copy_s(self, tokens: int) -> float:
        return self.base.kv_host_copy_s(tokens)

    def idle_power_w(self, clock_mhz: float) -> float:
        return self.base.idle_power_w(clock_mhz)

    def check_clock(self, clock_mhz: int) -> int:
        if clock_mhz not in self._clockset:
            pc = self._interp.clocks_mhz
            raise UserError(
                f"the profile {self.profile.source} covers {pc[0]}-{pc[-1]} MHz ({len(pc)} clocks); {clock_mhz} MHz "
                "is outside it or not a supported clock: choose policies and EcoFreq levels inside that range"
            )
        return clock_mhz

    @staticmethod
    def _eval(lines: tuple, x: np.ndarray) -> np.ndarray:
        edges, b, a = lines[0], np.asarray(lines[1]), np.asarray(lines[2])
        idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 1)
        return b[idx] + a[idx] * x

    def decode_table(self, clock_mhz: int) -> DecodeTable:
        tab = self._decode.get(clock_mhz)
        if tab is not None:
            return tab
        self.check_clock(clock_mhz)
        b = np.arange(self.max_batch + 1, dtype=float)
        lines = self._interp.lines("decode", False, clock_mhz)
        t0 = np.maximum(self._eval(lines, b), 0.0)
        t_kv = float(lines[3][0])
        if self.profile.has_energy:
            el = self._interp.lines("decode", True, clock_mhz)
            e0, e_kv = np.maximum(self._eval(el, b), 0.0), float(el[3][0])
        else:
            m = self.base.decode_table(clock_mhz)
            mt, me = np.asarray(m.t0), np.asarray(m.e0)
            e0 = t0 * np.where(mt > 0, me / np.where(mt > 0, mt, 1.0), 0.0)
            e_kv = t_kv * (m.e_kv / m.t_kv if m.t_kv > 0 else 0.0)
        t0[0] = e0[0] = 0.0
        tab = self._decode[clock_mhz] = DecodeTable(clock_mhz, t0.tolist(), e0.tolist(), t_kv, e_kv)
        return tab

    def prefill_table(self, clock_mhz: int, max_tokens: int | None = None) -> PrefillTable:
        n = max(max_tokens or 0, self.engine.chunked_prefill_tokens)
        tab = self._prefill.get(clock_mhz)
        if tab is not None and len(tab.tg) > n:
            return tab
        self.check_clock(clock_mhz)
        tok = np.arange(n + 1, dtype=float)
        lines = self._interp.lines("prefill", False, clock_mhz)
        tg = np.maximum(self._eval(lines, tok), 0.0)
        t_seq, t_pair = float(lines[3][0]), float(lines[4][0])
        if self.profile.has_energy:
            el = self._interp.lines("prefill", True, clock_mhz)
            eg, e_seq, e_pair = np.maximum(self._eval(el, tok), 0.0), float(el[3][0]), float(el[4][0])
        else:
            m = self.base.prefill_table(clock_mhz, n)
            mt, me = np.asarray(m.tg[: n + 1]), np.asarray(m.eg[: n + 1])
            eg = tg * np.where(mt > 0, me / np.where(mt > 0, mt, 1.0), 0.0)
            e_seq = t_seq * (m.e_seq / m.t_seq if m.t_seq > 0 else 0.0)
            e_pair = t_pair * (m.e_pair / m.t_pair if m.t_pair > 0 else 0.0)
        tg[0] = eg[0] = 0.0
        tab = self._prefill[clock_mhz] = PrefillTable(clock_mhz, tg.tolist(), eg.tolist(), t_seq, e_seq, t_pair, e_pair)
        return tab
