"""Which implementation of the batched ops runs: Triton kernels on a GPU, plain torch elsewhere."""
from __future__ import annotations

import torch

from asynctls_sglang import env
from asynctls_sglang.ops import torch_ops


def ops_for_device(device: torch.device | str):
    if torch.device(device).type != "cuda" or env.force_torch_ops():
        return torch_ops
    try:
        from asynctls_sglang.kernels import triton_ops
    except ImportError:  # kernels not available in this build: the torch path is exact, slower
        return torch_ops
    return triton_ops
