import importlib.util
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # torch.compile of MoE layers costs 8-18 s on CPU


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tiny_models import write_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")

    def get(kind: str, **overrides) -> str:
        name = "_".join([kind] + [f"{k}{v}" for k, v in sorted(overrides.items())])
        return write_tiny_model(kind, str(root / name), **overrides)

    return get


def _benchmark(name: str):
    """benchmarks/<name>.py as a module (GPU scripts; their bookkeeping is tested on the CPU)."""
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def e2e_bench():
    return _benchmark("e2e_bench")


@pytest.fixture(scope="session")
def fixed_memory_sweep():
    return _benchmark("fixed_memory_sweep")


@pytest.fixture(scope="session")
def offload_real():
    return _benchmark("offload_real")
