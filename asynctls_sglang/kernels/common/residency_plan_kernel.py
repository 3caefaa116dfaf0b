"""One step of the resident block cache (memory.residency.ResidentBlockCache.plan) in one launch.

One program per (batch row, KV head): it reads that head's `need` list and its row of the
layer's tables (blk2slot, slot2blk, last_used), applies the residency rules (hits stamped,
misses admitted in need order into the least recently needed slots that no hit of this step
holds), writes the tables back, adds its counts to the counters row and appends its copies to
the plan (front-packed: a range taken with one atomic). No workspace: besides the tables, the
only memory it reads back is the plan's scratch entry P (two counters between the programs,
-1 again when the launch ends) and count.
"""
import triton
import triton.language as tl

from asynctls_sglang.kernels.common.offload_tables_kernel import unreadable_count


@triton.jit(do_not_specialize=["N", "W", "P", "T", "s_pi", "NF"])  # vary with the batch: one variant
def plan_residency_kernel(blk2slot, slot2blk, last_used, clock, counters, rows, need, pages, host_blocks,
                          src, dst, head, count, sel, dense, window, late,
                          N, C, MB, M, W, P, T, HK, NF, WN,
                          s_bi, s_bh, s_si, s_sh, s_r, s_ni, s_nh, s_nj, s_pi, s_pj, s_hb, s_c, s_qb, s_qh, s_wb,
                          HAS_HOST: tl.constexpr, HAS_SEL: tl.constexpr, HAS_LATE: tl.constexpr, ADVANCE: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr,
                          BLOCK_X: tl.constexpr):
    """Grid (bs, Hk). Tables are one layer's: blk2slot [rows, Hk, MB + 1] int32, slot2blk and
    last_used [rows, Hk, C + 1] int64 (same strides), unit last stride; clock [1] (the layer's
    clock: already advanced, or advanced here when ADVANCE: every program stamps clock + 1 and the
    last one stores it); counters [7] (stride s_c); rows [bs]; need [bs, Hk, N]; pages [bs, W];
    host_blocks [bs] (HAS_HOST); src, dst, head [P + 1] (entry P: scratch, -1 between launches),
    count [1]; T = bs * Hk programs.
    HAS_SEL: need holds only the first NF entries of each list; entries NF .. N - 1 are the
    selection sel [bs, Hk, N - NF] (unit last stride), -1 for the rows where dense [bs] is set.
    HAS_LATE (with HAS_SEL): before the plan changes anything, late[0] += the selected blocks (>= 0)
    of rows not dense that are neither resident nor one of the row's window blocks (window
    [bs, WN], -1 absent): what OffloadRuntime.count_late counts, in the same launch.

    Per program (cache row r = rows[i], head h), entries j < N of need:
      1. valid: need >= 0, < MB, < host_blocks[i], r != 0, and no earlier valid entry holds the
         same block (the entries claim their blocks' blk2slot entries with an atomic max of
         2^30 - j, the first one puts the slot back);
      2. slot = blk2slot[blk]; hits stamp last_used[slot] = now; the slots whose last_used is
         now are the kept ones (every other last_used is older: the clock only grows);
      3. victims = the other slots by (last_used, slot): one register sort of the composite
         (last_used + 1) * BLOCK_C + slot (kept slots and padding: the largest key);
      4. miss rank = running count of misses; admitted iff rank < M and rank < evictable; the
         admitted miss of rank q takes the q-th victim (tl.gather), evicts its old block and
         writes the tables;
      5. the program's copies (pages[i, blk], r*C + victim, h), in rank order, go to entries
         [base, base + admitted) with base = atomic_add(src[P], admitted) + 1 (src[P] counts
         from -1): the plan is front-packed, its (row, head) groups in whatever order the
         programs ran. Each program then takes a ticket, atomic_add(dst[P], 1); the last one
         (ticket T - 2) sets count = the total, clears the entries [total, previous count) that
         the previous plan left, counts the plan and resets src[P] and dst[P] to -1.
    NOTE: Triton may hold one element in several threads (replicated layouts), each of which
    loads it; every load of a table entry is therefore separated by a barrier from any store
    or atomic that may write the same entry."""
    i_b = tl.program_id(0).to(tl.int64)
    i_h = tl.program_id(1).to(tl.int64)
    BIG = 9223372036854775807
    CLAIM = 1073741824
    b_now = tl.load(clock)
    if ADVANCE:
        b_now += 1
    b_r = tl.load(rows + i_b * s_r).to(tl.int64)
    m_row = b_r != 0
    p_b2s = blk2slot + b_r * s_bi + i_h * s_bh
    p_s2b = slot2blk + b_r * s_si + i_h * s_sh
    p_used = last_used + b_r * s_si + i_h * s_sh
    p_need = need + i_b * s_ni + i_h * s_nh
    # blocks at or past b_lim are never valid: MB (the scratch column) or the open tail
    b_lim = tl.zeros([], dtype=tl.int64) + MB
    if HAS_HOST:
        b_lim = tl.minimum(b_lim, tl.load(host_blocks + i_b * s_hb).to(tl.int64))
    o_n = tl.arange(0, BLOCK_N)
    if HAS_SEL:
        m_s = (o_n >= NF) & (o_n < N)
        # [BLOCK_N] the selection in columns NF.. (-1 elsewhere)
        b_sel = tl.load(sel + i_b * s_qb + i_h * s_qh + tl.where(m_s, o_n - NF, 0), mask=m_s, other=-1).to(tl.int64)
        b_dense = tl.load(dense + i_b) != 0
        if HAS_LATE:
            # read before this program's claims below change its row's blk2slot (no other program
            # writes this row: rows are distinct apart from the padding row 0, never written)
            o_w = tl.arange(0, BLOCK_W)
            b_win = tl.load(window + i_b * s_wb + o_w, mask=o_w < WN, other=-1)
            n_late = unreadable_count(p_b2s, b_sel, b_win, MB)
            tl.atomic_add(late, n_late, mask=(n_late > 0) & ~b_dense)
        b_fix = tl.load(p_need + o_n * s_nj, mask=o_n < NF, other=-1).to(tl.int64)
        b_blk = tl.where(o_n < NF, b_fix, tl.where(b_dense, -1, b_sel))
    else:
        # [BLOCK_N]
        b_blk = tl.load(p_need + o_n * s_nj, mask=o_n < N, other=-1).to(tl.int64)
    m_ok = m_row & (b_blk >= 0) & (b_blk < b_lim)
    o_b = tl.where(m_ok, b_blk, 0)
    b_slot32 = tl.load(p_b2s + o_b, mask=m_ok, other=-1)
    # 1. later duplicates of an earlier valid entry: every valid entry j claims its block's
    # blk2slot entry with atomic_max(CLAIM - j) (above any slot: the earliest j wins), reads the
    # winner back, and the winner puts the slot back (all of them read it before the claims)
    tl.debug_barrier()
    b_claim = CLAIM - o_n
    tl.atomic_max(p_b2s + o_b, b_claim, mask=m_ok)
    tl.debug_barrier()
    m_ok = m_ok & (tl.load(p_b2s + o_b, mask=m_ok, other=0) == b_claim)
    tl.debug_barrier()
    tl.store(p_b2s + o_b, b_slot32, mask=m_ok)
    # 2. hits
    b_slot = tl.where(m_ok, b_slot32.to(tl.int64), -1)
    m_hit = m_ok & (b_slot >= 0)
    m_miss = m_ok & (b_slot < 0)
    b_nowv = tl.zeros([BLOCK_N], dtype=tl.int64) + b_now
    tl.store(p_used + tl.where(m_hit, b_slot, 0), b_nowv, mask=m_hit)
    tl.debug_barrier()
    # 3. victim order
    o_s = tl.arange(0, BLOCK_C)
    m_s = m_row & (o_s < C)
    # [BLOCK_C]
    b_used = tl.load(p_used + o_s, mask=m_s, other=-1)
    m_free = m_s & (b_used != b_now)
    b_evictable = tl.sum(m_free.to(tl.int32), axis=0)
    b_key = tl.where(m_free, (b_used + 1) * BLOCK_C + o_s, BIG)
    b_order = tl.sort(b_key) % BLOCK_C
    # 4. admission
    b_rank = tl.cumsum(m_miss.to(tl.int32), axis=0) - 1
    m_admit = m_miss & (b_rank < M) & (b_rank < b_evictable)
    b_victim = tl.gather(b_order, tl.minimum(tl.maximum(b_rank, 0), BLOCK_C - 1), 0).to(tl.int64)
    b_victim = tl.where(m_admit, b_victim, 0)
    b_old = tl.load(p_s2b + b_victim, mask=m_admit, other=-1)
    m_evict = m_admit & (b_old >= 0)
    tl.debug_barrier()
    tl.store(p_b2s + tl.where(m_evict, b_old, 0), tl.full([BLOCK_N], -1, dtype=tl.int32), mask=m_evict)
    tl.debug_barrier()
    tl.store(p_b2s + tl.where(m_admit, b_blk, 0), b_victim.to(tl.int32), mask=m_admit)
    tl.store(p_s2b + b_victim, b_blk, mask=m_admit)
    tl.store(p_used + b_victim, b_nowv, mask=m_admit)
    # counters: [plans, needed, hits, misses, moved, overflow, evicted]
    n_ok = tl.sum(m_ok.to(tl.int64), axis=0)
    n_hit = tl.sum(m_hit.to(tl.int64), axis=0)
    n_miss = tl.sum(m_miss.to(tl.int64), axis=0)
    n_admit = tl.sum(m_admit.to(tl.int64), axis=0)
    n_evict = tl.sum(m_evict.to(tl.int64), axis=0)
    n_over = n_miss - n_admit
    # (zeros are not added: all programs add to the same 6 words)
    tl.atomic_add(counters + 1 * s_c, n_ok, mask=n_ok > 0)
    tl.atomic_add(counters + 2 * s_c, n_hit, mask=n_hit > 0)
    tl.atomic_add(counters + 3 * s_c, n_miss, mask=n_miss > 0)
    tl.atomic_add(counters + 4 * s_c, n_admit, mask=n_admit > 0)
    tl.atomic_add(counters + 5 * s_c, n_over, mask=n_over > 0)
    tl.atomic_add(counters + 6 * s_c, n_evict, mask=n_evict > 0)
    # 5. plan entries [base, base + admitted), then the last program's epilogue
    b_base = tl.atomic_add(src + P, n_admit, mask=n_admit > 0) + 1
    o_at = b_base + tl.where(m_admit, b_rank, 0).to(tl.int64)
    b_host = tl.load(pages + i_b * s_pi + tl.minimum(tl.where(m_admit, b_blk, 0), W - 1) * s_pj,
                     mask=m_admit, other=-1).to(tl.int64)
    tl.store(src + o_at, b_host, mask=m_admit)
    tl.store(dst + o_at, b_r * C + b_victim, mask=m_admit)
    tl.store(head + o_at, tl.zeros([BLOCK_N], dtype=tl.int64) + i_h, mask=m_admit)
    # NOTE: the barrier orders the whole program's atomic above before the ticket (one thread
    # issues each scalar atomic); acq_rel atomics make every program's range taken before the
    # last ticket visible to the last program
    tl.debug_barrier()
    b_ticket = tl.atomic_add(dst + P, 1)
    if b_ticket == T - 2:
        b_total = tl.atomic_xchg(src + P, -1) + 1
        b_prev = tl.minimum(tl.load(count), P)
        tl.store(count, b_total)
        if ADVANCE:
            tl.store(clock, b_now)
        tl.atomic_xchg(dst + P, -1)
        tl.atomic_add(counters, 1)
        b_none = tl.full([BLOCK_X], -1, dtype=tl.int64)
        for i_x in range(b_total, b_prev, BLOCK_X):
            o_x = i_x + tl.arange(0, BLOCK_X)
            m_x = o_x < b_prev
            tl.store(src + o_x, b_none, mask=m_x)
            tl.store(dst + o_x, b_none, mask=m_x)
            tl.store(head + o_x, b_none, mask=m_x)
