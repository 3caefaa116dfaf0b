"""Small helpers shared by the adapter and the patches (no sglang import)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def swapped_attr(obj: Any, name: str, value: Any) -> Iterator[None]:
    """``obj.name = value`` inside the block, the previous value restored after (also on error)."""
    saved = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, saved)
