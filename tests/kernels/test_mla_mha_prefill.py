"""The MLA prefill in the MHA form (adapter.mla_prefill) on its GPU kernels: torch's
scaled_dot_product_attention (the default there; V zero-padded to the q/k head dim for flash
attention), FlashInfer's ragged prefill (GPU only) and SGLang's Triton extend kernel (the expanded prefix read as its "buffer" through
indices 0..P-1): each request's extend rows over its prefix, against the torch loop the CPU
engine runs. Ragged batches, a request without a prefix, real MLA
head dims: DeepSeek-V2 (q/k 128 + 64, v 128) and GLM-4.7-Flash (q/k 192 + 64, v 256)."""
from __future__ import annotations

import types

import pytest
import torch

from asynctls_sglang.adapter.mla_prefill import MLAPrefill
from kernel_testing import DEVICE, DTYPE_IDS, ON_GPU, TOLERANCE, by_device, case

DSV2, GLM = (192, 128), (256, 256)  # (q/k, v) head dims
CASES = by_device(
    [case(4, DSV2, [0, 37, 70], [20, 13, 33], id="dsv2-h4-ragged"), case(2, GLM, [5], [1], id="glm-h2-one-row")],
    [case(20, GLM, [0, 8192, 30000], [4096, 2048, 3000], id="glm-h20-long"),
     case(16, DSV2, [65536], [16384], id="dsv2-h16-chunk")])


@pytest.mark.parametrize("kernel", ["sdpa", "triton", pytest.param("flashinfer", marks=pytest.mark.skipif(
    not ON_GPU, reason="FlashInfer's ragged prefill needs CUDA"))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16] if ON_GPU else [torch.float32],
                         ids=DTYPE_IDS.get)
@pytest.mark.parametrize("heads, dims, prefix, extend", CASES)
def test_attention_over_an_expanded_prefix(heads, dims, prefix, extend, dtype, kernel):
    from sglang.kernels.ops.attention.extend_attention import extend_attention_fwd

    gen = torch.Generator().manual_seed(sum(prefix) + sum(extend))
    t, p = sum(extend), sum(prefix)

    def rand(n, d):
        return torch.randn(n, heads, d, generator=gen).to(device=DEVICE, dtype=dtype)

    dqk, dv = dims
    q, k, v, k_pre, v_pre = rand(t, dqk), rand(t, dqk), rand(t, dv), rand(p, dqk), rand(p, dv)
    scale = dqk ** -0.5
    if kernel == "triton":
        backend = types.SimpleNamespace(extend_attention_fwd=extend_attention_fwd)
        out = MLAPrefill.attend_triton(backend, q, k, v, k_pre, v_pre, prefix, extend, scale)
    elif kernel == "flashinfer":
        if dtype == torch.float32:
            pytest.skip("FlashInfer's prefill takes fp16/bf16")
        out = MLAPrefill(None, "mha").attend_flashinfer(q, k, v, k_pre, v_pre, prefix, extend, scale)
    else:
        out = MLAPrefill.attend_sdpa(q, k, v, k_pre, v_pre, prefix, extend, scale)
    ref = MLAPrefill.attend_torch(q.float(), k.float(), v.float(), k_pre.float(), v_pre.float(), prefix,
                                  extend, scale)
    atol, rtol = TOLERANCE[dtype]
    if kernel == "triton" and dtype == torch.float32 and ON_GPU:
        # SGLang's kernel takes fp32 dots in TF32 (a 10-bit mantissa) on the H200: 3.5e-3 off at
        # most over up to 38k keys (session 12)
        atol, rtol = 1e-2, 1e-2
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=rtol)


def test_torch_path_is_causal_over_the_prefix():
    """attend_torch itself: row i of a request sees its prefix and its extend rows 0..i only."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 1, 4, generator=gen) for _ in range(3))
    k_pre, v_pre = torch.randn(2, 1, 4, generator=gen), torch.randn(2, 1, 4, generator=gen)
    out = MLAPrefill.attend_torch(q, k, v, k_pre, v_pre, [2], [3], 0.5, rows=2)
    keys, vals = torch.cat([k_pre, k]), torch.cat([v_pre, v])
    for i in range(3):
        w = (keys[: 3 + i, 0] @ q[i, 0] * 0.5).softmax(0)
        torch.testing.assert_close(out[i, 0], w @ vals[: 3 + i, 0])
