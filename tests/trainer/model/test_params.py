"""trainer.model.params: the analytic parameter count equals the real models' and the paper's
Table 2 sizes (Fast-ELECTRA, arXiv 2310.07347).
"""

import pytest
import torch

from tests.trainer.model.helpers import VARIANTS
from trainer.config.load import build_config
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import Discriminator, MLMModel
from trainer.model.params import count_parameters

pytestmark = pytest.mark.usefixtures("one_thread")

# --- sizes (Fast-ELECTRA, arXiv 2310.07347, Table 2) --------------------------------------------

TABLE2 = {  # vocab 128K SentencePiece, 512 tokens
    "base": dict(model=dict(num_layers=12, hidden_size=768, ffn_size=3072, num_heads=12,
                            rel_num_buckets=32, rel_max_distance=128),
                 aux_layers=4, main=184e6, aux=127e6, embeddings=98e6),
    "large": dict(model=dict(num_layers=24, hidden_size=1024, ffn_size=4096, num_heads=16,
                             rel_num_buckets=128, rel_max_distance=256),
                  aux_layers=6, main=434e6, aux=208e6, embeddings=131e6),
}


def _table2_configs(size):
    spec = TABLE2[size]
    run = build_config({"tokenizer": {"vocab_size": 128_000}, "data": {"max_seq_len": 512},
                        "model": spec["model"], "aux": {"num_layers": spec["aux_layers"]}})
    return EncoderConfig.main(run), EncoderConfig.aux(run)


@pytest.mark.parametrize("name", VARIANTS)
def test_analytic_count_equals_real_model(name):
    cfg = VARIANTS[name]
    for model, head in ((Discriminator(cfg), "rtd"), (MLMModel(cfg), "mlm")):
        n = count_parameters(cfg, head)
        assert model.num_parameters() == sum(p.numel() for p in model.parameters()) == n["total"]
        assert model.num_parameters(exclude_embeddings=True) == n["total"] - n["embeddings"]
        assert sum(p.numel() for p in model.encoder.parameters()) == n["encoder"]


@pytest.mark.parametrize("size", TABLE2)
def test_table2_parameter_counts(size):
    spec = TABLE2[size]
    main_cfg, aux_cfg = _table2_configs(size)
    main, aux = count_parameters(main_cfg, "rtd"), count_parameters(aux_cfg, "mlm")
    assert main["total"] == pytest.approx(spec["main"], rel=0.02)
    assert aux["total"] == pytest.approx(spec["aux"], rel=0.02)
    assert main["embeddings"] == aux["embeddings"] == pytest.approx(spec["embeddings"], rel=0.02)
    # The real modules, built on the meta device (no memory, no init), have the same counts.
    with torch.device("meta"):
        disc, gen = Discriminator(main_cfg), MLMModel(aux_cfg)
    assert disc.num_parameters() == main["total"]
    assert gen.num_parameters() == aux["total"]
    assert disc.num_parameters() - disc.num_parameters(True) == main["embeddings"]
