"""The sglang profile backend against an emulated SGLang server on the loopback interface."""

import pytest

from tests.fake_sglang import FakeSglang
from tests.test_cli import invoke
from voltana_cli.core.profiling import load_profile


def decode_ms(batch: int, kv: int) -> float:
    return 6.0 + 1.5 * batch


@pytest.fixture()
def server():
    s = FakeSglang(decode_ms, lambda tokens: 3.0 + 0.02 * tokens)
    yield s
    s.close()


def test_profile_against_a_server(server, tmp_path):
    out = tmp_path / "p"
    r = invoke("profile", "--backend", "sglang", "--sglang-url", server.url, "--clocks", "1410",
               "--batch-sizes", "1,4,8", "--kv-per-request", "16", "--prefill-tokens", "64,512",
               "--prefill-seqs", "1,2", "--repeats", "1", "--window-tokens", "32", "--out", str(out))
    assert r.exit_code == 0, r.output
    prof = load_profile(out)
    m = prof.meta
    assert m.backend == "sglang" and m.engine_version == "0.5.23-fake" and m.model == "fake/llama"
    assert m.device == server.url and not m.clocks_locked and "as given by clocks_mhz" in m.clock_note
    dec = prof.phase("decode").set_index("batch_size")
    assert list(dec.index) == [1, 4, 8]
    lat, kv = dec["latency_ms"].to_dict(), dec["num_tokens"].to_dict()
    for b in (1, 4, 8):
        want = decode_ms(b, 0)
        assert 0.8 * want <= lat[b] <= 2.0 * want, (b, lat[b])
        assert kv[b] == b * (16 + 2 + 16)  # prompt + steady-window start + half the window
    # (32 tokens: streams that start apart on a busy machine still overlap in a window this long)
    assert lat[8] > lat[1]
    assert 8 in server.batches  # the decode requests really ran as one batch
    pre = prof.phase("prefill")
    assert len(pre) == 4 and (pre["latency_ms"] >= 3.0).all()
    assert prof.data["energy_j"].isna().all()  # no --gpu-index: unavailable


def test_unreachable_server_and_missing_clock_are_one_line(server, tmp_path):
    r = invoke("profile", "--backend", "sglang", "--sglang-url", "http://127.0.0.1:9", "--clocks", "1410",
               "--out", str(tmp_path / "a"))
    assert r.exit_code == 2 and "--sglang-url: cannot reach SGLang at http://127.0.0.1:9" in r.output
    r = invoke("profile", "--backend", "sglang", "--sglang-url", server.url, "--out", str(tmp_path / "b"))
    assert r.exit_code == 2 and "--clocks: without gpu_indices voltana cannot read the server's clock" in r.output
    r = invoke("profile", "--backend", "sglang", "--sglang-url", server.url, "--clocks", "1410", "--lock-clocks",
               "--out", str(tmp_path / "c"))
    assert r.exit_code == 2 and "--lock-clocks: needs gpu_indices" in r.output
