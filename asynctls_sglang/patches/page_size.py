"""asynctls reads blocks as SGLang pages (summaries are per page), so the page size must be
the block size. When the user gives no --page-size and asynctls is selected, default it to
the configured block size instead of SGLang's 1."""
from __future__ import annotations

from sglang.srt.plugins.hook_registry import HookRegistry, HookType

from asynctls_sglang.patches.kv_pool import uses_asynctls


def _default(original, view):
    if view.page_size is None and uses_asynctls(view):
        from asynctls_sglang.config import AsyncTLSConfig

        return {"page_size": AsyncTLSConfig.from_env().block_size}
    return original(view)


def apply() -> None:
    HookRegistry.register("sglang.srt.arg_groups.overrides._page_size_default", _default, HookType.AROUND)
