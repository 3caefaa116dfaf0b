"""With offload, SGLang's write locations are logical slots; the pool translates them to device
slots through the page map once per forward (first layer) and the other layers reuse the result
(seven small kernels per layer otherwise, on every decode step)."""
from types import SimpleNamespace

import torch

from asynctls_sglang.adapter.pools import AsyncTLSPoolMixin


def _pool(device_page):
    # the torch form (the kernel, device_loc, is compared with it in tests/kernels/test_offload_tables.py)
    pool = SimpleNamespace(asynctls_device_page=device_page, _device_loc_cache=None, page_size=4, start_layer=0,
                           asynctls_kernels=False)
    pool._device_loc = AsyncTLSPoolMixin._device_loc.__get__(pool)
    return pool


def test_translation_through_the_page_map():
    pool = _pool(torch.tensor([2, -1, 0]))
    loc = torch.tensor([0, 3, 5, 9])  # pages 0, 0, 1 (host only), 2
    assert pool._device_loc(loc, 0).tolist() == [8, 11, 1, 1]
    assert _pool(None)._device_loc(loc, 0) is loc  # no offload: SGLang's slots are the pool's


def test_later_layers_reuse_the_first_layers_translation():
    pool = _pool(torch.tensor([2, -1, 0]))
    loc = torch.tensor([0, 3, 9])
    first = pool._device_loc(loc, 0)
    assert pool._device_loc(loc, 1) is first and pool._device_loc(loc, 5) is first
    # the next forward: the map may have changed, the first layer translates again
    pool.asynctls_device_page = torch.tensor([1, -1, 2])
    again = pool._device_loc(loc, 0)
    assert again is not first and again.tolist() == [4, 7, 9]
    # other locations (another forward without a first-layer write) are never served from the cache
    other = torch.tensor([0, 3, 9])
    assert pool._device_loc(other, 3) is not again and pool._device_loc(other, 3).tolist() == [4, 7, 9]
