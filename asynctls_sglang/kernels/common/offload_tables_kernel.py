"""The offloading engine's per-layer reads of the residency tables, one kernel each: which blocks
attention may read now (the first readable ones of the ranked blocks) and where each attended token lies in the
resident buffers (the attention's slot table). Each replaces some twenty small torch ops of
memory.offload_runtime (the specification), which under a CUDA graph cost more than the math."""
import triton
import triton.language as tl


@triton.jit
def readable_blocks_kernel(ranked, out, blk2slot, rows, window, dense, late,
                           M, WN, KB, MB, s_rb, s_rh, s_ob, s_oh, s_tr, s_th, s_wb,
                           BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_KB: tl.constexpr):
    """Grid (bs, Hk). ranked: the row's best M blocks in rank order (-1 unused). out: its first
    KB readable ones (resident in this layer, or one of the row's window blocks), in that order,
    -1 after them. late[0] += blocks among the first KB of ranked (the wanted ones) that are not
    readable (sparse rows only)."""
    i_b, i_h = tl.program_id(0), tl.program_id(1)
    b_row = tl.load(rows + i_b).to(tl.int64)
    o_w = tl.arange(0, BLOCK_W)
    # [BLOCK_W] the row's window blocks (-1 absent)
    b_win = tl.load(window + i_b * s_wb + o_w, mask=o_w < WN, other=-1)
    o_m = tl.arange(0, BLOCK_M)
    # [BLOCK_M]
    b_blk = tl.load(ranked + i_b * s_rb + i_h * s_rh + o_m, mask=o_m < M, other=-1).to(tl.int64)
    m_b = b_blk >= 0
    b_res = tl.load(blk2slot + b_row * s_tr + i_h * s_th + tl.minimum(b_blk, MB), mask=m_b, other=-1) >= 0
    b_inw = tl.sum(((b_blk[:, None] == b_win[None, :]) & (b_win[None, :] >= 0)).to(tl.int32), axis=1) > 0
    m_ok = m_b & (b_res | b_inw)
    b_ok = m_ok.to(tl.int32)
    # slot of each readable block among the readable ones, in rank order
    o_slot = tl.cumsum(b_ok, axis=0) - b_ok
    tl.store(out + i_b * s_ob + i_h * s_oh + o_slot, b_blk, mask=m_ok & (o_slot < KB))
    b_taken = tl.minimum(tl.sum(b_ok, axis=0), KB)
    o_k = tl.arange(0, BLOCK_KB)
    tl.store(out + i_b * s_ob + i_h * s_oh + o_k, tl.full([BLOCK_KB], -1, tl.int64), mask=(o_k >= b_taken) & (o_k < KB))
    b_late = tl.sum((m_b & ~m_ok & (o_m < KB)).to(tl.int64), axis=0)
    b_dense = tl.load(dense + i_b) != 0
    tl.atomic_add(late, tl.where(b_dense, 0, b_late))


@triton.jit
def buffer_table_kernel(positions, table, columns, blk2slot, rows, window, dropped,
                        K, WN, MB, C, WINDOW_BASE, s_pb, s_ph, s_tb, s_cb, s_ch, s_tr, s_th, s_wb,
                        B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_W: tl.constexpr):
    """Grid (bs, Hk, cdiv(K, BLOCK_K)). Position p (>= 0) of head h, column k becomes buffer row
    WINDOW_BASE + (row * WN + w) * B + p % B when its block is window block w (the first match),
    else (row * C + slot) * B + p % B when its block is resident in slot `slot`, else it is left
    out: table entry 0, column -1, counted in dropped[0]. Unused positions (-1): entry 0, column -1."""
    i_b, i_h, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b_row = tl.load(rows + i_b).to(tl.int64)
    o_w = tl.arange(0, BLOCK_W)
    b_win = tl.load(window + i_b * s_wb + o_w, mask=o_w < WN, other=-1)
    o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
    m_k = o_k < K
    b_pos = tl.load(positions + i_b * s_pb + i_h * s_ph + o_k, mask=m_k, other=-1).to(tl.int64)
    m_p = b_pos >= 0
    b_blk = tl.where(m_p, tl.minimum(b_pos // B, MB), MB)
    b_off = tl.where(m_p, b_pos % B, 0)
    # [BLOCK_K, BLOCK_W] first window match (BLOCK_W where none)
    b_eq = (b_blk[:, None] == b_win[None, :]) & (b_win[None, :] >= 0)
    b_w = tl.min(tl.where(b_eq, o_w[None, :], BLOCK_W), axis=1)
    b_inw = m_p & (b_w < BLOCK_W)
    b_slot = tl.load(blk2slot + b_row * s_tr + i_h * s_th + b_blk, mask=m_p, other=-1).to(tl.int64)
    b_res = m_p & (b_slot >= 0)
    b_win_row = WINDOW_BASE + (b_row * WN + b_w) * B + b_off
    b_res_row = (b_row * C + b_slot) * B + b_off
    b_out = tl.where(b_inw, b_win_row, tl.where(b_res, b_res_row, -1))
    tl.store(table + i_b * s_tb + i_h * K + o_k, tl.maximum(b_out, 0).to(tl.int32), mask=m_k)
    tl.store(columns + i_b * s_cb + i_h * s_ch + o_k, tl.where(b_out >= 0, i_h * K + o_k, -1), mask=m_k)
    tl.atomic_add(dropped, tl.sum((m_k & m_p & (b_out < 0)).to(tl.int64), axis=0))
