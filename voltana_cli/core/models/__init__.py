"""Models of the hardware and the model being served: specs (data), ground truth, predictors.

- ``specs``: GPU, model and engine specs and the defaults, loaded from ``voltana_cli/data``.
- ``profile``: the profile format (a table of measured or modelled iterations plus metadata), which the
  profile interpolant and EcoPred are built from; ``profiling`` produces profiles.
- Ground truth (``InstanceModel``): the analytical ``PerfModel`` and the profile interpolant ``ProfileModel``.
- Predictors, what policies see: ``EcoPred`` fitted from a profile, or ``ModelPredictor`` (the analytical
  model with a fixed prediction error).
Nothing here knows the simulator or the live world.
"""

from voltana_cli.core.models.analytical import DecodeTable, PerfModel, PrefillTable, prefill_pairs
from voltana_cli.core.models.ecopred import EcoPred
from voltana_cli.core.models.instance_model import InstanceModel
from voltana_cli.core.models.predictors import ModelPredictor
from voltana_cli.core.models.profile import Profile, ProfileMeta, available_profiles, load_profile
from voltana_cli.core.models.profiled import ProfileModel
from voltana_cli.core.models.specs import (
    Defaults,
    EngineSpec,
    GpuSpec,
    ModelSpec,
    available_gpus,
    available_models,
    defaults,
    engine_spec,
    gpu_spec,
    model_spec,
)

__all__ = [
    "DecodeTable",
    "Defaults",
    "EcoPred",
    "EngineSpec",
    "GpuSpec",
    "InstanceModel",
    "ModelPredictor",
    "ModelSpec",
    "Profile",
    "ProfileMeta",
    "PerfModel",
    "PrefillTable",
    "ProfileModel",
    "available_gpus",
    "available_models",
    "available_profiles",
    "defaults",
    "engine_spec",
    "gpu_spec",
    "load_profile",
    "model_spec",
    "prefill_pairs",
]
