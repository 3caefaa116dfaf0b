"""SGLang changes for the offloading engine (``offload`` on; nothing changes when it is off).

- Logical ids: the token allocator becomes adapter.allocator.OffloadPagedAllocator, whose ids
  range over the host pool (``host_pool_tokens``, default 4x the device pool) while SGLang's
  device pool keeps its usual size; the scheduler is told the logical capacity (configure), so
  it admits requests by host capacity and its pool-accounting checks stay exact.
- Rows: the resident cache rows are SGLang's request rows; when SGLang gives a row back
  (request finished, aborted or retracted: ReqToTokenPool.free) the engine clears it at the next
  forward (memory.offload_runtime).
"""
from __future__ import annotations

from sglang.srt.plugins.hook_registry import HookRegistry, HookType

from asynctls_sglang.patches.kv_pool import uses_asynctls

_CONF = "sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator"


def _offload_on(server_args) -> bool:
    if not uses_asynctls(server_args):
        return False
    from asynctls_sglang.config import AsyncTLSConfig

    return AsyncTLSConfig.from_env().offload


def _free(original, self, req, *args, **kwargs):
    row = getattr(req, "req_pool_idx", None)
    result = original(self, req, *args, **kwargs)
    runtime = getattr(self, "asynctls_offload", None)
    if runtime is not None and row is not None:
        runtime.release_later(int(row))
    return result


def _build_allocator(original, self, *args, **kwargs):
    if kwargs.get("token_to_kv_pool_allocator") is not None or not _offload_on(self.server_args):
        return original(self, *args, **kwargs)
    from asynctls_sglang.adapter.allocator import OffloadPagedAllocator, logical_tokens
    from asynctls_sglang.config import AsyncTLSConfig

    pool = kwargs["token_to_kv_pool"]
    device_tokens = kwargs["sizes"].max_total_num_tokens
    return OffloadPagedAllocator(logical_tokens(AsyncTLSConfig.from_env(), device_tokens), pool.page_size,
                                 self.kv_cache_dtype, self.device, pool, False, device_tokens=device_tokens)


def _configure(original, self, *args, **kwargs):
    result = original(self, *args, **kwargs)
    from asynctls_sglang.adapter.allocator import OffloadPagedAllocator

    allocator = result.token_to_kv_pool_allocator
    if isinstance(allocator, OffloadPagedAllocator):
        import msgspec

        result = msgspec.structs.replace(result, max_total_num_tokens=allocator.size)
    return result


def apply() -> None:
    HookRegistry.register("sglang.srt.mem_cache.memory_pool.ReqToTokenPool.free", _free, HookType.AROUND)
    HookRegistry.register(f"{_CONF}._build_token_to_kv_pool_allocator", _build_allocator, HookType.AROUND)
    HookRegistry.register(f"{_CONF}.configure", _configure, HookType.AROUND)
