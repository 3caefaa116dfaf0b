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
