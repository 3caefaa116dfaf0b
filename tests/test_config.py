from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from asynctls_sglang.cli_config import config_from_argv, split_asynctls_flags
from asynctls_sglang.config import AsyncTLSConfig, ConfigError


def test_defaults_are_the_papers():
    cfg = AsyncTLSConfig()
    assert (cfg.block_size, cfg.block_budget, cfg.token_budget, cfg.index_bits) == (64, 128, 2048, 4)
    assert cfg.channels_for(128, is_mla=False) == 32  # r = 32 for 128-dim GQA heads
    assert cfg.channels_for(576, is_mla=True) == 128  # r = 128 for MLA


@pytest.mark.parametrize("head_dim, r", [(64, 32), (96, 32), (128, 32), (256, 64), (16, 16)])
def test_default_channels_keep_at_least_32_for_small_heads(head_dim, r):
    # 16 channels of SmolLM2's 64-dim heads lost RULER needles that 32 keep (docs/results.md)
    assert AsyncTLSConfig().channels_for(head_dim, is_mla=False) == r


@pytest.mark.parametrize("changes, words", [
    ({"token_budget": 9000}, ["--asynctls-token-budget", "8192"]),
    ({"block_size": 48}, ["--asynctls-block-size", "power of two"]),
    ({"block_size": 0}, ["block_size", "positive"]),
    ({"index_bits": 8}, ["--asynctls-index-bits", "only 4"]),
    ({"index_channels": 7}, ["--asynctls-index-channels", "even"]),
    ({"sink_tokens": 1000, "local_window": 1048}, ["sink_tokens + local_window"]),
    ({"selection": "topk"}, ["--asynctls-selection", "tls"]),
    ({"dense_threshold": -1}, ["--asynctls-dense-threshold", "non-negative"]),
    ({"selection": "quest", "token_budget": 1000}, ["multiple of block_size"]),
    ({"mla_prefill": "latent"}, ["--asynctls-mla-prefill", "absorbed"]),
], ids=["budget-too-big", "block-not-pow2", "block-zero", "bits", "odd-r", "forced-exceeds", "bad-selection",
        "neg-threshold", "quest-budget", "mla-prefill"])
def test_impossible_values_name_the_flag(changes, words):
    with pytest.raises(ConfigError) as err:
        AsyncTLSConfig(**changes)
    for w in words:
        assert w in str(err.value)


def test_r_larger_than_head_dim_is_refused():
    with pytest.raises(ConfigError, match="larger than the key head dim"):
        AsyncTLSConfig(index_channels=96).channels_for(64, is_mla=False)


def test_unknown_field_and_bad_json(monkeypatch):
    with pytest.raises(ConfigError, match="unknown AsyncTLS setting"):
        AsyncTLSConfig.from_dict({"token_budget": 512, "tokenbudget": 1})
    monkeypatch.setenv("ASYNCTLS_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        AsyncTLSConfig.from_env()
    monkeypatch.setenv("ASYNCTLS_CONFIG", json.dumps({"token_budget": 512}))
    assert AsyncTLSConfig.from_env().token_budget == 512


def test_flags_override_env_and_stay_out_of_sglang_argv(monkeypatch):
    monkeypatch.setenv("ASYNCTLS_CONFIG", json.dumps({"token_budget": 512, "sink_tokens": 8}))
    cfg, rest = config_from_argv(["--port", "30000", "--asynctls-token-budget=1024",
                                  "--asynctls-index-channels", "none", "--model-path", "m"])
    assert (cfg.token_budget, cfg.sink_tokens, cfg.index_channels) == (1024, 8, None)
    assert rest == ["--port", "30000", "--model-path", "m"]


@pytest.mark.parametrize("argv, message", [
    (["--asynctls-token-budget", "lots"], "expected an integer"),
    (["--asynctls-tokens", "5"], "unknown flag --asynctls-tokens"),
    (["--asynctls-block-size"], "needs a value"),
])
def test_bad_flags(argv, message):
    with pytest.raises(ConfigError, match=message):
        split_asynctls_flags(argv)


@pytest.mark.parametrize("argv, message", [
    (["--asynctls-token-budget", "99999"], "--asynctls-token-budget"),
    (["--asynctls-selection", "magic"], "--asynctls-selection"),
    (["--model-path", "x", "--page-size", "16"], "--page-size 16 must equal --asynctls-block-size"),
    (["--model-path", "x", "--kv-cache-dtype", "fp8_e4m3"], "not supported"),
], ids=["budget", "selection", "page-size", "fp8"])
def test_launch_server_refuses_bad_configuration_before_starting(argv, message):
    proc = subprocess.run([sys.executable, "-m", "asynctls_sglang.launch_server", *argv],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_another_sglang_release_is_refused_with_a_clear_message(monkeypatch):
    import sglang

    from asynctls_sglang.patches.version import SGLangVersionError, check_sglang_version

    check_sglang_version()  # the pinned release passes
    monkeypatch.setattr(sglang, "__version__", "0.5.23")
    with pytest.raises(SGLangVersionError, match=r"sglang==0\.5\.17 only; sglang 0\.5\.23 is installed"):
        check_sglang_version()


def test_cpu_server_defaults_sleep_when_idle():
    """Without a GPU the server's scheduler sleeps on its sockets when idle: SGLang's default polls
    them at 100% of a core, taken from the client on a small CPU box. A GPU server keeps SGLang's
    default; a flag given is not repeated."""
    from asynctls_sglang.eval.methods import device_args
    from asynctls_sglang.launch_server import build_argv
    from asynctls_sglang.plugin import register

    register()
    from sglang.srt.server_args import prepare_server_args

    cfg = AsyncTLSConfig()
    model = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "models", "qwen3_8b")  # parsing reads no weights
    cpu = build_argv(["--model-path", model], cfg, gpu=False)
    assert prepare_server_args(cpu).sleep_on_idle
    assert "--sleep-on-idle" not in build_argv(["--model-path", "x"], cfg, gpu=True)
    assert build_argv(["--model-path", "x", "--sleep-on-idle"], cfg, gpu=False).count("--sleep-on-idle") == 1
    assert "--sleep-on-idle" in device_args("cpu", 8192, None)  # the RULER harness's CPU server
    assert "--sleep-on-idle" not in device_args("cuda", 8192, None)
