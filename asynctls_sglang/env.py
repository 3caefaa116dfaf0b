"""Every ASYNCTLS_* environment variable the package reads, in one place.

SGLang spawns its scheduler processes: they inherit the environment, not the parent's Python
state, so settings that must reach every process travel as environment variables.
"""
from __future__ import annotations

import os

#: JSON object with AsyncTLSConfig fields (see asynctls_sglang.config); read in every process.
ASYNCTLS_CONFIG = "ASYNCTLS_CONFIG"
#: Where the embedded SmolLM2 model is converted to and cached (default ~/.cache/asynctls_sglang).
ASYNCTLS_CACHE_DIR = "ASYNCTLS_CACHE_DIR"
#: "1" forces the plain-torch ops even where a GPU and Triton are present (debugging).
ASYNCTLS_FORCE_TORCH_OPS = "ASYNCTLS_FORCE_TORCH_OPS"
#: Which decode ops the backend runs: "auto" (Triton kernels on a GPU, torch elsewhere), "torch",
#: or "triton" (the kernels also on the CPU, under TRITON_INTERPRET=1: slow; tests the kernel path
#: of the backend without a GPU).
ASYNCTLS_OPS = "ASYNCTLS_OPS"
OPS_CHOICES = ("auto", "torch", "triton")
#: Top-k kernel for calls that leave the choice to "auto": "resident" (row in registers) or
#: "stream" (the earlier streaming kernel). For A/B checks on a GPU without a code change.
ASYNCTLS_TOPK_METHOD = "ASYNCTLS_TOPK_METHOD"


def config_json() -> str | None:
    value = os.environ.get(ASYNCTLS_CONFIG)
    return value if value and value.strip() else None


def cache_dir() -> str:
    default = os.path.join(os.path.expanduser("~"), ".cache", "asynctls_sglang")
    return os.environ.get(ASYNCTLS_CACHE_DIR) or default


def force_torch_ops() -> bool:
    return os.environ.get(ASYNCTLS_FORCE_TORCH_OPS, "0") == "1" or ops_choice() == "torch"


def topk_method() -> str:
    return os.environ.get(ASYNCTLS_TOPK_METHOD, "auto").strip().lower() or "auto"


def ops_choice() -> str:
    value = os.environ.get(ASYNCTLS_OPS, "auto").strip().lower() or "auto"
    if value not in OPS_CHOICES:
        raise ValueError(f"{ASYNCTLS_OPS}={value!r}: expected one of {', '.join(OPS_CHOICES)}")
    return value


#: "1" times the offloading engine's copies and waits with CUDA events (eager decode only, i.e.
#: --disable-cuda-graph): transfer_ms / exposed_ms / hidden_fraction in the offload stats.
ASYNCTLS_OFFLOAD_TIMING = "ASYNCTLS_OFFLOAD_TIMING"


def offload_timing() -> bool:
    return os.environ.get(ASYNCTLS_OFFLOAD_TIMING, "0") == "1"


#: "1" (tests, off the GPU): the offloading engine's copy stream at its latest. Its work (plans,
#: copies) runs only when the compute side waits for it (memory.transfer.TransferEngine's defer),
#: so a read of the resident cache or its tables that misses its wait sees stale data, as a late
#: copy stream would show it on a GPU; on the CPU the streams otherwise run inline.
ASYNCTLS_DEFER_COPIES = "ASYNCTLS_DEFER_COPIES"


def defer_copies() -> bool:
    return os.environ.get(ASYNCTLS_DEFER_COPIES, "0") == "1"


#: "1" makes the backend use its fixed-shape (CUDA-graph) decode path in eager mode too, so the
#: graph path's selection logic runs (and is tested) on the CPU.
ASYNCTLS_FIXED_SHAPES = "ASYNCTLS_FIXED_SHAPES"


def fixed_shapes() -> bool:
    return os.environ.get(ASYNCTLS_FIXED_SHAPES, "0") == "1"


#: Attention kernel of the MLA prefill in the MHA form (adapter.mla_prefill): "auto" (FlashInfer's
#: ragged prefill on a GPU, torch's scaled_dot_product_attention there without flashinfer or when its
#: first call fails, with a warning; the plain torch loop on the CPU), "flashinfer", "sdpa",
#: "triton" (SGLang's Triton extend kernel) or "torch".
#: For A/B checks on a GPU.
ASYNCTLS_MLA_PREFILL_KERNEL = "ASYNCTLS_MLA_PREFILL_KERNEL"
MLA_PREFILL_KERNELS = ("auto", "sdpa", "triton", "flashinfer", "torch")


def mla_prefill_kernel() -> str:
    value = os.environ.get(ASYNCTLS_MLA_PREFILL_KERNEL, "auto").strip().lower() or "auto"
    if value not in MLA_PREFILL_KERNELS:
        raise ValueError(f"{ASYNCTLS_MLA_PREFILL_KERNEL}={value!r}: expected one of {', '.join(MLA_PREFILL_KERNELS)}")
    return value
