"""The policy core (pure): frequency controllers, decode routers, and the registry that names them.

Nothing here reads a clock, sleeps, draws random numbers or touches a GPU, a file or the network: time
comes in through ``Observation.now_s``, predictions through a ``Predictor``. The same objects run in the
simulator, in ``tune`` and in the live sidecar and router. ``tests/test_architecture.py`` keeps it so.
"""

from voltana_cli.core.policy.controller import EcoFreqController, FrequencyController, Observation, StaticController
from voltana_cli.core.policy.predictor import Predictor
from voltana_cli.core.policy.registry import (
    DEFAULT_PREFILL_ROUTER,
    PAPER_RUN_MARGINS,
    REGISTRY,
    ControllerEntry,
    EcoFreqParams,
    Policy,
    PolicyContext,
    PolicyRegistry,
    RouterEntry,
    build_policy,
)
from voltana_cli.core.policy.router import (
    InstanceView,
    LeastLoadedRouter,
    RandomRouter,
    RoundRobinRouter,
    Router,
    TileAwareRouter,
)

__all__ = [
    "DEFAULT_PREFILL_ROUTER",
    "PAPER_RUN_MARGINS",
    "REGISTRY",
    "ControllerEntry",
    "EcoFreqController",
    "EcoFreqParams",
    "FrequencyController",
    "InstanceView",
    "LeastLoadedRouter",
    "Observation",
    "Policy",
    "PolicyContext",
    "PolicyRegistry",
    "Predictor",
    "RandomRouter",
    "RoundRobinRouter",
    "Router",
    "RouterEntry",
    "StaticController",
    "TileAwareRouter",
    "build_policy",
]
