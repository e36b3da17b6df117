"""Whether and from where a run continues, and whether its config allows an exact
continuation:

    path = resolve_resume(cfg)                   # train.resume: "auto", a path, or "" (fresh)
    notes = check_resume_config(saved, cfg)      # raises on a change that breaks the curve
"""

from __future__ import annotations

from trainer import checkpoint
from trainer.config.load import to_dict
from trainer.config.run import RunConfig
from trainer.errors import UserError

# Keys whose change would make a resumed run diverge from the one it continues.
_RESUME_MUST_MATCH = ("data.max_seq_len", "tokenizer.vocab_size", "model.*", "aux.*",
                      "mlm.*", "joint.*", "corruption.*", "train.mode", "train.global_batch_size",
                      "train.seed", "train.lr", "train.warmup_steps", "train.weight_decay",
                      "train.clip_grad_norm", "train.holdout_fraction")


class ResumeError(UserError):
    """The checkpoint cannot continue under this config (or on this data)."""


def _flat(cfg_dict: dict) -> dict:
    return {f"{s}.{k}": v for s, sec in cfg_dict.items() for k, v in sec.items()}


def check_resume_config(saved: dict, cfg: RunConfig) -> list[str]:
    """Raise on changes that break an exact continuation; return the harmless ones."""
    old, new = _flat(saved), _flat(to_dict(cfg))
    changed = sorted(k for k in new if old.get(k) != new[k])
    fatal = [k for k in changed if any(k == p or (p.endswith(".*") and k.startswith(p[:-1]))
                                       for p in _RESUME_MUST_MATCH)]
    if fatal:
        raise ResumeError(
            "cannot resume: the checkpoint was trained with different "
            + ", ".join(f"{k} ({old.get(k)!r} -> {new[k]!r})" for k in fatal)
            + ". Resume with the checkpoint's config.toml, or start a new train.out_dir")
    return changed


def resolve_resume(cfg: RunConfig) -> str | None:
    out_dir, resume = cfg.train.out_dir, cfg.train.resume
    if resume == "auto":
        return checkpoint.find_latest(out_dir)
    if resume:
        return resume
    existing = checkpoint.list_steps(out_dir)
    if existing:
        raise UserError(f"{out_dir} already holds checkpoints (up to step {existing[-1]}): pass "
                        "--resume to continue that run, or set train.out_dir to a new folder")
    return None
