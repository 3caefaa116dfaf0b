"""Kernel tests run on the GPU when there is one, else under the Triton interpreter on the CPU.

TRITON_INTERPRET must be in the environment before any @triton.jit function is defined, i.e.
before the kernel modules are imported: pytest imports this file before the test modules.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from asynctls_sglang.kernels.interpret import patch_interpreter  # noqa: E402

patch_interpreter()
