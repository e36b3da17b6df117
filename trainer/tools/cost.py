"""What one update costs, before a run: FLOPs and memory of the main model and the auxiliary
model under the original joint design, Fast-ELECTRA and this project's offline trainer.

    fast-electra cost --config configs/base.toml              # table
    fast-electra cost --config configs/base.toml --json       # the same figures as JSON
    fast-electra cost --config configs/base.toml --run runs/base   # + measured tokens/s

Designs (per training sequence, one update = forward + backward of what is trained):
  joint    original ELECTRA: the aux MLM is trained with the main model (aux forward+backward)
  fast     Fast-ELECTRA online: the frozen aux runs in inference only (aux forward)
  offline  this project's ``rtd`` mode: the corrupted data was made before training (aux 0)
  fast_masked_head   ``fast`` with the aux vocabulary projection evaluated only at the
           corruption.mask_prob fraction of positions (what ``pipeline.generate`` does)

Conventions (chosen so the figures compare with the Fast-ELECTRA paper's Table 1): FLOPs as
in Hoffmann et al. 2022 (Chinchilla), appendix F: embeddings 2*S*V*D; per layer attention
(QKV 6*S*D*D, logits 2*S*S*D, softmax 3*heads*S*S, softmax@value 2*S*S*D, output 2*S*D*D) and
dense 4*S*D*F; the vocabulary logits 2*S*D*V only where a model has a vocabulary head (the aux
MLM; the discriminator's one-logit head is negligible); backward = 2 x forward. The embedding
term is counted once, in the main model: the aux's forward is its layers plus its logits (in
the joint design the embedding is shared; the frozen aux is counted the same way so the rows
compare, as in the paper, where the aux of the base model costs ~67% of the main model's
compute). Memory (GB = 1e9 bytes): 20 bytes per trainable parameter (weights, gradients,
Adam moments, mixed precision), 2 bytes per inference-only parameter, activations of trained
models with layer-boundary checkpointing = 2 bytes x seq_len x global batch x hidden per layer
(an inference-only model keeps none); in the joint design the aux's embedding is shared with the
main model and not counted again. Parameter counts come from
``trainer.model.params.count_parameters``.

Two FLOP figures, for two uses:
  Table-1 FLOPs   the design rows above (Chinchilla app. F, the embedding term 2*S*V*D
                  included): what reproduces the paper's Table 1 ratios.
  model FLOPs     the MFU convention of PaLM (Chowdhery et al. 2022, app. B): per token
                  6*N + 12*L*S*D for forward + backward, N = non-embedding parameters
                  (everything but the word and absolute-position tables), L layers, S the
                  sequence length, D = heads x head size (the QK^T and softmax@V matmuls). The
                  embedding lookup is a gather, not a matmul: counting it as 2*S*V*D FLOPs
                  would make up half of the base model's forward at V = 128K and double the
                  MFU. This is what ``--run`` and bench/gpu_check.py turn into MFU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trainer.cli import config_parser, main_guard, resolve_config
from trainer.config.run import RunConfig
from trainer.errors import UserError
from trainer.logger import METRICS
from trainer.model.encoder_config import EncoderConfig
from trainer.model.params import count_parameters

GB = 1e9
TRAINABLE_BYTES = 20  # bf16/fp32 weights + fp32 grads + two fp32 Adam moments (mixed precision)
INFERENCE_BYTES = 2  # bf16 weights
ACTIVATION_BYTES = 2  # bf16 layer-boundary activations
DESIGNS = ("joint", "fast", "fast_masked_head", "offline")
CONVENTIONS = ("FLOPs: Chinchilla (Hoffmann et al. 2022) app. F, per sequence, backward = 2 x "
               "forward, embedding counted once (main), vocab logits only for the aux MLM; "
               "memory: 20 B/trainable param, "
               "2 B/inference param, activations 2 B x seq x global batch x hidden per trained "
               "layer, joint aux embedding shared (not counted twice); GB = 1e9 B")
MODEL_FLOPS_CONVENTION = ("model FLOPs (MFU): PaLM app. B, per sequence per update "
                          "S * (6 * N_non_embedding + 12 * L * S * D), no embedding lookup")


def forward_flops(enc: EncoderConfig, seq_len: int, logits_fraction: float = 0.0,
                  embeddings: bool = True) -> dict[str, float]:
    """Forward FLOPs of one sequence of ``seq_len`` tokens (Chinchilla appendix F).

    ``logits_fraction`` is the fraction of positions at which the vocabulary projection is
    evaluated: 0 for a model without a vocabulary head (the discriminator), 1 for a full MLM
    head, mask_prob for a head evaluated at masked positions only. ``embeddings=False`` leaves
    out the embedding term (the aux's embedding is counted once, with the main model).
    """
    S, D, V, F_ = seq_len, enc.hidden_size, enc.vocab_size, enc.ffn_size
    kh = enc.head_dim * enc.num_heads  # key_size * heads (= D here)
    attention = (2 * 3 * S * D * kh  # Q, K, V projections
                 + 2 * S * S * kh  # key @ query logits
                 + 3 * enc.num_heads * S * S  # softmax
                 + 2 * S * S * kh  # softmax @ value
                 + 2 * S * kh * D)  # output projection
    dense = 2 * S * (D * F_ + F_ * D)
    embeddings = 2 * S * V * D if embeddings else 0
    logits = logits_fraction * 2 * S * D * V
    total = embeddings + enc.num_layers * (attention + dense) + logits
    return {"embeddings": float(embeddings), "attention_per_layer": float(attention),
            "dense_per_layer": float(dense), "logits": float(logits), "total": float(total)}


def model_flops(enc: EncoderConfig, seq_len: int, params: dict[str, int],
                update: bool = True) -> float:
    """Model FLOPs of one sequence (PaLM app. B, the MFU convention; module docstring):
    forward + backward ``S * (6 * N + 12 * L * S * D)`` with ``update``, else the forward
    third ``S * (2 * N + 4 * L * S * D)``. ``params`` is ``count_parameters``' dict of the
    model (its head included); N leaves out its ``embeddings`` (lookups, not matmuls)."""
    S, D, L = seq_len, enc.head_dim * enc.num_heads, enc.num_layers
    n = params["total"] - params["embeddings"]
    per_token = 6 * n + 12 * L * S * D
    return float(S * per_token if update else S * per_token / 3)


def _activations_bytes(enc: EncoderConfig, cfg: RunConfig) -> float:
    return (ACTIVATION_BYTES * cfg.data.max_seq_len * cfg.train.global_batch_size
            * enc.hidden_size * enc.num_layers)


def _design(main_flops: float, aux_flops: float, main_bytes: float, aux_bytes: float) -> dict:
    return {"main_gflops": main_flops / 1e9, "aux_gflops": aux_flops / 1e9,
            "total_gflops": (main_flops + aux_flops) / 1e9,
            "main_gb": main_bytes / GB, "aux_gb": aux_bytes / GB,
            "total_gb": (main_bytes + aux_bytes) / GB}


def estimate(cfg: RunConfig) -> dict:
    """Every figure ``fast-electra cost`` prints, as a JSON-ready dict (module docstring)."""
    main, aux = EncoderConfig.main(cfg), EncoderConfig.aux(cfg)
    S = cfg.data.max_seq_len
    main_params = count_parameters(main, head="rtd")
    aux_params = count_parameters(aux, head="mlm")
    main_fwd = forward_flops(main, S)
    # The aux's embedding FLOPs are counted once, with the main model (the paper's convention:
    # shared in the joint design, and counted the same way for the frozen aux so rows compare).
    aux_fwd = forward_flops(aux, S, logits_fraction=1.0, embeddings=False)
    aux_fwd_masked = forward_flops(aux, S, logits_fraction=cfg.corruption.mask_prob,
                                   embeddings=False)

    main_update = 3 * main_fwd["total"]  # forward + backward (2 x forward)
    main_bytes = TRAINABLE_BYTES * main_params["total"] + _activations_bytes(main, cfg)
    aux_joint_bytes = (TRAINABLE_BYTES * (aux_params["total"] - aux_params["embeddings"])
                       + _activations_bytes(aux, cfg))
    aux_inference_bytes = INFERENCE_BYTES * aux_params["total"]

    out = {
        "joint": _design(main_update, 3 * aux_fwd["total"], main_bytes, aux_joint_bytes),
        "fast": _design(main_update, aux_fwd["total"], main_bytes, aux_inference_bytes),
        "fast_masked_head": _design(main_update, aux_fwd_masked["total"], main_bytes,
                                    aux_inference_bytes),
        "offline": _design(main_update, 0.0, main_bytes, 0.0),
        "params": {"main": main_params["total"], "aux": aux_params["total"],
                   "embedding": main_params["embeddings"]},
        "forward_gflops": {"main": main_fwd["total"] / 1e9, "aux": aux_fwd["total"] / 1e9,
                           "aux_masked_head": aux_fwd_masked["total"] / 1e9,
                           # for reference: the aux with its own embedding term counted too
                           "aux_with_embedding": forward_flops(aux, S, 1.0)["total"] / 1e9},
        "seq_len": S, "global_batch_size": cfg.train.global_batch_size,
        "mask_prob": cfg.corruption.mask_prob, "conventions": CONVENTIONS,
        # The MFU figure: the main model's update without the embedding lookup.
        "model_flops": {"main_update_gflops": model_flops(main, S, main_params) / 1e9,
                        "main_forward_gflops": model_flops(main, S, main_params,
                                                           update=False) / 1e9,
                        "convention": MODEL_FLOPS_CONVENTION},
    }
    j, f, o = out["joint"], out["fast"], out["offline"]
    out["ratios"] = {
        "flops_joint_over_fast": j["total_gflops"] / f["total_gflops"],
        "flops_joint_over_offline": j["total_gflops"] / o["total_gflops"],
        "flops_fast_over_offline": f["total_gflops"] / o["total_gflops"],
        "memory_joint_over_fast": j["total_gb"] / f["total_gb"],
        "memory_joint_over_offline": j["total_gb"] / o["total_gb"],
        "memory_fast_over_offline": f["total_gb"] / o["total_gb"],
    }
    return out


def read_run(run_dir: str | Path) -> dict:
    """The last ``metrics.jsonl`` record of a run folder that has ``tokens_per_s``."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise UserError(f"--run {run_dir}: no {METRICS} in that folder; pass a run folder "
                        f"(train.out_dir) of a run that has logged at least once")
    last = None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}, line {n}: not valid JSON; the file is damaged") from None
        if isinstance(record, dict) and isinstance(record.get("tokens_per_s"), (int, float)):
            last = record
    if last is None:
        raise UserError(f"{path}: no record with tokens_per_s; let the run log at least once "
                        f"(train.log_every steps)")
    return last


def measured(est: dict, record: dict) -> dict:
    """Measured throughput of a run and the main model's implied achieved FLOP/s: in model
    FLOPs (``main_model_tflops_per_s``, the MFU numerator) and in Table-1 FLOPs, embedding
    term included (``main_table1_tflops_per_s``, for comparison with the design rows).

    tokens_per_s counts non-padding tokens, so sequences/s = tokens_per_s / seq_len assumes
    full sequences (a lower bound on sequences/s when sequences are padded)."""
    tps = float(record["tokens_per_s"])
    seqs = tps / est["seq_len"]
    return {"step": record.get("step"), "tokens_per_s": tps, "sequences_per_s": seqs,
            "main_model_tflops_per_s": seqs * est["model_flops"]["main_update_gflops"] / 1e3,
            "main_table1_tflops_per_s": seqs * est["joint"]["main_gflops"] / 1e3}


def format_report(est: dict) -> str:
    names = {"joint": "joint (aux trained)", "fast": "Fast-ELECTRA (aux fwd only)",
             "fast_masked_head": "Fast, masked-only LM head", "offline": "offline (aux 0)"}
    head = (f"{'design':<28}{'main GFLOPs':>13}{'aux GFLOPs':>12}{'total GFLOPs':>14}"
            f"{'main GB':>10}{'aux GB':>9}{'total GB':>10}")
    lines = [f"# cost per training sequence per update (seq_len {est['seq_len']}); memory for "
             f"the global batch of {est['global_batch_size']}; Table-1 FLOPs (embedding "
             "term included)", head, "-" * len(head)]
    for d in DESIGNS:
        r = est[d]
        lines.append(f"{names[d]:<28}{r['main_gflops']:>13.1f}{r['aux_gflops']:>12.1f}"
                     f"{r['total_gflops']:>14.1f}{r['main_gb']:>10.2f}{r['aux_gb']:>9.2f}"
                     f"{r['total_gb']:>10.2f}")
    r, p, fw = est["ratios"], est["params"], est["forward_gflops"]
    lines += [
        "",
        f"ratios   total FLOPs: joint/fast {r['flops_joint_over_fast']:.3f}, joint/offline "
        f"{r['flops_joint_over_offline']:.3f}, fast/offline {r['flops_fast_over_offline']:.3f}",
        f"         total memory: joint/fast {r['memory_joint_over_fast']:.3f}, joint/offline "
        f"{r['memory_joint_over_offline']:.3f}, fast/offline {r['memory_fast_over_offline']:.3f}",
        f"forward  GFLOPs/sequence: main {fw['main']:.1f}, aux {fw['aux']:.1f}, aux with "
        f"masked-only head (mask_prob {est['mask_prob']}) {fw['aux_masked_head']:.1f}; aux "
        f"with its own embedding counted too {fw['aux_with_embedding']:.1f}",
        f"params   main {p['main'] / 1e6:.1f}M, aux {p['aux'] / 1e6:.1f}M, embedding "
        f"{p['embedding'] / 1e6:.1f}M",
        f"model    FLOPs (MFU convention, no embedding lookup): main update "
        f"{est['model_flops']['main_update_gflops']:.1f} GFLOPs/sequence (Table-1 figure "
        f"above: {est['offline']['main_gflops']:.1f})",
    ]
    if "run" in est:
        m = est["run"]
        lines.append(f"run      {m['run_dir']} (step {m['step']}): {m['tokens_per_s']:,.0f} "
                     f"tokens/s = {m['sequences_per_s']:.1f} sequences/s of {est['seq_len']} -> "
                     f"main model {m['main_model_tflops_per_s']:.2f} TFLOP/s in model FLOPs "
                     f"(the MFU numerator; {m['main_table1_tflops_per_s']:.2f} in Table-1 "
                     "FLOPs)")
    lines.append(f"conventions: {CONVENTIONS}")
    lines.append(f"             {MODEL_FLOPS_CONVENTION}")
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> dict:
    parser = config_parser("fast-electra cost", __doc__)
    parser.add_argument("--json", action="store_true",
                        help="print only the figures as JSON (no resolved config)")
    parser.add_argument("--run", metavar="DIR", default="",
                        help="a run folder: add its measured tokens/s (last metrics.jsonl "
                             "record) and the main model's achieved FLOP/s")
    args = parser.parse_args(argv)
    cfg = resolve_config(args, echo=not args.json)
    est = estimate(cfg)
    if args.run:
        est["run"] = {"run_dir": args.run, **measured(est, read_run(args.run))}
    if args.json:
        print(json.dumps(est, indent=2, sort_keys=True))
    else:
        print(format_report(est))
    return est


def main(argv: list[str] | None = None) -> int:
    return main_guard(run, argv)


if __name__ == "__main__":
    sys.exit(main())
