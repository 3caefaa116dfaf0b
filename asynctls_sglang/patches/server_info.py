"""Expose the backend's decode statistics through SGLang's own introspection path:
GET /get_server_info -> internal_states[i]["asynctls"] (Engine.get_server_info() alike).
The snapshot reads device counters, which syncs, but only on request, never per step."""
from __future__ import annotations

from sglang.srt.plugins.hook_registry import HookRegistry, HookType


def _internal_state(original, self, *args, **kwargs):
    ret = original(self, *args, **kwargs)
    try:
        runner = self.tp_worker.model_runner
        backends = [runner.attn_backend, getattr(runner.attn_backend, "decode_backend", None)]
        for backend in backends:
            if backend is not None and hasattr(backend, "asynctls_snapshot"):
                state = ret.internal_state if hasattr(ret, "internal_state") else ret
                state["asynctls"] = backend.asynctls_snapshot()
                break
    except AttributeError:
        pass
    return ret


def apply() -> None:
    HookRegistry.register("sglang.srt.managers.scheduler.Scheduler.get_internal_state", _internal_state,
                          HookType.AROUND)
