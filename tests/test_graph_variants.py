"""Decode graphs per mode (patches.graph_variants) and the dense base backend choice.

The CUDA-graph runner itself needs a GPU (tests/gpu/test_engine_gpu.py replays both modes); here
the hooks run against stand-ins of the runner and the backend, and the hooked SGLang methods are
checked to exist with the arguments the hooks pass.
"""
from __future__ import annotations

import inspect
import types

import pytest
import torch

from asynctls_sglang.adapter.backend import AsyncTLSBackendMixin, dense_base_name
from asynctls_sglang.config import AsyncTLSConfig, ConfigError
from asynctls_sglang.patches import graph_variants


def _backend(offload=False, mla_base=None, **cfg):
    """An object with the backend's mode methods (unbound, on a namespace); mla_base: an MLA
    model's dense base."""
    ns = types.SimpleNamespace(asynctls_cfg=AsyncTLSConfig(offload=offload, **cfg),
                               asynctls_offload=object() if offload else None, asynctls_capture_mode=None,
                               asynctls_mla=object() if mla_base else None, asynctls_dense_base=mla_base or "flashinfer")
    ns.asynctls_graph_modes = types.MethodType(AsyncTLSBackendMixin.asynctls_graph_modes, ns)
    ns.asynctls_graph_mode_for = types.MethodType(AsyncTLSBackendMixin.asynctls_graph_mode_for, ns)
    ns.asynctls_dense_batch = types.MethodType(AsyncTLSBackendMixin.asynctls_dense_batch, ns)
    ns.asynctls_base_metadata_needed = types.MethodType(AsyncTLSBackendMixin.asynctls_base_metadata_needed, ns)
    return ns


def test_hooked_runner_methods_take_the_arguments_the_hooks_pass():
    from sglang.srt.model_executor.runner.decode_cuda_graph_runner import DecodeCudaGraphRunner

    params = list(inspect.signature(DecodeCudaGraphRunner.capture_one_shape).parameters)
    assert params[:5] == ["self", "size", "forward", "stream_idx", "variant_label"]
    assert list(inspect.signature(DecodeCudaGraphRunner._resolve_lora_variant).parameters) == ["self", "forward_batch"]
    from sglang.srt.model_executor.runner.shape_key import ShapeKey

    assert ShapeKey(8, None, graph_variants.variant(None, "dense")) != ShapeKey(8, None, graph_variants.variant(None, "sparse"))


def test_each_batch_size_is_captured_once_per_mode_with_the_mode_set():
    backend = _backend(token_budget=256)
    runner = types.SimpleNamespace(attn_backend=backend)
    calls = []

    def capture(self, size, forward, stream_idx, label):
        calls.append((size, label, backend.asynctls_capture_mode))

    graph_variants._capture_one_shape(capture, runner, 8, None, None, None)
    graph_variants._capture_one_shape(capture, runner, 4, None, None, "lora")
    assert calls == [(8, "+asynctls-sparse", "sparse"), (8, "+asynctls-dense", "dense"),
                     (4, "lora+asynctls-sparse", "sparse"), (4, "lora+asynctls-dense", "dense")]
    assert backend.asynctls_capture_mode is None

    def failing(self, size, forward, stream_idx, label):
        raise RuntimeError("capture failed")

    with pytest.raises(RuntimeError):
        graph_variants._capture_one_shape(failing, runner, 8, None, None, None)
    assert backend.asynctls_capture_mode is None


def test_replay_picks_the_dense_graph_only_when_every_request_is_short():
    backend = _backend(token_budget=256, dense_threshold=1000)
    runner = types.SimpleNamespace(attn_backend=backend)

    def resolve(lens):
        return graph_variants._resolve_variant(lambda self, fb: None, runner,
                                               types.SimpleNamespace(seq_lens_cpu=torch.tensor(lens)))

    assert resolve([10, 1000]) == "+asynctls-dense"
    assert resolve([10, 1001]) == "+asynctls-sparse"
    assert resolve([5000]) == "+asynctls-sparse"


def _resolver(backend):
    runner = types.SimpleNamespace(attn_backend=backend)
    return lambda lens: graph_variants._resolve_variant(lambda self, fb: None, runner,
                                                        types.SimpleNamespace(seq_lens_cpu=torch.tensor(lens)))


def test_replay_picks_the_dense_graph_for_a_batch_whose_lengths_add_up_to_little():
    # default rule: summed lengths <= 17408 x (batch size + 2) (config.DENSE_BATCH_PER_REQUEST)
    resolve = _resolver(_backend(token_budget=2048))
    assert resolve([52224]) == "+asynctls-dense"  # one request up to 51k: the stock kernel
    assert resolve([52225]) == "+asynctls-sparse"
    assert resolve([21760] * 8) == "+asynctls-dense"  # 8 x 21.25k = 174080
    assert resolve([21760] * 7 + [21761]) == "+asynctls-sparse"
    assert resolve([100, 69000]) == "+asynctls-dense"  # a long request beside a short one: 69100 <= 69632
    assert resolve([100, 70000]) == "+asynctls-sparse"
    # an explicit dense threshold, or dense_batch_tokens=0, keeps the per-request rule alone
    assert _resolver(_backend(token_budget=2048, dense_threshold=8192))([20000]) == "+asynctls-sparse"
    assert _resolver(_backend(token_budget=2048, dense_batch_tokens=0))([20000]) == "+asynctls-sparse"
    assert _resolver(_backend(token_budget=2048, dense_threshold=100, dense_batch_tokens=1000))([3300, 700]) \
        == "+asynctls-dense"  # 4000 <= 1000 x (2 + 2)
    assert _resolver(_backend(token_budget=2048, dense_threshold=100, dense_batch_tokens=1000))([3301, 700]) \
        == "+asynctls-sparse"
    # the batch rule alone (no per-request threshold) still captures and replays the dense graph
    only_batch = _backend(token_budget=2048, dense_threshold=0, dense_batch_tokens=1000)
    assert only_batch.asynctls_graph_modes() == ("sparse", "dense")
    assert _resolver(only_batch)([3300, 700]) == "+asynctls-dense"
    assert _backend(token_budget=2048, dense_threshold=0).asynctls_graph_modes() is None
    # an MLA model on FlashInfer's MLA decode: 38912 x (n + 2); on Triton's: 8192 x (n + 2)
    # (config.DENSE_BATCH_PER_REQUEST_MLA)
    mla = _resolver(_backend(mla_base="flashinfer", token_budget=2048))
    assert mla([116736]) == "+asynctls-dense" and mla([116737]) == "+asynctls-sparse"
    assert mla([48640] * 8) == "+asynctls-dense" and mla([48640] * 7 + [48641]) == "+asynctls-sparse"
    mla = _resolver(_backend(mla_base="triton", token_budget=2048))
    assert mla([4096] * 8) == "+asynctls-dense" and mla([24577]) == "+asynctls-sparse"  # 24576 = 8192 x 3
    assert mla([32768]) == "+asynctls-sparse"  # H200: Triton's dense 6.18 ms, sparse 5.7


def test_eager_plan_follows_the_batch_rule():
    """The eager decode plan (no graphs) takes the same rule: the whole batch on the stock kernel."""
    from asynctls_sglang.adapter.stats import DecodeStats

    ns = _backend(token_budget=2048)
    ns.asynctls_stats = DecodeStats(torch.device("cpu"))
    plan = types.MethodType(AsyncTLSBackendMixin._make_plan, ns)

    def fb(lens):
        return types.SimpleNamespace(seq_lens_cpu=torch.tensor(lens), seq_lens=torch.tensor(lens))

    assert plan(fb([40000])).all_dense
    assert plan(fb([100, 60000])).all_dense
    sparse = plan(fb([100, 70000]))  # 70100 > 69632: the long row sparse, the short one dense
    assert not sparse.all_dense and sparse.sparse_rows.tolist() == [1] and sparse.dense_rows.tolist() == [0]
    stats = ns.asynctls_stats
    assert (stats.dense_steps, stats.sparse_steps, stats.dense_rows, stats.sparse_rows) == (2, 1, 4, 1)


def test_batch_rule_bounds():
    cfg = AsyncTLSConfig(token_budget=2048)
    assert [cfg.dense_batch_len(n) for n in (1, 8, 32)] == [52224, 174080, 591872]
    assert [cfg.dense_batch_len(n, mla_base="flashinfer") for n in (1, 8)] == [116736, 389120]
    assert [cfg.dense_batch_len(n, mla_base="triton") for n in (1, 8)] == [24576, 81920]
    assert cfg.dense_batch_len(1, mla_base="torch_native") == 52224  # the CPU: the GQA default
    assert AsyncTLSConfig(token_budget=2048, dense_threshold=64,
                          dense_batch_tokens=100).dense_batch_len(3, mla_base="flashinfer") == 500
    assert AsyncTLSConfig(token_budget=2048, dense_threshold=64, dense_batch_tokens=100).dense_batch_len(3) == 500
    assert AsyncTLSConfig(token_budget=2048, offload=True).dense_batch_len(1) == 0  # rows read the resident cache
    with pytest.raises(ConfigError, match="no effect with offload"):
        AsyncTLSConfig(token_budget=2048, offload=True, dense_batch_tokens=4096)
    assert AsyncTLSConfig(token_budget=2048, offload=True, dense_batch_tokens=0).dense_batch_len(1) == 0
    assert AsyncTLSConfig(token_budget=2048, dense_threshold=0).dense_batch_len(4) == 0
    with pytest.raises(ConfigError, match="dense-batch-tokens|dense_batch_tokens"):
        AsyncTLSConfig(dense_batch_tokens=-1)


@pytest.mark.parametrize("runner", [types.SimpleNamespace(attn_backend=object()),
                                    types.SimpleNamespace(attn_backend=_backend(offload=True, token_budget=256,
                                                                                local_window=64))],
                         ids=["other-backend", "offload"])
def test_one_graph_per_size_for_other_backends_and_offload(runner):
    calls = []
    graph_variants._capture_one_shape(lambda self, *a: calls.append(a[-1]), runner, 8, None, None, "lora")
    assert calls == ["lora"]
    fb = types.SimpleNamespace(seq_lens_cpu=torch.tensor([10]))
    assert graph_variants._resolve_variant(lambda self, fb: "nolora", runner, fb) == "nolora"


def test_default_dense_threshold():
    assert AsyncTLSConfig(token_budget=2048).dense_len == 8192
    assert AsyncTLSConfig(token_budget=16384, block_budget=512).dense_len == 16384
    assert AsyncTLSConfig(token_budget=2048, dense_threshold=100).dense_len == 100
    assert AsyncTLSConfig(token_budget=2048, offload=True).dense_len == 2048  # dense rows stay resident


def test_dense_base_choice():
    gqa = AsyncTLSConfig()
    assert dense_base_name(gqa, "cpu", is_mla=False) == "torch_native"
    assert dense_base_name(gqa, "cpu", is_mla=True) == "torch_native"
    try:
        import flashinfer  # noqa: F401
        want = "flashinfer"
    except ImportError:
        want = "triton"
    assert dense_base_name(gqa, "cuda:0", is_mla=False) == want
    # MLA: FlashInfer's MLA backend where FlashInfer is installed, for the latent shape measured
    # under asynctls (kv_lora_rank 512, rope 64); Triton's for others, or dims unknown
    assert dense_base_name(gqa, "cuda:0", is_mla=True, mla_dims=(512, 64)) == want
    assert dense_base_name(gqa, "cuda:0", is_mla=True, mla_dims=(256, 32)) == "triton"
    assert dense_base_name(gqa, "cuda:0", is_mla=True) == "triton"
    from types import SimpleNamespace

    from asynctls_sglang.adapter.backend import _mla_dims
    runner = SimpleNamespace(model_config=SimpleNamespace(kv_lora_rank=512, qk_rope_head_dim=64))
    assert _mla_dims(runner) == (512, 64) and _mla_dims(SimpleNamespace()) is None
    if want == "flashinfer":
        assert dense_base_name(AsyncTLSConfig(dense_backend="flashinfer"), "cuda:0", is_mla=True) == "flashinfer"
    assert dense_base_name(AsyncTLSConfig(dense_backend="triton"), "cuda:0", is_mla=False) == "triton"
    with pytest.raises(ConfigError, match="MLA models with offload use triton"):
        dense_base_name(AsyncTLSConfig(dense_backend="flashinfer", offload=True), "cuda:0", is_mla=True)
    # a GPU backend asked for on the CPU, or FlashInfer asked for where it is not installed
    for name in ("flashinfer", "triton"):
        with pytest.raises(ConfigError, match=f"dense-backend {name} needs a CUDA GPU"):
            dense_base_name(AsyncTLSConfig(dense_backend=name), "cpu", is_mla=False)
    if want == "triton":
        with pytest.raises(ConfigError, match="FlashInfer is not installed"):
            dense_base_name(AsyncTLSConfig(dense_backend="flashinfer"), "cuda:0", is_mla=False)
    # offload takes the same prefill kernels for GQA (its tables are swapped to device slots,
    # _device_tables), Triton's for MLA
    assert dense_base_name(AsyncTLSConfig(offload=True), "cuda:0", is_mla=False) == want
    assert dense_base_name(AsyncTLSConfig(offload=True), "cuda:0", is_mla=True, mla_dims=(512, 64)) == "triton"


def test_the_base_backend_plans_only_for_graphs_that_run_its_kernel():
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    backend = _backend(token_budget=256, dense_threshold=1000)

    def fb(lens, mode=ForwardMode.DECODE):
        return types.SimpleNamespace(seq_lens_cpu=torch.tensor(lens), forward_mode=mode)

    assert backend.asynctls_base_metadata_needed(fb([10, 900]), in_capture=False)  # dense graph
    assert not backend.asynctls_base_metadata_needed(fb([10, 5000]), in_capture=False)  # sparse graph
    assert backend.asynctls_base_metadata_needed(fb([10, 5000]), in_capture=True)  # every capture
    assert backend.asynctls_base_metadata_needed(fb([5000], ForwardMode.EXTEND), in_capture=False)
    # a replay view padded to the captured batch size (SGLang's fill length 1, num_padding rows):
    # the rows the runner picked its graph from decide, not the padded batch (the batch rule sums
    # lengths over the batch size: 4001 > 1000 x (2 + 2), while padded to 4 rows the bound is 6000)
    rule = _backend(token_budget=256, dense_threshold=100, dense_batch_tokens=1000)
    view = types.SimpleNamespace(seq_lens_cpu=torch.tensor([3301, 700, 1, 1]), num_padding=2,
                                 forward_mode=ForwardMode.DECODE)
    assert rule.asynctls_graph_mode_for(torch.tensor([3301, 700])) == "sparse"
    assert not rule.asynctls_base_metadata_needed(view, in_capture=False)
    view.seq_lens_cpu = torch.tensor([3300, 700, 1, 1])
    assert rule.asynctls_base_metadata_needed(view, in_capture=False)
    view.seq_lens_cpu, view.num_padding = torch.tensor([1, 1]), 2  # all padding: the sparse graph's rule
    assert not rule.asynctls_base_metadata_needed(view, in_capture=False)
    assert not rule.asynctls_dense_batch(torch.tensor([], dtype=torch.int64))
    offload = _backend(offload=True, token_budget=256, local_window=64)
    # one graph, and no row decodes on the base's kernel: only captures and prefills plan
    assert not offload.asynctls_base_metadata_needed(fb([5000]), in_capture=False)
    assert not offload.asynctls_base_metadata_needed(fb([100]), in_capture=False)
    assert offload.asynctls_base_metadata_needed(fb([100]), in_capture=True)
    assert offload.asynctls_base_metadata_needed(fb([5000], ForwardMode.EXTEND), in_capture=False)


def test_flashinfer_mla_base_plans_every_extend_paged():
    """dense_backend flashinfer on an MLA model: FlashInfer's MLA backend with each extend planned
    on its paged MLA wrapper (the absorbed extends that reach it cannot run on the ragged one,
    which stock SGLang picks for an extend without a prefix); decode planning is the stock one."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    from asynctls_sglang.adapter.backend import _flashinfer_mla_base

    calls = []
    recorder = types.SimpleNamespace(update=lambda *a, **kw: calls.append((a, kw)))
    cls = _flashinfer_mla_base()
    assert cls is _flashinfer_mla_base()  # one class (create_backend caches by base)
    backend = object.__new__(cls)
    backend.indices_updater_prefill = backend.indices_updater_decode = recorder
    backend.prefill_wrapper_paged, backend.decode_wrapper = "paged", "decode"
    lens = torch.tensor([70, 9])
    fb = types.SimpleNamespace(forward_mode=ForwardMode.EXTEND, req_pool_indices=torch.tensor([1, 2]),
                               seq_lens=lens, seq_lens_sum=79, extend_prefix_lens=torch.tensor([0, 0]),
                               extend_prefix_lens_cpu=[0, 0], spec_info=None)
    backend.init_forward_metadata(fb)
    assert calls[-1][1]["use_ragged"] is False and calls[-1][1]["prefill_wrapper_paged"] == "paged"
    assert backend.forward_metadata.use_ragged is False and backend.forward_metadata.prefill_wrapper == "paged"
    fb.forward_mode = ForwardMode.DECODE
    backend.init_forward_metadata(fb)
    assert calls[-1][1]["decode_wrapper"] == "decode" and backend.forward_metadata.decode_wrapper == "decode"
