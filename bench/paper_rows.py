"""Rows 2, 3, 5 and 6 of ``python -m bench.paper``: the curriculum, the replacement
distributions, DecoupledOptim's loss weight vs generator lr, and the adaptive early-exit
generator. Each row trains its runs through ``Bench.train`` (trainer.train), scores through
the real evaluators, and returns a JSON-able dict: its measurements, the discriminators it
hands to the downstream row (label -> checkpoint folder), and the facts its verdict rests on.

Every run uses the same sizes (the bench's plan); a row varies only what it states.
"""

from __future__ import annotations

import os
import statistics

from trainer import checkpoint
from trainer.tools.plot import read_metrics

# Row 2 (Fast-ELECTRA D.2): the same frozen aux and steps, three temperature programmes. The
# exponential one streams the offline shards (train.mode = rtd); the other two would each need
# their own shard set, so they run fast-online, which corrupts the very rows generate would
# write for that config (tests/trainer/modes/test_fast_online.py pins the equality).
CURRICULA = {
    "exponential": ["train.mode=rtd"],
    "fixed": ["train.mode=fast-online", "corruption.schedule=fixed"],
    "constant": ["train.mode=fast-online", "corruption.schedule=constant"],
}

# Row 3 (D.1, Table 6), as configs/ablations/replacement_*.toml: the plain model-free
# distributions fixed, the p1 -> p2 log-interpolations on the exponential schedule.
REPLACEMENTS = {
    "uniform": ["corruption.replacement=uniform", "corruption.schedule=fixed"],
    "unigram": ["corruption.replacement=unigram", "corruption.schedule=fixed"],
    "smoothed_onehot": ["corruption.replacement=smoothed_onehot", "corruption.schedule=fixed"],
    "uniform->smoothed_onehot": ["corruption.replacement=uniform->smoothed_onehot"],
    "unigram->smoothed_onehot": ["corruption.replacement=unigram->smoothed_onehot"],
}

# Row 5 (DecoupledOptim Fig. 3).
LOSS_WEIGHTS = (10.0, 50.0)
GENERATOR_LRS = (1e-4, 1e-3)


def curve(run_dir: str, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in read_metrics(os.path.join(run_dir, "metrics.jsonl"))
            if key in r]


def checkpoints(run_dir: str) -> list[str]:
    return [checkpoint.step_dir(run_dir, s) for s in checkpoint.list_steps(run_dir)]


def run_label(run_dir: str) -> str:
    return os.path.basename(run_dir)


def plot(bench, name: str, run_dirs: list[str], metrics: str) -> str:
    """fast-electra plot of the runs' curves into <out>/plots/<name>/."""
    out = os.path.join(bench.out, "plots", name)
    if not os.path.isdir(out):
        bench.runner.call(f"plot/{name}", "trainer.tools.plot",
                          [*run_dirs, "--out", out + ".tmp", "--metrics", metrics])
        os.replace(out + ".tmp", out)
    return out


def curriculum(bench) -> dict:
    runs = bench.runner.parallel([
        (lambda n=n, s=s: bench.train(f"curriculum-{n}", s, checkpoints=4))
        for n, s in CURRICULA.items()])
    paths = {n: checkpoints(r["dir"]) for n, r in zip(CURRICULA, runs, strict=True)}
    flat = [p for n in CURRICULA for p in paths[n]]
    scores = iter(bench.fair_eval("curriculum", flat))
    fair = {n: [{"step": int(os.path.basename(p).split("_")[-1]), **_rtd(next(scores))}
                for p in paths[n]] for n in CURRICULA}
    discriminators = {}
    for n in CURRICULA:
        discriminators[f"curriculum-{n}@early"] = paths[n][0]
        discriminators[f"curriculum-{n}"] = paths[n][-1]
    return {"fair": fair, "discriminators": discriminators, "tau": bench.tau,
            "epochs": bench.epochs, "plots": [plot(bench, "curriculum",
                                                   [r["dir"] for r in runs], "temperature,loss")]}


def _rtd(m: dict) -> dict:
    return {"auc": m["rtd_auc"], "f1": m["rtd_f1"], "loss": m["rtd_loss"],
            "accuracy": m["rtd_accuracy"], "majority": m["majority_accuracy"]}


def replacement(bench) -> dict:
    aux = bench.train("curriculum-exponential", CURRICULA["exponential"], checkpoints=4)
    runs = bench.runner.parallel([
        (lambda n=n, s=s: bench.train(f"replacement-{_safe(n)}", ["train.mode=fast-online", *s]))
        for n, s in REPLACEMENTS.items()])
    dirs = {"aux (Fast-ELECTRA)": aux["dir"],
            **{n: r["dir"] for n, r in zip(REPLACEMENTS, runs, strict=True)}}
    curves = {n: curve(d, "loss") for n, d in dirs.items()}
    finals = [checkpoints(d)[-1] for d in dirs.values()]
    fair = dict(zip(dirs, (_rtd(m) for m in bench.fair_eval("replacement", finals)),
                    strict=True))
    shape = {}
    for n, c in curves.items():
        losses = [v for _, v in c]
        low = min(range(len(losses)), key=losses.__getitem__)
        shape[n] = {"first": losses[0], "min": losses[low], "min_step": c[low][0],
                    "last": losses[-1], "rise_after_min": losses[-1] - losses[low]}
    return {"curves": curves, "loss_shape": shape, "fair": fair,
            "discriminators": {f"replacement-{n}" if n in REPLACEMENTS else
                               "curriculum-exponential": checkpoints(d)[-1]
                               for n, d in dirs.items()},
            "plots": [plot(bench, "replacement", list(dirs.values()), "loss,rtd_f1")]}


def _safe(name: str) -> str:
    return name.replace("->", "_to_")


def _max_rel_diff(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> float | None:
    """max |a - b| / |b| over the steps both curves logged (None: no common step)."""
    bv = dict(b)
    return max((abs(v - bv[s]) / abs(bv[s]) for s, v in a if s in bv), default=None)


def decoupled(bench) -> dict:
    specs = {f"electra-w{w:g}": ["train.mode=electra", f"joint.rtd_weight={w}"]
             for w in LOSS_WEIGHTS}
    specs |= {f"decoupled-g{g:g}": ["train.mode=decoupled", f"joint.generator_lr={g}"]
              for g in GENERATOR_LRS}
    names = list(specs)
    # electra-w50 is ELECTRA's default lambda: rows 4 and 6 reuse it as "electra".
    runs = bench.runner.parallel([(lambda n=n: bench.train(_joint_name(n), specs[n]))
                                  for n in names])
    dirs = {n: r["dir"] for n, r in zip(names, runs, strict=True)}
    curves = {n: curve(d, "gen_mlm_loss") for n, d in dirs.items()}
    evals = {n: curve(d, "eval_gen_mlm_loss") for n, d in dirs.items()}
    w = [f"electra-w{x:g}" for x in LOSS_WEIGHTS]
    g = [f"decoupled-g{x:g}" for x in GENERATOR_LRS]
    return {"curves": curves, "eval_curves": evals,
            "electra_max_rel_diff": _max_rel_diff(curves[w[0]], curves[w[1]]),
            "decoupled_max_rel_diff": _max_rel_diff(curves[g[0]], curves[g[1]]),
            "electra_eval_max_rel_diff": _max_rel_diff(evals[w[0]], evals[w[1]]),
            "decoupled_eval_max_rel_diff": _max_rel_diff(evals[g[0]], evals[g[1]]),
            "discriminators": {_joint_name(n): checkpoints(d)[-1] for n, d in dirs.items()},
            "plots": [plot(bench, "decoupled", list(dirs.values()), "gen_mlm_loss")]}


def _joint_name(name: str) -> str:
    return "electra" if name == f"electra-w{LOSS_WEIGHTS[-1]:g}" else name


def mean_seconds_per_step(run_dir: str) -> float:
    """Seconds per step over the whole run, weighted by each logged interval's steps."""
    recs = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    total, prev = 0.0, 0
    for r in recs:
        total += r["seconds_per_step"] * (r["step"] - prev)
        prev = r["step"]
    return total / prev


def early_exit(bench, cost: dict) -> dict:
    every = max(1, bench.plan.steps // 12)  # the paper's 100 of 200K steps: scaled to ~12
    ee = bench.train("early-exit", ["train.mode=early-exit", f"joint.exit_update_every={every}"])
    electra = bench.train("electra", ["train.mode=electra", "joint.rtd_weight=50.0"])
    recs = read_metrics(os.path.join(ee["dir"], "metrics.jsonl"))
    keys = sorted(k for k in recs[-1] if k.startswith("exit_p"))
    probs = {k: [(r["step"], r[k]) for r in recs if k in r] for k in keys}
    t = cost["modes"]
    run_ratio = mean_seconds_per_step(electra["dir"]) / mean_seconds_per_step(ee["dir"])
    return {"steps_per_s_vs_electra": 1 / t["early-exit"]["seconds_per_step"]["median"],
            "steps_per_s_range": [1 / t["early-exit"]["seconds_per_step"]["max"],
                                  1 / t["early-exit"]["seconds_per_step"]["min"]],
            "training_runs_steps_per_s_vs_electra": run_ratio,
            "exit_update_every": every, "exit_probs": probs,
            "final_exit_probs": {k: v[-1][1] for k, v in probs.items()},
            "discriminators": {"early-exit": checkpoints(ee["dir"])[-1]},
            "mean_exit_layer": statistics.mean(r["exit_layer"] for r in recs if "exit_layer" in r)}
