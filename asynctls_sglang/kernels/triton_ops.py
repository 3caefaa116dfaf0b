"""The AsyncTLS decode ops on Triton kernels: a drop-in for asynctls_sglang.ops.torch_ops.

Same function names, signatures and semantics (shapes, -1 padding, tie-break "higher score
first, then lower index", rank order of selections), so ``select_positions(..., ops=triton_ops)``
and the backend can swap it in. The heavy ops run Triton kernels (and take optional keyword-only
``out=`` / ``workspace=`` buffers for CUDA graphs); candidate_positions is one Triton launch
(the torch version is ~10 small ones, per layer); block_table, forced_positions and
dense_positions are a few elementwise torch ops of index math, computed once per step, and are
the torch versions. No op syncs with the host.

Exactness: summaries, index keys, candidates, top-k indices and truncation are bit-exact with
torch_ops; scores and attention are fp32 sums in a different order (close, not equal).
"""
from __future__ import annotations

import torch

from asynctls_sglang.kernels.common.block_score import score_blocks
from asynctls_sglang.kernels.common.candidates import candidate_positions
from asynctls_sglang.kernels.common.compact import truncate_candidates
from asynctls_sglang.kernels.common.index_keys import write_index_keys
from asynctls_sglang.kernels.common.launch import check
from asynctls_sglang.kernels.common.merge import SplitWorkspace
from asynctls_sglang.kernels.common.summary import update_block_summaries
from asynctls_sglang.kernels.common.token_score import score_block_tokens, score_tokens
from asynctls_sglang.kernels.common.token_select import score_select_block_tokens
from asynctls_sglang.kernels.common.topk import select_blocks, select_tokens
from asynctls_sglang.kernels.gqa.decode import gqa_sparse_decode
from asynctls_sglang.kernels.mla.decode import is_latent_view, mla_sparse_decode
from asynctls_sglang.ops.torch_ops import block_table, dense_positions, forced_positions

__all__ = [
    "update_block_summaries", "write_index_keys", "block_table", "score_blocks", "select_blocks",
    "candidate_positions", "score_tokens", "score_block_tokens", "score_select_block_tokens", "forced_positions",
    "select_tokens",
    "truncate_candidates", "sparse_decode_attention", "dense_positions", "SplitWorkspace",
]


def sparse_decode_attention(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
                            req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                            positions: torch.Tensor, sm_scale: float, logit_cap: float = 0.0, *,
                            out: torch.Tensor | None = None,
                            workspace: SplitWorkspace | None = None,
                            counts: torch.Tensor | None = None, active: int | None = None,
                            out_dtype: torch.dtype = torch.float32,
                            pool: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Same contract as torch_ops.sparse_decode_attention -> [bs, Hq, Dv] in out_dtype (``active``:
    the column count the token-axis splits are sized for, see kernels.common.merge.plan_splits;
    a narrower out_dtype is rounded by the merge launch, no conversion launch after it).

    MLA (Hk = 1 and v_buffer a view of the first Dv channels of k_buffer) runs the MLA kernel,
    which reads each latent row once; everything else runs the GQA kernel.
    """
    if is_latent_view(k_buffer, v_buffer):
        if pool is not None:
            check(is_latent_view(*pool) and pool[1].shape[2] == v_buffer.shape[2],
                  "pool: MLA's (latent rows, their first Dv channels), like the buffers")
        return mla_sparse_decode(q, k_buffer, v_buffer.shape[2], req_to_token, req_pool_indices,
                                 positions, sm_scale, logit_cap, out=out, workspace=workspace,
                                 counts=counts, active=active, out_dtype=out_dtype,
                                 pool=None if pool is None else pool[0])
    return gqa_sparse_decode(q, k_buffer, v_buffer, req_to_token, req_pool_indices, positions,
                             sm_scale, logit_cap, out=out, workspace=workspace, counts=counts,
                             active=active, out_dtype=out_dtype, pool=pool)
