import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_dir):
    """The tiny models at the head dims the device's FlashInfer JIT cache holds (GPU_SHAPES)."""
    from tiny_models import GPU_SHAPES

    return lambda kind: tiny_model_dir(kind, **GPU_SHAPES.get(kind, {}))
