"""The decode statistics' update (adapter.stats.DecodeStats.record) as one launch: how many tokens
each (request, KV head) attended, folded into running min / max / sum / count and the last step's
maximum. Its torch form was ~20 small launches at the first layer of every decode step."""
import triton
import triton.language as tl


@triton.jit
def decode_stats_kernel(positions, dense, acc, R, HK, W, s_pb, s_ph,
                        HAS_DENSE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
    """Grid (cdiv(R * HK, BLOCK_R),). positions [R, HK, W] (-1 unused, unit last stride); dense [R]
    bool: rows not counted (HAS_DENSE). acc int64 [7]: min, max, sum, count (running), last (this
    call's maximum, 0 without a counted row), and two words of scratch: the maximum so far of this
    call, and a ticket. Each program folds its rows into min / max / sum / count and the scratch
    maximum with atomics, then takes a ticket; the program that takes the last one (every other
    program's atomics are ordered before its ticket: acquire-release) moves the scratch maximum to
    `last` and resets both scratch words for the next call."""
    o_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    m_r = o_r < R * HK
    i_b = o_r // HK
    i_h = o_r % HK
    p_row = positions + i_b.to(tl.int64) * s_pb + i_h.to(tl.int64) * s_ph
    # [BLOCK_R] attended tokens of each (request, head)
    b_n = tl.zeros([BLOCK_R], dtype=tl.int64)
    for i_w in range(0, W, BLOCK_W):
        o_w = i_w + tl.arange(0, BLOCK_W)
        m_x = m_r[:, None] & (o_w[None, :] < W)
        b_p = tl.load(p_row[:, None] + o_w[None, :], mask=m_x, other=-1)
        b_n += tl.sum((b_p >= 0).to(tl.int64), axis=1)
    m_c = m_r
    if HAS_DENSE:
        m_c = m_c & (tl.load(dense + i_b, mask=m_r, other=1).to(tl.int32) == 0)
    b_max = tl.max(tl.where(m_c, b_n, 0), axis=0)
    tl.atomic_min(acc, tl.min(tl.where(m_c, b_n, 4611686018427387904), axis=0))  # 2^62: the empty minimum
    tl.atomic_max(acc + 1, b_max)
    tl.atomic_add(acc + 2, tl.sum(tl.where(m_c, b_n, 0), axis=0))
    tl.atomic_add(acc + 3, tl.sum(m_c.to(tl.int64), axis=0))
    tl.atomic_max(acc + 5, b_max)
    b_ticket = tl.atomic_add(acc + 6, 1)
    if b_ticket == tl.num_programs(0) - 1:
        tl.store(acc + 4, tl.atomic_xchg(acc + 5, 0))
        tl.atomic_xchg(acc + 6, 0)
