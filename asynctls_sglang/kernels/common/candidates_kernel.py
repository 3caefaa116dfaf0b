"""Level-2 candidates: the token positions of the chosen blocks, and which are scored."""
import triton
import triton.language as tl


@triton.jit
def candidates_kernel(blocks, seq_lens, pos, ok, N, sink, local, s_bb, s_bh, s_bk, s_pb, s_ph, s_kb, s_kh,
                      B: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (cdiv(N, BLOCK_N), Hk, bs), N = k_b * B. Slot i of a row is offset i % B of its
    (i // B)-th chosen block: pos = max(block, 0) * B + i % B; ok = block >= 0 and the position
    is neither a sink nor a local-window token."""
    i_n, i_h, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    b_len = tl.load(seq_lens + i_b).to(tl.int64)
    # [BLOCK_N]
    b_blk = tl.load(blocks + i_b.to(tl.int64) * s_bb + i_h * s_bh + (o_n // B) * s_bk, mask=m_n, other=-1).to(tl.int64)
    b_pos = tl.maximum(b_blk, 0) * B + o_n % B
    m_ok = (b_blk >= 0) & (b_pos >= sink) & (b_pos < b_len - local)
    tl.store(pos + i_b.to(tl.int64) * s_pb + i_h * s_ph + o_n, b_pos, mask=m_n)
    tl.store(ok + i_b.to(tl.int64) * s_kb + i_h * s_kh + o_n, m_ok.to(tl.uint8), mask=m_n)
