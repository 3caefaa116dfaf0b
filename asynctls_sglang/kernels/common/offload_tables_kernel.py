"""The offloading engine's per-layer reads of the residency tables, one kernel each: which blocks
attention may read now (the block scores beside a copy masked to the readable blocks), how many
wanted blocks were not readable, and where each attended token lies in the resident buffers (the
attention's slot table); and the per-step tables the layers share (decode_step_kernel). Each
replaces some twenty to fifty small torch ops of memory.offload_runtime (the specification), which
under a CUDA graph cost more than the math."""
import triton
import triton.language as tl

from asynctls_sglang.kernels.common.topk_kernel import _resident_select


@triton.jit
def _in_window(b_blk, b_win):
    """[N] block ids, [W] the row's window blocks (-1 absent) -> [N] bool: the block is one of them."""
    return tl.sum(((b_blk[:, None] == b_win[None, :]) & (b_win[None, :] >= 0)).to(tl.int32), axis=1) > 0


@triton.jit
def unreadable_count(p_b2s, b_blk, b_win, MB):
    """How many of the blocks b_blk (-1 unused) are not readable: neither resident (the row's and
    head's blk2slot entries from p_b2s, MB its scratch column) nor one of the window blocks b_win."""
    m_b = b_blk >= 0
    b_ok = tl.load(p_b2s + tl.minimum(b_blk, MB), mask=m_b, other=-1) >= 0
    return tl.sum((m_b & ~(b_ok | _in_window(b_blk, b_win))).to(tl.int64), axis=0)


@triton.jit
def readable_pair_kernel(scores, out, blk2slot, rows, window, N, WN, MB, S, s_ss, s_sb, s_sh, s_op, s_ob, s_oh,
                         s_tr, s_th, s_wb, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
    """Grid (bs, Hk, cdiv(N, BLOCK_N)). out[0] = the row's block scores (the sum of its S partial
    rows, in order), out[1] = the same where the block is readable (resident in this layer, or one
    of the row's window blocks), -inf elsewhere: one [2, bs, Hk, N] tensor whose two halves one
    top-k launch ranks together."""
    i_b, i_h, i_n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    # [BLOCK_N]
    b_x = _summed_scores(scores + i_b * s_sb + i_h * s_sh, o_n, m_n, S, s_ss)
    p_o = out + i_b * s_ob + i_h * s_oh + o_n
    tl.store(p_o, b_x, mask=m_n)
    b_ok = _readable(blk2slot, rows, window, i_b, i_h, o_n, m_n, WN, MB, s_tr, s_th, s_wb, BLOCK_W)
    tl.store(p_o + s_op, tl.where(b_ok, b_x, float("-inf")), mask=m_n)


@triton.jit
def _summed_scores(p_row, o_n, m_n, S, s_ss):
    """[BLOCK_N] a row's block scores: the sum of its S partial rows (S apart by s_ss), in order;
    -inf where not m_n."""
    b_x = tl.load(p_row + o_n, mask=m_n, other=float("-inf"))
    for i_s in range(1, S):
        b_x += tl.load(p_row + i_s * s_ss + o_n, mask=m_n, other=float("-inf"))
    return b_x


@triton.jit
def _readable(blk2slot, rows, window, i_b, i_h, o_n, m_n, WN, MB, s_tr, s_th, s_wb, BLOCK_W: tl.constexpr):
    """[BLOCK_N] bool: block o_n of row i_b, head i_h is resident in this layer's table or one of the
    row's window blocks."""
    b_row = tl.load(rows + i_b).to(tl.int64)
    o_w = tl.arange(0, BLOCK_W)
    # [BLOCK_W] the row's window blocks (-1 absent)
    b_win = tl.load(window + i_b * s_wb + o_w, mask=o_w < WN, other=-1)
    b_res = tl.load(blk2slot + b_row * s_tr + i_h * s_th + tl.minimum(o_n, MB), mask=m_n, other=-1) >= 0
    return b_res | _in_window(o_n, b_win)


@triton.jit
def readable_pair_topk_kernel(scores, out, blk2slot, rows, window, N, K, WN, MB, S, s_ss, s_sb, s_sh, s_op, s_ob,
                              s_oh, s_tr, s_th, s_wb, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
                              BLOCK_K: tl.constexpr, BITS: tl.constexpr, SUM_BITS: tl.constexpr,
                              COMPACT: tl.constexpr):
    """Grid (2, bs, Hk): readable_pair_kernel's two rows (p = 0: the scores, the sum of the S
    partial rows in order; p = 1: the same, -inf where the block is not readable) built in
    registers and ranked there by the top-k (topk_kernel._resident_select, rank order): out[p]
    [bs, Hk, K] is select_blocks of readable_pair's out[p], bit for bit, in one launch instead of
    two and without the [2, bs, Hk, N] pair in memory. N <= BLOCK_N."""
    i_p, i_b, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_n = tl.arange(0, BLOCK_N)
    m_n = o_n < N
    # [BLOCK_N]
    b_x = _summed_scores(scores + i_b * s_sb + i_h * s_sh, o_n, m_n, S, s_ss)
    if i_p == 1:
        b_ok = _readable(blk2slot, rows, window, i_b, i_h, o_n, m_n, WN, MB, s_tr, s_th, s_wb, BLOCK_W)
        b_x = tl.where(b_ok, b_x, float("-inf"))
    p_o = out + i_p * s_op + i_b * s_ob + i_h * s_oh
    _resident_select(b_x, o_n.to(tl.int64), p_o, p_o, K, False, BLOCK_N, BLOCK_K, BITS, True, False, SUM_BITS,
                     COMPACT)


@triton.jit
def device_loc_kernel(loc, page_map, out, N, B: tl.constexpr, BLOCK: tl.constexpr):
    """Grid (cdiv(N, BLOCK),). out[i] = page * B + loc[i] % B with page = page_map[loc[i] // B] when
    that is >= 0, else loc[i] % B (the padding page 0): SGLang's logical write locations (>= 0)
    -> the device pool's slots."""
    o_i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m_i = o_i < N
    b_loc = tl.load(loc + o_i, mask=m_i, other=0).to(tl.int64)
    b_page = tl.load(page_map + b_loc // B, mask=m_i, other=-1).to(tl.int64)
    tl.store(out + o_i, tl.where(b_page >= 0, b_page * B, 0) + b_loc % B, mask=m_i)


@triton.jit
def count_late_kernel(wanted, blk2slot, rows, window, dense, late, WN, KB, MB, s_qb, s_qh, s_tr, s_th, s_wb,
                      BLOCK_W: tl.constexpr, BLOCK_KB: tl.constexpr):
    """Grid (bs, Hk). late[0] += the wanted blocks (>= 0) of rows not dense that are not readable
    (neither resident in this layer nor one of the row's window blocks)."""
    i_b, i_h = tl.program_id(0), tl.program_id(1)
    b_row = tl.load(rows + i_b).to(tl.int64)
    o_w = tl.arange(0, BLOCK_W)
    b_win = tl.load(window + i_b * s_wb + o_w, mask=o_w < WN, other=-1)
    o_k = tl.arange(0, BLOCK_KB)
    # [BLOCK_KB]
    b_blk = tl.load(wanted + i_b * s_qb + i_h * s_qh + o_k, mask=o_k < KB, other=-1).to(tl.int64)
    b_late = unreadable_count(blk2slot + b_row * s_tr + i_h * s_th, b_blk, b_win, MB)
    b_dense = tl.load(dense + i_b) != 0
    tl.atomic_add(late, tl.where(b_dense, 0, b_late))


@triton.jit
def buffer_table_kernel(positions, table, columns, blk2slot, rows, window, dropped, chosen, dense, win_src,
                        K, WN, MB, C, START, KC, s_pb, s_ph, s_tb, s_cb, s_ch, s_tr, s_th, s_wb, s_xb,
                        s_xh, B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_W: tl.constexpr,
                        HAS_CHOSEN: tl.constexpr):
    """Grid (bs, Hk, cdiv(K, BLOCK_K)). Position p (>= 0) of head h, column k gets the entry
    -(page * B + p % B) - 1 when its block is window block w (the first match; page =
    win_src[row * WN + w], its device pool page: the attention reads it in place from the pool,
    kv_rows), else the buffer row (row * C + slot) * B + p % B when its block is resident in slot
    `slot`, else it is left out: entry 0, column -1, counted in dropped[0]. Unused positions (-1):
    entry 0, column -1. HAS_CHOSEN: p of columns START .. START + KC of a row not dense is
    chosen[row, h, k - START], else positions[row, h, k]."""
    i_b, i_h, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b_row = tl.load(rows + i_b).to(tl.int64)
    o_w = tl.arange(0, BLOCK_W)
    b_win = tl.load(window + i_b * s_wb + o_w, mask=o_w < WN, other=-1)
    o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
    m_k = o_k < K
    if HAS_CHOSEN:
        m_c = m_k & (o_k >= START) & (o_k < START + KC) & (tl.load(dense + i_b) == 0)
        b_pos = tl.load(positions + i_b * s_pb + i_h * s_ph + o_k, mask=m_k & ~m_c, other=-1).to(tl.int64)
        b_cho = tl.load(chosen + i_b * s_xb + i_h * s_xh + (o_k - START), mask=m_c, other=-1).to(tl.int64)
        b_pos = tl.where(m_c, b_cho, b_pos)
    else:
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
    b_page = tl.load(win_src + i_b * WN + b_w, mask=b_inw, other=0).to(tl.int64)
    b_win_row = -(b_page * B + b_off) - 1
    b_res_row = (b_row * C + b_slot) * B + b_off
    m_ok = b_inw | b_res
    b_out = tl.where(b_inw, b_win_row, tl.where(b_res, b_res_row, 0))
    tl.store(table + i_b * s_tb + i_h * K + o_k, b_out.to(tl.int32), mask=m_k)
    tl.store(columns + i_b * s_cb + i_h * s_ch + o_k, tl.where(m_ok, i_h * K + o_k, -1), mask=m_k)
    tl.atomic_add(dropped, tl.sum((m_k & m_p & ~m_ok).to(tl.int64), axis=0))


@triton.jit
def decode_step_kernel(req_to_token, rows_in, lens_in, device_page, rows, lens, pages, host_done, window, win_src,
                       need_fixed, dense, req, positions, counts, MB, CTX, DB, LOCAL, DENSE_LEN, SINK, W, BUDGET,
                       s_r2t, B: tl.constexpr, N_SINK: tl.constexpr,
                       N_LOCAL: tl.constexpr, BLOCK_MB: tl.constexpr, BLOCK_F: tl.constexpr,
                       HAS_MAP: tl.constexpr, HAS_POS: tl.constexpr):
    """Grid (bs,). The per-step tables of one decode row i (OffloadRuntime.decode_step's torch form is
    ~65 small launches with the positions): rows/lens as int64; pages[i, j] = req_to_token[row, min(j*B, CTX-1)] // B for
    j < MB; host_done = (len-1) // B; its window blocks (N_SINK sink blocks j with j*B < len, then
    N_LOCAL blocks from max(len - LOCAL, 0) // B that start before len) and their device pages
    (win_src; -1 absent, 0 for a page unmapped in device_page);
    need_fixed[i] = the local window blocks, then 0..DB-1 when the row is dense (len <= DENSE_LEN),
    else -1; dense; req[i] = i. HAS_POS: the attention's
    positions[i, :W] (select.step_positions of one head: a dense row's every position, -1 past its
    length; else positions 0..SINK-1 below its length, then its last LOCAL ones at or past SINK, then
    -1) and counts[i] (its length when dense, else BUDGET)."""
    i_b = tl.program_id(0)
    WN: tl.constexpr = N_SINK + N_LOCAL
    b_row = tl.load(rows_in + i_b).to(tl.int64)
    b_len = tl.load(lens_in + i_b).to(tl.int64)
    tl.store(rows + i_b, b_row)
    tl.store(lens + i_b, b_len)
    tl.store(host_done + i_b, (b_len - 1) // B)
    b_dense = b_len <= DENSE_LEN
    tl.store(dense + i_b, b_dense)
    tl.store(req + i_b, i_b.to(tl.int64))
    p_r2t = req_to_token + b_row * s_r2t
    for j0 in range(0, MB, BLOCK_MB):
        o_j = j0 + tl.arange(0, BLOCK_MB)
        b_slot = tl.load(p_r2t + tl.minimum(o_j.to(tl.int64) * B, CTX - 1), mask=o_j < MB, other=0).to(tl.int64)
        tl.store(pages + i_b.to(tl.int64) * MB + o_j, b_slot // B, mask=o_j < MB)
    # [BLOCK_F] window column f < WN: sink block f, then local block first + f - N_SINK
    o_f = tl.arange(0, BLOCK_F)
    b_first = tl.maximum(b_len - LOCAL, 0) // B
    b_blk = tl.where(o_f < N_SINK, o_f, b_first + (o_f - N_SINK)).to(tl.int64)
    m_ok = tl.where(o_f < N_SINK, b_blk * B < b_len, (b_blk * B < b_len) & (b_len > 0))
    b_win = tl.where(m_ok, b_blk, -1)
    m_w = o_f < WN
    tl.store(window + i_b * WN + o_f, b_win, mask=m_w)
    b_first_slot = tl.load(p_r2t + tl.minimum(tl.maximum(b_win, 0) * B, CTX - 1), mask=m_w, other=0).to(tl.int64)
    b_page = b_first_slot // B
    if HAS_MAP:
        b_dev = tl.load(device_page + b_page, mask=m_w, other=-1).to(tl.int64)
        b_page = tl.where(b_dev >= 0, b_dev, 0)
    tl.store(win_src + i_b * WN + o_f, tl.where(b_win >= 0, b_page, -1), mask=m_w)
    # need_fixed row: its F = N_LOCAL + DB columns
    o_n = tl.arange(0, BLOCK_F)
    m_loc = o_n < N_LOCAL
    b_lblk = b_first + o_n
    b_loc = tl.where((b_lblk * B < b_len) & (b_len > 0), b_lblk, -1)
    b_need = tl.where(m_loc, b_loc, tl.where(b_dense, (o_n - N_LOCAL).to(tl.int64), -1))
    tl.store(need_fixed + i_b * (N_LOCAL + DB) + o_n, b_need, mask=o_n < N_LOCAL + DB)
    if HAS_POS:
        tl.store(counts + i_b, tl.where(b_dense, b_len, BUDGET))
        for j0 in range(0, W, BLOCK_MB):
            o_p = (j0 + tl.arange(0, BLOCK_MB)).to(tl.int64)
            b_local = b_len - LOCAL + (o_p - SINK)
            b_forced = tl.where(o_p < SINK, tl.where(o_p < b_len, o_p, -1),
                                tl.where((o_p < SINK + LOCAL) & (b_local >= SINK), b_local, -1))
            b_pos = tl.where(b_dense, tl.where(o_p < b_len, o_p, -1), b_forced)
            tl.store(positions + i_b.to(tl.int64) * W + o_p, b_pos, mask=o_p < W)
