"""DeepSeek-family MLA models choose their attention method by backend name; an unknown name
falls back to the "triton" handler, which runs prefill in MHA form (not the latent form the
asynctls index and the torch_native kernels work on). Always use the absorbed (MQA over the
latent) form for asynctls: prefill and decode then both reach the backend with the 576-dim
latent keys.

On a CPU, SGLang 0.5.17's own torch_native backend hits the same fallback and cannot run MLA
models at all (a shape error in the MHA prefill path); the same registration fixes it, so the
stock dense baseline exists on the CPU too (the tests compare against it).
"""
from __future__ import annotations

from asynctls_sglang import BACKEND_NAME


def apply() -> None:
    import torch
    from sglang.srt.models.deepseek_common.attention_backend_handler import (
        AttentionBackendRegistry,
        _dispatch_mla_subtype,
    )

    AttentionBackendRegistry.register(BACKEND_NAME, _dispatch_mla_subtype)
    if not torch.cuda.is_available():
        AttentionBackendRegistry.register("torch_native", _dispatch_mla_subtype)
