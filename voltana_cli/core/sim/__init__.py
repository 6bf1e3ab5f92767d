"""The simulated world: a discrete-event P/D cluster whose instances schedule like an engine's.

``Instance`` (and its prefill and decode roles) is the one scheduler both worlds share; ``simulate``
drives instances from an event heap and returns a ``RequestLog``.
"""

from voltana_cli.core.sim.cluster import ClusterConfig, NoiseStream, simulate
from voltana_cli.core.sim.instance import CostCache, DecodeInstance, Instance, Outcomes, PrefillInstance, Requests

__all__ = [
    "ClusterConfig",
    "CostCache",
    "DecodeInstance",
    "Instance",
    "NoiseStream",
    "Outcomes",
    "PrefillInstance",
    "Requests",
    "simulate",
]
