"""AsyncTLSConfig: the method's knobs as one frozen, validated dataclass.

Set through ``--asynctls-<field>`` flags of ``python -m asynctls_sglang.launch_server``
(dashes for underscores) or, for plain SGLang, through the ASYNCTLS_CONFIG environment
variable holding a JSON object of the same fields. Defaults are the paper's settings where it
gives one (block 64, 128 blocks, INT4 index keys, r = 32 for a 128-dim GQA head, 128 for MLA).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping

from asynctls_sglang import env

SELECTIONS = ("tls", "quest")
#: The default dense threshold's floor without offload (see AsyncTLSConfig.dense_threshold).
DENSE_FLOOR = 8192
#: The default batch rule without offload (see AsyncTLSConfig.dense_batch_tokens): a decode batch
#: of n requests whose lengths add up to at most DENSE_BATCH_PER_REQUEST x (n + 2) decodes densely
#: (51k at batch 1, 170k at batch 8). From the H200 runs of session 14 (Qwen3-8B, CUDA graphs,
#: docs/results.md): the sparse step is flat (7.0 ms at batch 1, 8.7 at batch 8), the dense one
#: (FlashInfer plus the index upkeep, 2-3% over FlashInfer alone) grows with the summed length;
#: they cross near 1 x 44k (dense 153.7 tok/s at 32k, sparse 142.9 at 48k) and 8 x 22.5k (dense
#: 910.7 against sparse 909). No (n + 2) multiple fits both: this one loses at most ~2% between them.
DENSE_BATCH_PER_REQUEST = 17408
#: The same for MLA models, by the dense base whose MLA decode the dense steps run (H200,
#: DeepSeek-V2-Lite, CUDA graphs, session 15, docs/results.md). The sparse step is flat (5.7 ms at
#: batch 1, 9.8-10.2 at batch 8). FlashInfer's MLA decode crosses it near 1 x 118k (5.76 ms at
#: 1 x 128k) and 8 x 48k (9.04 / 10.52 ms at 8 x 32k / 64k): 38912 x (n + 2) is within ~1% of both.
#: SGLang's Triton MLA decode (the default base) was slower than sparse at 1 x 32k (6.18 ms) and
#: faster at 8 x 4k (9.27 ms): 8192 x (n + 2) sends the first sparse and the second dense.
DENSE_BATCH_PER_REQUEST_MLA = {"flashinfer": 38912, "triton": 8192}
DENSE_BACKENDS = ("auto", "torch_native", "triton", "flashinfer")
MLA_PREFILLS = ("auto", "mha", "absorbed")
TOKEN_HEADS = ("max", "mean")


class ConfigError(ValueError):
    """A bad AsyncTLS setting; the message names the field (and its CLI flag)."""


def flag_name(field: str) -> str:
    return "--asynctls-" + field.replace("_", "-")


def _fail(field: str, message: str) -> None:
    raise ConfigError(f"AsyncTLS setting '{field}' ({flag_name(field)}): {message}")


@dataclass(frozen=True)
class AsyncTLSConfig:
    #: Tokens per block (level-1 granularity); also SGLang's KV page size. Power of two.
    block_size: int = 64
    #: k_b: blocks kept by the coarse filter per request and KV head.
    block_budget: int = 128
    #: k_t: tokens attended per request and KV head, sink and local window included.
    token_budget: int = 2048
    #: r: index channels for the token-level scores. None: 128 for MLA; for GQA head_dim // 4 (the
    #: paper's 32 of 128) but at least 32 (at most head_dim): 16 of 64 lost RULER needles (docs/results.md).
    index_channels: int | None = None
    #: Bits per quantised index-key channel (only 4 is implemented).
    index_bits: int = 4
    #: The first tokens of every request, always attended.
    sink_tokens: int = 16
    #: The most recent tokens (the new one included), always attended.
    local_window: int = 64
    #: Requests whose length is at most this decode densely, exactly as the stock backend.
    #: None: max(token_budget, DENSE_FLOOR) without offload (up to ~8k tokens the stock kernel is
    #: cheaper than the selection at any batch size: docs/results.md), the token budget with
    #: offload (a dense row must keep all its blocks resident). Under CUDA graphs a batch whose
    #: requests are all at or under it replays the stock kernel's graph (patches.graph_variants).
    dense_threshold: int | None = None
    #: The batch rule: a decode batch of n requests whose lengths add up to at most
    #: dense_batch_tokens x (n + 2) decodes whole on the stock kernel (a few long requests: the
    #: selection's fixed cost per step is more than the stock kernel's reads). None:
    #: DENSE_BATCH_PER_REQUEST (DENSE_BATCH_PER_REQUEST_MLA[dense base] for MLA models) when
    #: dense_threshold is None and offload is off, else 0 (off).
    dense_batch_tokens: int | None = None
    #: "tls": two-level (blocks, then tokens). "quest": block-only baseline that attends all
    #: tokens of the top token_budget // block_size blocks (same number of attended tokens).
    selection: str = "tls"
    #: How the approximate token scores of a KV group's query heads combine before the one token
    #: top-k of the group: "max" (a token counts as much as the head that scores it highest) or
    #: "mean" (the paper's group average). "max" keeps what a single retrieval head attends to,
    #: which a group average of its siblings' diffuse scores drops (docs/results.md: RULER).
    token_heads: str = "max"
    #: Prefill tokens (per layer) whose queries and keys calibrate the index channels; the first
    #: prefill of at least this many tokens (or the first of any length, if none is) fixes them.
    calibration_tokens: int = 256
    #: Dense kernel set for prefill and short decodes: "torch_native", "triton", "flashinfer"
    #: (GQA), or "auto" = torch_native on CPU; on GPU flashinfer for GQA models when it is
    #: installed (what SGLang itself runs there; with offload too), else triton.
    dense_backend: str = "auto"
    #: How MLA models (DeepSeek-V2/V3, GLM-4.7-Flash) prefill: "mha" expands the latent keys and
    #: values per head (what SGLang's FlashInfer and FA3 MLA paths do, about 3.4x fewer FLOPs than
    #: the latent form at long prompts), "absorbed" attends over the 576-dim latent rows (MQA),
    #: "auto" = mha when the dense base is triton (a GPU), absorbed on torch_native (the CPU).
    #: Either way the pool keeps the latent rows and the index is built from them.
    mla_prefill: str = "auto"
    #: Keep the full KV of every layer in pinned host memory and only a resident cache of
    #: blocks on the GPU (the asynchronous offloading engine; docs/offload.md).
    offload: bool = False
    #: Resident blocks per request, layer and KV head on the GPU (the cache the selected blocks are
    #: copied into). None: 2 * block_budget + the pinned sink/local blocks.
    resident_blocks: int | None = None
    #: Host pool size in tokens (every layer's K/V of that many tokens, pinned). None: 4x the KV
    #: the GPU holds (device pool + resident buffers), capped at 70% of the available host memory
    #: (adapter.allocator.logical_tokens).
    host_pool_tokens: int | None = None
    #: Steps by which the coarse block selection runs ahead of the attention that reads its
    #: blocks: 1 = the paper's pipeline (late blocks are replaced by resident ones and counted),
    #: 0 = fetch the misses before the attention of the same step (never late, not overlapped).
    prefetch_depth: int = 1
    #: Host->device block copies per request, layer and KV head per step at most; misses past it
    #: are counted as overflow and fetched at a later step.
    max_miss_blocks_per_step: int = 32
    #: Programs (thread blocks) of each host->device copy launch. The copy is bound by PCIe, not
    #: by the SMs it holds; fewer programs leave more of the GPU to the model's kernels that run
    #: beside it, too few cannot keep enough reads in flight to fill the link. H200, Qwen3-8B
    #: 8 x 64k / 8 x 128k with a miss cap of 4: 16 programs took the offload step from +16% / +19%
    #: to +11% / +11% over no offload at the same bytes and copy time as 32 (docs/results.md,
    #: session 20); GLM-4.7-Flash 6 x 96k: 12.78 ms a step against 12.89 with 32.
    copy_programs: int = 16

    def __post_init__(self) -> None:
        for name in ("block_size", "block_budget", "token_budget", "index_bits", "calibration_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                _fail(name, f"must be a positive integer, got {value!r}")
        for name in ("sink_tokens", "local_window", "dense_threshold", "dense_batch_tokens"):
            value = getattr(self, name)
            if name in ("dense_threshold", "dense_batch_tokens") and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                _fail(name, f"must be a non-negative integer, got {value!r}")
        if self.block_size & (self.block_size - 1):
            _fail("block_size", f"must be a power of two, got {self.block_size}")
        if self.index_channels is not None:
            if not isinstance(self.index_channels, int) or isinstance(self.index_channels, bool) \
                    or self.index_channels <= 0 or self.index_channels % 2:
                _fail("index_channels", f"must be a positive even integer, got {self.index_channels!r}")
        if self.index_bits != 4:
            _fail("index_bits", f"only 4-bit index keys are implemented, got {self.index_bits}")
        if self.token_budget > self.block_budget * self.block_size:
            _fail("token_budget", f"{self.token_budget} tokens cannot come from {self.block_budget} blocks of "
                  f"{self.block_size} tokens ({self.block_budget * self.block_size} at most); raise "
                  f"{flag_name('block_budget')} or lower the token budget")
        if self.sink_tokens + self.local_window >= self.token_budget:
            _fail("token_budget", f"must exceed sink_tokens + local_window "
                  f"({self.sink_tokens} + {self.local_window}), got {self.token_budget}")
        if self.token_heads not in TOKEN_HEADS:
            _fail("token_heads", f"must be one of {TOKEN_HEADS}, got {self.token_heads!r}")
        if self.selection not in SELECTIONS:
            _fail("selection", f"must be one of {SELECTIONS}, got {self.selection!r}")
        if self.selection == "quest" and self.token_budget % self.block_size:
            _fail("token_budget", f"with selection 'quest' it must be a multiple of block_size "
                  f"({self.block_size}), got {self.token_budget}")
        if self.dense_backend not in DENSE_BACKENDS:
            _fail("dense_backend", f"must be one of {DENSE_BACKENDS}, got {self.dense_backend!r}")
        if self.mla_prefill not in MLA_PREFILLS:
            _fail("mla_prefill", f"must be one of {MLA_PREFILLS}, got {self.mla_prefill!r}")
        self._validate_offload()

    def _validate_offload(self) -> None:
        if not isinstance(self.offload, bool):
            _fail("offload", f"must be true or false, got {self.offload!r}")
        for name in ("resident_blocks", "host_pool_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                _fail(name, f"must be a positive integer or None (auto), got {value!r}")
        for name in ("max_miss_blocks_per_step", "copy_programs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                _fail(name, f"must be a positive integer, got {value!r}")
        if self.prefetch_depth not in (0, 1) or isinstance(self.prefetch_depth, bool):
            _fail("prefetch_depth", f"only 0 (fetch before attention) and 1 (one step ahead) are "
                  f"implemented, got {self.prefetch_depth!r}")
        if self.offload and self.dense_batch_tokens:
            _fail("dense_batch_tokens", "has no effect with offload (every decode row reads the resident cache); "
                  "leave it unset or 0")
        if self.offload and self.local_window < 1:
            _fail("local_window", "must be at least 1 with offload (the open block of each request is read "
                  "from the device pool as part of its local window)")
        need = self.needed_blocks
        if self.resident_blocks is not None and self.resident_blocks < need:
            _fail("resident_blocks", f"must hold the selected blocks plus the pinned sink/local blocks "
                  f"({self.attended_blocks} + {self.pinned_blocks} = {need}), got {self.resident_blocks}; "
                  f"raise it or lower {flag_name('block_budget')} (or {flag_name('dense_threshold')})")
        if self.host_pool_tokens is not None and self.host_pool_tokens % self.block_size:
            _fail("host_pool_tokens", f"must be a multiple of block_size ({self.block_size}), got "
                  f"{self.host_pool_tokens}")

    # derived values ---------------------------------------------------------------------------
    @property
    def selected_tokens(self) -> int:
        """Tokens chosen by score (the budget less the always-kept sink and local tokens)."""
        return self.token_budget - self.sink_tokens - self.local_window

    @property
    def dense_len(self) -> int:
        """The effective dense threshold (dense_threshold, or its default when None)."""
        if self.dense_threshold is not None:
            return self.dense_threshold
        return self.token_budget if self.offload else max(self.token_budget, DENSE_FLOOR)

    def dense_batch_len(self, bs: int, mla_base: str | None = None) -> int:
        """The batch rule's bound on a decode batch's summed lengths (0: the rule is off).
        mla_base: an MLA model's dense base (dense_base_name), None for GQA/MHA models."""
        per_request = self.dense_batch_tokens
        if per_request is None:
            default = DENSE_BATCH_PER_REQUEST_MLA.get(mla_base, DENSE_BATCH_PER_REQUEST)  # None: GQA/MHA
            per_request = default if self.dense_threshold is None and not self.offload else 0
        return per_request * (bs + 2)

    @property
    def quest_blocks(self) -> int:
        return self.token_budget // self.block_size

    @property
    def selected_blocks(self) -> int:
        """Blocks the coarse selection picks per request and KV head (k_b, or Quest's count)."""
        return self.quest_blocks if self.selection == "quest" else self.block_budget

    @property
    def pinned_blocks(self) -> int:
        """Blocks that can hold sink or local-window tokens (kept resident, never evicted)."""
        b = self.block_size
        return -(-self.sink_tokens // b) + (-(-self.local_window // b) + 1 if self.local_window else 0)

    @property
    def attended_blocks(self) -> int:
        """Blocks one decode step may attend outside the pinned ones: the selection's, or every
        block of a request at the dense threshold (dense rows read all their blocks)."""
        return max(self.selected_blocks, -(-self.dense_len // self.block_size))

    @property
    def needed_blocks(self) -> int:
        """Blocks one step may need resident per request and KV head: attended + pinned."""
        return self.attended_blocks + self.pinned_blocks

    @property
    def resident_capacity(self) -> int:
        """Resident block slots per request, layer and KV head (resident_blocks or its default)."""
        if self.resident_blocks is not None:
            return self.resident_blocks
        return 2 * self.attended_blocks + self.pinned_blocks

    #: Settings of the offloading engine alone: without offload nothing reads them.
    OFFLOAD_FIELDS = ("resident_blocks", "host_pool_tokens", "prefetch_depth", "max_miss_blocks_per_step",
                      "copy_programs")

    def ignored_offload_settings(self) -> list[str]:
        """The offload-only settings set away from their defaults while offload is off (they do
        nothing then: the launcher warns, naming their flags)."""
        if self.offload:
            return []
        defaults = type(self)()
        return [name for name in self.OFFLOAD_FIELDS if getattr(self, name) != getattr(defaults, name)]

    def channels_for(self, head_dim: int, is_mla: bool) -> int:
        """r for a model whose (latent) key has head_dim channels; raises if impossible."""
        r = self.index_channels
        if r is None:
            r = min(128, head_dim) if is_mla else min(head_dim, max(32, head_dim // 4))
            r -= r % 2
        if r > head_dim:
            _fail("index_channels", f"r = {r} is larger than the key head dim ({head_dim}) of this model")
        return r

    # construction ------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "AsyncTLSConfig":
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(f"unknown AsyncTLS setting(s) {unknown}; known: {list(cls.field_names())}")
        return cls(**dict(values))

    @classmethod
    def from_json(cls, text: str, source: str = env.ASYNCTLS_CONFIG) -> "AsyncTLSConfig":
        """The config of a JSON object of fields; errors name `source` (where the text came from)."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source} is not valid JSON: {exc}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{source} must hold a JSON object, got {type(values).__name__}")
        return cls.from_dict(values)

    @classmethod
    def from_env(cls) -> "AsyncTLSConfig":
        text = env.config_json()
        return cls.from_json(text) if text else cls()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def replace(self, **changes: Any) -> "AsyncTLSConfig":
        return dataclasses.replace(self, **changes)
