"""HostKVTier: every layer's K/V of every logical block, in (pinned) host memory.

Layout per layer, token-major like SGLang's device pools so blocks copy as whole row ranges:
GQA K [blocks * B, Hk, D] and V [blocks * B, Hk, Dv]; MLA one latent [blocks * B, 1, 576]
(v is None). Logical block b holds tokens b*B .. b*B + B - 1. Blocks are written through from
the device when they complete (write_through) and read back by the TransferEngine.
"""
from __future__ import annotations

import weakref
from typing import Sequence

import torch

from asynctls_sglang.config import flag_name
from asynctls_sglang.memory.block_copy import copy_blocks
from asynctls_sglang.memory.streams import LayerEvents, SideStream

GIB = float(1 << 30)


class HostMemoryError(RuntimeError):
    """The host pool cannot be allocated or pinned; the message says how big it was and what to lower."""


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_available() -> int | None:
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def available_host_bytes() -> int | None:
    """Host memory this process may still take: psutil's (or /proc/meminfo's) available memory,
    bounded by the cgroup v2 limit when there is one. None when nothing can be read."""
    try:
        import psutil

        avail: int | None = int(psutil.virtual_memory().available)
    except ImportError:
        avail = _meminfo_available()
    cgroup = _cgroup_available()
    if avail is None:
        return cgroup
    return avail if cgroup is None else min(avail, cgroup)


#: cudaHostRegisterPortable | cudaHostRegisterMapped: every context sees the pages, and they have a
#: device address (the UVA gather of kernels.common.gather_host reads through it)
_REGISTER_FLAGS = 1 | 2


def _register(t: torch.Tensor) -> None:
    """Page-lock t's memory in place."""
    err = int(torch.cuda.cudart().cudaHostRegister(t.data_ptr(), t.numel() * t.element_size(), _REGISTER_FLAGS))
    if err != 0:
        raise RuntimeError(f"cudaHostRegister failed with CUDA error {err}")


def _unregister_all(ptrs: list[int]) -> None:
    while ptrs:
        torch.cuda.cudart().cudaHostUnregister(ptrs.pop())


def check_host_fits(tokens: int, num_layers: int, block_size: int, block_bytes: int, pinned: bool,
                    max_fraction: float = 0.9) -> None:
    """Raise HostMemoryError when a host pool of `tokens` (num_layers x block_bytes per block) would
    take more than max_fraction of the available host memory. Allocates nothing."""
    need = tokens // block_size * block_bytes * num_layers
    avail = available_host_bytes()
    if avail is not None and need > max_fraction * avail:
        raise HostMemoryError(
            f"asynctls offload: the host KV pool of {tokens} tokens ({num_layers} layers x {block_bytes} bytes "
            f"per {block_size}-token block) needs {need / GIB:.2f} GiB of {'pinned ' if pinned else ''}host "
            f"memory, but only {avail / GIB:.2f} GiB is available ({max_fraction:.0%} may be used); lower "
            f"{flag_name('host_pool_tokens')} or free host memory")


class HostKVTier:
    def __init__(self, *, num_layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                 v_head_dim: int | None, dtype: torch.dtype, device: torch.device | str = "cpu",
                 pin: bool | None = None, max_fraction: float = 0.9) -> None:
        """v_head_dim None: MLA (one latent buffer of head_dim channels, kv_heads must be 1).
        `device` is the compute device the tier serves; pin None = pin when it is a CUDA device.
        Raises HostMemoryError, before allocating, when the pool exceeds max_fraction of the
        available host memory, and when allocation or pinning fails."""
        if v_head_dim is None and kv_heads != 1:
            raise ValueError("HostKVTier: the MLA latent buffer has one KV head")
        self.num_layers, self.num_blocks, self.block_size = num_layers, num_blocks, block_size
        self.kv_heads, self.head_dim, self.v_head_dim = kv_heads, head_dim, v_head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        self.pinned = (self.device.type == "cuda" and torch.cuda.is_available()) if pin is None else pin
        self._check_fits(max_fraction)
        self._registered: list[int] = []
        self._finalizer = weakref.finalize(self, _unregister_all, self._registered)
        self._finalizer.atexit = False  # at exit the process's pages go anyway (CUDA may be torn down)
        tokens = num_blocks * block_size
        self.k = [self._alloc((tokens, kv_heads, head_dim)) for _ in range(num_layers)]
        self.v = None if v_head_dim is None else [self._alloc((tokens, kv_heads, v_head_dim))
                                                  for _ in range(num_layers)]
        self.write_stream = SideStream("host_write", self.device)
        self.written = LayerEvents(1, self.device)

    # sizing -------------------------------------------------------------------------------------
    @property
    def is_mla(self) -> bool:
        return self.v_head_dim is None

    @property
    def block_bytes(self) -> int:
        """Bytes of one block of one layer (K and V, all KV heads)."""
        channels = self.head_dim + (self.v_head_dim or 0)
        return self.block_size * self.kv_heads * channels * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.block_bytes * self.num_blocks * self.num_layers

    def _check_fits(self, max_fraction: float) -> None:
        check_host_fits(self.num_blocks * self.block_size, self.num_layers, self.block_size, self.block_bytes,
                        self.pinned, max_fraction)

    def _alloc(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A host buffer of exactly `shape`. Pinned buffers are page-locked in place
        (cudaHostRegister): torch's pinned allocator rounds every request up to a power of two,
        so 1.23 GB per layer took 2 GiB and a pool checked at 87 GB locked 144 GB (the H200 host
        killed the scheduler)."""
        try:
            t = torch.empty(shape, dtype=self.dtype)
            if self.pinned:
                _register(t)
                self._registered.append(t.data_ptr())
            return t
        except RuntimeError as exc:
            raise HostMemoryError(
                f"asynctls offload: could not {'pin' if self.pinned else 'allocate'} a host KV buffer of "
                f"{torch.Size(shape).numel() * self.dtype.itemsize / GIB:.2f} GiB "
                f"(pool total {self.nbytes / GIB:.2f} GiB; locked-memory limit: ulimit -l, container "
                f"memory: cgroup); lower {flag_name('host_pool_tokens')}. Cause: {exc}") from exc

    def close(self) -> None:
        """Unlock the pinned buffers (the tier is unusable after)."""
        self._finalizer()

    # write-through ------------------------------------------------------------------------------
    def write_through(self, dev_k: Sequence[torch.Tensor], dev_v: Sequence[torch.Tensor] | None,
                      src_block: torch.Tensor, dst_block: torch.Tensor, count: torch.Tensor) -> None:
        """Copy completed blocks of every layer from the device pool to this tier.

        dev_k / dev_v: per-layer device buffers [slots, Hk, D] / [slots, Hk, Dv] (dev_v None for
        MLA); src_block [P] device page ids, dst_block [P] logical (host) block ids, -1 = skip;
        count [1] live entries. Bit-exact. Returns at once on a GPU (the copies run on the
        host_write stream); call wait_written() before a dependent read of the tier.
        """
        # NOTE: the write stream first waits for the caller's stream, so every K/V write the
        # caller issued before this call (the forward that completed these blocks) is in place
        # before the copy reads it.
        self.write_stream.fork()
        with self.write_stream.active():
            for layer in range(self.num_layers):
                pair = (dev_v[layer], self.v[layer]) if self.v is not None and dev_v is not None else None
                copy_blocks(dev_k[layer], self.k[layer], src_block, dst_block, count, self.block_size, pair=pair)
        # NOTE: the block ids are the caller's temporaries; without this the next allocations on
        # the forward stream (demote's, right after a prefill) reuse and overwrite them while these
        # copies still read them: out-of-range block ids, an illegal memory access on the H200
        self.write_stream.keep_alive(src_block, dst_block, count)
        self.written.record(0, self.write_stream)

    def wait_written(self) -> None:
        """The current stream waits for the last write_through.

        NOTE: two users must call this: the copy stream of the TransferEngine before gathering
        (a block is read from the host only after its write-through landed), and the forward
        stream before the device pages that were written through can be freed and rewritten.
        """
        self.written.wait(0)

    # reads (tests, debugging; not the hot path) ----------------------------------------------------
    def blocks(self, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Views [blocks, B, Hk, D] (and [blocks, B, Hk, Dv] or None) of one layer."""
        b = self.block_size
        k = self.k[layer].view(self.num_blocks, b, self.kv_heads, self.head_dim)
        v = None if self.v is None else self.v[layer].view(self.num_blocks, b, self.kv_heads, -1)
        return k, v
