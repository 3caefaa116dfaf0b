"""Plain-torch stand-in for the CPU build of sgl-kernel (none on PyPI; its CPU ops need AMX).

SGLang 0.5.17's CPU engine imports a few sgl_kernel names at module load; only
``assign_req_to_token_pool_cpu`` is called in plain serving (every step). Every other name
resolves to a function that raises when called, so imports succeed and misuse is loud.
Installed only into the CPU-only venv (scripts/install.sh), never on a GPU machine.
"""
import torch

__version__ = "0.0.0+asynctls-cpu-stub"


def assign_req_to_token_pool_cpu(req_pool_indices, req_to_token, start_offset, end_offset,
                                 out_cache_loc, pool_len=None):
    """req_to_token[req[i], start[i]:end[i]] = the next end[i]-start[i] entries of out_cache_loc."""
    pos = 0
    for row, start, end in zip(req_pool_indices.tolist(), start_offset.tolist(), end_offset.tolist()):
        n = end - start
        if n > 0:
            req_to_token[row, start:end] = out_cache_loc[pos:pos + n].to(req_to_token.dtype)
        pos += n


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def unavailable(*args, **kwargs):
        raise NotImplementedError(f"sgl_kernel.{name} has no CPU stand-in (cpu_support/sgl_kernel)")

    unavailable.__name__ = name
    return unavailable
