"""The torch backend on CPU with a tiny Llama config (random weights, nothing downloaded)."""

from pathlib import Path

import numpy as np
import pytest

from tests.test_cli import invoke
from voltana_cli.core.profiling import load_profile

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = Path(__file__).parent / "data" / "tiny-llama-config.json"
# The decode step passes its KV cache under the name the installed transformers takes (``cache`` in 5.x):
# the deprecated name would warn here and stop working in a later release.
pytestmark = pytest.mark.filterwarnings("error:.*past_key_values.*:FutureWarning")


def test_cpu_tiny_profile_has_real_timings_and_no_energy(tmp_path):
    out = tmp_path / "p"
    r = invoke("profile", "--backend", "torch", "--device", "cpu", "--hf-config", str(TINY), "--batch-sizes", "1,4",
               "--kv-per-request", "8,32", "--prefill-tokens", "16,64", "--prefill-seqs", "1,2", "--repeats", "2",
               "--out", str(out))
    assert r.exit_code == 0, r.output
    prof = load_profile(out)
    m = prof.meta
    assert m.backend == "torch" and m.device == "cpu" and not m.clocks_locked and m.dtype == "float32"
    assert "transformers" in (m.engine_version or "") and m.gpu == "cpu"
    d = prof.data
    assert sorted(d[d.phase == "decode"].batch_size.unique()) == [1, 4]
    assert set(d[d.phase == "decode"].num_tokens) == {8, 32, 128}
    assert (d["latency_ms"] > 0).all()
    assert d["energy_j"].isna().all() and d["power_w"].isna().all()  # unavailable, never 0
    assert "unavailable" in r.output


def test_decode_keeps_a_fixed_context_and_prefill_keeps_one_logit_row():
    from voltana_cli.core.profiling.torch_backend import TorchRunner, hf_config_from_file

    runner = TorchRunner(hf_config_from_file(TINY, transformers), "cpu")
    step = runner.decode_fn(3, 3 * 20)
    for _ in range(3):
        logits = step()
    assert tuple(logits.shape) == (3, 1, 256)
    assert step.cache.get_seq_length() == 20
    logits = runner.prefill_fn(64, 2)()
    assert tuple(logits.shape) == (2, 1, 256)
    assert np.isfinite(logits.float().numpy()).all()


def test_lock_clocks_on_cpu_and_a_bad_config_are_one_line(tmp_path):
    r = invoke("profile", "--backend", "torch", "--device", "cpu", "--hf-config", str(TINY), "--lock-clocks",
               "--out", str(tmp_path / "x"))
    assert r.exit_code == 2 and "--lock-clocks: needs a GPU" in r.output
    bad = tmp_path / "config.json"
    bad.write_text('{"hidden_size": 8}')
    r = invoke("profile", "--backend", "torch", "--device", "cpu", "--hf-config", str(bad), "--out", str(tmp_path / "y"))
    assert r.exit_code == 2 and f"--hf-config: {bad}: no 'model_type' key" in r.output
    assert not (tmp_path / "y").exists()
