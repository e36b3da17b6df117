"""Fair RTD evaluation: every discriminator scored on the same data, made by ONE standalone
generator at T = 1 (DecoupledOptim, Dong et al. 2023, appendix D).

    fast-electra fair-eval --config configs/tiny.toml \\
        --generator runs/tiny/aux \\
        --checkpoint runs/tiny/rtd --checkpoint runs/tiny/electra \\
        [--out-dir shards/fair] [--seed 1] [--max-sequences 4096] [--json fair.json] \\
        [Beam options]

Each discriminator's own training data was corrupted by its own generator and curriculum
(a frozen aux at a temperature schedule, a jointly trained generator, ...), so RTD metrics
on those data do not compare models: an easier generator makes an easier test. The recipe
fixes the test instead: one generator (a standalone MLM checkpoint, or the generator of a
joint run) corrupts the corpus once, with no curriculum (corruption.schedule = fixed, i.e.
sampling from its own distribution at T = 1), and every discriminator is scored on that set.

Steps:
1. ``pipeline.generate`` runs in-process with corruption.replacement = aux,
   generate.aux_checkpoint = the generator, corruption.schedule = fixed,
   corruption.augmentation = temperature, generate.epochs = 1, generate.seed = ``--seed``
   (default 1: a training set made with the default seed 0 masked the same positions in its
   epoch 0) and generate.rtd_dir = ``<out-dir>/<id>-seed<S>``, the id being the generator's
   step and the first 12 hex digits of its state.pt sha256. The same generator always maps to
   the same set, so a re-run (or a later comparison with more discriminators) reuses it:
   generate is a no-op when the set is complete, and refuses a set that differs in another
   setting, naming the keys (pass --overwrite or another --out-dir). Masking, corpus and Beam
   options come from ``--config``/``--set`` and the command line, as for pipeline.generate.
2. ``fast-electra evaluate`` scores every ``--checkpoint`` (a discriminator, or a joint run's D) on
   that set and prints one table (and ``--json OUT``). Its ``rtd_*`` metrics count the
   ordinary tokens only ([CLS]/[SEP] are never replaced and would flatter every figure);
   ``rtd_all_accuracy/auc/loss`` count every real token.

Checkpoints may be given as checkpoint folders or run folders (their latest checkpoint). The
set covers the whole corpus, so its text is text the discriminators were trained on (with
other masks and replacements); what differs between them is only the model being scored.
"""

from __future__ import annotations

import os
import sys

from pipeline.generate import run as generate
from trainer.cli import config_parser, main_guard, resolve_config
from trainer.data.manifest import sha256_uri
from trainer.errors import UserError
from trainer.pretrained import (
    DISCRIMINATOR_KINDS,
    GENERATOR_KINDS,
    read_meta,
    resolve_checkpoint,
)
from trainer.tools.evaluate import (
    EvalOptions,
    add_eval_arguments,
    eval_device,
    evaluate_checkpoint,
    report,
)

# Masks and samples are keyed by (seed, epoch, seq_id): with the training sets' default seed 0,
# epoch 0 of the evaluation set would mask the very positions epoch 0 of training did.
FAIR_SEED = 1
# Set by the recipe; a --set of these keys would silently change what "fair" means.
RECIPE_KEYS = ("corruption.schedule", "corruption.replacement", "corruption.augmentation",
               "generate.aux_checkpoint", "generate.epochs", "generate.rtd_dir", "generate.seed")


def generator_id(path: str) -> str:
    """``step_SSSSSSSS-<sha256 of state.pt, 12 hex digits>``: names the generator's shard
    set by content, so a retrained generator at the same path gets a new set."""
    meta = read_meta(path, "generator (--generator)", GENERATOR_KINDS)
    state = os.path.join(path, "state.pt")
    if not os.path.isfile(state):
        raise UserError(f"{state} is missing: an incomplete checkpoint")
    return f"step_{int(meta.get('step') or 0):08d}-{sha256_uri(state)[:12]}"


def generate_argv(config: str, overrides: list[str], generator: str, rtd_dir: str, seed: int,
                  passthrough: list[str]) -> list[str]:
    argv = ["--config", config]
    # An evaluation set serves no training run: generate's sizing check reads a one-step run.
    for o in [*overrides, "corruption.replacement=aux", "corruption.schedule=fixed",
              "corruption.augmentation=temperature", f"generate.aux_checkpoint={generator}",
              "generate.epochs=1", f"generate.rtd_dir={rtd_dir}", f"generate.seed={seed}",
              "train.max_steps=1", "train.warmup_steps=0", "train.eval_every=0"]:
        argv += ["--set", o]
    return [*argv, *passthrough]


def run(argv: list[str] | None = None) -> list[dict]:
    parser = config_parser("fast-electra fair-eval", __doc__)
    parser.add_argument("--generator", required=True, metavar="GEN_CKPT",
                        help="the one generator: checkpoint or run folder of an mlm (or joint) "
                             "run")
    add_eval_arguments(parser)
    parser.add_argument("--out-dir", default="shards/fair",
                        help="root of the shard sets, one per generator (default shards/fair)")
    parser.add_argument("--seed", type=int, default=FAIR_SEED,
                        help=f"generate.seed of the evaluation set (default {FAIR_SEED}: not the "
                             "training sets' default 0, so its masks and samples are fresh)")
    args, passthrough = parser.parse_known_args(argv)
    for o in args.overrides:
        if o.split("=", 1)[0].strip() in RECIPE_KEYS:
            raise UserError(f"--set {o}: the fair-evaluation recipe sets {', '.join(RECIPE_KEYS)} "
                            "itself; use --generator and --out-dir")
    cfg = resolve_config(args, echo=False)  # validated before any work; generate prints it
    if args.max_sequences is not None and args.max_sequences < 1:
        raise UserError(f"--max-sequences must be >= 1, got {args.max_sequences}")
    gen_path = resolve_checkpoint(args.generator)
    rtd_dir = f"{args.out_dir.rstrip('/')}/{generator_id(gen_path)}-seed{args.seed}"
    # Every discriminator is checked before the (possibly long) generate job starts.
    checkpoints = [resolve_checkpoint(p) for p in args.checkpoint]
    for path in checkpoints:
        read_meta(path, "discriminator (--checkpoint)", DISCRIMINATOR_KINDS)

    print(f"fair_eval: generator {gen_path} -> {rtd_dir} (T = 1, 1 epoch)", flush=True)
    generate(generate_argv(args.config, args.overrides, gen_path, rtd_dir, args.seed,
                           passthrough))

    options = EvalOptions(rtd_dir, [0], args.max_sequences, only="rtd")
    device = eval_device(cfg)
    results = []
    for path in checkpoints:
        print(f"fair_eval: {path} on {device}", flush=True)
        results.append(evaluate_checkpoint(path, cfg, device, options))
    report(results, cfg, args.json, {"generator": gen_path, "rtd_dir": rtd_dir,
                                     "recipe": "DecoupledOptim appendix D: one generator, T = 1"})
    return results


def main(argv: list[str] | None = None) -> int:
    return main_guard(run, argv)


if __name__ == "__main__":
    sys.exit(main())
