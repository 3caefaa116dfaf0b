"""write_index_keys: bit-exact codes and (scale, zero) against the torch op / reference."""
from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICE, by_device, case, poison

from asynctls_sglang.kernels import triton_ops
from asynctls_sglang.ops import torch_ops
from asynctls_sglang.reference import dequantize_index_keys

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32

# (tokens, slots, Hk, D, r, dtype)
CASES = by_device([
    case(7, 40, 2, 64, 16, FP32, id="gqa-D64-r16-fp32"),
    case(13, 50, 3, 96, 22, BF16, id="D96-r22-odd-bytes-bf16"),
    case(5, 20, 8, 128, 32, FP16, id="gqa8-D128-r32-fp16"),
    case(3, 9, 1, 576, 128, BF16, id="mla-576-r128"),
    case(4, 9, 2, 64, 2, FP32, id="r2"),
], [
    case(4096, 70000, 8, 128, 32, BF16, id="gpu-prefill-4k"),
])


def _channels(hk, d, r, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(d, generator=gen)[:r].sort().values for _ in range(hk)]).to(DEVICE)


def _buffers(slots, hk, r, head_major):
    """Poisoned (codes, scale_zero) [slots, Hk, ...]: contiguous, or views of [Hk, slots, ...] (the
    index store's layout, memory.index_store.index_key_buffers)."""
    if head_major:
        return (poison(torch.empty(hk, slots, r // 2, dtype=torch.uint8, device=DEVICE)).permute(1, 0, 2),
                poison(torch.empty(hk, slots, 2, dtype=torch.float32, device=DEVICE)).permute(1, 0, 2))
    return (poison(torch.empty(slots, hk, r // 2, dtype=torch.uint8, device=DEVICE)),
            poison(torch.empty(slots, hk, 2, dtype=torch.float32, device=DEVICE)))


@pytest.mark.parametrize("head_major", [False, True], ids=["slot-major", "head-major"])
@pytest.mark.parametrize("t, slots, hk, d, r, dtype", CASES)
def test_write_matches_torch_op(t, slots, hk, d, r, dtype, head_major):
    gen = torch.Generator().manual_seed(t * d)
    k = (torch.randn(t, hk, d, generator=gen) * 3).to(dtype)
    k[0, 0] = 1.5  # a constant key: scale 0
    if t > 2:
        k[1, :, ::2] = k[1, :, 1::2]  # repeated values: codes on the rounding boundaries
    k = k.to(DEVICE)
    channels = _channels(hk, d, r, seed=d)
    loc = torch.randperm(slots, generator=gen)[:t].to(DEVICE)
    want_c, want_z = _buffers(slots, hk, r, head_major)
    got_c, got_z = want_c.clone(), want_z.clone()
    assert got_c.stride() == want_c.stride() and got_z.stride() == want_z.stride()
    torch_ops.write_index_keys(want_c, want_z, loc, k, channels)
    triton_ops.write_index_keys(got_c, got_z, loc, k, channels)
    assert torch.equal(got_c, want_c)
    assert torch.equal(got_z[loc], want_z[loc])
    untouched = torch.ones(slots, dtype=torch.bool, device=DEVICE)
    untouched[loc] = False
    assert got_z[untouched].isnan().all(), "slots not in loc were written"
    # the codes are a real quantisation: dequantised error at most half a step per channel
    sub = torch.gather(k.float(), 2, channels.unsqueeze(0).expand(t, -1, -1))
    deq = dequantize_index_keys(got_c[loc], got_z[loc])
    assert ((deq - sub).abs() <= got_z[loc][..., :1] * 0.5 + 1e-5).all()
