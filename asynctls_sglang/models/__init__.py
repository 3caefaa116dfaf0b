"""Models the package embeds for tests and accuracy runs (no model hub needed).

Attributes load lazily, so `python -m asynctls_sglang.models.smollm2` runs without a warning.
"""
from __future__ import annotations

from typing import Any

__all__ = ["SMOLLM2_NAME", "ensure_smollm2"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from asynctls_sglang.models import smollm2

        return getattr(smollm2, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
