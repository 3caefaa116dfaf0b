"""One full decode step on the GPU: no host sync, and a CUDA graph replay equal to eager."""
from __future__ import annotations

import math

import pytest
import torch
from kernel_testing import DEVICE, ON_GPU, make_pool

from asynctls_sglang.config import AsyncTLSConfig
from asynctls_sglang.kernels import triton_ops
from asynctls_sglang.ops.select import LayerIndex, select_positions

pytestmark = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")

CFG = AsyncTLSConfig(dense_threshold=0)


def _layer(mla: bool):
    lens = [9000, 20000, 4100, 16000]
    hq, hk, d, dv = (16, 1, 576, 512) if mla else (32, 8, 128, 128)
    r = CFG.channels_for(d, mla)
    b = CFG.block_size
    pool = make_pool(lens, b, seed=1, ctx=32768)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    k_buffer = torch.randn(pool.n_slots, hk, d, device=DEVICE, generator=gen, dtype=torch.bfloat16)
    v_buffer = k_buffer[..., :dv] if mla else torch.randn(pool.n_slots, hk, dv, device=DEVICE, generator=gen,
                                                          dtype=torch.bfloat16)
    pages = pool.n_slots // b
    index = LayerIndex(torch.empty(pages, hk, d, device=DEVICE, dtype=torch.bfloat16),
                       torch.empty(pages, hk, d, device=DEVICE, dtype=torch.bfloat16),
                       torch.zeros(pool.n_slots, hk, r // 2, dtype=torch.uint8, device=DEVICE),
                       torch.zeros(pool.n_slots, hk, 2, device=DEVICE),
                       torch.arange(r, device=DEVICE).expand(hk, r).contiguous() * (d // r))
    flag = torch.zeros(pages, dtype=torch.int32, device=DEVICE)
    loc = torch.cat([pool.req_to_token[row, :n - 1].long() for row, n in zip(pool.req_pool_indices, lens)])
    triton_ops.update_block_summaries(index.kmin, index.kmax, flag, loc, k_buffer[loc], b)  # prefill
    triton_ops.write_index_keys(index.codes, index.scale_zero, loc, k_buffer[loc], index.channels)
    new_loc = torch.stack([pool.req_to_token[row, n - 1].long() for row, n in zip(pool.req_pool_indices, lens)])
    q = torch.randn(len(lens), hq, d, device=DEVICE, generator=gen, dtype=torch.bfloat16)
    return pool, index, flag, new_loc, k_buffer, v_buffer, q


@pytest.mark.parametrize("mla", [False, True], ids=["qwen3-gqa", "mla-576"])
def test_decode_step_no_sync_and_graph_replay(mla):
    pool, index, flag, new_loc, k_buffer, v_buffer, q = _layer(mla)
    mb = pool.req_to_token.shape[1] // CFG.block_size
    out = torch.empty(q.shape[0], q.shape[1], v_buffer.shape[2], device=DEVICE)

    def step():
        triton_ops.update_block_summaries(index.kmin, index.kmax, flag, new_loc, k_buffer[new_loc], CFG.block_size)
        triton_ops.write_index_keys(index.codes, index.scale_zero, new_loc, k_buffer[new_loc], index.channels)
        pos = select_positions(q, index, pool.req_to_token, pool.req_pool_indices, pool.seq_lens, mb, CFG,
                               ops=triton_ops)
        triton_ops.sparse_decode_attention(q, k_buffer, v_buffer, pool.req_to_token, pool.req_pool_indices,
                                           pos, 1 / math.sqrt(q.shape[2]), out=out)
        return pos

    step()  # compile every kernel
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        eager_pos = step().clone()
        eager_out = out.clone()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert (eager_pos >= 0).any() and eager_out.abs().sum() > 0

    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph):
        graph_pos = step()
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(graph_pos, eager_pos)
    assert torch.equal(out, eager_out)
    # a new query through the same graph gives what eager gives for it
    q.copy_(torch.randn_like(q))
    graph.replay()
    replayed_pos, replayed = graph_pos.clone(), out.clone()
    assert torch.equal(step(), replayed_pos) and torch.equal(out, replayed)
