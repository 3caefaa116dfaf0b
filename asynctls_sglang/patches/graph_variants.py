"""Two decode CUDA graphs per batch size: one for batches of short requests only, one for the rest.

A captured graph has one code path, and the sparse path costs the same fixed selection work at
every length, so a batch whose requests are all at or under the dense threshold would pay it for
nothing (a 4k batch ran at half the full-attention speed). The decode graph runner keys its graphs
by ShapeKey(size, stream, variant_label), the label it already uses for LoRA/no-LoRA pairs; this
patch captures each batch size once per mode the backend asks for ("dense": the stock kernel of the
dense base backend, "sparse": the two-level selection) and picks the mode at replay from the host
copy of the lengths. Backends without ``asynctls_graph_modes`` (any other) are left untouched, and
so is the offload engine, whose rows always read the resident cache (one mode).
"""
from __future__ import annotations

from sglang.srt.plugins.hook_registry import HookRegistry, HookType

_RUNNER = "sglang.srt.model_executor.runner.decode_cuda_graph_runner.DecodeCudaGraphRunner"
_SEP = "+asynctls-"


def _backend(runner):
    backend = getattr(runner, "attn_backend", None)
    return backend if hasattr(backend, "asynctls_graph_modes") else None


def variant(label: str | None, mode: str | None) -> str | None:
    """The runner's own label (LoRA variant or None) with the asynctls mode appended."""
    if mode is None:
        return label
    return f"{label or ''}{_SEP}{mode}"


def _capture_one_shape(original, self, size, forward, stream_idx=None, variant_label=None):
    backend = _backend(self)
    modes = backend.asynctls_graph_modes() if backend is not None else None
    if not modes:
        return original(self, size, forward, stream_idx, variant_label)
    try:
        for mode in modes:
            backend.asynctls_capture_mode = mode
            original(self, size, forward, stream_idx, variant(variant_label, mode))
    finally:
        backend.asynctls_capture_mode = None


def _resolve_variant(original, self, forward_batch):
    label = original(self, forward_batch)
    backend = _backend(self)
    if backend is None or not backend.asynctls_graph_modes():
        return label
    return variant(label, backend.asynctls_graph_mode_for(forward_batch.seq_lens_cpu))


def apply() -> None:
    HookRegistry.register(f"{_RUNNER}.capture_one_shape", _capture_one_shape, HookType.AROUND)
    HookRegistry.register(f"{_RUNNER}._resolve_lora_variant", _resolve_variant, HookType.AROUND)
