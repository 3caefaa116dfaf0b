"""The tiny test models' config overrides (the GPU tests' head dims, tiny_models.GPU_SHAPES)."""
from __future__ import annotations

import json
import os

import pytest
from tiny_models import CONFIGS, GPU_SHAPES, write_tiny_model


def test_gpu_shapes_name_fields_of_each_config():
    for kind, fields in GPU_SHAPES.items():
        assert set(fields) <= set(CONFIGS[kind]()), kind


def test_overrides_land_in_the_written_config_and_unknown_fields_fail(tmp_path):
    path = write_tiny_model("qwen3", str(tmp_path / "q"), **GPU_SHAPES["qwen3"])
    cfg = json.load(open(os.path.join(path, "config.json")))
    assert cfg["head_dim"] == 128 and cfg["num_attention_heads"] == CONFIGS["qwen3"]()["num_attention_heads"]
    with pytest.raises(KeyError, match="head_dimm"):
        write_tiny_model("qwen3", str(tmp_path / "bad"), head_dimm=128)


def test_the_gpu_fixture_keeps_cpu_models_apart(tiny_model_dir):
    assert tiny_model_dir("qwen3") != tiny_model_dir("qwen3", head_dim=128)
