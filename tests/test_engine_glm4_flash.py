"""asynctls on a tiny GLM-4.7-Flash architecture (Glm4MoeLite: MLA with a q LoRA, as the real
model, + MoE) through SGLang: token-identical to the stock backend, then sparse."""
import pytest

from mla_cases import check_model

pytestmark = pytest.mark.engine


def test_glm4_moe_lite_exact_and_sparse(tiny_model_dir):
    check_model(tiny_model_dir("glm4_moe_lite"))
