"""Running the Triton kernels on the CPU under TRITON_INTERPRET=1 (tests, and the backend's
kernel path on machines without a GPU: ASYNCTLS_OPS=triton).

TRITON_INTERPRET must be in the environment before any @triton.jit function is defined, i.e.
before the kernel modules are imported. ``patch_interpreter()`` then fixes things in Triton
3.6's interpreter (not in any kernel): its host-side scalar conversion, which NumPy >= 2.3
refuses, its bf16 dot, which multiplies raw bits, and its fp32 -> bf16 conversion, which
truncates where a GPU rounds to nearest even; and it runs the xor reductions of tl.sort in NumPy
instead of element by element in Python. Idempotent.
"""
from __future__ import annotations

import os

_PATCHED = False


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def lang_interpreted() -> bool:
    """Whether triton.language's own jit helpers (tl.zeros, tl.cumsum, ...) run under the
    interpreter: only if TRITON_INTERPRET=1 was set before triton.language was first imported
    (a test module that sets it after another module imported SGLang or Triton gets kernels that
    fail inside the interpreter with "Cannot call @triton.jit'd outside of the scope of a kernel")."""
    import triton.language as tl

    return type(tl.zeros).__name__ == "InterpretedFunction"


def patch_interpreter() -> None:
    global _PATCHED
    if _PATCHED or not interpreting():
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    # The interpreter holds every scalar as a 1-element array and converts it with int(array),
    # which NumPy >= 2.3 refuses for ndim-1 arrays: loops with run-time bounds
    # (`for i in range(0, N, BLOCK)`) then fail. Convert through .item() instead.
    patch_lang_tensor = interpreter._patch_lang_tensor

    def patch_with_item(tensor, scope):
        patch_lang_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0].item()))

    interpreter._patch_lang_tensor = patch_with_item

    # bf16 tensors are kept as raw uint16 bits and tl.dot multiplies those bits (only fp8 operands
    # are converted). Widen bf16 operands to fp32 first, as the GPU's bf16 MMA (exact products,
    # fp32 accumulation) does.
    create_dot = interpreter.InterpreterBuilder.create_dot

    def create_dot_bf16(self, a, b, d, input_precision, max_num_imprecise_acc):
        def widen(x):
            if x.dtype.scalar == tl.bfloat16:
                data = interpreter._convert_float(x.data, tl.bfloat16, tl.float32, None).view(np.float32)
                return interpreter.TensorHandle(data, tl.float32)
            return x
        return create_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    interpreter.InterpreterBuilder.create_dot = create_dot_bf16

    # fp32 -> bf16 (x.to(tl.bfloat16), or a store of fp32 values to a bf16 pointer) drops the low
    # mantissa bits; the GPU's conversion (cvt.rn) rounds to nearest even, as torch does.
    cast_impl = interpreter.InterpreterBuilder.cast_impl

    def cast_rounding(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            import torch

            bits = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.bfloat16).view(torch.int16)
            return interpreter.TensorHandle(bits.numpy().view(np.uint16), tl.bfloat16)
        return cast_impl(self, src, dst_type)

    interpreter.InterpreterBuilder.cast_impl = cast_rounding
    interpreter.InterpreterBuilder.create_fp_trunc = cast_rounding

    # tl.sort's bitonic steps reduce integers with xor (tl.standard.xor_sum), which the interpreter
    # runs element by element in Python (~50 ms for 512 entries): one ranked top-k of k ~ 300 took
    # ~0.4 s per program, and a CI test ran 95 s of them. NumPy's xor reduce gives the same bits.
    apply_reduce = interpreter.ReduceOps.apply_impl

    def apply_reduce_xor(self, input):
        if (self.combine_fn == tl.standard._xor_combine and len(input) == 1
                and np.issubdtype(input[0].handle.data.dtype, np.integer)):
            data = np.bitwise_xor.reduce(input[0].handle.data, axis=self.axis, keepdims=self.keep_dims)
            return self.to_tensor(data, input[0].dtype)
        return apply_reduce(self, input)

    interpreter.ReduceOps.apply_impl = apply_reduce_xor
    _PATCHED = True
