"""During an offload prefill SGLang's dense kernels must read device slots: the request table
the torch backend reads (req_to_token_pool), the one SGLang's Triton backend caches at
construction (req_to_token), and the one FlashInfer's prefill planner caches
(indices_updater_prefill.req_to_token). On the H200 only the first was swapped at first, so the
Triton prefill read prefix K/V at logical slot ids."""
import inspect
from types import SimpleNamespace

import torch

from asynctls_sglang.adapter.offload import OffloadDecodeMixin


class _Backend(OffloadDecodeMixin):
    def __init__(self, cached_table: bool, flashinfer: bool = False) -> None:
        self.logical = torch.tensor([[200000, 200001]])
        self.req_to_token_pool = SimpleNamespace(req_to_token=self.logical, size=1)
        if cached_table:
            self.req_to_token = self.logical
        if flashinfer:
            self.indices_updater_prefill = SimpleNamespace(req_to_token=self.logical)
        self._extend_table = torch.tensor([[64, 65]])


def test_prefill_tables_hold_device_slots_for_the_triton_and_torch_backends():
    b = _Backend(cached_table=True)
    with b._device_tables():
        assert torch.equal(b.req_to_token_pool.req_to_token, b._extend_table)
        assert b.req_to_token is b._extend_table
        assert b.req_to_token_pool.size == 1  # everything else is the real pool's
    assert b.req_to_token is b.logical and b.req_to_token_pool.req_to_token is b.logical


def test_backend_without_a_cached_table_and_decode_batches():
    b = _Backend(cached_table=False)
    with b._device_tables():
        assert torch.equal(b.req_to_token_pool.req_to_token, b._extend_table)
    assert not hasattr(b, "req_to_token")
    b._extend_table = None  # no prefill: nothing swapped
    with b._device_tables():
        assert b.req_to_token_pool.req_to_token is b.logical


def test_flashinfer_prefill_planner_reads_device_slots():
    b = _Backend(cached_table=False, flashinfer=True)
    with b._device_tables():
        assert b.indices_updater_prefill.req_to_token is b._extend_table
    assert b.indices_updater_prefill.req_to_token is b.logical
    b._extend_table = None
    with b._device_tables():
        assert b.indices_updater_prefill.req_to_token is b.logical


def test_sglang_flashinfer_backend_caches_the_table_where_the_swap_looks():
    from sglang.srt.layers.attention import flashinfer_backend as fi

    # the planner builds the prefill's kv_indices from its own req_to_token attribute
    assert "self.req_to_token = model_runner.req_to_token_pool.req_to_token" in \
        inspect.getsource(fi.FlashInferIndicesUpdaterPrefill.__init__)
    assert "self.indices_updater_prefill = FlashInferIndicesUpdaterPrefill(" in \
        inspect.getsource(fi.FlashInferAttnBackend.__init__)
