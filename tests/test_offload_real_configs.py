"""benchmarks/offload_real.py's --configs: K:kb with an optional copy cap, bad items named."""
from __future__ import annotations

import pytest


def test_configs_take_an_optional_copy_cap(offload_real):
    assert offload_real.parse_configs("512:128,512:32:2") == [(512, 128, None), (512, 32, 2)]


@pytest.mark.parametrize("bad", ["512", "512:x", "512:32:2:1", "512:32:"])
def test_a_bad_config_stops_with_its_name(offload_real, bad):
    with pytest.raises(SystemExit, match=f"'{bad}' is not K:kb or K:kb:cap"):
        offload_real.parse_configs(f"512:32,{bad}")
