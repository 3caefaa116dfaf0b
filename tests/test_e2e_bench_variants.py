"""benchmarks/e2e_bench.py --variant: named asynctls engines with extra fields, run where their
name stands in --backends (e.g. the batch rule on and off in one device call)."""
from __future__ import annotations

import pytest

from asynctls_sglang.config import ConfigError


def test_variants_parse_and_bad_ones_stop_before_any_engine(e2e_bench):
    assert e2e_bench.parse_variants(['norule={"dense_batch_tokens":0}', "k512={\"token_budget\":512}"]) == {
        "norule": {"dense_batch_tokens": 0}, "k512": {"token_budget": 512}}
    for spec in ("norule", "a,b={}"):
        with pytest.raises(SystemExit, match="NAME=JSON"):
            e2e_bench.parse_variants([spec])
    for spec, message in [("x={nope", "--variant x is not valid JSON"), ("x=[1]", "--variant x must hold a JSON object")]:
        with pytest.raises(ConfigError, match=message):
            e2e_bench.parse_variants([spec])
    with pytest.raises(ConfigError, match="unknown AsyncTLS setting"):
        e2e_bench.parse_variants(['x={"dense_batch":0}'])
    with pytest.raises(ConfigError, match="dense_batch_tokens"):
        e2e_bench.parse_variants(['x={"dense_batch_tokens":-1}'])


def test_a_variant_runs_the_asynctls_backend_with_its_fields_under_its_name(e2e_bench, monkeypatch, tmp_path):
    calls, profiled = [], []

    def fake_run_backend(args, backend, cfg, eager=False, label=None, profile_steps=0):
        calls.append((backend, cfg, label))
        profiled.append(profile_steps)
        return [{"backend": (label or backend), "bs": 1, "ctx": 4096, "ttft_s": 0.1, "decode_tok_s": 100.0,
                 "itl_ms_median": 10.0, "itl_ms_p99": 11.0}]

    monkeypatch.setattr(e2e_bench, "run_backend", fake_run_backend)
    monkeypatch.setattr(e2e_bench, "plot", lambda rows, path: None)
    e2e_bench.main(["--backends", "flashinfer,asynctls,norule", "--points", "1x4096", "--asynctls", '{"block_budget":64}',
                    "--variant", 'norule={"dense_batch_tokens":0}', "--out", str(tmp_path / "e2e.json"),
                    "--profile-steps", "3", "--profile-only", "flashinfer,norule"])
    assert profiled == [3, 0, 3]  # --profile-only: by the --backends name
    assert calls == [("flashinfer", {"block_budget": 64}, None),
                     ("asynctls", {"block_budget": 64, "token_budget": 2048}, None),
                     ("asynctls", {"block_budget": 64, "dense_batch_tokens": 0, "token_budget": 2048}, "norule")]


@pytest.mark.parametrize("extra,message", [(["--profile-steps", "2", "--profile-only", "sparse"], "not in --backends"),
                                           (["--profile-only", "asynctls"], "needs --profile-steps")])
def test_profile_only_names_a_profiled_backend(e2e_bench, tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        e2e_bench.main(["--backends", "flashinfer,asynctls", "--points", "1x4096", "--out", str(tmp_path / "e.json"),
                        *extra])
