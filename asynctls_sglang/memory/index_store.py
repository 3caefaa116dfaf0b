"""The AsyncTLS index of one KV pool: block summaries and INT4 index keys for every layer.

Kept next to SGLang's K/V buffers and indexed the same way, so a prefix shared through the
radix cache shares its index too: summaries by page (= block, since page_size == block_size),
index keys by KV slot. Updated as K/V are written (``on_write``), prefill and decode alike.

Index channels (Double Sparsity's r "heavy" channels) are calibrated online, per layer, from
the prefills' own queries and keys (``observe_prefill``): statistics accumulate until
``calibration_tokens`` prefill tokens have been seen, then the channel set is frozen. The set
is computed at the first prefill and recomputed once when calibration_tokens have been seen
(so at most twice per layer); whenever it changes, every slot's index key is re-quantised
from the K buffer, so index keys always match the channels in use.
"""
from __future__ import annotations

from typing import Callable

import torch

from asynctls_sglang.config import AsyncTLSConfig
from asynctls_sglang.ops.select import LayerIndex


def index_key_buffers(num_slots: int, kv_heads: int, r: int, device: torch.device | str,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed (codes [slots, Hk, r // 2] uint8, scale_zero [slots, Hk, 2] fp32), stored head-major:
    views of [Hk, slots, ...] tensors. A decode scores, for one KV head, the 64 consecutive slots
    of each chosen page, which head-major storage holds in one contiguous run (1 KiB of codes,
    512 B of scale/zero at r = 32) where slot-major storage spreads them over every head's bytes
    (16 of each 128 B, 8 of each 64 B: most of every sector fetched unused). Token scoring at
    Qwen3-8B 128k x 8, L2 cold, H200: 27.7 us slot-major, 17.8 us head-major (session 10 probe).
    Every kernel takes the strides; the torch ops index the views."""
    codes = torch.zeros(kv_heads, num_slots, r // 2, dtype=torch.uint8, device=device)
    scale_zero = torch.zeros(kv_heads, num_slots, 2, dtype=torch.float32, device=device)
    return codes.permute(1, 0, 2), scale_zero.permute(1, 0, 2)


class SparseIndexStore:
    def __init__(self, cfg: AsyncTLSConfig, *, num_layers: int, num_slots: int, kv_heads: int,
                 head_dim: int, is_mla: bool, dtype: torch.dtype, device: torch.device | str,
                 ops=None) -> None:
        from asynctls_sglang.ops import torch_ops

        self.cfg = cfg
        self.ops = ops or torch_ops
        self.num_layers = num_layers
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.r = cfg.channels_for(head_dim, is_mla)
        b = cfg.block_size
        pages = num_slots // b + 1
        dev = torch.device(device)
        self.kmin = [torch.zeros(pages, kv_heads, head_dim, dtype=dtype, device=dev) for _ in range(num_layers)]
        self.kmax = [torch.zeros(pages, kv_heads, head_dim, dtype=dtype, device=dev) for _ in range(num_layers)]
        keys = [index_key_buffers(num_slots, kv_heads, self.r, dev) for _ in range(num_layers)]
        self.codes = [c for c, _ in keys]
        self.scale_zero = [sz for _, sz in keys]
        # Before any calibration: the first r channels (replaced at the first prefill).
        first = torch.arange(self.r, device=dev).unsqueeze(0).expand(kv_heads, -1).contiguous()
        self.channels = [first.clone() for _ in range(num_layers)]
        self.page_flag = torch.zeros(pages, dtype=torch.int32, device=dev)
        self._qmag = torch.zeros(num_layers, kv_heads, head_dim, dtype=torch.float64, device=dev)
        self._kmag = torch.zeros(num_layers, kv_heads, head_dim, dtype=torch.float64, device=dev)
        self.calibrated_tokens = [0] * num_layers
        self._next_check = [0] * num_layers
        self.requantisations = 0

    # sizing -------------------------------------------------------------------------------------
    @staticmethod
    def bytes_per_token(cfg: AsyncTLSConfig, *, kv_heads: int, head_dim: int, is_mla: bool,
                        kv_dtype_size: int, num_layers: int) -> int:
        """Device bytes the index adds per KV token (all layers), for SGLang's pool sizing."""
        r = cfg.channels_for(head_dim, is_mla)
        per_head = r // 2 + 8 + (2 * head_dim * kv_dtype_size + cfg.block_size - 1) // cfg.block_size
        return per_head * kv_heads * num_layers

    @property
    def nbytes(self) -> int:
        tensors = self.kmin + self.kmax + self.codes + self.scale_zero
        return sum(t.numel() * t.element_size() for t in tensors)

    def layer_index(self, layer: int) -> LayerIndex:
        return LayerIndex(self.kmin[layer], self.kmax[layer], self.codes[layer],
                          self.scale_zero[layer], self.channels[layer])

    # writes -------------------------------------------------------------------------------------
    def on_write(self, layer: int, loc: torch.Tensor, k: torch.Tensor) -> None:
        """Fold keys just written at slots ``loc`` into the index. k: [T, Hk, D]."""
        loc = loc.long()
        k = k.view(loc.shape[0], self.kv_heads, self.head_dim)
        self.ops.update_block_summaries(self.kmin[layer], self.kmax[layer], self.page_flag, loc, k,
                                        self.cfg.block_size,
                                        index=(self.codes[layer], self.scale_zero[layer], self.channels[layer]))

    def observe_prefill(self, layer: int, q: torch.Tensor, k: torch.Tensor,
                        key_buffer: Callable[[], torch.Tensor]) -> None:
        """Accumulate calibration statistics from a prefill's q [T, Hq, D] and k [T, Hk, D];
        no-op once this layer has seen calibration_tokens tokens. Eager only (host logic);
        every index tensor keeps its storage (captured decode graphs read them)."""
        if not self.calibrating(layer) or q.shape[0] == 0:
            return
        t = q.shape[0]
        hk, d = self.kv_heads, self.head_dim
        qmag = q.detach().float().abs().view(t, hk, -1, d).mean(2).sum(0)
        kmag = k.detach().float().abs().view(t, hk, d).sum(0)
        self.observe_magnitudes(layer, qmag, kmag, t, key_buffer)

    def calibrating(self, layer: int) -> bool:
        """Whether the layer's channels still take calibration statistics."""
        return self.calibrated_tokens[layer] < self.cfg.calibration_tokens

    def observe_magnitudes(self, layer: int, qmag: torch.Tensor, kmag: torch.Tensor, t: int,
                           key_buffer: Callable[[], torch.Tensor]) -> None:
        """observe_prefill from its sums over t tokens: qmag [Hk, D] of |q| (averaged over each
        group's query heads), kmag [Hk, D] of |k|. The MLA prefill in the MHA form
        (adapter.mla_prefill) computes them in slices, from latent queries it never keeps whole."""
        if not self.calibrating(layer) or t == 0:
            return
        self._qmag[layer] += qmag.double()
        self._kmag[layer] += kmag.double()
        self.calibrated_tokens[layer] += t
        seen = self.calibrated_tokens[layer]
        if seen < self._next_check[layer]:
            return
        self._next_check[layer] = self.cfg.calibration_tokens
        weight = self._qmag[layer] * self._kmag[layer]
        order = torch.sort(weight, dim=-1, descending=True, stable=True).indices[:, :self.r]
        channels = order.sort(dim=-1).values
        if not torch.equal(channels, self.channels[layer]):
            # NOTE: in place. Decode CUDA graphs are captured at start-up, before any real
            # prefill calibrates, and hold this tensor's address (score_tokens reads it): a new
            # tensor would leave the replays scoring at the old channels (or at freed memory)
            # while the keys below are re-quantised at the new ones.
            self.channels[layer].copy_(channels)
            self._requantise(layer, key_buffer())

    def _requantise(self, layer: int, keys: torch.Tensor) -> None:
        """Recompute every slot's index key from the K buffer (after a channel change)."""
        n = self.codes[layer].shape[0]
        step = 1 << 16
        for start in range(0, n, step):
            stop = min(n, start + step)
            loc = torch.arange(start, stop, device=keys.device)
            # NOTE: a slice, not keys[loc]: the offload engine's logical keys (LogicalKeys) copy a
            # contiguous host range in one DMA; gathering it on the CPU by index took 40-80 s per
            # requantisation at an 80-87 GB host pool (H200, 2026-11-29 launch recipes)
            k = keys[start:stop].reshape(-1, self.kv_heads, self.head_dim)
            self.ops.write_index_keys(self.codes[layer], self.scale_zero[layer], loc, k,
                                      self.channels[layer])
        self.requantisations += 1
