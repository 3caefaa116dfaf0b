from __future__ import annotations

import torch


def block_summaries(keys: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel min and max of the keys of each block (the last block may be partial).

    keys: [T, Hk, D] -> (kmin, kmax), each [NB, Hk, D] in keys' dtype.
    """
    t, hk, d = keys.shape
    nb = -(-t // block_size)
    pad = nb * block_size - t
    kmin = torch.nn.functional.pad(keys, (0, 0, 0, 0, 0, pad), value=float("inf"))
    kmax = torch.nn.functional.pad(keys, (0, 0, 0, 0, 0, pad), value=float("-inf"))
    kmin = kmin.view(nb, block_size, hk, d).amin(dim=1)
    kmax = kmax.view(nb, block_size, hk, d).amax(dim=1)
    return kmin, kmax
