"""write_index_keys: quantise the calibrated channels of new keys to INT4 at their slots."""
from __future__ import annotations

import torch

from asynctls_sglang.kernels.common.index_keys_kernel import index_key_write_kernel
from asynctls_sglang.kernels.common.launch import FLOATS, check, pow2


def write_index_keys(codes: torch.Tensor, scale_zero: torch.Tensor, loc: torch.Tensor,
                     k: torch.Tensor, channels: torch.Tensor) -> None:
    """Same contract as torch_ops.write_index_keys (bit-exact).

    codes: [slots, Hk, r // 2] uint8 (unit last stride); scale_zero: [slots, Hk, 2] fp32
    (unit last stride); loc: [T] int64 slots; k: [T, Hk, D] float (unit D stride);
    channels: [Hk, r] int64/int32 (unit last stride). Not checked at run time: loc and
    channel values in range.
    """
    t, hk, _ = k.shape
    args, consts = index_key_args(codes, scale_zero, loc, k, channels)
    if t == 0:
        return
    index_key_write_kernel[(t, hk)](codes, scale_zero, loc, k, channels, k.stride(0), k.stride(1), *args, **consts)


def index_key_args(codes: torch.Tensor, scale_zero: torch.Tensor, loc: torch.Tensor, k: torch.Tensor,
                   channels: torch.Tensor) -> tuple[tuple, dict]:
    """Checks write_index_keys' contract; -> (the strides of codes, scale_zero and channels, the
    constexprs R2 and BLOCK_R) as index_keys_kernel.write_index_key takes them."""
    t, hk, _ = k.shape
    check(channels.dim() == 2 and channels.shape[0] == hk, f"channels must be [{hk}, r], got {tuple(channels.shape)}")
    r = channels.shape[1]
    check(r % 2 == 0, f"r must be even, got {r}")
    check(codes.dim() == 3 and codes.shape[1:] == (hk, r // 2) and codes.dtype == torch.uint8,
          f"codes must be [slots, {hk}, {r // 2}] uint8, got {tuple(codes.shape)} {codes.dtype}")
    check(scale_zero.dim() == 3 and scale_zero.shape[1:] == (hk, 2), "scale_zero must be [slots, Hk, 2]")
    check(k.dtype in FLOATS and k.stride(2) == 1, "k: float with unit D stride")
    check(codes.stride(2) == 1 and scale_zero.stride(2) == 1 and channels.stride(1) == 1,
          "codes, scale_zero and channels need a unit last stride")
    check(loc.shape == (t,), "loc must be [T]")
    return ((codes.stride(0), codes.stride(1), scale_zero.stride(0), scale_zero.stride(1), channels.stride(0)),
            dict(R2=r // 2, BLOCK_R=pow2(r // 2, 2)))
