"""Keep online index calibration off SGLang's CUDA-graph capture batches.

SGLang captures its graphs at start-up on dummy batches; with the default breakable prefill graph
the attention backend's forward_extend runs eagerly inside that capture, so the index would be
calibrated (and frozen, once calibration_tokens are seen) on dummy activations instead of the
first real prompts. The capture methods of both graph runners (kernel warm-up included) run with
a process-wide flag set; the backend skips calibration while it is set.
"""
from __future__ import annotations

from sglang.srt.plugins.hook_registry import HookRegistry, HookType

_RUNNERS = (
    "sglang.srt.model_executor.runner.prefill_cuda_graph_runner.PrefillCudaGraphRunner.capture",
    "sglang.srt.model_executor.runner.decode_cuda_graph_runner.DecodeCudaGraphRunner.capture",
)
_depth = 0


def capturing_graphs() -> bool:
    """True inside a graph runner's capture (and its warm-up), in this process."""
    return _depth > 0


def _capture(original, self, *args, **kwargs):
    global _depth
    _depth += 1
    try:
        return original(self, *args, **kwargs)
    finally:
        _depth -= 1


def apply() -> None:
    for target in _RUNNERS:
        HookRegistry.register(target, _capture, HookType.AROUND)
