"""`fast-electra plan`: the data plan of a run, checked before any work.

    fast-electra plan --config configs/tiny.toml
    fast-electra plan --config configs/base.toml --set generate.epochs=3

Prints the samples the run needs (train.max_steps x train.global_batch_size, across every
rank), the samples the data plan gives (the prepared corpus's sequences x generate.epochs),
the epochs needed, trained on and held out, the RTD shards' estimated size, and the run's
compute from ``trainer.tools.cost``. The rule is the one ``pipeline.generate`` and the trainer
apply (``trainer.modes.rtd.DataPlan``). Exit 0 when the plan can feed the run, 2 (with the
fix) when it cannot. Before ``pipeline.prepare`` has run, the corpus size is unknown: the
plan says so and prints the smallest corpus that would do.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from trainer.cli import config_parser, main_guard, resolve_config
from trainer.config.run import RunConfig
from trainer.data.manifest import MANIFEST, ShardError, read_manifest
from trainer.errors import UserError
from trainer.modes.rtd import DataPlan
from trainer.tools.cost import estimate

# Shard bytes per token when the demo's RTD set is absent: docs/benchmarks.md's `make demo`
# figure (8K vocabulary, uint16 ids); a 128K vocabulary needs int32 ids (docs/scale.md: 2.33).
DEMO_RTD = "shards/tiny/rtd"
DOCS_BYTES_PER_TOKEN = 1.840
# Modes whose data plan is generate.epochs x the corpus; the others cycle the corpus freely.
PLANNED_MODES = ("rtd", "fast-online")
# trainer.tools.cost's design row for each mode's update.
DESIGN = {"rtd": "offline", "fast-online": "fast", "electra": "joint", "decoupled": "joint",
          "early-exit": "joint"}


class PlanError(UserError):
    """The data plan cannot feed the run."""


def bytes_per_token() -> tuple[float, str]:
    """(RTD shard bytes per token, where the figure comes from)."""
    try:
        m = read_manifest(DEMO_RTD, "rtd")
        return m["shard_bytes"] / m["num_tokens"], f"measured on {DEMO_RTD}"
    except (ShardError, OSError, KeyError, ZeroDivisionError):
        return DOCS_BYTES_PER_TOKEN, ("docs/benchmarks.md's make demo figure (no "
                                      f"{DEMO_RTD}/{MANIFEST} here)")


def corpus_manifest(cfg: RunConfig) -> dict | None:
    """data.corpus_dir's manifest, or None when the corpus has not been prepared."""
    if not (Path(cfg.data.corpus_dir) / MANIFEST).exists() and "://" not in cfg.data.corpus_dir:
        return None
    return read_manifest(cfg.data.corpus_dir, "corpus")


def plan(cfg: RunConfig) -> dict:
    """Every figure the command prints, JSON-ready; ``feasible`` is None when unknown."""
    t, gen = cfg.train, cfg.generate
    out: dict = {"mode": t.mode, "max_steps": t.max_steps,
                 "global_batch_size": t.global_batch_size,
                 "samples_needed": t.max_steps * t.global_batch_size,
                 "generate_epochs": gen.epochs, "corpus_dir": cfg.data.corpus_dir,
                 "feasible": None}
    manifest = corpus_manifest(cfg)
    if manifest is None:
        need = out["samples_needed"]
        out["min_corpus_sequences"] = math.ceil(need / gen.epochs)
        if gen.epochs > 1:
            out["min_corpus_sequences_heldout"] = math.ceil(need / (gen.epochs - 1))
    else:
        n = manifest["num_sequences"]
        p = DataPlan.of(cfg, gen.epochs, n)
        # An RTD row is the corpus sequence with [CLS] and [SEP] around it.
        rtd_tokens = (manifest["num_tokens"] + 2 * n) * gen.epochs
        bpt, source = bytes_per_token()
        out.update(corpus_sequences=n, samples_available=p.available,
                   epochs_needed=p.epochs_trained, epochs_used=min(p.epochs_trained, gen.epochs),
                   heldout_epoch=p.heldout_epoch,
                   steps_possible=p.steps_possible(gen.epochs),
                   feasible=p.feasible if t.mode in PLANNED_MODES else True,
                   rtd_tokens=rtd_tokens, bytes_per_token=bpt, bytes_per_token_source=source,
                   rtd_shard_bytes=round(rtd_tokens * bpt))
        if not p.feasible and t.mode in PLANNED_MODES:
            out["fix"] = p.shortfall(f"the corpus {cfg.data.corpus_dir} with generate.epochs "
                                     "gives", "raise generate.epochs or lower train.max_steps")
    if t.mode in DESIGN:
        per_sequence = estimate(cfg)[DESIGN[t.mode]]["total_gflops"]
        out["design"] = DESIGN[t.mode]
        out["total_pflops"] = per_sequence * out["samples_needed"] / 1e6
    return out


def format_plan(p: dict) -> str:
    lines = [f"samples needed     {p['max_steps']:,} steps (train.max_steps) x "
             f"{p['global_batch_size']:,} (train.global_batch_size) = {p['samples_needed']:,}"]
    if "corpus_sequences" not in p:
        lines.append(f"corpus             {p['corpus_dir']}: not prepared yet (python -m "
                     "pipeline.prepare); the plan needs its sequence count")
        held = (f", {p['min_corpus_sequences_heldout']:,} to hold one out"
                if "min_corpus_sequences_heldout" in p else "")
        lines.append(f"corpus needed      at least {p['min_corpus_sequences']:,} sequences for "
                     f"generate.epochs = {p['generate_epochs']}{held}"
                     + ("; with 1 epoch none is held out" if p["generate_epochs"] == 1 else ""))
    else:
        lines.append(f"samples available  {p['corpus_sequences']:,} corpus sequences x "
                     f"{p['generate_epochs']} (generate.epochs) = {p['samples_available']:,} "
                     f"({p['steps_possible']:,} steps)")
        held = ("none: the run logs no eval_* metrics (set generate.epochs = "
                f"{p['epochs_needed'] + 1})" if p["heldout_epoch"] is None
                else f"epoch {p['heldout_epoch']}")
        lines.append(f"epochs             needed {p['epochs_needed']}, used "
                     f"{p['epochs_used']} of {p['generate_epochs']}, held out: {held}")
        lines.append(f"RTD shards         ~{p['rtd_shard_bytes'] / 1e9:,.3f} GB: "
                     f"{p['rtd_tokens']:,} tokens x {p['bytes_per_token']:.3f} bytes/token "
                     f"({p['bytes_per_token_source']})")
    if p["mode"] not in PLANNED_MODES:
        lines.append(f"note               train.mode = {p['mode']} reads the corpus as often as "
                     "it needs: generate.epochs does not limit it")
    if "total_pflops" in p:
        lines.append(f"compute            {p['total_pflops']:,.4g} PFLOP ({p['design']} design, "
                     "trainer.tools.cost's Table-1 FLOPs x samples needed); no time estimate: "
                     "fast-electra cost assumes no throughput (--run DIR measures one)")
    if p["feasible"] is False:
        lines.append(f"infeasible         {p['fix']}")
    elif p["feasible"]:
        lines.append("feasible")
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> dict:
    parser = config_parser("fast-electra plan", __doc__)
    parser.add_argument("--json", action="store_true",
                        help="print only the figures as JSON (no resolved config)")
    args = parser.parse_args(argv)
    cfg = resolve_config(args, echo=False)
    p = plan(cfg)
    print(json.dumps(p, indent=2, sort_keys=True) if args.json else format_plan(p), flush=True)
    if p["feasible"] is False:
        raise PlanError(p["fix"])
    return p


def main(argv: list[str] | None = None) -> int:
    return main_guard(run, argv)


if __name__ == "__main__":
    sys.exit(main())
