"""The offloading engine's resident cache rows are SGLang's request rows (req_pool_indices). When
SGLang gives a row back (request finished, aborted or retracted: ReqToTokenPool.free), tell the
engine, which clears the row's resident blocks at the next forward (memory.offload_runtime)."""
from __future__ import annotations

from sglang.srt.plugins.hook_registry import HookRegistry, HookType


def _free(original, self, req, *args, **kwargs):
    row = getattr(req, "req_pool_idx", None)
    result = original(self, req, *args, **kwargs)
    runtime = getattr(self, "asynctls_offload", None)
    if runtime is not None and row is not None:
        runtime.release_later(int(row))
    return result


def apply() -> None:
    HookRegistry.register("sglang.srt.mem_cache.memory_pool.ReqToTokenPool.free", _free, HookType.AROUND)
