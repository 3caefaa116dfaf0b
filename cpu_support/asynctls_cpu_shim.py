"""Start-up shim for the CPU-only virtual environment that scripts/install.sh builds.

Loaded by the ``asynctls_cpu.pth`` file that the installer writes into the venv's
site-packages, so it runs in every interpreter of that venv, SGLang's spawned scheduler and
detokenizer included. It does two things and imports nothing heavy:

1. ``SGLANG_USE_CPU_ENGINE=1`` (unless already set): without it SGLang 0.5.17 takes a code
   path that imports vllm. This venv has no CUDA, so the CPU engine is the only one.
2. PyPI's torchvision wheel is a CUDA build; on torch+cpu its import fails because the
   ``torchvision::nms``/``qnms`` operator schemas it registers fake kernels for do not exist.
   SGLang imports torchvision unconditionally. When (and only when) torchvision is first
   imported, define those two schemas so its pure-Python part loads.

``cpu_support/sgl_kernel`` (on sys.path through the same .pth file) is the other half: the
few CPU ops of sgl-kernel that SGLang's CPU engine imports, in plain torch.
"""
import importlib.abc
import os
import sys

os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")


class _DefineTorchvisionOps(importlib.abc.MetaPathFinder):
    done = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision" or _DefineTorchvisionOps.done:
            return None
        _DefineTorchvisionOps.done = True
        try:
            import torch

            if torch.version.cuda is None:
                lib = torch.library.Library("torchvision", "DEF")
                for op in ("nms", "qnms"):
                    lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                _DefineTorchvisionOps.lib = lib  # the library object must stay alive
        except Exception as exc:  # never break interpreter start-up
            print(f"asynctls_cpu_shim: torchvision op schemas not defined: {exc!r}", file=sys.stderr)
        return None


sys.meta_path.insert(0, _DefineTorchvisionOps())
