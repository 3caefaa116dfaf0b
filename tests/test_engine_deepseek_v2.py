"""asynctls on a tiny DeepSeek-V2 (MLA, latent 512 + rope 64) through SGLang's real engine."""
import pytest

from mla_cases import check_model

pytestmark = pytest.mark.engine


def test_deepseek_v2_exact_and_sparse(tiny_model_dir):
    check_model(tiny_model_dir("deepseek_v2"))
