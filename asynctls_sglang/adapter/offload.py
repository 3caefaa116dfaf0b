"""The backend's offload half: prefill seeds and write-through, decode from the resident cache.

Mixed into the asynctls backend (AsyncTLSBackendMixin) when ``offload`` is on; the engine itself
(host tier, resident block cache, transfers, the window of each request) is
memory.offload_runtime.OffloadRuntime, which imports nothing from SGLang.
"""
from __future__ import annotations

import contextlib
import math

import torch

from asynctls_sglang import env
from asynctls_sglang.adapter.allocator import OffloadPagedAllocator
from asynctls_sglang.config import AsyncTLSConfig, ConfigError
from asynctls_sglang.ops.select import block_scores, chosen_in_blocks
from asynctls_sglang.utils import swapped_attr


def build_offload_runtime(model_runner, cfg: AsyncTLSConfig, pool):
    """The offloading engine for this pool (start-up errors: HostMemoryError, ConfigError)."""
    from asynctls_sglang.memory.offload_runtime import OffloadRuntime

    timing = env.offload_timing()
    if timing and not getattr(model_runner.server_args, "disable_cuda_graph", True):
        raise ConfigError(f"{env.ASYNCTLS_OFFLOAD_TIMING}=1 times copies with CUDA events, which cannot be "
                          "recorded inside a captured decode graph: add --disable-cuda-graph, or unset it")
    req_to_token = model_runner.req_to_token_pool.req_to_token
    b = cfg.block_size
    if pool.asynctls_kv_lists()[1] is None:  # MLA: one latent "head"; V is its first channels
        heads, dim, v_dim = 1, pool.kv_lora_rank + pool.qk_rope_head_dim, None
    else:
        heads, dim, v_dim = pool.head_num, pool.head_dim, pool.v_head_dim
    allocator = model_runner.token_to_kv_pool_allocator
    if not isinstance(allocator, OffloadPagedAllocator):
        raise RuntimeError(f"asynctls offload: the token allocator is {type(allocator).__name__}, not the "
                           "offload allocator (the plug-in's allocator patch did not run in this process)")
    rt = OffloadRuntime(cfg, num_layers=pool.layer_num, kv_heads=heads, head_dim=dim, v_head_dim=v_dim,
                        dtype=pool.dtype, device=torch.device(model_runner.device),
                        num_rows=req_to_token.shape[0], max_blocks=math.ceil(req_to_token.shape[1] / b),
                        host_blocks=(allocator.size + pool.page_size) // b + 1, timing=timing)
    rt.device_page = allocator.device_page
    rt.pool_tokens = {"host_pool_tokens": allocator.size,
                      "device_pool_tokens": allocator.device_pages_total * pool.page_size}
    allocator.asynctls_runtime = rt
    model_runner.req_to_token_pool.asynctls_offload = rt  # request end/abort -> rt (patches.offload)
    return rt


class _DeviceTable:
    """Stands in for SGLang's ReqToTokenPool while a dense prefill runs: req_to_token holds
    device slots instead of logical ids; everything else is the real pool's."""

    def __init__(self, pool, req_to_token: torch.Tensor) -> None:
        self._pool, self.req_to_token = pool, req_to_token

    def __getattr__(self, name):
        return getattr(self._pool, name)


def _seed_rows(fb) -> torch.Tensor | None:
    """The cache rows a prefill seeds, padding row 0 (plans nothing) for the requests in the middle
    of a chunked prefill; None when every request of the batch is (nothing to seed).

    NOTE: a request in the middle of a chunked prefill does not decode next: its seed would be
    cleared by its next chunk's forward (begin_forward resets the rows it prefills). Seeding such
    a batch anyway cost every layer of every chunk but the last (H200, 96k prompts in 16k chunks:
    1332 seed calls, 11.5 s of the prefill stream). orig_seq_lens: SGLang's full length; reading
    it on the host is one sync per prefill forward (its load-back already syncs)."""
    rows = fb.req_pool_indices
    orig = getattr(fb, "orig_seq_lens", None)
    if orig is None or orig.shape != fb.seq_lens.shape:
        return rows
    mid = orig.to(fb.seq_lens.dtype) > fb.seq_lens
    if bool(mid.all()):
        return None
    return torch.where(mid, 0, rows)


class OffloadDecodeMixin:
    """Methods of the asynctls backend used when ``asynctls_offload`` is set."""

    def _begin_offload(self, fb, in_capture: bool = False) -> None:
        rt = self.asynctls_offload
        self._extend_table = None
        self._loaded = None
        self._seed_rows = None
        if rt is None:
            return
        if in_capture:  # NOTE: host state only; the capture that follows starts a fresh step
            rt.engine.begin_step()
            return
        if fb.forward_mode.is_decode():
            rt.decode_steps += 1
        is_extend = fb.forward_mode.is_extend()
        rt.begin_forward(fb.req_pool_indices if is_extend else None)
        if is_extend:
            self._seed_rows = _seed_rows(fb)
        if is_extend and fb.extend_prefix_lens_cpu is not None:
            rt.clock.start("prefill")  # stopped after the last layer (_offload_after_extend)
            # Prefix blocks on the host only come back to device pages, and the dense prefill
            # reads every position through a req_to_token translated to device slots.
            req_to_token = self.req_to_token_pool.req_to_token
            k_list, v_list = self.token_to_kv_pool.asynctls_kv_lists()
            rows = fb.req_pool_indices.long()
            with rt.clock.phase("load_back"):
                self._loaded = rt.load_back(self.asynctls_allocator, req_to_token, rows,
                                            list(fb.extend_prefix_lens_cpu), k_list, v_list)
            table = req_to_token.clone()
            table[rows] = rt.device_slots(req_to_token[rows]).to(table.dtype)
            self._extend_table = table

    def _device_tables(self):
        """Context: SGLang's dense kernels see device slots in req_to_token (a prefill)."""
        if self._extend_table is None:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(swapped_attr(self, "req_to_token_pool",
                                         _DeviceTable(self.req_to_token_pool, self._extend_table)))
        if isinstance(getattr(self, "req_to_token", None), torch.Tensor):
            # NOTE: SGLang's Triton backend (the dense base on a GPU) builds its prefix kv_indices
            # from the req_to_token it cached at construction, not from req_to_token_pool: without
            # this the prefill read prefix K/V at logical slot ids (wrong pages, or past the pool)
            stack.enter_context(swapped_attr(self, "req_to_token", self._extend_table))
        updater = getattr(self, "indices_updater_prefill", None)
        if isinstance(getattr(updater, "req_to_token", None), torch.Tensor):
            # NOTE: so does FlashInfer's prefill planner (the dense base for GQA on a GPU): its
            # paged prefix indices come from the req_to_token it cached at construction
            stack.enter_context(swapped_attr(updater, "req_to_token", self._extend_table))
        return stack

    def _offload_after_extend(self, query_rows, layer, fb) -> None:
        """Per layer of a prefill: seed the resident cache for the first decode step; after the
        last layer, write the completed blocks through to the host tier. Eager (prefill).
        query_rows(rows) -> the decode-form queries [len(rows), Hq, D] of those extend rows (the
        latent ones for an MLA prefill in the MHA form)."""
        rt, pool, cfg = self.asynctls_offload, self.token_to_kv_pool, self.asynctls_cfg
        l = layer.layer_id - pool.start_layer
        req_to_token = self.req_to_token_pool.req_to_token
        k_list, v_list = pool.asynctls_kv_lists()
        last = (fb.extend_start_loc + fb.extend_seq_lens - 1).long()
        longest = max(fb.seq_lens_cpu.tolist())
        if self._seed_rows is not None:
            with rt.clock.phase("seed"):
                rt.seed(l, query_rows(last), self.asynctls_index.layer_index(l), req_to_token,
                        self._seed_rows, fb.seq_lens, math.ceil(longest / cfg.block_size), k_list, v_list,
                        self.asynctls_ops)
        if l == pool.layer_num - 1:
            prefix, lens = list(fb.extend_prefix_lens_cpu), fb.seq_lens_cpu.tolist()
            with rt.clock.phase("write_through"):
                rt.write_through_extend(req_to_token, fb.req_pool_indices, prefix, lens, k_list, v_list)
            loaded = self._loaded if self._loaded is not None else torch.empty(0, dtype=torch.int64,
                                                                               device=req_to_token.device)
            with rt.clock.phase("demote"):
                rt.demote(self.asynctls_allocator, req_to_token, fb.req_pool_indices, prefix, lens, loaded)
            rt.clock.stop("prefill")

    def _offload_decode(self, q, k, v, layer, fb, plan, save_kv_cache: bool):
        """One layer of a decode step served from the resident block cache. Every row takes this
        path (dense rows attend all their positions); fixed shapes when plan.graph, and no host
        sync either way."""
        from asynctls_sglang.memory.streams import capturing

        rt, pool, cfg, ops = self.asynctls_offload, self.token_to_kv_pool, self.asynctls_cfg, self.asynctls_ops
        l = layer.layer_id - pool.start_layer
        hq = layer.tp_q_head_num
        bs = fb.batch_size
        req_to_token = self.req_to_token_pool.req_to_token
        if l == 0:
            # NOTE: layers run in order; layer 0 builds the step's tensors for all of them.
            dense_len = cfg.dense_len if plan.graph else plan.max_dense_len
            # NOTE: with the attention's fixed positions (sink, local; the chosen ones are read in
            # place from column sink + local on; dense rows all theirs): one launch on a GPU for all
            self._step = rt.decode_step(req_to_token, fb.req_pool_indices, fb.seq_lens, plan.max_blocks,
                                        math.ceil(dense_len / cfg.block_size), ops,
                                        width=max(cfg.token_budget, dense_len))
        step = self._step
        # NOTE: the copies planned for this layer at the previous step land before anything below
        # reads the resident buffers or rewrites this layer's plan buffers.
        rt.engine.wait(l)
        if save_kv_cache and k is not None:
            pool.set_kv_buffer(layer, fb.out_cache_loc, k, v)
        k_pool = pool.get_key_buffer(layer.layer_id)
        # the window (sink, local, the open tail) is read in place from the device pool
        kv_pool = (k_pool, k_pool[..., :layer.v_head_dim] if rt.engine.v is None else
                   pool.get_value_buffer(layer.layer_id))
        q3 = q.reshape(bs, hq, layer.qk_head_dim)
        index = self.asynctls_index.layer_index(l)
        # NOTE: at depth 1 the scores stay partial (MLA's channel slices): the pair's top-k adds them
        # (one launch fewer per layer than a separate sum)
        scores = block_scores(q3, index, fb.seq_lens, cfg, ops, step.pages, partials=cfg.prefetch_depth == 1)
        kb = cfg.selected_blocks
        # NOTE: two top-k_b: the wanted blocks (the prediction for the next step, fetched for it)
        # and the attended ones, over the scores masked to the blocks readable now. One top-2k_b in
        # rank order with the first k_b readable of it (session 14) took 35 us per layer at 8 x 4k
        # on the H200 (the top-k_b: 7 us). At depth 1 both rank in one launch (the rows of the
        # [scores, masked] pair): the two were ~11 us each, one after the other, at GLM-4.7-Flash
        # 6 x 96k (six rows, one program each); late blocks are counted on the copy stream. On the
        # kernels the same launch builds the pair from the scores (no readable_pair launch).
        if cfg.prefetch_depth == 0:  # the masked scores read what this layer's fetch brought
            wanted = ops.select_blocks(scores, kb)
            rt.prefetch(l, step, wanted)
            blocks = ops.select_blocks(rt.readable_pair(l, step, scores)[1], kb)
        else:
            wanted, blocks = rt.select_readable_pair(l, step, scores, kb, ops).unbind(0)
        chosen = chosen_in_blocks(q3, index, req_to_token, fb.req_pool_indices, fb.seq_lens, blocks, cfg, ops)
        # NOTE: the chosen columns are read in place (no put into sp.positions: one launch fewer)
        table, req, columns = rt.buffer_table(l, step, step.positions, chosen, cfg.sink_tokens + cfg.local_window)
        if l == 0:
            self.asynctls_stats.record(columns, dense=step.dense)
        cap = float(getattr(layer, "logit_cap", 0.0) or 0.0)
        o = ops.sparse_decode_attention(q3, rt.engine.k[l], rt.value_buffer(l, layer.v_head_dim), table, req,
                                        columns, layer.scaling, cap, counts=step.counts, active=cfg.token_budget,
                                        out_dtype=q.dtype, pool=kv_pool)
        if cfg.prefetch_depth == 1:
            # NOTE: after the attention that read the victims' old contents (the copy stream forks here)
            rt.prefetch(l, step, wanted)
        if l == pool.layer_num - 1:
            k_list, v_list = pool.asynctls_kv_lists()
            rt.write_through_decode(step, req_to_token, k_list, v_list)
            if capturing():  # NOTE: every forked side stream joins the capture stream before it ends
                rt.engine.end_capture()
        return o.reshape(bs, hq * layer.v_head_dim)
