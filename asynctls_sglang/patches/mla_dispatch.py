"""DeepSeek-family MLA models choose their attention method (absorbed MQA over the latent rows,
or MHA over per-head expansions) through a handler registered per backend name; an unknown name
falls back to the "triton" handler.

For asynctls the backend decides (adapter.mla_prefill, setting ``mla_prefill``): decode always
takes the absorbed form (the index and the sparse kernels work on the 576-dim latent keys), and
prefill the MHA form (on a GPU by default) or the absorbed one. Either way the pool receives the
latent rows, so the index and summaries are built from them.

On a CPU, SGLang 0.5.17's own torch_native backend hits the same fallback and cannot run MLA
models at all (a shape error in the MHA prefill path: it reads K/V from the latent pool); the
absorbed form is registered for it, so the stock dense baseline exists on the CPU too (the tests
compare against it).
"""
from __future__ import annotations

from asynctls_sglang import BACKEND_NAME


def asynctls_handler(attn, forward_batch):
    from sglang.srt.model_executor.forward_context import get_attn_backend
    from sglang.srt.models.deepseek_common.attention_backend_handler import _dispatch_mla_subtype

    mla = getattr(get_attn_backend(), "asynctls_mla", None)
    if mla is None:
        return _dispatch_mla_subtype(attn, forward_batch)
    return mla.method(attn, forward_batch)


def apply() -> None:
    import torch
    from sglang.srt.models.deepseek_common.attention_backend_handler import (
        AttentionBackendRegistry,
        _dispatch_mla_subtype,
    )

    AttentionBackendRegistry.register(BACKEND_NAME, asynctls_handler)
    if not torch.cuda.is_available():
        AttentionBackendRegistry.register("torch_native", _dispatch_mla_subtype)
