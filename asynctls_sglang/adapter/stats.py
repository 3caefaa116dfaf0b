"""Decode statistics kept on the device (no host sync in the hot path); read on request."""
from __future__ import annotations

import torch


class DecodeStats:
    """How many tokens each sparse decode attended, per (request, KV head, layer).

    Counters that the host already knows (rows per mode) are plain ints; per-token counts stay
    on the device until ``snapshot`` (called from SGLang's get_internal_state, between steps).
    ``kernel``: update them with one launch (kernels/common/decode_stats) instead of the torch
    form below (~20 small launches at the first layer of every decode step).
    """

    def __init__(self, device: torch.device, kernel: bool | None = None) -> None:
        self.device = device
        self.kernel = device.type == "cuda" if kernel is None else kernel
        self.sparse_steps = 0  # decode forwards with at least one sparse row
        self.dense_steps = 0  # decode forwards that ran wholly on the stock kernel
        self.sparse_rows = 0  # (request, step) pairs decoded sparsely
        self.dense_rows = 0  # (request, step) pairs decoded densely
        self.max_batch = 0  # the most requests one decode step served
        # min, max, sum, count, last; then the kernel's scratch (this call's maximum, a ticket)
        self._acc = torch.tensor([2**62, 0, 0, 0, 0, 0, 0], dtype=torch.int64, device=device)
        self._min, self._max, self._sum, self._count, self._last = self._acc[:5].unbind(0)

    def record(self, positions: torch.Tensor, dense: torch.Tensor | None = None) -> None:
        """positions: [n, Hk, K] chosen positions of one layer (-1 = unused); dense: [n] bool, the
        rows not to count (dense decodes; None: count all). Device ops only."""
        if self.kernel:
            from asynctls_sglang.kernels.common.decode_stats import record_decode_stats

            record_decode_stats(positions, self._acc, dense)
            return
        attended = (positions >= 0).sum(-1)  # [n, Hk]
        if dense is None:
            dense = torch.zeros(attended.shape[0], dtype=torch.bool, device=attended.device)
        mask = (~dense).view(-1, 1).expand_as(attended)
        big = torch.full_like(attended, 2**62)
        torch.minimum(self._min, torch.where(mask, attended, big).min(), out=self._min)
        torch.maximum(self._max, torch.where(mask, attended, 0).max(), out=self._max)
        self._sum += torch.where(mask, attended, 0).sum()
        self._count += mask.sum()
        self._last.copy_(torch.where(mask, attended, 0).max())

    def snapshot(self) -> dict:
        count = int(self._count)
        return {
            "sparse_decode_steps": self.sparse_steps,
            "dense_decode_steps": self.dense_steps,
            "sparse_request_steps": self.sparse_rows,
            "dense_request_steps": self.dense_rows,
            "max_decode_batch": self.max_batch,
            "attended_tokens_min": int(self._min) if count else None,
            "attended_tokens_max": int(self._max) if count else None,
            "attended_tokens_mean": (int(self._sum) / count) if count else None,
            "attended_tokens_last": int(self._last) if count else None,
        }
