"""fast-electra cost: hand-computed FLOPs and memory of a tiny config, the relations between the
designs, the base/large figures against what the Fast-ELECTRA paper reports, and the CLI."""

import json
from pathlib import Path

import pytest

from trainer.config.load import build_config, load_config
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import Discriminator
from trainer.model.params import count_parameters
from trainer.tools.cost import estimate, forward_flops, main, model_flops

# S = seq_len, D = hidden, V = vocab, F = ffn, h = heads, L = main layers, La = aux layers
S, D, V, F, HEADS, L, LA, B, MASK = 16, 32, 300, 64, 4, 2, 1, 8, 0.25
TINY = {
    "data": {"max_seq_len": S},
    "tokenizer": {"vocab_size": V},
    "model": {"num_layers": L, "hidden_size": D, "num_heads": HEADS, "ffn_size": F,
              "rel_num_buckets": 8, "rel_max_distance": 16},
    "aux": {"num_layers": LA},
    "corruption": {"mask_prob": MASK},
    "train": {"global_batch_size": B, "micro_batch_size_per_rank": B},
}
TINY_TOML = f"""
[data]
max_seq_len = {S}
[tokenizer]
vocab_size = {V}
[model]
num_layers = {L}
hidden_size = {D}
num_heads = {HEADS}
ffn_size = {F}
rel_num_buckets = 8
rel_max_distance = 16
[aux]
num_layers = {LA}
[corruption]
mask_prob = {MASK}
[train]
global_batch_size = {B}
micro_batch_size_per_rank = {B}
"""

# Chinchilla appendix F, written out by hand for the tiny config (key_size * heads = D):
EMBEDDINGS = 2 * 16 * 300 * 32  # 2*S*V*D = 307_200
ATTENTION = (2 * 3 * 16 * 32 * 32  # QKV        98_304
             + 2 * 16 * 16 * 32  # key@query      16_384
             + 3 * 4 * 16 * 16  # softmax          3_072
             + 2 * 16 * 16 * 32  # softmax@value  16_384
             + 2 * 16 * 32 * 32)  # final linear  32_768   -> 166_912
DENSE = 2 * 16 * (32 * 64 + 64 * 32)  # 131_072
LOGITS = 2 * 16 * 32 * 300  # 307_200
MAIN_FWD = EMBEDDINGS + 2 * (ATTENTION + DENSE)  # no vocabulary head: 903_168
AUX_FWD = 1 * (ATTENTION + DENSE) + LOGITS  # embedding counted once, with main: 605_184
AUX_FWD_MASKED = 1 * (ATTENTION + DENSE) + 0.25 * LOGITS  # 374_784
CONFIGS = Path(__file__).resolve().parents[3] / "configs"

# Model FLOPs (PaLM app. B), by hand: the discriminator's non-embedding parameters (post-LN,
# relative position bias, so the word table is the only embedding) ...
BLOCK = ((3 * 32 * 32 + 3 * 32) + (32 * 32 + 32)  # QKV + output projection     4_224
         + (32 * 64 + 64) + (64 * 32 + 32)  # feed-forward                    4_192
         + 2 * 2 * 32 + 2 * 32)  # two LayerNorms + Admin omegas               192 -> 8_608
N_MAIN = 2 * BLOCK + 2 * 32 + 8 * 4 + (32 * 32 + 32) + (32 + 1)  # + emb LN, rel bias, RTD head
# ... then per sequence per update S * (6 N + 12 L S D)
MODEL_UPDATE = 16 * (6 * N_MAIN + 12 * 2 * 16 * 32)  # 16 * (110_406 + 12_288) = 1_963_104


@pytest.fixture()
def tiny():
    return build_config(TINY)


@pytest.fixture()
def tiny_toml(tmp_path):
    path = tmp_path / "tiny_cost.toml"
    path.write_text(TINY_TOML)
    return str(path)


def test_hand_computed_forward_flops(tiny):
    assert ATTENTION == 166_912 and DENSE == 131_072
    assert MAIN_FWD == 903_168 and AUX_FWD == 605_184 and AUX_FWD_MASKED == 374_784
    main_f = forward_flops(EncoderConfig.main(tiny), S)
    assert main_f["embeddings"] == EMBEDDINGS
    assert main_f["attention_per_layer"] == ATTENTION
    assert main_f["dense_per_layer"] == DENSE
    assert main_f["logits"] == 0
    assert main_f["total"] == MAIN_FWD
    aux_f = forward_flops(EncoderConfig.aux(tiny), S, logits_fraction=1.0, embeddings=False)
    assert aux_f["total"] == AUX_FWD
    full = forward_flops(EncoderConfig.aux(tiny), S, logits_fraction=1.0)
    assert full["total"] == EMBEDDINGS + AUX_FWD


def test_model_flops_hand_count(tiny):
    """The MFU figure: N from the hand count above (and from the real model's parameters,
    the word table left out), no embedding lookup."""
    assert N_MAIN == 18_401 and MODEL_UPDATE == 1_963_104
    enc = EncoderConfig.main(tiny)
    real = Discriminator(enc)
    assert sum(p.numel() for p in real.parameters()) - real.encoder.word_emb.weight.numel() \
        == N_MAIN
    params = count_parameters(enc, head="rtd")
    assert model_flops(enc, S, params) == MODEL_UPDATE
    assert model_flops(enc, S, params, update=False) == pytest.approx(MODEL_UPDATE / 3)
    est = estimate(tiny)
    assert est["model_flops"]["main_update_gflops"] == pytest.approx(MODEL_UPDATE / 1e9)
    # The Table-1 figure is a different, larger count: not what MFU uses.
    assert est["offline"]["main_gflops"] == pytest.approx(3 * MAIN_FWD / 1e9)


def test_model_flops_embedding_lookup_negative_control(tiny):
    """Negative control: counting the word table as parameters (= the lookup as a matmul)
    changes the figure by exactly 3 x 2*S*V*D per sequence per update, the Table-1
    embedding term forward + backward."""
    enc = EncoderConfig.main(tiny)
    params = count_parameters(enc, head="rtd")
    with_lookup = model_flops(enc, S, dict(params, embeddings=0))
    assert with_lookup - MODEL_UPDATE == 3 * EMBEDDINGS == 921_600
    assert model_flops(enc, S, params) != with_lookup


def test_designs_flops(tiny):
    est = estimate(tiny)
    j, f, fm, o = est["joint"], est["fast"], est["fast_masked_head"], est["offline"]
    for d in (j, f, fm, o):  # the main model is always trained: backward = 2 x forward
        assert d["main_gflops"] == pytest.approx(3 * MAIN_FWD / 1e9)
        assert d["total_gflops"] == pytest.approx(d["main_gflops"] + d["aux_gflops"])
    assert j["aux_gflops"] == pytest.approx(3 * AUX_FWD / 1e9)  # trained: fwd + 2 x fwd
    assert f["aux_gflops"] == pytest.approx(AUX_FWD / 1e9)  # inference: forward only
    assert fm["aux_gflops"] == pytest.approx(AUX_FWD_MASKED / 1e9)
    assert fm["aux_gflops"] < f["aux_gflops"]
    assert o["aux_gflops"] == 0 and o["aux_gb"] == 0
    assert est["ratios"]["flops_joint_over_fast"] == pytest.approx(
        (3 * MAIN_FWD + 3 * AUX_FWD) / (3 * MAIN_FWD + AUX_FWD))
    assert est["ratios"]["flops_joint_over_offline"] == pytest.approx(
        (MAIN_FWD + AUX_FWD) / MAIN_FWD)


def test_designs_memory(tiny):
    est = estimate(tiny)
    main_p = count_parameters(EncoderConfig.main(tiny), head="rtd")
    aux_p = count_parameters(EncoderConfig.aux(tiny), head="mlm")
    act_main = 2 * S * B * D * L
    act_aux = 2 * S * B * D * LA
    main_gb = (20 * main_p["total"] + act_main) / 1e9
    for d in ("joint", "fast", "fast_masked_head", "offline"):
        assert est[d]["main_gb"] == pytest.approx(main_gb)
    # joint: the aux's embedding is shared with the main model, not counted again
    assert est["joint"]["aux_gb"] == pytest.approx(
        (20 * (aux_p["total"] - aux_p["embeddings"]) + act_aux) / 1e9)
    assert est["joint"]["aux_gb"] < (20 * aux_p["total"] + act_aux) / 1e9
    # fast: 2 bytes per inference-only parameter (its own embedding included), no activations
    assert est["fast"]["aux_gb"] == pytest.approx(2 * aux_p["total"] / 1e9)
    assert est["params"] == {"main": main_p["total"], "aux": aux_p["total"],
                             "embedding": main_p["embeddings"]}


def test_json_keys(tiny):
    est = estimate(tiny)
    for d in ("joint", "fast", "offline", "fast_masked_head"):
        assert set(est[d]) >= {"main_gflops", "aux_gflops", "total_gflops",
                               "main_gb", "aux_gb", "total_gb"}
    assert set(est["params"]) == {"main", "aux", "embedding"}


@pytest.mark.parametrize("name, fast_saving, offline_saving", [
    ("base", 0.268, 0.402),
    ("large", 0.211, 0.317),
])
def test_paper_scale_figures(name, fast_saving, offline_saving):
    """What the Fast-ELECTRA paper reports (as quoted in its ICLR 2024 OpenReview reviews;
    Table 1's exact cells are not available here): the aux "expends about 67% of the
    computation cost" of the main model (base); Fast-ELECTRA saves 20-30% of the FLOPs per
    step, and caching the aux predictions (offline) 30-40%; memory is cut by 20-25%."""
    est = estimate(load_config(CONFIGS / f"{name}.toml"))
    j, f, o = (est[d]["total_gflops"] for d in ("joint", "fast", "offline"))
    assert 1 - f / j == pytest.approx(fast_saving, abs=0.002)
    assert 1 - o / j == pytest.approx(offline_saving, abs=0.002)
    assert 0.20 <= 1 - f / j <= 0.30 and 0.30 <= 1 - o / j <= 0.41
    mem_saving = 1 - est["fast"]["total_gb"] / est["joint"]["total_gb"]
    assert 0.18 <= mem_saving <= 0.25
    if name == "base":
        assert est["forward_gflops"]["aux"] / est["forward_gflops"]["main"] == pytest.approx(
            0.67, abs=0.01)
        # parameters in the config's header comment: main 184M, aux 127M, embeddings 98M
        p = est["params"]
        assert (round(p["main"] / 1e6), round(p["aux"] / 1e6), round(p["embedding"] / 1e6)) \
            == (184, 127, 98)


def test_cli_table(tiny_toml, capsys):
    assert main(["--config", tiny_toml]) == 0
    out = capsys.readouterr().out
    assert "# resolved config" in out  # every command prints its resolved config
    assert "joint/fast" in out and "joint/offline" in out and "conventions:" in out
    assert "GFLOPs" in out and "GB" in out


def test_cli_json(tiny_toml, capsys):
    assert main(["--config", tiny_toml, "--json", "--set", "corruption.mask_prob=0.5"]) == 0
    est = json.loads(capsys.readouterr().out)  # only JSON on stdout
    assert {"joint", "fast", "offline", "fast_masked_head", "params"} <= set(est)
    assert est["fast_masked_head"]["aux_gflops"] == pytest.approx(
        ((ATTENTION + DENSE) + 0.5 * LOGITS) / 1e9)


def test_cli_run(tiny_toml, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 10, "loss": 1.0, "tokens_per_s": 1000.0}) + "\n"
        + json.dumps({"step": 20, "loss": 0.9, "tokens_per_s": 8192.0}) + "\n")
    assert main(["--config", tiny_toml, "--json", "--run", str(run)]) == 0
    m = json.loads(capsys.readouterr().out)["run"]
    assert m["step"] == 20 and m["tokens_per_s"] == 8192.0
    assert m["sequences_per_s"] == pytest.approx(8192 / S)
    assert m["main_model_tflops_per_s"] == pytest.approx(8192 / S * MODEL_UPDATE / 1e12)
    assert m["main_table1_tflops_per_s"] == pytest.approx(8192 / S * 3 * MAIN_FWD / 1e12)
    assert main(["--config", tiny_toml, "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "in model FLOPs" in out and "Table-1" in out


def test_cli_run_without_metrics(tiny_toml, tmp_path, capsys):
    assert main(["--config", tiny_toml, "--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "metrics.jsonl" in err
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    assert main(["--config", tiny_toml, "--run", str(tmp_path)]) == 2
    assert "tokens_per_s" in capsys.readouterr().err
