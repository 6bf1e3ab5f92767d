"""Profiles: measured (torch, sglang) or modelled (sim) prefill and decode iterations across GPU clocks.

``run_profile(ProfileRequest(...))`` takes a profile, ``write_profile`` / ``load_profile`` store and read
it (``profile.csv`` + ``metadata.yaml``, see ``format``).
"""

from voltana_cli.core.models.profile import (
    COLUMNS,
    PROFILES_ROOT,
    Profile,
    ProfileMeta,
    Protocol,
    available_profiles,
    check_profile_out,
    default_profile_dir,
    load_profile,
    make_frame,
    summary_frame,
    write_profile,
)
from voltana_cli.core.profiling.plan import ProfilePlan, default_batch_sizes, default_clocks
from voltana_cli.core.profiling.request import BACKENDS, ProfileRequest
from voltana_cli.core.profiling.run import run_profile
from voltana_cli.core.profiling.sim_backend import run_sim

__all__ = [
    "BACKENDS",
    "COLUMNS",
    "PROFILES_ROOT",
    "Profile",
    "ProfileMeta",
    "ProfilePlan",
    "ProfileRequest",
    "Protocol",
    "available_profiles",
    "check_profile_out",
    "default_batch_sizes",
    "default_clocks",
    "default_profile_dir",
    "load_profile",
    "make_frame",
    "run_profile",
    "run_sim",
    "summary_frame",
    "write_profile",
]
