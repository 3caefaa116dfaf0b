"""Decode statistics kept on the device (no host sync in the hot path); read on request."""
from __future__ import annotations

import torch


class DecodeStats:
    """How many tokens each sparse decode attended, per (request, KV head, layer).

    Counters that the host already knows (rows per mode) are plain ints; per-token counts stay
    on the device until ``snapshot`` (called from SGLang's get_internal_state, between steps).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sparse_steps = 0  # decode forwards with at least one sparse row
        self.dense_steps = 0  # decode forwards that ran wholly on the stock kernel
        self.sparse_rows = 0  # (request, step) pairs decoded sparsely
        self.dense_rows = 0  # (request, step) pairs decoded densely
        self.max_batch = 0  # the most requests one decode step served
        self._min = torch.full((), 2**62, dtype=torch.int64, device=device)
        self._max = torch.zeros((), dtype=torch.int64, device=device)
        self._sum = torch.zeros((), dtype=torch.int64, device=device)
        self._count = torch.zeros((), dtype=torch.int64, device=device)
        self._last = torch.zeros((), dtype=torch.int64, device=device)

    def record(self, positions: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """positions: [n, Hk, K] chosen positions of one layer (-1 = unused); rows: [n] bool,
        the rows to count (all when None). Device ops only."""
        attended = (positions >= 0).sum(-1)  # [n, Hk]
        if rows is None:
            rows = torch.ones(attended.shape[0], dtype=torch.bool, device=attended.device)
        mask = rows.view(-1, 1).expand_as(attended)
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
