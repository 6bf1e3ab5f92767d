"""The simulated world: a discrete-event P/D cluster whose instances schedule like an engine's.

``Instance`` (and its prefill, decode and colocated roles) is the one scheduler both worlds share;
``simulate`` drives instances from an event heap and returns a ``RequestLog``. ``ClusterConfig.layout``
chooses P/D (prefill and decode instances) or colocated (the same GPUs, each serving both phases).
"""

from voltana_cli.core.sim.cluster import ClusterConfig, NoiseStream, simulate
from voltana_cli.core.sim.instance import (
    ColocatedInstance,
    CostCache,
    DecodeInstance,
    Instance,
    Outcomes,
    PrefillInstance,
    Requests,
)

__all__ = [
    "ClusterConfig",
    "ColocatedInstance",
    "CostCache",
    "DecodeInstance",
    "Instance",
    "NoiseStream",
    "Outcomes",
    "PrefillInstance",
    "Requests",
    "simulate",
]
