"""Triton kernels for the AsyncTLS decode path.

Layout: one folder per layer type where kernels differ (gqa/, mla/: the sparse decode
attention) and common/ for the ops both share (block summaries, INT4 index keys, block and
token scoring, top-k, candidate compaction, the split merge). Each op is a ``*_kernel.py``
file holding only ``@triton.jit`` code and a wrapper module beside it that checks shapes,
allocates (or takes ``out=`` buffers) and launches. ``triton_ops`` exposes the same functions
as ``asynctls_sglang.ops.torch_ops`` (the specification the kernels are tested against).

Nothing here is imported eagerly: ``import asynctls_sglang.kernels`` costs nothing on a
machine without Triton.
"""
