"""Index calibration stays off SGLang's graph-capture batches (patches.capture_guard)."""
from __future__ import annotations

import importlib

import pytest

from asynctls_sglang.patches import capture_guard


@pytest.mark.parametrize("target", capture_guard._RUNNERS)
def test_hooked_capture_methods_exist_in_this_sglang(target):
    module, cls, method = target.rsplit(".", 2)
    assert callable(getattr(getattr(importlib.import_module(module), cls), method))


def test_flag_is_set_only_inside_capture_and_reset_on_error():
    seen = []

    def capture(runner, fail=False):
        seen.append(capture_guard.capturing_graphs())
        if fail:
            raise RuntimeError("capture failed")
        return "captured"

    assert not capture_guard.capturing_graphs()
    assert capture_guard._capture(capture, object()) == "captured"
    with pytest.raises(RuntimeError):
        capture_guard._capture(capture, object(), fail=True)
    assert seen == [True, True] and not capture_guard.capturing_graphs()


def test_backend_skips_calibration_while_capturing(monkeypatch):
    """forward_extend reads the flag before observe_prefill (the same module object)."""
    from asynctls_sglang.adapter import backend

    assert backend.capturing_graphs is capture_guard.capturing_graphs
    import inspect

    src = inspect.getsource(backend.AsyncTLSBackendMixin.forward_extend)
    assert src.index("capturing_graphs()") < src.index("observe_prefill")


def test_offload_prefill_work_is_skipped_on_capture_batches():
    """With offload, a prefill-graph capture's dummy batches get the host-state-only begin (as a
    decode capture does) and none of the offload prefill work (load-back, seeds, write-through,
    demotion); real prefills get all of it."""
    from types import SimpleNamespace

    from asynctls_sglang.adapter.backend import AsyncTLSBackendMixin

    calls = []

    class Dense:
        def init_forward_metadata(self, fb):
            calls.append("dense_metadata")

        def forward_extend(self, q, k, v, layer, fb, save_kv_cache=True, **kwargs):
            calls.append("dense_extend")
            return "out"

    class Backend(AsyncTLSBackendMixin, Dense):
        def __init__(self):
            self.asynctls_offload, self.token_to_kv_pool = object(), object()
            self._extend_table = None
            self.asynctls_mla = None

        def _begin_offload(self, fb, in_capture=False):
            calls.append(("begin", in_capture))

        def _offload_after_extend(self, q, layer, fb):
            calls.append("after_extend")

    backend = Backend()
    fb = SimpleNamespace(forward_mode=SimpleNamespace(is_decode=lambda: False))
    layer = SimpleNamespace(is_cross_attention=False)

    def prefill(runner=None):
        backend.init_forward_metadata(fb)
        return backend.forward_extend(None, None, None, layer, fb, save_kv_cache=False) and \
            backend.forward_extend(None, None, None, layer, fb, save_kv_cache=True)

    assert capture_guard._capture(prefill, object()) == "out"
    assert calls == [("begin", True), "dense_metadata", "dense_extend", "dense_extend"]
    calls.clear()
    assert prefill() == "out"
    assert calls == [("begin", False), "dense_metadata", "dense_extend", "dense_extend", "after_extend"]
