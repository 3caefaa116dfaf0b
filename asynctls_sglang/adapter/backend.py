"""The `asynctls` attention backend.

Prefill (extend) is dense and runs on SGLang's own kernels (torch_native on CPU; on a GPU
FlashInfer's, its MLA backend for MLA models, or Triton's: ``dense_backend``); it also feeds the
online calibration of the index channels. Decode runs the two-level selection on the index that
the pool keeps and attends exactly over the chosen tokens. Requests no longer than
``dense_threshold`` (config.AsyncTLSConfig.dense_len) decode on the stock kernel (a batch made
only of such requests is handed to it unchanged, and so is a batch whose lengths add up to at
most config.AsyncTLSConfig.dense_batch_len: ``asynctls_dense_batch``).

Per-step metadata is planned once per forward; per-layer calls only launch ops.
- Eager (``init_forward_metadata``): the plan splits the batch into sparse and dense rows from
  SGLang's host copy of the lengths; an all-dense batch goes to the stock kernel untouched.
- CUDA graphs (``init_forward_metadata_out_graph``, before capture and every replay): each batch
  size has two graphs (patches.graph_variants): "dense", the stock kernel, replayed for the
  batches ``asynctls_dense_batch`` hands to it, and "sparse": shapes are fixed, so every row runs
  the selection over a block table as wide as the model's context, and the rows at or below the
  threshold replace their selection with all of their positions on the device (``torch.where``);
  one attention launch serves both, each row reading only its own column count.
  NOTE: nothing in the graph path reads a device value on the host.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from asynctls_sglang import env
from asynctls_sglang.adapter.mla_prefill import MLAPrefill, has_flashinfer, resolve_mode
from asynctls_sglang.adapter.offload import OffloadDecodeMixin, build_offload_runtime
from asynctls_sglang.adapter.pools import AsyncTLSPoolMixin
from asynctls_sglang.adapter.stats import DecodeStats
from asynctls_sglang.config import AsyncTLSConfig, ConfigError, flag_name
from asynctls_sglang.ops.dispatch import ops_for_device, uses_kernels
from asynctls_sglang.ops.select import select_chosen, select_positions, step_positions
from asynctls_sglang.patches.capture_guard import capturing_graphs


def _unpadded_lens(fb):
    """seq_lens_cpu without the padding rows of a CUDA-graph replay view (SGLang pads the batch to
    the captured size; the runner picks the graph from the unpadded batch): the batch rule sums
    lengths over the batch size, so both must see the same rows."""
    lens = fb.seq_lens_cpu
    pad = getattr(fb, "num_padding", 0) or 0
    return lens[:lens.shape[0] - pad] if lens is not None and pad else lens


class DecodePlan(NamedTuple):
    all_dense: bool
    sparse_rows: torch.Tensor | None = None  # [n_sparse] int64 on device
    dense_rows: torch.Tensor | None = None  # [n_dense]
    max_blocks: int = 0  # block-table width for the sparse rows
    max_dense_len: int = 0
    graph: bool = False  # fixed-shape path (CUDA-graph capture/replay)


class AsyncTLSBackendMixin(OffloadDecodeMixin):
    """Mixed into a dense SGLang backend class (see create_backend)."""

    def __init__(self, model_runner, cfg: AsyncTLSConfig) -> None:
        super().__init__(model_runner)
        pool = self.token_to_kv_pool
        if not isinstance(pool, AsyncTLSPoolMixin):
            raise RuntimeError(f"asynctls: the KV pool is {type(pool).__name__}, not an AsyncTLS pool; "
                               "the asynctls_sglang plug-in's pool patch did not run in this process")
        if model_runner.page_size != cfg.block_size:
            raise ConfigError(f"asynctls needs --page-size equal to {flag_name('block_size')} "
                              f"({model_runner.page_size} != {cfg.block_size})")
        if getattr(model_runner, "is_hybrid_swa", False) or getattr(model_runner, "sliding_window_size", None):
            raise ConfigError("asynctls does not support sliding-window models")
        self.asynctls_cfg = cfg
        self.asynctls_index = pool.asynctls_index
        self.asynctls_ops = ops_for_device(model_runner.device)
        # NOTE: the statistics' update is one launch wherever the decode ops are the kernels
        self.asynctls_stats = DecodeStats(torch.device(model_runner.device),
                                          kernel=uses_kernels(self.asynctls_ops))
        self._plan: DecodePlan | None = None
        self._step: tuple = ()  # per-step tensors shared by every layer (see forward_decode)
        self.asynctls_offload = build_offload_runtime(model_runner, cfg, pool) if cfg.offload else None
        self.asynctls_allocator = model_runner.token_to_kv_pool_allocator
        self._extend_table = None
        self._loaded = None
        self._seed_rows = None
        self.asynctls_capture_mode: str | None = None  # set by patches.graph_variants while capturing
        is_mla = bool(getattr(model_runner, "use_mla_backend", False))
        self.asynctls_dense_base = dense_base_name(cfg, str(model_runner.device), is_mla, _mla_dims(model_runner))
        self.asynctls_mla = MLAPrefill(model_runner, resolve_mode(cfg.mla_prefill, self.asynctls_dense_base)) \
            if is_mla else None

    # metadata ------------------------------------------------------------------------------------
    def init_forward_metadata(self, forward_batch) -> None:
        if self.asynctls_offload is not None:
            # NOTE: SGLang's prefill-graph capture (breakable: attention runs eagerly) passes dummy
            # batches through here: host state only for them, as for a decode capture. The whole
            # offload prefill (load-back, seeds, write-through, demotion) on every captured size
            # made Qwen3-8B's capture take 67 s against 25 s without offload (H200, session 11).
            self._begin_offload(forward_batch, in_capture=capturing_graphs())
            with self._device_tables():  # offload: the dense prefill reads device pages
                super().init_forward_metadata(forward_batch)
        else:
            super().init_forward_metadata(forward_batch)
        if not forward_batch.forward_mode.is_decode():
            self._plan = None
        elif env.fixed_shapes():
            self._plan = DecodePlan(all_dense=False, graph=True, max_blocks=self._graph_blocks())
        else:
            self._plan = self._make_plan(forward_batch)

    def _make_plan(self, fb) -> DecodePlan:
        cfg = self.asynctls_cfg
        lens = fb.seq_lens_cpu
        if lens is None:
            raise RuntimeError("asynctls needs the host copy of seq_lens (seq_lens_cpu)")
        sparse = lens > cfg.dense_len
        n_sparse = int(sparse.sum())
        bs = int(lens.shape[0])
        self.asynctls_stats.max_batch = max(self.asynctls_stats.max_batch, bs)
        if cfg.offload:  # every row reads the resident cache (see _offload_decode)
            sparse = torch.ones_like(sparse)
        if not cfg.offload and self.asynctls_dense_batch(lens):
            self.asynctls_stats.dense_steps += 1
            self.asynctls_stats.dense_rows += bs
            return DecodePlan(all_dense=True)
        self.asynctls_stats.sparse_steps += int(n_sparse > 0)
        self.asynctls_stats.dense_steps += int(n_sparse == 0)
        self.asynctls_stats.sparse_rows += n_sparse
        self.asynctls_stats.dense_rows += bs - n_sparse
        dev = fb.seq_lens.device
        rows = torch.arange(bs)
        longest = int(lens[sparse].max())
        if cfg.offload:
            dense = lens <= cfg.dense_len
            return DecodePlan(all_dense=False, max_blocks=math.ceil(longest / cfg.block_size),
                              max_dense_len=int(lens[dense].max()) if bool(dense.any()) else 0)
        dense_max = int(lens[~sparse].max()) if n_sparse < bs else 0
        return DecodePlan(
            all_dense=False,
            sparse_rows=rows[sparse].to(dev),
            dense_rows=rows[~sparse].to(dev) if n_sparse < bs else None,
            max_blocks=math.ceil(longest / cfg.block_size),
            max_dense_len=dense_max,
        )

    def init_forward_metadata_out_graph(self, forward_batch, in_capture: bool = False) -> None:
        if self.asynctls_base_metadata_needed(forward_batch, in_capture):
            super().init_forward_metadata_out_graph(forward_batch, in_capture)
        if self.asynctls_offload is not None:
            # NOTE: runs outside the graph (before capture, before every replay): row clearing and
            # the joins of eager copies that the replay must see happen here, on the host.
            self._begin_offload(forward_batch, in_capture)
            if not in_capture:
                self.asynctls_offload.engine.before_replay()
        if not forward_batch.forward_mode.is_decode():
            self._plan = None
            return
        lens = _unpadded_lens(forward_batch)
        if not in_capture and lens is not None:
            n_sparse = 0 if self.asynctls_dense_batch(lens) else int((lens > self.asynctls_cfg.dense_len).sum())
            stats = self.asynctls_stats
            stats.sparse_steps += int(n_sparse > 0)
            stats.dense_steps += int(n_sparse == 0)
            stats.sparse_rows += n_sparse
            stats.dense_rows += int(lens.shape[0]) - n_sparse
            stats.max_batch = max(stats.max_batch, int(lens.shape[0]))
        if in_capture:  # patches.graph_variants captures each batch size once per mode
            mode = self.asynctls_capture_mode or "sparse"
        else:  # informational: the replayed graph was picked by the runner with the same rule
            mode = self.asynctls_graph_mode_for(lens) if self.asynctls_graph_modes() else "sparse"
        self._plan = DecodePlan(all_dense=mode == "dense", graph=True, max_blocks=self._graph_blocks())

    def asynctls_graph_modes(self) -> tuple[str, ...] | None:
        """The decode graphs to capture per batch size (patches.graph_variants): a "dense" one (the
        stock kernel) for the batches asynctls_dense_batch hands to it, and the "sparse" one; None
        (one graph) with offload, whose rows always read the resident cache."""
        cfg = self.asynctls_cfg
        if self.asynctls_offload is not None or (cfg.dense_len <= 0 and cfg.dense_batch_len(1) <= 0):
            return None
        return ("sparse", "dense")

    def asynctls_base_metadata_needed(self, fb, in_capture: bool) -> bool:
        """Whether the dense base backend must plan this replay: not when the sparse decode graph
        replays, nor any offload decode graph (neither runs the base's decode kernel; H200
        8 x 128k: its index plan cost 0.14 ms of GPU per step). Captures, prefills and the dense
        graph always plan."""
        if in_capture or not fb.forward_mode.is_decode():
            return True
        if self.asynctls_offload is not None:  # every row reads the resident cache (_offload_decode)
            return False
        return not self.asynctls_graph_modes() or self.asynctls_graph_mode_for(_unpadded_lens(fb)) == "dense"

    def asynctls_graph_mode_for(self, seq_lens_cpu) -> str:
        if seq_lens_cpu is None or seq_lens_cpu.numel() == 0:
            return "sparse"
        return "dense" if self.asynctls_dense_batch(seq_lens_cpu) else "sparse"

    def asynctls_dense_batch(self, seq_lens_cpu) -> bool:
        """Whether a decode batch runs whole on the stock kernel: every request at or under the
        dense threshold, or (the batch rule, config.dense_batch_tokens) lengths that add up to
        little enough that the stock kernel's reads cost less than the selection."""
        if seq_lens_cpu.numel() == 0:  # a replay view that is all padding (an idle rank's batch)
            return False
        cfg = self.asynctls_cfg
        mla_base = self.asynctls_dense_base if self.asynctls_mla is not None else None
        bound = cfg.dense_batch_len(int(seq_lens_cpu.shape[0]), mla_base=mla_base)
        return int(seq_lens_cpu.max()) <= cfg.dense_len or int(seq_lens_cpu.sum()) <= bound

    def _graph_blocks(self) -> int:
        context = self.req_to_token_pool.req_to_token.shape[1]
        return math.ceil(context / self.asynctls_cfg.block_size)

    # forward -------------------------------------------------------------------------------------
    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        pool = self.token_to_kv_pool
        mla = self.asynctls_mla
        if mla is not None and not layer.is_cross_attention and mla.is_mha_call(layer, self.asynctls_index.head_dim):
            return self._forward_extend_mha(q, k, v, layer, forward_batch)
        # NOTE: no calibration on SGLang's graph-capture batches (dummy activations), only on
        # real prefills: see patches.capture_guard
        real = save_kv_cache and not layer.is_cross_attention and not capturing_graphs()
        if real and k is not None:
            t = q.shape[0]
            l = layer.layer_id - pool.start_layer
            if mla is not None and l == 0:
                mla.absorbed_forwards += 1
            self.asynctls_index.observe_prefill(
                l, q.reshape(t, layer.tp_q_head_num, layer.qk_head_dim),
                k.reshape(t, layer.tp_k_head_num, -1)[..., : self.asynctls_index.head_dim], self._index_keys(layer))
        if self.asynctls_offload is None:
            return super().forward_extend(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)
        with self._device_tables():
            out = super().forward_extend(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)
        if real:
            self._offload_after_extend(
                lambda rows: q.reshape(q.shape[0], layer.tp_q_head_num, layer.qk_head_dim).index_select(0, rows),
                layer, forward_batch)
        return out

    def _index_keys(self, layer):
        """-> a callable giving the layer's K buffer as the index's slots see it (for the
        re-quantisation after a calibration change): with offload, logical slots (device page or
        host tier)."""
        pool = self.token_to_kv_pool
        if self.asynctls_offload is None:
            return lambda: pool.get_key_buffer(layer.layer_id)
        l = layer.layer_id - pool.start_layer
        return lambda: self.asynctls_offload.logical_keys(l, pool.get_key_buffer(layer.layer_id))

    def _forward_extend_mha(self, q, k, v, layer, fb):
        """An MLA prefill layer in the MHA form (adapter.mla_prefill): SGLang has written the
        latent rows through the pool (index and summaries follow them) and passes per-head
        q/k/v of the extend rows. Calibration and the offload seeds take latent queries."""
        pool, mla, index = self.token_to_kv_pool, self.asynctls_mla, self.asynctls_index
        l = layer.layer_id - pool.start_layer
        attn = mla.module(layer.layer_id)
        t = q.shape[0]
        q3 = q.reshape(t, layer.tp_q_head_num, layer.qk_head_dim)
        real = not capturing_graphs()
        if real and l == 0:
            mla.mha_forwards += 1
        if real and t and index.calibrating(l):
            latent = pool.get_key_buffer(layer.layer_id)[pool.asynctls_write_slots(fb.out_cache_loc, layer.layer_id)]
            index.observe_magnitudes(l, mla.latent_qmag(attn, q3), latent.float().abs().reshape(t, 1, -1).sum(0),
                                     t, self._index_keys(layer))
        with self._device_tables():
            out = self._mha_attention(q, k, v, layer, fb, attn)
        if real and self.asynctls_offload is not None:
            self._offload_after_extend(lambda rows: mla.latent_q(attn, q3.index_select(0, rows)), layer, fb)
        return out.reshape(t, layer.tp_q_head_num * layer.v_head_dim)

    def _mha_attention(self, q, k, v, layer, fb, attn) -> torch.Tensor:
        """Causal MHA of the extend rows over their prefix (expanded here from the latent rows of
        the device pages) and themselves."""
        mla = self.asynctls_mla
        t, hq = q.shape[0], layer.tp_q_head_num
        extend = [int(x) for x in fb.extend_seq_lens_cpu]
        prefix = [int(x) for x in (fb.extend_prefix_lens_cpu or [0] * len(extend))]
        table = self.req_to_token_pool.req_to_token.index_select(0, fb.req_pool_indices)
        slots = torch.cat([table[i, :p] for i, p in enumerate(prefix)]).long()
        k_pre, v_pre = mla.expand(attn, self.token_to_kv_pool.get_key_buffer(layer.layer_id)[slots])
        q3 = q.reshape(t, hq, layer.qk_head_dim)
        k3 = k.reshape(t, -1, layer.qk_head_dim)
        v3 = v.reshape(t, -1, layer.v_head_dim)
        cap = float(getattr(layer, "logit_cap", 0.0) or 0.0)
        return mla.attend(self, q3, k3, v3, k_pre, v_pre, prefix, extend, layer.scaling, cap)

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        plan = self._plan
        if self.asynctls_offload is not None and plan is not None and not layer.is_cross_attention:
            return self._offload_decode(q, k, v, layer, forward_batch, plan, save_kv_cache)
        if plan is None or plan.all_dense or layer.is_cross_attention:
            return super().forward_decode(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)
        pool = self.token_to_kv_pool
        if save_kv_cache and k is not None:
            pool.set_kv_buffer(layer, forward_batch.out_cache_loc, k, v)
        ops = self.asynctls_ops
        hq, hk = layer.tp_q_head_num, layer.tp_k_head_num
        bs = forward_batch.batch_size
        q3 = q.reshape(bs, hq, layer.qk_head_dim)
        out = q.new_empty(bs, hq, layer.v_head_dim)
        k_buf = pool.get_key_buffer(layer.layer_id)
        v_buf = pool.get_value_buffer(layer.layer_id)
        req_to_token = self.req_to_token_pool.req_to_token
        cap = float(getattr(layer, "logit_cap", 0.0) or 0.0)
        if plan.graph:
            positions, counts, active = self._graph_positions(q3, layer, forward_batch, plan)
            # NOTE: written in q's dtype by the attention's last launch (no conversion launch)
            o = ops.sparse_decode_attention(q3, k_buf, v_buf, req_to_token, forward_batch.req_pool_indices,
                                            positions, layer.scaling, cap, counts=counts, active=active,
                                            out_dtype=q.dtype)
            return o.reshape(bs, hq * layer.v_head_dim)
        for rows, sparse in ((plan.sparse_rows, True), (plan.dense_rows, False)):
            if rows is None:
                continue
            q_rows = q3.index_select(0, rows)
            req_rows = forward_batch.req_pool_indices.index_select(0, rows)
            lens = forward_batch.seq_lens.index_select(0, rows)
            if sparse:
                first = layer.layer_id == pool.start_layer
                if first:  # NOTE: layers run in order; layer 0's step tensors serve them all
                    self._step = (ops.block_table(req_to_token, req_rows, plan.max_blocks, self.asynctls_cfg.block_size),
                                  ops.forced_positions(lens, hk, self.asynctls_cfg.sink_tokens,
                                                       self.asynctls_cfg.local_window))
                index = self.asynctls_index.layer_index(layer.layer_id - pool.start_layer)
                positions = select_positions(q_rows, index, req_to_token, req_rows, lens, plan.max_blocks,
                                             self.asynctls_cfg, ops, pages=self._step[0], forced=self._step[1])
                if first:  # every layer attends the same number of tokens: count once per step
                    self.asynctls_stats.record(positions)
            else:
                positions = ops.dense_positions(lens, hk, plan.max_dense_len)
            o = ops.sparse_decode_attention(q_rows, k_buf, v_buf, req_to_token, req_rows, positions,
                                            layer.scaling, cap, out_dtype=out.dtype)
            out.index_copy_(0, rows, o)
        return out.view(bs, hq * layer.v_head_dim)

    def _graph_positions(self, q3, layer, fb, plan: DecodePlan) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Fixed-shape selection for every row; dense rows take all their positions.
        -> (positions [bs, Hk, max(K, dense_len)], the columns each row reads (its length when dense,
        else K = token_budget, the selection's width: the padding costs nothing), K: the column count
        the attention's splits are sized for)."""
        cfg = self.asynctls_cfg
        pool = self.token_to_kv_pool
        ops = self.asynctls_ops
        hk = layer.tp_k_head_num
        index = self.asynctls_index.layer_index(layer.layer_id - pool.start_layer)
        req_to_token = self.req_to_token_pool.req_to_token
        width = max(cfg.token_budget, cfg.dense_len)
        first = layer.layer_id == pool.start_layer
        if first:
            # NOTE: per-step tensors, built at the first layer (inside the graph when capturing)
            # and reused by the later layers of the same step: they depend on lengths only.
            self._step = (ops.block_table(req_to_token, fb.req_pool_indices, plan.max_blocks, cfg.block_size),
                          step_positions(fb.seq_lens, fb.seq_lens <= cfg.dense_len, hk, width, cfg, ops))
        pages, sp = self._step
        positions = sp.put(select_chosen(q3, index, req_to_token, fb.req_pool_indices, fb.seq_lens, plan.max_blocks,
                                         cfg, ops, pages=pages))
        if first:
            self.asynctls_stats.record(positions, dense=sp.is_dense.view(-1))
        return positions, sp.counts, cfg.token_budget

    # introspection -------------------------------------------------------------------------------
    def asynctls_snapshot(self) -> dict:
        index = self.asynctls_index
        snap = self.asynctls_stats.snapshot()
        snap.update({
            "config": self.asynctls_cfg.to_json(),
            "ops": self.asynctls_ops.__name__.rsplit(".", 1)[-1],
            "dense_base": type(self).__bases__[-1].__name__,  # create_backend: (mixin, base)
            "index_channels": index.r,
            "calibrated_tokens_layer0": index.calibrated_tokens[0],
            "index_requantisations": index.requantisations,
            "index_bytes": index.nbytes,
        })
        if self.asynctls_offload is not None:
            snap["offload"] = self.asynctls_offload.snapshot()
        if self.asynctls_mla is not None:
            snap["mla_prefill"] = self.asynctls_mla.snapshot()
        return snap


_CLASSES: dict[type, type] = {}


#: (kv_lora_rank, qk_rope_head_dim) of the MLA models whose dense steps `auto` puts on FlashInfer's
#: MLA backend: the shape measured under asynctls (DeepSeek-V2/V3, GLM-4.7-Flash); other MLA shapes
#: keep Triton's unless dense_backend names flashinfer
FLASHINFER_MLA_DIMS = (512, 64)


def _mla_dims(model_runner) -> tuple | None:
    mc = getattr(model_runner, "model_config", None)
    return (getattr(mc, "kv_lora_rank", None), getattr(mc, "qk_rope_head_dim", None)) if mc is not None else None


def dense_base_name(cfg: AsyncTLSConfig, device: str, is_mla: bool, mla_dims: tuple | None = None) -> str:
    """The dense SGLang backend the asynctls class derives from (config.dense_backend, resolved).
    "flashinfer" is FlashInfer's MLA backend for an MLA model (_dense_base). mla_dims: the model's
    (kv_lora_rank, qk_rope_head_dim)."""
    name = cfg.dense_backend
    if name == "flashinfer" and is_mla and cfg.offload:
        # NOTE: the offload prefill swaps the base's tables to device slots (_device_tables), done
        # and tested for the Triton and FlashInfer (GQA) bases only
        raise ConfigError(f"{flag_name('dense_backend')} flashinfer with {flag_name('offload')} serves "
                          "GQA/MHA models only; MLA models with offload use triton (or auto)")
    on_gpu = str(device).startswith("cuda")
    if name in ("flashinfer", "triton") and not on_gpu:
        raise ConfigError(f"{flag_name('dense_backend')} {name} needs a CUDA GPU (this engine runs on "
                          f"{device}); use torch_native or auto")
    if name == "flashinfer" and not has_flashinfer():
        raise ConfigError(f"{flag_name('dense_backend')} flashinfer: FlashInfer is not installed; use "
                          "triton or auto")
    if name != "auto":
        return name
    if not on_gpu:
        return "torch_native"
    if is_mla and (cfg.offload or mla_dims != FLASHINFER_MLA_DIMS):
        return "triton"
    # NOTE: for MLA too: short batches decode on the base's kernel, and Triton's MLA decode ran at
    # 0.80x of FlashInfer's (H200, DeepSeek-V2-Lite 8 x 4k and 1 x 32k, session 15); over
    # FlashInfer's MLA backend they ran at 0.95-0.96x (session 16, its GPU tests passing)
    return "flashinfer" if has_flashinfer() else "triton"


@functools.cache
def _flashinfer_mla_base() -> type:
    from sglang.srt.layers.attention.flashinfer_mla_backend import FlashInferMLAAttnBackend, PrefillMetadata

    class FlashInferMLAPagedPrefill(FlashInferMLAAttnBackend):
        """FlashInfer's MLA backend with every extend planned on its paged MLA wrapper.

        Stock, an extend without a prefix is planned ragged (per-head MHA): its model runs such
        prefills in the MHA form on FlashInfer's ragged kernel. Under asynctls the MHA-form
        prefill is ours (adapter.mla_prefill, its own wrapper), and the extends that reach this
        class are absorbed (latent MQA: mla_prefill "absorbed", mixed batches, prefixes longer
        than a chunk), which the ragged wrapper cannot run."""

        def init_forward_metadata(self, forward_batch) -> None:
            mode = forward_batch.forward_mode
            if not mode.is_extend() or mode.is_target_verify():
                return super().init_forward_metadata(forward_batch)
            self.indices_updater_prefill.update(
                forward_batch.req_pool_indices, forward_batch.seq_lens, forward_batch.seq_lens_sum,
                forward_batch.extend_prefix_lens, prefill_wrapper_paged=self.prefill_wrapper_paged,
                use_ragged=False)
            self.forward_metadata = PrefillMetadata(self.prefill_wrapper_paged, False)

    return FlashInferMLAPagedPrefill


def _dense_base(model_runner, cfg: AsyncTLSConfig) -> type:
    is_mla = bool(getattr(model_runner, "use_mla_backend", False))
    name = dense_base_name(cfg, str(model_runner.device), is_mla, _mla_dims(model_runner))
    if name == "torch_native":
        from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

        return TorchNativeAttnBackend
    if name == "flashinfer" and is_mla:
        return _flashinfer_mla_base()
    if name == "flashinfer":
        from sglang.srt.layers.attention.flashinfer_backend import FlashInferAttnBackend

        return FlashInferAttnBackend
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    return TritonAttnBackend


def create_backend(model_runner):
    """Factory registered with SGLang as the `asynctls` attention backend."""
    cfg = AsyncTLSConfig.from_env()
    base = _dense_base(model_runner, cfg)
    cls = _CLASSES.get(base)
    if cls is None:
        cls = type(f"AsyncTLS{base.__name__}", (AsyncTLSBackendMixin, base), {})
        _CLASSES[base] = cls
    return cls(model_runner, cfg)
