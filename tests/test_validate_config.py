"""Start-up refusals of patches.validate_config (run where SGLang validates its own arguments)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from asynctls_sglang.config import ConfigError
from asynctls_sglang.patches import validate_config


def _args(**changes):
    base = dict(attention_backend="asynctls", decode_attention_backend=None, page_size=64,
                speculative_algorithm=None, enable_mixed_chunk=False)
    return SimpleNamespace(**{**base, **changes})


def _post_init(args):
    return validate_config._post_init(lambda self: "checked", args)


def test_speculative_decoding_is_refused_at_start_up(monkeypatch):
    """The pool's move_kv_cache raises by design: its only caller never starts."""
    monkeypatch.delenv("ASYNCTLS_CONFIG", raising=False)
    assert _post_init(_args()) == "checked"
    with pytest.raises(ConfigError, match="speculative decoding"):
        _post_init(_args(speculative_algorithm="EAGLE"))
    with pytest.raises(ConfigError, match="page-size"):
        _post_init(_args(page_size=16))
    assert _post_init(_args(attention_backend="flashinfer", speculative_algorithm="EAGLE")) == "checked"


def test_a_gpu_dense_backend_on_the_cpu_is_refused_at_start_up(monkeypatch):
    monkeypatch.setenv("ASYNCTLS_CONFIG", '{"dense_backend": "triton"}')
    with pytest.raises(ConfigError, match="dense-backend triton needs a CUDA GPU"):
        _post_init(_args(device="cpu"))
    monkeypatch.setenv("ASYNCTLS_CONFIG", '{"dense_backend": "torch_native"}')
    assert _post_init(_args(device="cpu")) == "checked"
    monkeypatch.setenv("ASYNCTLS_CONFIG", '{"dense_backend": "auto"}')
    assert _post_init(_args(device="cpu")) == "checked"


def test_offload_settings_without_offload_are_named_in_a_warning(monkeypatch, caplog):
    """--asynctls-resident-blocks and the other offload-only flags do nothing with offload off: the
    launcher says so instead of starting as if they took effect."""
    import logging

    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("ASYNCTLS_CONFIG", '{"resident_blocks": 160, "max_miss_blocks_per_step": 4}')
    assert _post_init(_args()) == "checked"
    warned = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(warned) == 1
    assert "--asynctls-resident-blocks, --asynctls-max-miss-blocks-per-step" in warned[0]
    assert "--asynctls-offload" in warned[0]
    caplog.clear()
    # with offload on they act; defaults given explicitly are not "set"
    monkeypatch.setenv("ASYNCTLS_CONFIG", '{"offload": true, "resident_blocks": 160}')
    assert _post_init(_args()) == "checked"
    monkeypatch.setenv("ASYNCTLS_CONFIG", '{"copy_programs": 16, "prefetch_depth": 1}')
    assert _post_init(_args()) == "checked"
    assert not [r for r in caplog.records if "ignored" in r.getMessage()]
