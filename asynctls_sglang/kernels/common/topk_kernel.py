"""Fixed-k top-k of each row with the tie-break "higher score first, then lower index".

Two kernels, one program per row each, no workspace (out's row is the only scratch):
topk_resident_kernel (rows of up to 16384 entries, read once and held in registers; the
default) and topk_kernel (any length, the row streamed from memory by every pass), which works
in three phases:
  1. radix select: four 8-bit histogram passes over the row's order-preserving 32-bit score
     keys find the k-th largest key T and how many entries equal to T are needed;
  2. ordered compaction: one pass takes every key > T and the first `need` keys == T (by
     index), writing a 64-bit (key, ~index) composite to the row of `out` (used as scratch);
  3. the k composites are bitonic-sorted in registers (descending: score, then lower index)
     and replaced by their index (or by pos[index]). Slots past the number of finite scores
     hold -1. With SORTED=False the sort is skipped: the same set comes out in index order
     (the sort of k ~ 2048 composites is most of the kernel's time, and attention over a set
     of positions does not depend on their order).
The row is re-read from memory (L2) by every pass, so any length N works; only k is bounded
by what a register sort can hold (BLOCK_K = next power of two >= k).
"""
import triton
import triton.language as tl


@triton.jit
def _ordered_key(x):
    """fp32 -> int32 with the same order (signed compare); -0.0 and +0.0 map to the same key."""
    x = tl.where(x == 0.0, 0.0, x)
    b = x.to(tl.int32, bitcast=True)
    return tl.where(b >= 0, b, b ^ 0x7FFFFFFF)


@triton.jit
def topk_kernel(scores, pos, out, N, K, s_sr, s_pr, s_or,
                HAS_POS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                SORTED: tl.constexpr = True):
    """Grid (rows,). scores: [rows, N] fp32; pos: [rows, N] int64 (HAS_POS); out: [rows, K] int64."""
    i_r = tl.program_id(0).to(tl.int64)
    p_s = scores + i_r * s_sr
    p_o = out + i_r * s_or
    o_b = tl.arange(0, 256)
    # phase 1: radix select of the K-th largest key among the finite scores
    b_prefix = tl.zeros([], dtype=tl.int64)
    b_need = tl.zeros([], dtype=tl.int32) + K
    for i_p in tl.static_range(4):
        # NOTE: a plain name, not `SHIFT: tl.constexpr = ...`: the compiler unrolls static_range
        # in one scope and refuses to re-assign an annotated constexpr (the interpreter allows it);
        # i_p is a constexpr, so SHIFT is one too.
        SHIFT = 24 - 8 * i_p
        b_hist = tl.zeros([256], dtype=tl.int32)
        for i_n in range(0, N, BLOCK_N):
            o_n = i_n + tl.arange(0, BLOCK_N)
            # [BLOCK_N]
            b_x = tl.load(p_s + o_n, mask=o_n < N, other=float("-inf"))
            b_u = _ordered_key(b_x).to(tl.int64) + 2147483647 + 1
            m_n = (b_x > float("-inf")) & ((b_u >> (SHIFT + 8)) == (b_prefix >> (SHIFT + 8)))
            b_hist += tl.histogram(((b_u >> SHIFT) & 255).to(tl.int32), 256, mask=m_n)
        if i_p == 0:
            # fewer finite scores than K: take them all
            b_need = tl.minimum(b_need, tl.sum(b_hist, axis=0))
        # [256] entries with a digit >= d
        b_ge = tl.cumsum(b_hist, axis=0, reverse=True)
        b_digit = tl.sum((b_ge >= b_need).to(tl.int32), axis=0) - 1
        b_above = tl.sum(tl.where(o_b == b_digit, b_ge - b_hist, 0), axis=0)
        b_need = b_need - b_above
        b_prefix = b_prefix | (b_digit.to(tl.int64) << SHIFT)
    b_taken = tl.zeros([], dtype=tl.int32)
    b_ties = tl.zeros([], dtype=tl.int32)
    # phase 2: ordered compaction into out's row
    for i_n in range(0, N, BLOCK_N):
        o_n = i_n + tl.arange(0, BLOCK_N)
        # [BLOCK_N]
        b_x = tl.load(p_s + o_n, mask=o_n < N, other=float("-inf"))
        b_key = _ordered_key(b_x)
        b_u = b_key.to(tl.int64) + 2147483647 + 1
        m_ok = b_x > float("-inf")
        m_eq = m_ok & (b_u == b_prefix)
        b_eq = m_eq.to(tl.int32)
        m_take = (m_ok & (b_u > b_prefix)) | (m_eq & (tl.cumsum(b_eq, axis=0) - b_eq + b_ties < b_need))
        b_take = m_take.to(tl.int32)
        o_slot = tl.cumsum(b_take, axis=0) - b_take + b_taken
        b_comp = (b_key.to(tl.int64) << 32) | (4294967295 - o_n.to(tl.int64))
        tl.store(p_o + o_slot, b_comp, mask=m_take)
        b_ties += tl.sum(b_eq, axis=0)
        b_taken += tl.sum(b_take, axis=0)
    tl.debug_barrier()
    # phase 3: sort the taken composites; b_taken = min(K, finite scores)
    o_k = tl.arange(0, BLOCK_K)
    m_k = o_k < b_taken
    # [BLOCK_K]
    b_comp = tl.load(p_o + o_k, mask=m_k, other=-9223372036854775807 - 1)
    if SORTED:
        b_comp = tl.sort(b_comp, descending=True)
    b_idx = 4294967295 - (b_comp & 4294967295)
    if HAS_POS:
        b_idx = tl.load(pos + i_r * s_pr + b_idx, mask=m_k, other=-1)
    tl.debug_barrier()
    tl.store(p_o + o_k, tl.where(m_k, b_idx, -1), mask=o_k < K)


@triton.jit
def _bit_length(x):
    """Bits needed for the unsigned value of int32 `x` (0 for 0): the exponent of an exact fp64."""
    b_x = x.to(tl.int64) & 4294967295
    b_e = (b_x.to(tl.float64).to(tl.int64, bitcast=True) >> 52) - 1022
    return tl.where(b_x == 0, 0, b_e).to(tl.int32)


@triton.jit
def _one_bit_pass(b_v, b_prefix, b_hmask, b_hi, b_cnt, b_need):
    """One radix pass of one bit (SUM_BITS 1) over keys b_v (0: -inf, never counted): the next bit
    of the K-th largest key's prefix -> (prefix, hmask, hi, cnt, need) after it. b_cnt: the finite
    entries matching the prefix; the K-th largest is the b_need-th largest of them."""
    b_s = b_hi - 1
    # finite entries matching the prefix with this bit set
    b_one = tl.sum(((b_v != 0) & ((b_v & b_hmask) == b_prefix) & (((b_v >> b_s) & 1) == 1)).to(tl.int32), axis=0)
    b_digit = (b_one >= b_need).to(tl.int32)
    b_at = tl.where(b_digit == 1, b_one, b_cnt)
    b_above = tl.where(b_digit == 1, 0, b_one)
    return b_prefix | (b_digit << b_s), -1 << b_s, b_s, b_at - b_above, b_need - b_above


@triton.jit
def _compacted_passes(b_v, b_prefix, b_hmask, b_hi, b_cnt, b_need, p_scratch, COMPACT: tl.constexpr):
    """The one-bit passes left once at most COMPACT finite entries match the prefix (b_cnt <= K,
    the scratch row's length): those entries are written to p_scratch (the row of out, int64) in
    index order and the passes run over [COMPACT] of them instead of the whole row. -> (prefix,
    hmask) at the end, and need."""
    m_in = (b_v != 0) & ((b_v & b_hmask) == b_prefix)
    b_in = m_in.to(tl.int32)
    o_slot = tl.cumsum(b_in, axis=0) - b_in
    tl.store(p_scratch + o_slot, b_v.to(tl.int64), mask=m_in)
    tl.debug_barrier()
    o_c = tl.arange(0, COMPACT)
    # [COMPACT] the matching keys, 0 (never counted) past them
    b_sv = tl.load(p_scratch + o_c, mask=o_c < b_cnt, other=0).to(tl.int32)
    # the scratch is read before anything writes the row again
    tl.debug_barrier()
    while (b_hi > 0) & (b_cnt > b_need):
        b_prefix, b_hmask, b_hi, b_cnt, b_need = _one_bit_pass(b_sv, b_prefix, b_hmask, b_hi, b_cnt, b_need)
    return b_prefix, b_hmask, b_need


@triton.jit
def _resident_threshold(b_x, K, BITS: tl.constexpr, SUM_BITS: tl.constexpr, p_scratch=None,
                        COMPACT: tl.constexpr = 0):
    """Steps 1-2 of topk_resident_kernel for a row b_x [BLOCK_N] fp32 (-inf: never chosen) ->
    (v, taken, prefix, hmask, need): the keys as unsigned bits (0 for -inf), min(K, finite
    entries), and the K-th largest key's resolved prefix (bits under hmask), with how many of the
    entries matching it are still needed. SUM_BITS: bits resolved per pass by one scalar sum (1,
    or 2 with three counts packed in an int64); 0: BITS-bit digits counted by tl.histogram.
    COMPACT (SUM_BITS 1 only; 0: off): once at most min(COMPACT, K) entries match the prefix, the
    remaining passes run over them alone (_compacted_passes, p_scratch: a row of at least K
    int64 this program may overwrite)."""
    SIGN = -2147483648
    m_ok = b_x > float("-inf")
    b_key = _ordered_key(b_x)
    b_v = tl.where(m_ok, b_key ^ SIGN, 0)
    b_cnt = tl.sum(m_ok.to(tl.int32), axis=0)
    b_taken = tl.minimum(b_cnt, K)
    # bits shared by every finite key are resolved without a pass
    b_kmax = tl.max(tl.where(m_ok, b_key, SIGN), axis=0)
    b_kmin = tl.min(tl.where(m_ok, b_key, 2147483647), axis=0)
    b_hi = _bit_length(b_kmax ^ b_kmin)
    b_hmask = tl.where(b_hi == 32, 0, -1 << (b_hi & 31))
    b_prefix = (b_kmax ^ SIGN) & b_hmask
    b_need = b_taken
    o_b = tl.arange(0, 1 << BITS)
    # b_cnt: entries matching the prefix; the K-th largest is the b_need-th largest of them. Each
    # pass finds the digit of the next b_w bits and, among the entries matching the prefix, how many
    # have a digit >= it (at) and > it (above): those are taken before the threshold.
    b_small = tl.minimum(K, COMPACT)  # 0 when off: the loop below runs to the end
    while (b_hi > 0) & (b_cnt > b_need) & (b_cnt > b_small):
        if SUM_BITS == 1:
            b_prefix, b_hmask, b_hi, b_cnt, b_need = _one_bit_pass(b_v, b_prefix, b_hmask, b_hi, b_cnt, b_need)
        else:
            b_w = tl.minimum(b_hi, BITS if SUM_BITS == 0 else SUM_BITS)
            b_s = b_hi - b_w
            if SUM_BITS == 2:
                b_d = (b_v >> b_s) & ((1 << b_w) - 1)
                # finite entries matching the prefix with a digit >= 1, 2, 3, in 16-bit fields (N <= 2^14)
                m_in = (b_v != 0) & ((b_v & b_hmask) == b_prefix)
                b_ge = (b_d >= 1).to(tl.int64) + ((b_d >= 2).to(tl.int64) << 16) + ((b_d >= 3).to(tl.int64) << 32)
                b_pack = tl.sum(tl.where(m_in, b_ge, 0), axis=0)
                b_ge1 = (b_pack & 65535).to(tl.int32)
                b_ge2 = ((b_pack >> 16) & 65535).to(tl.int32)
                b_ge3 = (b_pack >> 32).to(tl.int32)
                # the largest d with (entries with a digit >= d) >= need: the counts fall with d, so it
                # is how many of them reach need
                b_digit = ((b_ge1 >= b_need).to(tl.int32) + (b_ge2 >= b_need).to(tl.int32)
                           + (b_ge3 >= b_need).to(tl.int32))
                b_at = tl.where(b_digit == 0, b_cnt,
                                tl.where(b_digit == 1, b_ge1, tl.where(b_digit == 2, b_ge2, b_ge3)))
                b_above = tl.where(b_digit == 0, b_ge1,
                                   tl.where(b_digit == 1, b_ge2, tl.where(b_digit == 2, b_ge3, 0)))
            else:
                # -inf entries (v = 0) may match a short prefix: they count as the smallest keys, and the
                # K-th largest is finite, so they never decide the digit nor end the loop early
                m_in = (b_v & b_hmask) == b_prefix
                b_hist = tl.histogram((b_v >> b_s) & ((1 << b_w) - 1), 1 << BITS, mask=m_in)
                # [1 << BITS] entries with a digit >= d
                b_ge = tl.cumsum(b_hist, axis=0, reverse=True)
                b_digit = tl.sum((b_ge >= b_need).to(tl.int32), axis=0) - 1
                b_sel = o_b == b_digit
                b_at = tl.sum(tl.where(b_sel, b_ge, 0), axis=0)
                b_above = tl.sum(tl.where(b_sel, b_ge - b_hist, 0), axis=0)
            b_need = b_need - b_above
            b_cnt = b_at - b_above
            b_prefix = b_prefix | (b_digit << b_s)
            b_hi = b_s
            b_hmask = -1 << b_s
    if COMPACT > 0:
        if (b_hi > 0) & (b_cnt > b_need):
            b_prefix, b_hmask, b_need = _compacted_passes(b_v, b_prefix, b_hmask, b_hi, b_cnt, b_need, p_scratch,
                                                          COMPACT)
    return b_v, b_taken, b_prefix, b_hmask, b_need


@triton.jit
def _resident_slots(b_v, b_prefix, b_hmask, b_need):
    """Step 3 of topk_resident_kernel -> (take [BLOCK_N] bool, slot [BLOCK_N]): every entry above
    the threshold and the first `need` ties, each with its place in index order."""
    SIGN = -2147483648
    # above / tie against the prefix, in unsigned order (xor SIGN turns it into signed order)
    b_hv = b_v & b_hmask
    # (only v is kept across the passes: ok = v != 0, key = v ^ SIGN)
    m_ok = b_v != 0
    m_above = m_ok & ((b_hv ^ SIGN) > (b_prefix ^ SIGN))
    m_tie = m_ok & (b_hv == b_prefix)
    # one scan for both counts: ties in the high 16 bits (N <= 2^14)
    b_pack = m_above.to(tl.int32) + (m_tie.to(tl.int32) << 16)
    b_before = tl.cumsum(b_pack, axis=0) - b_pack
    b_ties = b_before >> 16
    m_take = m_above | (m_tie & (b_ties < b_need))
    o_slot = (b_before & 65535) + tl.minimum(b_ties, b_need)
    return m_take, o_slot


@triton.jit
def topk_resident_kernel(scores, pos, out, N, K, s_sr, s_pr, s_or,
                         HAS_POS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         BITS: tl.constexpr, SORTED: tl.constexpr, PRELOAD_POS: tl.constexpr,
                         SUM_BITS: tl.constexpr = 0, COMPACT: tl.constexpr = 0):
    """Grid (rows,). Same contract as topk_kernel for N <= BLOCK_N, with the row held in registers.

    The row is read once; every radix pass then works on registers only:
      1. v = the score's order-preserving key as unsigned bits (0 for -inf: never chosen); the
         bits that all finite keys share (from their max and min) are resolved at once;
      2. passes of BITS-bit digits (histogram of the entries still matching the prefix) narrow
         the prefix of the K-th largest key until it is exact or until its bin holds exactly as
         many entries as are still needed (then all of them are taken); SUM_BITS 1 or 2: that
         many bits per pass, counted by one scalar sum instead of a histogram (more passes, each
         without tl.histogram);
      3. one scan packs (entries above, ties so far) and gives every taken entry its slot in
         index order: everything above the threshold plus the first `need` ties (lowest index).
    SORTED: the taken composites (key, ~index) go through out's row and are put in rank order
    (by counting for BLOCK_K <= 256, else a register sort). Slots past the finite entries: -1.
    """
    i_r = tl.program_id(0).to(tl.int64)
    o_n = tl.arange(0, BLOCK_N)
    m_n = o_n < N
    # [BLOCK_N]
    b_x = tl.load(scores + i_r * s_sr + o_n, mask=m_n, other=float("-inf"))
    b_pos = o_n.to(tl.int64)  # unused unless preloaded below
    if HAS_POS and PRELOAD_POS and not SORTED:
        b_pos = tl.load(pos + i_r * s_pr + o_n, mask=m_n, other=-1)
    _resident_select(b_x, b_pos, pos + i_r * s_pr, out + i_r * s_or, K, HAS_POS, BLOCK_N, BLOCK_K, BITS, SORTED,
                     PRELOAD_POS, SUM_BITS, COMPACT)


@triton.jit
def _resident_select(b_x, b_pos, p_pos, p_o, K, HAS_POS: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, BITS: tl.constexpr, SORTED: tl.constexpr,
                     PRELOAD_POS: tl.constexpr, SUM_BITS: tl.constexpr, COMPACT: tl.constexpr = 0):
    """Steps 1-3 of topk_resident_kernel for a row b_x [BLOCK_N] held in registers: the K
    selected indices (or p_pos[index]; b_pos: p_pos's row preloaded when PRELOAD_POS and not
    SORTED) written to the row p_o. Shared by the kernels that build their row first
    (offload_tables_kernel.readable_pair_topk_kernel)."""
    o_n = tl.arange(0, BLOCK_N)
    SIGN = -2147483648
    b_v, b_taken, b_prefix, b_hmask, b_need = _resident_threshold(b_x, K, BITS, SUM_BITS, p_o, COMPACT)
    m_take, o_slot = _resident_slots(b_v, b_prefix, b_hmask, b_need)
    o_k = tl.arange(0, BLOCK_K)
    if SORTED:
        b_comp = ((b_v ^ SIGN).to(tl.int64) << 32) | (4294967295 - o_n.to(tl.int64))
        tl.store(p_o + o_slot, b_comp, mask=m_take)
        tl.debug_barrier()
        m_k = o_k < b_taken
        # [BLOCK_K]
        b_c = tl.load(p_o + o_k, mask=m_k, other=-9223372036854775807 - 1)
        if BLOCK_K <= 256:
            # rank = how many taken composites are larger (they are distinct), counted against
            # 16 of them at a time (re-read from out's row: a [BLOCK_K, 16] compare per step), as
            # many steps as entries were taken (H200, offload's 2 k_b ranking of the 64 blocks of a
            # 4k context: 35 us when the loop ran over all of BLOCK_K = 256)
            b_rank = tl.zeros([BLOCK_K], dtype=tl.int32)
            for i_c in range(0, b_taken, 16):
                o_c = i_c + tl.arange(0, 16)
                # [16]
                b_cc = tl.load(p_o + o_c, mask=o_c < b_taken, other=-9223372036854775807 - 1)
                b_rank += tl.sum((b_cc[None, :] > b_c[:, None]).to(tl.int32), axis=1)
            o_dst = tl.where(m_k, b_rank, o_k)
        else:
            b_c = tl.sort(b_c, descending=True)
            o_dst = o_k
        b_idx = 4294967295 - (b_c & 4294967295)
        if HAS_POS:
            b_idx = tl.load(p_pos + b_idx, mask=m_k, other=-1)
        tl.debug_barrier()
        tl.store(p_o + o_dst, tl.where(m_k, b_idx, -1), mask=o_k < K)
    else:
        if HAS_POS:
            if PRELOAD_POS:
                b_val = b_pos
            else:
                b_val = tl.load(p_pos + o_n, mask=m_take, other=-1)
        else:
            b_val = o_n.to(tl.int64)
        tl.store(p_o + o_slot, b_val, mask=m_take)
        tl.store(p_o + o_k, tl.full([BLOCK_K], -1, dtype=tl.int64), mask=(o_k >= b_taken) & (o_k < K))
