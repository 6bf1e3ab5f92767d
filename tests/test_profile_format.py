import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from voltana_cli.core.errors import UserError
from voltana_cli.core.models.profile import (
    COLUMNS,
    Profile,
    ProfileMeta,
    Protocol,
    available_profiles,
    load_profile,
    make_frame,
    now_iso,
    write_profile,
)


def meta(**kw: Any) -> ProfileMeta:
    base: dict[str, Any] = dict(gpu="a100-80g-sxm4", gpu_name="NVIDIA A100-SXM4-80GB", engine="sglang", model="llama-3.1-8b",
                backend="sim", device="emulated", protocol=Protocol(warmup=0, repeats=2, cooldown_s=0, min_window_s=0),
                clocks_locked=True, voltana_version="test", created=now_iso())
    base.update(kw)
    return ProfileMeta(**base)


ROWS = [
    {"phase": "prefill", "clock_mhz": 1410, "batch_size": 2, "num_tokens": 512, "latency_ms": 40.0, "energy_j": 12.0,
     "power_w": 300.0, "repeat": 0},
    {"phase": "decode", "clock_mhz": 1410, "batch_size": 8, "num_tokens": 4096, "latency_ms": 12.5,
     "energy_j": math.nan, "power_w": math.nan, "repeat": 0},
]


def test_round_trip_keeps_values_and_unavailable_energy(tmp_path):
    d = write_profile(Profile(make_frame(ROWS), meta()), tmp_path / "p")
    prof = load_profile(d)
    assert list(prof.data.columns) == list(COLUMNS)
    assert prof.data["latency_ms"].tolist() == [40.0, 12.5]
    assert np.isnan(prof.data["energy_j"].iloc[1]) and prof.data["energy_j"].iloc[0] == 12.0
    assert prof.meta.model_dump() == meta(created=prof.meta.created).model_dump()
    # Unavailable energy is written as an empty cell, never as 0.
    line = (d / "profile.csv").read_text().splitlines()[2]
    assert line == "decode,1410,8,4096,12.5,,,0"


def write_csv(tmp_path, text, meta_obj=None):
    d = tmp_path / "bad"
    d.mkdir(exist_ok=True)
    (d / "profile.csv").write_text(text)
    (d / "metadata.yaml").write_text(yaml.safe_dump((meta_obj or meta()).model_dump(mode="json")))
    return d


HEADER = ",".join(COLUMNS) + "\n"


@pytest.mark.parametrize("body, needle", [
    ("prefill,1410,1,64,5.0,1.0,200,0\ndecode,1410,4,100,-3,,,0\n", "line 3: column 'latency_ms' is '-3'"),
    ("prefill,1410,1,64,5.0,0,200,0\n", "line 2: column 'energy_j' is '0'; it must be > 0 (leave it empty"),
    ("prefil,1410,1,64,5.0,1.0,200,0\n", "line 2: column 'phase' is 'prefil'; use prefill or decode"),
    ("prefill,fast,1,64,5.0,1.0,200,0\n", "line 2: column 'clock_mhz' is 'fast', not a number"),
    ("prefill,1410,1.5,64,5.0,1.0,200,0\n", "line 2: column 'batch_size' is '1.5'; it must be a whole number"),
    ("prefill,1410,4,2,5.0,1.0,200,0\n", "a prefill of 4 sequences needs at least as many tokens"),
    ("prefill,1410,1,64,,1.0,200,0\n", "line 2: column 'latency_ms' is empty"),
    ("decode,1410,1,64,inf,1.0,200,0\n", "column 'latency_ms' is 'inf'; it must be finite"),
])
def test_validation_names_the_line_and_column(tmp_path, body, needle):
    d = write_csv(tmp_path, HEADER + body)
    with pytest.raises(UserError) as e:
        load_profile(d)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_and_unknown_columns(tmp_path):
    d = write_csv(tmp_path, "phase,clock_mhz,batch_size,num_tokens,latency_ms,energy_j,power_w\nprefill,1,1,1,1,,\n")
    with pytest.raises(UserError, match="missing column 'repeat'"):
        load_profile(d)
    d = write_csv(tmp_path, HEADER.strip() + ",host\nprefill,1,1,1,1,,,0,x\n")
    with pytest.raises(UserError, match="unknown column 'host'"):
        load_profile(d)
    d = write_csv(tmp_path, HEADER)
    with pytest.raises(UserError, match="no rows"):
        load_profile(d)


def test_metadata_errors(tmp_path):
    d = write_csv(tmp_path, HEADER + "prefill,1410,1,64,5.0,1.0,200,0\n")
    raw = yaml.safe_load((d / "metadata.yaml").read_text())
    raw["backend"] = "magic"
    (d / "metadata.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="field 'backend'"):
        load_profile(d)
    raw["backend"], raw["schema_version"] = "sim", 99
    (d / "metadata.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="schema_version 99 is not supported"):
        load_profile(d)
    (d / "metadata.yaml").unlink()
    with pytest.raises(UserError, match="no metadata.yaml"):
        load_profile(d)
    with pytest.raises(UserError, match="not found"):
        load_profile(tmp_path / "nowhere")


def test_shipped_profiles_say_how_they_were_made():
    names = available_profiles()
    assert {"a100-80g-sxm4/llama-3.1-8b", "h100-80g-sxm/llama-3.1-8b", "h200-141g-sxm/llama-3.1-8b"} <= set(names)
    for name in names:
        prof = load_profile(name)
        assert set(prof.data["phase"]) == {"prefill", "decode"}
        assert prof.has_energy
        if prof.meta.backend == "sim":  # modelled: a dense plan with the stated noise, clocks exact
            assert prof.meta.protocol.noise == pytest.approx(0.03) and prof.meta.clocks_locked
            assert isinstance(prof.data, pd.DataFrame) and len(prof.data) > 5000
        else:  # measured at the card's own clock: the metadata must say the clocks were not locked
            assert prof.meta.backend == "torch" and not prof.meta.clocks_locked
            assert "not locked" in prof.meta.clock_note and prof.meta.driver
