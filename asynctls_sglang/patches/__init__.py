"""Every change to SGLang's behaviour, applied through SGLang's plug-in hooks (no SGLang file
is edited). One module per hook; each function says why it exists; ``apply_all`` is run by
asynctls_sglang.plugin.register() in every SGLang process."""
from __future__ import annotations

from asynctls_sglang.patches import (
    backend_registry,
    capture_guard,
    cpu_engine,
    graph_variants,
    kv_pool,
    mla_dispatch,
    offload,
    page_size,
    server_info,
    validate_config,
)
from asynctls_sglang.patches.version import check_sglang_version


def apply_all() -> None:
    check_sglang_version()
    backend_registry.apply()
    capture_guard.apply()
    graph_variants.apply()
    mla_dispatch.apply()
    kv_pool.apply()
    offload.apply()
    page_size.apply()
    server_info.apply()
    cpu_engine.apply()
    validate_config.apply()
