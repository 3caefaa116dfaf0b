"""Kernel tests run on the GPU when there is one, else under the Triton interpreter on the CPU.

TRITON_INTERPRET must be in the environment before any @triton.jit function is defined, i.e.
before the kernel modules are imported: pytest imports this file before the test modules.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("TRITON_INTERPRET") == "1":
    # Triton 3.6's interpreter holds every scalar as a 1-element array and converts it with
    # int(array), which NumPy >= 2.3 refuses for arrays of ndim 1: loops with run-time bounds
    # (`for i in range(0, N, BLOCK)`) then fail. Convert through .item() instead. This touches
    # only the interpreter's host-side scalar conversion, not what any kernel computes.
    from triton.runtime import interpreter as _interpreter

    _patch_lang_tensor = _interpreter._patch_lang_tensor

    def _patch_with_item(tensor, scope):
        _patch_lang_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0].item()))

    _interpreter._patch_lang_tensor = _patch_with_item

    # The interpreter keeps bf16 tensors as raw uint16 bits and its tl.dot multiplies those bits
    # (it converts only fp8 operands). Widen bf16 operands to fp32 first, as the GPU's bf16 MMA
    # (exact products, fp32 accumulation) does.
    import numpy as _np
    import triton.language as _tl

    _create_dot = _interpreter.InterpreterBuilder.create_dot

    def _create_dot_bf16(self, a, b, d, input_precision, max_num_imprecise_acc):
        def widen(x):
            if x.dtype.scalar == _tl.bfloat16:
                data = _interpreter._convert_float(x.data, _tl.bfloat16, _tl.float32, None).view(_np.float32)
                return _interpreter.TensorHandle(data, _tl.float32)
            return x
        return _create_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    _interpreter.InterpreterBuilder.create_dot = _create_dot_bf16
