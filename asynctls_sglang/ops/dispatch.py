"""Which implementation of the batched ops runs: Triton kernels on a GPU, plain torch elsewhere."""
from __future__ import annotations

import torch

from asynctls_sglang import env
from asynctls_sglang.ops import torch_ops


def ops_for_device(device: torch.device | str):
    if env.ops_choice() == "triton":  # also off the GPU: the kernels under TRITON_INTERPRET=1
        from asynctls_sglang.kernels.interpret import interpreting, patch_interpreter

        if torch.device(device).type != "cuda" and not interpreting():
            raise RuntimeError(f"{env.ASYNCTLS_OPS}=triton on {device} needs TRITON_INTERPRET=1 in the "
                               "environment of every process (set before Triton is imported)")
        patch_interpreter()
        from asynctls_sglang.kernels import triton_ops

        return triton_ops
    if torch.device(device).type != "cuda" or env.force_torch_ops():
        return torch_ops
    try:
        from asynctls_sglang.kernels import triton_ops
    except ImportError:  # kernels not available in this build: the torch path is exact, slower
        return torch_ops
    return triton_ops


def uses_kernels(ops) -> bool:
    """Whether an ops module from ops_for_device is the Triton kernels (a GPU, or ASYNCTLS_OPS=triton
    under the interpreter): the places with a one-launch form of their own torch code take it then."""
    return ops is not torch_ops
